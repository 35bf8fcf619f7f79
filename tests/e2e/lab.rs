//! The lab: a small network made of namespaces. One "switch" namespace holds
//! a bridge; each of N host namespaces has an `eth0` veth plugged into it,
//! an IPv4 address `10.A.B.n/24` and an IPv6 address `fd00:A:B::n/64`
//! (n = host index + 1). Names and subnets carry the test process id and a
//! counter, so tests run in parallel. Dropping the lab (also during a
//! panic) kills every process inside its namespaces and deletes them.
//!
//! In a host one can run a command ([`Lab::run`], [`Lab::output`]), start a
//! long-running one with its output captured ([`Lab::spawn`] -> [`Proc`]),
//! and make traffic with the helper `tests/peer.py` ([`Lab::serve`],
//! [`Lab::connect`], [`Lab::attempts`], [`Lab::short_lived`]).

use crate::prereq::{missing_prerequisite, require_root, require_tools};
use crate::proc::{stdout_of, Proc};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// The traffic helper.
pub const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer.py");

/// How long a helper may take to get ready or print what it must.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Host A of a lab, where the agent under test runs.
pub const A: usize = 0;
/// Host B: a peer, usually the scanner.
pub const B: usize = 1;
/// Host C: a third host, usually a bystander.
pub const C: usize = 2;

/// Prefix of every namespace a lab creates.
const PREFIX: &str = "twlab";

/// One host of a lab.
#[derive(Debug, Clone)]
struct Host {
    ns: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
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

// ---------------------------------------------------------------------------
// Turns: all the tests of this binary share one machine

/// Held by every running test that may be disturbed by, or disturb, a test
/// that must run alone: most tests hold it shared; a flood, a race against
/// nmap's first burst or an image build holds it alone.
static MACHINE: RwLock<()> = RwLock::new(());

/// A test's turn on the machine; released when dropped.
pub enum Turn {
    Shared {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Alone {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

impl Turn {
    /// Runs beside other shared turns.
    pub fn shared() -> Turn {
        let _guard = MACHINE.read().unwrap_or_else(|e| e.into_inner());
        Turn::Shared { _guard }
    }

    /// Waits until no other test runs, and keeps it so.
    pub fn alone() -> Turn {
        let _guard = MACHINE.write().unwrap_or_else(|e| e.into_inner());
        Turn::Alone { _guard }
    }
}

// ---------------------------------------------------------------------------
// The lab network

/// A bridge and N hosts, each in its own namespace. See the module docs.
pub struct Lab {
    switch: String,
    hosts: Vec<Host>,
    // Dropped after the namespaces are gone (Drop runs before the fields).
    _turn: Turn,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds a lab of `hosts` hosts beside other tests, or returns `None`
    /// after [`missing_prerequisite`] when this machine cannot (not root, no
    /// `ip` or `python3`, namespaces refused). Panics if setup fails
    /// otherwise.
    pub fn new(hosts: usize) -> Option<Lab> {
        Lab::build(hosts, Turn::shared)
    }

    /// [`Lab::new`] when `tools` run too (see [`require_tools`]).
    pub fn needing(tools: &[&str], hosts: usize) -> Option<Lab> {
        if !require_tools(tools) {
            return None;
        }
        Lab::new(hosts)
    }

    /// [`Lab::needing`], the lab then used by this test alone: no other
    /// test of this binary runs until it is dropped.
    pub fn alone(tools: &[&str], hosts: usize) -> Option<Lab> {
        if !require_tools(tools) {
            return None;
        }
        Lab::build(hosts, Turn::alone)
    }

    fn build(hosts: usize, turn: fn() -> Turn) -> Option<Lab> {
        if !require_root() || !require_tools(&["ip", "python3"]) {
            return None;
        }
        let turn = turn();
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
            _turn: turn,
        };
        if let Err(e) = ip(&["netns", "add", &lab.switch]) {
            missing_prerequisite(&format!("cannot create a network namespace: {e}"));
            return None;
        }
        let sw = lab.switch.as_str();
        ip_ok(&["-n", sw, "link", "set", "lo", "up"]);
        ip_ok(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", sw, "link", "set", "br0", "up"]);
        for index in 0..hosts {
            let n = index as u32 + 1;
            let host = Host {
                ns: format!("{name}-h{n}"),
                v4: Ipv4Addr::new(10, a as u8, b as u8, n as u8),
                v6: format!("fd00:{a:x}:{b:x}::{n:x}").parse().unwrap(),
            };
            // Pushed first: Drop deletes it even if the setup below panics.
            lab.hosts.push(host.clone());
            ip_ok(&["netns", "add", &host.ns]);
            ip_ok(&["-n", &host.ns, "link", "set", "lo", "up"]);
            lab.plug(index);
        }
        Some(lab)
    }

    /// Creates host `index`'s `eth0` (a veth whose other end `pN` is
    /// created inside the switch namespace, so nothing ever appears in the
    /// root namespace), plugs it into the bridge, addresses it, then sets it
    /// up: addresses first, as a network manager would, since a source may
    /// bind to the interface the moment it is up.
    pub fn plug(&self, index: usize) {
        let (sw, ns) = (self.switch.as_str(), self.ns(index));
        let port = format!("p{}", index + 1);
        ip_ok(&[
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip_ok(&["-n", sw, "link", "set", &port, "master", "br0", "up"]);
        self.readdress(index);
        ip_ok(&["-n", ns, "link", "set", "eth0", "up"]);
    }

    /// Deletes host `index`'s `eth0` (by deleting its bridge port, the
    /// other end of the veth pair).
    pub fn unplug(&self, index: usize) {
        let port = format!("p{}", index + 1);
        ip_ok(&["-n", &self.switch, "link", "del", &port]);
    }

    /// Puts host `index`'s addresses (back) on its `eth0` (IPv4 ones survive
    /// a down/up, the kernel drops the IPv6 ones) and lets the other hosts
    /// forget its old MAC address.
    pub fn readdress(&self, index: usize) {
        let ns = self.ns(index);
        let (v4, v6) = (
            format!("{}/24", self.v4(index)),
            format!("{}/64", self.v6(index)),
        );
        ip_ok(&["-n", ns, "addr", "replace", &v4, "dev", "eth0"]);
        // nodad: the address is usable at once instead of after ~1 s of DAD.
        ip_ok(&["-n", ns, "addr", "replace", &v6, "dev", "eth0", "nodad"]);
        for other in (0..self.hosts.len()).filter(|&o| o != index) {
            ip_ok(&["-n", self.ns(other), "neigh", "flush", "all"]);
        }
    }

    pub fn v4(&self, index: usize) -> Ipv4Addr {
        self.hosts[index].v4
    }

    pub fn v6(&self, index: usize) -> Ipv6Addr {
        self.hosts[index].v6
    }

    /// Host `index`'s IPv6 address when `v6`, else its IPv4 one.
    pub fn addr(&self, index: usize, v6: bool) -> IpAddr {
        if v6 {
            self.v6(index).into()
        } else {
            self.v4(index).into()
        }
    }

    /// Host `index`'s address of the family of `like`.
    pub fn addr_like(&self, index: usize, like: IpAddr) -> IpAddr {
        self.addr(index, like.is_ipv6())
    }

    pub fn ns(&self, index: usize) -> &str {
        &self.hosts[index].ns
    }

    /// The switch namespace, which holds the bridge and its ports `pN`
    /// (the other ends of the hosts' `eth0`).
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

    /// The stdout of a command run in a host, which must succeed.
    pub fn output(&self, index: usize, program: &str, args: &[&str]) -> String {
        let mut command = self.command(index, program, args);
        command.stdin(Stdio::null());
        stdout_of(command, &format!("{program} {args:?}"))
    }

    /// Starts a long-running command in a host, output captured. `ip netns
    /// exec` execs the program, so the process id is the program's own.
    pub fn spawn(&self, index: usize, program: &str, args: &[&str]) -> Proc {
        let label = format!("{program} in {}", self.ns(index));
        Proc::start(&label, self.command(index, program, args))
    }

    /// `curl URL` from host `index`: (HTTP status, body); the request itself
    /// must succeed.
    pub fn http_get(&self, index: usize, url: &str) -> (u16, String) {
        let text = self.output(index, "curl", &["-sS", "-w", "\n%{http_code}", url]);
        let (body, code) = text.rsplit_once('\n').expect("body and code");
        let code = code.trim().parse().expect("an HTTP status");
        (code, body.to_string())
    }

    /// The lines of `ip -d link show eth0` in host `index` that speak of
    /// XDP: the link line when a program is attached, and its `prog/xdp`.
    pub fn xdp_lines(&self, index: usize) -> Vec<String> {
        let out = self.output(index, "ip", &["-d", "link", "show", "eth0"]);
        out.lines()
            .filter(|l| l.contains("xdp"))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// The `prog/xdp` lines of [`Lab::xdp_lines`]: the programs attached.
    pub fn xdp_programs(&self, index: usize) -> Vec<String> {
        let lines = self.xdp_lines(index).into_iter();
        lines.filter(|l| l.starts_with("prog/xdp")).collect()
    }

    /// A fast nmap SYN scan (`-sS`, no retries, a 50 ms round-trip
    /// timeout) from host `from` of `target`'s `ports` (`"1-1000"`), over
    /// `target`'s family; nmap must succeed. Returns nmap's report (see
    /// [`filtered_ports`]).
    pub fn fast_syn_scan(&self, from: usize, target: IpAddr, ports: &str) -> String {
        self.fast_scan(from, target, ports, "-sS")
    }

    /// [`Lab::fast_syn_scan`] with another of nmap's scan types (`-sF`,
    /// `-sN`, `-sX`).
    pub fn fast_scan(&self, from: usize, target: IpAddr, ports: &str, scan: &str) -> String {
        let target_text = target.to_string();
        let mut args = vec![
            scan,
            "-n",
            "-Pn",
            "-p",
            ports,
            "--max-retries",
            "0",
            "--max-rtt-timeout",
            "50ms",
        ];
        if target.is_ipv6() {
            args.push("-6");
        }
        args.push(&target_text);
        self.output(from, "nmap", &args)
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

    /// `peer.py serve` on `ports` of host `index`; returns once it listens.
    pub fn serve(&self, index: usize, mode: Listen, ports: &[u16]) -> Proc {
        let flag = match mode {
            Listen::V4 => "--v4",
            Listen::Dual => "--dual",
            Listen::V6Only => "--v6only",
        };
        let server = self.peer(index, &["serve", flag], ports);
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
        let (dst_text, hold) = (dst.to_string(), hold.map(|h| h.as_secs_f64().to_string()));
        let mut args = vec!["connect"];
        if let Some(hold) = &hold {
            args.extend(["--hold", hold]);
        }
        args.push(&dst_text);
        let proc = self.peer(index, &args, ports);
        let Some(lines) = proc.wait_for_lines(ports.len(), HELPER_TIMEOUT) else {
            panic!("peer.py connect {dst} {ports:?} failed: {}", proc.stderr());
        };
        let locals = lines.iter().map(|l| parse_local(l)).collect();
        Client { proc, locals }
    }

    /// `peer.py attempt`: one connection attempt from host `index` to `dst`
    /// on each of `ports`, `timeout` seconds each (refused or timed out is
    /// fine: the SYN is the attempt); the local port of each, in order.
    pub fn attempts(&self, index: usize, dst: IpAddr, ports: &[u16], timeout: f64) -> Vec<u16> {
        let (timeout, dst) = (timeout.to_string(), dst.to_string());
        let args = ["attempt", "--timeout", &timeout, &dst];
        let done = self
            .peer(index, &args, ports)
            .finish(Duration::from_secs(60));
        assert!(done.status.success(), "peer.py attempt: {}", done.stderr);
        assert_eq!(done.stdout.len(), ports.len(), "{:?}", done.stdout);
        let port = |l: &String| l.trim().parse().expect("a port");
        done.stdout.iter().map(port).collect()
    }

    /// `peer.py short`: `count` connections from host `index` to `dst`,
    /// each closed at once, `gap` seconds apart; returns once all are made
    /// (30 s at most), with the local end of each, in order.
    pub fn short_lived(
        &self,
        index: usize,
        dst: SocketAddr,
        count: u16,
        gap: f64,
    ) -> Vec<SocketAddr> {
        let (gap, ip) = (gap.to_string(), dst.ip().to_string());
        let args = ["short", "--gap", &gap, &ip];
        let client = self.peer(index, &args, &[dst.port(), count]);
        let done = client.finish(Duration::from_secs(30));
        assert!(done.status.success(), "client failed: {}", done.stderr);
        done.stdout.iter().map(|l| parse_local(l)).collect()
    }

    /// `python3 -u peer.py ARGS... NUMBERS...` in host `index`.
    fn peer(&self, index: usize, args: &[&str], numbers: &[u16]) -> Proc {
        let numbers: Vec<String> = numbers.iter().map(u16::to_string).collect();
        let mut all = vec!["-u", PEER];
        all.extend(args);
        all.extend(numbers.iter().map(String::as_str));
        self.spawn(index, "python3", &all)
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

/// Runs `ip args...`, which must succeed.
pub fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// `IP PORT` as `peer.py` prints it.
pub fn parse_local(line: &str) -> SocketAddr {
    let (ip, port) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("peer.py printed '{line}', not 'IP PORT'"));
    SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap())
}

/// How many ports an nmap report shows filtered (no answer): the summary's
/// `N filtered tcp ports` plus the ports it lists one by one as filtered.
pub fn filtered_ports(report: &str) -> usize {
    ports_in_state(report, "filtered")
}

/// How many ports an nmap report shows closed (a RST came back), counted
/// as [`filtered_ports`] counts the filtered.
pub fn closed_ports(report: &str) -> usize {
    ports_in_state(report, "closed")
}

fn ports_in_state(report: &str, state: &str) -> usize {
    let re = regex::Regex::new(&format!(r"(\d+) {state} tcp ports")).unwrap();
    let listed = report
        .lines()
        .filter(|l| l.contains("/tcp") && l.contains(&format!(" {state} ")))
        .count();
    re.captures(report).map_or(0, |c| c[1].parse().unwrap()) + listed
}
