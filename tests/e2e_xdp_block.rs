//! End-to-end tests of `--block xdp` (SPEC §5) on real Linux: the agent runs
//! in host A of a [`Lab`] with its XDP program on A's `eth0` veth; host B
//! scans, host C is a bystander. A dropped SYN is seen three ways: the
//! scanner's connection attempt times out, A's
//! `tcpwatch_xdp_dropped_packets_total` rises, and a bystander still
//! connects.
//!
//! `ip netns exec` gives the agent a private /sys without a BPF filesystem;
//! the agent mounts one there for its pins, so `tcpwatch blocks` runs in the
//! agent's own mount namespace (`nsenter -t PID -m -n`). The restart case
//! keeps one mount namespace alive across two agents with a holder process.
//!
//! Needs root, nmap, nsenter and a binary built with clang (skips otherwise;
//! fails under `CI=true`). Run with
//! `cargo test --release --test e2e_xdp_block -- --test-threads=2`.

mod common;

use common::*;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const EVENT: Duration = Duration::from_secs(5);
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];
/// A port the scan does not touch, used to probe whether SYNs get through.
const PROBE: u16 = 9000;
const METRICS_PORT: u16 = 9472;

fn lab() -> Option<Lab> {
    if !tcpwatch::bpf::xdp::built() {
        missing_prerequisite("the XDP program was not built (clang missing at build time)");
        return None;
    }
    for (tool, arg) in [("nmap", "--version"), ("nsenter", "--version")] {
        if !require_tool(tool, &[arg]) {
            return None;
        }
    }
    Lab::new(3)
}

fn agent_args(lab: &Lab, source: &str, ttl: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--source",
        source,
        "--interval",
        "1s",
        "--interface",
        "eth0",
        "--state",
        "off",
        "--block",
        "xdp",
        "--block-ttl",
        ttl,
        "--metrics-addr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("{}:{METRICS_PORT}", lab.v4(A)));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(lab: &Lab, source: &str, ttl: &str, extra: &[&str]) -> Agent {
    let args = agent_args(lab, source, ttl, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(lab, A, &args)
}

/// A's `/metrics`, fetched from inside A.
fn metrics(lab: &Lab) -> String {
    let url = format!("http://{}:{METRICS_PORT}/metrics", lab.v4(A));
    let script = "import sys,urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())";
    let out = lab.run(A, "python3", &["-c", script, &url]);
    assert!(
        out.status.success(),
        "cannot fetch {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one sample, `name{labels}`, in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn dropped(lab: &Lab, family: &str) -> f64 {
    let series = format!("tcpwatch_xdp_dropped_packets_total{{family=\"{family}\"}}");
    sample(&metrics(lab), &series).unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// `tcpwatch blocks ARGS` in the agent's network and mount namespaces
/// (where its pins are).
fn blocks(pid: u32, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-n", "--", AGENT, "blocks"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("nsenter")
}

fn blocks_ok(pid: u32, args: &[&str]) -> String {
    let out = blocks(pid, args);
    assert!(
        out.status.success(),
        "tcpwatch blocks {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `prog/xdp` lines of `ip -d link show eth0` in A.
fn xdp_attached(lab: &Lab) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", lab.ns(A), "-d", "link", "show", "eth0"])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| l.starts_with("prog/xdp"))
        .collect()
}

/// Starts an nmap connect scan of A's `PORTS` from B; returns it with the
/// scanner's and the target's addresses.
fn connect_scan(lab: &Lab, v6: bool) -> (Proc, IpAddr, IpAddr) {
    let (scanner, host): (IpAddr, IpAddr) = if v6 {
        (lab.v6(B).into(), lab.v6(A).into())
    } else {
        (lab.v4(B).into(), lab.v4(A).into())
    };
    let ports = PORTS.map(|p| p.to_string()).join(",");
    let target = host.to_string();
    let mut args = vec!["-n", "-Pn", "-sT", "-T4", "-p", &ports];
    if v6 {
        args.push("-6");
    }
    args.push(&target);
    (lab.spawn(B, "nmap", &args), scanner, host)
}

/// [`connect_scan`], then waits for the scan line and the Blocked line
/// right after it.
fn scan_and_expect_block(lab: &Lab, agent: &Agent, v6: bool, ttl: &str) -> IpAddr {
    let (nmap, scanner, host) = connect_scan(lab, v6);
    agent.expect_event(&port_scan(scanner, host, &PORTS), EVENT);
    agent.expect_event(&format!("Blocked {scanner} for {ttl} via xdp"), EVENT);
    let _ = nmap.finish(Duration::from_secs(30));
    scanner
}

/// Checks the scanner's SYNs are dropped at XDP: its attempt times out and
/// the drop counter of its family rises (read within 3 s: it is copied
/// from the kernel every second).
fn assert_dropped(lab: &Lab, scanner: IpAddr, host: IpAddr) {
    let family = if scanner.is_ipv4() { "ipv4" } else { "ipv6" };
    let before = dropped(lab, family);
    let err = lab
        .try_connect(B, host, PROBE)
        .expect_err("the scanner still connects");
    assert!(err.contains("timed out"), "not a dropped SYN: {err}");
    assert!(
        within(Duration::from_secs(3), || dropped(lab, family) > before),
        "tcpwatch_xdp_dropped_packets_total{{family=\"{family}\"}} stayed at {before}"
    );
}

fn assert_clean_stop(lab: &Lab, agent: Agent) {
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let unexpected: Vec<&str> = diagnostics(&finished.stderr)
        .into_iter()
        .filter(|l| !l.starts_with("tcpwatch: xdp: blocking on eth0"))
        .collect();
    assert!(unexpected.is_empty(), "stderr: {}", finished.stderr);
    assert!(
        xdp_attached(lab).is_empty(),
        "a program is left on eth0: {:?}",
        xdp_attached(lab)
    );
}

#[test]
fn xdp_source_blocks_a_v4_scanner_until_its_ttl_and_nobody_else() {
    let Some(lab) = lab() else { return };
    let mut ports = PORTS.to_vec();
    ports.push(PROBE);
    let _server = lab.serve(A, Listen::Dual, &ports);
    let agent = start(&lab, "xdp", "3s", &[]);
    let host: IpAddr = lab.v4(A).into();
    assert_eq!(xdp_attached(&lab).len(), 1, "{:?}", xdp_attached(&lab));

    let scanner = scan_and_expect_block(&lab, &agent, false, "3s");
    let blocked_at = Instant::now();
    assert_dropped(&lab, scanner, host);
    lab.try_connect(C, host, PROBE)
        .expect("a bystander is blocked too");
    let text = metrics(&lab);
    assert_eq!(
        sample(&text, "tcpwatch_blocks_total{backend=\"xdp\"}"),
        Some(1.0),
        "{text}"
    );

    // The block lifts by itself after its TTL.
    let lifted = within(Duration::from_secs(6), || {
        lab.try_connect(B, host, PROBE).is_ok()
    });
    assert!(lifted, "the scanner still cannot connect after its 3 s TTL");
    let took = blocked_at.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "lifted after {took:?}, before the TTL"
    );
    assert!(
        within(Duration::from_secs(7), || sample(
            &metrics(&lab),
            "tcpwatch_blocked_ips{family=\"ipv4\"}"
        ) == Some(0.0)),
        "the expired block is still counted"
    );
    assert_clean_stop(&lab, agent);
}

#[test]
fn ipv6_scanner_is_blocked_listed_and_removed() {
    let Some(lab) = lab() else { return };
    let mut ports = PORTS.to_vec();
    ports.push(PROBE);
    let _server = lab.serve(A, Listen::Dual, &ports);
    let agent = start(&lab, "xdp", "1h", &[]);
    let host: IpAddr = lab.v6(A).into();

    let scanner = scan_and_expect_block(&lab, &agent, true, "1h");
    assert_dropped(&lab, scanner, host);
    lab.try_connect(C, host, PROBE)
        .expect("a bystander is blocked too");
    // IPv4 from the same host is another address: not blocked.
    lab.try_connect(B, lab.v4(A).into(), PROBE)
        .expect("B's IPv4 address is not blocked");

    let listed = blocks_ok(agent.pid(), &["list"]);
    assert!(
        listed.starts_with(&format!("{scanner} expires in "))
            && listed.trim_end().ends_with("via xdp"),
        "{listed}"
    );
    let secs: u64 = listed
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&secs), "{listed}");
    let removed = blocks_ok(agent.pid(), &["remove", &scanner.to_string()]);
    assert_eq!(removed.trim(), format!("Unblocked {scanner} via xdp"));
    // Idempotent.
    blocks_ok(agent.pid(), &["remove", &scanner.to_string()]);
    lab.try_connect(B, host, PROBE)
        .expect("the unblocked scanner connects again");
    assert_eq!(blocks_ok(agent.pid(), &["list"]), "");
    assert_clean_stop(&lab, agent);
}

#[test]
fn an_allowlisted_scanner_is_reported_but_never_blocked() {
    let Some(lab) = lab() else { return };
    let mut ports = PORTS.to_vec();
    ports.push(PROBE);
    let _server = lab.serve(A, Listen::V4, &ports);
    let allow = format!("{}/32", lab.v4(B));
    let agent = start(&lab, "xdp", "1h", &["--allow", &allow]);
    let (nmap, scanner, host) = connect_scan(&lab, false);
    agent.expect_event(&port_scan(scanner, host, &PORTS), EVENT);
    let _ = nmap.finish(Duration::from_secs(30));
    lab.try_connect(B, host, PROBE)
        .expect("an allowlisted scanner is blocked");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !agent.stdout_lines().iter().any(|l| l.contains("Blocked")),
        "{:#?}",
        agent.stdout_lines()
    );
    assert_eq!(dropped(&lab, "ipv4"), 0.0);
    assert!(agent.stderr().contains(&format!("not blocking {scanner}")));
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(xdp_attached(&lab).is_empty());
}

#[test]
fn procfs_source_blocks_with_xdp_only() {
    let Some(lab) = lab() else { return };
    let mut ports = PORTS.to_vec();
    ports.push(PROBE);
    let _server = lab.serve(A, Listen::V4, &ports);
    let agent = start(&lab, "procfs", "1h", &[]);
    assert!(
        agent.stderr().contains("tcpwatch: xdp: blocking on eth0"),
        "{}",
        agent.stderr()
    );
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    // procfs sees connections that stay open: hold four.
    let _scan = lab.connect(B, host, &PORTS, None);
    agent.expect_event(&port_scan(scanner, host, &PORTS), EVENT);
    agent.expect_event(&format!("Blocked {scanner} for 1h via xdp"), EVENT);
    assert_dropped(&lab, scanner, host);
    lab.try_connect(C, host, PROBE)
        .expect("a bystander is blocked too");
    // The program only blocks here: nothing is reported from XDP.
    assert!(!agent.stdout_lines().iter().any(|l| l.contains(":9000")));
    let flushed = blocks_ok(agent.pid(), &["flush"]);
    assert_eq!(flushed.trim(), "Flushed all blocks via xdp");
    lab.try_connect(B, host, PROBE)
        .expect("flushed scanner connects again");
    assert_clean_stop(&lab, agent);
}

#[test]
fn after_kill_9_the_next_agent_replaces_stale_pins_and_blocks() {
    let Some(lab) = lab() else { return };
    let mut ports = PORTS.to_vec();
    ports.push(PROBE);
    let _server = lab.serve(A, Listen::V4, &ports);
    // One mount namespace with a BPF filesystem outlives both agents.
    let holder = lab.spawn(
        A,
        "sh",
        &[
            "-c",
            "mount -t bpf bpf /sys/fs/bpf && echo ready && exec sleep 120",
        ],
    );
    assert!(
        holder.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_some(),
        "{}",
        holder.stderr()
    );
    let in_holder = |program: &str, args: &[String]| {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &holder.pid().to_string(), "-m", "-n", "--", program])
            .args(args);
        command
    };
    let args = agent_args(&lab, "xdp", "1h", &[]);
    let first = Proc::start("first agent", in_holder(AGENT, &args));
    assert!(
        first.wait_for_stderr(READY, START_TIMEOUT),
        "{}",
        first.stderr()
    );
    let pins = || {
        let out = in_holder("ls", &["/sys/fs/bpf/tcpwatch".to_string()])
            .output()
            .expect("ls");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        within(Duration::from_secs(3), || pins().contains("blocked4")),
        "no pins"
    );
    first.signal("KILL");
    let _ = first.finish(Duration::from_secs(5));
    assert!(
        pins().contains("blocked4"),
        "kill -9 left no pins to reconcile"
    );

    let second = Proc::start("second agent", in_holder(AGENT, &args));
    assert!(
        second.wait_for_stderr(READY, START_TIMEOUT),
        "{}",
        second.stderr()
    );
    assert!(
        within(Duration::from_secs(3), || second
            .stderr()
            .contains("removed the pins a previous tcpwatch left")),
        "{}",
        second.stderr()
    );
    let (nmap, scanner, host) = connect_scan(&lab, false);
    let blocked = format!("Blocked {scanner} for 1h via xdp");
    assert!(
        second
            .wait_for(|l| event_text(l) == Some(blocked.as_str()), EVENT)
            .is_some(),
        "{:#?} {}",
        second.stdout_lines(),
        second.stderr()
    );
    let _ = nmap.finish(Duration::from_secs(30));
    assert_dropped(&lab, scanner, host);
    let listed = String::from_utf8_lossy(
        &in_holder(AGENT, &["blocks".to_string(), "list".to_string()])
            .output()
            .expect("blocks list")
            .stdout,
    )
    .into_owned();
    assert!(
        listed.contains(&format!("{scanner} expires in")),
        "{listed}"
    );

    second.signal("TERM");
    let finished = second.finish(Duration::from_secs(5));
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_eq!(pins(), "", "pins left after SIGTERM");
    assert!(xdp_attached(&lab).is_empty());
}
