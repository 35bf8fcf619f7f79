//! What every source must print, as one table: a row per source says what
//! it is held to, and each test runs its case for every row it applies to
//! (all rows run; the failing ones are named at the end). A new source is
//! one more row in [`ROWS`].
//!
//! The agent runs on host A ([`Agent::watching`]: each source with its own
//! readiness check); B and C connect and scan, with `tests/peer.py` and
//! nmap.

use crate::agent::*;
use crate::lab::*;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// What a source is held to.
struct Row {
    source: Source,
    /// How long a line may take to appear before the test gives up.
    event: Duration,
    /// Quiet time after the last expected line that proves nothing more is
    /// printed.
    quiet: Duration,
    /// Prints each connection attempt as it comes, however short-lived:
    /// connect scans are detected within 1 s of their start. (A polling
    /// source sees only what is open at a poll.)
    realtime: bool,
    /// Sees half-open attempts (a SYN answered by a RST or by nothing):
    /// SYN scans.
    half_open: bool,
    /// In every nmap scan, connect scans included, each port shows exactly
    /// once and the scan line directly follows the 4th port's line. Without
    /// it a connect scan may retry a port from a new source port (a new
    /// attempt), and the scan line may come later in the output.
    exact_scan: bool,
    /// Prints a line for an attempt on a closed port (a packet source sees
    /// its SYN). Without it such an attempt is a probe: it counts toward
    /// the scan and prints nothing, and a connect scan prints lines for the
    /// open ports only.
    closed_port_lines: bool,
}

/// A polling source: one 1 s poll plus a wide margin for a line, two polls
/// of quiet.
const POLLING: Row = Row {
    source: Source::Procfs,
    event: Duration::from_secs(5),
    quiet: SETTLE,
    realtime: false,
    half_open: false,
    exact_scan: false,
    closed_port_lines: true,
};

const ROWS: [Row; 5] = [
    POLLING,
    Row {
        source: Source::Netlink,
        ..POLLING
    },
    Row {
        source: Source::Pcap,
        // A real-time source prints within milliseconds; these are only
        // ceilings before a test gives up.
        event: Duration::from_secs(5),
        quiet: Duration::from_millis(700),
        realtime: true,
        half_open: true,
        exact_scan: true,
        closed_port_lines: true,
    },
    Row {
        source: Source::Xdp,
        event: Duration::from_secs(3),
        quiet: Duration::from_millis(1000),
        realtime: true,
        half_open: true,
        exact_scan: false,
        closed_port_lines: true,
    },
    Row {
        source: Source::Tracepoint,
        event: Duration::from_secs(3),
        quiet: Duration::from_millis(700),
        realtime: true,
        // A SYN to an open port that never completes changes no socket
        // state the tracepoints report (tests/e2e/tracepoint.rs covers
        // SYN scans of closed ports, and `tracepoint,xdp`).
        half_open: false,
        exact_scan: false,
        closed_port_lines: false,
    },
];

/// Runs `case` for every row `applies` to, each to its end even when an
/// earlier one fails; then fails naming the rows that did.
fn each_row(applies: impl Fn(&Row) -> bool, case: impl Fn(&Row)) {
    let mut failed = Vec::new();
    for row in ROWS.iter().filter(|row| applies(row)) {
        let name = row.source.name();
        eprintln!("--- source {name}");
        if catch_unwind(AssertUnwindSafe(|| case(row))).is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "failed for {failed:?} (each one's panic is above)"
    );
}

/// A three-host lab for `row`, when this machine can run its source and
/// `tools`.
fn lab(row: &Row, tools: &[&str]) -> Option<Lab> {
    if !row.source.available() {
        return None;
    }
    Lab::needing(tools, 3)
}

#[test]
fn four_ports_from_one_host_is_one_scan_three_is_none() {
    each_row(|_| true, held_scan);
}

/// B holds connections to three of A's ports: no scan; C holds four: one
/// scan line, listing the ports ascending, printed after C's four
/// connection lines.
fn held_scan(row: &Row) {
    let Some(lab) = lab(row, &[]) else { return };
    let ports = [80, 81, 82, 83];
    let _server = lab.serve(A, Listen::V4, &ports);
    let agent = Agent::watching(&lab, row.source);

    // Ports in a scrambled order: the scan line lists them ascending.
    let three = lab.connect(B, lab.v4(A).into(), &[82, 80, 81], None);
    let four = lab.connect(C, lab.v4(A).into(), &[83, 81, 80, 82], None);

    let conn_lines = |client: &Client, ports: &[u16]| -> Vec<String> {
        let dst = |p: u16| at(lab.v4(A), p);
        let pairs = client.locals.iter().zip(ports);
        pairs.map(|(l, p)| new_connection(*l, dst(*p))).collect()
    };
    let from_b = conn_lines(&three, &[82, 80, 81]);
    let from_c = conn_lines(&four, &[83, 81, 80, 82]);
    let scan = port_scan(lab.v4(C).into(), lab.v4(A).into(), &ports);
    assert!(scan.ends_with("on ports 80,81,82,83"), "{scan}");

    let mut expected = from_b.clone();
    expected.extend(from_c.iter().cloned());
    expected.push(scan.clone());
    let printed = agent.expect_exactly(&expected, row.event, row.quiet);

    // The scan is the consequence of C's fourth connection: it follows them.
    let scan_at = printed.iter().position(|e| *e == scan).unwrap();
    for line in &from_c {
        let conn_at = printed.iter().position(|e| e == line).unwrap();
        assert!(
            conn_at < scan_at,
            "scan printed before '{line}': {printed:#?}"
        );
    }
}

#[test]
fn outbound_connections_to_five_ports_are_not_a_scan() {
    each_row(|_| true, outbound);
}

/// A's own connections to five ports of B: `A:port -> B:port` once each,
/// and no scan line (outbound connections never count towards a scan).
fn outbound(row: &Row) {
    let Some(lab) = lab(row, &[]) else { return };
    let ports = [9000, 9001, 9002, 9003, 9004];
    let _server = lab.serve(B, Listen::V4, &ports);
    let agent = Agent::watching(&lab, row.source);
    let client = lab.connect(A, lab.v4(B).into(), &ports, None);
    let expected: Vec<String> = client
        .locals
        .iter()
        .zip(ports)
        .map(|(local, port)| {
            assert_eq!(local.ip(), IpAddr::from(lab.v4(A)));
            new_connection(*local, at(lab.v4(B), port))
        })
        .collect();
    agent.expect_exactly(&expected, row.event, row.quiet);
}

#[test]
fn two_hundred_short_connections_print_two_hundred_lines() {
    each_row(|row| row.realtime, short_lived);
}

/// 200 connections from B, each closed at once, 8 ms apart (about 2 s):
/// every one is printed, once.
fn short_lived(row: &Row) {
    let Some(lab) = lab(row, &[]) else { return };
    let _server = lab.serve(A, Listen::V4, &[8080]);
    let agent = Agent::watching(&lab, row.source);
    let started = Instant::now();
    let locals = lab.short_lived(B, at(lab.v4(A), 8080), 200, 0.008);
    let took = started.elapsed();
    assert_eq!(locals.len(), 200);
    assert!(
        took < Duration::from_secs(6),
        "200 connections took {took:?}"
    );
    let expected: Vec<String> = locals
        .iter()
        .map(|local| new_connection(*local, at(lab.v4(A), 8080)))
        .collect();
    // The client closes first, so its end sits in TIME-WAIT: no 4-tuple
    // repeats, and 200 distinct lines are expected.
    let distinct: std::collections::HashSet<&String> = expected.iter().collect();
    assert_eq!(distinct.len(), 200, "client reused a port");
    agent.expect_exactly(&expected, row.event, row.quiet);
}

test_rows!(nmap_scan_rows {
    syn_scan_v4_is_one_scan_line_within_a_second: "-sS", false;
    connect_scan_v4_is_one_scan_line_within_a_second: "-sT", false;
    syn_scan_v6_is_one_scan_line_within_a_second: "-sS", true;
    connect_scan_v6_is_one_scan_line_within_a_second: "-sT", true;
});

/// An nmap scan (`-sS` or `-sT`) for every row that sees it: a SYN scan
/// needs [`Row::half_open`], a connect scan [`Row::realtime`].
fn nmap_scan_rows(scan: &str, v6: bool) {
    let sees = |row: &Row| match scan {
        "-sS" => row.half_open,
        _ => row.realtime,
    };
    each_row(sees, |row| nmap_scan(row, scan, v6));
}

/// `nmap SCAN` from B against A's ports 20-30 (22 and 25 open), then: one
/// scan line for B, printed within 1 s of the scan's start, listing four
/// of the ports ascending; every other line a `New connection` from B to A,
/// on every port of the range (the open ones without
/// [`Row::closed_port_lines`]); a SYN scan probes each port once from one
/// source port; and what [`Row::exact_scan`] adds.
fn nmap_scan(row: &Row, scan: &str, v6: bool) {
    let Some(lab) = lab(row, &["nmap"]) else {
        return;
    };
    let _server = lab.serve(A, if v6 { Listen::Dual } else { Listen::V4 }, &[22, 25]);
    let agent = Agent::watching(&lab, row.source);
    let (target, scanner) = (lab.addr(A, v6), lab.addr(B, v6));
    let target_text = target.to_string();
    let mut args = vec!["-n", "-Pn", "-T4", "-p", "20-30", scan];
    if v6 {
        args.push("-6");
    }
    args.push(&target_text);

    // Measured from before nmap starts, so its start-up counts against us.
    let started = Instant::now();
    let nmap = lab.spawn(B, "nmap", &args);
    let scan_re = scan_line(scanner, target, None);
    let (line, took) = agent.scan_during(nmap, &scan_re, row.event, started);
    assert!(
        took < Duration::from_secs(1),
        "scan line after {took:?}: {line}"
    );
    let text = event_text(&line).unwrap();
    let ports = ports_of(&scan_re, text);
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert!(ports.iter().all(|p| (20..=30).contains(p)), "{line}");

    let events = agent.stop_after_one_scan(row.quiet);
    let seen_ports = attempts(&events, scanner, target);
    let mut distinct: Vec<u16> = seen_ports.keys().copied().collect();
    distinct.sort();
    let lined: Vec<u16> = if row.closed_port_lines {
        (20..=30).collect()
    } else {
        vec![22, 25]
    };
    assert_eq!(distinct, lined, "{events:#?}");
    if scan == "-sS" || row.exact_scan {
        assert!(seen_ports.values().all(|&n| n == 1), "{events:#?}");
    }
    if row.exact_scan {
        assert_eq!(events.len(), 12, "only the scan's lines: {events:#?}");
        // Printed when the 4th port's SYN arrives, not at some later tick.
        let index = events.iter().position(|e| e == text).unwrap();
        assert_eq!(index, 4, "scan line after the 4th port's line: {events:#?}");
    }
}
