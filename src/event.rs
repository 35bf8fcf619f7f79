//! What the agent reports. Every sink formats these; nothing else is printed
//! on stdout.

use crate::clock::Stamp;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A remote host connected to a local listener.
    Inbound,
    /// This host connected out.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A TCP connection, written as the SPEC prints it: `initiator -> acceptor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection {
    pub initiator: SocketAddr,
    pub acceptor: SocketAddr,
    pub direction: Direction,
}

impl Connection {
    /// The endpoint on this host.
    pub fn local(&self) -> SocketAddr {
        match self.direction {
            Direction::Inbound => self.acceptor,
            Direction::Outbound => self.initiator,
        }
    }

    /// The endpoint on the other host.
    pub fn remote(&self) -> SocketAddr {
        match self.direction {
            Direction::Inbound => self.initiator,
            Direction::Outbound => self.acceptor,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortScan {
    pub remote: IpAddr,
    pub local: IpAddr,
    /// Distinct local ports in the window at detection, ascending.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub ip: IpAddr,
    pub ttl: Duration,
    pub backend: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    NewConnection {
        conn: Connection,
        source: &'static str,
    },
    PortScan(PortScan),
    Blocked(Block),
    Unblocked {
        ip: IpAddr,
        backend: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Stamp,
    pub kind: EventKind,
}
