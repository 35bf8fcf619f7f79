//! deploy/systemd/tcpwatch.service under a real systemd: a Debian container
//! (`scripts/image.sh BINARY TAG systemd`, tests/systemd/Dockerfile) boots
//! systemd as PID 1 with the unit enabled and a test-sized config (procfs,
//! nftables blocking, 1 s polls). Then, read from inside the container:
//! - the unit is active; its main process runs as a DynamicUser uid with
//!   CapEff = CapPrm = CapAmb = CAP_NET_ADMIN alone (what procfs + nftables
//!   need), a bounding set within the unit's four capabilities, no new
//!   privileges and a seccomp filter, every hardening directive applied;
//! - a loopback connection is the exact `New connection` line in the unit's
//!   journal; its `inet tcpwatch` table exists, `/healthz` says ok, the state
//!   file is the dynamic user's, under /var/lib/private/tcpwatch;
//! - `systemctl stop` removes the table and the service exits with status 0.
//!
//! The container has no network but its loopback (`--network none`). What
//! it is given, and why: its own cgroup namespace, and the cgroup2 mounted by
//! tests/systemd/boot (Docker mounts cgroups read-only); CAP_SYS_ADMIN, which
//! systemd needs to mount and to build the unit's namespaces (ProtectSystem,
//! PrivateTmp, ...); CAP_NET_ADMIN, which Docker withholds by default and the
//! unit grants. Not --privileged: this host's bounding set lacks
//! CAP_SYS_RESOURCE, so runc cannot apply "all capabilities". CAP_BPF and
//! CAP_PERFMON cannot be added (Docker 20.10 does not know them), so the
//! XDP capabilities are absent from the container and from the agent's
//! bounding set. The agent's command line is the unit's own. It runs alone.

use crate::agent::*;
use crate::inspect::status_fields;
use crate::lab::{parse_local, Turn, HELPER_TIMEOUT};
use crate::prereq::{missing_prerequisite, require_root};
use crate::proc::Proc;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

const IMAGE: &str = "tcpwatch-systemd:e2e";
/// Booting is slow on a busy 2-core host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const EVENT: Duration = Duration::from_secs(10);
/// tests/systemd/tcpwatch.toml.
const METRICS: &str = "127.0.0.1:9472";
const PEER_IN_IMAGE: &str = "/usr/local/lib/tcpwatch/peer.py";
const SERVER_PORT: u16 = 8000;
/// CAP_NET_ADMIN (12): all the default configuration needs.
const NET_ADMIN: u64 = 1 << 12;
/// The unit's CapabilityBoundingSet: NET_ADMIN (12), NET_RAW (13),
/// PERFMON (38), BPF (39).
const UNIT_CAPS: u64 = (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39);
/// systemd's DynamicUser range.
const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A booted container, removed (forcibly) when dropped.
struct Host(String);

impl Host {
    fn boot() -> Host {
        let name = format!("tcpwatch-systemd-e2e-{}", std::process::id());
        let out = run(
            "docker",
            &[
                "run",
                "-d",
                // A console, so `docker logs` shows the boot.
                "-t",
                "--name",
                &name,
                "--network",
                "none",
                "--cgroupns",
                "private",
                "--cap-add",
                "SYS_ADMIN",
                "--cap-add",
                "NET_ADMIN",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                IMAGE,
            ],
        );
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Host(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command.arg("exec").arg(&self.0).args(args);
        command
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker exec {args:?}: {e}"))
    }

    /// stdout of a command that must succeed.
    fn must(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in the container: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What the console showed: the boot, for failure messages.
    fn console(&self) -> String {
        let out = run("docker", &["logs", &self.0]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show -p KEY --value tcpwatch`.
    fn unit(&self, key: &str) -> String {
        self.must(&["systemctl", "show", "-p", key, "--value", "tcpwatch"])
    }

    fn journal(&self) -> Vec<String> {
        let text = self.must(&["journalctl", "-u", "tcpwatch", "-o", "cat", "--no-pager"]);
        text.lines().map(str::to_string).collect()
    }

    fn has_table(&self) -> bool {
        let out = self.exec(&["nft", "list", "table", "inet", "tcpwatch"]);
        out.status.success()
    }

    /// The `Name:` fields of /proc/PID/status, values whitespace-joined.
    fn status(&self, pid: &str) -> HashMap<String, String> {
        status_fields(&self.must(&["cat", &format!("/proc/{pid}/status")]))
    }

    fn peer(&self, label: &str, args: &[&str]) -> Proc {
        let mut command = self.command(&["python3", "-u", PEER_IN_IMAGE]);
        command.args(args);
        Proc::start(label, command)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.0]);
    }
}

fn caps(status: &HashMap<String, String>, field: &str) -> u64 {
    let hex = status.get(field).unwrap_or_else(|| panic!("no {field}"));
    u64::from_str_radix(hex, 16).unwrap()
}

/// systemd has finished booting (`degraded`: some unrelated unit failed).
fn wait_for_boot(host: &Host) {
    let booted = within(BOOT_TIMEOUT, || {
        let out = host.exec(&["systemctl", "is-system-running"]);
        let state = String::from_utf8_lossy(&out.stdout);
        matches!(state.trim(), "running" | "degraded")
    });
    let failed = host.exec(&["systemctl", "--failed", "--no-legend"]);
    assert!(
        booted,
        "systemd did not boot; failed units: {}\nconsole:\n{}",
        String::from_utf8_lossy(&failed.stdout),
        host.console()
    );
}

/// The unit's main process holds exactly what its configuration needs.
fn assert_least_privilege(host: &Host) {
    let pid = host.unit("MainPID");
    let status = host.status(&pid);
    let uids: Vec<u32> = status["Uid"]
        .split(' ')
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids.len(), 4, "{uids:?}");
    assert!(
        uids.iter().all(|u| *u == uids[0]) && DYNAMIC_UIDS.contains(&uids[0]),
        "not one DynamicUser uid: {uids:?}"
    );
    assert_eq!(status["Gid"], status["Uid"], "the dynamic user's group");
    for field in ["CapEff", "CapPrm", "CapAmb"] {
        assert_eq!(caps(&status, field), NET_ADMIN, "{field} of the agent");
    }
    // The unit's bounding set, cut to what the container has (PID 1's).
    let container = caps(&host.status("1"), "CapBnd");
    assert_eq!(
        caps(&status, "CapBnd"),
        container & UNIT_CAPS,
        "CapBnd of the agent"
    );
    assert_eq!(status["NoNewPrivs"], "1");
    // SystemCallFilter: 2 is SECCOMP_MODE_FILTER.
    assert_eq!(status["Seccomp"], "2");
    let state = host.must(&["stat", "-c", "%u %a", "/var/lib/private/tcpwatch/state"]);
    assert_eq!(
        state,
        format!("{} 600", uids[0]),
        "owner and mode of the state file"
    );
}

/// A loopback connection inside the container is the exact journal line.
fn expect_connection(host: &Host) {
    let port = SERVER_PORT.to_string();
    let server = host.peer("server", &["serve", "--v4", &port]);
    assert!(
        server.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_some(),
        "server: {}",
        server.stderr()
    );
    let client = host.peer("client", &["connect", "127.0.0.1", &port, "--hold", "30"]);
    let local = client
        .wait_for_lines(1, HELPER_TIMEOUT)
        .unwrap_or_else(|| panic!("client did not connect: {}", client.stderr()));
    let acceptor = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), SERVER_PORT);
    let line = new_connection(parse_local(&local[0]), acceptor);
    let seen = within(EVENT, || {
        host.journal()
            .iter()
            .any(|l| event_text(l) == Some(line.as_str()))
    });
    assert!(seen, "no '{line}' in the journal: {:?}", host.journal());
}

#[test]
fn unit_runs_under_systemd_as_a_dynamic_user_with_net_admin_only() {
    if !require_root() {
        return;
    }
    let _alone = Turn::alone();
    let built = run("scripts/image.sh", &[AGENT, IMAGE, "systemd"]);
    if !built.status.success() {
        missing_prerequisite(&format!(
            "cannot build the systemd image: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
        return;
    }
    let host = Host::boot();
    wait_for_boot(&host);
    assert_eq!(
        host.exec(&["systemctl", "is-active", "tcpwatch"]).stdout,
        b"active\n",
        "journal: {:?}",
        host.journal()
    );
    assert!(
        within(START_TIMEOUT, || host
            .journal()
            .iter()
            .any(|l| l.starts_with(READY))),
        "no readiness line: {:?}",
        host.journal()
    );
    assert_least_privilege(&host);
    let health = host.must(&["curl", "-sf", &format!("http://{METRICS}/healthz")]);
    assert_eq!(health, "ok");
    assert!(host.has_table(), "no inet tcpwatch table in the container");
    expect_connection(&host);
    // Root reaches the dynamic user's control socket in the unit's
    // RuntimeDirectory.
    let status = host.must(&["tcpwatch", "status"]);
    assert!(
        status.contains("\nsource: procfs, ok, 0 events lost\n"),
        "{status}"
    );
    let socket = host.must(&["stat", "-c", "%U %a", "/run/tcpwatch/tcpwatch.sock"]);
    assert!(
        socket.ends_with(" 600") && !socket.starts_with("root"),
        "{socket}"
    );
    let diagnostics: Vec<String> = host
        .journal()
        .into_iter()
        .filter(|l| l.starts_with("tcpwatch: ") && !l.starts_with(READY))
        .collect();
    assert!(diagnostics.is_empty(), "the agent said: {diagnostics:?}");

    host.must(&["systemctl", "stop", "tcpwatch"]);
    assert!(!host.has_table(), "table left after systemctl stop");
    // ExecMainCode 1 is CLD_EXITED: the agent exited, no signal killed it.
    let ended: Vec<String> = ["Result", "ExecMainCode", "ExecMainStatus", "ActiveState"]
        .iter()
        .map(|key| format!("{key}={}", host.unit(key)))
        .collect();
    assert_eq!(
        ended,
        [
            "Result=success",
            "ExecMainCode=1",
            "ExecMainStatus=0",
            "ActiveState=inactive"
        ],
        "journal: {:?}",
        host.journal()
    );
}
