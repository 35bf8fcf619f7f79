//! The core agent (procfs polled every second, nothing else): real
//! connections between lab hosts, and the exact text of every line the
//! agent prints. Scans, and what every source must print, are the table in
//! `sources.rs`.

use crate::agent::*;
use crate::lab::*;
use std::time::Duration;

/// How long an event may take to appear: one 1 s poll plus a wide margin.
const EVENT: Duration = Duration::from_secs(5);

fn lab() -> Option<Lab> {
    Lab::new(3)
}

/// The agent on A with the quiet defaults.
fn start(lab: &Lab) -> Agent {
    Agent::start(lab, A, &Args::run())
}

/// Waits for each event in turn, then two more polls, stops the agent and
/// checks that it printed exactly these events and exited 0.
fn expect_exactly(agent: Agent, expected: &[String]) {
    agent.expect_exactly(expected, EVENT, SETTLE);
}

/// `from` connects to port `port` of `to` (a `mode` listener), by IPv6 when
/// `v6`, while the agent runs on A: it prints exactly that connection,
/// `from`'s end first. Returns the lab and the line.
fn one_connection(
    mode: Listen,
    from: usize,
    to: usize,
    v6: bool,
    port: u16,
) -> Option<(Lab, String)> {
    let lab = lab()?;
    let _server = lab.serve(to, mode, &[port]);
    let agent = start(&lab);

    let client = lab.connect(from, lab.addr(to, v6), &[port], None);
    assert_eq!(client.locals[0].ip(), lab.addr(from, v6));
    let line = new_connection(client.locals[0], at(lab.addr(to, v6), port));
    expect_exactly(agent, std::slice::from_ref(&line));
    Some((lab, line))
}

#[test]
fn inbound_v4_prints_client_to_server() {
    one_connection(Listen::V4, B, A, false, 80);
}

#[test]
fn outbound_v4_prints_local_to_remote() {
    one_connection(Listen::V4, A, B, false, 9000);
}

#[test]
fn inbound_v6_prints_bracketed_endpoints() {
    let Some((lab, line)) = one_connection(Listen::V6Only, B, A, true, 80) else {
        return;
    };
    // Spelled out once, so a formatting slip in the helper cannot hide one
    // in the agent: `[fd00:…::2]:PORT -> [fd00:…::1]:80`.
    assert!(line.starts_with(&format!("New connection: [{}]:", lab.v6(B))));
    assert!(line.ends_with(&format!(" -> [{}]:80", lab.v6(A))));
}

#[test]
fn dual_stack_listener_prints_v4_clients_as_plain_v4() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::Dual, &[8080]);
    let agent = start(&lab);

    let v4_client = lab.connect(B, lab.v4(A).into(), &[8080], None);
    let v6_client = lab.connect(C, lab.v6(A).into(), &[8080], None);

    let v4_line = new_connection(v4_client.locals[0], at(lab.v4(A), 8080));
    assert!(!v4_line.contains("::ffff:"), "{v4_line}");
    expect_exactly(
        agent,
        &[
            v4_line,
            new_connection(v6_client.locals[0], at(lab.v6(A), 8080)),
        ],
    );
}

#[test]
fn connection_held_across_many_polls_prints_once() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[80]);
    let agent = start(&lab);

    // Open for 5 polls, then closed by the client: the server's end goes
    // through CLOSE-WAIT, which must not make it new either.
    let client = lab.connect(B, lab.v4(A).into(), &[80], Some(Duration::from_secs(5)));
    let expected = new_connection(client.locals[0], at(lab.v4(A), 80));
    agent.expect_event(&expected, EVENT);
    let ended = client.proc.finish(Duration::from_secs(10));
    assert!(ended.status.success(), "client failed: {}", ended.stderr);

    expect_exactly(agent, &[expected]);
}

#[test]
fn listening_sockets_never_print() {
    let Some(lab) = lab() else { return };
    let agent = start(&lab);

    let _v4 = lab.serve(A, Listen::V4, &[80, 81]);
    let _dual = lab.serve(A, Listen::Dual, &[8080]);
    let _v6 = lab.serve(A, Listen::V6Only, &[8443]);
    std::thread::sleep(SETTLE);
    assert_eq!(
        agent.stdout_lines(),
        Vec::<String>::new(),
        "listeners printed"
    );

    // The agent was polling all along: a real connection does print.
    let client = lab.connect(B, lab.v4(A).into(), &[80], None);
    expect_exactly(
        agent,
        &[new_connection(client.locals[0], at(lab.v4(A), 80))],
    );
}

#[test]
fn connection_open_before_start_is_not_reported() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[80]);
    let _before = lab.connect(B, lab.v4(A).into(), &[80], None);
    let agent = start(&lab);

    // A connection made while the agent runs proves it was watching.
    let after = lab.connect(C, lab.v4(A).into(), &[80], None);
    expect_exactly(agent, &[new_connection(after.locals[0], at(lab.v4(A), 80))]);
}

#[test]
fn report_existing_reports_connection_open_before_start() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[80]);
    let before = lab.connect(B, lab.v4(A).into(), &[80], None);
    let args = Args::run().switch("--report-existing");
    let agent = Agent::start(&lab, A, &args);

    let after = lab.connect(C, lab.v4(A).into(), &[80], None);
    expect_exactly(
        agent,
        &[
            new_connection(before.locals[0], at(lab.v4(A), 80)),
            new_connection(after.locals[0], at(lab.v4(A), 80)),
        ],
    );
}

/// `--format json`: every line is one JSON object with the documented
/// fields, read back with a real JSON parser.
#[test]
fn json_format_carries_every_field() {
    let Some(lab) = lab() else { return };
    let ports = [80, 81, 82, 83];
    let _server = lab.serve(A, Listen::V4, &ports);
    let _remote = lab.serve(C, Listen::V4, &[9000]);
    let agent = Agent::start(&lab, A, &Args::run().format("json"));

    let scanner = lab.connect(B, lab.v4(A).into(), &ports, None);
    let outbound = lab.connect(A, lab.v4(C).into(), &[9000], None);
    let is_scan = |l: &str| l.contains("\"port_scan\"");
    assert!(
        agent.wait_for(is_scan, EVENT).is_some(),
        "{:?}",
        agent.stdout_lines()
    );
    let out_src = outbound.locals[0].to_string();
    assert!(agent.wait_for(|l| l.contains(&out_src), EVENT).is_some());
    std::thread::sleep(SETTLE);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);

    let events: Vec<serde_json::Value> = finished
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(events.len(), 6, "{:#?}", finished.stdout);
    for event in &events {
        let time = event["time"].as_str().expect("time");
        chrono::DateTime::parse_from_rfc3339(time).unwrap_or_else(|e| panic!("{time}: {e}"));
    }
    let connection = |src: String, dst: String, direction: &str| {
        serde_json::json!({"event": "new_connection", "src": src, "dst": dst,
            "direction": direction, "source": "procfs"})
    };
    let mut want: Vec<serde_json::Value> = scanner
        .locals
        .iter()
        .zip(ports)
        .map(|(l, p)| connection(l.to_string(), at(lab.v4(A), p).to_string(), "inbound"))
        .collect();
    want.push(connection(
        out_src,
        at(lab.v4(C), 9000).to_string(),
        "outbound",
    ));
    want.push(
        serde_json::json!({"event": "port_scan", "src": lab.v4(B).to_string(),
        "dst": lab.v4(A).to_string(), "ports": ports, "kind": "syn", "rule": "3/60s"}),
    );
    let without_time: Vec<serde_json::Value> = events
        .into_iter()
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("time");
            e
        })
        .collect();
    for w in &want {
        assert!(without_time.contains(w), "missing {w} in {without_time:#?}");
    }
}

/// A slow scan: B connects to five ports of A, one every 10 s, against a
/// main rule of more than 3 ports within 20 s (`--scan-window 20s`: never
/// more than three ports within it, so the default minute is scaled down to
/// keep the test short). Two agents watch A at once: with `--scan-rule 4/1m`
/// one scan line at the fifth port, naming all five; with the main rule
/// alone, none. Takes about 45 s.
#[test]
fn a_slow_scan_is_one_line_with_a_slow_rule_and_none_without() {
    let Some(lab) = lab() else { return };
    const PORTS: [u16; 5] = [8201, 8202, 8203, 8204, 8205];
    // Four ports span 30 s, 10 s beyond the main window (polls are 1 s
    // apart); five span 40 s, 20 s inside the slow rule's.
    const GAP: Duration = Duration::from_secs(10);
    let _server = lab.serve(A, Listen::V4, &PORTS);
    let main_rule = || Args::run().set("--scan-window", "20s");
    let slow = Agent::start(&lab, A, &main_rule().set("--scan-rule", "4/1m"));
    let plain = Agent::start(&lab, A, &main_rule());
    let (scanner, host): (std::net::IpAddr, std::net::IpAddr) =
        (lab.v4(B).into(), lab.v4(A).into());
    let mut held = Vec::new();
    let mut connections = Vec::new();
    for (n, port) in PORTS.into_iter().enumerate() {
        if n > 0 {
            std::thread::sleep(GAP);
        }
        let client = lab.connect(B, host, &[port], None);
        let line = new_connection(client.locals[0], at(host, port));
        slow.expect_event(&line, EVENT);
        plain.expect_event(&line, EVENT);
        connections.push(line);
        held.push(client);
    }
    let scan = port_scan(scanner, host, &PORTS);
    slow.expect_event(&scan, EVENT);
    std::thread::sleep(SETTLE);
    let mut with_rule = connections.clone();
    with_rule.push(scan);
    assert_exact_events(&slow.stop(), &with_rule);
    assert_exact_events(&plain.stop(), &connections);
}
