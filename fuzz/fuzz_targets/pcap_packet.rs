//! Fuzzes the frame parser of the `pcap` source (and of `replay`), and the
//! probes it turns frames into.
//!
//! The first input byte picks the link type, the rest is the frame as
//! libpcap hands it over (cut at the snaplen or not). Besides "never
//! panics", it checks:
//!
//! - a TCP probe comes from the frame: its two addresses are adjacent in
//!   the frame (as in an IP header), followed later by a TCP header holding
//!   its ports and sequence number, with a valid data offset and the flags
//!   its kind says;
//! - a UDP probe's quoted addresses and port are in the frame;
//! - the link type does not matter: the same IP packet behind Ethernet,
//!   802.1Q, Linux cooked v1/v2, BSD loopback, NFLOG (either byte order) or
//!   as raw IP decodes to the same result;
//! - the probes it gives are classified exactly as the host's addresses
//!   say: nothing without a local address; with every address local, a
//!   TCP probe gives one observation (an attempt for a SYN, a probe of its
//!   kind otherwise) and a UDP probe one UDP probe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use tcpwatch::clock::Stamp;
use tcpwatch::event::{Observation, ScanKind};
use tcpwatch::source::pcap::craft;
use tcpwatch::source::pcap::probes::Probes;
use tcpwatch::source::pcap::{parse, Link, Seen};

const LINKS: [Link; 8] = [
    Link::Ethernet,
    Link::RawIp,
    Link::LinuxSll,
    Link::LinuxSll2,
    Link::Loopback,
    Link::Nflog { big_endian: false },
    Link::Nflog { big_endian: true },
    Link::Ethernet,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(pick) % LINKS.len()];
    let seen = parse(link, frame);
    match seen {
        Some(Seen::Tcp { src, dst, isn, kind }) => check_tcp(frame, src.ip(), dst.ip(), src.port(), dst.port(), isn, kind),
        Some(Seen::UdpProbe { src, dst, .. }) => {
            assert!(find(frame, &octets(src), 0).is_some(), "quoted source not in the frame");
            assert!(find(frame, &octets(dst.ip()), 0).is_some(), "quoted destination not in the frame");
            assert!(find(frame, &dst.port().to_be_bytes(), 0).is_some());
        }
        _ => {}
    }
    check_observations(seen);
    if let Some(packet) = network_layer(link, frame) {
        check_links_agree(packet, seen);
    }
});

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn check_tcp(frame: &[u8], src: IpAddr, dst: IpAddr, sport: u16, dport: u16, isn: u32, kind: ScanKind) {
    assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed families");
    let addresses: Vec<u8> = [octets(src), octets(dst)].concat();
    let at = find(frame, &addresses, 0).expect("addresses not in the frame");
    let mut head = Vec::new();
    head.extend_from_slice(&sport.to_be_bytes());
    head.extend_from_slice(&dport.to_be_bytes());
    head.extend_from_slice(&isn.to_be_bytes());
    let tcp_ok = |tcp: usize| {
        frame.len() >= tcp + 14
            && frame[tcp + 12] >> 4 >= 5
            && ScanKind::of_tcp(frame[tcp + 13]) == Some(kind)
    };
    let mut from = at + addresses.len();
    loop {
        let tcp = find(frame, &head, from)
            .unwrap_or_else(|| panic!("no TCP header of kind {kind:?} after the addresses"));
        if tcp_ok(tcp) {
            break;
        }
        from = tcp + 1;
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn stamp() -> Stamp {
    Stamp {
        wall: chrono::DateTime::<chrono::Utc>::from_timestamp(0, 0)
            .unwrap()
            .with_timezone(&chrono::Local),
        mono: std::time::Duration::ZERO,
    }
}

fn check_observations(seen: Option<Seen>) {
    let Some(seen) = seen else { return };
    let mut out = Vec::new();
    let mut probes = Probes::new();
    let nothing = |_: IpAddr| false;
    probes.frame(stamp(), seen, &nothing, &mut |o| out.push(o));
    probes.flush(&nothing, &mut |o| out.push(o));
    assert!(out.is_empty(), "observations without a local address: {out:?}");
    let everything = |_: IpAddr| true;
    let mut probes = Probes::new();
    probes.frame(stamp(), seen, &everything, &mut |o| out.push(o));
    probes.flush(&everything, &mut |o| out.push(o));
    match seen {
        Seen::Tcp { src, dst, kind, .. } => {
            assert_eq!(out.len(), 1, "{out:?}");
            match (&out[0], kind) {
                (Observation::Attempt { conn, .. }, ScanKind::Syn) => {
                    assert_eq!((conn.initiator, conn.acceptor), (src, dst));
                }
                (Observation::Probe { remote, local, kind: k, .. }, _) => {
                    assert_eq!((*remote, *local, *k), (src.ip(), dst, kind));
                }
                (other, _) => panic!("{other:?} for {seen:?}"),
            }
        }
        Seen::FirstFragment { src, dst, .. } => {
            // Flushed at once: a probe without flags.
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(matches!(&out[0], Observation::Probe { remote, local, kind: ScanKind::Syn, .. }
                if *remote == src.ip() && *local == dst));
        }
        Seen::LaterFragment { .. } => assert!(out.is_empty()),
        Seen::UdpProbe { src, dst, .. } => {
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(matches!(&out[0], Observation::Probe { remote, local, kind: ScanKind::Udp, .. }
                if *remote == src && *local == dst));
        }
    }
}

/// The IP packet of a frame whose link header is plain (no VLAN tag, and
/// for NFLOG none to read), when its EtherType and version agree.
fn network_layer(link: Link, frame: &[u8]) -> Option<&[u8]> {
    let ether_type = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (ether_type, packet) = match link {
        Link::Ethernet => (ether_type(12)?, frame.get(14..)?),
        Link::LinuxSll => (ether_type(14)?, frame.get(16..)?),
        Link::LinuxSll2 => (ether_type(0)?, frame.get(20..)?),
        Link::RawIp => return Some(frame),
        _ => return None,
    };
    let version = packet.first()? >> 4;
    let matches = (ether_type == 0x0800 && version == 4) || (ether_type == 0x86dd && version == 6);
    matches.then_some(packet)
}

fn check_links_agree(packet: &[u8], want: Option<Seen>) {
    let version = packet.first().map(|b| b >> 4);
    if !matches!(version, Some(4 | 6)) {
        return;
    }
    for (name, link, frame) in [
        ("ethernet", Link::Ethernet, craft::ethernet_ip(packet)),
        ("802.1q", Link::Ethernet, craft::vlan(42, packet)),
        ("raw ip", Link::RawIp, packet.to_vec()),
        ("linux cooked", Link::LinuxSll, craft::sll(packet)),
        ("linux cooked v2", Link::LinuxSll2, craft::sll2(packet)),
        ("loopback", Link::Loopback, craft::loopback(packet)),
        ("nflog", Link::Nflog { big_endian: false }, craft::nflog(packet, false)),
        ("nflog be", Link::Nflog { big_endian: true }, craft::nflog(packet, true)),
    ] {
        if name.starts_with("nflog") && packet.len() + 4 > usize::from(u16::MAX) {
            continue; // longer than one NFLOG record
        }
        assert_eq!(parse(link, &frame), want, "{name} decodes differently");
    }
}
