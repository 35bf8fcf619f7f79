//! Fuzzes the decoder of the XDP program's ring-buffer records.
//!
//! Besides "never panics", it checks:
//!
//! - exactly `EVENT_LEN` (44) bytes are accepted; any other length is the
//!   `Length` error with that length;
//! - a record of the right length is refused exactly when its family byte
//!   is not 4 or 6 (`Family`, checked first) or its kind is not SYN or
//!   SYN+ACK (`Kind`), naming the byte;
//! - a decoded event, written back with an encoder that follows `struct
//!   event` of bpf/tcpwatch.bpf.c, gives the same bytes in every field the
//!   decoder reads, and decodes to the same event;
//! - error messages are one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tcpwatch::event::Direction;
use tcpwatch::bpf::record::{parse_event, BadEvent, SynEvent, EVENT_LEN};

/// Offsets of `struct event`: family, kind, flags, pad, sport, dport, seq,
/// saddr[16], daddr[16].
const FAMILY: usize = 0;
const KIND: usize = 1;
const SPORT: usize = 4;
const DPORT: usize = 6;
const SEQ: usize = 8;
const SADDR: usize = 12;
const DADDR: usize = 28;
const TCPW_SYN: u8 = 1;
const TCPW_SYNACK: u8 = 2;

fuzz_target!(|data: &[u8]| {
    match parse_event(data) {
        Ok(event) => {
            assert_eq!(data.len(), EVENT_LEN);
            check_round_trip(data, &event);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            assert_eq!(e, expected_error(data));
        }
    }
});

fn expected_error(data: &[u8]) -> BadEvent {
    if data.len() != EVENT_LEN {
        BadEvent::Length(data.len())
    } else if !matches!(data[FAMILY], 4 | 6) {
        BadEvent::Family(data[FAMILY])
    } else {
        assert!(
            !matches!(data[KIND], TCPW_SYN | TCPW_SYNACK),
            "a valid record was refused: {data:02x?}"
        );
        BadEvent::Kind(data[KIND])
    }
}

fn check_round_trip(data: &[u8], event: &SynEvent) {
    let conn = &event.conn;
    assert_eq!(conn.initiator.is_ipv4(), conn.acceptor.is_ipv4());
    let (kind, src, dst) = match conn.direction {
        Direction::Inbound => (TCPW_SYN, conn.initiator, conn.acceptor),
        Direction::Outbound => (TCPW_SYNACK, conn.acceptor, conn.initiator),
    };
    let encoded = encode(kind, src, dst, event.isn);
    let read_len = if src.is_ipv4() { 4 } else { 16 };
    let mut read: Vec<usize> = vec![FAMILY, KIND];
    read.extend(SPORT..SADDR);
    read.extend(SADDR..SADDR + read_len);
    read.extend(DADDR..DADDR + read_len);
    for at in read {
        assert_eq!(encoded[at], data[at], "byte {at} of {data:02x?}");
    }
    assert_eq!(parse_event(&encoded).as_ref(), Ok(event));
}

/// `struct event` as the BPF program fills it: network byte order, an IPv4
/// address in the first 4 of its 16 bytes.
fn encode(kind: u8, src: SocketAddr, dst: SocketAddr, isn: u32) -> [u8; EVENT_LEN] {
    let mut out = [0u8; EVENT_LEN];
    out[FAMILY] = if src.is_ipv4() { 4 } else { 6 };
    out[KIND] = kind;
    out[SPORT..SPORT + 2].copy_from_slice(&src.port().to_be_bytes());
    out[DPORT..DPORT + 2].copy_from_slice(&dst.port().to_be_bytes());
    out[SEQ..SEQ + 4].copy_from_slice(&isn.to_be_bytes());
    for (at, ip) in [(SADDR, src.ip()), (DADDR, dst.ip())] {
        match ip {
            IpAddr::V4(v4) => out[at..at + 4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out[at..at + 16].copy_from_slice(&v6.octets()),
        }
    }
    out
}
