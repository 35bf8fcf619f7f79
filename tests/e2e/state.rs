//! The state file (`--state`) and SIGHUP: the agent runs in host A with
//! nftables blocking in A's own namespace (never in the root namespace), its
//! state file in a temporary directory.

use crate::agent::*;
use crate::inspect::nft_set;
use crate::lab::*;
use regex::Regex;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EVENT: Duration = Duration::from_secs(5);
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];

/// procfs with its state in `state`, no blocking unless set.
fn args(state: &Path) -> Args {
    Args::run().state(state)
}

/// [`args`] blocking with `backend` for `ttl`.
fn blocking(state: &Path, backend: &str, ttl: &str) -> Args {
    args(state).block(backend).block_ttl(ttl)
}

/// A temporary directory and the state file's path in it.
fn state_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    (dir, state)
}

fn lab(hosts: usize) -> Option<Lab> {
    Lab::needing(&["nft"], hosts)
}

/// The `timeout` nft shows for `ip` in `set_text` (after the element's
/// counter), in whole seconds.
fn timeout_of(set_text: &str, ip: IpAddr) -> Option<u64> {
    let re = Regex::new(&format!(
        r"(?:^|[\s{{,]){} (?:counter packets \d+ bytes \d+ )?timeout (?:(\d+)m)?(?:(\d+)s)?",
        regex::escape(&ip.to_string())
    ))
    .unwrap();
    let caps = re.captures(set_text)?;
    let part = |i| {
        caps.get(i)
            .map_or(0, |m: regex::Match| m.as_str().parse::<u64>().unwrap())
    };
    Some(part(1) * 60 + part(2))
}

/// The agent says it restored one block, and `ip`'s is in blocked4: the
/// seconds it has left there.
fn restored_left(lab: &Lab, agent: &Agent, ip: IpAddr) -> u64 {
    assert!(
        agent.stderr().contains("tcpwatch: restored 1 blocks"),
        "{}",
        agent.stderr()
    );
    let set = nft_set(lab, "blocked4");
    timeout_of(&set, ip).unwrap_or_else(|| panic!("{ip} not restored: {set}"))
}

fn tables(lab: &Lab) -> String {
    String::from_utf8_lossy(&lab.run(A, "nft", &["list", "tables"]).stdout).into_owned()
}

#[test]
fn a_restart_reports_what_opened_while_down_and_nothing_twice() {
    let Some(lab) = lab(2) else { return };
    let (_dir, state) = state_file();
    let host: IpAddr = lab.v4(A).into();
    let _server = lab.serve(A, Listen::V4, &[80]);

    // Open before the first start ever: not reported (as without a file),
    // but accounted for, so no later start reports it either.
    let before = lab.connect(B, host, &[80], None);
    let agent = Agent::start(&lab, A, &args(&state));
    let first = lab.connect(B, host, &[80], None);
    let first_line = new_connection(first.locals[0], at(host, 80));
    agent.expect_exactly(std::slice::from_ref(&first_line), EVENT, SETTLE);

    let while_down = lab.connect(B, host, &[80], None);
    let agent = Agent::start(&lab, A, &args(&state));
    let down_line = new_connection(while_down.locals[0], at(host, 80));
    agent.expect_event(&down_line, EVENT);
    let after = lab.connect(B, host, &[80], None);
    let after_line = new_connection(after.locals[0], at(host, 80));
    agent.expect_event(&after_line, EVENT);
    std::thread::sleep(SETTLE);
    let finished = agent.stop();
    assert_exact_events(&finished, &[down_line, after_line]);
    assert!(
        diagnostics(&finished.stderr).is_empty(),
        "{}",
        finished.stderr
    );
    drop(before);
}

#[test]
fn a_restart_restores_an_active_block_with_its_time_left() {
    let Some(lab) = lab(3) else { return };
    let (_dir, state) = state_file();
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let mut ports = PORTS.to_vec();
    ports.push(9000);
    let _server = lab.serve(A, Listen::V4, &ports);
    let control = ControlSocket::new();
    let with = |backend| {
        let args = blocking(&state, backend, "30s").control(&control);
        Agent::start(&lab, A, &args)
    };

    let agent = with("nftables");
    let scan = lab.connect(B, host, &PORTS, None);
    agent.expect_event(&blocked(scanner, "30s", "nftables"), EVENT);
    drop(scan);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(
        !tables(&lab).contains("tcpwatch"),
        "SIGTERM still removes the table"
    );
    std::thread::sleep(Duration::from_secs(2));

    // Restored on whichever backend is configured now.
    let agent = with("iptables");
    assert!(
        agent.stderr().contains("tcpwatch: restored 1 blocks"),
        "{}",
        agent.stderr()
    );
    let saved = lab.output(A, "ipset", &["list", "tcpwatch4", "-output", "save"]);
    let re = Regex::new(&format!(r"add tcpwatch4 {scanner} timeout (\d+)")).unwrap();
    let left: u64 = re
        .captures(&saved)
        .unwrap_or_else(|| panic!("{scanner} not restored in ipset: {saved}"))[1]
        .parse()
        .unwrap();
    assert!((1..=28).contains(&left), "{left}s is not the time left");
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);

    let agent = with("nftables");
    let left = restored_left(&lab, &agent, scanner);
    assert!(
        (1..=28).contains(&left),
        "restored with {left}s, not the time left"
    );
    assert!(
        lab.try_connect(C, host, 9000).is_ok(),
        "a bystander is blocked"
    );

    // Lifted through the agent while running: it must not come back, not
    // at the next check (5 s) nor at the next start (the file forgets it).
    control.output(&lab, A, &["blocks", "remove", &scanner.to_string()]);
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !nft_set(&lab, "blocked4").contains("elements"),
        "a lifted block came back: {}",
        nft_set(&lab, "blocked4")
    );
    let finished = agent.stop();
    assert!(
        !finished.stdout.iter().any(|l| l.contains("Blocked")),
        "a restore printed a Blocked line: {:#?}",
        finished.stdout
    );
    // The bystander's connection may be seen (procfs every second) or not.
    let bystander = format!("New connection: {}:", lab.v4(C));
    let texts: Vec<String> = event_texts(&finished.stdout)
        .into_iter()
        .filter(|t| !t.starts_with(&bystander))
        .collect();
    assert_eq!(texts, [format!("Unblocked {scanner} via nftables")]);
    assert_eq!(finished.status.code(), Some(0));

    let agent = with("nftables");
    assert!(
        !nft_set(&lab, "blocked4").contains("elements"),
        "a lifted block came back: {}",
        nft_set(&lab, "blocked4")
    );
    let finished = agent.stop();
    assert!(!finished.stderr.contains("restored"), "{}", finished.stderr);
}

/// A tiny LCG: the kill delays only need to be spread, not secure.
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn kill_9_fifty_times_under_churn_never_loses_the_file_or_a_block() {
    let Some(lab) = lab(3) else { return };
    let (_dir, state) = state_file();
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let _server = lab.serve(A, Listen::V4, &PORTS);
    // A server that closes at once and a client looping short connections
    // to it: the table changes on every poll.
    let _churn_server = lab.spawn(
        A,
        "python3",
        &[
            "-c",
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7000))\ns.listen(512)\nwhile True:\n c,_=s.accept()\n c.close()",
        ],
    );
    let _churn = lab.spawn(
        C,
        "python3",
        &[
            "-c",
            "import socket,sys,time\nwhile True:\n try: socket.create_connection((sys.argv[1],7000),timeout=1).close()\n except OSError: pass\n time.sleep(0.01)",
            &host.to_string(),
        ],
    );
    let args = blocking(&state, "nftables", "10m");
    let agent = Agent::start(&lab, A, &args);
    let scan = lab.connect(B, host, &PORTS, None);
    agent.expect_event(&blocked(scanner, "10m", "nftables"), EVENT);
    drop(scan);
    agent.kill();

    let mut seed = u64::from(std::process::id());
    let started = Instant::now();
    let mut ready = 0;
    for round in 0..50 {
        let agent = Agent::spawn(&lab, A, &args);
        std::thread::sleep(Duration::from_millis(50 + next(&mut seed) % 251));
        let stderr = agent.stderr();
        assert!(
            !stderr.contains("error"),
            "round {round}: the agent failed: {stderr}"
        );
        ready += usize::from(stderr.contains(READY));
        let finished = agent.kill();
        assert_eq!(
            finished.status.code(),
            None,
            "round {round}: the agent exited by itself: {}",
            finished.stderr
        );
    }
    eprintln!(
        "50 kills in {:?}, {ready} after readiness",
        started.elapsed()
    );

    let agent = Agent::start(&lab, A, &args);
    let left = restored_left(&lab, &agent, scanner);
    assert!(left > 60 && left < 600, "{left}s left");
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(
        !finished.stdout.iter().any(|l| l.contains("Blocked")),
        "{:#?}",
        finished.stdout
    );
}

#[test]
fn sighup_changes_scan_ports_and_keeps_the_connection_table() {
    let Some(lab) = lab(2) else { return };
    let (dir, state) = state_file();
    let config = dir.path().join("tcpwatch.toml");
    std::fs::write(&config, "scan-ports = 10\nscan-window = \"5m\"\n").unwrap();
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let mut ports = PORTS.to_vec();
    ports.push(8005);
    let _server = lab.serve(A, Listen::V4, &ports);
    let config_arg = config.display().to_string();
    let agent = Agent::start(&lab, A, &args(&state).set("--config", &config_arg));

    let four = lab.connect(B, host, &PORTS, None);
    let mut expected: Vec<String> = four
        .locals
        .iter()
        .zip(PORTS)
        .map(|(local, port)| new_connection(*local, at(host, port)))
        .collect();
    agent.expect_event(&expected[3], EVENT);

    // A bad file is refused and the running configuration kept.
    std::fs::write(&config, "scan-ports = \"three\"\n").unwrap();
    agent.signal("HUP");
    let refused = format!("configuration not reloaded, keeping the running one: {config_arg}:1:");
    agent.expect_stderr(&refused, EVENT);

    std::fs::write(&config, "scan-ports = 3\nscan-window = \"5m\"\n").unwrap();
    agent.signal("HUP");
    agent.expect_stderr("tcpwatch: configuration reloaded", EVENT);
    let fifth = lab.connect(B, host, &[8005], None);
    expected.push(new_connection(fifth.locals[0], at(host, 8005)));
    let scan = port_scan(scanner, host, &ports);
    agent.expect_event(&scan, EVENT);
    expected.push(scan);
    std::thread::sleep(SETTLE);
    let finished = agent.stop();
    assert_exact_events(&finished, &expected);
    assert!(
        !finished.stderr.contains("next start only"),
        "{}",
        finished.stderr
    );
}

/// `tcpwatch run` with a state file it cannot use: exit 1, one line naming
/// the file and the way out. No privileges needed: blocking is off.
fn refused(state: &Path) -> String {
    let out = Command::new(AGENT)
        .args(args(state).argv())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    stderr
}

#[test]
fn a_corrupt_state_file_is_one_line_exit_1_and_left_alone() {
    let (_dir, state) = state_file();
    let garbage = b"\x00\x01not redb\n".repeat(512);
    std::fs::write(&state, &garbage).unwrap();
    let stderr = refused(&state);
    assert!(
        stderr.contains(&format!(
            "remove {} or run with --state off",
            state.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), garbage);
}

#[test]
fn a_named_state_path_that_cannot_be_opened_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(&dir.path().join("missing-dir").join("state"));
    assert!(stderr.contains("cannot open"), "{stderr}");
}
