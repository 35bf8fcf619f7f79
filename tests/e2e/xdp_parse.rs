//! The BPF programs' parsing, on the running kernel without a network: each
//! case hands one crafted frame to the compiled XDP program (or the TC
//! egress program) with `BPF_PROG_TEST_RUN` and reads what it put in the
//! ring buffer, decoded by the agent's own decoder. The frames are the
//! shapes real scanners and real traffic take: stealth flags, fragments
//! (a first fragment padded to Ethernet's 60 bytes, where the padding must
//! never be read as TCP), IPv6 extension headers, VLAN tags, the ICMP port
//! unreachable a UDP probe of a closed port gets.
//!
//! Needs root (loading BPF), nothing else: no namespace, no interface.

use crate::prereq::{require_root, require_xdp_program};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use std::net::{IpAddr, SocketAddr};
use tcpwatch::bpf::record::{parse_event, RawRecord, Report, RECORD_LEN};
use tcpwatch::event::{Direction, ScanKind};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1): the next program runs.
const TC_NEXT: u32 = u32::MAX;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;

const SCANNER4: [u8; 4] = [10, 77, 0, 2];
const HOST4: [u8; 4] = [10, 77, 0, 1];
const SCANNER6: &str = "fd00:77::2";
const HOST6: &str = "fd00:77::1";

/// The loaded object and its ring buffer.
struct Programs {
    bpf: Ebpf,
    ring: RingBuf<MapData>,
}

impl Programs {
    /// The agent's object, loaded as `--source xdp` loads it (reporting on,
    /// blocklist off), not attached anywhere.
    fn load() -> Option<Programs> {
        if !require_root() || !require_xdp_program() {
            return None;
        }
        let mut bpf = Ebpf::load(tcpwatch::bpf::xdp::object()).expect("load the object");
        let xdp: &mut Xdp = bpf.program_mut("tcpwatch").unwrap().try_into().unwrap();
        xdp.load().expect("the verifier takes the XDP program");
        let tc: &mut SchedClassifier = bpf.program_mut("tcpwatch_udp").unwrap().try_into().unwrap();
        tc.load().expect("the verifier takes the TC program");
        let ring = RingBuf::try_from(bpf.take_map("events").unwrap()).unwrap();
        Some(Programs { bpf, ring })
    }

    fn run(&mut self, program: &str, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        let result = match program {
            "tcpwatch" => {
                let xdp: &Xdp = self.bpf.program(program).unwrap().try_into().unwrap();
                xdp.test_run(opts)
            }
            _ => {
                let tc: &SchedClassifier = self.bpf.program(program).unwrap().try_into().unwrap();
                tc.test_run(opts)
            }
        };
        result.expect("BPF_PROG_TEST_RUN").return_value
    }

    /// What the ring buffer holds, as raw records.
    fn drain(&mut self) -> Vec<RawRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            let bytes: &[u8; RECORD_LEN] = (&*item).try_into().expect("a whole record");
            out.push(RawRecord::read(bytes));
        }
        out
    }

    /// The XDP program's records for `frame` (it must pass it).
    fn xdp(&mut self, frame: &[u8]) -> Vec<RawRecord> {
        assert_eq!(self.run("tcpwatch", frame), XDP_PASS, "{frame:02x?}");
        self.drain()
    }

    /// The TC program's records for `frame` (it must let the next program
    /// decide).
    fn tc(&mut self, frame: &[u8]) -> Vec<RawRecord> {
        assert_eq!(self.run("tcpwatch_udp", frame), TC_NEXT, "{frame:02x?}");
        self.drain()
    }

    /// The one report the XDP program makes of `frame`.
    fn report(&mut self, frame: &[u8]) -> (RawRecord, Report) {
        let records = self.xdp(frame);
        assert_eq!(records.len(), 1, "{records:?} for {frame:02x?}");
        let report = parse_event(&records[0].write()).expect("a valid record");
        (records[0], report)
    }

    fn reported_total(&self) -> u64 {
        let map = self.bpf.map("reported").unwrap();
        let counts = PerCpuArray::<_, u64>::try_from(map).unwrap();
        counts.get(&0, 0).unwrap().iter().sum()
    }
}

// ---------------------------------------------------------------------------
// Frames

/// Ethernet header for `ethertype`, behind `vlans` 802.1Q tags.
fn ethernet(ethertype: u16, vlans: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for _ in 0..vlans {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&7u16.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A TCP header (20 bytes) from `sport` to `dport`, sequence 0x01020304.
fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(std::iter::repeat_n(0x61, payload));
    h
}

/// An IPv4 header for `payload` bytes of `protocol`; `frag` is the
/// flags+offset field.
fn ipv4(protocol: u8, src: [u8; 4], dst: [u8; 4], payload: usize, frag: u16) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

/// A whole IPv4 frame (Ethernet-padded to 60 bytes with `pad` bytes).
fn frame4(protocol: u8, l4: &[u8], frag: u16, pad: u8) -> Vec<u8> {
    let mut f = ethernet(0x0800, 0);
    f.extend(ipv4(protocol, SCANNER4, HOST4, l4.len(), frag));
    f.extend_from_slice(l4);
    while f.len() < 60 {
        f.push(pad);
    }
    f
}

fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// An IPv6 header; `payload` counts everything after it.
fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

const HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;
const AH: u8 = 51;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// An IPv6 extension header of `kind`, followed by `next`: options headers
/// `units` 8-byte units long (AH: 4-byte units), a fragment header with
/// `frag` as its offset+M field.
fn extension(kind: u8, next: u8, units: usize, frag: u16) -> Vec<u8> {
    match kind {
        FRAGMENT => {
            let mut h = vec![next, 0];
            h.extend_from_slice(&frag.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0x77, 0x77]);
            h
        }
        AH => {
            let mut h = vec![next, (units - 2) as u8];
            h.resize(units * 4, 0);
            h
        }
        _ => {
            // PadN filling the header.
            let mut h = vec![next, (units - 1) as u8, 1, (units * 8 - 4) as u8];
            h.resize(units * 8, 0);
            h
        }
    }
}

/// An IPv6 frame from the scanner to the host: `chain` the extension
/// headers (kind, units, fragment field) before `l4` of `protocol`.
fn frame6(chain: &[(u8, usize, u16)], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    for (i, &(kind, units, frag)) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(protocol, |c| c.0);
        headers.extend(extension(kind, next, units, frag));
    }
    let first = chain.first().map_or(protocol, |c| c.0);
    let mut f = ethernet(0x86dd, 0);
    f.extend(ipv6(
        first,
        v6(SCANNER6),
        v6(HOST6),
        headers.len() + l4.len(),
    ));
    f.extend(headers);
    f.extend_from_slice(l4);
    f
}

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn scanner4(port: u16) -> SocketAddr {
    at(SCANNER4, port)
}

fn host4(port: u16) -> SocketAddr {
    at(HOST4, port)
}

fn probe(remote: IpAddr, local: SocketAddr, kind: ScanKind) -> Report {
    Report::Probe {
        remote,
        local,
        kind,
    }
}

// ---------------------------------------------------------------------------
// XDP: TCP

#[test]
fn syn_and_synack_are_attempts_with_their_sequence_number() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    for flags in [SYN, SYN | ECE, SYN | FIN, SYN | PSH] {
        let (raw, report) = p.report(&frame4(TCP, &tcp(40000, 22, flags), 0, 0));
        assert_eq!(raw.flags, flags);
        let Report::Attempt { conn, isn } = report else {
            panic!("{report:?}")
        };
        assert_eq!(
            (conn.initiator, conn.acceptor, conn.direction),
            (scanner4(40000), host4(22), Direction::Inbound)
        );
        assert_eq!(isn, 0x0102_0304);
    }
    let (_, report) = p.report(&frame4(TCP, &tcp(80, 51000, SYN | ACK), 0, 0));
    let Report::Attempt { conn, .. } = report else {
        panic!("{report:?}")
    };
    assert_eq!(
        (conn.initiator, conn.acceptor, conn.direction),
        (host4(51000), scanner4(80), Direction::Outbound)
    );
}

#[test]
fn stealth_probes_are_reported_with_their_kind_and_traffic_with_ack_or_rst_is_not() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    for (flags, kind) in [
        (FIN, ScanKind::Fin),
        (0, ScanKind::Null),
        (FIN | PSH | URG, ScanKind::Xmas),
        (PSH, ScanKind::Null),
    ] {
        let (raw, report) = p.report(&frame4(TCP, &tcp(61000, 21, flags), 0, 0));
        assert_eq!(raw.flags, flags);
        assert_eq!(
            report,
            probe(SCANNER4.into(), host4(21), kind),
            "{flags:#x}"
        );
    }
    let before = p.reported_total();
    for flags in [
        ACK,
        ACK | PSH,
        FIN | ACK,
        RST,
        RST | ACK,
        ACK | URG | PSH | FIN,
        ECE | ACK,
    ] {
        let records = p.xdp(&frame4(TCP, &tcp(61000, 21, flags), 0, 0));
        assert!(records.is_empty(), "{flags:#x}: {records:?}");
    }
    assert_eq!(p.reported_total(), before);
}

#[test]
fn a_first_fragment_is_a_probe_or_an_attempt_by_what_it_holds() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    const MF: u16 = 0x2000;
    // nmap -f: 8 bytes of TCP (ports and sequence number), the frame padded
    // to 60 bytes. The padding sits where the flags would be; filled with
    // SYN it must still not be read as the flags.
    let syn = tcp(50000, 23, SYN);
    for pad in [0x00, SYN, FIN] {
        let (raw, report) = p.report(&frame4(TCP, &syn[..8], MF, pad));
        assert_eq!(report, probe(SCANNER4.into(), host4(23), ScanKind::Syn));
        assert_eq!((raw.kind, raw.seq), (4, 0x0102_0304), "pad {pad:#x}");
    }
    // Only the ports: still a probe, without a sequence number.
    let (raw, report) = p.report(&frame4(TCP, &syn[..4], MF, SYN));
    assert_eq!(report, probe(SCANNER4.into(), host4(23), ScanKind::Syn));
    assert_eq!(raw.seq, 0);
    // 16 bytes (nmap --mtu 16): the flags are there and say SYN: an attempt.
    let (_, report) = p.report(&frame4(TCP, &syn[..16], MF, 0));
    assert!(
        matches!(report, Report::Attempt { conn, isn: 0x0102_0304 } if conn.acceptor == host4(23)),
        "{report:?}"
    );
    // A first fragment holding FIN is a FIN probe; holding ACK, traffic.
    let (_, report) = p.report(&frame4(TCP, &tcp(50000, 23, FIN)[..16], MF, 0));
    assert_eq!(report, probe(SCANNER4.into(), host4(23), ScanKind::Fin));
    assert!(p
        .xdp(&frame4(TCP, &tcp(50000, 23, ACK)[..16], MF, 0))
        .is_empty());
    // Later fragments carry no TCP header, whatever their bytes look like.
    for frag in [1, MF | 1, MF | 0x100] {
        let records = p.xdp(&frame4(TCP, &syn, frag, 0));
        assert!(records.is_empty(), "frag {frag:#x}: {records:?}");
    }
    // A whole segment too short to be TCP, in a padded frame: nothing.
    assert!(p.xdp(&frame4(TCP, &syn[..8], 0, SYN)).is_empty());
}

#[test]
fn ipv6_syns_behind_extension_headers_are_seen() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    let syn = tcp(41000, 8080, SYN);
    let expect = |report: Report| {
        let Report::Attempt { conn, .. } = report else {
            panic!("{report:?}")
        };
        assert_eq!(conn.initiator, at(v6(SCANNER6), 41000));
        assert_eq!(conn.acceptor, at(v6(HOST6), 8080));
    };
    for chain in [
        vec![],
        vec![(HOP, 1, 0)],
        vec![(HOP, 1, 0), (ROUTING, 3, 0), (DSTOPTS, 2, 0)],
        vec![(DSTOPTS, 1, 0), (AH, 6, 0)],
        // An atomic fragment (offset 0, no M): the whole segment.
        vec![(HOP, 1, 0), (FRAGMENT, 1, 0)],
        // Six headers: the most that is walked.
        vec![
            (HOP, 1, 0),
            (DSTOPTS, 1, 0),
            (ROUTING, 1, 0),
            (DSTOPTS, 1, 0),
            (DSTOPTS, 1, 0),
            (DSTOPTS, 255, 0),
        ],
    ] {
        let (_, report) = p.report(&frame6(&chain, TCP, &syn));
        expect(report);
    }
    // Seven: past the bound, not followed.
    let seven = vec![(DSTOPTS, 1, 0); 7];
    assert!(p.xdp(&frame6(&seven, TCP, &syn)).is_empty());
    // A header longer than the payload the IPv6 header announces.
    let mut lying = frame6(&[(HOP, 1, 0)], TCP, &syn);
    lying[14 + 4..14 + 6].copy_from_slice(&6u16.to_be_bytes());
    assert!(p.xdp(&lying).is_empty());
    // Stealth behind extension headers, too.
    let (_, report) = p.report(&frame6(&[(HOP, 1, 0)], TCP, &tcp(41000, 8080, FIN)));
    assert_eq!(
        report,
        probe(v6(SCANNER6).into(), at(v6(HOST6), 8080), ScanKind::Fin)
    );
}

#[test]
fn ipv6_fragments_follow_the_ipv4_rules() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    let syn = tcp(41000, 25, SYN);
    // First fragment (offset 0, M) with 8 bytes of TCP: a probe.
    let (raw, report) = p.report(&frame6(&[(FRAGMENT, 1, 1)], TCP, &syn[..8]));
    assert_eq!(
        report,
        probe(v6(SCANNER6).into(), at(v6(HOST6), 25), ScanKind::Syn)
    );
    assert_eq!(raw.seq, 0x0102_0304);
    // With the flags: an attempt.
    let (_, report) = p.report(&frame6(&[(HOP, 1, 0), (FRAGMENT, 1, 1)], TCP, &syn[..16]));
    assert!(matches!(report, Report::Attempt { .. }), "{report:?}");
    // A later fragment: nothing.
    assert!(p
        .xdp(&frame6(&[(FRAGMENT, 1, 8 | 1)], TCP, &syn))
        .is_empty());
}

#[test]
fn vlan_tagged_syns_are_seen_and_udp_is_not_parsed() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    for vlans in [1, 2] {
        let mut f = ethernet(0x0800, vlans);
        let syn = tcp(40001, 443, SYN);
        f.extend(ipv4(TCP, SCANNER4, HOST4, syn.len(), 0));
        f.extend(syn);
        let (_, report) = p.report(&f);
        assert!(matches!(report, Report::Attempt { .. }), "{report:?}");
    }
    let before = p.reported_total();
    assert!(p.xdp(&frame4(UDP, &udp(5353, 53, 40), 0, 0)).is_empty());
    assert!(p.xdp(&frame6(&[], UDP, &udp(443, 50000, 1200))).is_empty());
    assert!(p
        .xdp(&frame4(ICMP, &[8, 0, 0, 0, 0, 0, 0, 0], 0, 0))
        .is_empty());
    assert!(p.xdp(&ethernet(0x0806, 0)).is_empty());
    assert_eq!(p.reported_total(), before);
}

// ---------------------------------------------------------------------------
// TC egress: UDP probes through the port unreachable this host sends

/// The ICMP message this host sends back to the scanner, quoting `quoted`
/// (the probe's IP header and at least 8 bytes of its payload).
fn unreachable4(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let mut f = ethernet(0x0800, 0);
    f.extend(ipv4(ICMP, HOST4, SCANNER4, icmp.len(), 0));
    f.extend(icmp);
    f
}

fn unreachable6(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let mut f = ethernet(0x86dd, 0);
    f.extend(ipv6(ICMPV6, v6(HOST6), v6(SCANNER6), icmp.len()));
    f.extend(icmp);
    f
}

#[test]
fn a_port_unreachable_reports_the_udp_probe_it_answers() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    let probe4 = [ipv4(UDP, SCANNER4, HOST4, 8, 0), udp(33000, 161, 0)].concat();
    let records = p.tc(&unreachable4(3, 3, &probe4));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        parse_event(&records[0].write()),
        Ok(probe(SCANNER4.into(), host4(161), ScanKind::Udp))
    );
    assert_eq!(records[0].sport, 33000);

    let probe6 = [ipv6(UDP, v6(SCANNER6), v6(HOST6), 8), udp(33001, 53, 0)].concat();
    let records = p.tc(&unreachable6(1, 4, &probe6));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        parse_event(&records[0].write()),
        Ok(probe(v6(SCANNER6).into(), at(v6(HOST6), 53), ScanKind::Udp))
    );
}

#[test]
fn other_egress_traffic_reports_nothing() {
    let Some(mut p) = Programs::load() else {
        return;
    };
    let before = p.reported_total();
    let probe4 = [ipv4(UDP, SCANNER4, HOST4, 8, 0), udp(33000, 161, 0)].concat();
    let tcp4 = [ipv4(TCP, SCANNER4, HOST4, 20, 0), tcp(33000, 161, SYN)].concat();
    let probe6 = [ipv6(UDP, v6(SCANNER6), v6(HOST6), 8), udp(33001, 53, 0)].concat();
    for frame in [
        // Ordinary traffic leaving the host.
        frame4(UDP, &udp(53, 40000, 100), 0, 0),
        frame4(TCP, &tcp(22, 40000, ACK), 0, 0),
        frame6(&[], UDP, &udp(443, 50000, 1200)),
        // Other ICMP: echo reply, host unreachable, a TCP probe quoted.
        unreachable4(0, 0, &probe4),
        unreachable4(3, 1, &probe4),
        unreachable4(3, 3, &tcp4),
        unreachable6(129, 0, &probe6),
        unreachable6(1, 3, &probe6),
        // Cut before the quoted ports.
        unreachable4(3, 3, &probe4[..22]),
        unreachable6(1, 4, &probe6[..42]),
    ] {
        let records = p.tc(&frame);
        assert!(records.is_empty(), "{frame:02x?}: {records:?}");
    }
    // A message not addressed to the quoted probe's sender (a forged
    // quote): nothing.
    let forged = [ipv4(UDP, [10, 77, 0, 9], HOST4, 8, 0), udp(33000, 161, 0)].concat();
    assert!(p.tc(&unreachable4(3, 3, &forged)).is_empty());
    assert_eq!(p.reported_total(), before);
}
