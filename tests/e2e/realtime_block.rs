//! A real-time source with `--block nftables` blocks a SYN scanner while the
//! scan is still running: `nmap -sS -p 1-1000` then finds most ports
//! filtered (its probes are dropped) instead of closed.
//!
//! The race is against nmap's first burst (about 200 probes in 3 ms here):
//! each case runs alone, so no other test slows its agent.

use crate::agent::*;
use crate::lab::*;
use std::time::Duration;

const EVENT: Duration = Duration::from_secs(10);

fn blocks_a_syn_scan_before_it_completes(source: Source) {
    if !source.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["nmap", "nft"], 2) else {
        return;
    };
    // Longer than the scan: nmap slows down on dropped probes, and a block
    // expiring mid-scan would let its last probes through.
    let args = Args::watching(source).block("nftables").block_ttl("10m");
    let agent = Agent::start(&lab, A, &args);
    let (scanner, host) = (lab.addr(B, false), lab.addr(A, false));
    let report = lab.fast_syn_scan(B, host, "1-1000");
    agent.expect_event(&blocked(scanner, "10m", "nftables"), EVENT);
    let scan_prefix = format!("Port scan detected: {scanner} -> {host} on ports ");
    let scans: Vec<String> = agent
        .stdout_lines()
        .into_iter()
        .filter(|l| event_text(l).is_some_and(|t| t.starts_with(&scan_prefix)))
        .collect();
    assert_eq!(scans.len(), 1, "{scans:#?}");
    let dropped = filtered_ports(&report);
    assert!(
        dropped > 500,
        "only {dropped} of 1000 ports filtered:\n{report}"
    );
    eprintln!("{}: {dropped} of 1000 ports filtered", source.name());
    assert_eq!(agent.stop().status.code(), Some(0));
}

test_rows!(blocks_a_syn_scan_before_it_completes {
    pcap_blocks_a_syn_scan_before_it_completes: Source::Pcap;
    xdp_blocks_a_syn_scan_before_it_completes: Source::Xdp;
});
