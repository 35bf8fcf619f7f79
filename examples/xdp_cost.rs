//! What the xdp source's programs cost per packet, on the running kernel
//! without a network: `cargo run --release --example xdp_cost [REPEAT]`
//! (root). Each frame is handed to the compiled program (the XDP program
//! on ingress, the TC program on egress) `REPEAT` times with
//! `BPF_PROG_TEST_RUN`; the kernel times the runs. Five rounds; prints the
//! median nanoseconds per packet of each frame, tab-separated:
//! `program<TAB>frame<TAB>ns<TAB>before`, where `before` is the same frame
//! through the XDP program of the object file `BEFORE` when given
//! (`xdp_cost REPEAT BEFORE.o`: scripts/bench-xdp.sh builds the program as
//! it was before stealth probes, fragments and extension headers), `-`
//! otherwise.
//!
//! The anchor is an ARP frame: the program stops at the EtherType, so its
//! figure is the fixed cost of running a program at all. Ordinary traffic
//! (a TCP segment with ACK, a DNS-like or QUIC-like datagram) should cost
//! no more than a few nanoseconds above it: the XDP program stops at the
//! protocol byte for UDP and at the flags byte for TCP, the TC program at
//! the protocol byte. A SYN (reported through the ring buffer) is shown
//! for scale.

use aya::maps::{MapData, RingBuf};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::Ebpf;

const ROUNDS: usize = 5;

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn tcp(flags: u8, payload: usize) -> Vec<u8> {
    let mut h = vec![0xc3, 0x50, 0x01, 0xbb, 1, 2, 3, 4, 0, 0, 0, 1];
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.resize(20 + payload, 0x61);
    h
}

fn udp(payload: usize) -> Vec<u8> {
    let mut h = vec![0xc3, 0x50, 0x00, 0x35];
    h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.resize(8 + payload, 0x61);
    h
}

fn frame4(protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
    f.extend_from_slice(&[10, 77, 0, 2, 10, 77, 0, 1]);
    f.extend_from_slice(l4);
    f.resize(f.len().max(60), 0);
    f
}

fn frame6(protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = ethernet(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[protocol, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(l4);
    f
}

fn arp() -> Vec<u8> {
    let mut f = ethernet(0x0806);
    f.resize(60, 0);
    f
}

/// A port unreachable this host sends for a UDP probe of port 53.
fn unreachable4() -> Vec<u8> {
    let probe = frame4(17, &udp(0));
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&probe[14..14 + 28]);
    frame4(1, &icmp)
}

fn median_ns(run: &mut dyn FnMut() -> u64) -> u64 {
    let mut rounds: Vec<u64> = (0..ROUNDS).map(|_| run()).collect();
    rounds.sort_unstable();
    rounds[ROUNDS / 2]
}

/// The median ns per packet of each frame through `program` of `bpf` (an
/// XDP program, or the TC program when `tc`).
fn measure(
    bpf: &mut Ebpf,
    program: &str,
    tc: bool,
    frames: &[(&str, Vec<u8>)],
    repeat: u32,
) -> Vec<u64> {
    let mut ring: RingBuf<MapData> =
        RingBuf::try_from(bpf.take_map("events").expect("a ring")).expect("a ring buffer");
    let bpf = &*bpf;
    frames
        .iter()
        .map(|(name, frame)| {
            // A reported frame fills the 1 MiB ring after 18,724 records:
            // those runs are kept short and the ring drained after each.
            let reported = name.ends_with("(reported)");
            let opts = || TestRunOptions {
                data_in: Some(frame),
                repeat: if reported { 10_000 } else { repeat },
                ..TestRunOptions::default()
            };
            median_ns(&mut || {
                let result = if tc {
                    let p: &SchedClassifier = bpf.program(program).unwrap().try_into().unwrap();
                    p.test_run(opts())
                } else {
                    let p: &Xdp = bpf.program(program).unwrap().try_into().unwrap();
                    p.test_run(opts())
                };
                let result = result.expect("BPF_PROG_TEST_RUN");
                while ring.next().is_some() {}
                result.duration.as_nanos() as u64
            })
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let repeat: u32 = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let before = args.next().map(std::fs::read).transpose()?;

    let (tcp_ack, tcp_data) = (tcp(0x10, 0), tcp(0x18, 1400));
    let (dns, quic) = (udp(40), udp(1200));
    let ingress: [(&str, Vec<u8>); 8] = [
        ("arp (anchor)", arp()),
        ("ipv4 tcp ack", frame4(6, &tcp_ack)),
        ("ipv4 tcp ack+psh 1400 B", frame4(6, &tcp_data)),
        ("ipv4 udp 40 B (dns-like)", frame4(17, &dns)),
        ("ipv4 udp 1200 B (quic-like)", frame4(17, &quic)),
        ("ipv6 tcp ack", frame6(6, &tcp_ack)),
        ("ipv6 udp 1200 B (quic-like)", frame6(17, &quic)),
        ("ipv4 tcp syn (reported)", frame4(6, &tcp(0x02, 0))),
    ];
    let egress: [(&str, Vec<u8>); 4] = [
        ("arp (anchor)", arp()),
        ("ipv4 tcp ack+psh 1400 B", frame4(6, &tcp_data)),
        ("ipv4 udp 1200 B (quic-like)", frame4(17, &quic)),
        ("ipv4 port unreachable (reported)", unreachable4()),
    ];

    let mut bpf = Ebpf::load(tcpwatch::bpf::xdp::object())?;
    let xdp: &mut Xdp = bpf.program_mut("tcpwatch").unwrap().try_into()?;
    xdp.load()?;
    let tc: &mut SchedClassifier = bpf.program_mut("tcpwatch_udp").unwrap().try_into()?;
    tc.load()?;
    let now = measure(&mut bpf, "tcpwatch", false, &ingress, repeat);
    let then = match before {
        Some(object) => {
            let mut old = Ebpf::load(&object)?;
            let xdp: &mut Xdp = old.program_mut("tcpwatch").unwrap().try_into()?;
            xdp.load()?;
            measure(&mut old, "tcpwatch", false, &ingress, repeat)
                .into_iter()
                .map(|ns| ns.to_string())
                .collect()
        }
        None => vec!["-".to_string(); ingress.len()],
    };
    // The ring was taken by the first measure: load the object again.
    let mut bpf = Ebpf::load(tcpwatch::bpf::xdp::object())?;
    let tc: &mut SchedClassifier = bpf.program_mut("tcpwatch_udp").unwrap().try_into()?;
    tc.load()?;
    let egress_ns = measure(&mut bpf, "tcpwatch_udp", true, &egress, repeat);
    for (((name, _), ns), before) in ingress.iter().zip(now).zip(then) {
        println!("xdp\t{name}\t{ns}\t{before}");
    }
    for ((name, _), ns) in egress.iter().zip(egress_ns) {
        println!("tc\t{name}\t{ns}\t-");
    }
    Ok(())
}
