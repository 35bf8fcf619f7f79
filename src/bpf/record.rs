//! The ring record of the XDP program (`struct event` in
//! `bpf/tcpwatch.bpf.c`), decoded. A pure function over bytes, so it is
//! tested and fuzzed without a kernel.

use crate::event::{Connection, Direction};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `struct event` of the BPF program: family, kind, TCP flags, pad, source
/// port, destination port, sequence number (network order), source and
/// destination addresses (16 bytes each, network order; IPv4 in the first 4).
pub const EVENT_LEN: usize = 44;
const SADDR: usize = 12;
const DADDR: usize = 28;
pub const KIND_SYN: u8 = 1;
pub const KIND_SYNACK: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEvent {
    #[error("event of {0} bytes, expected {EVENT_LEN}")]
    Length(usize),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// One decoded event: the connection and the sender's initial sequence
/// number (the same in a retransmission, new when a 4-tuple is reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynEvent {
    pub conn: Connection,
    pub isn: u32,
}

/// Turns one ring-buffer event into the connection it reports: a SYN is an
/// inbound attempt (source -> destination); a SYN+ACK answers an outbound
/// connection of this host (destination -> source).
pub fn parse_event(bytes: &[u8]) -> Result<SynEvent, BadEvent> {
    let bytes: &[u8; EVENT_LEN] = bytes
        .try_into()
        .map_err(|_| BadEvent::Length(bytes.len()))?;
    let sport = u16::from_be_bytes([bytes[4], bytes[5]]);
    let dport = u16::from_be_bytes([bytes[6], bytes[7]]);
    let addr = |at: usize| -> Result<IpAddr, BadEvent> {
        let raw = &bytes[at..at + 16];
        match bytes[0] {
            4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(raw).expect("16 bytes"),
            ))),
            other => Err(BadEvent::Family(other)),
        }
    };
    let isn = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let src = SocketAddr::new(addr(SADDR)?, sport);
    let dst = SocketAddr::new(addr(DADDR)?, dport);
    let conn = match bytes[1] {
        KIND_SYN => Connection {
            initiator: src,
            acceptor: dst,
            direction: Direction::Inbound,
        },
        KIND_SYNACK => Connection {
            initiator: dst,
            acceptor: src,
            direction: Direction::Outbound,
        },
        other => return Err(BadEvent::Kind(other)),
    };
    Ok(SynEvent { conn, isn })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(family: u8, kind: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut e = vec![0u8; EVENT_LEN];
        e[0] = family;
        e[1] = kind;
        e[2] = if kind == KIND_SYN { 0x02 } else { 0x12 };
        e[4..6].copy_from_slice(&sport.to_be_bytes());
        e[6..8].copy_from_slice(&dport.to_be_bytes());
        e[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        e[12..12 + src.len()].copy_from_slice(src);
        e[28..28 + dst.len()].copy_from_slice(dst);
        e
    }

    fn conn(from: &str, to: &str, direction: Direction) -> Connection {
        Connection {
            initiator: from.parse().unwrap(),
            acceptor: to.parse().unwrap(),
            direction,
        }
    }

    #[test]
    fn syn_v4_is_inbound_from_source() {
        let e = event(4, KIND_SYN, &[10, 9, 0, 2], 40000, &[10, 9, 0, 1], 22);
        let got = parse_event(&e).unwrap();
        assert_eq!(
            got.conn,
            conn("10.9.0.2:40000", "10.9.0.1:22", Direction::Inbound)
        );
        assert_eq!(got.isn, 0xdead_beef);
    }

    #[test]
    fn synack_v4_is_outbound_from_destination() {
        // The SYN+ACK of 10.9.0.2:80 answering our 10.9.0.1:51000.
        let e = event(4, KIND_SYNACK, &[10, 9, 0, 2], 80, &[10, 9, 0, 1], 51000);
        assert_eq!(
            parse_event(&e).unwrap().conn,
            conn("10.9.0.1:51000", "10.9.0.2:80", Direction::Outbound)
        );
    }

    #[test]
    fn syn_v6_keeps_all_sixteen_bytes_and_port_order() {
        let src: Ipv6Addr = "fd00::2".parse().unwrap();
        let dst: Ipv6Addr = "fd00:0:0:1::ffff:1".parse().unwrap();
        let e = event(6, KIND_SYN, &src.octets(), 0x1234, &dst.octets(), 0xfffe);
        let got = parse_event(&e).unwrap().conn;
        assert_eq!(
            got,
            conn(
                "[fd00::2]:4660",
                "[fd00:0:0:1::ffff:1]:65534",
                Direction::Inbound
            )
        );
    }

    #[test]
    fn bad_events_are_errors() {
        let good = event(4, KIND_SYN, &[1, 2, 3, 4], 1, &[5, 6, 7, 8], 2);
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
        kind[1] = 3;
        assert_eq!(parse_event(&kind), Err(BadEvent::Kind(3)));
    }

    #[test]
    fn any_bytes_parse_or_error_without_panic() {
        // Every family/kind byte combination over a fixed body.
        for family in 0..=255u8 {
            for kind in [0u8, 1, 2, 3, 255] {
                let mut e = vec![0xabu8; EVENT_LEN];
                e[0] = family;
                e[1] = kind;
                let ok = parse_event(&e).is_ok();
                assert_eq!(ok, matches!(family, 4 | 6) && matches!(kind, 1 | 2));
            }
        }
    }
}
