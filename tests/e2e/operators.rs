//! The operators' tools, end to end: a repeat offender's longer blocks
//! across a restart; a blocked scanner's probes never printed as
//! connections and counted as drops of its block; the drops each backend
//! counts; drift between the firewall and the agent repaired; `tcpwatch
//! blocks add/remove` and `tcpwatch status` through the running agent's
//! control socket. The agent runs in host A, B scans or is blocked, every
//! firewall object lives in A's namespace.

use crate::agent::*;
use crate::inspect::{lists, nft_set, sample};
use crate::lab::*;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const EVENT: Duration = Duration::from_secs(5);
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];
const METRICS_PORT: u16 = 9472;

fn metrics_addr(lab: &Lab) -> String {
    format!("{}:{METRICS_PORT}", lab.v4(A))
}

/// A's `/metrics`, fetched from inside A.
fn metrics(lab: &Lab) -> String {
    let (code, body) = lab.http_get(A, &format!("http://{}/metrics", metrics_addr(lab)));
    assert_eq!(code, 200, "{body}");
    body
}

fn metric(lab: &Lab, series: &str) -> f64 {
    let text = metrics(lab);
    sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// A temporary directory and a state file's path in it.
fn state_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    (dir, state)
}

/// The event texts printed after the first line that is exactly `line`.
fn after(agent: &Agent, line: &str) -> Vec<String> {
    let texts = event_texts(&agent.stdout_lines());
    let at = texts
        .iter()
        .position(|t| t == line)
        .unwrap_or_else(|| panic!("no line {line}: {texts:#?}"));
    texts[at + 1..].to_vec()
}

/// The number before ` packets dropped` (or ` packet dropped`) in a
/// `blocks list` line.
fn dropped_in(line: &str) -> u64 {
    let re = regex::Regex::new(r"; (\d+) packets? dropped;").unwrap();
    let caps = re
        .captures(line)
        .unwrap_or_else(|| panic!("no drop count in {line}"));
    caps[1].parse().unwrap()
}

/// The `blocks list` line of `target`, through the agent.
fn listed(lab: &Lab, control: &ControlSocket, target: IpAddr) -> String {
    let list = control.output(lab, A, &["blocks", "list"]);
    list.lines()
        .find(|l| l.starts_with(&format!("{target} ")))
        .unwrap_or_else(|| panic!("{target} not listed: {list}"))
        .to_string()
}

/// This host's name: the origin of the agent's blocks.
fn node() -> String {
    tcpwatch::os::host::name().unwrap()
}

// ---------------------------------------------------------------------------
// Repeat offenders

/// Waits (up to `timeout`) until the block of `ip` has left blocked4.
fn wait_unblocked(lab: &Lab, ip: IpAddr, timeout: Duration) {
    assert!(
        within(timeout, || !lists(&nft_set(lab, "blocked4"), ip)),
        "{ip} still blocked after {timeout:?}: {}",
        nft_set(lab, "blocked4")
    );
}

#[test]
fn a_repeat_offender_is_blocked_30s_then_1m_then_2m_and_a_restart_keeps_the_count() {
    let Some(lab) = Lab::needing(&["nft"], 2) else {
        return;
    };
    let (_dir, state) = state_file();
    let control = ControlSocket::new();
    // A short window: a scan after the block ends is a new episode.
    let args = Args::run()
        .block("nftables")
        .block_ttl("30s")
        .block_ttl_max("2m")
        .set("--scan-window", "5s")
        .state(&state)
        .control(&control);
    let _server = lab.serve(A, Listen::V4, &PORTS);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let scan = format!("Port scan detected: {scanner} -> {host} on ports 8001,8002,8003,8004");
    let scan_and_block = |agent: &Agent, line: &str| {
        let client = lab.connect(B, host, &PORTS, None);
        agent.expect_event(&scan, EVENT);
        agent.expect_event(line, Duration::from_secs(2));
        drop(client);
    };
    let started = Instant::now();
    let agent = Agent::start(&lab, A, &args);
    let first = format!("Blocked {scanner} for 30s via nftables");
    scan_and_block(&agent, &first);
    wait_unblocked(&lab, scanner, Duration::from_secs(40));
    let second = format!("Blocked {scanner} for 1m via nftables (repeat 2)");
    scan_and_block(&agent, &second);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);

    // A restart keeps the block and the count.
    let agent = Agent::start(&lab, A, &args);
    assert!(
        agent.stderr().contains("tcpwatch: restored 1 blocks"),
        "{}",
        agent.stderr()
    );
    assert!(lists(&nft_set(&lab, "blocked4"), scanner));
    wait_unblocked(&lab, scanner, Duration::from_secs(70));
    let third = format!("Blocked {scanner} for 2m via nftables (repeat 3)");
    scan_and_block(&agent, &third);
    let line = listed(&lab, &control, scanner);
    assert!(
        line.starts_with(&format!("{scanner} expires in ")),
        "{line}"
    );
    assert!(
        line.contains("; port scan 3/5s on ports 8001,8002,8003,8004 (repeat 3); origin "),
        "{line}"
    );
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    eprintln!(
        "30s, 1m, 2m blocks of one scanner across a restart in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// A blocked scanner's probes

/// A packet source sees a blocked scanner's probes before the firewall
/// drops them (or, for XDP blocking, the program drops them first): after
/// the `Blocked` line none of them is a `New connection`; they show as
/// drops of the block.
fn a_blocked_syn_scan_prints_no_connection_after_its_block(source: Source, backend: &str) {
    if !source.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["nmap", "nft", "curl"], 2) else {
        return;
    };
    let control = ControlSocket::new();
    let args = Args::watching(source)
        .block(backend)
        .block_ttl("10m")
        .metrics(metrics_addr(&lab))
        .control(&control);
    let agent = Agent::watching_with(&lab, source, &args);
    let scanner: IpAddr = lab.v4(B).into();
    let report = lab.fast_syn_scan(B, lab.v4(A).into(), "1-1000");
    let block = blocked(scanner, "10m", backend);
    agent.expect_event(&block, EVENT);
    // What was in flight has gone through.
    std::thread::sleep(Duration::from_secs(2));
    let from_scanner = format!("New connection: {scanner}:");
    let texts = event_texts(&agent.stdout_lines());
    let before = texts
        .iter()
        .take_while(|t| **t != block)
        .filter(|t| t.starts_with(&from_scanner))
        .count();
    let later: Vec<String> = after(&agent, &block)
        .into_iter()
        .filter(|t| t.starts_with(&from_scanner))
        .collect();
    assert!(
        later.is_empty(),
        "{} connections of the blocked scanner after its block: {:#?}",
        later.len(),
        &later[..later.len().min(10)]
    );
    let line = listed(&lab, &control, scanner);
    let dropped = dropped_in(&line);
    let series = format!("tcpwatch_dropped_packets_total{{backend=\"{backend}\"}}");
    assert!(
        within(Duration::from_secs(7), || metric(&lab, &series) > 0.0),
        "{series} stayed at 0"
    );
    let seen = metric(
        &lab,
        &format!(
            "tcpwatch_blocked_packets_seen_total{{source=\"{}\"}}",
            source.name()
        ),
    );
    if backend == "nftables" {
        // The source sees each dropped probe; the block counts it.
        assert!(seen > 0.0 && dropped > 0, "seen {seen}, {line}");
    }
    eprintln!(
        "{} + {backend}: {before} connections before the block, none after; \
         blocks list: {dropped} dropped; {series} {}; seen by the source {seen}; nmap: {}",
        source.name(),
        metric(&lab, &series),
        report
            .lines()
            .find(|l| l.contains("Not shown"))
            .unwrap_or("")
    );
    assert_eq!(agent.stop().status.code(), Some(0));
}

test_rows!(a_blocked_syn_scan_prints_no_connection_after_its_block {
    pcap_nftables_prints_no_connection_after_the_block: Source::Pcap, "nftables";
    xdp_nftables_prints_no_connection_after_the_block: Source::Xdp, "nftables";
    pcap_xdp_prints_no_connection_after_the_block: Source::Pcap, "xdp";
    xdp_xdp_prints_no_connection_after_the_block: Source::Xdp, "xdp";
});

/// 100 SYNs from a blocked B: its `blocks list` line says about 100
/// packets dropped, counted by the backend itself (the procfs source sees
/// none of them).
fn blocks_list_counts_the_probes_a_block_dropped(backend: &str) {
    if backend == "xdp" && !Source::Xdp.available() {
        return;
    }
    let Some(lab) = Lab::needing(&["nft", "ipset", "iptables", "curl"], 2) else {
        return;
    };
    let control = ControlSocket::new();
    let mut args = Args::run()
        .block(backend)
        .metrics(metrics_addr(&lab))
        .control(&control);
    if backend == "xdp" {
        args = args.interface("eth0");
    }
    let agent = Agent::start(&lab, A, &args);
    let scanner: IpAddr = lab.v4(B).into();
    control.output(
        &lab,
        A,
        &["blocks", "add", &scanner.to_string(), "--ttl", "10m"],
    );
    let ports: Vec<u16> = (20000..20100).collect();
    lab.attempts(B, lab.v4(A).into(), &ports, 0.05);
    let counted = || dropped_in(&listed(&lab, &control, scanner));
    assert!(
        within(Duration::from_secs(7), || counted() >= 100),
        "{}",
        listed(&lab, &control, scanner)
    );
    let dropped = counted();
    assert!((100..=110).contains(&dropped), "{dropped} packets dropped");
    let series = format!("tcpwatch_dropped_packets_total{{backend=\"{backend}\"}}");
    assert!(within(Duration::from_secs(7), || metric(&lab, &series) >= 100.0));
    eprintln!(
        "{backend}: 100 probes, {dropped} dropped in blocks list, {} in {series}",
        metric(&lab, &series)
    );
    assert_eq!(agent.stop().status.code(), Some(0));
}

// The backends' per-block counters: nftables set elements with counters,
// ipset `counters`, the XDP map value.
test_rows!(blocks_list_counts_the_probes_a_block_dropped {
    nftables_counts_the_probes_a_block_dropped: "nftables";
    iptables_counts_the_probes_a_block_dropped: "iptables";
    xdp_counts_the_probes_a_block_dropped: "xdp";
});

// ---------------------------------------------------------------------------
// Drift

/// An agent on A blocking via `backend`, with metrics and a control
/// socket, and B blocked by hand for 10 minutes through it: the agent, its
/// control socket and B's address.
fn blocking_b_by_hand(lab: &Lab, backend: &str) -> (Agent, ControlSocket, IpAddr) {
    let control = ControlSocket::new();
    let args = Args::run()
        .block(backend)
        .metrics(metrics_addr(lab))
        .control(&control);
    let agent = Agent::start(lab, A, &args);
    let scanner: IpAddr = lab.v4(B).into();
    control.output(
        lab,
        A,
        &["blocks", "add", &scanner.to_string(), "--ttl", "10m"],
    );
    (agent, control, scanner)
}

/// An element deleted behind the agent's back is back within the check
/// interval (5 s) and counted; one added behind its back is adopted.
fn drift_is_repaired_within_the_check_interval(backend: &str) {
    let Some(lab) = Lab::needing(&["nft", "ipset", "iptables", "curl"], 2) else {
        return;
    };
    let (agent, control, scanner) = blocking_b_by_hand(&lab, backend);
    let shown = scanner.to_string();
    let held = |ip: IpAddr| match backend {
        "nftables" => lists(&nft_set(&lab, "blocked4"), ip),
        _ => lists(
            &lab.output(A, "ipset", &["list", "tcpwatch4", "-output", "save"]),
            ip,
        ),
    };
    assert!(held(scanner));
    let element = format!("{{ {shown} }}");
    match backend {
        "nftables" => lab.output(
            A,
            "nft",
            &[
                "delete", "element", "inet", "tcpwatch", "blocked4", &element,
            ],
        ),
        _ => lab.output(A, "ipset", &["del", "tcpwatch4", &shown]),
    };
    let deleted = Instant::now();
    assert!(!held(scanner));
    assert!(
        within(Duration::from_secs(7), || held(scanner)),
        "{scanner} not back within 7 s"
    );
    let took = deleted.elapsed();
    assert!(took <= Duration::from_millis(5500), "back after {took:?}");
    let missing = format!("tcpwatch_block_drift_total{{backend=\"{backend}\",kind=\"missing\"}}");
    assert_eq!(metric(&lab, &missing), 1.0);
    agent.expect_stderr(
        &format!("tcpwatch: warning: 1 block was gone from {backend} (deleted behind the agent's back?); applied again"),
        EVENT,
    );

    // An element the agent did not make: adopted, with its reason.
    let stranger: IpAddr = "203.0.113.5".parse().unwrap();
    match backend {
        "nftables" => lab.output(
            A,
            "nft",
            &[
                "add",
                "element",
                "inet",
                "tcpwatch",
                "blocked4",
                "{ 203.0.113.5 timeout 1h }",
            ],
        ),
        _ => lab.output(
            A,
            "ipset",
            &["add", "tcpwatch4", "203.0.113.5", "timeout", "3600"],
        ),
    };
    let unknown = format!("tcpwatch_block_drift_total{{backend=\"{backend}\",kind=\"unknown\"}}");
    assert!(
        within(Duration::from_secs(7), || metric(&lab, &unknown) == 1.0),
        "not adopted"
    );
    let line = listed(&lab, &control, stranger);
    assert!(line.contains("; found in the firewall; origin "), "{line}");
    eprintln!("{backend}: a deleted block back after {took:?}");
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
}

test_rows!(drift_is_repaired_within_the_check_interval {
    nftables_drift_is_repaired_within_the_check_interval: "nftables";
    iptables_drift_is_repaired_within_the_check_interval: "iptables";
});

// ---------------------------------------------------------------------------
// `blocks add/remove` and `status` through the agent

#[test]
fn blocks_add_and_remove_go_through_the_running_agent() {
    let Some(lab) = Lab::needing(&["nft"], 2) else {
        return;
    };
    let (_dir, state) = state_file();
    let control = ControlSocket::new();
    let args = Args::run()
        .block("nftables")
        .state(&state)
        .control(&control)
        .set("--allow", "203.0.113.0/24");
    let agent = Agent::start(&lab, A, &args);
    let target: IpAddr = "198.51.100.7".parse().unwrap();

    let added = control.output(&lab, A, &["blocks", "add", "198.51.100.7", "--ttl", "5m"]);
    assert_eq!(added, "Blocked 198.51.100.7 for 5m via nftables\n");
    agent.expect_event("Blocked 198.51.100.7 for 5m via nftables", EVENT);
    let set = nft_set(&lab, "blocked4");
    assert!(lists(&set, target), "{set}");
    assert!(
        // The element with its counter: `198.51.100.7 counter packets 0 bytes 0 timeout 5m`.
        set.lines()
            .any(|l| l.contains("198.51.100.7 ") && l.contains(" timeout 5m")),
        "not the 5 minutes asked for: {set}"
    );
    let status = control.output(&lab, A, &["status"]);
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("198.51.100.7 "))
        .unwrap_or_else(|| panic!("not in status: {status}"));
    assert!(
        line.ends_with(&format!(
            "via nftables; 0 packets dropped; manual; origin {}",
            node()
        )),
        "{line}"
    );

    // Allowlisted: refused, one line, exit 1, nothing in the kernel.
    for refused in ["203.0.113.9", "203.0.0.0/16"] {
        let out = control.run(&lab, A, &["blocks", "add", refused]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty());
        let want = if refused.contains('/') {
            format!("tcpwatch: error: not blocking {refused}: it holds an address never to be blocked (--allow 203.0.113.0/24)\n")
        } else {
            format!("tcpwatch: error: not blocking {refused}: it is never blocked (--allow 203.0.113.0/24)\n")
        };
        assert_eq!(stderr, want);
    }
    assert!(!nft_set(&lab, "blocked4").contains("203.0.113"));

    // In the state file: stopped, the file holds it; restarted, it is back.
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    {
        let store = tcpwatch::state::Store::open(&state).unwrap();
        let blocks = store.blocks().unwrap();
        assert!(
            blocks
                .iter()
                .any(|b| b.target == "198.51.100.7/32".parse().unwrap()),
            "{blocks:?}"
        );
        let records = store.records().unwrap();
        assert!(records.iter().any(|r| r.reason == "manual"), "{records:?}");
    }
    let agent = Agent::start(&lab, A, &args);
    assert!(agent.stderr().contains("tcpwatch: restored 1 blocks"));
    assert_eq!(
        control.output(&lab, A, &["blocks", "remove", "198.51.100.7"]),
        "Unblocked 198.51.100.7 via nftables\n"
    );
    agent.expect_event("Unblocked 198.51.100.7 via nftables", EVENT);
    assert!(!lists(&nft_set(&lab, "blocked4"), target));
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let store = tcpwatch::state::Store::open(&state).unwrap();
    assert!(
        store.blocks().unwrap().is_empty(),
        "a lifted block stays in the file"
    );
    drop(store);

    // No agent: `status` says so in one line, exit 1.
    let out = control.run(&lab, A, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tcpwatch: error: no agent running (nothing answers on {})\n",
            control.path.display()
        )
    );
}

#[test]
fn status_after_a_scan_in_text_and_json() {
    let Some(lab) = Lab::needing(&["nft"], 2) else {
        return;
    };
    let control = ControlSocket::new();
    let args = Args::run().block("nftables").control(&control);
    let _server = lab.serve(A, Listen::V4, &PORTS);
    let agent = Agent::start(&lab, A, &args);
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let _client = lab.connect(B, host, &PORTS, None);
    agent.expect_event(&blocked(scanner, "1h", "nftables"), EVENT);

    let text = control.output(&lab, A, &["status"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "tcpwatch {} on {} (pid {}), up ",
            env!("CARGO_PKG_VERSION"),
            node(),
            agent.pid()
        )),
        "{text}"
    );
    // The drop counts depend on what B sends after its block (none, or a
    // retransmission): any number.
    let counts = regex::Regex::new(r"\d+ packets? dropped").unwrap();
    let texts: Vec<String> = lines[1..]
        .iter()
        .map(|l| counts.replace_all(l, "N packets dropped").into_owned())
        .collect();
    let block = format!(
        "  {scanner} expires in {{}}s via nftables; N packets dropped; port scan 3/60s on ports 8001,8002,8003,8004; origin {}",
        node()
    );
    let left: u64 = lines[12]
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!((3590..=3600).contains(&left), "{text}");
    let want: Vec<String> = [
        "source: procfs, ok, 0 events lost",
        "blocking: nftables, 1 block in force, 0 pending, 0 errors, 0 drift repairs, N packets dropped",
        "last hour: 4 connections inbound and 0 outbound, 1 port scan, 1 block",
        "top scanners:",
        &format!("  {scanner} 1 scan"),
        "top ports:",
        "  8001 1 scan",
        "  8002 1 scan",
        "  8003 1 scan",
        "  8004 1 scan",
        "blocks:",
        &block.replace("{}", &left.to_string()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(texts, want, "{text}");

    let json = control.output(&lab, A, &["status", "--format", "json"]);
    assert_eq!(json.lines().count(), 1, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["source"]["name"], "procfs");
    assert_eq!(v["source"]["health"], "ok");
    assert_eq!(v["blocking"]["backend"], "nftables");
    assert_eq!(v["last_hour"]["port_scans"], 1);
    assert_eq!(v["last_hour"]["connections_inbound"], 4);
    assert_eq!(v["top_scanners"][0]["source"], scanner.to_string());
    assert_eq!(v["top_ports"].as_array().unwrap().len(), 4);
    assert_eq!(v["blocks"][0]["target"], scanner.to_string());
    assert_eq!(
        v["blocks"][0]["reason"],
        "port scan 3/60s on ports 8001,8002,8003,8004"
    );
    assert_eq!(v["blocks"][0]["repeat"], 1);
    assert_eq!(v["blocks"][0]["ttl_seconds"], 3600);
    assert_eq!(agent.stop().status.code(), Some(0));
}

// ---------------------------------------------------------------------------
// A block applied again

/// The milliseconds left of `ip`'s element in an `nft list set` text
/// (`expires 9m56s992ms`).
fn expires_ms(text: &str, ip: IpAddr) -> u64 {
    let re = regex::Regex::new(&format!(
        r"{} [^,}}]*expires (?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?",
        regex::escape(&ip.to_string())
    ))
    .unwrap();
    let caps = re
        .captures(text)
        .unwrap_or_else(|| panic!("no expiry of {ip} in {text}"));
    let n = |i: usize| {
        caps.get(i)
            .map_or(0, |m| m.as_str().parse::<u64>().unwrap())
    };
    ((n(1) * 60 + n(2)) * 60 + n(3)) * 1000 + n(4)
}

/// `blocks add` of a block in force applies it again: the kernel's timeout
/// of its element starts over (nftables updates it in place on this
/// kernel), and its count of dropped packets starts from zero while the
/// total keeps what was counted (the element's counter goes on in the
/// kernel: the backend subtracts what it held at the re-block).
#[test]
fn nftables_block_applied_again_restarts_its_timeout_and_its_count() {
    let Some(lab) = Lab::needing(&["nft", "curl"], 2) else {
        return;
    };
    let (agent, control, scanner) = blocking_b_by_hand(&lab, "nftables");
    let shown = scanner.to_string();
    let ports: Vec<u16> = (20000..20050).collect();
    lab.attempts(B, lab.v4(A).into(), &ports, 0.05);
    let series = "tcpwatch_dropped_packets_total{backend=\"nftables\"}";
    assert!(within(Duration::from_secs(7), || {
        dropped_in(&listed(&lab, &control, scanner)) >= 50 && metric(&lab, series) >= 50.0
    }));
    let total = metric(&lab, series);
    std::thread::sleep(Duration::from_secs(3));
    let before = expires_ms(&nft_set(&lab, "blocked4"), scanner);
    assert!(before <= 597_000, "{before} ms left");
    control.output(&lab, A, &["blocks", "add", &shown, "--ttl", "10m"]);
    let after = expires_ms(&nft_set(&lab, "blocked4"), scanner);
    assert!(after >= 598_000, "{after} ms left after the re-block");
    // Past the next check (every 5 s), which reads the kernel's counters.
    std::thread::sleep(Duration::from_secs(6));
    let line = listed(&lab, &control, scanner);
    assert_eq!(dropped_in(&line), 0, "{line}");
    assert_eq!(metric(&lab, series), total);
    assert_eq!(agent.stop().status.code(), Some(0));
}
