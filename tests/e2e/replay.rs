//! `tcpwatch replay` against real traffic: a capture of a real `nmap -sS`
//! scan recorded with tcpdump in the target's namespace, and
//! /proc/net/tcp{,6} snapshots of a lab host compared with what the live
//! agent printed for the same connections.

use crate::agent::*;
use crate::lab::*;
use regex::Regex;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A two-host lab, when root and the tools the tests drive are present.
fn lab() -> Option<Lab> {
    Lab::needing(&["nmap", "tcpdump"], 2)
}

/// `tcpwatch replay ARGS...`: exit 0 and stdout, or a panic with stderr.
fn replay(args: &[&str]) -> String {
    let out = Command::new(AGENT)
        .arg("replay")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "replay {args:?}: {stderr}");
    assert!(stderr.is_empty(), "replay {args:?} had to say: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn events(stdout: &str) -> Vec<String> {
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    event_texts(&lines)
}

/// Records host A's eth0 while B runs `nmap -sS` on A's ports 20-30.
fn record_syn_scan(lab: &Lab, pcap: &Path) {
    let file = pcap.to_str().unwrap();
    // Immediate mode: without it packets wait in the kernel's ring for up to
    // a second, and a SIGINT before then loses them. -U: each packet is
    // written to the file at once.
    let tcpdump = lab.spawn(
        A,
        "tcpdump",
        &["-i", "eth0", "-n", "--immediate-mode", "-U", "-w", file],
    );
    assert!(
        tcpdump.wait_for_stderr("listening on", HELPER_TIMEOUT),
        "tcpdump did not start: {}",
        tcpdump.stderr()
    );
    let target = lab.v4(A).to_string();
    lab.output(
        B,
        "nmap",
        &["-n", "-Pn", "-T4", "-sS", "-p", "20-30", &target],
    );
    std::thread::sleep(Duration::from_millis(300));
    tcpdump.signal("INT");
    let done = tcpdump.finish(Duration::from_secs(5));
    assert!(done.stderr.contains("packets captured"), "{}", done.stderr);
}

#[test]
fn replay_of_a_recorded_syn_scan_prints_one_scan_line() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[22, 25]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("scan.pcap");
    record_syn_scan(&lab, &pcap);
    let file = pcap.to_str().unwrap();

    let stdout = replay(&[file]);
    let events = events(&stdout);
    let (a, b) = (lab.v4(A), lab.v4(B));
    let scan = Regex::new(&format!(
        r"^Port scan detected: {} -> {} on ports (\d+(?:,\d+)*)$",
        regex::escape(&b.to_string()),
        regex::escape(&a.to_string())
    ))
    .unwrap();
    let scans: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].starts_with("Port scan"))
        .collect();
    if scans.len() != 1 {
        let dump = Command::new("tcpdump")
            .args(["-n", "-r", file])
            .output()
            .unwrap();
        panic!(
            "not exactly one scan line: {events:#?}\ncapture:\n{}",
            String::from_utf8_lossy(&dump.stdout)
        );
    }
    let at = scans[0];
    let ports: Vec<u16> = scan
        .captures(&events[at])
        .unwrap_or_else(|| panic!("not B -> A: {}", events[at]))[1]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();

    // Every other line is a SYN of B to one of A's scanned ports.
    let attempt = Regex::new(&format!(
        r"^New connection: {}:\d+ -> {}:(\d+)$",
        regex::escape(&b.to_string()),
        regex::escape(&a.to_string())
    ))
    .unwrap();
    let port_of = |e: &String| -> u16 {
        attempt
            .captures(e)
            .unwrap_or_else(|| panic!("unexpected line: {e}"))[1]
            .parse()
            .unwrap()
    };
    let mut scanned: Vec<u16> = events
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != at)
        .map(|(_, e)| port_of(e))
        .collect();
    // The scan line lists the distinct ports seen up to it (all within the
    // window: nmap -T4 takes well under a second), ascending, and comes
    // right after the 4th distinct port.
    let mut before: Vec<u16> = events[..at].iter().map(port_of).collect();
    before.sort();
    before.dedup();
    assert_eq!(ports, before, "{events:#?}");
    assert_eq!(ports.len(), 4, "{events:#?}");
    scanned.sort();
    scanned.dedup();
    assert_eq!(scanned, (20..=30).collect::<Vec<u16>>(), "{events:#?}");

    // Same bytes every time, in both formats.
    assert_eq!(replay(&[file]), stdout);
    let json = replay(&[file, "--format", "json"]);
    assert_eq!(replay(&[file, "--format", "json"]), json);
    let scan_json: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "port_scan")
        .collect();
    assert_eq!(scan_json.len(), 1);
    assert_eq!(scan_json[0]["ports"], serde_json::json!(ports));
    assert_eq!(scan_json[0]["src"], b.to_string());
}

/// Saves host A's /proc/net/tcp and tcp6 as `<dir>/<name>.tcp` and `.tcp6`.
fn snapshot(lab: &Lab, dir: &Path, name: &str) -> Vec<PathBuf> {
    ["tcp", "tcp6"]
        .iter()
        .map(|table| {
            let text = lab.output(A, "cat", &[&format!("/proc/net/{table}")]);
            let path = dir.join(format!("{name}.{table}"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn replay_of_snapshots_reproduces_the_live_agents_lines() {
    let Some(lab) = lab() else { return };
    let dir = tempfile::tempdir().unwrap();
    let _servers = lab.serve(A, Listen::Dual, &[8080, 8081, 8082, 8083]);
    let _remote = lab.serve(B, Listen::V4, &[7000]);
    let agent = Agent::start(&lab, A, &Args::run());
    let mut files = snapshot(&lab, dir.path(), "s0");
    let (a4, b4): (IpAddr, IpAddr) = (lab.v4(A).into(), lab.v4(B).into());
    let a6: IpAddr = lab.v6(A).into();

    // Inbound IPv4 (through the dual-stack listener, so in tcp6 as
    // ::ffff:a.b.c.d), outbound IPv4, inbound IPv6, then the three ports
    // that make B's IPv4 address a scanner of A's.
    let mut clients = Vec::new();
    let steps: [(usize, IpAddr, &[u16]); 4] = [
        (B, a4, &[8080]),
        (A, b4, &[7000]),
        (B, a6, &[8080]),
        (B, a4, &[8081, 8082, 8083]),
    ];
    let mut expected = Vec::new();
    for (n, (from, to, ports)) in steps.into_iter().enumerate() {
        let client = lab.connect(from, to, ports, None);
        for (local, port) in client.locals.iter().zip(ports) {
            let event = new_connection(*local, at(to, *port));
            agent.expect_event(&event, Duration::from_secs(5));
            expected.push(event);
        }
        clients.push(client);
        files.extend(snapshot(&lab, dir.path(), &format!("s{}", n + 1)));
    }
    let scan = port_scan(b4, a4, &[8080, 8081, 8082, 8083]);
    agent.expect_event(&scan, Duration::from_secs(5));
    expected.push(scan);
    std::thread::sleep(SETTLE);
    let live = assert_exact_events(&agent.stop(), &expected);

    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let mut replayed = events(&replay(&args));
    let mut live_sorted = live.clone();
    replayed.sort();
    live_sorted.sort();
    assert_eq!(replayed, live_sorted, "replay differs from the live agent");
    drop(clients);
}
