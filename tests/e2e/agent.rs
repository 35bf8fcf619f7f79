//! The agent under test: its sources, its command line ([`Args`], with the
//! quiet defaults of `tests/shared/args.rs`), the running process
//! ([`Agent`]) and the lines it prints.

pub use crate::args::{Args, AGENT};
use crate::lab::{closed_ports, filtered_ports, Lab, A, B};
use crate::prereq::{require_tracepoint_program, require_xdp_program};
use crate::proc::{Finished, Proc};
use regex::Regex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// The agent's readiness line on stderr: printed once its source is running
/// (for polling sources, once the first table has been read).
pub const READY: &str = "tcpwatch: watching";

/// How long start-up may take before a test gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Quiet time after the last expected line that proves nothing else is
/// printed: two polls at 1 s.
pub const SETTLE: Duration = Duration::from_millis(2100);

/// `^<local time>: ` in front of every text-format event line.
const STAMP: &str = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d: ";

// ---------------------------------------------------------------------------
// Sources and the command line

/// Where the agent gets its connection events (`--source`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    Procfs,
    Netlink,
    Pcap,
    Xdp,
    Tracepoint,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Procfs => "procfs",
            Source::Netlink => "netlink",
            Source::Pcap => "pcap",
            Source::Xdp => "xdp",
            Source::Tracepoint => "tracepoint",
        }
    }

    /// Whether this machine can run it; reports what is missing otherwise.
    pub fn available(self) -> bool {
        match self {
            Source::Xdp => require_xdp_program(),
            Source::Tracepoint => require_tracepoint_program(),
            _ => true,
        }
    }
}

impl Args {
    /// `run` with no flag at all: the agent's own defaults.
    pub fn bare() -> Args {
        Args { flags: Vec::new() }
    }

    /// [`Args::run`] with `source` watching a lab host: a packet source on
    /// its `eth0`; the tracepoint source, which sees every namespace of the
    /// machine, in the agent's own (`--netns self`).
    pub fn watching(source: Source) -> Args {
        let args = Args::run().source(source);
        match source {
            Source::Pcap | Source::Xdp => args.interface("eth0"),
            Source::Tracepoint => args.netns("self"),
            Source::Procfs | Source::Netlink => args,
        }
    }

    pub fn source(self, source: Source) -> Args {
        self.set("--source", source.name())
    }

    pub fn interface(self, name: &str) -> Args {
        self.set("--interface", name)
    }

    /// `--netns PATH` (repeatable: each call adds one).
    pub fn netns(self, path: impl ToString) -> Args {
        self.add("--netns", path)
    }

    pub fn interval(self, interval: &str) -> Args {
        self.set("--interval", interval)
    }

    /// `--block BACKEND` (`none`, `nftables`, `iptables`, `xdp`).
    pub fn block(self, backend: &str) -> Args {
        self.set("--block", backend)
    }

    pub fn block_ttl(self, ttl: &str) -> Args {
        self.set("--block-ttl", ttl)
    }

    /// `--metrics-addr ADDR` (or `off`).
    pub fn metrics(self, addr: impl ToString) -> Args {
        self.set("--metrics-addr", addr)
    }

    /// `--state PATH` (or `off`).
    pub fn state(self, path: impl AsRef<Path>) -> Args {
        self.set("--state", path.as_ref().display())
    }

    pub fn format(self, format: &str) -> Args {
        self.set("--format", format)
    }

    /// `--fleet URL` once more (several: a Redis Cluster's seeds).
    pub fn fleet(self, url: &str) -> Args {
        self.add("--fleet", url)
    }

    pub fn node_name(self, name: &str) -> Args {
        self.set("--node-name", name)
    }

    /// `--block-ttl-max DURATION`: a repeat offender's TTL doubles up to it.
    pub fn block_ttl_max(self, ttl: &str) -> Args {
        self.set("--block-ttl-max", ttl)
    }

    /// `--control PATH`: the agent's control socket (the quiet defaults
    /// have none).
    pub fn control(self, socket: &ControlSocket) -> Args {
        self.set("--control", socket.path.display())
    }
}

/// A control socket for one agent, in a temporary directory of its own,
/// and the commands that reach the agent through it (`tcpwatch status`,
/// `tcpwatch blocks`).
pub struct ControlSocket {
    _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

impl ControlSocket {
    #[allow(clippy::new_without_default)]
    pub fn new() -> ControlSocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tcpwatch.sock");
        ControlSocket { _dir: dir, path }
    }

    /// `ARGS --control PATH`: the command line of a subcommand that asks
    /// the agent.
    pub fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<String> {
        let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        argv.push("--control".into());
        argv.push(self.path.display().to_string());
        argv
    }

    /// `tcpwatch ARGS --control PATH` in host `index`, to its end.
    pub fn run(&self, lab: &Lab, index: usize, args: &[&str]) -> std::process::Output {
        let argv = self.argv(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        lab.run(index, AGENT, &argv)
    }

    /// [`ControlSocket::run`], which must succeed with nothing on stderr:
    /// its stdout.
    pub fn output(&self, lab: &Lab, index: usize, args: &[&str]) -> String {
        let out = self.run(lab, index, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "tcpwatch {args:?}: {}; stderr: {stderr}",
            out.status
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

// ---------------------------------------------------------------------------
// The running agent

/// The agent under test, running in a lab host (or started otherwise and
/// handed over with [`Agent::of`]).
pub struct Agent {
    proc: Proc,
    /// Ends of stdout lines that are not the test's business (readiness
    /// probes, the test's own scrapes): left out of what the agent printed
    /// when it is stopped.
    ignored: Vec<String>,
}

impl Agent {
    /// An agent the test started itself (under setpriv, in another mount
    /// namespace...); returns without waiting.
    pub fn of(proc: Proc) -> Agent {
        Agent {
            proc,
            ignored: Vec::new(),
        }
    }

    /// Starts the agent in host `index` and returns without waiting (for
    /// sources that need their own readiness check).
    pub fn spawn(lab: &Lab, index: usize, args: &Args) -> Agent {
        Agent::spawn_under(lab, index, &[], args)
    }

    /// Starts the agent in host `index` and returns once it says it is
    /// watching ([`READY`] on stderr); panics if it does not.
    pub fn start(lab: &Lab, index: usize, args: &Args) -> Agent {
        Agent::spawn(lab, index, args).ready()
    }

    /// Starts the agent in host `index` under `wrapper`, a command that
    /// ends by exec'ing the arguments after it (`unshare -m`, `sh -c '...;
    /// exec "$@"'`, `env VAR=...`), so the agent keeps the process id
    /// [`Agent::pid`] reports; returns without waiting. For faults local to
    /// the agent (its own mount namespace, an LD_PRELOAD).
    pub fn spawn_under(lab: &Lab, index: usize, wrapper: &[&str], args: &Args) -> Agent {
        let argv = args.argv();
        let mut all = wrapper.to_vec();
        all.push(AGENT);
        all.extend(argv.iter().map(String::as_str));
        let (program, rest) = all.split_first().expect("a program");
        Agent::of(lab.spawn(index, program, rest))
    }

    /// [`Agent::spawn_under`], then waits for the readiness line.
    pub fn start_under(lab: &Lab, index: usize, wrapper: &[&str], args: &Args) -> Agent {
        Agent::spawn_under(lab, index, wrapper, args).ready()
    }

    /// [`Agent::start`] with extra environment variables (a `PATH` of
    /// wrappers for fault injection, say), set by env(1) inside the
    /// namespace: a PATH given to `ip netns exec` itself would have to hold
    /// `ip`. env execs the agent: same pid.
    pub fn start_with_env(lab: &Lab, index: usize, env: &[(&str, &str)], args: &Args) -> Agent {
        let set: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut wrapper = vec!["/usr/bin/env"];
        wrapper.extend(set.iter().map(String::as_str));
        Agent::start_under(lab, index, &wrapper, args)
    }

    /// Starts `source` on host A with [`Args::watching`] and returns once it
    /// sees traffic, by the means that source allows:
    /// - a polling source has read its first table: [`READY`];
    /// - xdp has attached its program (its readiness line, within 10 s);
    /// - pcap has opened its capture, but the capture may not see packets
    ///   yet: A sends SYNs to a closed port of B (host 1) until the agent
    ///   prints one. These outbound lines never count towards a scan, and
    ///   are left out of what [`Agent::stop`] returns.
    pub fn watching(lab: &Lab, source: Source) -> Agent {
        Agent::watching_with(lab, source, &Args::watching(source))
    }

    /// [`Agent::watching`] with `args` (built on [`Args::watching`]).
    pub fn watching_with(lab: &Lab, source: Source, args: &Args) -> Agent {
        let agent = Agent::spawn(lab, A, args);
        match source {
            // The tracepoint source says it watches once it is attached.
            Source::Procfs | Source::Netlink | Source::Tracepoint => agent.ready(),
            Source::Xdp => {
                let attached =
                    agent.wait_for_stderr("watching: xdp on eth0", Duration::from_secs(10));
                assert!(
                    attached,
                    "agent did not attach within 10 s; stderr: {}",
                    agent.stderr()
                );
                agent
            }
            Source::Pcap => agent.seeing(lab, A, B),
        }
    }

    /// Starts a `pcap` agent with `args` in host `index` and returns once
    /// it sees traffic: `index` sends SYNs to a closed port of host `peer`
    /// until the agent prints one (see [`Agent::watching`]).
    pub fn start_pcap(lab: &Lab, index: usize, peer: usize, args: &Args) -> Agent {
        Agent::spawn(lab, index, args).seeing(lab, index, peer)
    }

    /// Returns the pcap agent of host `index` once it prints an outbound
    /// SYN of `index` to the discard port (closed) of `peer`; those lines
    /// are left out of what [`Agent::stop`] returns.
    fn seeing(self, lab: &Lab, index: usize, peer: usize) -> Agent {
        let probe = format!(" -> {}:9", lab.v4(peer));
        for _ in 0..50 {
            lab.attempts(index, lab.v4(peer).into(), &[9], 0.2);
            let seen = |l: &str| event_text(l).is_some_and(|t| t.ends_with(&probe));
            if self.wait_for(seen, Duration::from_millis(200)).is_some() {
                return self.ignoring(probe);
            }
        }
        panic!(
            "the pcap agent never saw its probe SYN\nstdout: {:#?}\nstderr: {}",
            self.stdout_lines(),
            self.stderr()
        );
    }

    /// Returns the agent once it has printed [`READY`]; panics if it does
    /// not within [`START_TIMEOUT`].
    pub fn ready(mut self) -> Agent {
        if !self.proc.wait_for_stderr(READY, START_TIMEOUT) {
            let status = self.proc.try_status();
            panic!(
                "agent not ready within {START_TIMEOUT:?} (exit: {status:?}); stderr: {}",
                self.proc.stderr()
            );
        }
        self
    }

    /// Leaves the stdout lines ending in `suffix` out of what [`Agent::stop`]
    /// and [`Agent::kill`] return.
    pub fn ignoring(mut self, suffix: String) -> Agent {
        self.ignored.push(suffix);
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

    /// Waits for each of `expected` in turn (`timeout` each), then `quiet`
    /// more, stops the agent and checks that it printed exactly these
    /// events and exited 0. Returns the events in printed order.
    pub fn expect_exactly(
        self,
        expected: &[String],
        timeout: Duration,
        quiet: Duration,
    ) -> Vec<String> {
        for event in expected {
            self.expect_event(event, timeout);
        }
        std::thread::sleep(quiet);
        assert_exact_events(&self.stop(), expected)
    }

    /// The line (whole, with its timestamp) whose event text `scan`
    /// matches, waited for up to `timeout` while `scanner` (nmap, masscan)
    /// runs, and how long after `started` it came. The scanner must then
    /// finish, successfully, and the line must have come.
    pub fn scan_during(
        &self,
        scanner: Proc,
        scan: &Regex,
        timeout: Duration,
        started: Instant,
    ) -> (String, Duration) {
        let is_scan = |l: &str| event_text(l).is_some_and(|t| scan.is_match(t));
        let found = self.wait_for(is_scan, timeout);
        let took = started.elapsed();
        let ran = scanner.finish(Duration::from_secs(120));
        assert!(
            ran.status.success(),
            "scanner: {}{}",
            ran.stderr,
            ran.stdout.join("\n")
        );
        let found = found.unwrap_or_else(|| {
            panic!(
                "no scan line within {timeout:?}\nstdout: {:#?}\nstderr: {}\nscanner: {}",
                self.stdout_lines(),
                self.stderr(),
                ran.stdout.join("\n")
            )
        });
        (found, took)
    }

    /// After `quiet`, stops the agent, which must exit 0 having printed
    /// exactly one scan line; returns the event texts it printed.
    pub fn stop_after_one_scan(self, quiet: Duration) -> Vec<String> {
        std::thread::sleep(quiet);
        let finished = self.stop();
        assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
        let events = event_texts(&finished.stdout);
        let scans = events.iter().filter(|e| e.starts_with("Port scan")).count();
        assert_eq!(scans, 1, "{events:#?}");
        events
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// The stderr lines containing `text`.
    pub fn stderr_lines(&self, text: &str) -> Vec<String> {
        let stderr = self.stderr();
        let lines = stderr.lines().filter(|l| l.contains(text));
        lines.map(str::to_string).collect()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`).
    pub fn signal(&self, name: &str) {
        self.proc.signal(name);
    }

    /// See [`Proc::wait_for_stderr`].
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> bool {
        self.proc.wait_for_stderr(text, timeout)
    }

    /// Waits for stderr to contain `text`; panics with all of stderr if it
    /// does not within `timeout`.
    pub fn expect_stderr(&self, text: &str, timeout: Duration) {
        if !self.wait_for_stderr(text, timeout) {
            panic!(
                "no '{text}' on stderr within {timeout:?}; stderr: {}",
                self.stderr()
            );
        }
    }

    /// SIGKILL (no clean-up at all), then waits for the exit; all output.
    pub fn kill(self) -> Finished {
        self.end(Some("KILL"), Duration::from_secs(5))
    }

    /// SIGTERM, then waits (5 s at most) for the exit; all output.
    pub fn stop(self) -> Finished {
        self.stop_within(Duration::from_secs(5))
    }

    /// SIGTERM, then waits `timeout` at most for the exit; all output.
    pub fn stop_within(self, timeout: Duration) -> Finished {
        self.end(Some("TERM"), timeout)
    }

    /// Waits `timeout` at most for the agent to exit by itself (as it must
    /// on a fatal error); all output.
    pub fn exit_within(self, timeout: Duration) -> Finished {
        self.end(None, timeout)
    }

    /// Sends `signal`, if any, then waits `timeout` at most for the exit;
    /// all output but the ignored lines.
    fn end(self, signal: Option<&str>, timeout: Duration) -> Finished {
        if let Some(signal) = signal {
            self.proc.signal(signal);
        }
        let mut finished = self.proc.finish(timeout);
        let ignored = &self.ignored;
        finished
            .stdout
            .retain(|l| !ignored.iter().any(|end| l.ends_with(end.as_str())));
        finished
    }
}

// ---------------------------------------------------------------------------
// What the agent prints

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

/// The text of an event line after its `<local time>: ` prefix, or `None`
/// when the line does not start with such a timestamp.
pub fn event_text(line: &str) -> Option<&str> {
    static STAMP_RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let stamp = STAMP_RE.get_or_init(|| Regex::new(STAMP).unwrap());
    stamp.find(line).map(|m| &line[m.end()..])
}

/// The event texts of `lines`, each of which must carry a timestamp.
pub fn event_texts(lines: &[String]) -> Vec<String> {
    let text = |l: &String| {
        let text = event_text(l).unwrap_or_else(|| panic!("stdout line without timestamp: '{l}'"));
        text.to_string()
    };
    lines.iter().map(text).collect()
}

/// `ip:port`.
pub fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
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

/// A regex of a scan line of `scanner` against `target`: four ports
/// (captured), and `kind` at the end (`None` for a SYN scan, whose line has
/// no suffix).
pub fn scan_line(scanner: IpAddr, target: IpAddr, kind: Option<&str>) -> Regex {
    let suffix = kind.map_or(String::new(), |k| format!(r" \({}\)", regex::escape(k)));
    Regex::new(&format!(
        r"^Port scan detected: {} -> {} on ports (\d+(?:,\d+){{3}}){suffix}$",
        regex::escape(&scanner.to_string()),
        regex::escape(&target.to_string())
    ))
    .unwrap()
}

/// The ports of the scan line `text`, matched by `line` (a [`scan_line`]).
pub fn ports_of(line: &Regex, text: &str) -> Vec<u16> {
    line.captures(text).unwrap()[1]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The event texts apart from scan lines: each must be a `New connection`
/// from `scanner` to `target`; their destination ports with how often each
/// came.
pub fn attempts(events: &[String], scanner: IpAddr, target: IpAddr) -> HashMap<u16, usize> {
    let mut ports = HashMap::new();
    for event in events.iter().filter(|e| !e.starts_with("Port scan")) {
        let rest = event
            .strip_prefix("New connection: ")
            .unwrap_or_else(|| panic!("unexpected line: {event}\nall: {events:#?}"));
        let (from, to) = rest.split_once(" -> ").expect("initiator -> acceptor");
        let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
        assert_eq!((from.ip(), to.ip()), (scanner, target), "{event}");
        *ports.entry(to.port()).or_insert(0) += 1;
    }
    ports
}

/// Text of a block event.
pub fn blocked(ip: IpAddr, ttl: &str, backend: &str) -> String {
    format!("Blocked {ip} for {ttl} via {backend}")
}

/// A full-speed nmap `scan` (`-sS`, or `-sF` for a FIN scan) of ports
/// 1-1000 from `from` at `host` against an agent on `lab`'s host A that
/// blocks in the kernel via `backend` with a 10 minute TTL and the default
/// rule (more than `n` ports): waits for the block line, asserts the scan
/// is printed once and that at most `after_threshold` probes past the
/// first `n` were answered (for a SYN scan, every port not filtered; for a
/// FIN scan, every port closed: a dropped FIN gets no RST). Prints the
/// figure under `label`; returns the scanner's and the host's addresses.
pub fn decided_scan(
    lab: &Lab,
    agent: &Agent,
    (from, v6, scan): (usize, bool, &str),
    backend: &str,
    (n, after_threshold): (usize, usize),
    label: &str,
) -> (IpAddr, IpAddr) {
    let (scanner, host) = (lab.addr(from, v6), lab.addr(A, v6));
    let report = lab.fast_scan(from, host, "1-1000", scan);
    agent.expect_event(&blocked(scanner, "10m", backend), Duration::from_secs(10));
    let scan_prefix = format!("Port scan detected: {scanner} -> {host} on ports ");
    let texts = event_texts(&agent.stdout_lines());
    let scans = texts.iter().filter(|t| t.starts_with(&scan_prefix)).count();
    assert_eq!(scans, 1, "{texts:#?}");
    let answered = if scan == "-sS" {
        1000 - filtered_ports(&report)
    } else {
        closed_ports(&report)
    };
    eprintln!(
        "{label} ({}, {scan}): {answered} of 1000 probes answered, {} after the threshold",
        if v6 { "IPv6" } else { "IPv4" },
        answered.saturating_sub(n)
    );
    assert!(
        answered <= n + after_threshold,
        "{answered} probes answered (the first {n} are before the threshold):\n{report}"
    );
    (scanner, host)
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
    let events = event_texts(&finished.stdout);
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
