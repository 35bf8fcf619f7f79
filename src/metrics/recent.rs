//! [`Recent`]: what the last hour's events add up to, for `tcpwatch
//! status`: new connections, scans and blocks, the sources that scanned
//! most and the ports they scanned most.
//!
//! Events are counted as they are printed, into one bucket a minute; the
//! sixty newest buckets are the hour. Each bucket keeps at most
//! [`MAX_KEYS`] scanners and as many ports (a scan from many forged
//! sources must not grow the agent); the scans past that are counted in
//! `others` (and in `tcpwatch_evictions_total{table="status_top"}`), so
//! the totals stay right and only the top lists are cut.
//! Times are the events' monotonic stamps: a wall clock that jumps moves
//! nothing.

use crate::event::{show_net, Direction, Event, EventKind};
use ipnet::IpNet;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// How long the summary looks back.
pub const WINDOW: Duration = Duration::from_secs(3600);
const BUCKET: Duration = Duration::from_secs(60);
const BUCKETS: usize = (WINDOW.as_secs() / BUCKET.as_secs()) as usize;
/// Scanners (and ports) a bucket keeps at most.
pub const MAX_KEYS: usize = 1024;

#[derive(Debug, Default)]
struct Bucket {
    minute: u64,
    inbound: u64,
    outbound: u64,
    scans: u64,
    blocks: u64,
    scanners: HashMap<IpNet, u64>,
    ports: HashMap<u16, u64>,
    /// Scans and ports not kept in the maps above (they were full).
    others: u64,
}

/// The last hour in figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub window_seconds: u64,
    pub connections_inbound: u64,
    pub connections_outbound: u64,
    pub port_scans: u64,
    pub blocks: u64,
    /// The sources that scanned most (as the lines print them), with
    /// their scans in the window.
    pub top_scanners: Vec<(String, u64)>,
    /// The ports scanned most, with the scans that named them.
    pub top_ports: Vec<(u16, u64)>,
}

#[derive(Debug, Default)]
pub struct Recent {
    buckets: Mutex<VecDeque<Bucket>>,
}

impl Recent {
    /// Counts one printed event; returns the scanners and ports it could
    /// not keep (the minute's bucket was full), for the evictions metric.
    pub fn record(&self, event: &Event) -> u64 {
        let minute = event.at.mono.as_secs() / BUCKET.as_secs();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.back().is_none_or(|b| b.minute < minute) {
            buckets.push_back(Bucket {
                minute,
                ..Bucket::default()
            });
            while buckets.len() > BUCKETS {
                buckets.pop_front();
            }
        }
        // An event stamped before the newest bucket (a batch straddling a
        // minute) goes in the newest one: off by a minute at most.
        let bucket = buckets.back_mut().expect("just pushed");
        let before = bucket.others;
        match &event.kind {
            EventKind::NewConnection { conn, .. } => match conn.direction {
                Direction::Inbound => bucket.inbound += 1,
                Direction::Outbound => bucket.outbound += 1,
            },
            EventKind::PortScan(scan) => {
                bucket.scans += 1;
                bump(&mut bucket.scanners, scan.source(), &mut bucket.others);
                for port in &scan.ports {
                    bump(&mut bucket.ports, *port, &mut bucket.others);
                }
            }
            EventKind::Blocked(_) => bucket.blocks += 1,
            EventKind::FleetScan(_) | EventKind::Unblocked { .. } => {}
        }
        bucket.others - before
    }

    /// The figures of the hour before `now` (monotonic), with the `top`
    /// scanners and ports.
    pub fn summary(&self, now: Duration, top: usize) -> Summary {
        let minute = now.as_secs() / BUCKET.as_secs();
        let oldest = minute.saturating_sub(BUCKETS as u64 - 1);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut summary = Summary {
            window_seconds: WINDOW.as_secs(),
            ..Summary::default()
        };
        let mut scanners: HashMap<IpNet, u64> = HashMap::new();
        let mut ports: HashMap<u16, u64> = HashMap::new();
        for bucket in buckets.iter().filter(|b| b.minute >= oldest) {
            summary.connections_inbound += bucket.inbound;
            summary.connections_outbound += bucket.outbound;
            summary.port_scans += bucket.scans;
            summary.blocks += bucket.blocks;
            for (source, n) in &bucket.scanners {
                *scanners.entry(*source).or_default() += n;
            }
            for (port, n) in &bucket.ports {
                *ports.entry(*port).or_default() += n;
            }
        }
        let mut scanners: Vec<(IpNet, u64)> = scanners.into_iter().collect();
        scanners.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        summary.top_scanners = scanners
            .into_iter()
            .take(top)
            .map(|(source, scans)| (show_net(&source), scans))
            .collect();
        let mut ports: Vec<(u16, u64)> = ports.into_iter().collect();
        ports.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        summary.top_ports = ports.into_iter().take(top).collect();
        summary
    }
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, others: &mut u64) {
    if map.len() < MAX_KEYS || map.contains_key(&key) {
        *map.entry(key).or_default() += 1;
    } else {
        *others += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Block, Connection, PortScan};

    fn at(secs: u64) -> Stamp {
        Stamp {
            wall: chrono::Local::now(),
            mono: Duration::from_secs(secs),
        }
    }

    fn scan(secs: u64, remote: &str, ports: Vec<u16>) -> Event {
        Event {
            at: at(secs),
            kind: EventKind::PortScan(PortScan::syn(
                remote.parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
                ports,
            )),
        }
    }

    fn conn(secs: u64, direction: Direction) -> Event {
        Event {
            at: at(secs),
            kind: EventKind::NewConnection {
                conn: Connection {
                    initiator: "192.0.2.56:4000".parse().unwrap(),
                    acceptor: "10.0.0.5:80".parse().unwrap(),
                    direction,
                },
                source: "procfs",
                owner: None,
            },
        }
    }

    #[test]
    fn the_hour_adds_up_and_ranks_scanners_and_ports() {
        let recent = Recent::default();
        recent.record(&conn(10, Direction::Inbound));
        recent.record(&conn(10, Direction::Outbound));
        recent.record(&scan(20, "192.0.2.56", vec![80, 81, 82, 83]));
        recent.record(&scan(200, "192.0.2.56", vec![22, 80, 443, 8080]));
        recent.record(&scan(300, "198.51.100.7", vec![22, 23, 24, 25]));
        recent.record(&Event {
            at: at(300),
            kind: EventKind::Blocked(Block::here(
                "198.51.100.7".parse().unwrap(),
                Duration::from_secs(60),
                "nftables",
                "n",
            )),
        });
        let s = recent.summary(Duration::from_secs(400), 2);
        assert_eq!(
            (
                s.connections_inbound,
                s.connections_outbound,
                s.port_scans,
                s.blocks
            ),
            (1, 1, 3, 1)
        );
        assert_eq!(
            s.top_scanners,
            [
                ("192.0.2.56".to_string(), 2),
                ("198.51.100.7".to_string(), 1)
            ]
        );
        assert_eq!(s.top_ports, [(22, 2), (80, 2)]);
        // An hour later only the last minutes' remain.
        let later = recent.summary(Duration::from_secs(3600 + 250), 10);
        assert_eq!((later.port_scans, later.blocks), (1, 1));
        assert_eq!(later.connections_inbound, 0);
    }

    #[test]
    fn a_bucket_keeps_a_bounded_number_of_scanners() {
        let recent = Recent::default();
        let mut cut = 0;
        for n in 0..(MAX_KEYS as u32 + 100) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string();
            cut += recent.record(&scan(5, &ip, vec![80]));
        }
        assert_eq!(cut, 100);
        let s = recent.summary(Duration::from_secs(5), usize::MAX);
        assert_eq!(s.port_scans, MAX_KEYS as u64 + 100, "every scan counted");
        assert_eq!(s.top_scanners.len(), MAX_KEYS);
        let buckets = recent.buckets.lock().unwrap();
        assert_eq!(buckets[0].others, 100);
    }
}
