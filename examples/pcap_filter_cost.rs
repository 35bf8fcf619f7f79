//! The cost of the pcap source's filter on ordinary frames, run by
//! libpcap's BPF interpreter in userspace, against the SYN-only filter of
//! earlier versions: for each kind of frame, ns per packet with the new
//! filter and with the old one, interleaved rounds, median. Prints
//! `FRAME NEW OLD` lines for `scripts/bench-pcap-filter.sh`.
//!
//! The kernel runs the same programs JIT-compiled, faster; what matters is
//! the ratio, which follows the instructions a frame goes through.

use pcap::{Capture, Linktype};
use std::time::Instant;
use tcpwatch::source::pcap::craft::*;
use tcpwatch::source::pcap::filter;

const PACKETS: usize = 2_000_000;
const ROUNDS: usize = 7;

fn main() {
    let dead = Capture::dead(Linktype(1)).unwrap();
    let new = dead.compile(&filter::with_vlan(), true).unwrap();
    let old = dead.compile(&filter::syn_only_with_vlan(), true).unwrap();
    let (a, b) = ([10, 0, 0, 7], [10, 0, 0, 5]);
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "tcp-ack-v4",
            ethernet_ip(&ipv4(
                a,
                b,
                &[tcp(443, 50000, ACK | PSH, 1), vec![0; 1000]].concat(),
            )),
        ),
        (
            "tcp-ack-v6",
            ethernet_ip(&ipv6(
                "fd00::7",
                "fd00::5",
                &[tcp(443, 50000, ACK, 1), vec![0; 1000]].concat(),
            )),
        ),
        (
            "udp-dns-v4",
            ethernet_ip(&ipv4_full(a, b, 17, 0, 1, 0, &udp(53, 40000, &[0; 60]))),
        ),
        (
            "udp-quic-v6",
            ethernet_ip(&ipv6_next(
                "fd00::7",
                "fd00::5",
                17,
                &udp(443, 40000, &[0; 1200]),
            )),
        ),
    ];
    for (name, frame) in &frames {
        assert!(!new.filter(frame) && !old.filter(frame), "{name} passes");
        let mut times = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            times.0.push(per_packet(&new, frame));
            times.1.push(per_packet(&old, frame));
        }
        println!("{name} {:.1} {:.1}", median(times.0), median(times.1));
    }
}

fn per_packet(program: &pcap::BpfProgram, frame: &[u8]) -> f64 {
    let started = Instant::now();
    let mut passed = 0usize;
    for _ in 0..PACKETS {
        passed += usize::from(program.filter(std::hint::black_box(frame)));
    }
    std::hint::black_box(passed);
    started.elapsed().as_nanos() as f64 / PACKETS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
