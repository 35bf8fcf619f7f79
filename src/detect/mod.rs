//! Detectors: turn observations into events.
//!
//! [`connections::ConnectionTable`] finds the new connections in successive
//! socket tables; [`attempts::AttemptTable`] folds retransmitted SYNs;
//! [`portscan::ScanDetector`] watches inbound attempts and probes for port
//! scans under the [`rules::Rules`] in force. Their tables are keyed by
//! addresses a remote host chooses, with a keyed hash ([`hash`]).

pub mod attempts;
pub mod connections;
pub mod hash;
pub mod portscan;
pub mod rules;

use crate::clock::Stamp;
use crate::event::Observation;
use crate::event::{Connection, Direction, Event, EventKind, PortScan, Rule};
use crate::setting::Capacity;
use attempts::AttemptTable;
use connections::ConnectionTable;
use portscan::ScanDetector;
use rules::{PrefixLen, Rules};
use std::time::Duration;

/// How often real-time observations sweep the scan detector.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The detect stage: new connections first, then the scans they complete.
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
    /// The scan rules: what counts as a port scan, and what as one source.
    pub struct ScanSettings {
        /// Alert when one remote IP touches MORE than N distinct local ports
        scan_ports: usize = 3 => "scan-ports", "N", live;
        /// Sliding window of the scan detector
        scan_window: Duration = Duration::from_secs(60) => "scan-window", "DURATION", live;
        /// An extra rule checked like the main one: more than N ports within DURATION, e.g. 10/1h for slow scans (repeatable)
        scan_rules: Vec<Rule> = Vec::new() => "scan-rule", "N/DURATION", live, key "scan-rules";
        /// IPv6 sources are counted (and blocked) per prefix of this length, 32 to 128 (128 = per address)
        ipv6_prefix: PrefixLen = PrefixLen(portscan::DEFAULT_IPV6_PREFIX) => "ipv6-prefix", "LEN", live;
    }
}

impl ScanSettings {
    /// The main rule, then the extra ones.
    pub fn rules(&self) -> Rules {
        let main = Rule {
            ports: self.scan_ports,
            window: self.scan_window,
        };
        Rules::new(main, &self.scan_rules)
    }
}

crate::settings! {
    /// How many entries the detector's tables may hold; past that the least
    /// recently seen are evicted (and counted).
    pub struct Limits {
        /// Connections remembered at most; past that the least recently seen are forgotten
        max_connections: Capacity = Capacity(connections::DEFAULT_CAPACITY) => "max-connections", "N", restart;
        /// Sources (a remote address or IPv6 prefix, and a local address) the scan detector tracks at most; past that the least recently active are evicted
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
            scans: ScanDetector::with_rules(
                scan.rules(),
                scan.ipv6_prefix.0,
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

    /// New scan settings (SIGHUP): rules and prefix length; connections and
    /// windows are kept.
    pub fn reconfigure(&mut self, scan: &ScanSettings) {
        self.scans.reconfigure(scan.rules(), scan.ipv6_prefix.0);
    }

    /// The source's name, for events and metric labels.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The events an observation gives, in the order they are to be printed.
    pub fn process(&mut self, observation: &Observation) -> Vec<Event> {
        let mut events = Vec::new();
        self.process_into(observation, &mut events);
        events
    }

    /// [`Detector::process`], appending to `events`: a caller that reuses
    /// its buffer makes the detector allocate nothing for an attempt.
    pub fn process_into(&mut self, observation: &Observation, events: &mut Vec<Event>) {
        match observation {
            Observation::Snapshot { at, sockets } => {
                let fresh = self.connections.observe(sockets);
                events.reserve(fresh.len());
                for conn in fresh {
                    self.report(*at, conn, None, events);
                }
                self.scans.sweep(at.mono);
            }
            Observation::Attempt {
                at,
                conn,
                isn,
                owner,
            } => {
                let netns = owner.as_ref().and_then(|o| o.netns);
                if self.attempts.is_new_in(at.mono, conn, *isn, netns) {
                    self.report(*at, *conn, owner.clone(), events);
                }
                self.tick(at.mono);
            }
            Observation::Probe {
                at,
                remote,
                local,
                kind,
            } => {
                let scan = self
                    .scans
                    .probe(at.mono, *remote, local.ip(), local.port(), *kind);
                events.extend(scan.map(|scan| Event {
                    at: *at,
                    kind: EventKind::PortScan(scan),
                }));
                self.tick(at.mono);
            }
            Observation::Lost { .. } => {}
            Observation::Batch(observations) => {
                for observation in observations {
                    self.process_into(observation, events);
                }
            }
        }
    }

    /// Real-time sources never pause: forget quiet sources once a second,
    /// or a spoofed flood would keep the detector full for nothing.
    fn tick(&mut self, now: Duration) {
        if now >= self.last_sweep + SWEEP_EVERY {
            self.scans.sweep(now);
            self.last_sweep = now;
        }
    }

    /// A new connection's line, then the scan it completes, if any.
    fn report(
        &mut self,
        at: Stamp,
        conn: Connection,
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

    /// Sources the scan detector is tracking.
    pub fn tracked_sources(&self) -> usize {
        self.scans.tracked()
    }

    fn inbound_attempt(&mut self, at: Stamp, conn: &Connection) -> Option<PortScan> {
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

/// Probes that are not SYNs, and the scan settings as the flags and the
/// config file give them.
#[cfg(test)]
mod probe_tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::event::ScanKind;
    use crate::setting::{File, Flags, Group};
    use std::net::SocketAddr;

    fn clock() -> ManualClock {
        ManualClock::new(chrono::Local::now())
    }

    fn probe(
        d: &mut Detector,
        clock: &ManualClock,
        from: &str,
        port: u16,
        kind: ScanKind,
    ) -> Vec<Event> {
        d.process(&Observation::Probe {
            at: clock.now(),
            remote: from.parse().unwrap(),
            local: SocketAddr::new("10.0.0.5".parse().unwrap(), port),
            kind,
        })
    }

    fn attempt(d: &mut Detector, clock: &ManualClock, from: &str, port: u16) -> Vec<Event> {
        d.process(&Observation::Attempt {
            at: clock.now(),
            conn: Connection {
                initiator: SocketAddr::new(from.parse().unwrap(), 40_000),
                acceptor: SocketAddr::new("10.0.0.5".parse().unwrap(), port),
                direction: Direction::Inbound,
            },
            isn: u32::from(port),
            owner: None,
        })
    }

    fn detector(scan: &ScanSettings) -> Detector {
        Detector::new("pcap", false, scan, &Limits::default())
    }

    #[test]
    fn probes_print_no_line_and_make_a_scan_of_their_kind() {
        for kind in [ScanKind::Fin, ScanKind::Null, ScanKind::Xmas, ScanKind::Udp] {
            let clock = clock();
            let mut d = detector(&ScanSettings::default());
            let mut events = Vec::new();
            for port in [21, 22, 23, 25] {
                events.extend(probe(&mut d, &clock, "192.0.2.56", port, kind));
            }
            assert_eq!(events.len(), 1, "{kind:?}: only the scan");
            let EventKind::PortScan(scan) = &events[0].kind else {
                panic!("{events:?}");
            };
            assert_eq!(
                (scan.kind, scan.ports.clone()),
                (kind, vec![21, 22, 23, 25])
            );
        }
    }

    #[test]
    fn a_syn_scan_line_is_unchanged_and_probes_join_attempts() {
        let clock = clock();
        let mut d = detector(&ScanSettings::default());
        let mut events = attempt(&mut d, &clock, "192.0.2.56", 443);
        assert_eq!(events.len(), 1, "a SYN prints its line");
        for port in [21, 22] {
            events.extend(probe(&mut d, &clock, "192.0.2.56", port, ScanKind::Fin));
        }
        events.extend(attempt(&mut d, &clock, "192.0.2.56", 80));
        let scans: Vec<&PortScan> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::PortScan(scan) => Some(scan),
                _ => None,
            })
            .collect();
        assert_eq!(scans.len(), 1);
        // Two SYNs, two FINs: a tie goes to the FINs.
        assert_eq!(
            (scans[0].kind, scans[0].ports.clone()),
            (ScanKind::Fin, vec![21, 22, 80, 443])
        );
        assert_eq!(events.len(), 3, "two connection lines and the scan");
    }

    #[test]
    fn the_settings_make_the_rules_and_a_reload_applies_them() {
        let clock = clock();
        let mut scan = ScanSettings::default();
        let mut d = detector(&scan);
        let slow = |d: &mut Detector, clock: &ManualClock, base: u16| {
            let mut events = Vec::new();
            for n in 0..5 {
                events.extend(probe(d, clock, "192.0.2.9", base + n, ScanKind::Syn));
                clock.advance(Duration::from_secs(45));
            }
            events
        };
        assert!(slow(&mut d, &clock, 20).is_empty());
        clock.advance(Duration::from_secs(3600));
        scan.scan_rules = vec![rules::parse_rule("4/5m").unwrap()];
        d.reconfigure(&scan);
        let events = slow(&mut d, &clock, 20);
        assert_eq!(events.len(), 1);
        let EventKind::PortScan(found) = &events[0].kind else {
            panic!("{events:?}");
        };
        assert_eq!(found.rule.to_string(), "4/300s");
        // --ipv6-prefix reloaded: a rotating /64 is one source from then on.
        scan.ipv6_prefix = PrefixLen(128);
        d.reconfigure(&scan);
        let rotate = |d: &mut Detector, clock: &ManualClock| {
            let mut events = Vec::new();
            for n in 0..20u16 {
                let from = format!("2001:db8:7:7::{:x}", n + 1);
                events.extend(probe(d, clock, &from, 1000 + n, ScanKind::Syn));
            }
            events
        };
        assert!(rotate(&mut d, &clock).is_empty());
        scan.ipv6_prefix = PrefixLen(64);
        d.reconfigure(&scan);
        clock.advance(Duration::from_secs(1));
        let events = rotate(&mut d, &clock);
        assert_eq!(events.len(), 1);
        let EventKind::PortScan(found) = &events[0].kind else {
            panic!("{events:?}");
        };
        assert_eq!(found.source().to_string(), "2001:db8:7:7::/64");
        assert_eq!(found.ports, [1000, 1001, 1002, 1003]);
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        scan: Flags<ScanSettings>,
    }

    #[test]
    fn scan_rules_and_the_prefix_come_from_flags_and_the_file() {
        use clap::Parser;
        let defaults = ScanSettings::default();
        assert_eq!(
            (defaults.scan_rules.len(), defaults.ipv6_prefix),
            (0, PrefixLen(64))
        );
        let cli = Cli::try_parse_from([
            "t",
            "--scan-rule",
            "10/1h",
            "--scan-rule",
            "4/5m",
            "--ipv6-prefix",
            "128",
        ])
        .unwrap();
        let s = cli.scan.resolve();
        let shown: Vec<String> = s.scan_rules.iter().map(rules::show_rule).collect();
        assert_eq!(shown, ["10/1h", "4/5m"]);
        assert_eq!(s.ipv6_prefix, PrefixLen(128));
        let err = Cli::try_parse_from(["t", "--scan-rule", "10/soon"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--scan-rule") && err.contains("'10/soon'"),
            "{err}"
        );
        let err = Cli::try_parse_from(["t", "--ipv6-prefix", "16"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not a prefix length from 32 to 128"),
            "{err}"
        );

        let file = |text: &str| -> Result<ScanSettings, String> {
            let mut file = File::parse(text, ScanSettings::KEYS).map_err(|e| e.to_string())?;
            let mut s = ScanSettings::default();
            s.apply_file(&mut file).map_err(|e| e.to_string())?;
            Ok(s)
        };
        let s = file("scan-rules = [\"10/1h\", \"4/5m\"]\nipv6-prefix = 56\n").unwrap();
        assert_eq!(s.scan_rules.len(), 2);
        assert_eq!(s.ipv6_prefix, PrefixLen(56));
        assert_eq!(s.rules().iter().count(), 3, "the main rule and two");
        assert_eq!(
            file("scan-rules = [\"10/1h\", \"0/1h\"]\n").unwrap_err(),
            "scan-rules: '0/1h': the number of ports must be at least 1"
        );
        assert_eq!(
            file("scan-rules = \"10/1h\"\n").unwrap_err(),
            "1: invalid type: string \"10/1h\", expected a list"
        );
        assert_eq!(
            file("ipv6-prefix = 129\n").unwrap_err(),
            "ipv6-prefix: '129' is not a prefix length from 32 to 128"
        );
        assert_eq!(
            file("ipv6-prefix = \"64\"\n").unwrap_err(),
            "1: invalid type: string \"64\", expected a whole number"
        );
        // Both are applied by a reload.
        let mut running = ScanSettings::default();
        assert!(running.reload(&s).is_empty());
        assert_eq!(running, s);
    }
}
