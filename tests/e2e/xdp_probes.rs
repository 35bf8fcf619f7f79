//! The `xdp` source against what real scanners send besides SYNs: its row
//! of the table in [`crate::probes`] (nmap's and masscan's stealth, UDP and
//! fragmented scans, IPv6 extension headers, a scanner rotating addresses
//! in its /64, ordinary traffic that must print nothing and cost no
//! report); and here, an IPv6 first fragment, and a spoofed SYN flood whose
//! every SYN the program saw is accounted for (printed, or counted lost).
//!
//! What the program reports is read from its own counters (`reported`,
//! `lost`) with bpftool while it runs.
//!
//! Through xdp, a probe that is not a whole SYN (FIN, NULL, Xmas, a first
//! fragment cut before the flags, a UDP probe seen in A's port unreachable)
//! counts toward a scan and prints no line of its own.

use crate::agent::*;
use crate::lab::*;
use crate::probes::{counters, syn6, XDP};
use std::time::Duration;

probe_tests!(crate::probes::XDP);

/// A SYN split in two IPv6 fragments, the flags in the second: the first
/// holds the ports, and counts as a SYN probe (no line of its own).
#[test]
fn an_ipv6_first_fragment_counts_toward_a_scan() {
    let Some(lab) = crate::probes::lab(&XDP, &[], 2) else {
        return;
    };
    let agent = Agent::watching(&lab, Source::Xdp);
    syn6(
        &lab,
        &[
            "7101:split",
            "7102:dst+split",
            "7103:hbh+split",
            "7104:split",
        ],
    );
    let expected = [port_scan(
        lab.v6(B).into(),
        lab.v6(A).into(),
        &[7101, 7102, 7103, 7104],
    )];
    agent.expect_exactly(&expected, Duration::from_secs(5), XDP.quiet);
}

/// A's eth0 receive counter (packets).
fn rx_packets(lab: &Lab) -> u64 {
    let text = lab.output(A, "cat", &["/sys/class/net/eth0/statistics/rx_packets"]);
    text.trim().parse().unwrap()
}

/// A 3 s spoofed SYN flood (`hping3 --flood -S --rand-source`), running
/// alone: every SYN the program saw is accounted for. What the ring
/// buffer took is printed, a line each (`reported` = lines), and SYNs
/// it had no room for are counted (`reported + lost` = what A received).
#[test]
fn a_spoofed_flood_is_accounted_for() {
    if !Source::Xdp.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["hping3", "bpftool"], 2) else {
        return;
    };
    let agent = Agent::watching(&lab, Source::Xdp);
    let (reported0, lost0) = counters(&lab, A);
    let rx0 = rx_packets(&lab);
    let a = lab.v4(A).to_string();
    let args = [
        "-s",
        "INT",
        "3",
        "hping3",
        "--flood",
        "-S",
        "--rand-source",
        "-p",
        "8080",
        &a,
    ];
    lab.run(B, "timeout", &args);
    // Drained: the count of lines stops growing.
    let mut printed = agent.stdout_lines().len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = agent.stdout_lines().len();
        if now == printed {
            break;
        }
        printed = now;
    }
    let received = rx_packets(&lab) - rx0;
    let (reported, lost) = counters(&lab, A);
    let (reported, lost) = (reported - reported0, lost - lost0);
    let finished = agent.stop();
    let lines = finished
        .stdout
        .iter()
        .filter(|l| l.contains("New connection: "))
        .count() as u64;
    eprintln!(
        "flood: A received {received}; the program reported {reported}, lost {lost}; {lines} lines"
    );
    assert!(received >= 10_000, "the flood was too weak: {received}");
    assert_eq!(lines, reported, "every record the ring took is a line");
    // A few packets that are not SYNs (neighbour discovery) may arrive too.
    assert!(
        received >= reported + lost && received - (reported + lost) <= 20,
        "received {received}, program saw {}",
        reported + lost
    );
}
