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
pub struct Detector {
    connections: ConnectionTable,
    attempts: AttemptTable,
    scans: ScanDetector,
    source: &'static str,
}

impl Detector {
    pub fn new(
        source: &'static str,
        report_existing: bool,
        scan_ports: usize,
        scan_window: Duration,
    ) -> Self {
        Detector {
            connections: ConnectionTable::new(report_existing),
            attempts: AttemptTable::new(attempts::RETRANSMIT_WINDOW, attempts::CAPACITY),
            scans: ScanDetector::new(scan_ports, scan_window),
            source,
        }
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
            Observation::Attempt { at, conn } => {
                let mut events = Vec::new();
                if self.attempts.is_new(at.mono, conn) {
                    self.report(*at, *conn, &mut events);
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
