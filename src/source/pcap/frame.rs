//! The frame parser of the `pcap` source and of `replay`: a pure function
//! from a captured frame to what it tells the detectors ([`Seen`]), or
//! `None` for anything else. It reads every link type the agent captures
//! or replays ([`Link`]), up to two VLAN tags, IPv4 (honouring IHL and the
//! total length, so Ethernet padding is never read as TCP), IPv6 with up to
//! [`MAX_EXTENSIONS`] extension headers, both families' fragments, TCP, and
//! the ICMP/ICMPv6 port-unreachable errors this host sends, which quote the
//! UDP probe they answer.

use crate::event::ScanKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The bytes of a frame the kernel copies. Enough for Ethernet + one VLAN
/// tag + the longest IPv4 header + the first 14 bytes of TCP; an ICMP or
/// ICMPv6 error + the header it quotes (an IPv4 one of up to 60 bytes, or
/// IPv6) + 8 bytes of UDP; and a SYN behind 8 extension headers of 8
/// bytes. In immediate mode libpcap's ring has frames of a fixed size that
/// follows the snaplen, so a longer one would hold fewer frames of a flood.
pub const SNAPLEN: i32 = 144;

/// IPv6 extension headers walked at most before giving up on a packet.
pub const MAX_EXTENSIONS: usize = 8;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// The offset of the flags byte in a TCP header.
const TCP_FLAGS_AT: usize = 13;

/// How the frames of a capture begin (libpcap's link types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `EN10MB` (1).
    Ethernet,
    /// Bare IPv4/IPv6 (tun devices, WireGuard): `RAW` (12, 14, 101),
    /// `IPV4` (228), `IPV6` (229).
    RawIp,
    /// Linux cooked capture v1 (113, 16-byte header).
    LinuxSll,
    /// Linux cooked capture v2 (276, 20-byte header).
    LinuxSll2,
    /// BSD/macOS loopback: `NULL` (0, the address family in the capturing
    /// host's byte order) and `LOOP` (108, in network order). The family's
    /// value differs between systems (IPv6 is 10, 24, 28 or 30), so the IP
    /// version is read from the packet itself.
    Loopback,
    /// Linux NFLOG (239, `tcpdump -i nflog`): a 4-byte header, then
    /// type-length-value records whose lengths and types are in the byte
    /// order of the host that wrote the capture (`big_endian`); the packet
    /// is the payload record (type 9), from its IP header on.
    Nflog { big_endian: bool },
}

impl Link {
    /// The link type libpcap numbers `linktype`, for frames written in the
    /// byte order `big_endian` says (it matters for NFLOG only); `None`
    /// when the agent does not read it.
    pub fn of(linktype: u32, big_endian: bool) -> Option<Link> {
        match linktype {
            0 | 108 => Some(Link::Loopback),
            1 => Some(Link::Ethernet),
            12 | 14 | 101 | 228 | 229 => Some(Link::RawIp),
            113 => Some(Link::LinuxSll),
            239 => Some(Link::Nflog { big_endian }),
            276 => Some(Link::LinuxSll2),
            _ => None,
        }
    }
}

/// A fragmented packet's identity: both addresses and its IP ID (IPv4's
/// 16 bits, IPv6's 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
}

/// What a frame tells the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A TCP segment (or the first fragment of one) whose flags make it a
    /// probe: a SYN ([`ScanKind::Syn`], a connection attempt) or a FIN,
    /// NULL or Xmas probe.
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        /// The sequence number: the SYN's tells a retransmission from a new
        /// connection that reuses the same ports.
        isn: u32,
        kind: ScanKind,
    },
    /// The first fragment of a TCP packet whose flags are in a later
    /// fragment: its ports are known, whether it is a SYN is not yet.
    FirstFragment {
        key: FragmentKey,
        src: SocketAddr,
        dst: SocketAddr,
        isn: u32,
        /// Where the flags byte lies in the packet's fragmentable part.
        flags_at: u32,
    },
    /// A later fragment of a TCP packet: the bytes it carries from `offset`
    /// of the fragmentable part (the first [`LATER_BYTES`] at most).
    LaterFragment {
        key: FragmentKey,
        offset: u32,
        len: u8,
        bytes: [u8; LATER_BYTES],
    },
    /// A UDP probe this host answered with ICMP port unreachable: `from`
    /// sent the answer, quoting the probe from `src` to `dst`.
    UdpProbe {
        from: IpAddr,
        src: IpAddr,
        dst: SocketAddr,
    },
}

/// How many bytes of a later fragment are kept: enough to hold the TCP
/// flags whatever the fragment size (a fragment's offset is a multiple of
/// 8, so the flags byte lies in the first 8 bytes of some fragment, or
/// further in when IPv6 headers follow the fragment header).
pub const LATER_BYTES: usize = 16;

impl Seen {
    /// The flags byte of the packet `flags_at` describes, if this later
    /// fragment carries it.
    pub fn flags_from(
        offset: u32,
        len: u8,
        bytes: &[u8; LATER_BYTES],
        flags_at: u32,
    ) -> Option<u8> {
        let at = flags_at.checked_sub(offset)? as usize;
        (at < usize::from(len)).then(|| bytes[at])
    }
}

/// What `frame` (as captured on `link`) tells the detectors, if anything.
pub fn parse(link: Link, frame: &[u8]) -> Option<Seen> {
    let (ether_type, packet) = network(link, frame)?;
    match ether_type {
        ETHERTYPE_IPV4 => ipv4(packet),
        ETHERTYPE_IPV6 => ipv6(packet),
        _ => None,
    }
}

/// The EtherType and the network-layer packet of a frame.
fn network(link: Link, frame: &[u8]) -> Option<(u16, &[u8])> {
    let u16_at = |bytes: &[u8], at: usize| -> Option<u16> {
        let b = bytes.get(at..at + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    };
    match link {
        Link::Ethernet => {
            let mut ether_type = u16_at(frame, 12)?;
            let mut at = 14;
            // Up to two tags (802.1Q, 802.1ad) the NIC left in the frame.
            for _ in 0..2 {
                if ether_type != ETHERTYPE_VLAN && ether_type != ETHERTYPE_QINQ {
                    break;
                }
                ether_type = u16_at(frame, at + 2)?;
                at += 4;
            }
            Some((ether_type, frame.get(at..)?))
        }
        Link::RawIp => by_version(frame),
        Link::LinuxSll => Some((u16_at(frame, 14)?, frame.get(16..)?)),
        Link::LinuxSll2 => Some((u16_at(frame, 0)?, frame.get(20..)?)),
        Link::Loopback => by_version(frame.get(4..)?),
        Link::Nflog { big_endian } => nflog_payload(frame, big_endian).and_then(by_version),
    }
}

/// A bare IP packet, its family from its version nibble.
fn by_version(packet: &[u8]) -> Option<(u16, &[u8])> {
    match packet.first()? >> 4 {
        4 => Some((ETHERTYPE_IPV4, packet)),
        6 => Some((ETHERTYPE_IPV6, packet)),
        _ => None,
    }
}

/// The payload record (type 9) of an NFLOG frame.
fn nflog_payload(frame: &[u8], big_endian: bool) -> Option<&[u8]> {
    const PAYLOAD: u16 = 9;
    let mut rest = frame.get(4..)?;
    while rest.len() >= 4 {
        let word = |at: usize| {
            let b = [rest[at], rest[at + 1]];
            if big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        let (len, kind) = (usize::from(word(0)), word(2));
        if len < 4 {
            return None;
        }
        // The value may be cut short by the snaplen.
        let value = rest.get(4..len.min(rest.len()))?;
        if kind == PAYLOAD {
            return Some(value);
        }
        // Records are padded to 4 bytes.
        rest = rest.get(len.next_multiple_of(4)..)?;
    }
    None
}

fn ipv4(packet: &[u8]) -> Option<Seen> {
    let header = packet.get(..20)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if total < ihl {
        return None;
    }
    // The payload stops at the total length: past it is link padding.
    let payload = packet.get(ihl..total.min(packet.len()))?;
    let src = IpAddr::V4(Ipv4Addr::new(
        header[12], header[13], header[14], header[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        header[16], header[17], header[18], header[19],
    ));
    let fragment = u16::from_be_bytes([header[6], header[7]]);
    let (more, offset) = (fragment & 0x2000 != 0, u32::from(fragment & 0x1fff) * 8);
    let id = u32::from(u16::from_be_bytes([header[4], header[5]]));
    match header[9] {
        PROTO_TCP => {
            let key = FragmentKey { src, dst, id };
            tcp(src, dst, payload, fragment_of(more, offset, key, 0))
        }
        PROTO_ICMP if offset == 0 => icmp4(src, payload),
        _ => None,
    }
}

/// Where a TCP header sits in a fragmented packet, if it is one.
#[derive(Debug, Clone, Copy)]
enum Fragment {
    /// Not fragmented.
    Whole,
    /// The first fragment; the TCP header starts `tcp_at` bytes into the
    /// fragmentable part.
    First { key: FragmentKey, tcp_at: u32 },
    /// A later fragment starting `offset` bytes into the fragmentable part.
    Later { key: FragmentKey, offset: u32 },
}

fn fragment_of(more: bool, offset: u32, key: FragmentKey, tcp_at: u32) -> Fragment {
    match (more, offset) {
        (false, 0) => Fragment::Whole,
        (true, 0) => Fragment::First { key, tcp_at },
        _ => Fragment::Later { key, offset },
    }
}

fn tcp(src: IpAddr, dst: IpAddr, payload: &[u8], fragment: Fragment) -> Option<Seen> {
    if let Fragment::Later { key, offset } = fragment {
        let len = payload.len().min(LATER_BYTES);
        let mut bytes = [0u8; LATER_BYTES];
        bytes[..len].copy_from_slice(&payload[..len]);
        return Some(Seen::LaterFragment {
            key,
            offset,
            len: len as u8,
            bytes,
        });
    }
    let ports = payload.get(..4)?;
    let src = SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]]));
    let dst = SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]]));
    let isn = payload
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    match payload.get(..=TCP_FLAGS_AT) {
        Some(head) => {
            // A data offset below 5 words is no TCP header.
            if head[12] >> 4 < 5 {
                return None;
            }
            let kind = ScanKind::of_tcp(head[TCP_FLAGS_AT])?;
            Some(Seen::Tcp {
                src,
                dst,
                isn,
                kind,
            })
        }
        None => match fragment {
            Fragment::First { key, tcp_at } => Some(Seen::FirstFragment {
                key,
                src,
                dst,
                isn,
                flags_at: tcp_at + TCP_FLAGS_AT as u32,
            }),
            // A whole segment cut short (by the snaplen, or a bogus one).
            _ => None,
        },
    }
}

/// ICMP destination unreachable (3), port unreachable (3), quoting the
/// UDP probe's IPv4 header and first 8 bytes.
fn icmp4(from: IpAddr, icmp: &[u8]) -> Option<Seen> {
    if icmp.get(..2)? != [3, 3] {
        return None;
    }
    let quoted = icmp.get(8..)?;
    let header = quoted.get(..20)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let fragment = u16::from_be_bytes([header[6], header[7]]);
    if header[0] >> 4 != 4 || ihl < 20 || header[9] != PROTO_UDP || fragment & 0x1fff != 0 {
        return None;
    }
    let udp = quoted.get(ihl..ihl + 4)?;
    let src = IpAddr::V4(Ipv4Addr::new(
        header[12], header[13], header[14], header[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        header[16], header[17], header[18], header[19],
    ));
    let port = u16::from_be_bytes([udp[2], udp[3]]);
    Some(Seen::UdpProbe {
        from,
        src,
        dst: SocketAddr::new(dst, port),
    })
}

/// An IPv6 header's addresses and the headers after it: the upper-layer
/// protocol, where it starts, and the fragment header met on the way.
struct Walked<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    upper: &'a [u8],
    fragment: Fragment,
}

fn walk_ipv6(packet: &[u8]) -> Option<Walked<'_>> {
    let header = packet.get(..40)?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| -> IpAddr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&header[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let (src, dst) = (addr(8), addr(24));
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let end = if length == 0 {
        packet.len() // a jumbogram: the hop-by-hop header holds its length
    } else {
        (40 + length).min(packet.len())
    };
    let mut rest = packet.get(40..end)?;
    let mut next = header[6];
    let mut fragment = Fragment::Whole;
    // Bytes of headers after the fragment header: where the upper-layer
    // header starts within the fragmentable part.
    let mut after_fragment: Option<u32> = None;
    for _ in 0..=MAX_EXTENSIONS {
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => usize::from(*rest.get(1)?) * 8 + 8,
            IPV6_AUTH => usize::from(*rest.get(1)?) * 4 + 8,
            IPV6_FRAGMENT => {
                let h = rest.get(..8)?;
                if after_fragment.is_some() {
                    return None; // two fragment headers: bogus
                }
                let field = u16::from_be_bytes([h[2], h[3]]);
                let offset = u32::from(field >> 3) * 8;
                let more = field & 1 != 0;
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                fragment = fragment_of(more, offset, FragmentKey { src, dst, id }, 0);
                next = h[0];
                rest = rest.get(8..)?;
                if let Fragment::Later { .. } = fragment {
                    // What follows is the middle of the packet: no header
                    // to walk. Its first header, `next`, is the protocol.
                    return Some(Walked {
                        src,
                        dst,
                        proto: next,
                        upper: rest,
                        fragment,
                    });
                }
                after_fragment = Some(0);
                continue;
            }
            proto => {
                if let (Fragment::First { key, .. }, Some(tcp_at)) = (fragment, after_fragment) {
                    fragment = Fragment::First { key, tcp_at };
                }
                return Some(Walked {
                    src,
                    dst,
                    proto,
                    upper: rest,
                    fragment,
                });
            }
        };
        next = *rest.first()?;
        rest = rest.get(len..)?;
        if let Some(at) = after_fragment.as_mut() {
            *at += len as u32;
        }
    }
    None
}

fn ipv6(packet: &[u8]) -> Option<Seen> {
    let walked = walk_ipv6(packet)?;
    match walked.proto {
        PROTO_TCP => tcp(walked.src, walked.dst, walked.upper, walked.fragment),
        // A later fragment names the first header of the fragmentable
        // part, which may be an extension header before TCP.
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH
            if matches!(walked.fragment, Fragment::Later { .. }) =>
        {
            tcp(walked.src, walked.dst, walked.upper, walked.fragment)
        }
        PROTO_ICMPV6 if matches!(walked.fragment, Fragment::Whole) => {
            icmp6(walked.src, walked.upper)
        }
        _ => None,
    }
}

/// ICMPv6 destination unreachable (1), port unreachable (4), quoting the
/// UDP probe's IPv6 packet.
fn icmp6(from: IpAddr, icmp: &[u8]) -> Option<Seen> {
    if icmp.get(..2)? != [1, 4] {
        return None;
    }
    let quoted = walk_ipv6(icmp.get(8..)?)?;
    if quoted.proto != PROTO_UDP
        || !matches!(quoted.fragment, Fragment::Whole | Fragment::First { .. })
    {
        return None;
    }
    let udp = quoted.upper.get(..4)?;
    let port = u16::from_be_bytes([udp[2], udp[3]]);
    Some(Seen::UdpProbe {
        from,
        src: quoted.src,
        dst: SocketAddr::new(quoted.dst, port),
    })
}

#[cfg(test)]
mod tests {
    use super::super::craft::*;
    // By its full path: the tests module is this file to the layer check.
    use crate::event::ScanKind;
    use crate::source::pcap::frame::{parse, FragmentKey, Link, Seen, MAX_EXTENSIONS, SNAPLEN};

    const A: [u8; 4] = [10, 0, 0, 7];
    const B: [u8; 4] = [10, 0, 0, 5];

    fn tcp_seen(src: &str, dst: &str, isn: u32, kind: ScanKind) -> Option<Seen> {
        Some(Seen::Tcp {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            isn,
            kind,
        })
    }

    fn v4(flags: u8) -> Vec<u8> {
        ethernet_ip(&ipv4(A, B, &tcp(40000, 22, flags, 9)))
    }

    #[test]
    fn syns_and_stealth_probes_are_read_ordinary_segments_are_not() {
        let want = |kind| tcp_seen("10.0.0.7:40000", "10.0.0.5:22", 9, kind);
        assert_eq!(parse(Link::Ethernet, &v4(SYN)), want(ScanKind::Syn));
        assert_eq!(parse(Link::Ethernet, &v4(SYN | RST)), want(ScanKind::Syn));
        assert_eq!(parse(Link::Ethernet, &v4(FIN)), want(ScanKind::Fin));
        assert_eq!(parse(Link::Ethernet, &v4(0)), want(ScanKind::Null));
        assert_eq!(
            parse(Link::Ethernet, &v4(FIN | PSH | URG)),
            want(ScanKind::Xmas)
        );
        for flags in [SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK] {
            assert_eq!(parse(Link::Ethernet, &v4(flags)), None, "{flags:#x}");
        }
    }

    #[test]
    fn ipv6_probes_are_read() {
        let frame = ethernet_ip(&ipv6("fd00::7", "fd00::5", &tcp(40000, 443, SYN, 1)));
        assert_eq!(
            parse(Link::Ethernet, &frame),
            tcp_seen("[fd00::7]:40000", "[fd00::5]:443", 1, ScanKind::Syn)
        );
        let frame = ethernet_ip(&ipv6("fd00::7", "fd00::5", &tcp(1, 2, FIN | PSH | URG, 1)));
        assert_eq!(
            parse(Link::Ethernet, &frame),
            tcp_seen("[fd00::7]:1", "[fd00::5]:2", 1, ScanKind::Xmas)
        );
    }

    #[test]
    fn a_syn_behind_extension_headers_is_read_up_to_the_bound() {
        let segment = tcp(1234, 80, SYN, 5);
        let want = tcp_seen("[fd00::7]:1234", "[fd00::5]:80", 5, ScanKind::Syn);
        // Hop-by-hop, routing, destination options, then TCP.
        let chain = ipv6_extension(43, &ipv6_extension(60, &ipv6_extension(6, &segment)));
        let frame = ethernet_ip(&ipv6_next("fd00::7", "fd00::5", 0, &chain));
        assert_eq!(parse(Link::Ethernet, &frame), want);
        // MAX_EXTENSIONS destination options: read; one more: not.
        let nested = |n: usize| {
            let mut payload = segment.clone();
            let mut next = 6;
            for _ in 0..n {
                payload = ipv6_extension(next, &payload);
                next = 60;
            }
            ethernet_ip(&ipv6_next("fd00::7", "fd00::5", next, &payload))
        };
        assert_eq!(parse(Link::Ethernet, &nested(MAX_EXTENSIONS)), want);
        assert_eq!(parse(Link::Ethernet, &nested(MAX_EXTENSIONS + 1)), None);
    }

    #[test]
    fn every_link_type_reads_the_same_packet() {
        for packet in [
            ipv4(A, B, &tcp(40000, 22, SYN, 3)),
            ipv6("fd00::7", "fd00::5", &tcp(40000, 22, SYN, 3)),
        ] {
            let want = parse(Link::RawIp, &packet);
            assert!(want.is_some());
            for (name, link, frame) in [
                ("ethernet", Link::Ethernet, ethernet_ip(&packet)),
                ("vlan", Link::Ethernet, vlan(42, &packet)),
                ("sll", Link::LinuxSll, sll(&packet)),
                ("sll2", Link::LinuxSll2, sll2(&packet)),
                ("loopback", Link::Loopback, loopback(&packet)),
                (
                    "nflog",
                    Link::Nflog { big_endian: false },
                    nflog(&packet, false),
                ),
                (
                    "nflog be",
                    Link::Nflog { big_endian: true },
                    nflog(&packet, true),
                ),
            ] {
                assert_eq!(parse(link, &frame), want, "{name}");
            }
        }
        // Two tags (802.1ad outside 802.1Q).
        let packet = ipv4(A, B, &tcp(1, 2, SYN, 0));
        let inner = vlan(7, &packet);
        let mut outer = inner[..12].to_vec();
        outer.extend_from_slice(&[0x88, 0xa8, 0, 1]);
        outer.extend_from_slice(&inner[12..]);
        assert_eq!(parse(Link::Ethernet, &outer), parse(Link::RawIp, &packet));
    }

    #[test]
    fn ipv4_options_are_skipped_and_padding_is_not_tcp() {
        let frame = ethernet_ip(&ipv4_full(A, B, 6, 10, 1, 0, &tcp(1234, 8080, SYN, 0)));
        assert_eq!(
            parse(Link::Ethernet, &frame),
            tcp_seen("10.0.0.7:1234", "10.0.0.5:8080", 0, ScanKind::Syn)
        );
        // A first fragment of 8 bytes, padded to Ethernet's 60 bytes with
        // bytes that would read as SYN: the flags are still unknown.
        let segment = tcp(1234, 8080, ACK, 0);
        let mut frame = ethernet_ip(&ipv4_full(A, B, 6, 0, 9, 0x2000, &segment[..8]));
        frame.resize(60, 0x02);
        assert!(matches!(
            parse(Link::Ethernet, &frame),
            Some(Seen::FirstFragment { flags_at: 13, .. })
        ));
    }

    #[test]
    fn fragments_are_told_apart() {
        let segment = tcp(40000, 22, SYN, 77);
        let pieces = ipv4_fragments(A, B, 0x1234, &segment, 8);
        let key = FragmentKey {
            src: ip("10.0.0.7"),
            dst: ip("10.0.0.5"),
            id: 0x1234,
        };
        assert_eq!(
            parse(Link::RawIp, &pieces[0]),
            Some(Seen::FirstFragment {
                key,
                src: "10.0.0.7:40000".parse().unwrap(),
                dst: "10.0.0.5:22".parse().unwrap(),
                isn: 77,
                flags_at: 13,
            })
        );
        let Some(Seen::LaterFragment {
            key: later,
            offset,
            len,
            bytes,
        }) = parse(Link::RawIp, &pieces[1])
        else {
            panic!("{:?}", parse(Link::RawIp, &pieces[1]));
        };
        assert_eq!((later, offset, len), (key, 8, 8));
        assert_eq!(Seen::flags_from(offset, len, &bytes, 13), Some(SYN));
        assert_eq!(Seen::flags_from(16, len, &bytes, 13), None);
        // 16-byte fragments: the first one holds the flags.
        let pieces = ipv4_fragments(A, B, 1, &segment, 16);
        assert_eq!(
            parse(Link::RawIp, &pieces[0]),
            tcp_seen("10.0.0.7:40000", "10.0.0.5:22", 77, ScanKind::Syn)
        );
        // IPv6: a first fragment of 8 bytes after a destination option.
        let first = ipv6_fragment_header(60, 0, true, 99, &ipv6_extension(6, &segment[..8]));
        let frame = ipv6_next("fd00::7", "fd00::5", 44, &first);
        assert!(matches!(
            parse(Link::RawIp, &frame),
            Some(Seen::FirstFragment {
                flags_at: 21,
                key: FragmentKey { id: 99, .. },
                ..
            })
        ));
        let later = ipv6_fragment_header(60, 16, false, 99, &segment[8..]);
        let frame = ipv6_next("fd00::7", "fd00::5", 44, &later);
        assert!(matches!(
            parse(Link::RawIp, &frame),
            Some(Seen::LaterFragment { offset: 16, .. })
        ));
    }

    #[test]
    fn port_unreachables_name_the_udp_probe() {
        let probe = ipv4_full(A, B, 17, 0, 3, 0, &udp(53123, 161, b"probe"));
        let frame = ethernet_ip(&icmp4_unreachable(B, A, &probe));
        assert_eq!(
            parse(Link::Ethernet, &frame),
            Some(Seen::UdpProbe {
                from: ip("10.0.0.5"),
                src: ip("10.0.0.7"),
                dst: "10.0.0.5:161".parse().unwrap(),
            })
        );
        let probe = ipv6_next("fd00::7", "fd00::5", 17, &udp(53123, 500, b""));
        let frame = ethernet_ip(&icmp6_unreachable("fd00::5", "fd00::7", &probe));
        assert_eq!(
            parse(Link::Ethernet, &frame),
            Some(Seen::UdpProbe {
                from: ip("fd00::5"),
                src: ip("fd00::7"),
                dst: "[fd00::5]:500".parse().unwrap(),
            })
        );
        // Other unreachables, and a quoted TCP packet: nothing.
        let mut host = icmp4_unreachable(B, A, &probe_v4_tcp());
        assert_eq!(parse(Link::RawIp, &host), None);
        host[20 + 1] = 1;
        assert_eq!(parse(Link::RawIp, &host), None);
    }

    fn probe_v4_tcp() -> Vec<u8> {
        ipv4(A, B, &tcp(1, 2, SYN, 0))
    }

    #[test]
    fn truncated_frames_are_none() {
        let frame = v4(SYN);
        // 14 Ethernet + 20 IPv4 + 14 TCP bytes are the least that holds the flags.
        assert!(parse(Link::Ethernet, &frame[..48]).is_some());
        for len in 0..48 {
            assert_eq!(parse(Link::Ethernet, &frame[..len]), None, "{len} bytes");
        }
    }

    #[test]
    fn snaplen_holds_the_longest_headers_read() {
        let snaplen = SNAPLEN as usize;
        let cut = |frame: &[u8]| frame[..frame.len().min(snaplen)].to_vec();
        let two_tags = |packet: &[u8]| {
            let mut frame = vlan(1, packet);
            frame.splice(12..12, [0x88, 0xa8, 0, 2]);
            frame
        };
        // Two VLAN tags and a 60-byte IPv4 header.
        let packet = ipv4_full(A, B, 6, 10, 1, 0, &tcp(5, 6, SYN, 0));
        assert!(parse(Link::Ethernet, &cut(&two_tags(&packet))).is_some());
        // ICMP errors quoting a 60-byte IPv4 header, or IPv6, behind a tag.
        let probe = ipv4_full(A, B, 17, 10, 3, 0, &udp(1, 2, &[0; 100]));
        let frame = vlan(1, &icmp4_unreachable(B, A, &probe));
        assert!(parse(Link::Ethernet, &cut(&frame)).is_some());
        let probe = ipv6_next("fd00::7", "fd00::5", 17, &udp(1, 2, &[0; 1000]));
        let frame = vlan(1, &icmp6_unreachable("fd00::5", "fd00::7", &probe));
        assert!(parse(Link::Ethernet, &cut(&frame)).is_some());
        // A SYN behind MAX_EXTENSIONS extension headers of 8 bytes.
        let mut payload = tcp(1, 2, SYN, 0);
        let mut next = 6;
        for _ in 0..MAX_EXTENSIONS {
            payload = ipv6_extension(next, &payload);
            next = 60;
        }
        let frame = ethernet_ip(&ipv6_next("fd00::7", "fd00::5", next, &payload));
        assert!(parse(Link::Ethernet, &cut(&frame)).is_some());
    }

    #[test]
    fn non_tcp_and_arp_are_none() {
        let udp_packet = ipv4_full(A, B, 17, 0, 1, 0, &udp(1, 53, b"q"));
        assert_eq!(parse(Link::RawIp, &udp_packet), None);
        assert_eq!(parse(Link::Ethernet, &ethernet(0x0806, &[0; 28])), None);
        assert_eq!(Link::of(147, false), None);
        assert_eq!(Link::of(239, true), Some(Link::Nflog { big_endian: true }));
    }
}
