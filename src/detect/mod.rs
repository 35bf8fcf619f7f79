//! Detectors: turn observations into events.
//!
//! [`connections::ConnectionTable`] finds the new connections in successive
//! socket tables; [`portscan::ScanDetector`] watches inbound attempts for
//! port scans.

pub mod attempts;
pub mod connections;
pub mod portscan;

use crate::clock::Stamp;
use crate::event::Observation;
use crate::event::{Direction, Event, EventKind, PortScan};
use crate::setting::Capacity;
use attempts::AttemptTable;
use connections::ConnectionTable;
use portscan::ScanDetector;
use std::time::Duration;

/// The detect stage: new connections first, then the scans they complete.
/// How often real-time observations sweep the scan detector.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Detector {
    last_sweep: Duration,
    connections: ConnectionTable,
    attempts: AttemptTable,
    scans: ScanDetector,
    source: &'static str,
    /// Evictions already handed out by [`Detector::take_evictions`].
    evictions_taken: [u64; 3],
}

crate::settings! {
    /// The scan rule: what counts as a port scan.
    pub struct ScanSettings {
        /// Alert when one remote IP touches MORE than N distinct local ports
        scan_ports: usize = 3 => "scan-ports", "N", live;
        /// Sliding window of the scan detector
        scan_window: Duration = Duration::from_secs(60) => "scan-window", "DURATION", live;
    }
}

crate::settings! {
    /// How many entries the detector's tables may hold; past that the least
    /// recently seen are evicted (and counted).
    pub struct Limits {
        /// Connections remembered at most; past that the least recently seen are forgotten
        max_connections: Capacity = Capacity(connections::DEFAULT_CAPACITY) => "max-connections", "N", restart;
        /// (remote, local) address pairs the scan detector tracks at most; past that the least recently active are evicted
        max_scan_sources: Capacity = Capacity(portscan::DEFAULT_CAPACITY) => "max-scan-sources", "N", restart;
    }
}

/// The `table` label values of `tcpwatch_evictions_total`.
pub const EVICTION_TABLES: [&str; 3] = ["connections", "scan_sources", "attempts"];

impl Detector {
    /// A detector for `source`'s observations; with `report_existing`, the
    /// connections of the first socket table are reported too.
    pub fn new(
        source: &'static str,
        report_existing: bool,
        scan: &ScanSettings,
        limits: &Limits,
    ) -> Self {
        Detector {
            last_sweep: Duration::ZERO,
            connections: ConnectionTable::with_capacity(report_existing, limits.max_connections.0),
            attempts: AttemptTable::new(attempts::RETRANSMIT_WINDOW, attempts::CAPACITY),
            scans: ScanDetector::with_capacity(
                scan.scan_ports,
                scan.scan_window,
                limits.max_scan_sources.0,
            ),
            source,
            evictions_taken: [0; 3],
        }
    }

    /// Entries evicted from full tables since the last call, by table (the
    /// names of [`EVICTION_TABLES`]); tables with none are left out.
    pub fn take_evictions(&mut self) -> Vec<(&'static str, u64)> {
        let totals = [
            self.connections.evicted(),
            self.scans.evicted(),
            self.attempts.evicted(),
        ];
        let mut out = Vec::new();
        for (i, total) in totals.into_iter().enumerate() {
            let new = total - self.evictions_taken[i];
            if new > 0 {
                out.push((EVICTION_TABLES[i], new));
            }
            self.evictions_taken[i] = total;
        }
        out
    }

    /// The connection table, for the state file.
    pub fn connections_mut(&mut self) -> &mut ConnectionTable {
        &mut self.connections
    }

    /// New scan settings (SIGHUP); connections and windows are kept.
    pub fn reconfigure(&mut self, scan: &ScanSettings) {
        self.scans.reconfigure(scan.scan_ports, scan.scan_window);
    }

    /// The source's name, for events and metric labels.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The events an observation gives, in the order they are to be printed.
    pub fn process(&mut self, observation: &Observation) -> Vec<Event> {
        match observation {
            Observation::Snapshot { at, sockets } => {
                let fresh = self.connections.observe(sockets);
                let mut events = Vec::with_capacity(fresh.len());
                for conn in fresh {
                    self.report(*at, conn, None, &mut events);
                }
                self.scans.sweep(at.mono);
                events
            }
            Observation::Attempt {
                at,
                conn,
                isn,
                owner,
            } => {
                let mut events = Vec::new();
                let netns = owner.as_ref().and_then(|o| o.netns);
                if self.attempts.is_new_in(at.mono, conn, *isn, netns) {
                    self.report(*at, *conn, owner.clone(), &mut events);
                }
                // Real-time sources never pause: forget quiet scanners once a
                // second, or a spoofed flood would grow the detector forever.
                if at.mono >= self.last_sweep + SWEEP_EVERY {
                    self.scans.sweep(at.mono);
                    self.last_sweep = at.mono;
                }
                events
            }
            Observation::Probe {
                at,
                remote,
                local,
                kind,
            } => {
                let scan = self
                    .scans
                    .observe(at.mono, *remote, local.ip(), local.port());
                scan.map(|scan| Event {
                    at: *at,
                    kind: EventKind::PortScan(PortScan {
                        kind: *kind,
                        ..scan
                    }),
                })
                .into_iter()
                .collect()
            }
            Observation::Lost { .. } => Vec::new(),
        }
    }

    /// A new connection's line, then the scan it completes, if any.
    fn report(
        &mut self,
        at: Stamp,
        conn: crate::event::Connection,
        owner: Option<std::sync::Arc<crate::event::Owner>>,
        events: &mut Vec<Event>,
    ) {
        events.push(Event {
            at,
            kind: EventKind::NewConnection {
                conn,
                source: self.source,
                owner,
            },
        });
        if let Some(scan) = self.inbound_attempt(at, &conn) {
            events.push(Event {
                at,
                kind: EventKind::PortScan(scan),
            });
        }
    }

    /// (remote, local) pairs the scan detector is tracking.
    pub fn tracked_sources(&self) -> usize {
        self.scans.tracked()
    }

    fn inbound_attempt(
        &mut self,
        at: Stamp,
        conn: &crate::event::Connection,
    ) -> Option<crate::event::PortScan> {
        if conn.direction != Direction::Inbound {
            return None;
        }
        let (remote, local) = (conn.remote(), conn.local());
        self.scans
            .observe(at.mono, remote.ip(), local.ip(), local.port())
    }
}

/// The wall clock jumping (NTP stepping it, an operator setting it) must not
/// change what is detected: windows run on the monotonic reading, printed
/// times on the wall one.
#[cfg(test)]
mod clock_jump_tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::event::Connection;
    use crate::event::{Socket, TcpState};
    use chrono::TimeZone;
    use std::net::SocketAddr;

    const HOUR: chrono::Duration = chrono::Duration::hours(1);

    fn clock() -> ManualClock {
        ManualClock::new(
            chrono::Local
                .with_ymd_and_hms(2030, 1, 1, 12, 0, 0)
                .unwrap(),
        )
    }

    fn inbound(port: u16) -> Connection {
        Connection {
            initiator: "192.0.2.56:40000".parse().unwrap(),
            acceptor: SocketAddr::new("10.0.0.5".parse().unwrap(), port),
            direction: Direction::Inbound,
        }
    }

    fn attempt(d: &mut Detector, clock: &ManualClock, port: u16) -> Vec<Event> {
        d.process(&Observation::Attempt {
            at: clock.now(),
            conn: inbound(port),
            isn: u32::from(port),
            owner: None,
        })
    }

    fn scans(events: &[Event]) -> Vec<Vec<u16>> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::PortScan(scan) => Some(scan.ports.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_scan_straddling_wall_jumps_is_reported_once_with_the_jumped_times() {
        let clock = clock();
        let mut d = Detector::new("pcap", false, &ScanSettings::default(), &Limits::default());
        let mut events = attempt(&mut d, &clock, 80);
        let start = clock.now().wall;
        clock.advance(Duration::from_secs(10));
        clock.jump_wall(-HOUR);
        events.extend(attempt(&mut d, &clock, 81));
        clock.advance(Duration::from_secs(10));
        clock.jump_wall(HOUR * 2);
        events.extend(attempt(&mut d, &clock, 82));
        clock.advance(Duration::from_secs(10));
        events.extend(attempt(&mut d, &clock, 83));
        // The same scanner keeps going after the scan: same episode.
        clock.jump_wall(-HOUR);
        events.extend(attempt(&mut d, &clock, 84));
        assert_eq!(scans(&events), [vec![80, 81, 82, 83]]);
        let walls: Vec<_> = events.iter().map(|e| e.at.wall - start).collect();
        let secs = chrono::Duration::seconds;
        // 80, 81 (-1 h), 82 (+1 h), 83 and its scan, 84 (back to real).
        assert_eq!(
            walls,
            [
                secs(0),
                secs(10) - HOUR,
                secs(20) + HOUR,
                secs(30) + HOUR,
                secs(30) + HOUR,
                secs(30)
            ]
        );
    }

    #[test]
    fn a_forward_jump_does_not_end_an_episode_and_a_backward_one_does_not_extend_it() {
        let clock = clock();
        let mut d = Detector::new("pcap", false, &ScanSettings::default(), &Limits::default());
        let mut events = Vec::new();
        for port in 80..84 {
            events.extend(attempt(&mut d, &clock, port));
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(scans(&events).len(), 1);
        // An hour later by the wall clock, one second by the monotonic one:
        // still the same episode, not a second report.
        clock.jump_wall(HOUR);
        let again: Vec<Event> = (90..94).flat_map(|p| attempt(&mut d, &clock, p)).collect();
        assert!(scans(&again).is_empty(), "{:?}", scans(&again));
        // Quiet for a whole window by the monotonic clock, although the
        // wall clock went back an hour: a new episode.
        clock.advance(Duration::from_secs(61));
        clock.jump_wall(-HOUR * 2);
        let later: Vec<Event> = (100..104)
            .flat_map(|p| attempt(&mut d, &clock, p))
            .collect();
        assert_eq!(scans(&later), [vec![100, 101, 102, 103]]);
    }

    #[test]
    fn polled_connections_are_reported_once_across_wall_jumps() {
        let clock = clock();
        let mut d = Detector::new(
            "procfs",
            false,
            &ScanSettings::default(),
            &Limits::default(),
        );
        let listener = Socket {
            local: "10.0.0.5:80".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: TcpState::Listen,
            inode: 1,
        };
        let conn = Socket {
            local: "10.0.0.5:80".parse().unwrap(),
            remote: "192.0.2.56:40000".parse().unwrap(),
            state: TcpState::Established,
            inode: 2,
        };
        let mut poll = |sockets: Vec<Socket>| {
            let at = clock.now();
            clock.advance(Duration::from_secs(1));
            d.process(&Observation::Snapshot { at, sockets })
        };
        assert!(poll(vec![listener]).is_empty(), "first table");
        assert_eq!(poll(vec![listener, conn]).len(), 1);
        clock.jump_wall(-HOUR);
        assert!(poll(vec![listener, conn]).is_empty());
        clock.jump_wall(HOUR * 3);
        assert!(poll(vec![listener, conn]).is_empty());
    }
}
