//! The in-kernel classic BPF filter of the `pcap` source: it passes the
//! few packets that can be probes, so ordinary traffic (every TCP segment
//! with ACK, UDP, the rest of ICMP) never wakes userspace.
//!
//! It passes:
//!
//! - IPv4 TCP with ACK clear and not a bare RST: SYNs and the stealth
//!   probes (FIN, NULL, Xmas);
//! - IPv4 TCP fragments that can carry a probe's ports or flags: the first
//!   fragment (MF set, offset 0) and the fragment at offset 8, which holds
//!   the flags when the first one is 8 bytes long (`nmap -f`). Linux sets
//!   DF on TCP, so fragmented TCP is rare in ordinary traffic;
//! - ICMP port unreachable (type 3, code 3): this host's answer to a UDP
//!   probe of a closed port, quoting it (the kernel rate-limits them);
//! - IPv6 TCP as IPv4 (the flags at a fixed offset: TCP right after the
//!   header), ICMPv6 port unreachable (type 1, code 4), and every IPv6
//!   packet whose next header is an extension header (hop-by-hop, routing,
//!   fragment, destination options): classic BPF cannot walk them, the
//!   parser does (a bounded number). Such packets are rare.
//!
//! The order of the tests matters: classic BPF rejects a packet whole when
//! a load runs past its end, so the fragment tests come before the load of
//! the TCP flags, which a first fragment of 8 bytes does not hold.

/// IPv4 TCP: fragments first (see the module docs), then the flags of an
/// unfragmented segment: ACK clear, and SYN set or RST clear.
const IPV4_TCP: &str = "(ip[9] == 6 and (ip[6:2] & 0x3fff == 0x2000 \
     or ip[6:2] & 0x1fff == 1 \
     or (ip[6:2] & 0x1fff == 0 and tcp[tcpflags] & tcp-ack == 0 \
         and tcp[tcpflags] & (tcp-syn|tcp-rst) != tcp-rst)))";

/// ICMP port unreachable.
const IPV4_ICMP: &str = "(ip[9] == 1 and ip[6:2] & 0x1fff == 0 and icmp[0] == 3 and icmp[1] == 3)";

/// IPv6: TCP right after the header (flags at 40 + 13), ICMPv6 port
/// unreachable right after it, or any extension header.
const IPV6: &str = "((ip6[6] == 6 and ip6[53] & 0x10 == 0 and ip6[53] & 0x06 != 0x04) \
     or (ip6[6] == 58 and ip6[40] == 1 and ip6[41] == 4) \
     or ip6[6] == 0 or ip6[6] == 43 or ip6[6] == 44 or ip6[6] == 60)";

/// The filter for frames without a VLAN tag (and for link types other than
/// Ethernet).
pub fn plain() -> String {
    format!("(ip and ({IPV4_TCP} or {IPV4_ICMP})) or (ip6 and {IPV6})")
}

/// The filter once more behind an 802.1Q tag, for tags the NIC left in the
/// frame (accelerated tags are outside the frame and match the plain
/// filter). `vlan` shifts the offsets of everything after it, so it must
/// come last. What an Ethernet capture compiles; `examples/pcap_filter.rs`
/// prints it for the benchmarks' tcpdump anchor.
pub fn with_vlan() -> String {
    let plain = plain();
    format!("{plain} or (vlan and ({plain}))")
}

/// The filter before stealth probes, fragments, extension headers and the
/// ICMP signal: SYNs only. Kept for the benchmark that compares the cost
/// of the two on ordinary traffic (`examples/pcap_filter.rs --old`).
pub const SYN_ONLY: &str = "(ip and tcp and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) \
     or (ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x02)";

/// [`SYN_ONLY`] behind a VLAN tag too, as [`with_vlan`].
pub fn syn_only_with_vlan() -> String {
    format!("{SYN_ONLY} or (vlan and ({SYN_ONLY}))")
}

#[cfg(test)]
mod tests {
    use super::super::craft::*;
    use super::*;
    use pcap::{Capture, Linktype};

    const A: [u8; 4] = [10, 0, 0, 7];
    const B: [u8; 4] = [10, 0, 0, 5];

    fn program() -> pcap::BpfProgram {
        let dead = Capture::dead(Linktype(1)).unwrap();
        dead.compile(&with_vlan(), true).unwrap()
    }

    /// Every packet, plain and behind a VLAN tag.
    fn frames(packet: &[u8]) -> [Vec<u8>; 2] {
        [ethernet_ip(packet), vlan(9, packet)]
    }

    #[test]
    fn passes_what_can_be_a_probe() {
        let program = program();
        let segment = tcp(40000, 22, SYN, 1);
        let mut pass = vec![];
        for flags in [SYN, SYN | RST, FIN, 0, FIN | PSH | URG, SYN | 0xc0] {
            pass.push(ipv4(A, B, &tcp(1, 2, flags, 0)));
            pass.push(ipv6("fd00::7", "fd00::5", &tcp(1, 2, flags, 0)));
        }
        // IPv4 options: the flags follow the IHL.
        pass.push(ipv4_full(A, B, 6, 2, 1, 0, &tcp(1, 2, SYN, 0)));
        // nmap -f: the 8-byte first fragment (no padding: a veth's frame
        // ends there) and the one at offset 8; 16-byte fragments.
        let pieces = ipv4_fragments(A, B, 3, &segment, 8);
        pass.extend(pieces[..2].iter().cloned());
        pass.push(ipv4_fragments(A, B, 3, &segment, 16).remove(0));
        // Port unreachables.
        let probe = ipv4_full(B, A, 17, 0, 3, 0, &udp(1, 161, b""));
        pass.push(icmp4_unreachable(A, B, &probe));
        let probe6 = ipv6_next("fd00::5", "fd00::7", 17, &udp(1, 161, b""));
        pass.push(icmp6_unreachable("fd00::7", "fd00::5", &probe6));
        // Any IPv6 extension header.
        for next in [0, 43, 44, 60] {
            pass.push(ipv6_next(
                "fd00::7",
                "fd00::5",
                next,
                &ipv6_extension(6, &segment),
            ));
        }
        for packet in &pass {
            for frame in frames(packet) {
                assert!(program.filter(&frame), "{frame:02x?}");
            }
        }
    }

    #[test]
    fn ordinary_traffic_does_not_pass() {
        let program = program();
        let mut drop = vec![];
        for flags in [
            SYN | ACK,
            ACK,
            ACK | PSH,
            FIN | ACK,
            RST,
            RST | ACK,
            RST | FIN,
        ] {
            drop.push(ipv4(A, B, &tcp(1, 2, flags, 0)));
            drop.push(ipv6("fd00::7", "fd00::5", &tcp(1, 2, flags, 0)));
        }
        // UDP (DNS, QUIC), other ICMP, later TCP fragments past offset 8.
        drop.push(ipv4_full(A, B, 17, 0, 1, 0, &udp(5353, 53, b"query")));
        drop.push(ipv6_next(
            "fd00::7",
            "fd00::5",
            17,
            &udp(443, 50000, &[0; 1200]),
        ));
        drop.push(ipv4_full(A, B, 1, 0, 1, 0, &[8, 0, 0, 0, 0, 1, 0, 1]));
        drop.push(ipv6_next(
            "fd00::7",
            "fd00::5",
            58,
            &[128, 0, 0, 0, 0, 1, 0, 1],
        ));
        let probe = ipv4_full(B, A, 17, 0, 3, 0, &udp(1, 161, b""));
        let mut host_unreachable = icmp4_unreachable(A, B, &probe);
        host_unreachable[21] = 1;
        drop.push(host_unreachable);
        let pieces = ipv4_fragments(A, B, 3, &tcp(1, 2, ACK, 0), 8);
        drop.extend(pieces[2..].iter().cloned());
        // A UDP fragment.
        drop.push(ipv4_full(A, B, 17, 0, 1, 0x2000, &udp(1, 2, &[0; 8])));
        for packet in &drop {
            for frame in frames(packet) {
                assert!(!program.filter(&frame), "{frame:02x?}");
            }
        }
    }

    #[test]
    fn compiles_on_every_link_type_the_source_opens() {
        for linktype in [1, 12, 113, 276] {
            let dead = Capture::dead(Linktype(linktype)).unwrap();
            let filter = if linktype == 1 { with_vlan() } else { plain() };
            assert!(dead.compile(&filter, true).is_ok(), "{linktype}");
        }
        let dead = Capture::dead(Linktype(1)).unwrap();
        assert!(dead.compile(&syn_only_with_vlan(), true).is_ok());
    }
}
