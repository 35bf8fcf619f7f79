//! End-to-end tests of the core agent on real Linux: the release binary runs
//! in a network namespace of a [`Lab`], real connections are made between
//! namespaces with `tests/peer.py`, and every case checks the exact text of
//! every line the agent prints (SPEC §3).
//!
//! Needs root (skips otherwise; fails under `CI=true`). Run with
//! `cargo test --release --test e2e_core -- --test-threads=2`.

mod common;

use common::*;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long an event may take to appear: one 1 s poll plus a wide margin.
const EVENT: Duration = Duration::from_secs(5);

/// The hosts of each lab: the agent always runs on A.
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn lab() -> Option<Lab> {
    Lab::new(3)
}

/// Waits for each event in turn, then two more polls, stops the agent and
/// checks that it printed exactly these events and exited 0. Returns the
/// events in printed order.
fn expect_exactly(agent: Agent, expected: &[String]) -> Vec<String> {
    for event in expected {
        agent.expect_event(event, EVENT);
    }
    std::thread::sleep(SETTLE);
    assert_exact_events(&agent.stop(), expected)
}

#[test]
fn inbound_v4_prints_client_to_server() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[80]);
    let agent = Agent::start(&lab, A, CORE_ARGS);

    let client = lab.connect(B, lab.v4(A).into(), &[80], None);
    assert_eq!(client.locals[0].ip(), IpAddr::from(lab.v4(B)));

    expect_exactly(
        agent,
        &[new_connection(client.locals[0], at(lab.v4(A), 80))],
    );
}

#[test]
fn outbound_v4_prints_local_to_remote() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(B, Listen::V4, &[9000]);
    let agent = Agent::start(&lab, A, CORE_ARGS);

    let client = lab.connect(A, lab.v4(B).into(), &[9000], None);
    assert_eq!(client.locals[0].ip(), IpAddr::from(lab.v4(A)));

    expect_exactly(
        agent,
        &[new_connection(client.locals[0], at(lab.v4(B), 9000))],
    );
}

#[test]
fn inbound_v6_prints_bracketed_endpoints() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V6Only, &[80]);
    let agent = Agent::start(&lab, A, CORE_ARGS);

    let client = lab.connect(B, lab.v6(A).into(), &[80], None);
    assert_eq!(client.locals[0].ip(), IpAddr::from(lab.v6(B)));
    let expected = new_connection(client.locals[0], at(lab.v6(A), 80));
    // Spelled out once, so a formatting slip in the helper cannot hide one
    // in the agent: `[fd00:…::2]:PORT -> [fd00:…::1]:80`.
    assert!(expected.starts_with(&format!("New connection: [{}]:", lab.v6(B))));
    assert!(expected.ends_with(&format!(" -> [{}]:80", lab.v6(A))));

    expect_exactly(agent, &[expected]);
}

#[test]
fn dual_stack_listener_prints_v4_clients_as_plain_v4() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::Dual, &[8080]);
    let agent = Agent::start(&lab, A, CORE_ARGS);

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
    let agent = Agent::start(&lab, A, CORE_ARGS);

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
    let agent = Agent::start(&lab, A, CORE_ARGS);

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
fn four_ports_from_one_host_is_one_scan_three_is_none() {
    let Some(lab) = lab() else { return };
    let ports = [80, 81, 82, 83];
    let _server = lab.serve(A, Listen::V4, &ports);
    let agent = Agent::start(&lab, A, CORE_ARGS);

    // Ports in a scrambled order: the scan line lists them ascending.
    let three = lab.connect(B, lab.v4(A).into(), &[82, 80, 81], None);
    let four = lab.connect(C, lab.v4(A).into(), &[83, 81, 80, 82], None);

    let conn_lines = |client: &Client, ports: &[u16]| -> Vec<String> {
        let dst = |p: u16| at(lab.v4(A), p);
        let pairs = client.locals.iter().zip(ports);
        pairs.map(|(l, p)| new_connection(*l, dst(*p))).collect()
    };
    let from_b = conn_lines(&three, &[82, 80, 81]);
    let from_c = conn_lines(&four, &[83, 81, 80, 82]);
    let scan = port_scan(lab.v4(C).into(), lab.v4(A).into(), &ports);
    assert!(scan.ends_with("on ports 80,81,82,83"), "{scan}");

    let mut expected = from_b.clone();
    expected.extend(from_c.iter().cloned());
    expected.push(scan.clone());
    let printed = expect_exactly(agent, &expected);

    // The scan is the consequence of C's fourth connection: it follows them.
    let scan_at = printed.iter().position(|e| *e == scan).unwrap();
    for line in &from_c {
        let conn_at = printed.iter().position(|e| e == line).unwrap();
        assert!(
            conn_at < scan_at,
            "scan printed before '{line}': {printed:#?}"
        );
    }
}

#[test]
fn outbound_connections_to_four_ports_are_not_a_scan() {
    let Some(lab) = lab() else { return };
    let ports = [80, 81, 82, 83];
    let _server = lab.serve(B, Listen::V4, &ports);
    let agent = Agent::start(&lab, A, CORE_ARGS);

    let client = lab.connect(A, lab.v4(B).into(), &ports, None);
    let expected: Vec<String> = client
        .locals
        .iter()
        .zip(ports)
        .map(|(local, port)| new_connection(*local, at(lab.v4(B), port)))
        .collect();
    expect_exactly(agent, &expected);
}

#[test]
fn connection_open_before_start_is_not_reported() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[80]);
    let _before = lab.connect(B, lab.v4(A).into(), &[80], None);
    let agent = Agent::start(&lab, A, CORE_ARGS);

    // A connection made while the agent runs proves it was watching.
    let after = lab.connect(C, lab.v4(A).into(), &[80], None);
    expect_exactly(agent, &[new_connection(after.locals[0], at(lab.v4(A), 80))]);
}

#[test]
fn report_existing_reports_connection_open_before_start() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[80]);
    let before = lab.connect(B, lab.v4(A).into(), &[80], None);
    let mut args = CORE_ARGS.to_vec();
    args.push("--report-existing");
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

/// `--format json`: every line is one JSON object with the SPEC's fields,
/// read back with a real JSON parser.
#[test]
fn json_format_carries_every_field() {
    let Some(lab) = lab() else { return };
    let ports = [80, 81, 82, 83];
    let _server = lab.serve(A, Listen::V4, &ports);
    let _remote = lab.serve(C, Listen::V4, &[9000]);
    let mut args = CORE_ARGS.to_vec();
    args.extend(["--format", "json"]);
    let agent = Agent::start(&lab, A, &args);

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
        "dst": lab.v4(A).to_string(), "ports": ports}),
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
