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

/// The ceiling for a line a poll (1 s) or a real-time source must print.
const EVENT: Duration = Duration::from_secs(10);

/// Where the procfs agent serves its metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9472";

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn lab_with(tools: &[(&str, &[&str])]) -> Option<Lab> {
    for (tool, args) in tools {
        if !require_tool(tool, args) {
            return None;
        }
    }
    Lab::new(2)
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
    let Some(lab) = lab_with(&[("nsenter", &["--version"]), ("curl", &["--version"])]) else {
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
    let Some(lab) = lab_with(&[("nsenter", &["--version"]), ("curl", &["--version"])]) else {
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
