//! The ring record of the BPF programs (`struct event` of `bpf/tcpwatch.h`),
//! decoded. A pure function over bytes, so it is tested and fuzzed without
//! a kernel.
//!
//! `build.rs` generates [`RawRecord`] (and the `TCPW_*` constants) from
//! that header (the generator is `build/record.rs`); [`parse_event`] reads
//! the fields through it. No offset is written here.

use crate::clock::Stamp;
use crate::event::{Connection, Direction, Observation, ScanKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

mod raw {
    include!(concat!(env!("OUT_DIR"), "/xdp_record.rs"));
}
pub use raw::{RawRecord, TCPW_FRAGMENT, TCPW_STEALTH, TCPW_SYN, TCPW_SYNACK, TCPW_UDP};

/// The size of a record.
pub const RECORD_LEN: usize = RawRecord::LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEvent {
    #[error("event of {0} bytes, expected {RECORD_LEN}")]
    Length(usize),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("a stealth probe with TCP flags {0:#04x}")]
    Flags(u8),
}

/// What one record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A connection attempt, printed as a line: a SYN (inbound, the source
    /// is the initiator) or a SYN+ACK (the answer to this host's outbound
    /// connection, the destination is the initiator). `isn` is the sender's
    /// initial sequence number: the same in a retransmission, new when a
    /// 4-tuple is reused.
    Attempt { conn: Connection, isn: u32 },
    /// A probe that counts toward a scan of `local`'s port and prints no
    /// line: a TCP segment with none of SYN, ACK, RST (its kind from its
    /// flags), a first fragment cut before its flags (a SYN scan's, as
    /// nmap -f sends them), a UDP probe of a closed port.
    Probe {
        remote: IpAddr,
        local: SocketAddr,
        kind: ScanKind,
    },
}

impl Report {
    /// The observation this report is, seen at `at`.
    pub fn observation(self, at: Stamp) -> Observation {
        match self {
            Report::Attempt { conn, isn } => Observation::Attempt {
                at,
                conn,
                isn,
                owner: None,
            },
            Report::Probe {
                remote,
                local,
                kind,
            } => Observation::Probe {
                at,
                remote,
                local,
                kind,
            },
        }
    }
}

/// Decodes one ring-buffer record.
pub fn parse_event(bytes: &[u8]) -> Result<Report, BadEvent> {
    let bytes: &[u8; RECORD_LEN] = bytes
        .try_into()
        .map_err(|_| BadEvent::Length(bytes.len()))?;
    let r = RawRecord::read(bytes);
    let addr = |raw: [u8; 16]| -> Result<IpAddr, BadEvent> {
        match r.family {
            4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(raw))),
            other => Err(BadEvent::Family(other)),
        }
    };
    let src = SocketAddr::new(addr(r.saddr)?, r.sport);
    let dst = SocketAddr::new(addr(r.daddr)?, r.dport);
    let probe = |kind| Report::Probe {
        remote: src.ip(),
        local: dst,
        kind,
    };
    Ok(match u64::from(r.kind) {
        TCPW_SYN => Report::Attempt {
            conn: Connection {
                initiator: src,
                acceptor: dst,
                direction: Direction::Inbound,
            },
            isn: r.seq,
        },
        TCPW_SYNACK => Report::Attempt {
            conn: Connection {
                initiator: dst,
                acceptor: src,
                direction: Direction::Outbound,
            },
            isn: r.seq,
        },
        TCPW_STEALTH => match ScanKind::of_tcp(r.flags) {
            Some(kind) if kind != ScanKind::Syn => probe(kind),
            _ => return Err(BadEvent::Flags(r.flags)),
        },
        TCPW_FRAGMENT => probe(ScanKind::Syn),
        TCPW_UDP => probe(ScanKind::Udp),
        _ => return Err(BadEvent::Kind(r.kind)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(family: u8, kind: u64, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut r = RawRecord {
            family,
            kind: kind as u8,
            flags: if kind == TCPW_SYN { 0x02 } else { 0x12 },
            pad: 0,
            sport,
            dport,
            seq: 0xdead_beef,
            saddr: [0; 16],
            daddr: [0; 16],
        };
        r.saddr[..src.len()].copy_from_slice(src);
        r.daddr[..dst.len()].copy_from_slice(dst);
        r.write().to_vec()
    }

    fn conn(from: &str, to: &str, direction: Direction) -> Connection {
        Connection {
            initiator: from.parse().unwrap(),
            acceptor: to.parse().unwrap(),
            direction,
        }
    }

    fn attempt(bytes: &[u8]) -> (Connection, u32) {
        match parse_event(bytes).unwrap() {
            Report::Attempt { conn, isn } => (conn, isn),
            other => panic!("not an attempt: {other:?}"),
        }
    }

    #[test]
    fn the_record_is_the_headers_in_network_order() {
        // Offsets and byte orders as the C side writes them, by hand once.
        assert_eq!(RECORD_LEN, 44);
        let mut b = [0u8; RECORD_LEN];
        b[0] = 4;
        b[1] = TCPW_SYN as u8;
        b[4..6].copy_from_slice(&40000u16.to_be_bytes());
        b[6..8].copy_from_slice(&22u16.to_be_bytes());
        b[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        b[12..16].copy_from_slice(&[10, 9, 0, 2]);
        b[28..32].copy_from_slice(&[10, 9, 0, 1]);
        let (got, isn) = attempt(&b);
        assert_eq!(
            got,
            conn("10.9.0.2:40000", "10.9.0.1:22", Direction::Inbound)
        );
        assert_eq!(isn, 0xdead_beef);
        assert_eq!(RawRecord::read(&b).write(), b);
    }

    #[test]
    fn synack_v4_is_outbound_from_destination() {
        // The SYN+ACK of 10.9.0.2:80 answering our 10.9.0.1:51000.
        let e = event(4, TCPW_SYNACK, &[10, 9, 0, 2], 80, &[10, 9, 0, 1], 51000);
        assert_eq!(
            attempt(&e).0,
            conn("10.9.0.1:51000", "10.9.0.2:80", Direction::Outbound)
        );
    }

    #[test]
    fn syn_v6_keeps_all_sixteen_bytes_and_port_order() {
        let src: Ipv6Addr = "fd00::2".parse().unwrap();
        let dst: Ipv6Addr = "fd00:0:0:1::ffff:1".parse().unwrap();
        let e = event(6, TCPW_SYN, &src.octets(), 0x1234, &dst.octets(), 0xfffe);
        assert_eq!(
            attempt(&e).0,
            conn(
                "[fd00::2]:4660",
                "[fd00:0:0:1::ffff:1]:65534",
                Direction::Inbound
            )
        );
    }

    fn probe(kind: u64, flags: u8) -> Result<Report, BadEvent> {
        let mut e = event(4, kind, &[10, 9, 0, 2], 61000, &[10, 9, 0, 1], 21);
        e[2] = flags;
        parse_event(&e)
    }

    #[test]
    fn probes_name_the_prober_the_local_port_and_the_kind() {
        let expect = |kind| {
            Ok(Report::Probe {
                remote: "10.9.0.2".parse().unwrap(),
                local: "10.9.0.1:21".parse().unwrap(),
                kind,
            })
        };
        assert_eq!(probe(TCPW_STEALTH, 0x01), expect(ScanKind::Fin));
        assert_eq!(probe(TCPW_STEALTH, 0x00), expect(ScanKind::Null));
        assert_eq!(probe(TCPW_STEALTH, 0x29), expect(ScanKind::Xmas));
        // A fragment's flags are cut off: a SYN scan's (nmap -f -sS).
        assert_eq!(probe(TCPW_FRAGMENT, 0), expect(ScanKind::Syn));
        assert_eq!(probe(TCPW_UDP, 0), expect(ScanKind::Udp));
    }

    #[test]
    fn a_stealth_record_with_connection_flags_is_an_error() {
        for flags in [0x02, 0x10, 0x04, 0x11, 0x12] {
            assert_eq!(probe(TCPW_STEALTH, flags), Err(BadEvent::Flags(flags)));
        }
    }

    #[test]
    fn a_report_becomes_its_observation() {
        let at = Stamp {
            wall: chrono::Local::now(),
            mono: std::time::Duration::from_secs(5),
        };
        match probe(TCPW_UDP, 0).unwrap().observation(at) {
            Observation::Probe { at: seen, kind, .. } => {
                assert_eq!(seen.mono, at.mono);
                assert_eq!(kind, ScanKind::Udp);
            }
            other => panic!("{other:?}"),
        }
        let e = event(4, TCPW_SYN, &[1, 2, 3, 4], 1, &[5, 6, 7, 8], 2);
        assert!(matches!(
            parse_event(&e).unwrap().observation(at),
            Observation::Attempt {
                isn: 0xdead_beef,
                ..
            }
        ));
    }

    #[test]
    fn bad_events_are_errors() {
        let good = event(4, TCPW_SYN, &[1, 2, 3, 4], 1, &[5, 6, 7, 8], 2);
        assert_eq!(parse_event(&good[..43]), Err(BadEvent::Length(43)));
        assert_eq!(
            parse_event(&[good.clone(), vec![0]].concat()),
            Err(BadEvent::Length(45))
        );
        assert_eq!(parse_event(&[]), Err(BadEvent::Length(0)));
        let mut fam = good.clone();
        fam[0] = 10;
        assert_eq!(parse_event(&fam), Err(BadEvent::Family(10)));
        let mut kind = good;
        kind[1] = 6;
        assert_eq!(parse_event(&kind), Err(BadEvent::Kind(6)));
    }

    #[test]
    fn any_bytes_parse_or_error_without_panic() {
        // Every family/kind byte combination over a fixed body.
        for family in 0..=255u8 {
            for kind in [0u8, 1, 2, 3, 4, 5, 6, 255] {
                let mut e = vec![0xabu8; RECORD_LEN];
                e[0] = family;
                e[1] = kind;
                e[2] = 0x01; // FIN: a valid stealth probe
                let ok = parse_event(&e).is_ok();
                assert_eq!(ok, matches!(family, 4 | 6) && (1..=5).contains(&kind));
            }
        }
    }

    #[test]
    fn the_rust_layout_is_the_compiled_programs() {
        // The C compiler's layout, read from the BTF of the object build.rs
        // compiled, against the generated struct's.
        let Some(dump) = crate::bpf::btf::dump(super::super::xdp::object()) else {
            return; // clang or bpftool missing: nothing to compare with
        };
        crate::bpf::btf::assert_layout(&dump, "event", RawRecord::FIELDS);
    }
}
