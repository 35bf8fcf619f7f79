//! What only the `pcap` source is asked: a retransmitted SYN, and an
//! interface it cannot open. Scans and connections, as every source, are
//! in `sources.rs`.

use crate::agent::*;
use crate::lab::*;
use regex::Regex;
use std::time::Duration;

#[test]
fn retransmitted_syn_prints_once() {
    let Some(lab) = Lab::needing(&["nft"], 2) else {
        return;
    };
    let port = 7777;
    let rules = format!(
        "table inet twtest {{ chain input {{ type filter hook input priority 0; tcp dport {port} counter drop; }}; }}"
    );
    lab.output(A, "nft", &[&rules]);
    let agent = Agent::watching(&lab, Source::Pcap);

    // Linux retries an unanswered SYN after 1 s and 3 s: three SYNs in 3.5 s.
    let src = lab.attempts(B, lab.v4(A).into(), &[port], 3.5)[0];
    let expected = new_connection(at(lab.v4(B), src), at(lab.v4(A), port));
    let counted = lab.output(A, "nft", &["list", "table", "inet", "twtest"]);
    let packets: u32 = Regex::new(r"packets (\d+)")
        .unwrap()
        .captures(&counted)
        .map(|c| c[1].parse().unwrap())
        .unwrap_or(0);
    assert!(packets >= 3, "the SYN was not retransmitted: {counted}");

    agent.expect_exactly(
        &[expected],
        Duration::from_secs(5),
        Duration::from_millis(700),
    );
}

#[test]
fn interface_that_cannot_be_opened_is_one_line_and_exit_1() {
    let args = Args::watching(Source::Pcap).interface("twnosuch0");
    let out = std::process::Command::new(AGENT)
        .args(args.argv())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'twnosuch0'"), "{stderr}");
}
