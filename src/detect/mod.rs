//! Detectors: turn observations into events.
//!
//! [`connections::ConnectionTable`] finds the new connections in successive
//! socket tables; [`portscan::ScanDetector`] watches inbound attempts for
//! port scans.

pub mod attempts;
pub mod connections;
pub mod portscan;

use crate::clock::Stamp;
use crate::event::{Direction, Event, EventKind};
use crate::source::Observation;
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

/// How many entries the detector's tables may hold (`--max-connections`,
/// `--max-scan-sources`); past that the least recently seen are evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub scan_sources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: connections::DEFAULT_CAPACITY,
            scan_sources: portscan::DEFAULT_CAPACITY,
        }
    }
}

/// The `table` label values of `tcpwatch_evictions_total`.
pub const EVICTION_TABLES: [&str; 3] = ["connections", "scan_sources", "attempts"];

impl Detector {
    pub fn new(
        source: &'static str,
        report_existing: bool,
        scan_ports: usize,
        scan_window: Duration,
    ) -> Self {
        Detector {
            last_sweep: Duration::ZERO,
            connections: ConnectionTable::new(report_existing),
            attempts: AttemptTable::new(attempts::RETRANSMIT_WINDOW, attempts::CAPACITY),
            scans: ScanDetector::new(scan_ports, scan_window),
            source,
            evictions_taken: [0; 3],
        }
    }

    /// The same detector with its tables capped at `limits` (call before
    /// the first observation: it starts the tables afresh).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        let report_existing = self.connections.reports_existing();
        let (threshold, window) = self.scans.settings();
        self.connections = ConnectionTable::with_capacity(report_existing, limits.connections);
        self.scans = ScanDetector::with_capacity(threshold, window, limits.scan_sources);
        self
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
    pub fn reconfigure(&mut self, scan_ports: usize, scan_window: Duration) {
        self.scans.reconfigure(scan_ports, scan_window);
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
                    self.report(*at, conn, &mut events);
                }
                self.scans.sweep(at.mono);
                events
            }
            Observation::Attempt { at, conn, isn } => {
                let mut events = Vec::new();
                if self.attempts.is_new(at.mono, conn, *isn) {
                    self.report(*at, *conn, &mut events);
                }
                // Real-time sources never pause: forget quiet scanners once a
                // second, or a spoofed flood would grow the detector forever.
                if at.mono >= self.last_sweep + SWEEP_EVERY {
                    self.scans.sweep(at.mono);
                    self.last_sweep = at.mono;
                }
                events
            }
            Observation::Lost { .. } => Vec::new(),
        }
    }

    /// A new connection's line, then the scan it completes, if any.
    fn report(&mut self, at: Stamp, conn: crate::event::Connection, events: &mut Vec<Event>) {
        events.push(Event {
            at,
            kind: EventKind::NewConnection {
                conn,
                source: self.source,
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
