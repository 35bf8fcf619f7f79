//! Faults of the sources: `/proc/net/tcp{,6}` unreadable (mid-run and at
//! start), the watched interface going down and coming back or being
//! deleted and re-created (pcap and xdp), and the wall clock jumping
//! (libfaketime).
//!
//! Each fault is local to the agent: its own mount namespace (`unshare -m`,
//! faults mounted from the test with `nsenter`), its own interface in its
//! lab namespace, an `LD_PRELOAD` of its own. What every test asserts is
//! the documented behaviour: the agent keeps detecting, says what is wrong
//! once, and says once that it recovered.

use crate::agent::*;
use crate::lab::*;
use crate::prereq::missing_prerequisite;
use crate::proc::{nsenter, stdout_of};
use std::time::Duration;

/// The ceiling for a line a poll (1 s) or a real-time source must print.
const EVENT: Duration = Duration::from_secs(10);

/// Where the agent serves its metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9472";

/// Runs `script` with `sh -c` in the mount namespace of process `pid` (the
/// agent's own, made by `unshare -m`): the fault is seen by the agent only.
fn in_mount_ns(pid: u32, script: &str) {
    let command = nsenter(pid, &["-m"], &["sh", "-c", script]);
    stdout_of(command, &format!("nsenter -t {pid} -m sh -c '{script}'"));
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

/// `source` watching A (on its `eth0` for a packet source), with metrics.
/// The agent's own scrapes (curl from A to the metrics port is a
/// connection like any other) are not what the tests check.
fn args(source: Source) -> Args {
    Args::watching(source).metrics(METRICS)
}

fn scrapes() -> String {
    format!(" -> {METRICS}")
}

/// `GET path` of the agent's metrics server, from inside host A:
/// (status code, body).
fn http_get(lab: &Lab, path: &str) -> (u16, String) {
    lab.http_get(A, &format!("http://{METRICS}{path}"))
}

fn ok() -> (u16, String) {
    (200, "ok\n".to_string())
}

fn failing() -> (u16, String) {
    (503, "source failing\n".to_string())
}

/// `tcpwatch_poll_duration_seconds_count{source="procfs"}`: the good reads.
fn good_reads(lab: &Lab) -> u64 {
    let (_, body) = http_get(lab, "/metrics");
    let series = "tcpwatch_poll_duration_seconds_count{source=\"procfs\"}";
    let reads = crate::inspect::sample(&body, series);
    reads.unwrap_or_else(|| panic!("no procfs poll count in:\n{body}")) as u64
}

const WARNING: &str = "tcpwatch: warning: procfs source: ";
const READS_AGAIN: &str = "tcpwatch: procfs source reads again";

/// One table unreadable for several polls, mid-run, then readable again.
fn table_unreadable_mid_run(broken: &str) {
    let Some(lab) = Lab::needing(&["nsenter", "curl"], 2) else {
        return;
    };
    let server = lab.serve(A, Listen::Dual, &[7001, 7002, 7003]);
    let unshare = ["unshare", "-m", "--propagation", "private"];
    let agent = Agent::start_under(&lab, A, &unshare, &args(Source::Procfs)).ignoring(scrapes());
    let before = lab.connect(B, lab.v4(A).into(), &[7001], None);
    let before_line = new_connection(before.locals[0], at(lab.v4(A), 7001));
    agent.expect_event(&before_line, EVENT);
    assert_eq!(http_get(&lab, "/healthz"), ok());

    let dir = broken_net_dir(broken);
    let pid = agent.pid();
    in_mount_ns(
        pid,
        &format!("mount --bind {} /proc/{pid}/net", dir.path().display()),
    );
    let file = format!("/proc/net/{broken}: ");
    agent.expect_stderr(&format!("{WARNING}{file}"), EVENT);
    assert_eq!(http_get(&lab, "/healthz"), failing());
    let reads = good_reads(&lab);
    // Opened during the fault and still open after it.
    let during = lab.connect(B, lab.v6(A).into(), &[7002], None);
    let during_line = new_connection(during.locals[0], at(lab.v6(A), 7002));
    // Several intervals of failed reads: still one warning, nothing printed.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(agent.stderr_lines(WARNING).len(), 1, "{}", agent.stderr());
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
    agent.expect_stderr(READS_AGAIN, EVENT);
    agent.expect_event(&during_line, EVENT);
    assert_eq!(http_get(&lab, "/healthz"), ok());
    assert!(within(EVENT, || good_reads(&lab) > reads));
    let after = lab.connect(B, lab.v4(A).into(), &[7003], None);
    let after_line = new_connection(after.locals[0], at(lab.v4(A), 7003));
    agent.expect_event(&after_line, EVENT);
    std::thread::sleep(SETTLE);

    let finished = agent.stop();
    assert_exact_events(&finished, &[before_line, during_line, after_line]);
    let diagnostics = diagnostics(&finished.stderr);
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert!(diagnostics[0].starts_with(&format!("{WARNING}{file}")));
    assert!(diagnostics[0].ends_with("; retrying every 1s"));
    assert_eq!(diagnostics[1], READS_AGAIN);
    drop(server);
}

test_rows!(table_unreadable_mid_run {
    proc_net_tcp_unreadable_mid_run_warns_once_and_recovers: "tcp";
    proc_net_tcp6_unreadable_mid_run_warns_once_and_recovers: "tcp6";
});

/// Unreadable from the start: one warning, no readiness line, `/healthz`
/// 503; once readable the agent becomes ready, taking what is open then as
/// the existing connections (not reported, as at any start), and reports
/// every connection after it.
#[test]
fn proc_net_tcp_unreadable_at_start_becomes_ready_when_readable() {
    let Some(lab) = Lab::needing(&["nsenter", "curl"], 2) else {
        return;
    };
    let server = lab.serve(A, Listen::V4, &[7001, 7002]);
    let dir = broken_net_dir("tcp");
    // The shell mounts over its own /proc/PID/net, then becomes the agent.
    let script = r#"mount --bind "$0" /proc/$$/net && exec "$@""#;
    let dir_arg = dir.path().display().to_string();
    let wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        &dir_arg,
    ];
    let agent = Agent::spawn_under(&lab, A, &wrapper, &args(Source::Procfs)).ignoring(scrapes());
    agent.expect_stderr(&format!("{WARNING}/proc/net/tcp: "), START_TIMEOUT);
    assert!(within(EVENT, || http_get(&lab, "/healthz").0 == 503));
    let during = lab.connect(B, lab.v4(A).into(), &[7001], None);
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        !agent.stderr().contains(READY),
        "ready without a table: {}",
        agent.stderr()
    );
    assert_eq!(agent.stderr_lines(WARNING).len(), 1, "{}", agent.stderr());

    let pid = agent.pid();
    in_mount_ns(pid, &format!("umount /proc/{pid}/net"));
    let agent = agent.ready();
    assert_eq!(agent.stderr_lines(READS_AGAIN).len(), 1);
    assert_eq!(http_get(&lab, "/healthz"), ok());
    let after = lab.connect(B, lab.v4(A).into(), &[7002], None);
    let after_line = new_connection(after.locals[0], at(lab.v4(A), 7002));
    agent.expect_event(&after_line, EVENT);
    std::thread::sleep(SETTLE);

    // `during` was open at the first table: an existing connection.
    assert_exact_events(&agent.stop(), &[after_line]);
    drop((during, server));
}

// ---------------------------------------------------------------------------
// The watched interface going down and up, or deleted and re-created

/// One attempt from host `from` to A's IPv4 address on each of `ports`
/// (refused is fine: a SYN is an attempt); the lines the agent must print
/// for them.
fn attempts(lab: &Lab, from: usize, ports: &[u16]) -> Vec<String> {
    let locals = lab.attempts(from, lab.v4(A).into(), ports, 2.0);
    let lines = locals.iter().zip(ports);
    lines
        .map(|(&local, &port)| new_connection(at(lab.v4(from), local), at(lab.v4(A), port)))
        .collect()
}

fn realtime_lab(source: Source) -> Option<Lab> {
    if !source.available() {
        return None;
    }
    Lab::needing(&["curl"], 3)
}

/// Starts a real-time agent (under `wrapper`, see [`Agent::spawn_under`])
/// on A's `eth0` and returns once it sees SYNs: B tries a closed port of A
/// until the agent prints it. Returns the agent and the lines printed so
/// far (those probes).
fn start_realtime(lab: &Lab, source: Source, wrapper: &[&str]) -> (Agent, Vec<String>) {
    let agent = Agent::start_under(lab, A, wrapper, &args(source)).ignoring(scrapes());
    for _ in 0..20 {
        let line = attempts(lab, B, &[9]).remove(0);
        if agent
            .wait_for(
                |l| event_text(l) == Some(line.as_str()),
                Duration::from_millis(500),
            )
            .is_some()
        {
            // Every probe printed so far, each once.
            let printed = event_texts(&agent.stdout_lines());
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
    let ports = [8001, 8002, 8003, 8004];
    let scan = attempts(lab, C, &ports);
    for line in &scan {
        agent.expect_event(line, EVENT);
    }
    let scan_line = port_scan(lab.v4(C).into(), lab.v4(A).into(), &ports);
    agent.expect_event(&scan_line, EVENT);
    expected.extend(scan);
    expected.push(scan_line);
    expected
}

/// Whether a tcpwatch XDP program is attached to A's `eth0`.
fn xdp_attached(lab: &Lab) -> bool {
    let lines = lab.xdp_lines(A);
    lines.iter().any(|l| l.contains("name tcpwatch"))
}

/// A fault of the watched interface. Before it, a connection is printed
/// and `/healthz` is ok; `fault` breaks the interface, checks the agent
/// says so, and mends it, returning that warning and the recovery line the
/// agent must say. After it: `/healthz` ok again, detection as before, the
/// two lines all the agent said, and no program left behind at the stop.
fn interface_fault(source: Source, fault: impl FnOnce(&Lab, &Agent) -> (String, String)) {
    let Some(lab) = realtime_lab(source) else {
        return;
    };
    let (agent, mut expected) = start_realtime(&lab, source, &[]);
    let before = attempts(&lab, B, &[7001]);
    agent.expect_event(&before[0], EVENT);
    expected.extend(before);
    assert_eq!(http_get(&lab, "/healthz"), ok());

    let (warning, recovered) = fault(&lab, &agent);
    agent.expect_stderr(&recovered, EVENT);
    assert!(within(EVENT, || http_get(&lab, "/healthz").0 == 200));
    if source == Source::Xdp {
        assert!(xdp_attached(&lab), "the program is not on eth0");
    }
    expected.extend(detection_resumes(&lab, &agent));
    std::thread::sleep(SETTLE);

    let finished = agent.stop();
    assert_exact_events(&finished, &expected);
    let diagnostics = diagnostics(&finished.stderr);
    assert_eq!(diagnostics, [warning.as_str(), recovered.as_str()]);
    if source == Source::Xdp {
        assert!(!xdp_attached(&lab), "the program outlived the agent");
    }
}

/// Down for longer than a check, then up: one line each way, `/healthz`
/// failing in between (but `/livez` ok), the XDP program kept.
fn interface_down_and_up(source: Source) {
    interface_fault(source, |lab, agent| {
        let name = source.name();
        let down = format!("tcpwatch: warning: {name} source: interface 'eth0' is down; watching resumes when it is up");
        ip_ok(&["-n", lab.ns(A), "link", "set", "eth0", "down"]);
        agent.expect_stderr(&down, EVENT);
        assert_eq!(http_get(lab, "/healthz"), failing());
        // Not ready, but alive: a liveness probe must not restart it.
        assert_eq!(http_get(lab, "/livez"), ok());
        if source == Source::Xdp {
            assert!(xdp_attached(lab), "the program left a down interface");
        }
        // Several checks while down: still one line.
        std::thread::sleep(Duration::from_millis(4500));
        ip_ok(&["-n", lab.ns(A), "link", "set", "eth0", "up"]);
        lab.readdress(A);
        let up = format!("tcpwatch: {name} source: interface 'eth0' is up again");
        (down, up)
    });
}

/// Deleted, then a new interface of the same name: the source binds to the
/// new one by itself (pcap reopens its capture, xdp attaches its program).
fn interface_recreated(source: Source) {
    interface_fault(source, |lab, agent| {
        let name = source.name();
        let gone = format!(
            "tcpwatch: warning: {name} source: interface 'eth0' is gone; looking for it every 2s"
        );
        lab.unplug(A);
        agent.expect_stderr(&gone, EVENT);
        assert_eq!(http_get(lab, "/healthz"), failing());
        // Several checks while gone: still one line.
        std::thread::sleep(Duration::from_millis(4500));
        lab.plug(A);
        let back = match source {
            Source::Xdp => "program attached (driver mode)",
            _ => "capture reopened",
        };
        (
            gone,
            format!("tcpwatch: {name} source: interface 'eth0' is back; {back}"),
        )
    });
}

test_rows!(interface_down_and_up {
    pcap_interface_down_and_up_says_so_once_and_keeps_detecting: Source::Pcap;
    xdp_interface_down_and_up_keeps_the_program_and_keeps_detecting: Source::Xdp;
});

test_rows!(interface_recreated {
    pcap_interface_recreated_is_captured_again: Source::Pcap;
    xdp_interface_recreated_gets_the_program_again: Source::Xdp;
});

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
    let Some(lab) = realtime_lab(Source::Pcap) else {
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
    let (agent, mut expected) = start_realtime(&lab, Source::Pcap, &wrapper);

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
