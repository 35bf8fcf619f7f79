//! Detectors: turn observations into events.
//!
//! [`connections::ConnectionTable`] finds the new connections in successive
//! socket tables; [`portscan::ScanDetector`] watches inbound attempts for
//! port scans.

pub mod connections;
pub mod portscan;

use crate::clock::Stamp;
use crate::event::{Direction, Event, EventKind};
use crate::source::Observation;
use connections::ConnectionTable;
use portscan::ScanDetector;
use std::time::Duration;

/// The detect stage: new connections first, then the scans they complete.
pub struct Detector {
    connections: ConnectionTable,
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
            scans: ScanDetector::new(scan_ports, scan_window),
            source,
        }
    }

    /// The events an observation gives, in the order they are to be printed.
    pub fn process(&mut self, observation: &Observation) -> Vec<Event> {
        match observation {
            Observation::Snapshot { at, sockets } => {
                let fresh = self.connections.observe(sockets);
                let mut events = Vec::with_capacity(fresh.len());
                for conn in fresh {
                    let event = |kind| Event { at: *at, kind };
                    events.push(event(EventKind::NewConnection {
                        conn,
                        source: self.source,
                    }));
                    events.extend(
                        self.inbound_attempt(*at, &conn)
                            .map(|s| event(EventKind::PortScan(s))),
                    );
                }
                self.scans.sweep(at.mono);
                events
            }
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
