//! What only `--source xdp` is asked: the attachment's life cycle (checked
//! with `ip -d link show` in A's namespace), a leftover attachment, an
//! unknown interface, a reused 4-tuple. Scans and connections, as every
//! source, are in `sources.rs`.
//!
//! The agent needs no bpffs: it pins nothing, and its attachments are BPF
//! links held by the process, so `ip netns exec`'s private /sys is no issue.

use crate::agent::*;
use crate::lab::*;
use crate::prereq::require_xdp_program;
use std::time::Duration;

/// A real-time event is printed within this (the target is far below; the
/// margin is for a loaded 2-core CI machine).
const EVENT: Duration = Duration::from_secs(3);
/// Quiet time after the last expected line, proving nothing else comes.
const QUIET: Duration = Duration::from_millis(1000);

/// A two-host lab, when this machine can run the XDP cases.
fn lab() -> Option<Lab> {
    if !require_xdp_program() {
        return None;
    }
    Lab::new(2)
}

fn start(lab: &Lab) -> Agent {
    Agent::watching(lab, Source::Xdp)
}

/// Stops the agent: exit 0, and nothing left on A's `eth0`.
fn assert_clean_stop(lab: &Lab, agent: Agent) {
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(lab.xdp_lines(A).is_empty(), "{:?}", lab.xdp_lines(A));
}

/// SIGTERM detaches; `kill -9` leaves nothing that stops a restart; the
/// restarted agent leaves exactly one program and still reports.
#[test]
fn attachment_life_cycle() {
    let Some(lab) = lab() else { return };
    assert!(lab.xdp_lines(A).is_empty(), "{:?}", lab.xdp_lines(A));

    let agent = start(&lab);
    let attached = lab.xdp_programs(A);
    assert!(
        attached.iter().any(|l| l.contains("name tcpwatch")),
        "{attached:?}"
    );
    assert_clean_stop(&lab, agent);

    let agent = start(&lab);
    agent.signal("KILL");
    // Dropping the handle reaps the killed process.
    drop(agent);

    let _server = lab.serve(A, Listen::V4, &[80]);
    let agent = start(&lab);
    let programs = lab.xdp_programs(A);
    assert_eq!(programs.len(), 1, "{programs:?}");
    assert!(programs[0].contains("name tcpwatch"), "{programs:?}");
    let client = lab.connect(B, lab.v4(A).into(), &[80], None);
    agent.expect_event(&new_connection(client.locals[0], at(lab.v4(A), 80)), EVENT);
    assert_clean_stop(&lab, agent);
}

/// A tcpwatch program attached the legacy (netlink) way survives its
/// process; the next start finds it by name and replaces it.
#[test]
fn leftover_netlink_attachment_is_replaced() {
    let Some(lab) = lab() else { return };
    let object = concat!(env!("OUT_DIR"), "/tcpwatch.bpf.o");
    lab.output(
        A,
        "ip",
        &[
            "link",
            "set",
            "dev",
            "eth0",
            "xdpgeneric",
            "obj",
            object,
            "sec",
            "xdp",
        ],
    );
    let before = lab.xdp_lines(A);
    assert!(
        before.iter().any(|l| l.contains("name tcpwatch")),
        "{before:?}"
    );

    let agent = start(&lab);
    assert!(
        agent
            .stderr()
            .contains("removed the program a previous tcpwatch left on eth0"),
        "{}",
        agent.stderr()
    );
    let programs = lab.xdp_programs(A);
    assert_eq!(programs.len(), 1, "{programs:?}");
    assert_clean_stop(&lab, agent);
}

/// A missing interface is a one-line error and exit 1, nothing attached.
#[test]
fn unknown_interface_is_a_one_line_error() {
    let Some(lab) = lab() else { return };
    let args = Args::watching(Source::Xdp).interface("nosuch0");
    let finished = Agent::spawn(&lab, A, &args).exit_within(Duration::from_secs(10));
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert_eq!(
        finished.stderr.trim(),
        "tcpwatch: error: no such interface 'nosuch0'"
    );
    assert!(finished.stdout.is_empty());
}

/// A server that closes first leaves its end in TIME-WAIT and none on the
/// client, so the client may reuse the same 4-tuple at once: a new
/// connection, with a new ISN, that must be printed again.
#[test]
fn reused_four_tuple_is_a_new_connection() {
    let Some(lab) = lab() else { return };
    let server = "import socket\n\
                  s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('0.0.0.0', 7000)); s.listen(8); print('ready', flush=True)\n\
                  while True: s.accept()[0].close()\n";
    let server = lab.spawn(A, "python3", &["-c", server]);
    assert!(server.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_some());
    let agent = start(&lab);
    let client = "import socket, sys, time\n\
                  for _ in range(2):\n\
                  \x20   s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  \x20   s.bind(('0.0.0.0', 45000)); s.connect((sys.argv[1], 7000))\n\
                  \x20   s.recv(1); s.close(); time.sleep(0.3)\n";
    let done = lab
        .spawn(B, "python3", &["-c", client, &lab.v4(A).to_string()])
        .finish(Duration::from_secs(20));
    assert!(done.status.success(), "client: {}", done.stderr);
    let line = new_connection(at(lab.v4(B), 45000), at(lab.v4(A), 7000));
    agent.expect_event(&line, EVENT);
    std::thread::sleep(QUIET);
    assert_exact_events(&agent.stop(), &[line.clone(), line]);
}
