//! A real-time source with `--block nftables` blocks a SYN scanner while the
//! scan is still running: `nmap -sS -p 1-1000` then finds most ports
//! filtered (its probes are dropped) instead of closed.

mod common;

use common::*;
use std::net::IpAddr;
use std::time::Duration;

const A: usize = 0;
const B: usize = 1;
const EVENT: Duration = Duration::from_secs(10);

fn lab() -> Option<Lab> {
    for tool in ["nmap", "nft"] {
        if !require_tool(tool, &["--version"]) {
            return None;
        }
    }
    Lab::new(2)
}

/// The number in nmap's `Not shown: N filtered tcp ports`, 0 if absent.
fn filtered(nmap: &str) -> usize {
    let re = regex::Regex::new(r"(\d+) filtered tcp ports").unwrap();
    re.captures(nmap).map_or(0, |c| c[1].parse().unwrap())
}

/// The race is against nmap's first burst (about 200 probes in 3 ms here):
/// the two cases run one at a time, so neither slows the other's agent.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn blocks_a_syn_scan_before_it_completes(source: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = lab() else { return };
    let args = [
        "run",
        "--source",
        source,
        "--interface",
        "eth0",
        "--block",
        "nftables",
        // Longer than the scan: nmap slows down on dropped probes, and a
        // block expiring mid-scan would let its last probes through.
        "--block-ttl",
        "10m",
        "--metrics-addr",
        "off",
        "--state",
        "off",
    ];
    let agent = Agent::start(&lab, A, &args);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let target = host.to_string();
    let nmap = lab.run(
        B,
        "nmap",
        &[
            "-sS",
            "-n",
            "-Pn",
            "-p",
            "1-1000",
            "--max-retries",
            "0",
            "--max-rtt-timeout",
            "50ms",
            &target,
        ],
    );
    let report = String::from_utf8_lossy(&nmap.stdout).into_owned();
    assert!(
        nmap.status.success(),
        "nmap: {}",
        String::from_utf8_lossy(&nmap.stderr)
    );
    let blocked = format!("Blocked {scanner} for 10m via nftables");
    agent.expect_event(&blocked, EVENT);
    let scan_prefix = format!("Port scan detected: {scanner} -> {host} on ports ");
    let scans: Vec<String> = agent
        .stdout_lines()
        .into_iter()
        .filter(|l| event_text(l).is_some_and(|t| t.starts_with(&scan_prefix)))
        .collect();
    assert_eq!(scans.len(), 1, "{scans:#?}");
    let dropped = filtered(&report);
    assert!(
        dropped > 500,
        "only {dropped} of 1000 ports filtered:\n{report}"
    );
    eprintln!("{source}: {dropped} of 1000 ports filtered");
    assert_eq!(agent.stop().status.code(), Some(0));
}

#[test]
fn pcap_blocks_a_syn_scan_before_it_completes() {
    blocks_a_syn_scan_before_it_completes("pcap");
}

#[test]
fn xdp_blocks_a_syn_scan_before_it_completes() {
    blocks_a_syn_scan_before_it_completes("xdp");
}
