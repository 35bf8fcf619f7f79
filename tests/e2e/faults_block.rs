//! Faults of the blocking side: the firewall failing or vanishing under the
//! agent, and the state file's disk filling up. In each, the agent must
//! keep detecting, say what is wrong once, and recover by itself when the
//! fault goes away.
//!
//! Faults are local to the test: the agent runs in host A (its own
//! netfilter state), the `nft` it runs is a wrapper in a temporary `PATH`
//! directory, and the state file lives on a 2 MiB tmpfs the test mounts on
//! a temporary directory and unmounts when done.

use crate::agent::*;
use crate::inspect::{lists, sample};
use crate::lab::*;
use crate::prereq::missing_prerequisite;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const EVENT: Duration = Duration::from_secs(5);
/// The block stage retries every 5 s; twice that, for a loaded machine.
const RECOVERY: Duration = Duration::from_secs(12);
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];
const REAL_NFT: &str = "/usr/sbin/nft";
/// Where the agent serves its metrics, inside host A.
const METRICS: &str = "127.0.0.1:9472";
const FAILING: &str = "tcpwatch: warning: blocking via nftables fails: ";
const WORKS_AGAIN: &str = "tcpwatch: blocking via nftables works again";

fn lab(hosts: usize) -> Option<Lab> {
    Lab::needing(&[REAL_NFT, "curl"], hosts)
}

/// procfs blocking with nftables for 5 minutes, metrics on.
fn block_args() -> Args {
    Args::run()
        .block("nftables")
        .block_ttl("5m")
        .metrics(METRICS)
}

/// Whether `ip` is an element of its set in host A (read with the real
/// nft; the set may be gone).
fn in_set(lab: &Lab, ip: IpAddr) -> bool {
    lists(&set_text(lab, ip), ip)
}

/// `nft list set inet tcpwatch blocked4|6` (the set of `ip`'s family) in
/// host A; empty when the set is not there.
fn set_text(lab: &Lab, ip: IpAddr) -> String {
    let set = if ip.is_ipv4() { "blocked4" } else { "blocked6" };
    let out = lab.run(A, REAL_NFT, &["list", "set", "inet", "tcpwatch", set]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `line` is a `Blocked IP for ... via nftables` event (a late block
/// prints the time it has left, not the full TTL).
fn is_blocked(line: &str, ip: IpAddr) -> bool {
    event_text(line).is_some_and(|t| {
        t.starts_with(&format!("Blocked {ip} for ")) && t.ends_with(" via nftables")
    })
}

fn count_blocked(lines: &[String], ip: IpAddr) -> usize {
    lines.iter().filter(|l| is_blocked(l, ip)).count()
}

/// A scan of host A from `scanner` (a host's v4 or v6 address): four held
/// connections; waits for its scan line.
fn scan(lab: &Lab, agent: &Agent, from: usize, scanner: IpAddr) -> Client {
    let target = lab.addr_like(A, scanner);
    let client = lab.connect(from, target, &PORTS, None);
    agent.expect_event(&port_scan(scanner, target, &PORTS), EVENT);
    client
}

/// A scan that is blocked at once: its `Blocked` line follows within 2 s and
/// the address is in its set.
fn scan_blocked_at_once(lab: &Lab, agent: &Agent, from: usize, scanner: IpAddr) -> Client {
    let client = scan(lab, agent, from, scanner);
    assert!(
        agent
            .wait_for(|l| is_blocked(l, scanner), Duration::from_secs(2))
            .is_some(),
        "{scanner} not blocked at once\nstdout: {:#?}\nstderr: {}",
        agent.stdout_lines(),
        agent.stderr()
    );
    assert!(in_set(lab, scanner), "{}", set_text(lab, scanner));
    client
}

/// `tcpwatch_block_errors_total{backend="nftables"}` from host A.
fn block_errors(lab: &Lab) -> f64 {
    let (_, text) = lab.http_get(A, &format!("http://{METRICS}/metrics"));
    let series = "tcpwatch_block_errors_total{backend=\"nftables\"}";
    sample(&text, series).unwrap_or_else(|| panic!("no block error counter in\n{text}"))
}

/// How the `nft` the agent runs is broken.
#[derive(Clone, Copy)]
enum Fault {
    /// The wrapper prints an error and exits 1.
    Fails,
    /// The wrapper is deleted: the agent's PATH has no nft at all.
    Missing,
}

/// A directory holding `nft`, a wrapper that runs the real one unless the
/// file `broken` exists next to it.
struct Wrapper {
    dir: tempfile::TempDir,
}

impl Wrapper {
    fn new() -> Wrapper {
        let wrapper = Wrapper {
            dir: tempfile::tempdir().unwrap(),
        };
        wrapper.install();
        wrapper
    }

    fn nft(&self) -> PathBuf {
        self.dir.path().join("nft")
    }

    fn flag(&self) -> PathBuf {
        self.dir.path().join("broken")
    }

    fn install(&self) {
        use std::os::unix::fs::PermissionsExt;
        let script = format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'Error: injected fault' >&2; exit 1; fi\nexec {REAL_NFT} \"$@\"\n",
            self.flag().display()
        );
        std::fs::write(self.nft(), script).unwrap();
        std::fs::set_permissions(self.nft(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn break_it(&self, fault: Fault) {
        match fault {
            Fault::Fails => std::fs::write(self.flag(), "").unwrap(),
            Fault::Missing => std::fs::remove_file(self.nft()).unwrap(),
        }
    }

    fn mend(&self, fault: Fault) {
        match fault {
            Fault::Fails => std::fs::remove_file(self.flag()).unwrap(),
            Fault::Missing => self.install(),
        }
    }
}

/// Blocking works -> `nft` breaks -> two scans: both printed, neither
/// blocked, one warning -> `nft` mended -> both blocks applied within a
/// retry, their `Blocked` lines printed, the recovery said once -> a new
/// scan is blocked at once.
fn nft_binary_fault(fault: Fault) {
    let Some(lab) = lab(3) else { return };
    let wrapper = Wrapper::new();
    let _server = lab.serve(A, Listen::Dual, &PORTS);
    let path = wrapper.dir.path().display().to_string();
    let env = [("PATH", path.as_str()), ("TCPWATCH_LIBNFTABLES", "0")];
    let agent = Agent::start_with_env(&lab, A, &env, &block_args());
    let (b4, b6, c4, c6) = (
        lab.addr(B, false),
        lab.addr(B, true),
        lab.addr(C, false),
        lab.addr(C, true),
    );
    let _first = scan_blocked_at_once(&lab, &agent, C, c6);
    assert_eq!(block_errors(&lab), 0.0);

    wrapper.break_it(fault);
    let _scans = [scan(&lab, &agent, B, b4), scan(&lab, &agent, B, b6)];
    std::thread::sleep(SETTLE);
    let printed = agent.stdout_lines();
    assert_eq!(count_blocked(&printed, b4) + count_blocked(&printed, b6), 0);
    assert!(!in_set(&lab, b4) && !in_set(&lab, b6));
    // Past one retry tick: retries fail silently.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        agent.stderr_lines(FAILING).len(),
        1,
        "one warning however many failures: {}",
        agent.stderr()
    );
    assert!(
        block_errors(&lab) >= 2.0,
        "each failed call is counted: {}",
        block_errors(&lab)
    );

    wrapper.mend(fault);
    for ip in [b4, b6] {
        assert!(
            within(RECOVERY, || in_set(&lab, ip)),
            "pending block of {ip} not applied: {}\nstderr: {}",
            set_text(&lab, ip),
            agent.stderr()
        );
        assert!(
            agent.wait_for(|l| is_blocked(l, ip), EVENT).is_some(),
            "no Blocked line for {ip}: {:#?}",
            agent.stdout_lines()
        );
    }
    agent.expect_stderr(WORKS_AGAIN, EVENT);
    let _last = scan_blocked_at_once(&lab, &agent, C, c4);

    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let said = diagnostics(&finished.stderr);
    assert_eq!(said.len(), 2, "stderr: {}", finished.stderr);
    assert!(said[0].starts_with(FAILING), "{}", said[0]);
    assert_eq!(said[1], WORKS_AGAIN);
    for ip in [b4, b6, c4, c6] {
        let blocked = count_blocked(&finished.stdout, ip);
        assert_eq!(blocked, 1, "{ip}: {:#?}", finished.stdout);
    }
}

test_rows!(nft_binary_fault {
    a_failing_nft_keeps_blocks_pending_until_it_works_again: Fault::Fails;
    a_deleted_nft_binary_keeps_blocks_pending_until_it_is_back: Fault::Missing;
});

/// In-process libnftables (the default): someone deletes the agent's table
/// while a block is active; within a retry the table is back with that
/// block, said once, and the next scan is blocked at once.
#[test]
fn a_deleted_table_is_recreated_with_its_active_blocks() {
    let Some(lab) = lab(2) else { return };
    let _server = lab.serve(A, Listen::Dual, &PORTS);
    let agent = Agent::start(&lab, A, &block_args());
    let (b4, b6) = (lab.addr(B, false), lab.addr(B, true));
    let _first = scan_blocked_at_once(&lab, &agent, B, b4);

    lab.output(A, REAL_NFT, &["delete", "table", "inet", "tcpwatch"]);
    assert!(!in_set(&lab, b4));
    assert!(
        within(RECOVERY, || in_set(&lab, b4)),
        "table not re-created with {b4}; stderr: {}",
        agent.stderr()
    );
    let rules = lab.output(A, REAL_NFT, &["list", "table", "inet", "tcpwatch"]);
    assert_eq!(rules.matches("saddr @blocked").count(), 2, "{rules}");
    let err = lab
        .try_connect(B, lab.v4(A).into(), 9)
        .expect_err("the blocked scanner connects");
    assert!(err.contains("timed out"), "not a dropped SYN: {err}");

    let _second = scan_blocked_at_once(&lab, &agent, B, b6);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let said = diagnostics(&finished.stderr);
    assert_eq!(said.len(), 1, "stderr: {}", finished.stderr);
    assert!(
        said[0].starts_with("tcpwatch: warning: the nftables objects were gone"),
        "{}",
        said[0]
    );
    assert_eq!(count_blocked(&finished.stdout, b4), 1);
}

/// A 2 MiB tmpfs mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tcpwatch-test"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            missing_prerequisite("cannot mount a tmpfs");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes zeros until the disk is full.
    fn fill(&self) {
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", self.filler().display()))
            .args(["bs=4k", "status=none"])
            .stderr(std::process::Stdio::null())
            .status();
        let left = std::fs::OpenOptions::new()
            .append(true)
            .open(self.filler())
            .and_then(|mut f| std::io::Write::write_all(&mut f, &[0u8; 4096]));
        assert!(left.is_err(), "the disk is not full");
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The state file's disk fills up mid-run: connections are still printed
/// exactly once and the failure is said once; once space is freed the
/// waiting writes succeed (said once), and a restart on the same file
/// reports none of them again.
#[test]
fn a_full_state_disk_loses_nothing_and_recovers() {
    let Some(lab) = Lab::new(2) else { return };
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let state = disk.path().join("state");
    let state_arg = state.display().to_string();
    let args = Args::run().set("--scan-ports", 20).state(&state);
    let ports = [7001, 7002, 7003, 7004, 7005, 7006, 7007, 7008];
    let _server = lab.serve(A, Listen::V4, &ports);
    let host: IpAddr = lab.v4(A).into();
    let agent = Agent::start(&lab, A, &args);
    let mut expected = Vec::new();
    let mut clients = Vec::new();
    // Held until the end: still open at the restart.
    let mut connect = |agent: &Agent, port: u16| {
        let client = lab.connect(B, host, &[port], None);
        let line = new_connection(client.locals[0], at(host, port));
        agent.expect_event(&line, EVENT);
        clients.push(client);
        line
    };
    expected.push(connect(&agent, 7001));

    disk.fill();
    for port in [7002, 7003, 7004] {
        expected.push(connect(&agent, port));
    }
    agent.expect_stderr("cannot write", EVENT);
    expected.push(connect(&agent, 7005));
    std::thread::sleep(SETTLE);
    assert_eq!(agent.stderr_lines("warning").len(), 1, "{}", agent.stderr());

    disk.free();
    agent.expect_stderr("tcpwatch: state file writable again", EVENT);
    expected.push(connect(&agent, 7006));
    std::thread::sleep(SETTLE);
    let finished = agent.stop();
    assert_exact_events(&finished, &expected);
    let said = diagnostics(&finished.stderr);
    assert_eq!(said.len(), 2, "stderr: {}", finished.stderr);
    assert!(said[0].contains(&format!("state file {state_arg}: cannot write")));
    assert_eq!(said[1], "tcpwatch: state file writable again");

    // Same file, every connection still open: nothing is reported again,
    // a new one is.
    assert!(state.exists());
    let agent = Agent::start(&lab, A, &args);
    let last = connect(&agent, 7007);
    std::thread::sleep(SETTLE);
    let finished = agent.stop();
    assert_exact_events(&finished, &[last]);
    assert!(
        diagnostics(&finished.stderr).is_empty(),
        "{}",
        finished.stderr
    );
}
