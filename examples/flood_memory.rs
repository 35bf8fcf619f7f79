//! Measures the detector's memory under a spoofed-source SYN flood, without
//! the network: `cargo run --release --example flood_memory [ATTEMPTS]`.
//! Prints the process's VmRSS/VmHWM after feeding that many attempts, each
//! from a new source address to the next port (as `hping3 --flood -S
//! --rand-source -p ++1` sends them).

use std::time::{Duration, Instant};
use tcpwatch::clock::Stamp;
use tcpwatch::detect::Detector;
use tcpwatch::event::Observation;
use tcpwatch::event::{Connection, Direction};

fn status(field: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let attempts: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let mut detector = Detector::new(
        "pcap",
        false,
        &tcpwatch::detect::ScanSettings::default(),
        &tcpwatch::detect::Limits::default(),
    );
    let before = status("VmRSS:");
    let wall = chrono::Local::now();
    let started = Instant::now();
    let mut lines = 0usize;
    let mut events = Vec::new();
    for n in 0..attempts {
        // A cheap scramble of n: distinct addresses, no pattern in the hash.
        let source = n.wrapping_mul(2_654_435_761).to_be_bytes();
        let conn = Connection {
            initiator: (source, 1024 + (n % 60_000) as u16).into(),
            acceptor: ([10, 0, 0, 1], (n % 65_535 + 1) as u16).into(),
            direction: Direction::Inbound,
        };
        let at = Stamp {
            wall,
            mono: Duration::from_micros(u64::from(n) * 10),
        };
        // As a batching caller does: one buffer, reused.
        events.clear();
        detector.process_into(
            &Observation::Attempt {
                at,
                conn,
                isn: 0,
                owner: None,
            },
            &mut events,
        );
        lines += events.len();
    }
    let took = started.elapsed();
    let evicted = detector.take_evictions();
    println!(
        "{attempts} attempts, {lines} events in {took:.2?} ({:.0} ns each); RSS before {before}, after {}, peak {}; evicted {evicted:?}",
        took.as_nanos() as f64 / f64::from(attempts),
        status("VmRSS:"),
        status("VmHWM:"),
    );
}
