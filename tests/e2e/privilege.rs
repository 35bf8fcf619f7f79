//! Least privilege: the agent runs as uid 65534 under `setpriv` in host A,
//! feature by feature, with exactly the capabilities the table in
//! docs/privileges.md lists, and
//! - works: reports C's connection, blocks B's scan in the kernel, serves
//!   metrics on a low port;
//! - holds nothing else: /proc/PID/status shows a non-root uid, CapEff =
//!   CapPrm = what the features need, CapAmb = what the firewall tools need,
//!   NoNewPrivs;
//! - with one capability fewer, says which feature needs which capability
//!   in one line: fatal (exit 1) for a source or the metrics port, a single
//!   warning for blocking, which then only detects.
//!
//! The systemd unit's user and capability settings are also applied with
//! `setpriv` (see `systemd_unit_privileges`), with and without
//! CAP_NET_ADMIN; `systemd.rs` runs the unit itself under a real systemd
//! (PID 1 of a container), hardening directives included.

use crate::agent::*;
use crate::inspect::proc_status;
use crate::lab::*;
use crate::prereq::require_tools;
use crate::proc::Proc;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const PORT: u16 = 8000;
const SCAN_PORTS: [u16; 4] = [8001, 8002, 8003, 8004];
const EVENT: Duration = Duration::from_secs(6);
/// The unprivileged user of these tests (nobody).
const NOBODY: &str = "65534";

/// Capability numbers of the names setpriv takes.
fn bit(cap: &str) -> u64 {
    let n = match cap {
        "dac_override" => 1,
        "dac_read_search" => 2,
        "net_bind_service" => 10,
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("unknown capability {other}"),
    };
    1 << n
}

/// A capability set as /proc/PID/status prints it.
fn hex(caps: &[&str]) -> String {
    format!("{:016x}", caps.iter().map(|c| bit(c)).sum::<u64>())
}

/// `-all,+a,+b` for setpriv: exactly these.
fn setpriv_caps(caps: &[&str]) -> String {
    let mut list = vec!["-all".to_string()];
    list.extend(caps.iter().map(|c| format!("+{c}")));
    list.join(",")
}

/// How the agent is started: as `uid`, holding `caps` (inheritable and
/// ambient, as systemd's AmbientCapabilities does), the bounding set
/// limited to them.
struct Privs<'a> {
    uid: &'a str,
    caps: &'a [&'a str],
    no_new_privs: bool,
    /// Leave the bounding set alone (file capabilities come from it).
    keep_bounding: bool,
    binary: &'a str,
    env: &'a [(&'a str, &'a str)],
}

impl<'a> Privs<'a> {
    fn nobody(caps: &'a [&'a str]) -> Self {
        Privs {
            uid: NOBODY,
            caps,
            no_new_privs: false,
            keep_bounding: false,
            binary: AGENT,
            env: &[],
        }
    }

    fn command(&self, lab: &Lab, argv: &[String]) -> Command {
        let caps = setpriv_caps(self.caps);
        let mut setpriv = vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.uid),
            "--clear-groups".into(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
        ];
        if !self.keep_bounding {
            setpriv.push(format!("--bounding-set={caps}"));
        }
        if self.no_new_privs {
            setpriv.push("--no-new-privs".into());
        }
        setpriv.push(self.binary.into());
        setpriv.extend(argv.iter().cloned());
        let setpriv: Vec<&str> = setpriv.iter().map(String::as_str).collect();
        let mut command = lab.command(A, "setpriv", &setpriv);
        command.current_dir("/");
        command.envs(self.env.iter().copied());
        command
    }

    /// Starts the agent with `argv` and waits for its readiness line.
    fn start_argv(&self, lab: &Lab, argv: &[String]) -> Agent {
        let agent = Agent::of(Proc::start("agent", self.command(lab, argv)));
        assert!(
            agent.wait_for_stderr(READY, START_TIMEOUT),
            "agent as uid {} with {:?} not ready: {}",
            self.uid,
            self.caps,
            agent.stderr()
        );
        agent
    }

    fn start(&self, lab: &Lab, args: &Args) -> Agent {
        self.start_argv(lab, &args.argv())
    }

    /// Runs an agent that must refuse to start; its stderr.
    fn refused(&self, lab: &Lab, args: &Args) -> String {
        let agent = Agent::of(Proc::start("agent", self.command(lab, &args.argv())));
        let finished = agent.exit_within(START_TIMEOUT);
        assert_eq!(
            finished.status.code(),
            Some(1),
            "with {:?}: {}",
            self.caps,
            finished.stderr
        );
        finished.stderr
    }
}

/// `run` with test settings: the agent's own source and blocking unless
/// set, 1 s polls and 30 s blocks, no metrics server, no state file, no
/// control socket.
fn args() -> Args {
    let quiet = Args::bare().interval("1s").block_ttl("30s");
    quiet.metrics("off").state("off").set("--control", "off")
}

fn lab() -> Option<Lab> {
    Lab::needing(&["setpriv", "nft", "ipset", "iptables"], 3)
}

/// The running agent is `uid`, holds exactly `keep` (effective and
/// permitted) and `ambient` (inheritable and ambient), and cannot gain more.
fn assert_holds(agent: &Agent, uid: &str, keep: &[&str], ambient: &[&str]) {
    let status = proc_status(agent.pid());
    let uids = [uid; 4].join(" ");
    let (keep, ambient) = (hex(keep), hex(ambient));
    let want = [
        ("Uid", uids.as_str()),
        ("CapEff", keep.as_str()),
        ("CapPrm", keep.as_str()),
        ("CapInh", ambient.as_str()),
        ("CapAmb", ambient.as_str()),
        ("NoNewPrivs", "1"),
    ];
    for (field, value) in want {
        assert_eq!(
            status.get(field).map(String::as_str),
            Some(value),
            "{field} of the agent; stderr: {}",
            agent.stderr()
        );
    }
}

/// C connects to A until the agent reports it (a real-time source may miss
/// the first SYN while its capture settles); returns the line's text.
fn expect_connection(lab: &Lab, agent: &Agent) -> String {
    let host: IpAddr = lab.v4(A).into();
    for _ in 0..3 {
        let client = lab.connect(C, host, &[PORT], None);
        let line = new_connection(client.locals[0], at(host, PORT));
        if agent
            .wait_for(|l| event_text(l) == Some(line.as_str()), EVENT)
            .is_some()
        {
            return line;
        }
    }
    panic!(
        "no connection reported: {:?} {}",
        agent.stdout_lines(),
        agent.stderr()
    );
}

/// B scans A's four ports; waits for the scan line and, if `backend` is
/// given, the `Blocked` line. Returns the connections (held open).
fn scan(lab: &Lab, agent: &Agent, backend: Option<&str>) -> Client {
    let (scanner, host): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(A).into());
    let client = lab.connect(B, host, &SCAN_PORTS, None);
    agent.expect_event(&port_scan(scanner, host, &SCAN_PORTS), EVENT);
    if let Some(backend) = backend {
        agent.expect_event(&blocked(scanner, "30s", backend), EVENT);
    }
    client
}

/// The agent's diagnostics are exactly `lines`.
fn assert_diagnostics(agent: &Agent, lines: &[String]) {
    let stderr = agent.stderr();
    assert_eq!(diagnostics(&stderr), lines, "stderr: {stderr}");
}

fn start_servers(lab: &Lab) -> Proc {
    let mut ports = vec![PORT];
    ports.extend(SCAN_PORTS);
    lab.serve(A, Listen::V4, &ports)
}

/// A state directory owned by `uid`.
fn state_dir(uid: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("chown")
        .args([&format!("{uid}:{uid}"), dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    dir
}

/// `/run/tcpwatch` owned by `uid` while it lives, as systemd makes it for
/// `RuntimeDirectory=tcpwatch`; on drop removed if it was made here, given
/// back to root otherwise (an agent run as root makes it itself). Root's
/// agents can still use it meanwhile.
struct RuntimeDir {
    dir: PathBuf,
    made: bool,
}

impl RuntimeDir {
    fn make(uid: &str) -> RuntimeDir {
        let dir = PathBuf::from("/run/tcpwatch");
        let made = std::fs::create_dir(&dir).is_ok();
        chown(&dir, &format!("{uid}:{uid}"));
        RuntimeDir { dir, made }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            chown(&self.dir, "0:0");
        }
    }
}

fn chown(path: &std::path::Path, owner: &str) {
    let out = Command::new("chown")
        .args([owner, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "chown {owner} {}", path.display());
}

/// The set of blocked IPv4 addresses in host A's nftables.
fn blocked4(lab: &Lab) -> String {
    crate::inspect::nft_set(lab, "blocked4")
}

#[test]
fn polling_sources_need_no_capability() {
    let Some(lab) = lab() else { return };
    let _servers = start_servers(&lab);
    for source in [Source::Procfs, Source::Netlink] {
        let state = state_dir(NOBODY);
        let path = state.path().join("state");
        let args = args().source(source).block("none").state(&path);
        let agent = Privs::nobody(&[]).start(&lab, &args);
        assert_holds(&agent, NOBODY, &[], &[]);
        expect_connection(&lab, &agent);
        assert_diagnostics(&agent, &[]);
        assert!(path.is_file(), "{}: no state file as nobody", source.name());
    }
}

#[test]
fn pcap_needs_net_raw() {
    let Some(lab) = lab() else { return };
    let _servers = start_servers(&lab);
    let args = args().source(Source::Pcap).block("none");
    let agent = Privs::nobody(&["net_raw"]).start(&lab, &args);
    assert_holds(&agent, NOBODY, &["net_raw"], &[]);
    expect_connection(&lab, &agent);
    assert_diagnostics(&agent, &[]);
    let stderr = Privs::nobody(&[]).refused(&lab, &args);
    assert_eq!(stderr, "tcpwatch: error: --source pcap needs CAP_NET_RAW\n");
}

#[test]
fn xdp_source_needs_bpf_net_admin_and_perfmon() {
    let Some(lab) = lab() else { return };
    let _servers = start_servers(&lab);
    let xdp = ["bpf", "net_admin", "perfmon"];
    let args = args().source(Source::Xdp).block("none");
    let agent = Privs::nobody(&xdp).start(&lab, &args);
    assert_holds(&agent, NOBODY, &xdp, &[]);
    expect_connection(&lab, &agent);
    assert_diagnostics(&agent, &[]);
    drop(agent);
    for (missing, name) in [
        ("bpf", "CAP_BPF"),
        ("net_admin", "CAP_NET_ADMIN"),
        ("perfmon", "CAP_PERFMON"),
    ] {
        let fewer: Vec<&str> = xdp.iter().copied().filter(|c| *c != missing).collect();
        let stderr = Privs::nobody(&fewer).refused(&lab, &args);
        assert_eq!(
            stderr,
            format!("tcpwatch: error: --source xdp needs {name}\n")
        );
    }
}

#[test]
fn tracepoint_needs_bpf_perfmon_and_tracefs_access() {
    let Some(lab) = lab() else { return };
    if !Source::Tracepoint.available() {
        return;
    }
    let _servers = start_servers(&lab);
    // In a lab host tracefs is not mounted (`ip netns exec` remounts /sys,
    // cgroup mounts gone too): the agent mounts it (CAP_SYS_ADMIN) and, not
    // being root, reads root's 0700 tracefs with CAP_DAC_READ_SEARCH.
    // CAP_SYS_PTRACE lets it read which process owns the listeners opened
    // before it started.
    let required = ["dac_read_search", "sys_admin", "perfmon", "bpf"];
    let all = [
        "dac_read_search",
        "sys_ptrace",
        "sys_admin",
        "perfmon",
        "bpf",
    ];
    let args = args()
        .source(Source::Tracepoint)
        .netns("self")
        .block("none");
    let mounted = "tcpwatch: mounted tracefs at /sys/kernel/tracing".to_string();
    let no_cgroup = "tcpwatch: warning: tracepoint: no cgroup2 tree (see --cgroup-root): connections carry no cgroup path, container or pod".to_string();
    let agent = Privs::nobody(&all).start(&lab, &args);
    assert_holds(&agent, NOBODY, &all, &[]);
    expect_connection(&lab, &agent);
    assert_diagnostics(&agent, &[mounted.clone(), no_cgroup.clone()]);
    drop(agent);
    // Without CAP_SYS_PTRACE: root's processes cannot be read, said once.
    let agent = Privs::nobody(&required).start(&lab, &args);
    assert_holds(&agent, NOBODY, &required, &[]);
    expect_connection(&lab, &agent);
    let stderr = agent.stderr();
    let warned = diagnostics(&stderr)
        .iter()
        .filter(|l| l.contains("needs CAP_SYS_PTRACE"))
        .count();
    assert_eq!(warned, 1, "{stderr}");
    drop(agent);
    for (missing, line) in [
        ("bpf", "--source tracepoint needs CAP_BPF"),
        ("perfmon", "--source tracepoint needs CAP_PERFMON"),
        (
            "sys_admin",
            "--source tracepoint (to mount tracefs, which is not mounted) needs CAP_SYS_ADMIN",
        ),
        (
            "dac_read_search",
            "--source tracepoint (tracefs is root's, mode 0700) needs CAP_DAC_READ_SEARCH",
        ),
    ] {
        let fewer: Vec<&str> = all.iter().copied().filter(|c| *c != missing).collect();
        let stderr = Privs::nobody(&fewer).refused(&lab, &args);
        assert_eq!(stderr, format!("tcpwatch: error: {line}\n"));
    }
}

/// A firewall backend: works with exactly `caps` (the tools get the
/// `ambient` ones), and with any one missing warns once and only detects.
fn firewall_needs(backend: &str, caps: &[&str], ambient: &[&str], env: &[(&str, &str)]) {
    let Some(lab) = lab() else { return };
    let _servers = start_servers(&lab);
    let mut args = args().block(backend);
    if backend == "xdp" {
        args = args.interface("eth0");
    }
    let privs = Privs {
        env,
        ..Privs::nobody(caps)
    };
    {
        let agent = privs.start(&lab, &args);
        assert_holds(&agent, NOBODY, caps, ambient);
        let scanner = lab.v4(B).to_string();
        let _scan = scan(&lab, &agent, Some(backend));
        let listed = match backend {
            "nftables" => blocked4(&lab),
            "iptables" => lab.output(A, "ipset", &["list", "tcpwatch4"]),
            _ => {
                let err = lab.try_connect(B, lab.v4(A).into(), PORT).unwrap_err();
                assert!(err.contains("timed out"), "not dropped by XDP: {err}");
                lab.try_connect(C, lab.v4(A).into(), PORT)
                    .expect("XDP drops a bystander too");
                scanner.clone()
            }
        };
        assert!(listed.contains(&scanner), "{scanner} not blocked: {listed}");
        // SIGTERM: the unprivileged agent removes its firewall objects too.
        stop(agent);
        assert_no_firewall(&lab);
    }
    for missing in caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != missing).collect();
        let privs = Privs {
            env,
            ..Privs::nobody(&fewer)
        };
        let agent = privs.start(&lab, &args);
        let name = format!("CAP_{}", missing.to_uppercase());
        let warning = format!("tcpwatch: warning: --block {backend} needs {name}; detecting only");
        assert_diagnostics(&agent, &[warning]);
        // Nothing is kept for a feature that is off.
        assert_holds(&agent, NOBODY, &[], &[]);
        assert_detects_only(&lab, agent);
    }
}

/// The agent reports C's connection and B's scan, blocks nothing, exits 0
/// on SIGTERM and leaves no firewall object.
fn assert_detects_only(lab: &Lab, agent: Agent) {
    expect_connection(lab, &agent);
    let _scan = scan(lab, &agent, None);
    let printed = stop(agent);
    assert!(
        !printed.iter().any(|l| l.contains("Blocked")),
        "blocked: {printed:?}"
    );
    assert_no_firewall(lab);
}

/// SIGTERM; the agent must exit 0 within 10 s. Its stdout.
fn stop(agent: Agent) -> Vec<String> {
    let finished = agent.stop_within(Duration::from_secs(10));
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    finished.stdout
}

/// No firewall object of the agent in host A.
fn assert_no_firewall(lab: &Lab) {
    let tables = lab.output(A, "nft", &["list", "tables"]);
    assert!(!tables.contains("tcpwatch"), "{tables}");
    let sets = lab.output(A, "ipset", &["list", "-n"]);
    assert!(!sets.contains("tcpwatch"), "{sets}");
}

#[test]
fn nftables_needs_net_admin() {
    firewall_needs("nftables", &["net_admin"], &["net_admin"], &[]);
}

#[test]
fn nft_binary_gets_net_admin_as_an_ambient_capability() {
    let without_library = [("TCPWATCH_LIBNFTABLES", "0")];
    firewall_needs("nftables", &["net_admin"], &["net_admin"], &without_library);
}

#[test]
fn iptables_needs_net_admin_and_net_raw() {
    let caps = ["net_admin", "net_raw"];
    firewall_needs("iptables", &caps, &caps, &[]);
}

#[test]
fn xdp_blocking_needs_bpf_net_admin_and_perfmon() {
    firewall_needs("xdp", &["bpf", "net_admin", "perfmon"], &[], &[]);
}

#[test]
fn a_metrics_port_below_1024_needs_net_bind_service() {
    let Some(lab) = lab() else { return };
    let args = args().block("none").metrics("127.0.0.1:80");
    let agent = Privs::nobody(&["net_bind_service"]).start(&lab, &args);
    assert_holds(&agent, NOBODY, &["net_bind_service"], &[]);
    let health = lab.output(A, "curl", &["-sf", "http://127.0.0.1:80/healthz"]);
    assert_eq!(health.trim(), "ok");
    stop(agent);
    let stderr = Privs::nobody(&[]).refused(&lab, &args);
    assert_eq!(
        stderr,
        "tcpwatch: error: --metrics-addr 127.0.0.1:80 needs CAP_NET_BIND_SERVICE\n"
    );
}

#[test]
fn capabilities_no_feature_needs_are_dropped() {
    let Some(lab) = lab() else { return };
    let _servers = start_servers(&lab);
    let plenty = [
        "dac_override",
        "net_bind_service",
        "net_admin",
        "net_raw",
        "sys_ptrace",
        "sys_admin",
        "perfmon",
        "bpf",
    ];
    let agent = Privs::nobody(&plenty).start(&lab, &args().block("nftables"));
    assert_holds(&agent, NOBODY, &["net_admin"], &["net_admin"]);
    assert_diagnostics(&agent, &[]);
    let _scan = scan(&lab, &agent, Some("nftables"));
    stop(agent);
}

/// The image's way (deploy/Dockerfile): the binary has file capabilities,
/// permitted only, and the user holds none of its own. The agent raises
/// what it needs into effective, gives the `nft` binary its ambient one,
/// and drops the rest.
#[test]
fn file_capabilities_permitted_only_are_raised_as_needed() {
    let Some(lab) = lab() else { return };
    if !require_tools(&["setcap"]) {
        return;
    }
    let _servers = start_servers(&lab);
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("tcpwatch");
    std::fs::copy(AGENT, &binary).unwrap();
    let binary = binary.to_str().unwrap();
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile")).unwrap();
    let caps = dockerfile
        .split_whitespace()
        .find(|w| w.starts_with("cap_net_admin"))
        .expect("the Dockerfile's setcap");
    assert!(caps.ends_with("+p"), "not permitted-only: {caps}");
    for (program, args) in [
        ("chmod", vec!["0755", dir.path().to_str().unwrap()]),
        ("setcap", vec![caps, binary]),
    ] {
        let out = Command::new(program).args(&args).output().unwrap();
        assert!(out.status.success(), "{program}: {out:?}");
    }
    let privs = Privs {
        keep_bounding: true,
        binary,
        env: &[("TCPWATCH_LIBNFTABLES", "0")],
        ..Privs::nobody(&[])
    };
    // The scan holds its four connections open; the table's own decision
    // (`nft_decide::`) would drop the fourth SYN. Here the capabilities
    // are under test, with every block written by the agent through `nft`.
    let args = args()
        .source(Source::Pcap)
        .block("nftables")
        .set("--nft-decide", "off");
    let agent = privs.start(&lab, &args);
    assert_holds(&agent, NOBODY, &["net_admin", "net_raw"], &["net_admin"]);
    let _scan = assert_reports_and_blocks(&lab, &agent);
    stop(agent);
    assert_no_firewall(&lab);
}

/// The agent reports C's connection, blocks B's scan in nftables, and has
/// nothing to say. Returns B's connections (held open).
fn assert_reports_and_blocks(lab: &Lab, agent: &Agent) -> Client {
    expect_connection(lab, agent);
    let scan = scan(lab, agent, Some("nftables"));
    let set = blocked4(lab);
    assert!(set.contains(&lab.v4(B).to_string()), "{set}");
    assert_diagnostics(agent, &[]);
    scan
}

/// The `[Service]` settings of deploy/systemd/tcpwatch.service.
fn unit() -> HashMap<String, String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/tcpwatch.service"
    ))
    .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `CAP_NET_ADMIN CAP_BPF` -> `["net_admin", "bpf"]`.
fn unit_caps(value: &str) -> Vec<String> {
    value
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// The unit's privileges, applied as systemd would: PID 1 here is not
/// systemd, so DynamicUser (a fresh uid from systemd's dynamic range),
/// AmbientCapabilities, CapabilityBoundingSet and NoNewPrivileges are read
/// from the unit and given to the real binary by setpriv, with the unit's
/// ExecStart (its --config a file of test settings, its --state in a
/// directory owned by that uid, as StateDirectory makes it) and `/` as the
/// working directory. It reports, blocks, holds only CAP_NET_ADMIN; without
/// CAP_NET_ADMIN it says so once and keeps detecting. The unit itself,
/// under a real systemd with its hardening, is `systemd.rs`.
#[test]
fn systemd_unit_privileges() {
    let Some(lab) = lab() else { return };
    let unit = unit();
    let get = |key: &str| unit.get(key).map(String::as_str);
    assert_eq!(get("DynamicUser"), Some("yes"));
    assert_eq!(get("NoNewPrivileges"), Some("yes"));
    assert_eq!(get("StateDirectory"), Some("tcpwatch"));
    assert_eq!(get("RuntimeDirectory"), Some("tcpwatch"));
    let ambient = unit_caps(get("AmbientCapabilities").unwrap());
    let bounding = unit_caps(get("CapabilityBoundingSet").unwrap());
    assert_eq!(
        ambient, bounding,
        "the unit's ambient and bounding sets differ"
    );
    // The first uid of systemd's DynamicUser range (61184-65519).
    let uid = "61184";
    let state = state_dir(uid);
    // What systemd makes of RuntimeDirectory=tcpwatch: the agent's control
    // socket goes there (its default path).
    let _runtime = RuntimeDir::make(uid);
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("tcpwatch.toml");
    std::fs::write(&file, "interval = \"1s\"\nblock-ttl = \"30s\"\n").unwrap();
    Command::new("chmod")
        .args(["0755", config.path().to_str().unwrap()])
        .status()
        .unwrap();
    // The unit's own command line, not the tests' (Args): what is checked
    // is what systemd would run.
    let exec: Vec<String> = get("ExecStart")
        .unwrap()
        .split_whitespace()
        .map(|w| match w {
            "/etc/tcpwatch/tcpwatch.toml" => file.to_str().unwrap().to_string(),
            "/var/lib/tcpwatch/state" => state.path().join("state").to_str().unwrap().into(),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/tcpwatch");
    let _servers = start_servers(&lab);

    let caps: Vec<&str> = ambient.iter().map(String::as_str).collect();
    let privs = Privs {
        uid,
        no_new_privs: true,
        ..Privs::nobody(&caps)
    };
    let agent = privs.start_argv(&lab, &exec[1..]);
    assert_holds(&agent, uid, &["net_admin"], &["net_admin"]);
    assert_eq!(proc_status(agent.pid())["CapBnd"], hex(&caps));
    let scan_conns = assert_reports_and_blocks(&lab, &agent);
    stop(agent);
    drop(scan_conns);
    assert!(state.path().join("state").is_file(), "no state file");

    let fewer: Vec<&str> = caps.iter().copied().filter(|c| *c != "net_admin").collect();
    let privs = Privs {
        uid,
        no_new_privs: true,
        ..Privs::nobody(&fewer)
    };
    let agent = privs.start_argv(&lab, &exec[1..]);
    let warning = "tcpwatch: warning: --block nftables needs CAP_NET_ADMIN; detecting only";
    // The block of the first run, read back from the state file.
    let kept = format!(
        "tcpwatch: 1 stored blocks not applied (blocking is off or dry); kept in {}",
        state.path().join("state").display()
    );
    assert_diagnostics(&agent, &[warning.to_string(), kept]);
    assert_holds(&agent, uid, &[], &[]);
    assert_detects_only(&lab, agent);
}
