//! Bounded memory under attack: the agent captures (`--source pcap`) on host
//! A while host B floods it for 30 s with SYNs from random spoofed sources to
//! every port (`hping3 --flood -S --rand-source -p ++1`), the worst case for
//! the detector's tables: every packet is a new attempt and a new (remote,
//! local) pair. The agent's peak RSS must stay under 64 MiB, its tables must
//! have evicted (and counted it), and it must still report a real connection
//! afterwards.
//!
//! The flood never leaves the lab: A and B are namespaces on a bridge in a
//! namespace of its own. It runs alone: no other test shares the CPU with
//! it. Figures are printed; see them with `--nocapture`.

use crate::agent::*;
use crate::inspect::sample;
use crate::lab::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FLOOD_SECONDS: &str = "30";
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const METRICS: &str = "127.0.0.1:9472";

/// The agent's stdout, counted rather than kept (a flood prints millions of
/// lines), except the lines of `keep`.
#[derive(Default)]
struct Tally {
    lines: u64,
    kept: Vec<String>,
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = crate::inspect::proc_status(pid);
    let field = |name: &str| -> u64 {
        status
            .get(name)
            .and_then(|value| value.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status:?}"))
    };
    (field("VmHWM"), field("VmRSS"))
}

fn metric(text: &str, series: &str) -> u64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}")) as u64
}

#[test]
fn spoofed_syn_flood_keeps_rss_bounded_and_the_agent_responsive() {
    let Some(lab) = Lab::alone(&["hping3", "curl"], 2) else {
        return;
    };
    let _server = lab.serve(A, Listen::V4, &[8080]);
    let (a, b) = (lab.v4(A), lab.v4(B));

    let args = Args::watching(Source::Pcap).metrics(METRICS).argv();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = lab
        .command(A, AGENT, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = agent.id();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let keep = format!("New connection: {b}:");
    let stdout = agent.stdout.take().unwrap();
    let reader = {
        let tally = Arc::clone(&tally);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut t = tally.lock().unwrap();
                t.lines += 1;
                if line.contains(&keep) {
                    t.kept.push(line);
                }
            }
        })
    };
    let stderr = agent.stderr.take().unwrap();
    let said = Arc::new(Mutex::new(String::new()));
    {
        let said = Arc::clone(&said);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                said.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    let started = Instant::now();
    while !said.lock().unwrap().contains(READY) {
        assert!(
            started.elapsed() < START_TIMEOUT && agent.try_wait().unwrap().is_none(),
            "agent not ready: {}",
            said.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, rss_before) = memory(pid);

    // SIGINT makes hping3 print its statistics.
    let flood = lab.run(
        B,
        "timeout",
        &[
            "-s",
            "INT",
            FLOOD_SECONDS,
            "hping3",
            "--flood",
            "-S",
            "--rand-source",
            "-p",
            "++1",
            &a.to_string(),
        ],
    );
    let report = String::from_utf8_lossy(&flood.stdout).into_owned()
        + &String::from_utf8_lossy(&flood.stderr);
    let sent: u64 = report
        .lines()
        .find_map(|l| l.split_once(" packets transmitted").map(|(n, _)| n.trim()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no hping3 statistics: {report}"));
    assert!(
        sent >= 100_000,
        "the flood was too weak to prove anything: {report}"
    );
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent died during the flood: {}",
        said.lock().unwrap()
    );
    let (peak, rss) = memory(pid);

    // Still alive and working: a real connection is reported.
    let client = lab.connect(B, a.into(), &[8080], None);
    let expected = new_connection(client.locals[0], at(a, 8080));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = tally
            .lock()
            .unwrap()
            .kept
            .iter()
            .any(|l| event_text(l) == Some(expected.as_str()));
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the real connection was not reported after the flood; kept: {:?}; stderr: {}",
            tally.lock().unwrap().kept,
            said.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (code, text) = lab.http_get(A, &format!("http://{METRICS}/metrics"));
    assert_eq!(code, 200, "metrics scrape failed");
    let evicted_pairs = metric(&text, "tcpwatch_evictions_total{table=\"scan_sources\"}");
    let evicted_attempts = metric(&text, "tcpwatch_evictions_total{table=\"attempts\"}");
    let lost = metric(&text, "tcpwatch_events_lost_total{source=\"pcap\"}");
    let tracked = metric(&text, "tcpwatch_tracked_sources");
    let lines = tally.lock().unwrap().lines;

    println!(
        "flood: {sent} SYNs sent in {FLOOD_SECONDS} s; agent printed {lines} lines, \
         lost {lost}; RSS {rss_before} KiB before, {rss} KiB after, peak (VmHWM) {peak} KiB; \
         evicted {evicted_pairs} scan pairs, {evicted_attempts} attempts; tracking {tracked} pairs"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB is over {RSS_LIMIT_KIB} KiB"
    );
    assert!(
        lines > 65_536,
        "the agent saw too little of the flood: {lines} lines"
    );
    assert!(evicted_pairs > 0 && evicted_attempts > 0, "{text}");
    assert!(tracked <= 65_536, "{tracked}");

    let _ = Command::new("kill").arg(pid.to_string()).status();
    let status = agent.wait().unwrap();
    let _ = reader.join();
    assert_eq!(status.code(), Some(0), "{}", said.lock().unwrap());
}
