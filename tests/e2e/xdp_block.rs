//! `--block xdp`: the agent runs in host A with its XDP program on A's
//! `eth0` veth; host B scans, host C is a bystander. A dropped SYN is seen
//! three ways: the scanner's connection attempt times out, A's
//! `tcpwatch_xdp_dropped_packets_total` rises, and a bystander still
//! connects.
//!
//! `ip netns exec` gives the agent a private /sys without a BPF filesystem;
//! the agent mounts one there for its pins, so `tcpwatch blocks` runs in the
//! agent's own mount namespace (`nsenter -t PID -m -n`). The restart case
//! keeps one mount namespace alive across two agents with a holder process.

use crate::agent::*;
use crate::inspect::sample;
use crate::lab::*;
use crate::prereq::require_xdp_program;
use crate::proc::{nsenter, stdout_of, Proc};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const EVENT: Duration = Duration::from_secs(5);
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];
/// A port the scan does not touch, used to probe whether SYNs get through.
const PROBE: u16 = 9000;
const METRICS_PORT: u16 = 9472;

fn lab() -> Option<Lab> {
    if !require_xdp_program() {
        return None;
    }
    Lab::needing(&["nmap", "nsenter", "curl"], 3)
}

/// `source` on A's eth0, blocking with XDP for `ttl`, metrics on A's lab
/// address.
fn args(lab: &Lab, source: Source, ttl: &str) -> Args {
    Args::run()
        .source(source)
        .interface("eth0")
        .block("xdp")
        .block_ttl(ttl)
        .metrics(format!("{}:{METRICS_PORT}", lab.v4(A)))
}

/// A's servers on [`PORTS`] and [`PROBE`].
fn serve(lab: &Lab, mode: Listen) -> Proc {
    let mut ports = PORTS.to_vec();
    ports.push(PROBE);
    lab.serve(A, mode, &ports)
}

/// [`serve`], then the agent with `args`.
fn start(lab: &Lab, mode: Listen, args: &Args) -> (Proc, Agent) {
    (serve(lab, mode), Agent::start(lab, A, args))
}

/// A's `/metrics`, fetched from inside A.
fn metrics(lab: &Lab) -> String {
    let url = format!("http://{}:{METRICS_PORT}/metrics", lab.v4(A));
    let (code, body) = lab.http_get(A, &url);
    assert_eq!(code, 200, "cannot fetch {url}: {body}");
    body
}

fn dropped(lab: &Lab, family: &str) -> f64 {
    let series = format!("tcpwatch_xdp_dropped_packets_total{{family=\"{family}\"}}");
    sample(&metrics(lab), &series).unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// `tcpwatch blocks ARGS` in the agent's network and mount namespaces
/// (where its pins are); must succeed. Without a running agent's control
/// socket, on the pins directly.
fn blocks(pid: u32, args: &[&str]) -> String {
    let argv = [&[AGENT, "blocks"], args].concat();
    stdout_of(
        nsenter(pid, &["-m", "-n"], &argv),
        &format!("tcpwatch blocks {args:?}"),
    )
}

/// [`blocks`] through the agent's control socket.
fn blocks_through(pid: u32, control: &ControlSocket, args: &[&str]) -> String {
    let argv = control.argv(args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    blocks(pid, &argv)
}

/// Starts an nmap connect scan of A's `PORTS` from B; returns it with the
/// scanner's and the target's addresses.
fn connect_scan(lab: &Lab, v6: bool) -> (Proc, IpAddr, IpAddr) {
    let (scanner, host) = (lab.addr(B, v6), lab.addr(A, v6));
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
/// after it.
fn scan_and_expect_block(lab: &Lab, agent: &Agent, v6: bool, ttl: &str) -> IpAddr {
    let (nmap, scanner, host) = connect_scan(lab, v6);
    agent.expect_event(&port_scan(scanner, host, &PORTS), EVENT);
    agent.expect_event(&blocked(scanner, ttl, "xdp"), EVENT);
    let _ = nmap.finish(Duration::from_secs(30));
    scanner
}

/// Checks the scanner's SYNs are dropped at XDP: its attempt times out and
/// the drop counter of its family rises (read within 3 s: it is copied
/// from the kernel every second); a bystander still connects.
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
    lab.try_connect(C, host, PROBE)
        .expect("a bystander is blocked too");
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
        lab.xdp_programs(A).is_empty(),
        "a program is left on eth0: {:?}",
        lab.xdp_programs(A)
    );
}

#[test]
fn xdp_source_blocks_a_v4_scanner_until_its_ttl_and_nobody_else() {
    let Some(lab) = lab() else { return };
    let (_server, agent) = start(&lab, Listen::Dual, &args(&lab, Source::Xdp, "3s"));
    let host: IpAddr = lab.v4(A).into();
    assert_eq!(lab.xdp_programs(A).len(), 1, "{:?}", lab.xdp_programs(A));

    // The block starts after the scan does (in the kernel at the threshold
    // probe, before the `Blocked` line): it cannot lift before this + TTL.
    let scan_started = Instant::now();
    let scanner = scan_and_expect_block(&lab, &agent, false, "3s");
    assert_dropped(&lab, scanner, host);
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
    let took = scan_started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "lifted {took:?} after the scan began, before the TTL"
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
    let control = ControlSocket::new();
    let args = args(&lab, Source::Xdp, "1h").control(&control);
    let (_server, agent) = start(&lab, Listen::Dual, &args);
    let host: IpAddr = lab.v6(A).into();

    let scanner = scan_and_expect_block(&lab, &agent, true, "1h");
    assert_dropped(&lab, scanner, host);
    // IPv4 from the same host is another address: not blocked.
    lab.try_connect(B, lab.v4(A).into(), PROBE)
        .expect("B's IPv4 address is not blocked");

    let listed = blocks(agent.pid(), &["list"]);
    assert!(
        listed.starts_with(&format!("{scanner} expires in "))
            && listed.contains(" via xdp; ")
            && listed.trim_end().ends_with(" packets dropped"),
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
    // Lifted through the agent, so it does not put it back.
    let removed = blocks_through(agent.pid(), &control, &["remove", &scanner.to_string()]);
    assert_eq!(removed.trim(), format!("Unblocked {scanner} via xdp"));
    // Idempotent.
    blocks_through(agent.pid(), &control, &["remove", &scanner.to_string()]);
    lab.try_connect(B, host, PROBE)
        .expect("the unblocked scanner connects again");
    assert_eq!(blocks(agent.pid(), &["list"]), "");
    assert_eq!(blocks_through(agent.pid(), &control, &["list"]), "");
    assert_clean_stop(&lab, agent);
}

#[test]
fn an_allowlisted_scanner_is_reported_but_never_blocked() {
    let Some(lab) = lab() else { return };
    let allow = format!("{}/32", lab.v4(B));
    let args = args(&lab, Source::Xdp, "1h").set("--allow", &allow);
    let (_server, agent) = start(&lab, Listen::V4, &args);
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
    assert!(lab.xdp_programs(A).is_empty());
}

#[test]
fn procfs_source_blocks_with_xdp_only() {
    let Some(lab) = lab() else { return };
    let control = ControlSocket::new();
    let args = args(&lab, Source::Procfs, "1h").control(&control);
    let (_server, agent) = start(&lab, Listen::V4, &args);
    assert!(
        agent.stderr().contains("tcpwatch: xdp: blocking on eth0"),
        "{}",
        agent.stderr()
    );
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    // procfs sees connections that stay open: hold four.
    let _scan = lab.connect(B, host, &PORTS, None);
    agent.expect_event(&port_scan(scanner, host, &PORTS), EVENT);
    agent.expect_event(&blocked(scanner, "1h", "xdp"), EVENT);
    assert_dropped(&lab, scanner, host);
    // The program only blocks here: nothing is reported from XDP.
    assert!(!agent.stdout_lines().iter().any(|l| l.contains(":9000")));
    let flushed = blocks_through(agent.pid(), &control, &["flush"]);
    assert_eq!(flushed.trim(), "Flushed 1 block via xdp");
    lab.try_connect(B, host, PROBE)
        .expect("flushed scanner connects again");
    assert_clean_stop(&lab, agent);
}

#[test]
fn after_kill_9_the_next_agent_replaces_stale_pins_and_blocks() {
    let Some(lab) = lab() else { return };
    let _server = serve(&lab, Listen::V4);
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
    let in_holder = |argv: &[&str]| nsenter(holder.pid(), &["-m", "-n"], argv);
    let argv = args(&lab, Source::Xdp, "1h").argv();
    let argv: Vec<&str> = std::iter::once(AGENT)
        .chain(argv.iter().map(String::as_str))
        .collect();
    let agent = |label: &str| Agent::of(Proc::start(label, in_holder(&argv))).ready();
    let first = agent("first agent");
    let pins = || {
        let out = in_holder(&["ls", "/sys/fs/bpf/tcpwatch"])
            .output()
            .expect("ls");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        within(Duration::from_secs(3), || pins().contains("blocked4")),
        "no pins"
    );
    first.kill();
    assert!(
        pins().contains("blocked4"),
        "kill -9 left no pins to reconcile"
    );

    let second = agent("second agent");
    assert!(
        within(Duration::from_secs(3), || second
            .stderr()
            .contains("removed the pins a previous tcpwatch left")),
        "{}",
        second.stderr()
    );
    let (nmap, scanner, host) = connect_scan(&lab, false);
    second.expect_event(&blocked(scanner, "1h", "xdp"), EVENT);
    let _ = nmap.finish(Duration::from_secs(30));
    assert_dropped(&lab, scanner, host);
    let listed = in_holder(&[AGENT, "blocks", "list"])
        .output()
        .expect("blocks list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&format!("{scanner} expires in")),
        "{listed}"
    );

    let finished = second.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_eq!(pins(), "", "pins left after SIGTERM");
    assert!(lab.xdp_programs(A).is_empty());
}
