//! What one tracked scan source costs in memory, by the number of ports it
//! holds: `cargo run --release --example source_memory [SOURCES]`.
//!
//! For each K in 1, 2, 4, 8 and 11, a fresh process fills a scan detector
//! with SOURCES sources (default 65,536, the default `--max-scan-sources`)
//! under the rules 3/60s and 10/1h, each source probing K distinct ports
//! 61 s apart (so 3/60s never trips; at 11 ports 10/1h does, and the
//! source keeps its 11), and prints the growth of its resident memory per
//! source.

use std::time::Duration;
use tcpwatch::detect::portscan::ScanDetector;
use tcpwatch::detect::rules::{parse_rule, Rules};
use tcpwatch::event::ScanKind;

fn rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn fill(sources: u32, ports: u16) -> f64 {
    let rules = Rules::new(
        parse_rule("3/60s").unwrap(),
        &[parse_rule("10/1h").unwrap()],
    );
    let mut detector = ScanDetector::with_rules(rules, 64, sources as usize);
    let local = "10.0.0.1".parse().unwrap();
    let before = rss_kib();
    let mut scans = 0;
    for k in 0..ports {
        let at = Duration::from_secs(61 * u64::from(k));
        for n in 0..sources {
            let remote = n.wrapping_mul(2_654_435_761).to_be_bytes().into();
            scans += usize::from(
                detector
                    .probe(at, remote, local, 1000 + k, ScanKind::Syn)
                    .is_some(),
            );
        }
    }
    assert_eq!(detector.tracked(), sources as usize);
    assert_eq!(detector.evicted(), 0);
    assert_eq!(scans, if ports > 10 { sources as usize } else { 0 });
    let grown = (rss_kib() - before) * 1024;
    grown as f64 / f64::from(sources)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sources: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(65_536);
    if let Some(ports) = args.next().and_then(|k| k.parse().ok()) {
        println!("{:.0}", fill(sources, ports));
        return;
    }
    println!("{sources} sources, rules 3/60s and 10/1h: resident memory per source");
    for ports in [1u16, 2, 4, 8, 11] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([sources.to_string(), ports.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let bytes = String::from_utf8_lossy(&out.stdout);
        println!("{ports:>3} port(s): {:>5} bytes", bytes.trim());
    }
}
