//! Harness of the real-Linux end-to-end tests.
//!
//! A [`Lab`] is a small network made of namespaces: one "switch" namespace
//! holding a bridge, and N host namespaces, each with an `eth0` veth plugged
//! into the bridge, an IPv4 address `10.A.B.n/24` and an IPv6 address
//! `fd00:A:B::n/64` (n = host index + 1). Names and subnets carry the test
//! process id and a counter, so tests run in parallel. Dropping the lab (also
//! during a panic) kills every process inside its namespaces and deletes them.
//!
//! In a host one can run a command ([`Lab::run`]), start a long-running one
//! with its output captured ([`Lab::spawn`] -> [`Proc`]), use the traffic
//! helper `tests/peer.py` ([`Lab::serve`], [`Lab::connect`]), and run the agent
//! under test ([`Agent`]).
//!
//! Prerequisites (root, `ip`, `python3`, namespaces) are checked by
//! [`Lab::new`]: when they are missing the test is skipped with a message, or
//! fails when `CI=true` (see [`missing_prerequisite`]).
//!
//! Each test file includes this module and uses part of it.
#![allow(dead_code)]

use regex::Regex;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The agent binary under test (the release build under `cargo test --release`).
pub const AGENT: &str = env!("CARGO_BIN_EXE_tcpwatch");

/// The traffic helper.
pub const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer.py");

/// `^<local time>: ` in front of every text-format event line.
pub const STAMP: &str = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d: ";

/// How long a helper may take to get ready or print what it must.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of every namespace a lab creates.
const PREFIX: &str = "twlab";

// ---------------------------------------------------------------------------
// Prerequisites

/// Reports a missing prerequisite: panics when `CI=true` (a CI run must never
/// pass by skipping), otherwise prints why the test is skipped. The caller
/// returns from the test when this returns.
pub fn missing_prerequisite(what: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing (CI=true, so this fails instead of skipping): {what}");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
}

/// True when running as root; otherwise reports it via [`missing_prerequisite`].
pub fn require_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user of this process.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if euid == Some(0) {
        return true;
    }
    missing_prerequisite("not running as root (network namespaces need it)");
    false
}

/// True when `program --version`-like `args` runs; otherwise reports it.
pub fn require_tool(program: &str, args: &[&str]) -> bool {
    let ran = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ran {
        missing_prerequisite(&format!("cannot run `{program}`"));
    }
    ran
}

// ---------------------------------------------------------------------------
// Processes with captured output

/// What a process printed so far.
#[derive(Default)]
struct Captured {
    stdout: Vec<String>,
    stderr: String,
    stdout_closed: bool,
}

#[derive(Default)]
struct Shared {
    captured: Mutex<Captured>,
    changed: Condvar,
}

/// Everything a finished process printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

/// A running process whose stdout (by line) and stderr are collected by
/// reader threads. Killed (SIGKILL) when dropped, if still running.
pub struct Proc {
    label: String,
    child: Child,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `command` with stdout and stderr captured. `label` names it in
    /// panic messages.
    pub fn start(label: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            read_lines(stdout, Arc::clone(&shared)),
            read_all(stderr, Arc::clone(&shared)),
        ];
        Proc {
            label: label.to_string(),
            child,
            shared,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a stdout line satisfying `accept` (lines
    /// already printed count too) and returns the first such line. `None` on
    /// timeout, or as soon as stdout is closed without such a line.
    pub fn wait_for(&self, accept: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut captured = self.shared.captured.lock().unwrap();
        loop {
            if let Some(line) = captured.stdout.iter().find(|l| accept(l)) {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if captured.stdout_closed {
                return None;
            }
            captured = self.shared.changed.wait_timeout(captured, left).unwrap().0;
        }
    }

    /// [`Proc::wait_for`] a line matching `pattern`.
    pub fn wait_for_match(&self, pattern: &Regex, timeout: Duration) -> Option<String> {
        self.wait_for(|l| pattern.is_match(l), timeout)
    }

    /// Waits up to `timeout` until stdout has at least `count` lines; returns
    /// the first `count`.
    pub fn wait_for_lines(&self, count: usize, timeout: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut captured = self.shared.captured.lock().unwrap();
        loop {
            if captured.stdout.len() >= count {
                return Some(captured.stdout[..count].to_vec());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if captured.stdout_closed {
                return None;
            }
            captured = self.shared.changed.wait_timeout(captured, left).unwrap().0;
        }
    }

    /// The stdout lines printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.shared.captured.lock().unwrap().stdout.clone()
    }

    /// Waits up to `timeout` for stderr to contain `text`; false on timeout
    /// or once the process has closed its output.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut captured = self.shared.captured.lock().unwrap();
        loop {
            if captured.stderr.contains(text) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if captured.stdout_closed {
                return false;
            }
            captured = self.shared.changed.wait_timeout(captured, left).unwrap().0;
        }
    }

    /// The stderr text printed so far.
    pub fn stderr(&self) -> String {
        self.shared.captured.lock().unwrap().stderr.clone()
    }

    /// The exit status if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "cannot send SIG{name} to {}", self.label);
    }

    /// Waits up to `timeout` for the process to end, then collects all its
    /// output. Panics (after killing it) if it does not end in time.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; stderr: {}",
                    self.label,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close when the process (and any child holding them) ends.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let captured = self.shared.captured.lock().unwrap();
        Finished {
            status,
            stdout: captured.stdout.clone(),
            stderr: captured.stderr.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn read_lines(pipe: impl Read + Send + 'static, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            shared.captured.lock().unwrap().stdout.push(line);
            shared.changed.notify_all();
        }
        shared.captured.lock().unwrap().stdout_closed = true;
        shared.changed.notify_all();
    })
}

fn read_all(mut pipe: impl Read + Send + 'static, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            shared.captured.lock().unwrap().stderr.push_str(&text);
            shared.changed.notify_all();
        }
    })
}

// ---------------------------------------------------------------------------
// The lab network

/// One host of a lab.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// Which sockets `peer.py serve` listens on.
#[derive(Debug, Clone, Copy)]
pub enum Listen {
    /// `0.0.0.0`
    V4,
    /// `::`, accepting IPv4 clients too
    Dual,
    /// `::` with IPV6_V6ONLY
    V6Only,
}

/// Connections opened by `peer.py connect`, held while this lives (or for
/// the `hold` given).
pub struct Client {
    pub proc: Proc,
    /// The local endpoint of each connection, in the order of the ports.
    pub locals: Vec<SocketAddr>,
}

/// A bridge and N hosts, each in its own namespace. See the module docs.
pub struct Lab {
    switch: String,
    hosts: Vec<Host>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds a lab of `hosts` hosts, or returns `None` after
    /// [`missing_prerequisite`] when this machine cannot (not root, no `ip`
    /// or `python3`, namespaces refused). Panics if setup fails otherwise.
    pub fn new(hosts: usize) -> Option<Lab> {
        if !require_root() || !require_tool("ip", &["-V"]) {
            return None;
        }
        if !require_tool("python3", &["--version"]) {
            return None;
        }
        remove_stale_labs();
        let pid = std::process::id();
        let serial = LABS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{pid}-{serial}");
        // Subnets differ per lab although namespaces already isolate them,
        // so a packet that leaked from one lab to another could not be
        // mistaken for local traffic.
        let (a, b) = (100 + pid % 100, serial % 256);
        let mut lab = Lab {
            switch: format!("{name}-sw"),
            hosts: Vec::new(),
        };
        if let Err(e) = ip(&["netns", "add", &lab.switch]) {
            missing_prerequisite(&format!("cannot create a network namespace: {e}"));
            return None;
        }
        lab.setup_switch();
        for index in 0..hosts {
            let n = index as u32 + 1;
            let host = Host {
                ns: format!("{name}-h{n}"),
                v4: Ipv4Addr::new(10, a as u8, b as u8, n as u8),
                v6: format!("fd00:{a:x}:{b:x}::{n:x}").parse().unwrap(),
            };
            // Pushed first: Drop deletes it even if the setup below panics.
            lab.hosts.push(host.clone());
            lab.setup_host(index, &host);
        }
        Some(lab)
    }

    fn setup_switch(&self) {
        let sw = self.switch.as_str();
        must(ip(&["-n", sw, "link", "set", "lo", "up"]));
        must(ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]));
        must(ip(&["-n", sw, "link", "set", "br0", "up"]));
    }

    fn setup_host(&self, index: usize, host: &Host) {
        let (sw, ns) = (self.switch.as_str(), host.ns.as_str());
        let port = format!("p{}", index + 1);
        let v4 = format!("{}/24", host.v4);
        let v6 = format!("{}/64", host.v6);
        must(ip(&["netns", "add", ns]));
        // Created inside the switch namespace with its peer moved straight
        // into the host: nothing ever appears in the root namespace.
        must(ip(&[
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]));
        must(ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"]));
        must(ip(&["-n", ns, "link", "set", "lo", "up"]));
        must(ip(&["-n", ns, "link", "set", "eth0", "up"]));
        must(ip(&["-n", ns, "addr", "add", &v4, "dev", "eth0"]));
        // nodad: the address is usable at once instead of after ~1 s of DAD.
        must(ip(&["-n", ns, "addr", "add", &v6, "dev", "eth0", "nodad"]));
    }

    /// Host `index` (0-based; its addresses end in `index + 1`).
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    pub fn v4(&self, index: usize) -> Ipv4Addr {
        self.hosts[index].v4
    }

    pub fn v6(&self, index: usize) -> Ipv6Addr {
        self.hosts[index].v6
    }

    pub fn ns(&self, index: usize) -> &str {
        &self.hosts[index].ns
    }

    /// The namespace holding the bridge `br0` (ports `p1`..`pN`).
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// `ip netns exec <host> program args...`, not started yet.
    pub fn command(&self, index: usize, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ns(index), program])
            .args(args);
        command
    }

    /// Runs a command in a host to completion, output captured.
    pub fn run(&self, index: usize, program: &str, args: &[&str]) -> Output {
        self.command(index, program, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.ns(index)))
    }

    /// Tries one TCP connection from host `index` to `dst:port` (2 s
    /// timeout); `Err(python's message)` when it fails: a dropped SYN says
    /// "timed out", a closed port "refused".
    pub fn try_connect(&self, index: usize, dst: IpAddr, port: u16) -> Result<(), String> {
        let script = "import socket,sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()";
        let out = self.run(
            index,
            "python3",
            &["-c", script, &dst.to_string(), &port.to_string()],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts a long-running command in a host, output captured. `ip netns
    /// exec` execs the program, so the process id is the program's own.
    pub fn spawn(&self, index: usize, program: &str, args: &[&str]) -> Proc {
        let label = format!("{program} in {}", self.ns(index));
        Proc::start(&label, self.command(index, program, args))
    }

    /// `peer.py serve` on `ports` of host `index`; returns once it listens.
    pub fn serve(&self, index: usize, mode: Listen, ports: &[u16]) -> Proc {
        let flag = match mode {
            Listen::V4 => "--v4",
            Listen::Dual => "--dual",
            Listen::V6Only => "--v6only",
        };
        let mut args = vec![
            "-u".to_string(),
            PEER.to_string(),
            "serve".into(),
            flag.into(),
        ];
        args.extend(ports.iter().map(u16::to_string));
        let server = self.spawn(index, "python3", &as_strs(&args));
        if server.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_none() {
            panic!("peer.py serve {ports:?} not ready: {}", server.stderr());
        }
        server
    }

    /// `peer.py connect` from host `index` to `dst` on each of `ports`;
    /// returns once every connection is established. The connections stay
    /// open for `hold` (`None`: while the returned [`Client`] lives).
    pub fn connect(
        &self,
        index: usize,
        dst: IpAddr,
        ports: &[u16],
        hold: Option<Duration>,
    ) -> Client {
        let mut args = vec!["-u".to_string(), PEER.to_string(), "connect".into()];
        if let Some(hold) = hold {
            args.push("--hold".into());
            args.push(format!("{}", hold.as_secs_f64()));
        }
        args.push(dst.to_string());
        args.extend(ports.iter().map(u16::to_string));
        let proc = self.spawn(index, "python3", &as_strs(&args));
        let Some(lines) = proc.wait_for_lines(ports.len(), HELPER_TIMEOUT) else {
            panic!("peer.py connect {dst} {ports:?} failed: {}", proc.stderr());
        };
        let locals = lines.iter().map(|l| parse_local(l)).collect();
        Client { proc, locals }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut namespaces: Vec<&str> = self.hosts.iter().map(|h| h.ns.as_str()).collect();
        namespaces.push(&self.switch);
        for ns in namespaces {
            delete_namespace(ns);
        }
    }
}

/// Kills every process inside `ns`, then deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Deletes the namespaces of labs whose test process is gone (killed before
/// its labs could be dropped), so they do not pile up.
fn remove_stale_labs() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let owner = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = owner {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                delete_namespace(name);
            }
        }
    }
}

/// Runs `ip args...`; its stdout, or its stderr as the error.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(result: Result<String, String>) {
    if let Err(e) = result {
        panic!("lab setup failed: {e}");
    }
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `IP PORT` as `peer.py connect` prints it.
fn parse_local(line: &str) -> SocketAddr {
    let (ip, port) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("peer.py printed '{line}', not 'IP PORT'"));
    SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap())
}

// ---------------------------------------------------------------------------
// The agent

/// The flags of a plain detecting agent: procfs every second, nothing else.
pub const CORE_ARGS: &[&str] = &[
    "run",
    "--source",
    "procfs",
    "--interval",
    "1s",
    "--block",
    "none",
    "--metrics-addr",
    "off",
    "--state",
    "off",
];

/// The agent's readiness line on stderr: printed once its source is running
/// (for polling sources, once the first table has been read).
pub const READY: &str = "tcpwatch: watching";

/// Polls `probe` every 50 ms until it holds (true) or `timeout` passes
/// (false): for kernel state that changes asynchronously (a set element, a
/// counter), where there is no event to wait on.
pub fn within(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lines of `stderr` other than the readiness line: what the agent had
/// to say about something going wrong (or being skipped).
pub fn diagnostics(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.starts_with(READY)).collect()
}

/// How long start-up may take before a test gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Quiet time after the last expected line that proves nothing else is
/// printed: two polls at 1 s.
pub const SETTLE: Duration = Duration::from_millis(2100);

/// The agent under test, running in a lab host.
pub struct Agent {
    proc: Proc,
}

impl Agent {
    /// Starts the agent in host `index` with `args` and returns without
    /// waiting (for sources that need their own readiness check).
    pub fn spawn(lab: &Lab, index: usize, args: &[&str]) -> Agent {
        Agent {
            proc: lab.spawn(index, AGENT, args),
        }
    }

    /// Starts the agent in host `index` under `wrapper`, a command that
    /// ends by exec'ing the arguments after it (`unshare -m`, `sh -c '...;
    /// exec "$@"'`), so the agent keeps the process id [`Agent::pid`]
    /// reports; returns without waiting. For faults local to the agent
    /// (its own mount namespace, an LD_PRELOAD).
    pub fn spawn_wrapped(lab: &Lab, index: usize, wrapper: &[&str], args: &[&str]) -> Agent {
        let (program, before) = wrapper.split_first().expect("a wrapper command");
        let mut all = before.to_vec();
        all.push(AGENT);
        all.extend_from_slice(args);
        Agent {
            proc: lab.spawn(index, program, &all),
        }
    }

    /// [`Agent::spawn_wrapped`], then waits for the readiness line like
    /// [`Agent::start`].
    pub fn start_wrapped(lab: &Lab, index: usize, wrapper: &[&str], args: &[&str]) -> Agent {
        Agent::spawn_wrapped(lab, index, wrapper, args).ready()
    }

    /// Starts the agent in host `index` and returns once it says it is
    /// watching ([`READY`] on stderr); panics if it does not.
    pub fn start(lab: &Lab, index: usize, args: &[&str]) -> Agent {
        Agent::spawn(lab, index, args).ready()
    }

    /// [`Agent::start`] with extra environment variables (a `PATH` of
    /// wrappers for fault injection, say).
    pub fn start_with_env(lab: &Lab, index: usize, env: &[(&str, &str)], args: &[&str]) -> Agent {
        // Set by env(1) inside the namespace: a PATH given to `ip netns exec`
        // itself would have to hold `ip`. env execs the agent: same pid.
        let mut full: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        full.push(AGENT.to_string());
        full.extend(args.iter().map(|a| a.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let command = lab.command(index, "/usr/bin/env", &full);
        let label = format!("{AGENT} in {}", lab.ns(index));
        Agent {
            proc: Proc::start(&label, command),
        }
        .ready()
    }

    /// Returns the agent once it has printed [`READY`]; panics if it does
    /// not within [`START_TIMEOUT`].
    pub fn ready(mut self) -> Agent {
        let agent = &mut self;
        if !agent.proc.wait_for_stderr(READY, START_TIMEOUT) {
            let status = agent.proc.try_status();
            panic!(
                "agent not ready within {START_TIMEOUT:?} (exit: {status:?}); stderr: {}",
                agent.proc.stderr()
            );
        }
        self
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// See [`Proc::wait_for`].
    pub fn wait_for(&self, accept: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.proc.wait_for(accept, timeout)
    }

    /// Waits for an event line whose text after the timestamp is exactly
    /// `event`; panics with everything printed so far if it does not come.
    pub fn expect_event(&self, event: &str, timeout: Duration) -> String {
        let found = self.wait_for(|l| event_text(l) == Some(event), timeout);
        found.unwrap_or_else(|| {
            panic!(
                "no line '<time>: {event}' within {timeout:?}\nstdout: {:#?}\nstderr: {}",
                self.stdout_lines(),
                self.stderr()
            )
        })
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        self.proc.signal(name);
    }

    /// See [`Proc::wait_for_stderr`].
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> bool {
        self.proc.wait_for_stderr(text, timeout)
    }

    /// SIGKILL (no clean-up at all), then waits for the exit; all output.
    pub fn kill(self) -> Finished {
        self.proc.signal("KILL");
        self.proc.finish(Duration::from_secs(5))
    }

    /// SIGTERM, then waits (5 s at most) for the exit; all output.
    pub fn stop(self) -> Finished {
        self.proc.signal("TERM");
        self.proc.finish(Duration::from_secs(5))
    }
}

/// The text of an event line after its `<local time>: ` prefix, or `None`
/// when the line does not start with such a timestamp.
pub fn event_text(line: &str) -> Option<&str> {
    static STAMP_RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let stamp = STAMP_RE.get_or_init(|| Regex::new(STAMP).unwrap());
    stamp.find(line).map(|m| &line[m.end()..])
}

/// Text of a new-connection event (SocketAddr prints IPv6 in brackets, the
/// same canonical form as the agent).
pub fn new_connection(initiator: SocketAddr, acceptor: SocketAddr) -> String {
    format!("New connection: {initiator} -> {acceptor}")
}

/// Text of a port-scan event; `ports` ascending as the agent prints them.
pub fn port_scan(remote: IpAddr, local: IpAddr, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "Port scan detected: {remote} -> {local} on ports {}",
        ports.join(",")
    )
}

/// Asserts a clean stop (exit status 0) and that stdout is exactly
/// `expected` events, each behind a timestamp, in any order, and nothing
/// else. Returns the event texts in printed order for order checks.
pub fn assert_exact_events(finished: &Finished, expected: &[String]) -> Vec<String> {
    assert_eq!(
        finished.status.code(),
        Some(0),
        "agent did not exit 0 on SIGTERM ({}); stderr: {}",
        finished.status,
        finished.stderr
    );
    let mut events = Vec::new();
    for line in &finished.stdout {
        match event_text(line) {
            Some(text) => events.push(text.to_string()),
            None => panic!("stdout line without timestamp: '{line}'"),
        }
    }
    let mut got = events.clone();
    let mut want = expected.to_vec();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "stdout is not exactly the expected events\nstdout: {:#?}\nstderr: {}",
        finished.stdout, finished.stderr
    );
    events
}
