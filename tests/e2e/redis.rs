//! Real `redis-server` processes for the fleet tests: one server, a server
//! with TLS, or a three-master Redis Cluster, each under a temporary
//! directory, killed when dropped. On free loopback ports of this machine
//! ([`Redis::start`], [`Cluster::start`]), or on a host of a lab, where
//! agents in the other hosts reach it ([`Redis::start_in_lab`],
//! [`Cluster::start_in_lab`]).
//!
//! A missing `redis-server` (Debian: `redis-server`, `redis-tools`) fails the
//! test when `CI=true` and skips it otherwise ([`available`]).

use crate::lab::Lab;
use crate::prereq::require_tools;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when `redis-server` and `redis-cli` can be run; otherwise reports
/// it (see [`require_tools`]).
pub fn available() -> bool {
    require_tools(&["redis-server", "redis-cli"])
}

/// A free loopback port whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found");
}

/// One `redis-server`.
pub struct Redis {
    pub port: u16,
    /// The address it listens on: 127.0.0.1, or a lab host's.
    pub host: IpAddr,
    /// The lab host's namespace it runs in, if any.
    ns: Option<String>,
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Extra `redis-cli` arguments (TLS, admin password).
    cli_args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Redis {
    /// A plain server without persistence.
    pub fn start() -> Redis {
        Redis::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A server with extra arguments, in its own temporary directory.
    pub fn start_with(extra: &[&str]) -> Redis {
        let tmp = temp_dir("tcpwatch-fleet-redis");
        let dir = tmp.path().to_path_buf();
        let mut r = Redis::start_in(&dir, free_port(), extra, false);
        r._tmp = Some(tmp);
        r
    }

    /// A plain server without persistence on port 6379 of lab host
    /// `index`, in a temporary directory.
    pub fn start_in_lab(lab: &Lab, index: usize) -> Redis {
        Redis::start_in_lab_with(
            lab,
            index,
            6379,
            &["--save", "", "--appendonly", "no"],
            false,
        )
    }

    /// A server on `port` of lab host `index` with extra arguments, in a
    /// temporary directory; `tls`: `port` is the TLS port.
    pub fn start_in_lab_with(
        lab: &Lab,
        index: usize,
        port: u16,
        extra: &[&str],
        tls: bool,
    ) -> Redis {
        let tmp = temp_dir("tcpwatch-fleet-redis");
        let host = IpAddr::V4(lab.v4(index));
        let ns = Some(lab.ns(index).to_string());
        let mut r = Redis::start_at(tmp.path(), host, ns, port, extra, tls);
        r._tmp = Some(tmp);
        r
    }

    /// A server in `dir` on `port` of 127.0.0.1; `tls`: `port` is the TLS
    /// port.
    pub fn start_in(dir: &Path, port: u16, extra: &[&str], tls: bool) -> Redis {
        Redis::start_at(dir, Ipv4Addr::LOCALHOST.into(), None, port, extra, tls)
    }

    fn start_at(
        dir: &Path,
        host: IpAddr,
        ns: Option<String>,
        port: u16,
        extra: &[&str],
        tls: bool,
    ) -> Redis {
        let mut args: Vec<String> = vec![
            "--bind".into(),
            host.to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--logfile".into(),
            "redis.log".into(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
        ];
        if tls {
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ]);
        } else {
            args.extend(["--port".into(), port.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut r = Redis {
            port,
            host,
            ns,
            dir: dir.to_path_buf(),
            args,
            child: None,
            cli_args: Vec::new(),
            _tmp: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = self.dir.join("redis.log");
        let before = std::fs::read_to_string(&log).map_or(0, |s| s.len());
        let child = self
            .command("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.len() > before && text[before..].contains("Ready to accept connections") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server on port {} exited ({status}): {}",
                    self.port,
                    &text[before.min(text.len())..]
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} not ready: {}",
                self.port,
                &text[before.min(text.len())..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `program`, in the server's namespace when it has one.
    fn command(&self, program: &str) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// `redis-cli` arguments to reach this server (TLS, auth).
    pub fn set_cli_args(&mut self, args: &[&str]) {
        self.cli_args = args.iter().map(|s| s.to_string()).collect();
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
    }

    /// Runs `redis-cli` against this server; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self
            .command("redis-cli")
            .args(["-h", &self.host.to_string(), "-p", &self.port.to_string()])
            .args(&self.cli_args)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGKILL, and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again, same port, directory and arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts again after [`Redis::kill`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters, no replicas.
pub struct Cluster {
    pub nodes: Vec<Redis>,
    _tmp: tempfile::TempDir,
}

/// The arguments of a cluster node without persistence.
const CLUSTER_NODE: [&str; 10] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "5000",
    "--save",
    "",
    "--appendonly",
    "no",
];

/// The directory of cluster node `i` under `tmp`, created.
fn node_dir(tmp: &tempfile::TempDir, i: u16) -> std::path::PathBuf {
    let dir = tmp.path().join(format!("n{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Cluster {
    /// Three masters on ports 7000-7002 of lab host `index`.
    pub fn start_in_lab(lab: &Lab, index: usize) -> Cluster {
        let tmp = temp_dir("tcpwatch-fleet-cluster");
        let host = IpAddr::V4(lab.v4(index));
        let nodes = (0..3)
            .map(|i| {
                let ns = Some(lab.ns(index).to_string());
                Redis::start_at(&node_dir(&tmp, i), host, ns, 7000 + i, &CLUSTER_NODE, false)
            })
            .collect();
        Cluster::create(nodes, tmp)
    }

    /// Three masters on free ports of this host.
    pub fn start() -> Cluster {
        let tmp = temp_dir("tcpwatch-fleet-cluster");
        let nodes = (0..3)
            .map(|i| Redis::start_in(&node_dir(&tmp, i), free_port(), &CLUSTER_NODE, false))
            .collect();
        Cluster::create(nodes, tmp)
    }

    /// `redis-cli --cluster create` over `nodes`, then waits for the
    /// cluster to be ok.
    fn create(nodes: Vec<Redis>, tmp: tempfile::TempDir) -> Cluster {
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        let out = nodes[0]
            .command("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster not ok in 30s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Cluster { nodes, _tmp: tmp }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}

/// A temporary directory whose name starts with `prefix`.
fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// A test CA and a server certificate for `localhost` and 127.0.0.1, made
/// with `openssl` in `dir`. Returns (ca.crt, server.crt, server.key).
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    make_certs_for(dir, &[])
}

/// [`make_certs`], the certificate naming `ips` too.
pub fn make_certs_for(dir: &Path, ips: &[IpAddr]) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=tcpwatch test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        format!(
            "subjectAltName=DNS:localhost,IP:127.0.0.1{}\nbasicConstraints=CA:FALSE\n",
            ips.iter().map(|ip| format!(",IP:{ip}")).collect::<String>()
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}
