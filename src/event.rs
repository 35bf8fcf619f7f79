//! What flows through the pipeline: what the sources observe
//! ([`Observation`], [`Socket`]) and what the agent reports ([`Event`]).
//! Every sink formats events; nothing else is printed on stdout.

use crate::clock::Stamp;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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

/// What a scan is made of. A SYN or connect scan prints as it always did;
/// the others name their kind at the end of the scan line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScanKind {
    /// SYNs, or whole connections.
    #[default]
    Syn,
    /// TCP with FIN alone (`nmap -sF`).
    Fin,
    /// TCP with none of the flags (`nmap -sN`).
    Null,
    /// TCP with FIN, PSH and URG (`nmap -sX`).
    Xmas,
    /// UDP (`nmap -sU`, masscan UDP).
    Udp,
}

/// TCP flag bits of the flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

impl ScanKind {
    /// The `kind` key of the JSON format.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanKind::Syn => "syn",
            ScanKind::Fin => "fin",
            ScanKind::Null => "null",
            ScanKind::Xmas => "xmas",
            ScanKind::Udp => "udp",
        }
    }

    /// What ends a scan line of this kind, if anything: `(FIN scan)`.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            ScanKind::Syn => None,
            ScanKind::Fin => Some("FIN scan"),
            ScanKind::Null => Some("NULL scan"),
            ScanKind::Xmas => Some("Xmas scan"),
            ScanKind::Udp => Some("UDP scan"),
        }
    }

    /// The probe a TCP segment with these flags is: a SYN without ACK is a
    /// connection attempt; a segment with none of SYN, ACK and RST is never
    /// legitimate and probes its port (FIN alone, FIN+PSH+URG, or neither:
    /// a FIN, Xmas or NULL scan). Anything else is ordinary traffic.
    pub fn of_tcp(flags: u8) -> Option<ScanKind> {
        use tcp_flags::*;
        if flags & (SYN | ACK) == SYN {
            return Some(ScanKind::Syn);
        }
        if flags & (SYN | ACK | RST) != 0 {
            return None;
        }
        Some(if flags & FIN == 0 {
            ScanKind::Null
        } else if flags & (PSH | URG) == PSH | URG {
            ScanKind::Xmas
        } else {
            ScanKind::Fin
        })
    }
}

/// A scan rule: more than `ports` distinct local ports within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub ports: usize,
    pub window: Duration,
}

/// `N/SECONDSs` (`3/60s`): the window in seconds, so every rule reads the
/// same way; a window that is not whole seconds in milliseconds.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.window.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}/{}s", self.ports, ms / 1000)
        } else {
            write!(f, "{}/{ms}ms", self.ports)
        }
    }
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            ports: 3,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortScan {
    /// The scanner: the address whose probe crossed the line.
    pub remote: IpAddr,
    /// The scanner's IPv6 prefix, when more than one of its addresses took
    /// part (the scan is then the prefix's, and so is the block).
    pub prefix: Option<IpNet>,
    pub local: IpAddr,
    /// Distinct local ports in the window at detection, ascending.
    pub ports: Vec<u16>,
    pub kind: ScanKind,
    /// The rule it tripped.
    pub rule: Rule,
}

impl PortScan {
    /// A SYN or connect scan of one address under the default rule.
    pub fn syn(remote: IpAddr, local: IpAddr, ports: Vec<u16>) -> Self {
        PortScan {
            remote,
            prefix: None,
            local,
            ports,
            kind: ScanKind::Syn,
            rule: Rule::default(),
        }
    }

    /// What is reported and blocked: the prefix, or the one address.
    pub fn source(&self) -> IpNet {
        self.prefix
            .unwrap_or_else(|| IpNet::from(self.remote.to_canonical()))
    }
}

/// Who decided a block: this node, or another node of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Here(Arc<str>),
    Fleet(Arc<str>),
}

impl Origin {
    /// The node's name.
    pub fn node(&self) -> &str {
        match self {
            Origin::Here(node) | Origin::Fleet(node) => node,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// An address (a /32 or /128) or an IPv6 prefix.
    pub target: IpNet,
    pub ttl: Duration,
    pub backend: &'static str,
    /// 1 for a first block, N for the Nth of a repeat offender.
    pub repeat: u32,
    pub origin: Origin,
}

impl Block {
    /// A first block of one address, decided on `node`.
    pub fn here(ip: IpAddr, ttl: Duration, backend: &'static str, node: &str) -> Self {
        Block {
            target: IpNet::from(ip.to_canonical()),
            ttl,
            backend,
            repeat: 1,
            origin: Origin::Here(node.into()),
        }
    }
}

/// A source that touched more than N distinct (host, port) pairs across
/// the fleet within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetScan {
    pub source: IpNet,
    /// Distinct hosts it touched.
    pub hosts: usize,
    /// Distinct ports it touched, ascending.
    pub ports: Vec<u16>,
}

/// What the kernel knows of a connection's owner (the `tracepoint` source);
/// a piece it does not know is left out, never guessed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// Network namespace (its inode).
    pub netns: Option<u64>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The cgroup path.
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<Pod>,
}

/// A Kubernetes pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    NewConnection {
        conn: Connection,
        source: &'static str,
        /// What the kernel knows of its owner, when the source tells.
        owner: Option<Arc<Owner>>,
    },
    PortScan(PortScan),
    FleetScan(FleetScan),
    Blocked(Block),
    Unblocked {
        target: IpNet,
        backend: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Stamp,
    pub kind: EventKind,
}

/// An address or prefix as the lines print it: a single address without
/// its `/32` or `/128`.
pub fn show_net(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
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
        /// What the kernel knows of the socket's owner (the `tracepoint`
        /// source); its network namespace tells apart attempts with the same
        /// endpoints in different namespaces.
        owner: Option<Arc<Owner>>,
    },
    /// A probe that is not a connection attempt (a FIN, NULL or Xmas
    /// segment, a UDP probe, a first fragment whose flags are cut off): it
    /// counts towards a scan of `local`'s port and prints no line of its
    /// own. `remote` sent it.
    Probe {
        at: Stamp,
        remote: IpAddr,
        local: SocketAddr,
        kind: ScanKind,
    },
    /// Events the source named `source` knows it missed (kernel buffer
    /// overflow, drops).
    Lost { count: u64, source: &'static str },
    /// Observations of a real-time source, in order, handed on together:
    /// one channel send and one wakeup of the detect stage for a whole
    /// drain of a kernel buffer. The same as each of them sent alone.
    Batch(Vec<Observation>),
}

/// The fleet's messages, as (direction, kind): the series of
/// `tcpwatch_fleet_messages_total`, one list for the fleet stage that counts
/// them and the metrics that export them.
pub const FLEET_MESSAGES: [(&str, &str); 6] = [
    ("out", "block"),
    ("out", "unblock"),
    ("out", "observe"),
    ("in", "block"),
    ("in", "unblock"),
    ("in", "scan"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_flags_name_the_probe() {
        use tcp_flags::*;
        assert_eq!(ScanKind::of_tcp(SYN), Some(ScanKind::Syn));
        assert_eq!(ScanKind::of_tcp(SYN | 0xc0), Some(ScanKind::Syn), "ECE/CWR");
        assert_eq!(ScanKind::of_tcp(FIN), Some(ScanKind::Fin));
        assert_eq!(ScanKind::of_tcp(0), Some(ScanKind::Null));
        assert_eq!(ScanKind::of_tcp(FIN | PSH | URG), Some(ScanKind::Xmas));
        for ordinary in [
            SYN | ACK,
            ACK,
            ACK | PSH,
            FIN | ACK,
            RST,
            RST | ACK,
            RST | FIN,
        ] {
            assert_eq!(ScanKind::of_tcp(ordinary), None, "{ordinary:#x}");
        }
    }

    #[test]
    fn rules_and_nets_print_as_the_lines_want() {
        let rule = |ports, secs| Rule {
            ports,
            window: Duration::from_secs(secs),
        };
        assert_eq!(rule(3, 60).to_string(), "3/60s");
        assert_eq!(rule(10, 3600).to_string(), "10/3600s");
        assert_eq!(
            Rule {
                ports: 4,
                window: Duration::from_millis(1500)
            }
            .to_string(),
            "4/1500ms"
        );
        assert_eq!(show_net(&"192.0.2.56/32".parse().unwrap()), "192.0.2.56");
        assert_eq!(show_net(&"2001:db8::7/128".parse().unwrap()), "2001:db8::7");
        assert_eq!(
            show_net(&"2001:db8:1:2::/64".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }
}
