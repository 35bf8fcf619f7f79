//! End-to-end fault tests of the sources, with the real binary in a [`Lab`]:
//! `/proc/net/tcp{,6}` unreadable (mid-run and at start), the watched
//! interface going down and coming back or being deleted and re-created
//! (pcap and xdp), and the wall clock jumping (libfaketime).
//!
//! Each fault is local to the agent: its own mount namespace (`unshare -m`,
//! faults mounted from the test with `nsenter`), its own interface in its
//! lab namespace, an `LD_PRELOAD` of its own. What every test asserts is the
//! documented behaviour (`notes/faults-source.md`): the agent keeps
//! detecting, says what is wrong once, and says once that it recovered.
//!
//! Needs root, nsenter/unshare, nmap, curl and libfaketime (skips otherwise;
//! fails under `CI=true`). Run with
//! `cargo test --release --test e2e_faults_source -- --test-threads=2`.

mod common;

use common::*;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const A: usize = 0;
const B: usize = 1;
/// The scanner of the interface tests: its (remote, local) pair is fresh,
/// so B's probes and connections do not count towards its scan.
const C: usize = 2;

/// The ceiling for a line a poll (1 s) or a real-time source must print.
const EVENT: Duration = Duration::from_secs(10);

/// Where the procfs agent serves its metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9472";

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn lab_with(hosts: usize, tools: &[(&str, &[&str])]) -> Option<Lab> {
    for (tool, args) in tools {
        if !require_tool(tool, args) {
            return None;
        }
    }
    Lab::new(hosts)
}

/// Runs `script` with `sh -c` in the mount namespace of process `pid` (the
/// agent's own, made by `unshare -m`): the fault is seen by the agent only.
fn in_mount_ns(pid: u32, script: &str) {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "sh", "-c", script])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "nsenter -t {pid} -m sh -c '{script}': {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory to mount over the agent's `/proc/PID/net`: `broken` (`tcp`
/// or `tcp6`) is a directory, so reading it fails (EISDIR; root ignores
/// file modes, so a mode-000 file would still read), the other an empty
/// file. (Mounts on the files of `/proc/PID/net` themselves do not hold:
/// the kernel drops those dentries at each lookup.)
fn broken_net_dir(broken: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["tcp", "tcp6"] {
        let path = dir.path().join(name);
        if name == broken {
            std::fs::create_dir(&path).unwrap();
        } else {
            std::fs::write(&path, "").unwrap();
        }
    }
    dir
}

fn procfs_args() -> Vec<&'static str> {
    vec![
        "run",
        "--source",
        "procfs",
        "--interval",
        "1s",
        "--block",
        "none",
        "--state",
        "off",
        "--metrics-addr",
        METRICS,
    ]
}

/// `GET path` of the agent's metrics server, from inside host A:
/// (status code, body).
fn http_get(lab: &Lab, path: &str) -> (u16, String) {
    let url = format!("http://{METRICS}{path}");
    let out = lab.run(A, "curl", &["-sS", "-w", "\n%{http_code}", &url]);
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("body and code");
    (
        code.trim().parse().expect("an HTTP status"),
        body.to_string(),
    )
}

/// `tcpwatch_poll_duration_seconds_count{source="procfs"}`: the good reads.
fn good_reads(lab: &Lab) -> u64 {
    let (_, body) = http_get(lab, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("tcpwatch_poll_duration_seconds_count{source=\"procfs\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no procfs poll count in:\n{body}"))
}

/// The stderr lines containing `text`.
fn stderr_lines(agent: &Agent, text: &str) -> Vec<String> {
    agent
        .stderr()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

/// The agent's output without the lines of its own scrapes (curl from A
/// to the metrics port is a connection like any other).
fn without_scrapes(mut finished: Finished) -> Finished {
    let scrape = format!(" -> {METRICS}");
    finished.stdout.retain(|l| !l.ends_with(&scrape));
    finished
}

const WARNING: &str = "tcpwatch: warning: procfs source: ";
const READS_AGAIN: &str = "tcpwatch: procfs source reads again";

/// One table unreadable for several polls, mid-run, then readable again.
fn table_unreadable_mid_run(broken: &str) {
    let Some(lab) = lab_with(2, &[("nsenter", &["--version"]), ("curl", &["--version"])]) else {
        return;
    };
    let server = lab.serve(A, Listen::Dual, &[7001, 7002, 7003]);
    let agent = Agent::start_wrapped(
        &lab,
        A,
        &["unshare", "-m", "--propagation", "private"],
        &procfs_args(),
    );
    let before = lab.connect(B, lab.v4(A).into(), &[7001], None);
    agent.expect_event(
        &new_connection(before.locals[0], at(lab.v4(A), 7001)),
        EVENT,
    );
    assert_eq!(http_get(&lab, "/healthz"), (200, "ok\n".to_string()));

    let dir = broken_net_dir(broken);
    let pid = agent.pid();
    in_mount_ns(
        pid,
        &format!("mount --bind {} /proc/{pid}/net", dir.path().display()),
    );
    let file = format!("/proc/net/{broken}: ");
    assert!(
        agent.wait_for_stderr(&format!("{WARNING}{file}"), EVENT),
        "no warning naming {file}; stderr: {}",
        agent.stderr()
    );
    assert_eq!(
        http_get(&lab, "/healthz"),
        (503, "source failing\n".to_string())
    );
    let reads = good_reads(&lab);
    // Opened during the fault and still open after it.
    let during = lab.connect(B, lab.v6(A).into(), &[7002], None);
    let during_line = new_connection(during.locals[0], at(lab.v6(A), 7002));
    // Several intervals of failed reads: still one warning, nothing printed.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(stderr_lines(&agent, WARNING).len(), 1, "{}", agent.stderr());
    assert!(
        !agent
            .stdout_lines()
            .iter()
            .any(|l| event_text(l) == Some(during_line.as_str())),
        "printed while the table was unreadable: {:#?}",
        agent.stdout_lines()
    );
    assert_eq!(good_reads(&lab), reads, "a failed read was timed");

    in_mount_ns(pid, &format!("umount /proc/{pid}/net"));
    assert!(
        agent.wait_for_stderr(READS_AGAIN, EVENT),
        "{}",
        agent.stderr()
    );
    agent.expect_event(&during_line, EVENT);
    assert_eq!(http_get(&lab, "/healthz"), (200, "ok\n".to_string()));
    assert!(within(EVENT, || good_reads(&lab) > reads));
    let after = lab.connect(B, lab.v4(A).into(), &[7003], None);
    let after_line = new_connection(after.locals[0], at(lab.v4(A), 7003));
    agent.expect_event(&after_line, EVENT);
    std::thread::sleep(SETTLE);

    let finished = without_scrapes(agent.stop());
    assert_exact_events(
        &finished,
        &[
            new_connection(before.locals[0], at(lab.v4(A), 7001)),
            during_line,
            after_line,
        ],
    );
    let diagnostics = diagnostics(&finished.stderr);
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert!(diagnostics[0].starts_with(&format!("{WARNING}{file}")));
    assert!(diagnostics[0].ends_with("; retrying every 1s"));
    assert_eq!(diagnostics[1], READS_AGAIN);
    drop(server);
}

#[test]
fn proc_net_tcp_unreadable_mid_run_warns_once_and_recovers() {
    table_unreadable_mid_run("tcp");
}

#[test]
fn proc_net_tcp6_unreadable_mid_run_warns_once_and_recovers() {
    table_unreadable_mid_run("tcp6");
}

/// Unreadable from the start: one warning, no readiness line, `/healthz`
/// 503; once readable the agent becomes ready, taking what is open then as
/// the existing connections (not reported, as at any start), and reports
/// every connection after it.
#[test]
fn proc_net_tcp_unreadable_at_start_becomes_ready_when_readable() {
    let Some(lab) = lab_with(2, &[("nsenter", &["--version"]), ("curl", &["--version"])]) else {
        return;
    };
    let server = lab.serve(A, Listen::V4, &[7001, 7002]);
    let dir = broken_net_dir("tcp");
    // The shell mounts over its own /proc/PID/net, then becomes the agent.
    let script = r#"mount --bind "$0" /proc/$$/net && exec "$@""#;
    let dir_arg = dir.path().display().to_string();
    let agent = Agent::spawn_wrapped(
        &lab,
        A,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            &dir_arg,
        ],
        &procfs_args(),
    );
    assert!(
        agent.wait_for_stderr(&format!("{WARNING}/proc/net/tcp: "), START_TIMEOUT),
        "{}",
        agent.stderr()
    );
    assert!(within(EVENT, || http_get(&lab, "/healthz").0 == 503));
    let during = lab.connect(B, lab.v4(A).into(), &[7001], None);
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        !agent.stderr().contains(READY),
        "ready without a table: {}",
        agent.stderr()
    );
    assert_eq!(stderr_lines(&agent, WARNING).len(), 1, "{}", agent.stderr());

    let pid = agent.pid();
    in_mount_ns(pid, &format!("umount /proc/{pid}/net"));
    let agent = agent.ready();
    assert_eq!(stderr_lines(&agent, READS_AGAIN).len(), 1);
    assert_eq!(http_get(&lab, "/healthz"), (200, "ok\n".to_string()));
    let after = lab.connect(B, lab.v4(A).into(), &[7002], None);
    let after_line = new_connection(after.locals[0], at(lab.v4(A), 7002));
    agent.expect_event(&after_line, EVENT);
    std::thread::sleep(SETTLE);

    let finished = without_scrapes(agent.stop());
    // `during` was open at the first table: an existing connection.
    assert_exact_events(&finished, &[after_line]);
    drop((during, server));
}

// ---------------------------------------------------------------------------
// The watched interface going down and up, or deleted and re-created

/// Python that tries one connection to HOST on each PORT (2 s
/// timeout; refused is fine: a SYN is an attempt) and prints each local port.
const ATTEMPTS: &str = r#"
import socket, sys
host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for port in ports:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    print(s.getsockname()[1], flush=True)
    s.settimeout(2)
    try:
        s.connect((host, port))
    except OSError:
        pass
    s.close()
"#;

/// One attempt from host `from` to A's IPv4 address on each of `ports`;
/// the lines the agent must print for them.
fn attempts(lab: &Lab, from: usize, ports: &[u16]) -> Vec<String> {
    let mut args = vec!["-c".to_string(), ATTEMPTS.into(), lab.v4(A).to_string()];
    args.extend(ports.iter().map(u16::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.run(from, "python3", &args);
    assert!(
        out.status.success(),
        "attempts failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let locals: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a port"))
        .collect();
    assert_eq!(locals.len(), ports.len());
    locals
        .iter()
        .zip(ports)
        .map(|(&local, &port)| new_connection(at(lab.v4(from), local), at(lab.v4(A), port)))
        .collect()
}

/// `ip args...`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts A's addresses back on its `eth0` (IPv4 ones survive a down/up, the
/// kernel drops the IPv6 ones) and lets B and C forget A's old MAC address.
fn readdress_a(lab: &Lab) {
    let (ns, v4, v6) = (
        lab.ns(A),
        format!("{}/24", lab.v4(A)),
        format!("{}/64", lab.v6(A)),
    );
    ip(&["-n", ns, "addr", "replace", &v4, "dev", "eth0"]);
    ip(&["-n", ns, "addr", "replace", &v6, "dev", "eth0", "nodad"]);
    for other in [B, C] {
        ip(&["-n", lab.ns(other), "neigh", "flush", "all"]);
    }
}

/// Deletes A's `eth0` (by deleting its bridge port, the other end of the
/// veth pair), then, once `gone` holds, creates a new pair of the same
/// names and puts A back on the bridge with its addresses.
fn recreate_eth0(lab: &Lab, gone: impl FnOnce()) {
    let (sw, ns) = (lab.switch_ns(), lab.ns(A));
    ip(&["-n", sw, "link", "del", "p1"]);
    gone();
    ip(&[
        "-n", sw, "link", "add", "p1", "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    ip(&["-n", sw, "link", "set", "p1", "master", "br0", "up"]);
    // Addresses first, as a network manager would: the source may bind to
    // the interface the moment it is up.
    readdress_a(lab);
    ip(&["-n", ns, "link", "set", "eth0", "up"]);
}

/// The real-time sources under test.
#[derive(Clone, Copy, PartialEq)]
enum Realtime {
    Pcap,
    Xdp,
}

impl Realtime {
    fn name(self) -> &'static str {
        match self {
            Realtime::Pcap => "pcap",
            Realtime::Xdp => "xdp",
        }
    }
}

fn realtime_lab(source: Realtime) -> Option<Lab> {
    if source == Realtime::Xdp && !tcpwatch::bpf::xdp::built() {
        missing_prerequisite("the XDP program was not built (clang missing at build time)");
        return None;
    }
    lab_with(3, &[("curl", &["--version"])])
}

/// Starts a real-time agent on A's `eth0` and returns once it sees SYNs:
/// B tries a closed port of A until the agent prints it. Returns the agent
/// and the lines printed so far (those probes).
fn start_realtime(lab: &Lab, source: Realtime) -> (Agent, Vec<String>) {
    start_realtime_under(lab, source, &[])
}

/// [`start_realtime`] under `wrapper` (see [`Agent::spawn_wrapped`]).
fn start_realtime_under(lab: &Lab, source: Realtime, wrapper: &[&str]) -> (Agent, Vec<String>) {
    let args = [
        "run",
        "--source",
        source.name(),
        "--interface",
        "eth0",
        "--block",
        "none",
        "--state",
        "off",
        "--metrics-addr",
        METRICS,
    ];
    let agent = if wrapper.is_empty() {
        Agent::start(lab, A, &args)
    } else {
        Agent::start_wrapped(lab, A, wrapper, &args)
    };
    let mut seen = Vec::new();
    for _ in 0..20 {
        let line = attempts(lab, B, &[9]).remove(0);
        seen.push(line.clone());
        if agent
            .wait_for(
                |l| event_text(l) == Some(line.as_str()),
                Duration::from_millis(500),
            )
            .is_some()
        {
            // Every probe printed so far, each once.
            let printed: Vec<String> = agent
                .stdout_lines()
                .iter()
                .filter_map(|l| event_text(l).map(str::to_string))
                .collect();
            return (agent, printed);
        }
    }
    panic!(
        "the {} agent never saw B's SYN\nstdout: {:#?}\nstderr: {}",
        source.name(),
        agent.stdout_lines(),
        agent.stderr()
    );
}

/// After the fault: a connection from B is printed, and C's scan of four
/// closed ports is detected, all exactly once; the lines expected.
fn detection_resumes(lab: &Lab, agent: &Agent) -> Vec<String> {
    let mut expected = attempts(lab, B, &[7002]);
    agent.expect_event(&expected[0], EVENT);
    let scan = attempts(lab, C, &[8001, 8002, 8003, 8004]);
    for line in &scan {
        agent.expect_event(line, EVENT);
    }
    let scan_line = port_scan(
        lab.v4(C).into(),
        lab.v4(A).into(),
        &[8001, 8002, 8003, 8004],
    );
    agent.expect_event(&scan_line, EVENT);
    expected.extend(scan);
    expected.push(scan_line);
    expected
}

/// The XDP programs `ip -d link show eth0` lists in A.
fn xdp_attached(lab: &Lab) -> bool {
    let out = lab.run(A, "ip", &["-d", "link", "show", "eth0"]);
    String::from_utf8_lossy(&out.stdout).contains("name tcpwatch")
}

/// Down for longer than a check, then up: one line each way, `/healthz`
/// failing in between, detection as before afterwards.
fn interface_down_and_up(source: Realtime) {
    let Some(lab) = realtime_lab(source) else {
        return;
    };
    let (agent, mut expected) = start_realtime(&lab, source);
    let before = attempts(&lab, B, &[7001]);
    agent.expect_event(&before[0], EVENT);
    expected.extend(before);
    assert_eq!(http_get(&lab, "/healthz"), (200, "ok\n".to_string()));

    let name = source.name();
    let down = format!("tcpwatch: warning: {name} source: interface 'eth0' is down; watching resumes when it is up");
    ip(&["-n", lab.ns(A), "link", "set", "eth0", "down"]);
    assert!(agent.wait_for_stderr(&down, EVENT), "{}", agent.stderr());
    assert_eq!(
        http_get(&lab, "/healthz"),
        (503, "source failing\n".to_string())
    );
    // Not ready, but alive: a liveness probe must not restart it.
    assert_eq!(http_get(&lab, "/livez"), (200, "ok\n".to_string()));
    if source == Realtime::Xdp {
        assert!(xdp_attached(&lab), "the program left a down interface");
    }
    // Several checks while down: still one line.
    std::thread::sleep(Duration::from_millis(4500));
    ip(&["-n", lab.ns(A), "link", "set", "eth0", "up"]);
    readdress_a(&lab);
    let up = format!("tcpwatch: {name} source: interface 'eth0' is up again");
    assert!(agent.wait_for_stderr(&up, EVENT), "{}", agent.stderr());
    assert!(within(EVENT, || http_get(&lab, "/healthz").0 == 200));
    if source == Realtime::Xdp {
        assert!(xdp_attached(&lab));
    }
    expected.extend(detection_resumes(&lab, &agent));
    std::thread::sleep(SETTLE);

    let finished = without_scrapes(agent.stop());
    assert_exact_events(&finished, &expected);
    let diagnostics = diagnostics(&finished.stderr);
    assert_eq!(diagnostics, [down.as_str(), up.as_str()]);
}

/// Deleted, then a new interface of the same name: the source binds to the
/// new one by itself (pcap reopens its capture, xdp attaches its program).
fn interface_recreated(source: Realtime) {
    let Some(lab) = realtime_lab(source) else {
        return;
    };
    let (agent, mut expected) = start_realtime(&lab, source);
    let before = attempts(&lab, B, &[7001]);
    agent.expect_event(&before[0], EVENT);
    expected.extend(before);

    let name = source.name();
    let gone = format!(
        "tcpwatch: warning: {name} source: interface 'eth0' is gone; looking for it every 2s"
    );
    recreate_eth0(&lab, || {
        assert!(agent.wait_for_stderr(&gone, EVENT), "{}", agent.stderr());
        assert_eq!(
            http_get(&lab, "/healthz"),
            (503, "source failing\n".to_string())
        );
        // Several checks while gone: still one line.
        std::thread::sleep(Duration::from_millis(4500));
    });
    let back = match source {
        Realtime::Pcap => "tcpwatch: pcap source: interface 'eth0' is back; capture reopened",
        Realtime::Xdp => {
            "tcpwatch: xdp source: interface 'eth0' is back; program attached (driver mode)"
        }
    };
    assert!(agent.wait_for_stderr(back, EVENT), "{}", agent.stderr());
    assert!(within(EVENT, || http_get(&lab, "/healthz").0 == 200));
    if source == Realtime::Xdp {
        assert!(xdp_attached(&lab), "the program is not on the new eth0");
    }
    expected.extend(detection_resumes(&lab, &agent));
    std::thread::sleep(SETTLE);

    let finished = without_scrapes(agent.stop());
    assert_exact_events(&finished, &expected);
    let diagnostics = diagnostics(&finished.stderr);
    assert_eq!(diagnostics, [gone.as_str(), back]);
    if source == Realtime::Xdp {
        assert!(!xdp_attached(&lab), "the program outlived the agent");
    }
}

#[test]
fn pcap_interface_down_and_up_says_so_once_and_keeps_detecting() {
    interface_down_and_up(Realtime::Pcap);
}

#[test]
fn xdp_interface_down_and_up_keeps_the_program_and_keeps_detecting() {
    interface_down_and_up(Realtime::Xdp);
}

#[test]
fn pcap_interface_recreated_is_captured_again() {
    interface_recreated(Realtime::Pcap);
}

#[test]
fn xdp_interface_recreated_gets_the_program_again() {
    interface_recreated(Realtime::Xdp);
}

// ---------------------------------------------------------------------------
// The wall clock jumping

/// libfaketime from the Debian package `faketime`.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How far a printed time may be from the expected one: the lines are
/// checked as they come, within seconds.
const STAMP_SLACK: i64 = 5;

/// Seconds between the time printed on `line` and now (local time, as the
/// agent prints it).
fn stamp_minus_now(line: &str) -> i64 {
    let stamp = line.get(..19).expect("a timestamp");
    let printed = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("bad timestamp in '{line}': {e}"));
    (printed - chrono::Local::now().naive_local()).num_seconds()
}

fn assert_stamp(line: &str, offset: i64) {
    let off = stamp_minus_now(line);
    assert!(
        (off - offset).abs() <= STAMP_SLACK,
        "'{line}' is {off} s from now, expected {offset} s"
    );
}

/// The agent's wall clock (only it: libfaketime in its LD_PRELOAD, the
/// monotonic clock left alone) jumps forward an hour in the middle of a
/// scan, then back two hours: the printed times follow the wall clock, the
/// scan is reported once, and every connection is printed once.
#[test]
fn wall_clock_jumps_move_the_printed_times_only() {
    if !std::path::Path::new(FAKETIME).exists() {
        missing_prerequisite(&format!("{FAKETIME} (Debian package faketime)"));
        return;
    }
    let Some(lab) = realtime_lab(Realtime::Pcap) else {
        return;
    };
    let offset = tempfile::NamedTempFile::new().expect("temp file");
    let set_offset = |spec: &str| std::fs::write(offset.path(), format!("{spec}\n")).unwrap();
    set_offset("+0");
    let preload = format!("LD_PRELOAD={FAKETIME}");
    let file = format!("FAKETIME_TIMESTAMP_FILE={}", offset.path().display());
    let wrapper = [
        "env",
        preload.as_str(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
        "FAKETIME_NO_CACHE=1",
        file.as_str(),
    ];
    let (agent, mut expected) = start_realtime_under(&lab, Realtime::Pcap, &wrapper);

    let first = attempts(&lab, C, &[8001, 8002]);
    for line in &first {
        assert_stamp(&agent.expect_event(line, EVENT), 0);
    }
    set_offset("+1h");
    let second = attempts(&lab, C, &[8003, 8004]);
    for line in &second {
        assert_stamp(&agent.expect_event(line, EVENT), 3600);
    }
    let scan = port_scan(
        lab.v4(C).into(),
        lab.v4(A).into(),
        &[8001, 8002, 8003, 8004],
    );
    assert_stamp(&agent.expect_event(&scan, EVENT), 3600);
    set_offset("-1h");
    let after = attempts(&lab, B, &[7001]);
    assert_stamp(&agent.expect_event(&after[0], EVENT), -3600);
    // C goes on within the window: the same episode, no second scan line.
    let more = attempts(&lab, C, &[8005]);
    agent.expect_event(&more[0], EVENT);
    std::thread::sleep(SETTLE);

    let finished = agent.stop();
    expected.extend(first);
    expected.extend(second);
    expected.push(scan);
    expected.extend(after);
    expected.extend(more);
    assert_exact_events(&finished, &expected);
    assert!(
        diagnostics(&finished.stderr).is_empty(),
        "{}",
        finished.stderr
    );
}
