//! Sources: the kernel's view of TCP, behind one narrow interface so the
//! detectors can be fed fixtures.
//!
//! Polling sources (`procfs`, `netlink`) produce whole socket tables; the detectors diff
//! successive tables to find new connections.

pub mod link;
pub mod netlink;
pub mod nlsock;
pub mod pcap;
pub mod procfs;
pub mod xdp;

use crate::clock::Stamp;
use crate::event::Connection;
use std::net::SocketAddr;

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

/// A source that can list the host's TCP sockets on demand.
pub trait SocketTable: Send {
    /// The name printed in events and metric labels.
    fn name(&self) -> &'static str;
    fn snapshot(&mut self) -> anyhow::Result<Vec<Socket>>;
}

/// Builds the polling source named on the command line.
pub fn socket_table(name: &str) -> anyhow::Result<Box<dyn SocketTable>> {
    match name {
        "procfs" => Ok(Box::new(procfs::Procfs::host())),
        "netlink" => Ok(Box::new(netlink::Netlink::open()?)),
        other => anyhow::bail!("source '{other}' is not available in this build"),
    }
}
