//! `--source xdp --block xdp` (with `--xdp-decide on`, the default): the
//! XDP program blocks a scanner (SYN, FIN, NULL or Xmas probes) at the probe
//! that makes it one, before userspace has read it. `nmap -sS -p 1-1000`
//! (or `-sF`) at full speed then gets at
//! most 2 probes answered after the threshold: with the default rule (more
//! than 3 ports in 60 s), the first 3 are answered, the 4th is dropped, and
//! so is every later one (nmap counts the unanswered as filtered). Userspace
//! still prints the scan once and the block, which it confirms.
//!
//! Each case runs alone: the figure is a race against nmap's first burst.

use crate::agent::*;
use crate::lab::*;
use std::net::IpAddr;
use std::time::Duration;

const EVENT: Duration = Duration::from_secs(10);
/// The default rule's N: more than N ports is a scan.
const N: usize = 3;
/// Probes answered after the threshold, at most (issue target for xdp).
const AFTER_THRESHOLD: usize = 2;

fn kernel_decides_at_the_threshold_probe(v6: bool, scan: &str) {
    if !Source::Xdp.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["nmap"], 2) else {
        return;
    };
    let args = Args::watching(Source::Xdp).block("xdp").block_ttl("10m");
    let agent = Agent::start(&lab, A, &args);
    let (_, host) = decided_scan(
        &lab,
        &agent,
        (B, v6, scan),
        "xdp",
        (N, AFTER_THRESHOLD),
        "xdp decide",
    );
    // The block holds: a further probe times out.
    let err = lab
        .try_connect(B, host, 9000)
        .expect_err("the scanner still gets through");
    assert!(err.contains("timed out"), "not a dropped SYN: {err}");
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
}

test_rows!(kernel_decides_at_the_threshold_probe {
    xdp_decides_a_v4_syn_scan_at_its_threshold_probe: false, "-sS";
    xdp_decides_a_v6_syn_scan_at_its_threshold_probe: true, "-sS";
    xdp_decides_a_v4_fin_scan_at_its_threshold_probe: false, "-sF";
});

/// The host's nmap scan from `from` of ports 1-1000 (IPv4, full speed);
/// returns the probes answered.
fn full_speed_scan(lab: &Lab, from: usize) -> usize {
    1000 - filtered_ports(&lab.fast_syn_scan(from, lab.v4(A).into(), "1-1000"))
}

/// Waits for the scan line of `scanner` (any ports).
fn expect_scan(agent: &Agent, scanner: IpAddr, host: IpAddr) {
    let scan = format!("Port scan detected: {scanner} -> {host} on ports ");
    let seen = agent.wait_for(
        |l| event_text(l).is_some_and(|t| t.starts_with(&scan)),
        EVENT,
    );
    assert!(
        seen.is_some(),
        "no scan of {scanner}: {:#?}",
        agent.stdout_lines()
    );
}

/// The allowlist holds in the kernel: an allowlisted scanner is reported,
/// every probe of it answered, and it is never blocked, not even for a
/// moment (a connection right after the scan goes through).
#[test]
fn xdp_decision_never_blocks_an_allowlisted_scanner() {
    if !Source::Xdp.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["nmap"], 2) else {
        return;
    };
    let _server = lab.serve(A, Listen::V4, &[9000]);
    let allow = format!("{}/32", lab.v4(B));
    let args = Args::watching(Source::Xdp)
        .block("xdp")
        .block_ttl("10m")
        .set("--allow", &allow);
    let agent = Agent::start(&lab, A, &args);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let answered = full_speed_scan(&lab, B);
    assert_eq!(answered, 1000, "probes of an allowlisted scanner dropped");
    expect_scan(&agent, scanner, host);
    lab.try_connect(B, host, 9000)
        .expect("an allowlisted scanner is blocked");
    let finished = agent.stop();
    let texts = event_texts(&finished.stdout);
    assert!(
        !texts.iter().any(|t| t.starts_with("Blocked")),
        "{texts:#?}"
    );
}

/// The blocks-per-minute cap holds in the kernel: with a cap of 1, the
/// first scanner is blocked at its threshold probe, the second is
/// reported and never blocked.
#[test]
fn xdp_decision_keeps_to_the_block_cap() {
    if !Source::Xdp.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["nmap"], 3) else {
        return;
    };
    let _server = lab.serve(A, Listen::V4, &[9000]);
    let args = Args::watching(Source::Xdp)
        .block("xdp")
        .block_ttl("10m")
        .set("--max-blocks-per-minute", "1");
    let agent = Agent::start(&lab, A, &args);
    let host: IpAddr = lab.v4(A).into();
    let first = full_speed_scan(&lab, B);
    assert!(first <= N + AFTER_THRESHOLD, "{first} probes answered");
    agent.expect_event(&blocked(lab.v4(B).into(), "10m", "xdp"), EVENT);
    let second = full_speed_scan(&lab, C);
    assert_eq!(second, 1000, "probes of a scanner over the cap dropped");
    let over = lab.v4(C);
    expect_scan(&agent, over.into(), host);
    lab.try_connect(C, host, 9000)
        .expect("a scanner over the cap is blocked");
    let finished = agent.stop();
    let texts = event_texts(&finished.stdout);
    let blocks: Vec<&String> = texts.iter().filter(|t| t.starts_with("Blocked")).collect();
    assert_eq!(blocks.len(), 1, "{texts:#?}");
}
