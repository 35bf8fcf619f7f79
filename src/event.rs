//! What flows through the pipeline: what the sources observe
//! ([`Observation`], [`Socket`]) and what the agent reports ([`Event`]).
//! Every sink formats events; nothing else is printed on stdout.

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

/// A TCP connection, printed `initiator -> acceptor` (docs/output.md).
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

// ---------------------------------------------------------------------------
// Observations: what the sources hand to the detectors.

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match n {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            Established => "ESTABLISHED",
            SynSent => "SYN-SENT",
            SynRecv | NewSynRecv => "SYN-RECV",
            FinWait1 => "FIN-WAIT-1",
            FinWait2 => "FIN-WAIT-2",
            TimeWait => "TIME-WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE-WAIT",
            LastAck => "LAST-ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
        }
    }
}

/// One row of the kernel's socket table. IPv4-mapped IPv6 addresses are
/// already unmapped to plain IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub inode: u64,
}

/// Everything a source hands to the detectors.
#[derive(Debug, Clone)]
pub enum Observation {
    /// A whole socket table, read at `at` (polling sources).
    Snapshot { at: Stamp, sockets: Vec<Socket> },
    /// One connection attempt seen as it happened (real-time sources): an
    /// inbound SYN to this host, or an outbound connection. Retransmissions
    /// of the same attempt may be observed again; the detectors drop them.
    /// `isn` is the initial sequence number of the packet seen (the SYN's, or
    /// the SYN-ACK's for an outbound connection seen by its answer): the same
    /// for a retransmission, different for a new connection on a reused tuple.
    Attempt {
        at: Stamp,
        conn: Connection,
        isn: u32,
    },
    /// Events the source knows it missed (kernel buffer overflow, drops).
    Lost { count: u64 },
}
