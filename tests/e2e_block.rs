//! End-to-end tests of blocking (SPEC §5) on real Linux: the agent runs in
//! host A of a [`Lab`] with `--block nftables` (or `iptables`), host B scans
//! it by holding connections to four ports, host C is a bystander. Every
//! firewall object lives in A's namespace, which has its own netfilter
//! state: nothing is ever applied in the root namespace.
//!
//! Needs root, nft, iptables and ipset (skips otherwise; fails under
//! `CI=true`). Run with `cargo test --release --test e2e_block`.

mod common;

use common::*;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const EVENT: Duration = Duration::from_secs(5);
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];

fn agent_args(block: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--source",
        "procfs",
        "--interval",
        "1s",
        "--state",
        "off",
        "--metrics-addr",
        "off",
        "--block",
        block,
        "--block-ttl",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(lab: &Lab, block: &str, extra: &[&str]) -> Agent {
    let args = agent_args(block, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(lab, A, &args)
}

/// A lab whose hosts have the firewall tools, or `None` (skipped/failed).
fn lab() -> Option<Lab> {
    for (tool, arg) in [
        ("nft", "--version"),
        ("ipset", "version"),
        ("iptables", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            missing_prerequisite(&format!(
                "cannot run `{tool}` (scripts/install-deps.sh installs it)"
            ));
            return None;
        }
    }
    Lab::new(3)
}

/// stdout of a command run in host `index`; panics if it fails.
fn output(lab: &Lab, index: usize, program: &str, args: &[&str]) -> String {
    let out = lab.run(index, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft list set inet tcpwatch SET` in host A.
fn nft_set(lab: &Lab, set: &str) -> String {
    output(lab, A, "nft", &["list", "set", "inet", "tcpwatch", set])
}

/// Whether `text` lists `ip` as an element (not as part of another address).
fn lists(text: &str, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .any(|word| word == ip)
}

fn blocked_line(ip: IpAddr, backend: &str) -> String {
    format!("Blocked {ip} for 30s via {backend}")
}

/// Waits for the scan of `scanner` and the `Blocked` line, and checks the
/// `Blocked` line is the very next line after the scan.
fn expect_scan_then_block(agent: &Agent, scan: &str, blocked: &str) {
    agent.expect_event(scan, EVENT);
    agent.expect_event(blocked, Duration::from_secs(2));
    let lines: Vec<String> = agent
        .stdout_lines()
        .iter()
        .filter_map(|l| event_text(l).map(str::to_string))
        .collect();
    let at = lines.iter().position(|l| l == scan).unwrap();
    assert_eq!(
        lines.get(at + 1).map(String::as_str),
        Some(blocked),
        "Blocked is not right after the scan: {lines:#?}"
    );
}

#[test]
fn nftables_blocks_a_scanner_and_nobody_else() {
    let Some(lab) = lab() else { return };
    let mut ports = PORTS.to_vec();
    ports.push(9000);
    let _server = lab.serve(A, Listen::V4, &ports);
    let agent = start(&lab, "nftables", &[]);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());

    let _scan = lab.connect(B, host, &PORTS, None);
    let blocked = blocked_line(scanner, "nftables");
    expect_scan_then_block(&agent, &port_scan(scanner, host, &PORTS), &blocked);
    let seen = Instant::now();
    assert!(
        within(Duration::from_secs(1), || lists(
            &nft_set(&lab, "blocked4"),
            scanner
        )),
        "{scanner} not in blocked4 within 1 s of the Blocked line: {}",
        nft_set(&lab, "blocked4")
    );
    eprintln!("in the set {:?} after the Blocked line", seen.elapsed());
    assert!(nft_set(&lab, "blocked4").contains("timeout 30s"));

    let err = lab
        .try_connect(B, host, 9000)
        .expect_err("the scanner still connects");
    assert!(err.contains("timed out"), "not a dropped SYN: {err}");
    lab.try_connect(C, host, 9000)
        .expect("a bystander is blocked too");

    // `tcpwatch blocks` sees and lifts it.
    let listed = output(&lab, A, AGENT, &["blocks", "list"]);
    assert!(
        listed.starts_with(&format!("{scanner} expires in ")),
        "{listed}"
    );
    assert!(listed.trim_end().ends_with("via nftables"), "{listed}");
    output(&lab, A, AGENT, &["blocks", "remove", &scanner.to_string()]);
    output(&lab, A, AGENT, &["blocks", "remove", &scanner.to_string()]);
    assert!(!lists(&nft_set(&lab, "blocked4"), scanner));
    lab.try_connect(B, host, 9000)
        .expect("unblocked scanner connects again");
    let bad = lab.run(A, AGENT, &["blocks", "remove", "10.0.0.300"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);

    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(
        diagnostics(&finished.stderr).is_empty(),
        "stderr: {}",
        finished.stderr
    );
    let tables = output(&lab, A, "nft", &["list", "tables"]);
    assert!(
        !tables.contains("tcpwatch"),
        "table left after SIGTERM: {tables}"
    );
}

#[test]
fn allowlisted_scanner_is_reported_never_blocked() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &PORTS);
    let allow = format!("{}/32", lab.v4(B));
    let agent = start(&lab, "nftables", &["--allow", &allow]);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());

    let _scan = lab.connect(B, host, &PORTS, None);
    agent.expect_event(&port_scan(scanner, host, &PORTS), EVENT);
    std::thread::sleep(SETTLE);
    assert!(
        !agent.stdout_lines().iter().any(|l| l.contains("Blocked")),
        "{:#?}",
        agent.stdout_lines()
    );
    assert!(
        !nft_set(&lab, "blocked4").contains("elements"),
        "{}",
        nft_set(&lab, "blocked4")
    );
    assert!(agent
        .stderr()
        .contains(&format!("not blocking {scanner}: --allow {allow}")));
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0));
}

#[test]
fn ipv6_scanner_lands_in_blocked6() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V6Only, &PORTS);
    let agent = start(&lab, "nftables", &[]);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v6(B).into(), lab.v6(A).into());

    let _scan = lab.connect(B, host, &PORTS, None);
    expect_scan_then_block(
        &agent,
        &port_scan(scanner, host, &PORTS),
        &blocked_line(scanner, "nftables"),
    );
    assert!(
        lists(&nft_set(&lab, "blocked6"), scanner),
        "{}",
        nft_set(&lab, "blocked6")
    );
    assert!(!nft_set(&lab, "blocked4").contains("elements"));
    let err = lab
        .try_connect(B, host, PORTS[0])
        .expect_err("the v6 scanner still connects");
    assert!(err.contains("timed out"), "{err}");
    assert_eq!(agent.stop().status.code(), Some(0));
}

#[test]
fn restart_after_kill_9_leaves_exactly_one_table_and_one_rule_per_family() {
    let Some(lab) = lab() else { return };
    let agent = start(&lab, "nftables", &[]);
    // A block made by the crashed run.
    output(
        &lab,
        A,
        "nft",
        &[
            "add",
            "element",
            "inet",
            "tcpwatch",
            "blocked4",
            "{ 10.250.0.1 timeout 1h }",
        ],
    );
    agent.signal("KILL");
    drop(agent);
    let left = output(&lab, A, "nft", &["list", "ruleset"]);
    assert!(
        left.contains("table inet tcpwatch"),
        "kill -9 cannot clean up: {left}"
    );

    let agent = start(&lab, "nftables", &[]);
    let ruleset = output(&lab, A, "nft", &["list", "ruleset"]);
    assert_eq!(
        ruleset.matches("table inet tcpwatch").count(),
        1,
        "{ruleset}"
    );
    assert_eq!(
        ruleset.matches("ip saddr @blocked4 drop").count(),
        1,
        "{ruleset}"
    );
    assert_eq!(
        ruleset.matches("ip6 saddr @blocked6 drop").count(),
        1,
        "{ruleset}"
    );
    assert_eq!(ruleset.matches("table ").count(), 1, "{ruleset}");
    assert!(
        diagnostics(&agent.stderr()).is_empty(),
        "{}",
        agent.stderr()
    );

    assert_eq!(agent.stop().status.code(), Some(0));
    assert!(!output(&lab, A, "nft", &["list", "tables"]).contains("tcpwatch"));
}

#[test]
fn iptables_backend_blocks_with_ipset_and_cleans_up() {
    let Some(lab) = lab() else { return };
    let mut ports = PORTS.to_vec();
    ports.push(9000);
    let _server = lab.serve(A, Listen::V4, &ports);
    let agent = start(&lab, "iptables", &[]);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let raw = output(&lab, A, "iptables", &["-t", "raw", "-S"]);
    assert!(raw.contains("-A PREROUTING -j TCPWATCH"), "{raw}");
    assert!(
        raw.contains("-A TCPWATCH -m set --match-set tcpwatch4 src -j DROP"),
        "{raw}"
    );
    let raw6 = output(&lab, A, "ip6tables", &["-t", "raw", "-S"]);
    assert!(raw6.contains("--match-set tcpwatch6 src -j DROP"), "{raw6}");

    let _scan = lab.connect(B, host, &PORTS, None);
    expect_scan_then_block(
        &agent,
        &port_scan(scanner, host, &PORTS),
        &blocked_line(scanner, "iptables"),
    );
    let set = output(&lab, A, "ipset", &["list", "tcpwatch4"]);
    assert!(lists(&set, scanner), "{set}");
    let err = lab
        .try_connect(B, host, 9000)
        .expect_err("the scanner still connects");
    assert!(err.contains("timed out"), "{err}");
    lab.try_connect(C, host, 9000)
        .expect("a bystander is blocked too");
    let listed = output(&lab, A, AGENT, &["blocks", "list"]);
    assert!(
        listed.contains(&format!("{scanner} expires in ")) && listed.contains("via iptables"),
        "{listed}"
    );

    // A crash and a restart: still one jump, one rule per family.
    agent.signal("KILL");
    drop(agent);
    let agent = start(&lab, "iptables", &[]);
    let raw = output(&lab, A, "iptables", &["-t", "raw", "-S"]);
    assert_eq!(raw.matches("-j TCPWATCH").count(), 1, "{raw}");
    assert_eq!(raw.matches("-j DROP").count(), 1, "{raw}");

    assert_eq!(agent.stop().status.code(), Some(0));
    let raw = output(&lab, A, "iptables", &["-t", "raw", "-S"]);
    assert!(!raw.contains("TCPWATCH"), "{raw}");
    let raw6 = output(&lab, A, "ip6tables", &["-t", "raw", "-S"]);
    assert!(!raw6.contains("TCPWATCH"), "{raw6}");
    let sets = output(&lab, A, "ipset", &["list", "-n"]);
    assert!(!sets.contains("tcpwatch"), "{sets}");
}

#[test]
fn dry_run_reports_the_block_and_changes_nothing() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &PORTS);
    let agent = start(&lab, "nftables", &["--dry-run"]);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let _scan = lab.connect(B, host, &PORTS, None);
    expect_scan_then_block(
        &agent,
        &port_scan(scanner, host, &PORTS),
        &blocked_line(scanner, "nftables"),
    );
    assert_eq!(diagnostics(&agent.stderr()).len(), 1, "{}", agent.stderr());
    assert!(agent.stderr().contains("dry run"));
    let ruleset = output(&lab, A, "nft", &["list", "ruleset"]);
    assert!(
        ruleset.trim().is_empty(),
        "dry run changed the firewall: {ruleset}"
    );
    assert_eq!(agent.stop().status.code(), Some(0));
}

#[test]
fn without_nft_one_warning_and_detection_goes_on() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &PORTS);
    // `env PATH=...` inside the namespace: the agent cannot find `nft`, and
    // is told not to use libnftables either (as on a host without nftables).
    let mut args = vec!["PATH=/nonexistent", "TCPWATCH_LIBNFTABLES=0", AGENT];
    let agent_args = agent_args("nftables", &[]);
    args.extend(agent_args.iter().map(String::as_str));
    let agent = lab.spawn(A, "env", &args);
    assert!(
        agent.wait_for_stderr(READY, START_TIMEOUT),
        "{}",
        agent.stderr()
    );
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let _scan = lab.connect(B, host, &PORTS, None);
    let scan = port_scan(scanner, host, &PORTS);
    assert!(agent
        .wait_for(|l| event_text(l) == Some(scan.as_str()), EVENT)
        .is_some());
    std::thread::sleep(SETTLE);
    agent.signal("TERM");
    let finished = agent.finish(Duration::from_secs(5));
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_eq!(
        diagnostics(&finished.stderr),
        ["tcpwatch: warning: cannot block via nftables: cannot create table inet tcpwatch: nft: command not found; detecting only"]
    );
    assert!(!finished.stdout.iter().any(|l| l.contains("Blocked")));
}
