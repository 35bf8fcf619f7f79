//! End-to-end tests of `--source xdp` on real Linux: the agent runs in host
//! A of a [`Lab`] with its XDP program attached to A's `eth0` veth; B scans
//! and connects with nmap and `tests/peer.py`. Every case checks the exact
//! lines printed, and the attachment's life cycle is checked with
//! `ip -d link show` in A's namespace.
//!
//! Needs root, nmap and a binary built with clang (skips otherwise; fails
//! under `CI=true`). Run with
//! `cargo test --release --test e2e_xdp -- --test-threads=2`.
//!
//! The agent needs no bpffs: it pins nothing, and its attachments are BPF
//! links held by the process, so `ip netns exec`'s private /sys is no issue.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

const A: usize = 0;
const B: usize = 1;

/// A real-time event is printed within this (the task's target is far
/// below; the margin is for a loaded 2-core CI machine).
const EVENT: Duration = Duration::from_secs(3);
/// Quiet time after the last expected line, proving nothing else comes.
const QUIET: Duration = Duration::from_millis(1000);

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

const XDP_ARGS: &[&str] = &[
    "run",
    "--source",
    "xdp",
    "--interface",
    "eth0",
    "--block",
    "none",
    "--metrics-addr",
    "off",
    "--state",
    "off",
];

/// A two-host lab, when this machine can run the XDP cases.
fn lab() -> Option<Lab> {
    if !tcpwatch::bpf::xdp::built() {
        missing_prerequisite("the XDP program was not built (clang missing at build time)");
        return None;
    }
    Lab::new(2)
}

fn require_nmap() -> bool {
    let ok = Command::new("nmap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing_prerequisite("cannot run `nmap`");
    }
    ok
}

/// Starts the agent on A and returns once it says the program is attached.
fn start_agent(lab: &Lab) -> Agent {
    let agent = Agent::spawn(lab, A, XDP_ARGS);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.stderr().contains("watching: xdp on eth0") {
        assert!(
            Instant::now() < deadline,
            "agent did not attach within 10 s; stderr: {}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// The `prog/xdp` lines of `ip -d link show eth0` in A's namespace.
fn xdp_programs(lab: &Lab) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", lab.ns(A), "-d", "link", "show", "eth0"])
        .output()
        .expect("ip link show");
    assert!(out.status.success(), "ip link show failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("xdp"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Runs an nmap scan of A's ports 20-30 from B and checks: one
/// `New connection` line per port, each once, all from the same remote, and
/// exactly one scan line for B, printed within 1 s of the scan's start.
fn scan_case(extra: &[&str], v6: bool) {
    let Some(lab) = lab() else { return };
    if !require_nmap() {
        return;
    }
    let (target, scanner): (IpAddr, IpAddr) = if v6 {
        (lab.v6(A).into(), lab.v6(B).into())
    } else {
        (lab.v4(A).into(), lab.v4(B).into())
    };
    let agent = start_agent(&lab);
    let scan_prefix = format!("Port scan detected: {scanner} -> {target} on ports ");
    let target_text = target.to_string();
    let mut args = vec!["-n", "-Pn", "-T4", "-p", "20-30"];
    args.extend_from_slice(extra);
    args.push(&target_text);

    let started = Instant::now();
    let nmap = lab.spawn(B, "nmap", &args);
    let line = agent.wait_for(
        |l| event_text(l).is_some_and(|t| t.starts_with(&scan_prefix)),
        EVENT,
    );
    let took = started.elapsed();
    let nmap = nmap.finish(Duration::from_secs(60));
    assert!(
        nmap.status.success(),
        "nmap failed: {}{}",
        nmap.stderr,
        nmap.stdout.join("\n")
    );
    let line = line.unwrap_or_else(|| {
        panic!(
            "no scan line; stdout: {:#?}; stderr: {}",
            agent.stdout_lines(),
            agent.stderr()
        )
    });
    assert!(
        took <= Duration::from_secs(1),
        "scan line after {took:?}: {line}"
    );
    // The ports of the scan line: four distinct ports of the range, ascending.
    let ports: Vec<u16> = event_text(&line).unwrap()[scan_prefix.len()..]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 4, "{line}");
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert!(ports.iter().all(|p| (20..=30).contains(p)), "{line}");

    std::thread::sleep(QUIET);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let mut scans = 0;
    let mut seen_ports = HashMap::new();
    for line in &finished.stdout {
        let text = event_text(line).unwrap_or_else(|| panic!("no timestamp: {line}"));
        if text.starts_with("Port scan detected: ") {
            scans += 1;
            continue;
        }
        let rest = text
            .strip_prefix("New connection: ")
            .unwrap_or_else(|| panic!("unexpected line: {line}"));
        let (from, to) = rest.split_once(" -> ").expect("initiator -> acceptor");
        let from: SocketAddr = from.parse().unwrap();
        let to: SocketAddr = to.parse().unwrap();
        assert_eq!((from.ip(), to.ip()), (scanner, target), "{line}");
        *seen_ports.entry(to.port()).or_insert(0) += 1;
    }
    assert_eq!(scans, 1, "stdout: {:#?}", finished.stdout);
    let mut distinct: Vec<u16> = seen_ports.keys().copied().collect();
    distinct.sort();
    assert_eq!(distinct, (20..=30).collect::<Vec<u16>>());
    if !extra.contains(&"-sT") {
        // A SYN scan probes each port once from one source port; a connect
        // scan may retry a port from a new source port (a new attempt).
        assert!(
            seen_ports.values().all(|&n| n == 1),
            "{:#?}",
            finished.stdout
        );
    }
}

#[test]
fn syn_scan_v4_is_one_scan_line_within_a_second() {
    scan_case(&["-sS"], false);
}

#[test]
fn connect_scan_v4_is_one_scan_line_within_a_second() {
    scan_case(&["-sT"], false);
}

#[test]
fn syn_scan_v6_is_one_scan_line_within_a_second() {
    scan_case(&["-6", "-sS"], true);
}

/// 200 connections, each closed at once, in about 2 s: every one is printed,
/// once.
#[test]
fn two_hundred_short_connections_print_two_hundred_lines() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[8080]);
    let agent = start_agent(&lab);
    let script = "import socket, sys, time\n\
                  for _ in range(200):\n\
                  \x20   s = socket.create_connection((sys.argv[1], 8080), timeout=5)\n\
                  \x20   print(*s.getsockname()[:2], flush=True)\n\
                  \x20   s.close()\n\
                  \x20   time.sleep(0.01)\n";
    let target = lab.v4(A).to_string();
    let started = Instant::now();
    let client = lab.spawn(B, "python3", &["-c", script, &target]);
    let client = client.finish(Duration::from_secs(30));
    let took = started.elapsed();
    assert!(client.status.success(), "client failed: {}", client.stderr);
    assert_eq!(client.stdout.len(), 200);
    let expected: Vec<String> = client
        .stdout
        .iter()
        .map(|l| {
            let (ip, port) = l.split_once(' ').unwrap();
            let local = at(ip.parse::<IpAddr>().unwrap(), port.parse().unwrap());
            new_connection(local, at(lab.v4(A), 8080))
        })
        .collect();
    assert!(
        took < Duration::from_secs(6),
        "200 connections took {took:?}"
    );
    for event in &expected {
        agent.expect_event(event, EVENT);
    }
    std::thread::sleep(QUIET);
    // The client closes first, so its end sits in TIME-WAIT: no 4-tuple
    // repeats, and 200 distinct lines are expected.
    let distinct: std::collections::HashSet<&String> = expected.iter().collect();
    assert_eq!(distinct.len(), 200);
    assert_exact_events(&agent.stop(), &expected);
}

/// A's own connection to B is seen through B's SYN+ACK: `A:port -> B:port`,
/// once, outbound (so it never counts towards a scan).
#[test]
fn outbound_connection_is_seen_through_the_syn_ack() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(B, Listen::V4, &[9000, 9001, 9002, 9003, 9004]);
    let agent = start_agent(&lab);
    let client = lab.connect(A, lab.v4(B).into(), &[9000, 9001, 9002, 9003, 9004], None);
    let expected: Vec<String> = client
        .locals
        .iter()
        .zip([9000, 9001, 9002, 9003, 9004])
        .map(|(local, port)| {
            assert_eq!(local.ip(), IpAddr::from(lab.v4(A)));
            new_connection(*local, at(lab.v4(B), port))
        })
        .collect();
    for event in &expected {
        agent.expect_event(event, EVENT);
    }
    std::thread::sleep(QUIET);
    // Five outbound connections to five ports of B: no scan line.
    assert_exact_events(&agent.stop(), &expected);
}

/// SIGTERM detaches; `kill -9` leaves nothing that stops a restart; the
/// restarted agent leaves exactly one program and still reports.
#[test]
fn attachment_life_cycle() {
    let Some(lab) = lab() else { return };
    assert!(xdp_programs(&lab).is_empty(), "{:?}", xdp_programs(&lab));

    let agent = start_agent(&lab);
    let attached = xdp_programs(&lab);
    assert!(
        attached
            .iter()
            .any(|l| l.contains("prog/xdp") && l.contains("name tcpwatch")),
        "{attached:?}"
    );
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(xdp_programs(&lab).is_empty(), "{:?}", xdp_programs(&lab));

    let agent = start_agent(&lab);
    agent.signal("KILL");
    // Dropping the handle reaps the killed process.
    drop(agent);

    let _server = lab.serve(A, Listen::V4, &[80]);
    let agent = start_agent(&lab);
    let programs: Vec<String> = xdp_programs(&lab)
        .into_iter()
        .filter(|l| l.contains("prog/xdp"))
        .collect();
    assert_eq!(programs.len(), 1, "{programs:?}");
    assert!(programs[0].contains("name tcpwatch"), "{programs:?}");
    let client = lab.connect(B, lab.v4(A).into(), &[80], None);
    agent.expect_event(&new_connection(client.locals[0], at(lab.v4(A), 80)), EVENT);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(xdp_programs(&lab).is_empty(), "{:?}", xdp_programs(&lab));
}

/// A tcpwatch program attached the legacy (netlink) way survives its
/// process; the next start finds it by name and replaces it.
#[test]
fn leftover_netlink_attachment_is_replaced() {
    let Some(lab) = lab() else { return };
    let object = concat!(env!("OUT_DIR"), "/tcpwatch.bpf.o");
    let out = Command::new("ip")
        .args(["-n", lab.ns(A), "link", "set", "dev", "eth0", "xdpgeneric"])
        .args(["obj", object, "sec", "xdp"])
        .output()
        .expect("ip link set xdpgeneric");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = xdp_programs(&lab);
    assert!(
        before.iter().any(|l| l.contains("name tcpwatch")),
        "{before:?}"
    );

    let agent = start_agent(&lab);
    assert!(
        agent
            .stderr()
            .contains("removed the program a previous tcpwatch left on eth0"),
        "{}",
        agent.stderr()
    );
    let programs: Vec<String> = xdp_programs(&lab)
        .into_iter()
        .filter(|l| l.contains("prog/xdp"))
        .collect();
    assert_eq!(programs.len(), 1, "{programs:?}");
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(xdp_programs(&lab).is_empty(), "{:?}", xdp_programs(&lab));
}

/// A missing interface is a one-line error and exit 1, nothing attached.
#[test]
fn unknown_interface_is_a_one_line_error() {
    let Some(lab) = lab() else { return };
    let mut args = XDP_ARGS.to_vec();
    args[4] = "nosuch0";
    let finished = lab
        .spawn(A, common::AGENT, &args)
        .finish(Duration::from_secs(10));
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert_eq!(
        finished.stderr.trim(),
        "tcpwatch: error: no such interface 'nosuch0'"
    );
    assert!(finished.stdout.is_empty());
}

/// A server that closes first leaves its end in TIME-WAIT and none on the
/// client, so the client may reuse the same 4-tuple at once: a new
/// connection, with a new ISN, that must be printed again.
#[test]
fn reused_four_tuple_is_a_new_connection() {
    let Some(lab) = lab() else { return };
    let server = "import socket\n\
                  s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('0.0.0.0', 7000)); s.listen(8); print('ready', flush=True)\n\
                  while True: s.accept()[0].close()\n";
    let server = lab.spawn(A, "python3", &["-c", server]);
    assert!(server.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_some());
    let agent = start_agent(&lab);
    let client = "import socket, sys, time\n\
                  for _ in range(2):\n\
                  \x20   s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  \x20   s.bind(('0.0.0.0', 45000)); s.connect((sys.argv[1], 7000))\n\
                  \x20   s.recv(1); s.close(); time.sleep(0.3)\n";
    let done = lab
        .spawn(B, "python3", &["-c", client, &lab.v4(A).to_string()])
        .finish(Duration::from_secs(20));
    assert!(done.status.success(), "client: {}", done.stderr);
    let line = new_connection(at(lab.v4(B), 45000), at(lab.v4(A), 7000));
    agent.expect_event(&line, EVENT);
    std::thread::sleep(QUIET);
    assert_exact_events(&agent.stop(), &[line.clone(), line]);
}
