//! `tcpwatch replay` through the real binary: exit codes, one-line errors,
//! the real kernel format, determinism. No root needed; captures of real
//! scans are replayed in the e2e binary (`replay.rs` there).

use crate::{one_line_error, tcpwatch, text};
use std::process::Output;

/// `tcpwatch replay ARGS...`.
fn replay(args: &[&str]) -> Output {
    tcpwatch(&[&["replay"], args].concat())
}

/// `tcpwatch replay ARGS...` must be an input error: exit 2, nothing on
/// stdout, exactly one line on stderr; returns it.
fn input_error(args: &[&str]) -> String {
    one_line_error(&[&["replay"], args].concat())
}

const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
/// 127.0.0.1:80 listening, then 127.0.0.1:80 <- 127.0.0.1:40000 established.
const ROWS: &str = "   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1\n";

#[test]
fn a_file_of_neither_format_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "sl is not enough\n").unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(
        input_error(&[p]),
        format!("tcpwatch: error: {p}: not a pcap file or a /proc/net/tcp snapshot")
    );
}

#[test]
fn a_bad_snapshot_line_names_file_and_line() {
    if u32::from_ne_bytes([1, 0, 0, 0]) != 1 {
        return; // the fixture's addresses are written as on little-endian hosts
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tcp");
    std::fs::write(&good, format!("{HEADER}{ROWS}")).unwrap();
    let bad = dir.path().join("bad.tcp");
    std::fs::write(
        &bad,
        format!("{HEADER}{ROWS}   2: 0100007F:0050 0100007F:9C41 99\n"),
    )
    .unwrap();
    let (g, b) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let line = input_error(&[g, b]);
    assert!(
        line.starts_with(&format!("tcpwatch: error: {b}:4: ")),
        "{line}"
    );

    let out = replay(&[g]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let events: Vec<&str> = stdout.lines().map(|l| &l[21..]).collect();
    assert_eq!(events, ["New connection: 127.0.0.1:40000 -> 127.0.0.1:80"]);
}

#[test]
fn a_missing_file_is_one_line_and_no_file_is_a_usage_error() {
    let line = input_error(&["/nonexistent/tcp"]);
    assert_eq!(
        line,
        "tcpwatch: error: /nonexistent/tcp: No such file or directory"
    );
    let out = replay(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_hosts_own_tables_replay_deterministically() {
    // The live kernel format, whatever this host has open; saved first so
    // both runs read the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for table in ["tcp", "tcp6"] {
        let from = format!("/proc/net/{table}");
        let Ok(bytes) = std::fs::read(&from) else {
            continue;
        };
        let to = dir.path().join(table);
        std::fs::write(&to, bytes).unwrap();
        args.push(to.to_str().unwrap().to_string());
    }
    assert!(!args.is_empty(), "no /proc/net/tcp on this machine");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = replay(&args);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(first.stderr.is_empty(), "{}", text(&first.stderr));
    let stamp = regex::Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d: New connection: ").unwrap();
    for line in text(&first.stdout).lines() {
        assert!(stamp.is_match(line), "{line}");
    }
    let mut json = args.clone();
    json.extend(["--format", "json"]);
    let second = replay(&args);
    assert_eq!(first.stdout, second.stdout);
    let as_json = replay(&json);
    assert_eq!(
        text(&as_json.stdout).lines().count(),
        text(&first.stdout).lines().count()
    );
}
