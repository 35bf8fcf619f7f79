//! Fuzzes the capture decoder of the `pcap` source (and of `replay`).
//!
//! The first input byte picks the link type, the rest is the frame as
//! libpcap hands it over (cut at the snaplen or not). Besides "never
//! panics", it checks:
//!
//! - a parsed SYN comes from the frame: its two addresses are adjacent in
//!   the frame (as in an IP header), followed later by a TCP header holding
//!   its ports and sequence number with SYN set, ACK and RST clear and a
//!   valid data offset;
//! - the link type does not matter: the same IP packet behind Ethernet,
//!   802.1Q, Linux cooked v1/v2 or as raw IP decodes to the same result;
//! - `parse_attempt` classifies exactly as the host's addresses say:
//!   nothing without a local address, inbound when the destination is ours,
//!   outbound when only the source is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::IpAddr;
use tcpwatch::event::Direction;
use tcpwatch::source::pcap::{parse_attempt, parse_syn, Link, Syn};

const LINKS: [Link; 4] = [Link::Ethernet, Link::RawIp, Link::LinuxSll, Link::LinuxSll2];
const IPV4: u16 = 0x0800;
const IPV6: u16 = 0x86dd;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let link = LINKS[usize::from(pick) % LINKS.len()];
    let syn = parse_syn(link, frame);
    if let Some(syn) = syn {
        check_from_frame(&syn, frame);
    }
    check_attempts(link, frame, syn);
    if let Some((ether_type, packet)) = network_layer(link, frame) {
        check_links_agree(ether_type, packet, syn);
    }
});

fn check_from_frame(syn: &Syn, frame: &[u8]) {
    let addresses: Vec<u8> = [syn.src.ip(), syn.dst.ip()]
        .iter()
        .flat_map(|ip| match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        })
        .collect();
    assert_eq!(
        syn.src.is_ipv4(),
        syn.dst.is_ipv4(),
        "mixed families {syn:?}"
    );
    let at = find(frame, &addresses, 0).expect("addresses not in the frame");
    let mut head = Vec::new();
    head.extend_from_slice(&syn.src.port().to_be_bytes());
    head.extend_from_slice(&syn.dst.port().to_be_bytes());
    head.extend_from_slice(&syn.isn.to_be_bytes());
    let tcp_ok = |tcp: usize| {
        frame.len() >= tcp + 14 && frame[tcp + 12] >> 4 >= 5 && frame[tcp + 13] & 0x16 == 0x02
    };
    let mut from = at + addresses.len();
    loop {
        let tcp = find(frame, &head, from)
            .unwrap_or_else(|| panic!("no SYN-only TCP header with {syn:?} after the addresses"));
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

fn check_attempts(link: Link, frame: &[u8], syn: Option<Syn>) {
    let none = HashSet::new();
    assert_eq!(
        parse_attempt(link, frame, &none),
        None,
        "attempt with no local address"
    );
    let Some(syn) = syn else {
        return;
    };
    let dst: HashSet<IpAddr> = [syn.dst.ip()].into();
    let inbound = parse_attempt(link, frame, &dst).expect("to a local address");
    assert_eq!(inbound.direction, Direction::Inbound);
    assert_eq!((inbound.initiator, inbound.acceptor), (syn.src, syn.dst));
    if syn.src.ip() != syn.dst.ip() {
        let src: HashSet<IpAddr> = [syn.src.ip()].into();
        let outbound = parse_attempt(link, frame, &src).expect("from a local address");
        assert_eq!(outbound.direction, Direction::Outbound);
        assert_eq!((outbound.initiator, outbound.acceptor), (syn.src, syn.dst));
    }
}

/// The EtherType and IP packet of a frame whose link header is plain (no
/// VLAN tag); raw IP takes the EtherType its version nibble names.
fn network_layer(link: Link, frame: &[u8]) -> Option<(u16, &[u8])> {
    let ether_type = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (ether_type, packet) = match link {
        Link::Ethernet => (ether_type(12)?, frame.get(14..)?),
        Link::LinuxSll => (ether_type(14)?, frame.get(16..)?),
        Link::LinuxSll2 => (ether_type(0)?, frame.get(20..)?),
        Link::RawIp => match frame.first()? >> 4 {
            4 => (IPV4, frame),
            6 => (IPV6, frame),
            _ => return None,
        },
    };
    let version = packet.first()? >> 4;
    let matches = (ether_type == IPV4 && version == 4) || (ether_type == IPV6 && version == 6);
    matches.then_some((ether_type, packet))
}

fn check_links_agree(ether_type: u16, packet: &[u8], want: Option<Syn>) {
    let tag = ether_type.to_be_bytes();
    let mut ethernet = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    ethernet.extend_from_slice(&tag);
    ethernet.extend_from_slice(packet);
    let mut vlan = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0x00, 0x00, 0x2a];
    vlan.extend_from_slice(&tag);
    vlan.extend_from_slice(packet);
    let mut sll = vec![0u8; 14];
    sll.extend_from_slice(&tag);
    sll.extend_from_slice(packet);
    let mut sll2 = tag.to_vec();
    sll2.extend_from_slice(&[0u8; 18]);
    sll2.extend_from_slice(packet);
    for (name, link, frame) in [
        ("ethernet", Link::Ethernet, &ethernet[..]),
        ("802.1q", Link::Ethernet, &vlan[..]),
        ("raw ip", Link::RawIp, packet),
        ("linux cooked", Link::LinuxSll, &sll[..]),
        ("linux cooked v2", Link::LinuxSll2, &sll2[..]),
    ] {
        assert_eq!(parse_syn(link, frame), want, "{name} decodes differently");
    }
}
