//! Blocking with `--block nftables` (or `iptables`): the agent runs in host
//! A, host B scans it by holding connections to four ports, host C is a
//! bystander. Every firewall object lives in A's namespace, which has its
//! own netfilter state: nothing is ever applied in the root namespace.

use crate::agent::*;
use crate::inspect::{lists, nft_set};
use crate::lab::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const EVENT: Duration = Duration::from_secs(5);
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];

/// procfs with `backend` blocking for 30 s.
fn args(backend: &str) -> Args {
    Args::run().block(backend).block_ttl("30s")
}

fn start(lab: &Lab, args: Args) -> Agent {
    Agent::start(lab, A, &args)
}

/// Servers on A's [`PORTS`] and on 9000, the port that probes whether SYNs
/// get through.
fn serve_and_probe(lab: &Lab) -> crate::proc::Proc {
    lab.serve(
        A,
        Listen::V4,
        &[PORTS[0], PORTS[1], PORTS[2], PORTS[3], 9000],
    )
}

/// A lab whose hosts have the firewall tools, or `None` (skipped/failed).
fn lab() -> Option<Lab> {
    Lab::needing(&["nft", "ipset", "iptables"], 3)
}

/// Waits for the scan of `scanner` and the `Blocked` line, and checks the
/// `Blocked` line is the very next line after the scan.
fn expect_scan_then_block(agent: &Agent, scan: &str, blocked: &str) {
    agent.expect_event(scan, EVENT);
    agent.expect_event(blocked, Duration::from_secs(2));
    let lines = event_texts(&agent.stdout_lines());
    let at = lines.iter().position(|l| l == scan).unwrap();
    assert_eq!(
        lines.get(at + 1).map(String::as_str),
        Some(blocked),
        "Blocked is not right after the scan: {lines:#?}"
    );
}

/// B scans A's [`PORTS`] (IPv6 when `v6`) with held connections; waits for
/// the scan line and the `Blocked` line right after it. Returns B's
/// address, A's, and the connections.
fn scan_and_block(lab: &Lab, agent: &Agent, v6: bool, backend: &str) -> (IpAddr, IpAddr, Client) {
    let (scanner, host) = (lab.addr(B, v6), lab.addr(A, v6));
    let scan = lab.connect(B, host, &PORTS, None);
    let blocked = blocked(scanner, "30s", backend);
    expect_scan_then_block(agent, &port_scan(scanner, host, &PORTS), &blocked);
    (scanner, host, scan)
}

/// The scanner's SYNs are dropped (its attempt times out) while C, a
/// bystander, still connects.
fn assert_only_scanner_dropped(lab: &Lab, host: IpAddr, port: u16) {
    let err = lab
        .try_connect(B, host, port)
        .expect_err("the scanner still connects");
    assert!(err.contains("timed out"), "not a dropped SYN: {err}");
    lab.try_connect(C, host, port)
        .expect("a bystander is blocked too");
}

#[test]
fn nftables_blocks_a_scanner_and_nobody_else() {
    let Some(lab) = lab() else { return };
    let _server = serve_and_probe(&lab);
    let control = ControlSocket::new();
    let agent = start(&lab, args("nftables").control(&control));

    let (scanner, host, _scan) = scan_and_block(&lab, &agent, false, "nftables");
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
    assert_only_scanner_dropped(&lab, host, 9000);

    // `tcpwatch blocks` sees and lifts it, through the agent.
    let listed = control.output(&lab, A, &["blocks", "list"]);
    assert!(
        listed.starts_with(&format!("{scanner} expires in ")),
        "{listed}"
    );
    assert!(listed.contains(" via nftables; "), "{listed}");
    let shown = scanner.to_string();
    assert_eq!(
        control.output(&lab, A, &["blocks", "remove", &shown]),
        format!("Unblocked {scanner} via nftables\n")
    );
    assert_eq!(
        control.output(&lab, A, &["blocks", "remove", &shown]),
        format!("{scanner} is not blocked\n")
    );
    agent.expect_event(&format!("Unblocked {scanner} via nftables"), EVENT);
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
    let tables = lab.output(A, "nft", &["list", "tables"]);
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
    let agent = start(&lab, args("nftables").set("--allow", &allow));
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
    let agent = start(&lab, args("nftables"));

    let (scanner, host, _scan) = scan_and_block(&lab, &agent, true, "nftables");
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
    let agent = start(&lab, args("nftables"));
    // A block made by the crashed run.
    let element = "{ 10.250.0.1 timeout 1h }";
    let add = ["add", "element", "inet", "tcpwatch", "blocked4", element];
    lab.output(A, "nft", &add);
    agent.signal("KILL");
    drop(agent);
    let left = lab.output(A, "nft", &["list", "ruleset"]);
    assert!(
        left.contains("table inet tcpwatch"),
        "kill -9 cannot clean up: {left}"
    );

    let agent = start(&lab, args("nftables"));
    let ruleset = lab.output(A, "nft", &["list", "ruleset"]);
    for (text, count) in [
        ("table inet tcpwatch", 1),
        ("ip saddr @blocked4 drop", 1),
        ("ip6 saddr @blocked6 drop", 1),
        ("table ", 1),
    ] {
        assert_eq!(ruleset.matches(text).count(), count, "{ruleset}");
    }
    assert!(
        diagnostics(&agent.stderr()).is_empty(),
        "{}",
        agent.stderr()
    );

    assert_eq!(agent.stop().status.code(), Some(0));
    assert!(!lab
        .output(A, "nft", &["list", "tables"])
        .contains("tcpwatch"));
}

#[test]
fn iptables_backend_blocks_with_ipset_and_cleans_up() {
    let Some(lab) = lab() else { return };
    let _server = serve_and_probe(&lab);
    let agent = start(&lab, args("iptables"));
    let raw = lab.output(A, "iptables", &["-t", "raw", "-S"]);
    assert!(raw.contains("-A PREROUTING -j TCPWATCH"), "{raw}");
    assert!(
        raw.contains("-A TCPWATCH -m set --match-set tcpwatch4 src -j DROP"),
        "{raw}"
    );
    let raw6 = lab.output(A, "ip6tables", &["-t", "raw", "-S"]);
    assert!(raw6.contains("--match-set tcpwatch6 src -j DROP"), "{raw6}");

    let (scanner, host, _scan) = scan_and_block(&lab, &agent, false, "iptables");
    let set = lab.output(A, "ipset", &["list", "tcpwatch4"]);
    assert!(lists(&set, scanner), "{set}");
    assert_only_scanner_dropped(&lab, host, 9000);
    let listed = lab.output(A, AGENT, &["blocks", "list"]);
    assert!(
        listed.contains(&format!("{scanner} expires in ")) && listed.contains("via iptables"),
        "{listed}"
    );

    // A crash and a restart: still one jump, one rule per family.
    agent.signal("KILL");
    drop(agent);
    let agent = start(&lab, args("iptables"));
    let raw = lab.output(A, "iptables", &["-t", "raw", "-S"]);
    assert_eq!(raw.matches("-j TCPWATCH").count(), 1, "{raw}");
    assert_eq!(raw.matches("-j DROP").count(), 1, "{raw}");

    assert_eq!(agent.stop().status.code(), Some(0));
    let raw = lab.output(A, "iptables", &["-t", "raw", "-S"]);
    assert!(!raw.contains("TCPWATCH"), "{raw}");
    let raw6 = lab.output(A, "ip6tables", &["-t", "raw", "-S"]);
    assert!(!raw6.contains("TCPWATCH"), "{raw6}");
    let sets = lab.output(A, "ipset", &["list", "-n"]);
    assert!(!sets.contains("tcpwatch"), "{sets}");
}

#[test]
fn dry_run_reports_the_block_and_changes_nothing() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &PORTS);
    let agent = start(&lab, args("nftables").switch("--dry-run"));
    let (_, _, _scan) = scan_and_block(&lab, &agent, false, "nftables");
    assert_eq!(diagnostics(&agent.stderr()).len(), 1, "{}", agent.stderr());
    assert!(agent.stderr().contains("dry run"));
    let ruleset = lab.output(A, "nft", &["list", "ruleset"]);
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
    // The agent cannot find `nft`, and is told not to use libnftables
    // either (as on a host without nftables).
    let env = [("PATH", "/nonexistent"), ("TCPWATCH_LIBNFTABLES", "0")];
    let agent = Agent::start_with_env(&lab, A, &env, &args("nftables"));
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let _scan = lab.connect(B, host, &PORTS, None);
    agent.expect_event(&port_scan(scanner, host, &PORTS), EVENT);
    std::thread::sleep(SETTLE);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_eq!(
        diagnostics(&finished.stderr),
        ["tcpwatch: warning: cannot block via nftables: cannot create table inet tcpwatch: nft: command not found; detecting only"]
    );
    assert!(!finished.stdout.iter().any(|l| l.contains("Blocked")));
}
