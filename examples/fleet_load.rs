//! Load generator for fleet mode: plays N nodes (default 1,000), each seeing
//! R new inbound connections a second (default 50), against one Redis,
//! through the fleet stage's own code path (one `FleetHandle` per node,
//! attempts aggregated per flush interval, one observe script call per
//! flush on a single server). Prints what Redis did and what it cost: ops/s,
//! script calls/s, Redis CPU (from `INFO cpu` deltas), and from that the
//! fleet size one Redis shard holds at 70% of a core.
//!
//! ```text
//! cargo run --release --example fleet_load -- [--nodes 1000] [--rate 50]
//!     [--seconds 30] [--model new|sticky|shared] [--clients N]
//!     [--scan-pairs 10] [--url redis://127.0.0.1:6379]
//! ```
//!
//! Without `--url` it starts its own `redis-server` on a free loopback port.
//! Traffic models (`--model`), each connection to port 443 (70%), 80 (25%)
//! or 22 (5%) of the node's own address:
//!
//! - `new` (default): every connection from an address never seen before:
//!   the worst case, nothing to aggregate or skip;
//! - `sticky`: each node's visitors come back: 90% from the node's own pool
//!   of `--clients` addresses (default 2000), 10% new;
//! - `shared`: from a pool of `--clients` addresses shared by the whole
//!   fleet, drawn uniformly (every client visits many nodes: with a low
//!   `--scan-pairs` such clients are fleet scans, see docs/fleet.md).
//!
//! Every 10 s one scanner sweeps 3 ports on 20 nodes (60 pairs); with the
//! default `--scan-pairs 10` each sweep is one fleet scan.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcpwatch::fleet::{parse_url, Attempt, Fleet, FleetEvent, FleetSettings};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Model {
    New,
    Sticky,
    Shared,
}

struct Args {
    nodes: usize,
    rate: usize,
    seconds: u64,
    model: Model,
    clients: u32,
    scan_pairs: usize,
    url: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 1000,
        rate: 50,
        seconds: 30,
        model: Model::New,
        clients: 2000,
        scan_pairs: 10,
        url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = value().parse().expect("--nodes N"),
            "--rate" => a.rate = value().parse().expect("--rate N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--clients" => a.clients = value().parse().expect("--clients N"),
            "--scan-pairs" => a.scan_pairs = value().parse().expect("--scan-pairs N"),
            "--model" => {
                a.model = match value().as_str() {
                    "new" => Model::New,
                    "sticky" => Model::Sticky,
                    "shared" => Model::Shared,
                    other => panic!("--model new|sticky|shared, not {other}"),
                }
            }
            "--url" => a.url = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// A small fast generator (xorshift), seeded per node.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// This process's CPU time (user + system), from /proc/self/stat.
fn own_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct RedisStats {
    commands: u64,
    cpu: f64,
    evalsha: u64,
    used_memory: u64,
    /// Calls per command (`INFO commandstats`), scripts' inner calls included.
    calls: std::collections::BTreeMap<String, u64>,
}

async fn redis_stats(conn: &mut redis::aio::MultiplexedConnection) -> RedisStats {
    // A loaded Redis on a busy host may miss the client's response
    // timeout: try again a few times.
    let mut tries = 0;
    let info: String = loop {
        match redis::cmd("INFO").arg("everything").query_async(conn).await {
            Ok(info) => break info,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("fleet_load: INFO: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("INFO: {e}"),
        }
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let evalsha = field("cmdstat_evalsha")
        .split(',')
        .find_map(|kv| kv.strip_prefix("calls="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let calls = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), n))
        })
        .collect();
    RedisStats {
        calls,
        commands: field("total_commands_processed").parse().unwrap_or(0),
        cpu: field("used_cpu_sys").parse::<f64>().unwrap_or(0.0)
            + field("used_cpu_user").parse::<f64>().unwrap_or(0.0),
        evalsha,
        used_memory: field("used_memory").parse().unwrap_or(0),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    raise_fd_limit();
    let mut own_server = if a.url.is_none() {
        Some(OwnRedis::start())
    } else {
        None
    };
    let url = a
        .url
        .clone()
        .unwrap_or_else(|| own_server.as_ref().unwrap().url());
    let client = redis::Client::open(url.as_str()).expect("URL");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");

    eprintln!(
        "fleet_load: {} nodes x {} connections/s for {} s against {url} (model {:?}, clients {})",
        a.nodes, a.rate, a.seconds, a.model, a.clients
    );
    let scans = Arc::new(AtomicU64::new(0));
    let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    let start_all = Instant::now();
    for i in 0..a.nodes {
        let mut s = FleetSettings::new(vec![parse_url(&url).unwrap()], &format!("load-{i}"));
        s.scan_pairs = a.scan_pairs;
        let (handle, mut events) = Fleet::start(s, 256).expect("start");
        let scans = scans.clone();
        let quiet = quiet.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    FleetEvent::FleetScan { .. } => {
                        scans.fetch_add(1, Ordering::Relaxed);
                    }
                    FleetEvent::Down { reason } if !quiet.load(Ordering::Relaxed) => {
                        eprintln!("node down: {reason}")
                    }
                    _ => {}
                }
            }
        });
        handles.push(handle);
    }
    // Wait until every node is up.
    let deadline = Instant::now() + Duration::from_secs(120);
    while handles.iter().any(|h| !h.counters().up()) {
        assert!(Instant::now() < deadline, "nodes not up in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "fleet_load: {} nodes up in {:.1} s",
        a.nodes,
        start_all.elapsed().as_secs_f64()
    );

    // The traffic: every 100 ms each node sees rate/10 attempts.
    let generated = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(a.seconds);
    let warmup = Duration::from_secs(3);
    let mut generators = Vec::new();
    let nodes = handles.len();
    for (i, h) in handles.iter().enumerate() {
        let h = h.clone();
        let generated = generated.clone();
        let (rate, clients, model) = (a.rate, a.clients.max(1), a.model);
        generators.push(tokio::spawn(async move {
            let host = IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8));
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491));
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            // Spread the nodes over the tick.
            tokio::time::sleep(Duration::from_micros((i as u64 * 100_000) / nodes as u64)).await;
            let per_tick = rate.div_ceil(10);
            let mut fresh: u32 = (i as u32) << 12;
            let clients = clients;
            let mut batch = Vec::with_capacity(per_tick + 3);
            let mut n: u64 = 0;
            while Instant::now() < stop {
                tick.tick().await;
                n += 1;
                batch.clear();
                for _ in 0..per_tick {
                    let r = rng.next();
                    let new =
                        model == Model::New || (model == Model::Sticky && r.is_multiple_of(10));
                    let source = if new {
                        // 100.64.0.0/10, never twice.
                        fresh = fresh.wrapping_add(1);
                        Ipv4Addr::from(0x6440_0000u32 | (fresh & 0x003f_ffff))
                    } else if model == Model::Sticky {
                        // 172.16.0.0/12, the node's own pool.
                        let pool = (i as u32 * clients + (r >> 8) as u32 % clients) & 0x000f_ffff;
                        Ipv4Addr::from(0xac10_0000u32 | pool)
                    } else {
                        Ipv4Addr::from(0xc633_0000u32 + ((r >> 8) % clients as u64) as u32)
                    };
                    let port = match (r >> 32) % 100 {
                        0..=69 => 443,
                        70..=94 => 80,
                        _ => 22,
                    };
                    batch.push(Attempt {
                        source: IpAddr::V4(source),
                        host,
                        port,
                    });
                }
                // A scanner sweeping 3 ports on 20 nodes every 10 s.
                if n.is_multiple_of(100) && i.is_multiple_of((nodes / 20).max(1)) {
                    let scanner = IpAddr::V4(Ipv4Addr::new(203, 0, 113, (n / 100) as u8));
                    for port in [21, 23, 3389] {
                        batch.push(Attempt {
                            source: scanner,
                            host,
                            port,
                        });
                    }
                }
                h.observe_attempts(&batch);
                generated.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }));
    }

    tokio::time::sleep(warmup).await;
    let t0 = Instant::now();
    let s0 = redis_stats(&mut admin).await;
    let g0 = generated.load(Ordering::Relaxed);
    let c0 = own_cpu();
    let o0: u64 = handles
        .iter()
        .map(|h| h.counters().message("out", "observe"))
        .sum();
    let measure = Duration::from_secs(a.seconds.saturating_sub(5).max(5));
    tokio::time::sleep(measure).await;
    let s1 = redis_stats(&mut admin).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let g1 = generated.load(Ordering::Relaxed);
    let c1 = own_cpu();
    let o1: u64 = handles
        .iter()
        .map(|h| h.counters().message("out", "observe"))
        .sum();
    for g in generators {
        let _ = g.await;
    }
    let dropped: u64 = handles.iter().map(|h| h.counters().dropped()).sum();
    let errors: u64 = handles
        .iter()
        .map(|h| h.counters().errors.load(Ordering::Relaxed))
        .sum();

    let ops = (s1.commands - s0.commands) as f64 / elapsed;
    let calls = (s1.evalsha - s0.evalsha) as f64 / elapsed;
    let cpu = (s1.cpu - s0.cpu) / elapsed;
    let attempts = (g1 - g0) as f64 / elapsed;
    let sources = (o1 - o0) as f64 / elapsed;
    let gen_cpu = (c1 - c0).as_secs_f64() / elapsed;
    println!(
        "fleet_load: nodes {} rate {}/s/node model {:?} clients {} scan-pairs {}",
        a.nodes, a.rate, a.model, a.clients, a.scan_pairs
    );
    println!("fleet_load: attempts {attempts:.0}/s, sources published {sources:.0}/s (aggregated per node per second)");
    println!("fleet_load: Redis {ops:.0} commands/s processed, {calls:.0} script calls/s (EVALSHA); Redis CPU {:.1}% of one core; memory {:.1} MiB", cpu * 100.0, s1.used_memory as f64 / 1048576.0);
    let mut by_command: Vec<(String, f64)> = s1
        .calls
        .iter()
        .map(|(k, v)| {
            let before = s0.calls.get(k).copied().unwrap_or(0);
            (k.clone(), (v - before) as f64 / elapsed)
        })
        .filter(|(_, r)| *r >= 1.0)
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    let list: Vec<String> = by_command
        .iter()
        .map(|(k, r)| format!("{k} {r:.0}"))
        .collect();
    println!(
        "fleet_load: Redis calls/s by command (inside scripts included): {}",
        list.join(", ")
    );
    println!(
        "fleet_load: generator+agents CPU {:.1}% (of 2 cores: 200%)",
        gen_cpu * 100.0
    );
    println!(
        "fleet_load: fleet scans reported {}, drops {dropped}, Redis errors {errors}",
        scans.load(Ordering::Relaxed)
    );
    if cpu > 0.0 {
        let capacity = a.nodes as f64 * 0.70 / cpu;
        println!(
            "fleet_load: one Redis shard at 70% of a core holds about {:.0} nodes at {} connections/s each",
            capacity, a.rate
        );
    }
    quiet.store(true, Ordering::Relaxed);
    drop(handles);
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(server) = &mut own_server {
        server.stop();
    }
}

/// A `redis-server` of its own on a free loopback port, without
/// persistence (when no `--url` is given).
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server) or --url");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server not ready in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
