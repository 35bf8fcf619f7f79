//! Fuzzes the decoder of the BPF programs' ring-buffer records.
//!
//! Besides "never panics", it checks:
//!
//! - exactly `RECORD_LEN` (44) bytes are accepted; any other length is the
//!   `Length` error with that length;
//! - a record of the right length is refused exactly when its family byte
//!   is not 4 or 6 (`Family`, checked first), its kind is not one of the
//!   `TCPW_*` kinds (`Kind`), or it is a stealth probe whose flags hold
//!   SYN, ACK or RST (`Flags`), naming the byte;
//! - a decoded report, written back with an encoder of its own that follows
//!   `struct event` of bpf/tcpwatch.h (offsets by hand, not the generated
//!   ones), gives the same bytes in every field the decoder reads, and
//!   decodes to the same report;
//! - an attempt is inbound exactly for a SYN record, a probe's kind is the
//!   one its record says (stealth: `ScanKind::of_tcp` of its flags);
//! - error messages are one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tcpwatch::bpf::record::{parse_event, BadEvent, Report, RECORD_LEN};
use tcpwatch::event::{Direction, ScanKind};

/// Offsets of `struct event`: family, kind, flags, pad, sport, dport, seq,
/// saddr[16], daddr[16].
const FAMILY: usize = 0;
const KIND: usize = 1;
const FLAGS: usize = 2;
const SPORT: usize = 4;
const DPORT: usize = 6;
const SEQ: usize = 8;
const SADDR: usize = 12;
const DADDR: usize = 28;
const SYN: u8 = 1;
const SYNACK: u8 = 2;
const STEALTH: u8 = 3;
const FRAGMENT: u8 = 4;
const UDP: u8 = 5;

fuzz_target!(|data: &[u8]| {
    match parse_event(data) {
        Ok(report) => {
            assert_eq!(data.len(), RECORD_LEN);
            check_round_trip(data, &report);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            assert_eq!(e, expected_error(data));
        }
    }
});

fn expected_error(data: &[u8]) -> BadEvent {
    if data.len() != RECORD_LEN {
        BadEvent::Length(data.len())
    } else if !matches!(data[FAMILY], 4 | 6) {
        BadEvent::Family(data[FAMILY])
    } else if !(SYN..=UDP).contains(&data[KIND]) {
        BadEvent::Kind(data[KIND])
    } else {
        assert_eq!(data[KIND], STEALTH, "a valid record was refused: {data:02x?}");
        assert!(data[FLAGS] & 0x16 != 0, "a stealth probe was refused: {data:02x?}");
        BadEvent::Flags(data[FLAGS])
    }
}

fn check_round_trip(data: &[u8], report: &Report) {
    let (kind, flags, src, dst, isn) = match *report {
        Report::Attempt { conn, isn } => {
            assert_eq!(conn.initiator.is_ipv4(), conn.acceptor.is_ipv4());
            match conn.direction {
                Direction::Inbound => (SYN, None, conn.initiator, conn.acceptor, isn),
                Direction::Outbound => (SYNACK, None, conn.acceptor, conn.initiator, isn),
            }
        }
        Report::Probe {
            remote,
            local,
            kind,
        } => {
            assert_eq!(remote.is_ipv4(), local.is_ipv4());
            let src = SocketAddr::new(remote, u16::from_be_bytes([data[SPORT], data[SPORT + 1]]));
            let (record, flags) = match kind {
                ScanKind::Udp => (UDP, None),
                ScanKind::Syn => (FRAGMENT, None),
                stealth => {
                    assert_eq!(ScanKind::of_tcp(data[FLAGS]), Some(stealth));
                    (STEALTH, Some(data[FLAGS]))
                }
            };
            let isn = u32::from_be_bytes(data[SEQ..SEQ + 4].try_into().unwrap());
            (record, flags, src, local, isn)
        }
    };
    let encoded = encode(kind, flags.unwrap_or(0), src, dst, isn);
    let read_len = if src.is_ipv4() { 4 } else { 16 };
    let mut read: Vec<usize> = vec![FAMILY, KIND];
    if flags.is_some() {
        read.push(FLAGS);
    }
    read.extend(SPORT..SADDR);
    read.extend(SADDR..SADDR + read_len);
    read.extend(DADDR..DADDR + read_len);
    for at in read {
        assert_eq!(encoded[at], data[at], "byte {at} of {data:02x?}");
    }
    assert_eq!(parse_event(&encoded).as_ref(), Ok(report));
}

/// `struct event` as the BPF programs fill it: network byte order, an IPv4
/// address in the first 4 of its 16 bytes.
fn encode(kind: u8, flags: u8, src: SocketAddr, dst: SocketAddr, isn: u32) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[FAMILY] = if src.is_ipv4() { 4 } else { 6 };
    out[KIND] = kind;
    out[FLAGS] = flags;
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
