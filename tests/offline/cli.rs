//! The command line of the real binary: help, usage errors, config file
//! errors, `list`, and clean exits on SIGINT/SIGTERM. No root needed.

use crate::args::{Args, AGENT};
use crate::{one_line_error as usage_error, tcpwatch, text};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `tcpwatch run` with the quiet defaults and `--config path`.
fn run_with_config(path: &str) -> Vec<String> {
    Args::run().set("--config", path).argv()
}

#[test]
fn help_of_each_subcommand_exits_0() {
    let run_help = Args::run().switch("--help").argv();
    let run_help: Vec<&str> = run_help.iter().map(String::as_str).collect();
    for args in [&["--help"][..], &run_help, &["list", "--help"]] {
        let out = tcpwatch(args);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    // Each help is the subcommand's own.
    assert!(text(&tcpwatch(&run_help).stdout).contains("--scan-window"));
    assert!(!text(&tcpwatch(&["list", "--help"]).stdout).contains("--scan-window"));
}

#[test]
fn unknown_flag_is_a_one_line_usage_error() {
    let run = Args::run().switch("--no-such-flag").argv();
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    for args in [&run[..], &["list", "--no-such-flag"]] {
        let line = usage_error(args);
        assert!(line.contains("--no-such-flag"), "{line}");
    }
}

#[test]
fn bad_duration_names_the_flag() {
    let line = usage_error(&Args::run().set("--interval", "10x").argv());
    assert!(line.contains("--interval"), "{line}");
    assert!(line.contains("10x"), "{line}");
}

#[test]
fn config_file_with_unknown_key_names_file_and_line() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"interval = \"1s\"\n\nscan-prots = 5\n")
        .unwrap();
    let path = file.path().to_str().unwrap();

    let line = usage_error(&run_with_config(path));
    assert!(line.contains(&format!("{path}:3")), "{line}");
    assert!(line.contains("scan-prots"), "{line}");
}

/// Loopback connections held open while `list` runs: the test process owns
/// both ends, so the listing cannot be vacuously empty.
struct Loopback {
    listener: TcpListener,
    held: Vec<(TcpStream, TcpStream)>,
}

impl Loopback {
    fn open(count: usize) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let held = (0..count)
            .map(|_| {
                let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                (client, listener.accept().unwrap().0)
            })
            .collect();
        Loopback { listener, held }
    }

    /// `INITIATOR -> ACCEPTOR` of each connection.
    fn pairs(&self) -> Vec<String> {
        let server = self.listener.local_addr().unwrap();
        let clients = self.held.iter().map(|(c, _)| c.local_addr().unwrap());
        clients.map(|c| format!("{c} -> {server}")).collect()
    }
}

/// `tcpwatch list` once: exit 0, every line `STATE DIRECTION SRC -> DST`.
fn list_lines() -> Vec<String> {
    let out = tcpwatch(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let row = regex::Regex::new(r"^[A-Z][A-Z0-9-]{3,10} +(inbound |outbound) \S+:\d+ -> \S+:\d+$")
        .unwrap();
    let stdout = text(&out.stdout);
    for line in stdout.lines() {
        assert!(row.is_match(line), "bad list line: '{line}'");
        assert!(!line.starts_with("LISTEN"), "listener listed: '{line}'");
    }
    stdout.lines().map(str::to_string).collect()
}

#[test]
fn list_prints_current_connections_in_its_format() {
    let loopback = Loopback::open(1);
    let lines = list_lines();
    let pair = &loopback.pairs()[0];
    let ours: Vec<&String> = lines.iter().filter(|l| l.ends_with(pair)).collect();
    assert_eq!(ours.len(), 1, "want one '... {pair}' in:\n{lines:#?}");
    assert!(ours[0].starts_with("ESTABLISHED inbound  "), "{}", ours[0]);
}

/// Both ends of a loopback connection are listed; whichever comes first in
/// the table, the row is the inbound one. With 16 connections, one nearly
/// always has its client end first.
#[test]
fn list_labels_loopback_connections_inbound() {
    let loopback = Loopback::open(16);
    let lines = list_lines();
    for pair in loopback.pairs() {
        let want = format!("ESTABLISHED inbound  {pair}");
        assert!(lines.contains(&want), "want '{want}' in:\n{lines:#?}");
    }
}

/// Waits up to `timeout` for `child` to exit; kills it and panics otherwise.
fn exit_code_within(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tcpwatch did not exit within {timeout:?} of the signal");
}

fn exits_0_on(signal: &str) {
    let mut child = Command::new(AGENT)
        .args(Args::run().argv())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "tcpwatch exited before SIG{signal}"
    );
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let code = exit_code_within(&mut child, Duration::from_secs(5));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(0), "SIG{signal}: stderr: {stderr}");
}

#[test]
fn sigint_exits_0() {
    exits_0_on("INT");
}

#[test]
fn sigterm_exits_0() {
    exits_0_on("TERM");
}

#[test]
fn bad_xdp_map_size_is_a_one_line_usage_error() {
    for bad in ["0", "abc", "16777217", "1.5"] {
        let line = usage_error(&Args::run().set("--xdp-map-size", bad).argv());
        assert!(line.contains("--xdp-map-size"), "{line}");
    }
}

#[test]
fn tracepoint_settings_are_usage_errors_when_bad() {
    for bad in ["3000", "2048", "4G", "lots"] {
        let args = Args::run()
            .set("--source", "tracepoint")
            .add("--netns", "self")
            .set("--tracepoint-ring", bad);
        let line = usage_error(&args.argv());
        assert!(line.contains("--tracepoint-ring"), "{line}");
    }
    // Only tracepoint and xdp combine.
    let line = usage_error(&Args::run().set("--source", "tracepoint,pcap").argv());
    assert!(line.contains("'tracepoint,pcap' for '--source"), "{line}");
}

#[test]
fn bad_block_limit_is_a_one_line_usage_error_naming_flag_or_key() {
    for bad in ["0", "-1", "lots", "1.5"] {
        let line = usage_error(&Args::run().set("--max-blocks-per-minute", bad).argv());
        assert!(line.contains("--max-blocks-per-minute"), "{line}");
        assert!(line.contains("or 'off'"), "{line}");
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"max-blocks-per-minute = 0\n").unwrap();
    let path = file.path().to_str().unwrap();
    let line = usage_error(&run_with_config(path));
    assert!(line.contains(path), "{line}");
    assert!(line.contains("max-blocks-per-minute: "), "{line}");
}
