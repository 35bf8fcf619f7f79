//! Frames built by hand, for the tests of the parser, the filter, `replay`
//! and the fuzz target's link wrappers: every header the parser reads,
//! with the fields a test varies as arguments.

use std::net::{IpAddr, Ipv6Addr};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// A TCP header with 20 bytes of options (as a real SYN carries: MSS,
/// SACK, timestamps, window scale), sequence number `isn`.
pub fn tcp(src: u16, dst: u16, flags: u8, isn: u32) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0..2].copy_from_slice(&src.to_be_bytes());
    h[2..4].copy_from_slice(&dst.to_be_bytes());
    h[4..8].copy_from_slice(&isn.to_be_bytes());
    h[12] = 10 << 4; // data offset: 40 bytes
    h[13] = flags;
    h
}

/// A UDP header and `payload`.
pub fn udp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&src.to_be_bytes());
    h.extend_from_slice(&dst.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An IPv4 packet: `options` 32-bit words of NOP options, protocol
/// `proto`, fragment field `fragment` (flags and offset) and ID `id`.
pub fn ipv4_full(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: usize,
    id: u16,
    fragment: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 5 + options;
    let mut h = vec![0u8; ihl * 4];
    h[0] = 0x40 | ihl as u8;
    let total = (h.len() + payload.len()) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&fragment.to_be_bytes());
    h[8] = 64; // TTL
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    for byte in &mut h[20..] {
        *byte = 1; // NOP
    }
    h.extend_from_slice(payload);
    h
}

/// An unfragmented IPv4 TCP packet.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    ipv4_full(src, dst, 6, 0, 1, 0x4000, payload)
}

/// The IPv4 fragments of a TCP `segment`, `size` bytes of it each (a
/// multiple of 8), as `nmap -f` (8) or `--mtu 16` sends them.
pub fn ipv4_fragments(
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    segment: &[u8],
    size: usize,
) -> Vec<Vec<u8>> {
    segment
        .chunks(size)
        .enumerate()
        .map(|(i, piece)| {
            let offset = (i * size / 8) as u16;
            let more = if (i + 1) * size < segment.len() {
                0x2000
            } else {
                0
            };
            ipv4_full(src, dst, 6, 0, id, more | offset, piece)
        })
        .collect()
}

/// An IPv6 packet whose payload begins with next header `next`.
pub fn ipv6_next(src: &str, dst: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
    h[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 TCP packet.
pub fn ipv6(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    ipv6_next(src, dst, 6, payload)
}

/// An IPv6 extension header of type `kind` (0, 43, 60: 8 bytes of padding
/// options or an empty routing header) whose next header is `next`,
/// followed by `rest`.
pub fn ipv6_extension(next: u8, rest: &[u8]) -> Vec<u8> {
    // Hop-by-hop / destination options: PadN over 6 bytes; a routing
    // header of type 0 with no address left reads the same way.
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend_from_slice(rest);
    h
}

/// An IPv6 fragment header (next header `next`, byte offset `offset`,
/// more fragments `more`, ID `id`) followed by `rest`.
pub fn ipv6_fragment_header(next: u8, offset: u16, more: bool, id: u32, rest: &[u8]) -> Vec<u8> {
    let field = (offset / 8) << 3 | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(rest);
    h
}

/// ICMP port unreachable from `from` to `to`, quoting `probe` (an IPv4
/// packet), cut to its header and 8 bytes as the kernel's minimum.
pub fn icmp4_unreachable(from: [u8; 4], to: [u8; 4], probe: &[u8]) -> Vec<u8> {
    let ihl = usize::from(probe[0] & 0x0f) * 4;
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&probe[..(ihl + 8).min(probe.len())]);
    ipv4_full(from, to, 1, 0, 7, 0, &icmp)
}

/// ICMPv6 port unreachable from `from` to `to`, quoting `probe`.
pub fn icmp6_unreachable(from: &str, to: &str, probe: &[u8]) -> Vec<u8> {
    let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(probe);
    ipv6_next(from, to, 58, &icmp)
}

/// An Ethernet frame of `ether_type`.
pub fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An Ethernet frame holding the IP packet `packet` (its family from its
/// version nibble).
pub fn ethernet_ip(packet: &[u8]) -> Vec<u8> {
    ethernet(ether_type(packet), packet)
}

fn ether_type(packet: &[u8]) -> u16 {
    if packet[0] >> 4 == 6 {
        0x86dd
    } else {
        0x0800
    }
}

/// An Ethernet frame with an 802.1Q tag `id`.
pub fn vlan(id: u16, packet: &[u8]) -> Vec<u8> {
    let mut tag = id.to_be_bytes().to_vec();
    tag.extend_from_slice(&ether_type(packet).to_be_bytes());
    tag.extend_from_slice(packet);
    ethernet(0x8100, &tag)
}

/// Linux cooked v1: a 16-byte header, the protocol at 14.
pub fn sll(packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f.extend_from_slice(&ether_type(packet).to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// Linux cooked v2: a 20-byte header, the protocol first.
pub fn sll2(packet: &[u8]) -> Vec<u8> {
    let mut f = ether_type(packet).to_be_bytes().to_vec();
    f.extend_from_slice(&[0u8; 18]);
    f.extend_from_slice(packet);
    f
}

/// BSD loopback (`NULL`): the address family in the writer's byte order
/// (little-endian here), 2 for IPv4 and macOS's 30 for IPv6.
pub fn loopback(packet: &[u8]) -> Vec<u8> {
    let family: u32 = if packet[0] >> 4 == 6 { 30 } else { 2 };
    let mut f = family.to_le_bytes().to_vec();
    f.extend_from_slice(packet);
    f
}

/// NFLOG as Linux writes it on a little-endian host: the header (family,
/// version 0, group 5), a prefix record, a hardware-header record of odd
/// length (padded), then the payload record.
pub fn nflog(packet: &[u8], big_endian: bool) -> Vec<u8> {
    let family = if packet[0] >> 4 == 6 { 10 } else { 2 };
    let mut f = vec![family, 0, 0, 5];
    let word = |n: u16| {
        if big_endian {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        }
    };
    let mut record = |kind: u16, value: &[u8]| {
        let len = 4 + value.len();
        f.extend_from_slice(&word(len as u16));
        f.extend_from_slice(&word(kind));
        f.extend_from_slice(value);
        f.resize(f.len().next_multiple_of(4), 0);
    };
    record(10, b"tcpwatch\0"); // NFULA_PREFIX
    record(1, &[0x08, 0x00, 3]); // NFULA_PACKET_HDR, 3 bytes: padded
    record(9, packet); // NFULA_PAYLOAD
    f
}

/// An address of either family, for the tests' expectations.
pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}
