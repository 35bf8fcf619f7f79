//! The container image watches its host: built with `scripts/image.sh` (what
//! `make image` runs), started with the `docker run` command of docs/deployment/container.md, it
//! reports a connection made on the host, blocks a scanner in the host's
//! nftables ruleset, and removes its table when the container stops. It does
//! so as the image's unprivileged user (uid 10001), holding only
//! CAP_NET_ADMIN of the two capabilities the container is given (read from
//! the host in /proc/PID/status), with its state on the volume.
//!
//! Unlike the other suites this one touches the root namespace, as a
//! container watching its host must: a veth to a scanner namespace
//! (10.251.x.0/24), servers on high ports, and the agent's own
//! `inet tcpwatch` table, all removed at the end. It runs alone.

use crate::agent::*;
use crate::inspect::proc_status;
use crate::lab::{parse_local, Turn, HELPER_TIMEOUT, PEER};
use crate::prereq::{missing_prerequisite, require_root, require_tools};
use crate::proc::Proc;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

const IMAGE: &str = "tcpwatch:e2e";
const EVENT: Duration = Duration::from_secs(10);

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn must(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace wired to the root namespace by a veth: a remote host.
struct Scanner {
    ns: String,
    link: String,
    host: Ipv4Addr,
    addr: Ipv4Addr,
}

impl Scanner {
    fn new() -> Scanner {
        let id = std::process::id();
        let net = (id % 250) as u8;
        let scanner = Scanner {
            ns: format!("twct-{id}"),
            link: format!("twct{id}"),
            host: Ipv4Addr::new(10, 251, net, 1),
            addr: Ipv4Addr::new(10, 251, net, 2),
        };
        let (ns, link) = (scanner.ns.as_str(), scanner.link.as_str());
        let (host, addr) = (
            format!("{}/24", scanner.host),
            format!("{}/24", scanner.addr),
        );
        for args in [
            &["netns", "add", ns][..],
            &[
                "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
            &["addr", "add", &host, "dev", link],
            &["link", "set", link, "up"],
            &["-n", ns, "addr", "add", &addr, "dev", "eth0"],
            &["-n", ns, "link", "set", "eth0", "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ] {
            must("ip", args);
        }
        scanner
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.link]);
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

/// A running container, removed (forcibly) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.0]);
    }
}

/// The command of docs/deployment/container.md (host network, least capabilities, read-only root,
/// state on a volume), with test-sized settings after the image name: the
/// image's own source, blocking and state file.
fn docker_run(name: &str, state: &str, metrics: &str) -> Container {
    let volume = format!("{state}:/var/lib/tcpwatch");
    let args = Args::bare()
        .interval("1s")
        .block_ttl("30s")
        .metrics(metrics)
        .argv();
    let mut docker = vec![
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "NET_RAW",
        "--read-only",
        "--tmpfs",
        "/run:uid=10001,gid=10001",
        "-v",
        &volume,
        IMAGE,
    ];
    docker.extend(args.iter().map(String::as_str));
    must("docker", &docker);
    Container(name.to_string())
}

/// The image's user (deploy/Dockerfile).
const AGENT_UID: &str = "10001";
/// CAP_NET_ADMIN (12): all the default configuration (procfs, nftables)
/// needs, effective and ambient (for the `nft` binary without libnftables).
const NET_ADMIN: &str = "0000000000001000";
/// CAP_NET_ADMIN and CAP_NET_RAW (13): what `docker run` gives.
const GIVEN: &str = "0000000000003000";

/// The agent runs as the image's user with nothing but CAP_NET_ADMIN.
fn assert_least_privilege(container: &str) {
    let pid = must("docker", &["inspect", "-f", "{{.State.Pid}}", container]);
    let status = proc_status(pid.trim().parse().expect("a pid"));
    let uid = [AGENT_UID; 4].join(" ");
    let want = [
        ("Uid", uid.as_str()),
        ("Gid", uid.as_str()),
        ("CapEff", NET_ADMIN),
        ("CapPrm", NET_ADMIN),
        ("CapInh", NET_ADMIN),
        ("CapAmb", NET_ADMIN),
        ("CapBnd", GIVEN),
        ("NoNewPrivs", "1"),
    ];
    for (field, value) in want {
        assert_eq!(
            status.get(field).map(String::as_str),
            Some(value),
            "{field} of the agent in the container"
        );
    }
}

fn tcpwatch_table_exists() -> bool {
    must("nft", &["list", "tables"])
        .lines()
        .any(|l| l.contains("tcpwatch"))
}

/// `peer.py ARGS` in the root namespace, or in `ns`.
fn peer(label: &str, ns: Option<&str>, args: &[&str]) -> Proc {
    let mut command = match ns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, "python3"]);
            command
        }
        None => Command::new("python3"),
    };
    command.args(["-u", PEER]).args(args);
    Proc::start(label, command)
}

#[test]
fn container_reports_host_connections_and_blocks_on_the_host_firewall() {
    if !require_root() || !require_tools(&["nft"]) {
        return;
    }
    let _alone = Turn::alone();
    let built = run("scripts/image.sh", &[AGENT, IMAGE]);
    if !built.status.success() {
        missing_prerequisite(&format!(
            "cannot build the image: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
        return;
    }
    assert!(
        !tcpwatch_table_exists(),
        "a tcpwatch table exists before the test"
    );
    let scanner = Scanner::new();
    let base = 40_000 + (std::process::id() % 5_000) as u16 * 5;
    let ports = [base + 1, base + 2, base + 3, base + 4];
    let port_args: Vec<String> = std::iter::once(base)
        .chain(ports)
        .map(|p| p.to_string())
        .collect();
    let mut serve_args = vec!["serve", "--v4"];
    serve_args.extend(port_args.iter().map(String::as_str));
    let servers = peer("servers", None, &serve_args);
    assert!(
        servers.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_some(),
        "{}",
        servers.stderr()
    );

    let state = tempfile::tempdir().unwrap();
    // A bind mount keeps the host's owner: give it to the image's user.
    must(
        "chown",
        &[
            &format!("{AGENT_UID}:{AGENT_UID}"),
            state.path().to_str().unwrap(),
        ],
    );
    let metrics = format!("127.0.0.1:{}", base + 5);
    let name = format!("tcpwatch-e2e-{}", std::process::id());
    let container = docker_run(&name, state.path().to_str().unwrap(), &metrics);
    let logs = Proc::start("docker logs", {
        let mut c = Command::new("docker");
        c.args(["logs", "-f", &container.0]);
        c
    });
    assert!(
        logs.wait_for_stderr(READY, START_TIMEOUT),
        "container not ready: {}",
        logs.stderr()
    );
    let health = must("curl", &["-sf", &format!("http://{metrics}/healthz")]);
    assert_eq!(health.trim(), "ok");
    assert_least_privilege(&container.0);
    assert!(
        !logs.stderr().contains("warning"),
        "the unprivileged agent warned: {}",
        logs.stderr()
    );

    // A connection on the host.
    let client = peer("client", None, &["connect", "127.0.0.1", &base.to_string()]);
    let local = client
        .wait_for_lines(1, HELPER_TIMEOUT)
        .expect("client connected");
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base);
    let line = new_connection(parse_local(&local[0]), server);
    let logs = Agent::of(logs);
    logs.expect_event(&line, EVENT);

    // A scan from the namespace host, blocked on the host's firewall.
    let host = scanner.host.to_string();
    let mut scan_args = vec!["connect", host.as_str()];
    scan_args.extend(port_args[1..].iter().map(String::as_str));
    let _scan = peer("scanner", Some(&scanner.ns), &scan_args);
    let scan = port_scan(scanner.addr.into(), scanner.host.into(), &ports);
    logs.expect_event(&scan, EVENT);
    logs.expect_event(&blocked(scanner.addr.into(), "30s", "nftables"), EVENT);
    let set = must("nft", &["list", "set", "inet", "tcpwatch", "blocked4"]);
    assert!(set.contains(&scanner.addr.to_string()), "{set}");
    // The operator asks the agent through its control socket in the
    // container's /run, as the agent's user.
    let status = must("docker", &["exec", &container.0, "tcpwatch", "status"]);
    assert!(
        status.contains(&format!("\n  {} expires in ", scanner.addr)),
        "{status}"
    );

    // Stopping the container (SIGTERM) removes the table.
    must("docker", &["stop", "-t", "20", &container.0]);
    let code = must(
        "docker",
        &["inspect", "-f", "{{.State.ExitCode}}", &container.0],
    );
    assert_eq!(
        code.trim(),
        "0",
        "container exit code; stderr: {}",
        logs.stderr()
    );
    assert!(
        !tcpwatch_table_exists(),
        "table left after the container stopped"
    );
    assert!(
        state.path().join("state").is_file(),
        "the unprivileged agent wrote no state file on the volume"
    );
}
