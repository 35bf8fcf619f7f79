//! Real `redis-server` processes for the fleet tests and the load
//! generator: one server, a server with TLS, or a three-master Redis
//! Cluster, each on free loopback ports under a temporary directory, killed
//! when dropped.
//!
//! A missing `redis-server` (Debian: `redis-server`, `redis-tools`) fails the
//! test when `CI=true` and skips it otherwise ([`available`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when `redis-server` and `redis-cli` can be run. Otherwise panics
/// under `CI=true` (a CI run must never pass by skipping) or prints why the
/// test is skipped.
pub fn available() -> bool {
    let ok = ["redis-server", "redis-cli"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        let what = "redis-server/redis-cli (apt-get install redis-server redis-tools)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("prerequisite missing (CI=true, so this fails instead of skipping): {what}");
        }
        eprintln!("SKIPPED: prerequisite missing: {what}");
    }
    ok
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
        let tmp = tempfile::Builder::new()
            .prefix("tcpwatch-fleet-redis")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let mut r = Redis::start_in(&dir, free_port(), extra, false);
        r._tmp = Some(tmp);
        r
    }

    /// A server in `dir` on `port`; `tls`: `port` is the TLS port.
    pub fn start_in(dir: &Path, port: u16, extra: &[&str], tls: bool) -> Redis {
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
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
        let child = Command::new("redis-server")
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

    /// `redis-cli` arguments to reach this server (TLS, auth).
    pub fn set_cli_args(&mut self, args: &[&str]) {
        self.cli_args = args.iter().map(|s| s.to_string()).collect();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
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

    /// The last lines of its log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
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

impl Cluster {
    pub fn start() -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("tcpwatch-fleet-cluster")
            .tempdir()
            .unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = tmp.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            nodes.push(Redis::start_in(
                &dir,
                free_port(),
                &[
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
                ],
                false,
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
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

    /// `redis-cli -c` (follows redirections) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.nodes[0].cli(&all)
    }
}

/// A test CA and a server certificate for `localhost` and 127.0.0.1, made
/// with `openssl` in `dir`. Returns (ca.crt, server.crt, server.key).
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
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
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
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

/// Reads a value from a line `name:value` of `INFO` output.
pub fn info_field(info: &str, name: &str) -> Option<String> {
    BufReader::new(info.as_bytes())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
}
