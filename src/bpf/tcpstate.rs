//! The ring-buffer record of the tracepoint program ([`super::tracepoint`]),
//! decoded. A pure function over bytes, so it is tested and fuzzed without a
//! kernel.
//!
//! The layout is `struct tcpstate_record` of `bpf/tcpstate.h`; `build.rs`
//! generates [`RawRecord`] (and the `TCPSTATE_*` constants) from that header,
//! and [`decode`] reads each field at `offset_of!(RawRecord, field)`, checked
//! at compile time against the field's generated type. No offset is written
//! here.

use crate::event::{Connection, Direction};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

include!(concat!(env!("OUT_DIR"), "/tcpstate_record.rs"));
include!(concat!(env!("OUT_DIR"), "/tcpstate_listener.rs"));
include!(concat!(env!("OUT_DIR"), "/tcpstate_owner.rs"));

/// The length of a record.
pub const RECORD_LEN: usize = RawRecord::LEN;

/// What a record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A connection that completed its handshake (inbound: a listener's
    /// child reached ESTABLISHED) or an outbound attempt (the socket left
    /// SYN_SENT, answered or not).
    Connection,
    /// A SYN to a closed port, answered with a reset: an inbound attempt.
    ResetProbe,
}

/// One decoded record, before attribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `CLOCK_MONOTONIC` nanoseconds when the kernel saw it.
    pub kernel_ns: u64,
    pub kind: Kind,
    pub conn: Connection,
    /// The network namespace's inode (`stat -L -c %i /proc/PID/ns/net`);
    /// `None` when the kernel could not read it.
    pub netns: Option<u64>,
    /// The socket's cgroup v2 id.
    pub cgroup_id: Option<u64>,
    /// The owner's process id and command name (outbound: the process that
    /// called connect(); inbound: the one that called listen()).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The initiator's initial sequence number: a new connection that
    /// reuses a 4-tuple has another (0 for reset probes).
    pub isn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("record of {0} bytes, expected {RECORD_LEN}")]
    Length(usize),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
}

/// Reads field `$name` of type `$ty` (an integer) from the record bytes `$b`;
/// does not compile if the header declares the field with another type.
macro_rules! int {
    ($b:expr, $name:ident, $ty:ty) => {{
        const _: fn(&RawRecord) -> $ty = |r| r.$name;
        const AT: usize = core::mem::offset_of!(RawRecord, $name);
        const LEN: usize = core::mem::size_of::<$ty>();
        <$ty>::from_ne_bytes($b[AT..AT + LEN].try_into().expect("in bounds"))
    }};
}

/// Reads the `[u8; $len]` field `$name`.
macro_rules! bytes {
    ($b:expr, $name:ident, $len:literal) => {{
        const _: fn(&RawRecord) -> [u8; $len] = |r| r.$name;
        const AT: usize = core::mem::offset_of!(RawRecord, $name);
        <[u8; $len]>::try_from(&$b[AT..AT + $len]).expect("in bounds")
    }};
}

/// Decodes one ring-buffer record. Ports and numbers are in host order
/// (the program runs on this host), addresses in network order. An
/// IPv4-mapped pair (`::ffff:a.b.c.d` on both ends, a dual-stack socket) is
/// returned as IPv4.
pub fn decode(bytes: &[u8]) -> Result<Record, BadRecord> {
    let b: &[u8; RECORD_LEN] = bytes
        .try_into()
        .map_err(|_| BadRecord::Length(bytes.len()))?;
    let family = int!(b, family, u8);
    let local = bytes!(b, local_addr, 16);
    let remote = bytes!(b, remote_addr, 16);
    let (local_ip, remote_ip) = match family {
        4 => (v4(&local), v4(&remote)),
        6 => unmap_pair(Ipv6Addr::from(local), Ipv6Addr::from(remote)),
        other => return Err(BadRecord::Family(other)),
    };
    let local = SocketAddr::new(local_ip, int!(b, local_port, u16));
    let remote = SocketAddr::new(remote_ip, int!(b, remote_port, u16));
    let kind = int!(b, kind, u8);
    let (kind, conn) = match u64::from(kind) {
        TCPSTATE_KIND_OUTBOUND => (Kind::Connection, outbound(local, remote)),
        TCPSTATE_KIND_INBOUND => (Kind::Connection, inbound(local, remote)),
        TCPSTATE_KIND_RESET_PROBE => (Kind::ResetProbe, inbound(local, remote)),
        _ => return Err(BadRecord::Kind(kind)),
    };
    let owner = u64::from(int!(b, owner, u8));
    let has_pid = owner & TCPSTATE_OWNER_PID != 0;
    let has_cgroup = owner & TCPSTATE_OWNER_CGROUP != 0;
    let netns = int!(b, netns, u64);
    let cgroup_id = int!(b, cgroup_id, u64);
    let pid = int!(b, pid, u32);
    Ok(Record {
        kernel_ns: int!(b, ktime_ns, u64),
        kind,
        conn,
        netns: (netns != 0).then_some(netns),
        cgroup_id: (has_cgroup && cgroup_id != 0).then_some(cgroup_id),
        pid: (has_pid && pid != 0).then_some(pid),
        comm: if has_pid {
            comm(&bytes!(b, comm, 16))
        } else {
            None
        },
        isn: int!(b, isn, u32),
    })
}

fn v4(raw: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
}

/// Both ends IPv4-mapped: IPv4. Otherwise IPv6 as given (a mixed pair does
/// not occur on a real socket; it is kept rather than half-converted).
fn unmap_pair(local: Ipv6Addr, remote: Ipv6Addr) -> (IpAddr, IpAddr) {
    match (local.to_ipv4_mapped(), remote.to_ipv4_mapped()) {
        (Some(l), Some(r)) => (IpAddr::V4(l), IpAddr::V4(r)),
        _ => (IpAddr::V6(local), IpAddr::V6(remote)),
    }
}

fn outbound(local: SocketAddr, remote: SocketAddr) -> Connection {
    Connection {
        initiator: local,
        acceptor: remote,
        direction: Direction::Outbound,
    }
}

fn inbound(local: SocketAddr, remote: SocketAddr) -> Connection {
    Connection {
        initiator: remote,
        acceptor: local,
        direction: Direction::Inbound,
    }
}

impl ListenerKey {
    /// The key of a socket listening on `addr` in namespace `netns`, as the
    /// program builds it (an IPv4 address fills the first 4 bytes).
    pub fn of(netns: u64, addr: SocketAddr) -> ListenerKey {
        let mut raw = [0u8; 16];
        let family = match addr.ip() {
            IpAddr::V4(v4) => {
                raw[..4].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                raw = v6.octets();
                6
            }
        };
        ListenerKey {
            netns,
            addr: raw,
            port: addr.port(),
            family,
            pad: 0,
        }
    }
}

impl OwnerValue {
    /// A listener's owner named by its process (its cgroup is the socket's,
    /// which the program reads itself).
    pub fn process(pid: u32, comm: &str) -> OwnerValue {
        let mut raw = [0u8; 16];
        let bytes = comm.as_bytes();
        let len = bytes.len().min(15);
        raw[..len].copy_from_slice(&bytes[..len]);
        OwnerValue {
            cgroup_id: 0,
            pid,
            simultaneous: 0,
            comm: raw,
        }
    }
}

/// The NUL-padded command name; `None` when empty.
fn comm(raw: &[u8; 16]) -> Option<String> {
    let len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    (len > 0).then(|| String::from_utf8_lossy(&raw[..len]).into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::mem::offset_of;

    /// A record as the program writes it, built field by field through the
    /// generated struct's offsets.
    #[derive(Clone)]
    pub(crate) struct Builder(pub [u8; RECORD_LEN]);

    impl Builder {
        pub(crate) fn new(kind: u64, family: u8) -> Builder {
            let mut b = Builder([0; RECORD_LEN]);
            b.0[offset_of!(RawRecord, kind)] = kind as u8;
            b.0[offset_of!(RawRecord, family)] = family;
            b
        }
        fn put(&mut self, at: usize, bytes: &[u8]) -> &mut Self {
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
            self
        }
        pub(crate) fn local(&mut self, ip: &[u8], port: u16) -> &mut Self {
            self.put(offset_of!(RawRecord, local_addr), ip);
            self.put(offset_of!(RawRecord, local_port), &port.to_ne_bytes())
        }
        pub(crate) fn remote(&mut self, ip: &[u8], port: u16) -> &mut Self {
            self.put(offset_of!(RawRecord, remote_addr), ip);
            self.put(offset_of!(RawRecord, remote_port), &port.to_ne_bytes())
        }
        pub(crate) fn owner(&mut self, pid: u32, comm: &str, cgroup: u64) -> &mut Self {
            let bits = (TCPSTATE_OWNER_PID | TCPSTATE_OWNER_CGROUP) as u8;
            self.0[offset_of!(RawRecord, owner)] = bits;
            self.put(offset_of!(RawRecord, pid), &pid.to_ne_bytes());
            self.put(offset_of!(RawRecord, comm), comm.as_bytes());
            self.put(offset_of!(RawRecord, cgroup_id), &cgroup.to_ne_bytes())
        }
        pub(crate) fn netns(&mut self, inode: u64) -> &mut Self {
            self.put(offset_of!(RawRecord, netns), &inode.to_ne_bytes())
        }
        pub(crate) fn ktime(&mut self, ns: u64) -> &mut Self {
            self.put(offset_of!(RawRecord, ktime_ns), &ns.to_ne_bytes())
        }
        pub(crate) fn isn(&mut self, isn: u32) -> &mut Self {
            self.put(offset_of!(RawRecord, isn), &isn.to_ne_bytes())
        }
    }

    fn conn(from: &str, to: &str, direction: Direction) -> Connection {
        Connection {
            initiator: from.parse().unwrap(),
            acceptor: to.parse().unwrap(),
            direction,
        }
    }

    #[test]
    fn the_rust_layout_is_the_compiled_programs() {
        // The C compiler's layout, read from the BTF of the object build.rs
        // compiled, against the generated struct's.
        let Some(dump) = crate::bpf::btf::dump(super::super::tracepoint::object()) else {
            return; // clang or bpftool missing: nothing to compare with
        };
        for (name, fields) in [
            ("tcpstate_record", RawRecord::FIELDS),
            ("tcpstate_listener", ListenerKey::FIELDS),
            ("tcpstate_owner", OwnerValue::FIELDS),
        ] {
            crate::bpf::btf::assert_layout(&dump, name, fields);
        }
    }

    #[test]
    fn outbound_v4_with_owner() {
        let mut b = Builder::new(TCPSTATE_KIND_OUTBOUND, 4);
        b.local(&[10, 1, 0, 2], 40000)
            .remote(&[10, 1, 0, 1], 80)
            .owner(4242, "curl", 77)
            .netns(4026532398)
            .ktime(123)
            .isn(0xdead_beef);
        let r = decode(&b.0).unwrap();
        assert_eq!(
            r.conn,
            conn("10.1.0.2:40000", "10.1.0.1:80", Direction::Outbound)
        );
        assert_eq!(r.kind, Kind::Connection);
        assert_eq!(r.netns, Some(4026532398));
        assert_eq!(r.cgroup_id, Some(77));
        assert_eq!(r.pid, Some(4242));
        assert_eq!(r.comm.as_deref(), Some("curl"));
        assert_eq!(r.kernel_ns, 123);
        assert_eq!(r.isn, 0xdead_beef);
    }

    #[test]
    fn inbound_v6_without_owner() {
        let local: Ipv6Addr = "fd00::1".parse().unwrap();
        let remote: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut b = Builder::new(TCPSTATE_KIND_INBOUND, 6);
        b.local(&local.octets(), 22).remote(&remote.octets(), 51000);
        let r = decode(&b.0).unwrap();
        assert_eq!(
            r.conn,
            conn("[fd00::2]:51000", "[fd00::1]:22", Direction::Inbound)
        );
        assert_eq!(
            (r.netns, r.cgroup_id, r.pid, r.comm),
            (None, None, None, None)
        );
    }

    #[test]
    fn mapped_pairs_become_ipv4_mixed_pairs_stay_ipv6() {
        let local: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: Ipv6Addr = "::ffff:10.0.0.9".parse().unwrap();
        let mut b = Builder::new(TCPSTATE_KIND_INBOUND, 6);
        b.local(&local.octets(), 8080)
            .remote(&remote.octets(), 5555);
        assert_eq!(
            decode(&b.0).unwrap().conn,
            conn("10.0.0.9:5555", "127.0.0.1:8080", Direction::Inbound)
        );
        let other: Ipv6Addr = "fd00::9".parse().unwrap();
        b.remote(&other.octets(), 5555);
        assert_eq!(
            decode(&b.0).unwrap().conn,
            conn(
                "[fd00::9]:5555",
                "[::ffff:127.0.0.1]:8080",
                Direction::Inbound
            )
        );
    }

    #[test]
    fn reset_probe_is_inbound_from_the_prober() {
        let mut b = Builder::new(TCPSTATE_KIND_RESET_PROBE, 4);
        b.local(&[10, 1, 0, 1], 23).remote(&[10, 1, 0, 66], 61000);
        let r = decode(&b.0).unwrap();
        assert_eq!(r.kind, Kind::ResetProbe);
        assert_eq!(
            r.conn,
            conn("10.1.0.66:61000", "10.1.0.1:23", Direction::Inbound)
        );
    }

    #[test]
    fn owner_bits_gate_the_owner_fields() {
        let mut b = Builder::new(TCPSTATE_KIND_INBOUND, 4);
        b.owner(99, "nginx", 5);
        b.0[offset_of!(RawRecord, owner)] = TCPSTATE_OWNER_CGROUP as u8;
        let r = decode(&b.0).unwrap();
        assert_eq!((r.pid, r.comm, r.cgroup_id), (None, None, Some(5)));
        b.0[offset_of!(RawRecord, owner)] = TCPSTATE_OWNER_PID as u8;
        let r = decode(&b.0).unwrap();
        assert_eq!(
            (r.pid, r.comm.as_deref(), r.cgroup_id),
            (Some(99), Some("nginx"), None)
        );
    }

    #[test]
    fn a_full_comm_has_no_terminator() {
        let mut b = Builder::new(TCPSTATE_KIND_OUTBOUND, 4);
        b.owner(1, "0123456789abcdef", 1);
        assert_eq!(
            decode(&b.0).unwrap().comm.as_deref(),
            Some("0123456789abcdef")
        );
    }

    #[test]
    fn listener_keys_and_owners_as_the_program_builds_them() {
        let v4 = ListenerKey::of(7, "10.0.0.1:80".parse().unwrap());
        assert_eq!((v4.netns, v4.port, v4.family), (7, 80, 4));
        assert_eq!(v4.addr[..4], [10, 0, 0, 1]);
        assert!(v4.addr[4..].iter().all(|&b| b == 0));
        let any6 = ListenerKey::of(7, "[::]:443".parse().unwrap());
        assert_eq!((any6.addr, any6.family), ([0; 16], 6));
        let owner = OwnerValue::process(42, "a-very-long-command-name");
        assert_eq!(owner.pid, 42);
        assert_eq!(&owner.comm[..15], b"a-very-long-com");
        assert_eq!(owner.comm[15], 0);
    }

    #[test]
    fn bad_records_are_errors() {
        let good = Builder::new(TCPSTATE_KIND_OUTBOUND, 4).0;
        assert_eq!(
            decode(&good[..RECORD_LEN - 1]),
            Err(BadRecord::Length(RECORD_LEN - 1))
        );
        assert_eq!(decode(&[]), Err(BadRecord::Length(0)));
        assert_eq!(
            decode(&[&good[..], &[0]].concat()),
            Err(BadRecord::Length(RECORD_LEN + 1))
        );
        assert_eq!(decode(&Builder::new(1, 10).0), Err(BadRecord::Family(10)));
        assert_eq!(decode(&Builder::new(9, 4).0), Err(BadRecord::Kind(9)));
        assert!(decode(&good).is_ok());
    }
}
