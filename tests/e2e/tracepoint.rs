//! The `tracepoint` source on the running kernel: it sees every network
//! namespace of the machine, so the agent here mostly runs in one lab host
//! and watches others (`--netns`, which also keeps other tests' traffic
//! out of its lines).
//!
//! - connections between two other namespaces and on loopback, IPv4 and
//!   IPv6: each reported once per namespace it has an end in, with the
//!   right direction, the namespace's inode (`stat -L -c %i
//!   /var/run/netns/NAME`) and the owning process; `--source procfs` in the
//!   agent's namespace sees none of them;
//! - a real Docker container: its connections carry the container id and
//!   the process (`curl`, `python3`), inbound ones the server's process
//!   (a server listening since before the agent started);
//! - a SYN scan of closed ports in another namespace is one scan line with
//!   this source alone; a half-open scan of open ports needs the XDP program
//!   beside it (`--source tracepoint,xdp`);
//! - a scan of a namespace behind the agent's ("a pod behind its node") is a
//!   scan of that namespace's address, blocked in the node's firewall;
//! - a socket connected to itself, an unanswered SYN (reported at its first
//!   retransmission, not when it gives up);
//! - a connection storm across namespaces: every connection a line or a
//!   counted loss, with the ring buffer keeping up and with it overflowing.
//!
//! Every agent started in a lab host finds no tracefs (`ip netns exec`
//! remounts /sys) and mounts it: that path is checked too.

use crate::agent::*;
use crate::inspect::sample;
use crate::lab::*;
use crate::prereq::{missing_prerequisite, require_root, require_tools};
use crate::proc::Proc;
use regex::Regex;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

/// A real-time line is expected within this (milliseconds, normally; the
/// margin is for a loaded 2-core machine).
const EVENT: Duration = Duration::from_secs(5);
/// Quiet time after the expected lines, proving nothing else follows.
const QUIET: Duration = Duration::from_millis(1000);

/// The lab, when this machine can run the source and `tools`.
fn lab(tools: &[&str], hosts: usize) -> Option<Lab> {
    if !Source::Tracepoint.available() {
        return None;
    }
    Lab::needing(tools, hosts)
}

/// The inode of a named namespace, as `stat -L -c %i` prints it.
fn netns_inode(path: &str) -> u64 {
    let out = Command::new("stat")
        .args(["-L", "-c", "%i", path])
        .output()
        .expect("stat");
    assert!(out.status.success(), "stat {path}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn netns_path(lab: &Lab, index: usize) -> String {
    format!("/var/run/netns/{}", lab.ns(index))
}

/// `run --source tracepoint --format json`, watching the namespaces of
/// `hosts` of the lab.
fn json_args(lab: &Lab, hosts: &[usize]) -> Args {
    let mut args = Args::run().source(Source::Tracepoint).format("json");
    for &host in hosts {
        args = args.netns(netns_path(lab, host));
    }
    args
}

/// A `new_connection` line as the tests compare it: what it names and
/// where, and its owner's process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    src: String,
    dst: String,
    direction: String,
    netns: u64,
    pid: Option<u64>,
    comm: Option<String>,
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn seen(v: &Value) -> Seen {
    assert_eq!(v["event"], "new_connection", "{v}");
    assert_eq!(v["source"], "tracepoint", "{v}");
    Seen {
        src: v["src"].as_str().unwrap().to_string(),
        dst: v["dst"].as_str().unwrap().to_string(),
        direction: v["direction"].as_str().unwrap().to_string(),
        netns: v["netns"].as_u64().expect("netns"),
        pid: v["pid"].as_u64(),
        comm: v["comm"].as_str().map(str::to_string),
    }
}

fn expect(
    src: SocketAddr,
    dst: SocketAddr,
    direction: &str,
    netns: u64,
    owner: Option<(u32, &str)>,
) -> Seen {
    Seen {
        src: src.to_string(),
        dst: dst.to_string(),
        direction: direction.to_string(),
        netns,
        pid: owner.map(|(pid, _)| u64::from(pid)),
        comm: owner.map(|(_, comm)| comm.to_string()),
    }
}

/// Waits for `count` lines, then [`QUIET`] more, stops the agent (exit 0)
/// and returns every line it printed.
fn lines_of(agent: Agent, count: usize) -> Vec<String> {
    let deadline = Instant::now() + EVENT;
    while agent.stdout_lines().len() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(QUIET);
    let finished = agent.stop();
    assert_eq!(
        finished.status.code(),
        Some(0),
        "agent exit; stderr: {}",
        finished.stderr
    );
    finished.stdout
}

#[test]
fn connections_in_two_namespaces_and_on_loopback_are_reported_once_each() {
    let Some(lab) = lab(&[], 3) else { return };
    let (ns_a, ns_b) = (
        netns_inode(&netns_path(&lab, A)),
        netns_inode(&netns_path(&lab, B)),
    );
    assert_ne!(ns_a, ns_b);
    // The agents run in C, a third namespace: the tracepoint source watches
    // A and B; procfs, in C, sees none of their sockets.
    let agent = Agent::start(&lab, C, &json_args(&lab, &[A, B]));
    let procfs = Agent::start(&lab, C, &Args::run());
    assert!(
        agent
            .stderr()
            .contains("mounted tracefs at /sys/kernel/tracing"),
        "{}",
        agent.stderr()
    );

    // B listens dual-stack on 8081 (IPv4 clients arrive as ::ffff:a.b.c.d)
    // and IPv4-only on 8082; A listens dual-stack on 8090 for its own
    // loopback clients.
    let dual = lab.serve(B, Listen::Dual, &[8081]);
    let v4only = lab.serve(B, Listen::V4, &[8082]);
    let local_server = lab.serve(A, Listen::Dual, &[8090]);
    let to_v4 = lab.connect(A, lab.v4(B).into(), &[8081, 8082], None);
    let to_v6 = lab.connect(A, lab.v6(B).into(), &[8081], None);
    let lo4 = lab.connect(A, Ipv4Addr::LOCALHOST.into(), &[8090], None);
    let lo6 = lab.connect(A, Ipv6Addr::LOCALHOST.into(), &[8090], None);
    // A closed port of B: A's refused attempt is A's outbound connection;
    // B answered it with a reset, a probe, which prints nothing.
    let refused = lab.try_connect(A, lab.v4(B).into(), 9);
    assert!(refused.is_err_and(|e| e.contains("refused")));

    let python = "python3";
    let client = |c: &Client| Some((c.proc.pid(), python));
    let server = |p: &Proc| Some((p.pid(), python));
    let to = |ip: IpAddr, port| SocketAddr::new(ip, port);
    let (b4, b6) = (IpAddr::from(lab.v4(B)), IpAddr::from(lab.v6(B)));
    let mut want = vec![
        // A -> B: A's outbound end and B's inbound end, each in its own
        // namespace, with its own process.
        expect(
            to_v4.locals[0],
            to(b4, 8081),
            "outbound",
            ns_a,
            client(&to_v4),
        ),
        expect(
            to_v4.locals[0],
            to(b4, 8081),
            "inbound",
            ns_b,
            server(&dual),
        ),
        expect(
            to_v4.locals[1],
            to(b4, 8082),
            "outbound",
            ns_a,
            client(&to_v4),
        ),
        expect(
            to_v4.locals[1],
            to(b4, 8082),
            "inbound",
            ns_b,
            server(&v4only),
        ),
        expect(
            to_v6.locals[0],
            to(b6, 8081),
            "outbound",
            ns_a,
            client(&to_v6),
        ),
        expect(
            to_v6.locals[0],
            to(b6, 8081),
            "inbound",
            ns_b,
            server(&dual),
        ),
        // Loopback inside A: one connection of A, reported once, by the
        // accepting end.
        expect(
            lo4.locals[0],
            to(Ipv4Addr::LOCALHOST.into(), 8090),
            "inbound",
            ns_a,
            server(&local_server),
        ),
        expect(
            lo6.locals[0],
            to(Ipv6Addr::LOCALHOST.into(), 8090),
            "inbound",
            ns_a,
            server(&local_server),
        ),
    ];
    let printed = lines_of(agent, want.len() + 1);
    let mut got: Vec<Seen> = printed.iter().map(|l| seen(&json(l))).collect();
    // The refused attempt: its client was a short python3 run.
    let refused_at = got
        .iter()
        .position(|s| s.dst == to(b4, 9).to_string())
        .unwrap_or_else(|| panic!("no line for the refused attempt: {printed:#?}"));
    let refused_line = got.remove(refused_at);
    assert_eq!(
        (refused_line.direction.as_str(), refused_line.netns),
        ("outbound", ns_a)
    );
    assert_eq!(refused_line.comm.as_deref(), Some(python));
    got.sort();
    want.sort();
    assert_eq!(got, want, "lines: {printed:#?}");

    let polled = procfs.stop();
    assert_eq!(polled.status.code(), Some(0));
    assert!(
        polled.stdout.is_empty(),
        "procfs in C saw: {:?}",
        polled.stdout
    );
    drop((to_v4, to_v6, lo4, lo6));
}

#[test]
fn a_syn_scan_of_closed_ports_in_another_namespace_is_one_scan_line() {
    let Some(lab) = lab(&["nmap"], 3) else { return };
    for v6 in [false, true] {
        // The agent in C watches A; B scans A, where nothing listens: every
        // probe is answered with a reset.
        let args = Args::run()
            .source(Source::Tracepoint)
            .netns(netns_path(&lab, A));
        let agent = Agent::start(&lab, C, &args);
        let (target, scanner) = (lab.addr(A, v6), lab.addr(B, v6));
        let target_text = target.to_string();
        let mut nmap = vec!["-n", "-Pn", "-T4", "-sS", "-p", "20-30"];
        if v6 {
            nmap.push("-6");
        }
        nmap.push(&target_text);
        let scan = lab.spawn(B, "nmap", &nmap).finish(Duration::from_secs(60));
        assert!(scan.status.success(), "nmap: {}", scan.stderr);
        let scan_line = Regex::new(&format!(
            r"^Port scan detected: {} -> {} on ports (\d+(,\d+){{3}})$",
            regex::escape(&scanner.to_string()),
            regex::escape(&target_text)
        ))
        .unwrap();
        let is_scan = |l: &str| event_text(l).is_some_and(|t| scan_line.is_match(t));
        let found = agent.wait_for(is_scan, EVENT);
        std::thread::sleep(QUIET);
        let finished = agent.stop();
        assert!(
            found.is_some(),
            "no scan line: {:#?}\n{}",
            finished.stdout,
            finished.stderr
        );
        // One line: the scan. The probes of closed ports print nothing.
        assert_eq!(finished.stdout.len(), 1, "{:#?}", finished.stdout);
        let text = event_text(&finished.stdout[0]).unwrap();
        let ports: Vec<u16> = scan_line.captures(text).unwrap()[1]
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(ports.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(ports.iter().all(|p| (20..=30).contains(p)), "{text}");
    }
}

#[test]
fn half_open_scans_of_open_ports_need_xdp_beside_the_tracepoints() {
    let Some(lab) = lab(&["nmap"], 2) else { return };
    if !Source::Xdp.available() {
        return;
    }
    let ports: Vec<u16> = (20..=30).collect();
    let _servers = lab.serve(A, Listen::V4, &ports);
    let scan = || {
        let target = lab.v4(A).to_string();
        let args = ["-n", "-Pn", "-T4", "-sS", "-p", "20-30", &target];
        let done = lab.spawn(B, "nmap", &args).finish(Duration::from_secs(60));
        assert!(done.status.success(), "nmap: {}", done.stderr);
    };
    let scan_text = Regex::new(&format!(
        r"^Port scan detected: {} -> {} on ports \d+(,\d+){{3}}$",
        regex::escape(&lab.v4(B).to_string()),
        regex::escape(&lab.v4(A).to_string())
    ))
    .unwrap();

    // The tracepoints alone: a SYN answered by a SYN-ACK, then reset by the
    // scanner, changes no socket state they report. Nothing is printed.
    let alone = Agent::start(&lab, A, &Args::watching(Source::Tracepoint));
    scan();
    std::thread::sleep(QUIET);
    let finished = alone.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert!(finished.stdout.is_empty(), "{:#?}", finished.stdout);

    // With the XDP program beside them: every SYN counts, as a probe; one
    // scan line and nothing else.
    let both = Args::watching(Source::Tracepoint)
        .set("--source", "tracepoint,xdp")
        .interface("eth0");
    let agent = Agent::spawn(&lab, A, &both);
    agent.expect_stderr("watching: xdp on eth0", Duration::from_secs(10));
    agent.expect_stderr("watching: tracepoint", Duration::from_secs(10));
    scan();
    let found = agent.wait_for(
        |l| event_text(l).is_some_and(|t| scan_text.is_match(t)),
        EVENT,
    );
    std::thread::sleep(QUIET);
    let finished = agent.stop();
    assert!(
        found.is_some(),
        "{:#?}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(finished.stdout.len(), 1, "{:#?}", finished.stdout);
}

/// A namespace routed behind a lab host, as a pod is behind its node: its
/// `eth0` is a veth whose other end is `vpod` in the node, addresses
/// 10.99.N.2 (pod) and 10.99.N.1 (node). Deleted, with its processes, when
/// dropped.
struct Pod {
    ns: String,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
}

impl Pod {
    fn behind(lab: &Lab, node: usize) -> Pod {
        let n = (std::process::id() % 200) as u8;
        let pod = Pod {
            ns: format!("{}-pod", lab.ns(node)),
            addr: Ipv4Addr::new(10, 99, n, 2),
            gateway: Ipv4Addr::new(10, 99, n, 1),
        };
        let (ns, node_ns) = (pod.ns.as_str(), lab.ns(node));
        let (addr, gateway) = (format!("{}/24", pod.addr), format!("{}/24", pod.gateway));
        let gw = pod.gateway.to_string();
        for args in [
            &["netns", "add", ns][..],
            &["-n", ns, "link", "set", "lo", "up"],
            &[
                "-n", node_ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ],
            &["-n", node_ns, "addr", "add", &gateway, "dev", "vpod"],
            &["-n", node_ns, "link", "set", "vpod", "up"],
            &["-n", ns, "addr", "add", &addr, "dev", "eth0"],
            &["-n", ns, "link", "set", "eth0", "up"],
            &["-n", ns, "route", "add", "default", "via", &gw],
        ] {
            ip_ok(args);
        }
        lab.output(node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        pod
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns, program])
            .args(args);
        command
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn a_scan_of_a_pod_is_a_scan_of_its_address_blocked_in_the_nodes_firewall() {
    let Some(lab) = lab(&["nft"], 2) else { return };
    // A is the node, B a scanner on the node's network; the pod sits
    // behind A, reached through it.
    let pod = Pod::behind(&lab, A);
    let via = lab.v4(A).to_string();
    let [a, b, c, _] = pod.gateway.octets();
    let pod_net = format!("{a}.{b}.{c}.0/24");
    ip_ok(&["-n", lab.ns(B), "route", "add", &pod_net, "via", &via]);
    let server = Proc::start("pod server", {
        let mut c = pod.command("python3", &["-u", PEER, "serve", "--v4", "8080"]);
        c.stdin(std::process::Stdio::null());
        c
    });
    assert!(
        server.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_some(),
        "{}",
        server.stderr()
    );
    lab.try_connect(B, pod.addr.into(), 8080)
        .expect("the scanner reaches the pod before the scan");

    // The agent runs on the node, blocking in the node's nftables, and
    // watches the pod's namespace.
    let args = Args::run()
        .source(Source::Tracepoint)
        .netns(format!("/var/run/netns/{}", pod.ns))
        .block("nftables")
        .block_ttl("30s");
    let agent = Agent::start(&lab, A, &args);
    // Four closed ports of the pod: four resets, four probes.
    let ports = [20, 21, 22, 23];
    lab.attempts(B, pod.addr.into(), &ports, 1.0);
    let scanner = IpAddr::from(lab.v4(B));
    agent.expect_event(&port_scan(scanner, pod.addr.into(), &ports), EVENT);
    agent.expect_event(&blocked(scanner, "30s", "nftables"), EVENT);
    let set = crate::inspect::nft_set(&lab, "blocked4");
    assert!(crate::inspect::lists(&set, scanner), "{set}");
    // The node's firewall now drops the scanner's packets to the pod.
    let err = lab
        .try_connect(B, pod.addr.into(), 8080)
        .expect_err("the blocked scanner still reaches the pod");
    assert!(err.contains("timed out"), "{err}");
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
}

#[test]
fn a_socket_connected_to_itself_and_an_unanswered_syn_are_reported_once() {
    let Some(lab) = lab(&[], 2) else { return };
    let agent = Agent::start(&lab, A, &Args::watching(Source::Tracepoint));

    // A simultaneous open of one socket with itself: one outbound line.
    let selfie = lab.run(
        A,
        "python3",
        &[
            "-c",
            "import socket\ns=socket.socket()\ns.bind(('127.0.0.1', 8095))\ns.connect(('127.0.0.1', 8095))",
        ],
    );
    assert!(selfie.status.success(), "{selfie:?}");
    let me = SocketAddr::from((Ipv4Addr::LOCALHOST, 8095));
    agent.expect_event(&new_connection(me, me), EVENT);

    // A SYN to an address nobody answers: reported at its first
    // retransmission (about 1 s), not when the attempt gives up (3 s).
    let mut ghosts = Vec::new();
    for ghost in [
        IpAddr::from(Ipv4Addr::from(u32::from(lab.v4(B)) + 100)),
        IpAddr::from(Ipv6Addr::from(u128::from(lab.v6(B)) + 100)),
    ] {
        let started = Instant::now();
        let script = "import socket,sys\ntry: socket.create_connection((sys.argv[1], 9000), timeout=3)\nexcept OSError: pass";
        let attempt = lab.spawn(A, "python3", &["-c", script, &ghost.to_string()]);
        let to_ghost = format!(" -> {}", SocketAddr::new(ghost, 9000));
        let line = agent.wait_for(
            |l| event_text(l).is_some_and(|t| t.ends_with(&to_ghost)),
            Duration::from_millis(2500),
        );
        let after = started.elapsed();
        assert!(
            line.is_some(),
            "no line for the SYN to {ghost} within {after:?}"
        );
        assert!(
            after < Duration::from_millis(2500),
            "the unanswered SYN to {ghost} was reported after {after:?}"
        );
        ghosts.push(to_ghost);
        attempt.finish(Duration::from_secs(10));
    }
    std::thread::sleep(QUIET);
    let finished = agent.stop();
    let events = event_texts(&finished.stdout);
    assert_eq!(events.len(), 3, "{events:#?}");
    for ghost in &ghosts {
        assert_eq!(events.iter().filter(|e| e.ends_with(ghost)).count(), 1);
    }
}

// ---------------------------------------------------------------------------
// A real Docker container

const PEER_IMAGE: &str = "tcpwatch-peer:e2e";

/// A container removed (forcibly) when dropped.
struct Container {
    name: String,
}

impl Container {
    fn run(name: &str, command: &[&str]) -> Container {
        let mut args = vec!["run", "-d", "--name", name, PEER_IMAGE];
        args.extend(command);
        docker(&args);
        Container {
            name: name.to_string(),
        }
    }

    fn inspect(&self, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.name])
            .trim()
            .to_string()
    }

    fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap()
    }

    fn exec(&self, command: &[&str]) {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend(command);
        docker(&args);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's JSON line for a connection to `dst` in `netns` in the
/// given direction; panics with everything printed if it does not come.
fn json_line(agent: &Agent, dst: &str, netns: u64, direction: &str) -> Value {
    let accept = |l: &str| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["dst"] == dst && v["netns"] == netns && v["direction"] == direction)
    };
    let line = agent.wait_for(accept, EVENT).unwrap_or_else(|| {
        panic!(
            "no {direction} line to {dst} in {netns}: {:#?}\n{}",
            agent.stdout_lines(),
            agent.stderr()
        )
    });
    json(&line)
}

#[test]
fn a_docker_containers_connections_carry_the_container_and_the_process() {
    if !require_root() || !require_tools(&["docker", "stat"]) || !Source::Tracepoint.available() {
        return;
    }
    let _turn = Turn::shared();
    let built = Command::new("scripts/image.sh")
        .args(["-", PEER_IMAGE, "peer"])
        .output()
        .expect("scripts/image.sh");
    if !built.status.success() {
        missing_prerequisite(&format!(
            "cannot build {PEER_IMAGE}: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
        return;
    }
    let tag = std::process::id();
    let server = Container::run(
        &format!("twtp-server-{tag}"),
        &["python3", "-u", "-m", "http.server", "8080"],
    );
    let client = Container::run(&format!("twtp-client-{tag}"), &["sleep", "600"]);
    let (server_pid, client_pid) = (server.pid(), client.pid());
    let (server_ns, client_ns) = (
        netns_inode(&format!("/proc/{server_pid}/ns/net")),
        netns_inode(&format!("/proc/{client_pid}/ns/net")),
    );
    let server_ip = server.inspect("{{.NetworkSettings.IPAddress}}");
    let (server_id, client_id) = (server.inspect("{{.Id}}"), client.inspect("{{.Id}}"));
    assert_eq!(server_id.len(), 64, "{server_id}");

    // The agent runs on the host (the root namespace) and watches the two
    // containers' namespaces, named by their inodes. The server listened
    // before the agent started: its owner is found in /proc at start-up (the agent, holding
    // fewer capabilities than a container's root, may not read their
    // /proc/PID/ns/net).
    let args = Args::run()
        .source(Source::Tracepoint)
        .format("json")
        .netns(server_ns)
        .netns(client_ns);
    let agent = Agent::of(Proc::start("agent", {
        let mut command = Command::new(AGENT);
        command.args(args.argv());
        command
    }))
    .ready();
    // The server listens once a request gets through.
    let url = format!("http://{server_ip}:8080/");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Command::new("docker")
        .args(["exec", &client.name, "curl", "-sf", "-o", "/dev/null", &url])
        .status()
        .is_ok_and(|s| !s.success())
    {
        assert!(
            Instant::now() < deadline,
            "the server container never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dst = format!("{server_ip}:8080");
    let check = |v: &Value, netns: u64, comm: &str, id: &str| {
        assert_eq!(v["netns"], netns, "{v}");
        assert_eq!(v["comm"], comm, "{v}");
        assert!(v["pid"].as_u64().is_some(), "{v}");
        assert_eq!(v["container_id"], id, "{v}");
        let cgroup = v["cgroup"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(cgroup.contains(id), "{v}");
    };
    // curl in the client container, then python3.
    let curl = json_line(&agent, &dst, client_ns, "outbound");
    check(&curl, client_ns, "curl", &client_id);
    let served = json_line(&agent, &dst, server_ns, "inbound");
    check(&served, server_ns, "python3", &server_id);
    assert_eq!(
        served["pid"], server_pid,
        "the server's own process: {served}"
    );
    assert_eq!(served["src"], curl["src"], "the same connection");

    let before = agent.stdout_lines().len();
    let script = "import socket,sys\nsocket.create_connection((sys.argv[1], 8080)).close()";
    client.exec(&["python3", "-c", script, &server_ip]);
    let outbound = |l: &str| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["comm"] == "python3" && v["direction"] == "outbound")
    };
    let line = agent
        .wait_for(outbound, EVENT)
        .unwrap_or_else(|| panic!("no python3 line: {:#?}", agent.stdout_lines()));
    check(&json(&line), client_ns, "python3", &client_id);

    // Loopback inside the server container: once, by the server's end.
    server.exec(&["curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:8080/"]);
    let lo = json_line(&agent, "127.0.0.1:8080", server_ns, "inbound");
    check(&lo, server_ns, "python3", &server_id);
    std::thread::sleep(QUIET);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let loopback = finished.stdout[before..]
        .iter()
        .filter(|l| l.contains("\"dst\":\"127.0.0.1:8080\""))
        .count();
    assert_eq!(loopback, 1, "{:#?}", finished.stdout);
}

// ---------------------------------------------------------------------------
// The storm

/// In its namespace: a listener on 127.0.0.1:7000 accepting on its own
/// thread, and `CLIENTS` threads connecting and aborting (SO_LINGER 0: no
/// TIME-WAIT, so ports never run out) until SECONDS pass; then prints
/// `made overflows` (connections made, and the accept-queue overflows of
/// the namespace: a connection dropped there never had a server end).
const STORM: &str = r#"
import socket, struct, sys, threading, time
seconds, clients = float(sys.argv[1]), int(sys.argv[2])
def overflows():
    lines = [l.split() for l in open("/proc/net/netstat") if l.startswith("TcpExt:")]
    return int(lines[1][lines[0].index("ListenOverflows")])
before = overflows()
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 7000)); server.listen(4096)
def accept():
    while True:
        server.accept()[0].close()
threading.Thread(target=accept, daemon=True).start()
made, stop = [0] * clients, time.monotonic() + seconds
linger = struct.pack("ii", 1, 0)
def client(i):
    while time.monotonic() < stop:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", 7000))
            made[i] += 1
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        s.close()
threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
time.sleep(0.3)
print(sum(made), overflows() - before, flush=True)
"#;

/// Storms `hosts` of the lab for `seconds`; (connections made, overflows).
fn storm(lab: &Lab, hosts: &[usize], seconds: f64) -> (u64, u64) {
    let seconds = seconds.to_string();
    let procs: Vec<Proc> = hosts
        .iter()
        .map(|&h| lab.spawn(h, "python3", &["-c", STORM, &seconds, "2"]))
        .collect();
    let mut total = (0, 0);
    for p in procs {
        let done = p.finish(Duration::from_secs(60));
        assert!(done.status.success(), "storm: {}", done.stderr);
        let (made, overflows) = done.stdout[0].split_once(' ').unwrap();
        total.0 += made.parse::<u64>().unwrap();
        total.1 += overflows.parse::<u64>().unwrap();
    }
    total
}

fn lost(lab: &Lab, metrics: &str) -> u64 {
    let text = lab.output(A, "curl", &["-sf", &format!("http://{metrics}/metrics")]);
    sample(&text, "tcpwatch_events_lost_total{source=\"tracepoint\"}").expect("loss counter") as u64
}

#[test]
fn a_storm_across_namespaces_is_every_connection_a_line_or_a_counted_loss() {
    const HOSTS: usize = 8;
    if !Source::Tracepoint.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["curl"], HOSTS + 1) else {
        return;
    };
    let stormed: Vec<usize> = (1..=HOSTS).collect();
    let metrics = "127.0.0.1:9473";
    for (label, ring, paused) in [
        ("4 MiB ring, agent running", "4M", false),
        ("one-page ring, agent stopped", "4K", true),
    ] {
        let args = json_args(&lab, &stormed)
            .format("text")
            .metrics(metrics)
            .set("--tracepoint-ring", ring);
        let agent = Agent::start(&lab, A, &args);
        if paused {
            agent.signal("STOP");
        }
        let started = Instant::now();
        let (made, overflows) = storm(&lab, &stormed, 3.0);
        let took = started.elapsed().as_secs_f64();
        if paused {
            agent.signal("CONT");
        }
        // Until the lines stop coming and the loss counter has been read
        // (every second).
        let mut last = usize::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(1500));
            let now = agent.stdout_lines().len();
            if now == last {
                break;
            }
            last = now;
        }
        let lost = lost(&lab, metrics);
        let finished = agent.stop_within(Duration::from_secs(20));
        assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
        let lines = finished
            .stdout
            .iter()
            .filter(|l| l.contains("New connection: 127.0.0.1:"))
            .count() as u64;
        eprintln!(
            "storm, {label}: {made} connections in {took:.1} s across {HOSTS} namespaces ({:.0}/s); {lines} lines + {lost} counted losses; {overflows} accept-queue overflows",
            made as f64 / took
        );
        assert!(made > 1000, "the storm made only {made} connections");
        assert!(lines <= made, "{lines} lines for {made} connections");
        assert!(
            lines + lost >= made - overflows.min(made),
            "{label}: {lines} lines + {lost} losses < {made} connections - {overflows} overflows"
        );
        if paused {
            assert!(lost > 0, "a stopped agent with a one-page ring must lose");
        }
    }
}
