//! End-to-end tests of the `pcap` source on real Linux: the agent captures on
//! host A's `eth0` in a [`Lab`], and real scanners and clients (nmap, python
//! sockets) run on host B.
//!
//! Needs root, nmap and nft (skips otherwise; fails under `CI=true`). Run with
//! `cargo test --release --test e2e_pcap -- --test-threads=2`.

mod common;

use common::*;
use regex::Regex;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The agent always runs on A; scanners and clients on B.
const A: usize = 0;
const B: usize = 1;

/// A real-time source prints within milliseconds; this is only the ceiling
/// before a test gives up.
const EVENT: Duration = Duration::from_secs(5);

/// Quiet time that proves nothing more is printed (no poll to wait for).
const QUIET: Duration = Duration::from_millis(700);

/// The closed port on B that readiness probes go to.
const PROBE_PORT: u16 = 9;

const PCAP_ARGS: &[&str] = &[
    "run",
    "--source",
    "pcap",
    "--interface",
    "eth0",
    "--block",
    "none",
    "--metrics-addr",
    "off",
    "--state",
    "off",
];

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A two-host lab, when root and the tools the tests drive are present.
fn lab() -> Option<Lab> {
    for tool in ["nmap", "nft"] {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing_prerequisite(&format!("cannot run `{tool}`"));
            return None;
        }
    }
    Lab::new(2)
}

/// Python that connects to HOST:PORT COUNT times, GAP seconds apart, closing
/// each connection at once, and prints each local `IP PORT`.
const SHORT_LIVED: &str = r#"
import socket, sys, time
host, port, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for _ in range(count):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((host, port))
    print(*s.getsockname()[:2], flush=True)
    s.close()
    time.sleep(gap)
"#;

/// Python that tries one connection to HOST:PORT for SECONDS and prints its
/// local port first; refused or timed out is fine.
const ONE_ATTEMPT: &str = r#"
import socket, sys
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(seconds)
try:
    s.connect((host, port))
except OSError:
    pass
"#;

/// Starts the agent on A and returns once its capture runs: A sends SYNs to
/// a closed port of B until the agent prints one (outbound lines, which
/// never count towards a scan). Tests drop these lines with [`is_probe`].
fn start_agent(lab: &Lab) -> Agent {
    let agent = Agent::spawn(lab, A, PCAP_ARGS);
    let target = lab.v4(B).to_string();
    let port = PROBE_PORT.to_string();
    for _ in 0..50 {
        lab.run(A, "python3", &["-c", ONE_ATTEMPT, &target, &port, "0.2"]);
        if agent
            .wait_for(|l| is_probe(lab, l), Duration::from_millis(200))
            .is_some()
        {
            return agent;
        }
    }
    panic!(
        "the pcap agent never saw A's probe SYN\nstdout: {:#?}\nstderr: {}",
        agent.stdout_lines(),
        agent.stderr()
    );
}

fn is_probe(lab: &Lab, line: &str) -> bool {
    event_text(line).is_some_and(|t| t.ends_with(&format!(" -> {}:{PROBE_PORT}", lab.v4(B))))
}

/// Stops the agent, checks it exited 0 and every line is an event, and
/// returns the event texts without the readiness probes, in printed order.
fn stop(lab: &Lab, agent: Agent) -> Vec<String> {
    std::thread::sleep(QUIET);
    let finished = agent.stop();
    assert_eq!(
        finished.status.code(),
        Some(0),
        "agent did not exit 0 ({}); stderr: {}",
        finished.status,
        finished.stderr
    );
    finished
        .stdout
        .iter()
        .filter(|l| !is_probe(lab, l))
        .map(|l| {
            event_text(l)
                .unwrap_or_else(|| panic!("stdout line without timestamp: '{l}'"))
                .to_string()
        })
        .collect()
}

/// `nmap` from B against A's ports 20-30 (22 and 25 open), then the checks
/// every scan shares: one New connection line per port, exactly one scan
/// line, and that line within 1 s of the scan's start.
fn scan_from_b(nmap_args: &[&str], v6: bool) {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, if v6 { Listen::Dual } else { Listen::V4 }, &[22, 25]);
    let agent = start_agent(&lab);
    let (a, b): (IpAddr, IpAddr) = if v6 {
        (lab.v6(A).into(), lab.v6(B).into())
    } else {
        (lab.v4(A).into(), lab.v4(B).into())
    };
    let target = a.to_string();
    let mut args = vec!["-n", "-Pn", "-T4", "-p", "20-30"];
    args.extend_from_slice(nmap_args);
    args.push(&target);

    // Measured from before nmap starts, so its start-up counts against us.
    let started = Instant::now();
    let nmap = lab.spawn(B, "nmap", &args);
    let scan = Regex::new(&format!(
        r"^Port scan detected: {} -> {} on ports (\d+(,\d+){{3}})$",
        regex::escape(&b.to_string()),
        regex::escape(&a.to_string())
    ))
    .unwrap();
    let line = agent.wait_for(|l| event_text(l).is_some_and(|t| scan.is_match(t)), EVENT);
    let delay = started.elapsed();
    let nmap = nmap.finish(Duration::from_secs(20));
    assert!(nmap.status.success(), "nmap failed: {}", nmap.stderr);
    let line = line.unwrap_or_else(|| {
        panic!(
            "no scan line\nstdout: {:#?}\nstderr: {}",
            agent.stdout_lines(),
            agent.stderr()
        )
    });
    assert!(delay < Duration::from_secs(1), "scan line after {delay:?}");
    let events = stop(&lab, agent);

    let ports: Vec<u16> = scan.captures(event_text(&line).unwrap()).unwrap()[1]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "{ports:?}");
    assert!(ports.iter().all(|p| (20..=30).contains(p)), "{ports:?}");
    let scans = events.iter().filter(|e| e.starts_with("Port scan")).count();
    assert_eq!(scans, 1, "{events:#?}");

    let prefix = format!(
        "New connection: {}",
        at(b, 0).to_string().trim_end_matches(":0")
    );
    let mut scanned: Vec<u16> = events
        .iter()
        .filter(|e| e.starts_with(&prefix))
        .map(|e| e.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    scanned.sort();
    assert_eq!(scanned, (20..=30).collect::<Vec<u16>>(), "{events:#?}");
    assert_eq!(events.len(), 12, "only the scan's lines: {events:#?}");
    assert_scan_was_prompt(&line, &events);
}

/// The scan line follows the 4th port's line directly: it is printed when
/// that SYN arrives, not at some later tick.
fn assert_scan_was_prompt(line: &str, events: &[String]) {
    let text = event_text(line).unwrap();
    let index = events.iter().position(|e| e == text).unwrap();
    assert_eq!(index, 4, "scan line after the 4th port's line: {events:#?}");
}

#[test]
fn syn_scan_v4_is_detected_once_and_at_once() {
    scan_from_b(&["-sS"], false);
}

#[test]
fn connect_scan_v4_is_detected_once_and_at_once() {
    scan_from_b(&["-sT"], false);
}

#[test]
fn syn_scan_v6_is_detected_once_and_at_once() {
    scan_from_b(&["-6", "-sS"], true);
}

#[test]
fn connect_scan_v6_is_detected_once_and_at_once() {
    scan_from_b(&["-6", "-sT"], true);
}

#[test]
fn every_short_lived_connection_prints_once() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[8080]);
    let agent = start_agent(&lab);
    let target = lab.v4(A).to_string();
    let client = lab.run(
        B,
        "python3",
        &["-c", SHORT_LIVED, &target, "8080", "200", "0.008"],
    );
    assert!(
        client.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    let expected: Vec<String> = String::from_utf8_lossy(&client.stdout)
        .lines()
        .map(|l| {
            let (ip, port) = l.split_once(' ').unwrap();
            new_connection(
                at(ip.parse::<IpAddr>().unwrap(), port.parse().unwrap()),
                at(lab.v4(A), 8080),
            )
        })
        .collect();
    assert_eq!(expected.len(), 200);
    assert_eq!(
        expected.iter().collect::<HashSet<_>>().len(),
        200,
        "client reused a port"
    );
    let last = expected.last().unwrap().clone();
    agent.expect_event(&last, EVENT);

    let mut events = stop(&lab, agent);
    let mut want = expected;
    events.sort();
    want.sort();
    assert_eq!(events, want, "exactly the 200 connections, each once");
}

#[test]
fn retransmitted_syn_prints_once() {
    let Some(lab) = lab() else { return };
    let port = "7777";
    let rules = format!(
        "table inet twtest {{ chain input {{ type filter hook input priority 0; tcp dport {port} counter drop; }}; }}"
    );
    let nft = lab.run(A, "nft", &[&rules]);
    assert!(
        nft.status.success(),
        "{}",
        String::from_utf8_lossy(&nft.stderr)
    );
    let agent = start_agent(&lab);

    // Linux retries an unanswered SYN after 1 s and 3 s: three SYNs in 3.5 s.
    let target = lab.v4(A).to_string();
    let client = lab.run(B, "python3", &["-c", ONE_ATTEMPT, &target, port, "3.5"]);
    let src = String::from_utf8_lossy(&client.stdout)
        .trim()
        .parse()
        .unwrap();
    let expected = new_connection(at(lab.v4(B), src), at(lab.v4(A), 7777));
    let counted = lab.run(A, "nft", &["list", "table", "inet", "twtest"]);
    let counted = String::from_utf8_lossy(&counted.stdout);
    let packets: u32 = Regex::new(r"packets (\d+)")
        .unwrap()
        .captures(&counted)
        .map(|c| c[1].parse().unwrap())
        .unwrap_or(0);
    assert!(packets >= 3, "the SYN was not retransmitted: {counted}");

    assert_eq!(stop(&lab, agent), vec![expected]);
}

#[test]
fn outbound_syns_print_local_first_and_never_count_as_a_scan() {
    let Some(lab) = lab() else { return };
    let ports = [5001, 5002, 5003, 5004, 5005];
    let _server = lab.serve(B, Listen::V4, &ports);
    let agent = start_agent(&lab);
    let client = lab.connect(A, lab.v4(B).into(), &ports, None);
    let expected: Vec<String> = client
        .locals
        .iter()
        .zip(ports)
        .map(|(local, port)| new_connection(*local, at(lab.v4(B), port)))
        .collect();
    for event in &expected {
        agent.expect_event(event, EVENT);
    }
    let mut events = stop(&lab, agent);
    let mut want = expected;
    events.sort();
    want.sort();
    assert_eq!(events, want, "five outbound lines and no scan");
}

#[test]
fn interface_that_cannot_be_opened_is_one_line_and_exit_1() {
    let out = std::process::Command::new(AGENT)
        .args(["run", "--source", "pcap", "--interface", "twnosuch0"])
        .args(["--block", "none", "--metrics-addr", "off", "--state", "off"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'twnosuch0'"), "{stderr}");
}
