//! Fleet mode with real agents: three agents (`pcap`, `--block nftables`)
//! on three lab hosts, `node-a`, `node-b` and `node-c`, share a real
//! `redis-server` (or a three-master Redis Cluster, or a TLS server with an
//! ACL user) running on a fourth host; a fifth host scans them. Every
//! agent's firewall lives in its own namespace: what the tests read there
//! is what the fleet made each node do.
//!
//! The in-process tests of the fleet stage against Redis are `fleet_redis`.

use crate::agent::*;
use crate::fleet_redis::ACL_COMMANDS;
use crate::inspect::{lists, nft_set_in};
use crate::lab::*;
use crate::redis::{available, make_certs_for, Cluster, Redis};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The hosts of the agents, their node names, the scanner and Redis.
const NODES: [usize; 3] = [0, 1, 2];
const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
const SCANNER: usize = 3;
const REDIS: usize = 4;

/// How long an event may take: the fleet's flush is 1 s, a reconnection a
/// few seconds.
const EVENT: Duration = Duration::from_secs(15);

/// A lab of five hosts with the tools these tests run.
fn lab() -> Option<Lab> {
    if !available() {
        return None;
    }
    Lab::needing(&["nft", "nmap", "openssl"], 5)
}

/// The Redis the agents share.
enum Store {
    One(Redis),
    Cluster(Cluster),
}

impl Store {
    fn urls(&self) -> Vec<String> {
        match self {
            Store::One(r) => vec![r.url()],
            Store::Cluster(c) => c.urls(),
        }
    }

    /// Forgets everything the fleet stored (the bans of an earlier case
    /// would be applied by the next agents at start-up).
    fn flush(&self) {
        let servers: Vec<&Redis> = match self {
            Store::One(r) => vec![r],
            Store::Cluster(c) => c.nodes.iter().collect(),
        };
        for server in servers {
            // A cluster's replicas refuse writes; their masters flush them.
            let _ = server.cli(&["FLUSHALL"]);
        }
    }

    /// The `host:port` of every server, for the agents' own outbound SYNs
    /// to them (a `pcap` agent prints those: not the tests' business).
    fn endpoints(&self) -> Vec<String> {
        let one = |r: &Redis| format!("{}:{}", r.host, r.port);
        match self {
            Store::One(r) => vec![one(r)],
            Store::Cluster(c) => c.nodes.iter().map(one).collect(),
        }
    }
}

/// The agents' arguments: `pcap` on eth0, blocking with nftables for 10
/// minutes, in the fleet of `urls` as `name`.
fn fleet_args(urls: &[String], name: &str) -> Args {
    let mut args = Args::watching(Source::Pcap)
        .block("nftables")
        .block_ttl("10m")
        .node_name(name);
    for url in urls {
        args = args.fleet(url);
    }
    args
}

/// Starts the three agents with `args(node name)`, each once it sees
/// traffic and follows the fleet.
fn start_agents(lab: &Lab, store: &Store, args: impl Fn(&str) -> Args) -> Vec<Agent> {
    NODES
        .iter()
        .zip(NAMES)
        .map(|(&index, name)| {
            let mut agent = Agent::start_pcap(lab, index, SCANNER, &args(name));
            for endpoint in store.endpoints() {
                agent = agent.ignoring(format!(" -> {endpoint}"));
            }
            agent.expect_stderr("fleet: following ", EVENT);
            agent
        })
        .collect()
}

fn scanner(lab: &Lab) -> IpAddr {
    lab.addr(SCANNER, false)
}

/// The stdout event texts of `agent` starting with `prefix`.
fn events_starting(agent: &Agent, prefix: &str) -> Vec<String> {
    event_texts(&agent.stdout_lines())
        .into_iter()
        .filter(|t| t.starts_with(prefix))
        .collect()
}

/// Whether host `index`'s nftables set holds `ip`.
fn kernel_holds(lab: &Lab, index: usize, ip: IpAddr) -> bool {
    lists(&nft_set_in(lab, index, "blocked4"), ip)
}

/// A SYN scan (`nmap -sS`, 100 ports) of host `index` from the scanner.
fn syn_scan(lab: &Lab, index: usize) {
    lab.fast_syn_scan(SCANNER, lab.v4(index).into(), "1-100");
}

/// The scanner's SYN to host `index` is dropped: it times out (a closed
/// port would refuse it).
fn assert_dropped(lab: &Lab, index: usize) {
    let err = lab
        .try_connect(SCANNER, lab.addr(index, false), 9000)
        .expect_err("the scanner still connects");
    assert!(err.contains("timed out"), "not a dropped SYN: {err}");
}

/// Stops every agent; each exits 0.
fn stop_all(agents: Vec<Agent>) {
    for agent in agents {
        let finished = agent.stop();
        assert_eq!(
            finished.status.code(),
            Some(0),
            "stderr: {}",
            finished.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// The cases, on one server and on a cluster

/// A SYN scan of node A: A reports it and blocks; B and C apply the block
/// as A's, for the same time, and drop the scanner's next SYN. Nobody
/// reports a fleet scan (it was one host's scan).
fn shares_a_block(lab: &Lab, store: &Store) {
    let agents = start_agents(lab, store, |name| fleet_args(&store.urls(), name));
    let s = scanner(lab);
    syn_scan(lab, NODES[0]);
    let scan = format!("Port scan detected: {s} -> {} on ports ", lab.v4(NODES[0]));
    let a = &agents[0];
    let seen = a.wait_for(
        |l| event_text(l).is_some_and(|t| t.starts_with(&scan)),
        EVENT,
    );
    assert!(seen.is_some(), "A: no scan; stdout {:#?}", a.stdout_lines());
    a.expect_event(&blocked(s, "10m", "nftables"), EVENT);
    let shared = format!("{} (fleet: node-a)", blocked(s, "10m", "nftables"));
    for (agent, &index) in agents[1..].iter().zip(&NODES[1..]) {
        agent.expect_event(&shared, EVENT);
        assert!(kernel_holds(lab, index, s), "host {index}: not in the set");
        assert_dropped(lab, index);
    }
    std::thread::sleep(SETTLE);
    for (i, agent) in agents.iter().enumerate() {
        let blocks = events_starting(agent, &format!("Blocked {s} "));
        assert_eq!(blocks.len(), 1, "{}: {blocks:#?}", NAMES[i]);
        assert!(events_starting(agent, "Fleet scan detected").is_empty());
    }
    for agent in &agents[1..] {
        assert!(events_starting(agent, "Port scan detected").is_empty());
    }
    stop_all(agents);
}

/// Two ports on each of the three nodes within a minute (no node sees a
/// scan of its own): exactly one `Fleet scan detected` line in the whole
/// fleet, by the node that saw it cross the line, and the scanner blocked
/// on all three: by that node, and as that node's on the two others.
fn detects_a_sweep(lab: &Lab, store: &Store) {
    let agents = start_agents(lab, store, |name| fleet_args(&store.urls(), name));
    let s = scanner(lab);
    for &index in &NODES {
        lab.attempts(SCANNER, lab.addr(index, false), &[22, 80], 0.5);
    }
    let fleet_scan = regex::Regex::new(&format!(
        r"^Fleet scan detected: {s} -> [23] hosts on ports 22,80$"
    ))
    .unwrap();
    let deadline = Instant::now() + EVENT;
    let reporter = loop {
        let found = agents.iter().position(|a| {
            event_texts(&a.stdout_lines())
                .iter()
                .any(|t| fleet_scan.is_match(t))
        });
        if let Some(i) = found {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no fleet scan line: {:#?}",
            agents.iter().map(Agent::stdout_lines).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let own = blocked(s, "10m", "nftables");
    agents[reporter].expect_event(&own, EVENT);
    let shared = format!("{own} (fleet: {})", NAMES[reporter]);
    for (i, agent) in agents.iter().enumerate() {
        if i != reporter {
            agent.expect_event(&shared, EVENT);
        }
        assert!(within(EVENT, || kernel_holds(lab, NODES[i], s)));
    }
    std::thread::sleep(SETTLE);
    let lines: Vec<String> = agents
        .iter()
        .flat_map(|a| events_starting(a, "Fleet scan detected"))
        .collect();
    assert_eq!(lines.len(), 1, "one fleet scan in the fleet: {lines:#?}");
    for agent in &agents {
        assert!(events_starting(agent, "Port scan detected").is_empty());
        let blocks = events_starting(agent, &format!("Blocked {s} "));
        assert_eq!(
            blocks.len(),
            1,
            "{:#?}\n{}",
            agent.stdout_lines(),
            agent.stderr()
        );
    }
    stop_all(agents);
}

/// The same sweep spread over more than the window (3 s here, a sweep of
/// one node every 4 s): never more than 2 pairs in the window, nothing.
fn a_slow_sweep_is_nothing(lab: &Lab, store: &Store) {
    let agents = start_agents(lab, store, |name| {
        fleet_args(&store.urls(), name).set("--scan-window", "3s")
    });
    for &index in &NODES {
        lab.attempts(SCANNER, lab.addr(index, false), &[22, 80], 0.5);
        std::thread::sleep(Duration::from_secs(4));
    }
    std::thread::sleep(SETTLE);
    for agent in &agents {
        assert!(events_starting(agent, "Fleet scan detected").is_empty());
        assert!(events_starting(agent, "Blocked").is_empty());
    }
    stop_all(agents);
}

#[test]
fn one_server_shares_a_block() {
    let Some(lab) = lab() else { return };
    let store = Store::One(Redis::start_in_lab(&lab, REDIS));
    shares_a_block(&lab, &store);
}

#[test]
fn one_server_detects_a_sweep_once_and_a_slow_one_never() {
    let Some(lab) = lab() else { return };
    let store = Store::One(Redis::start_in_lab(&lab, REDIS));
    detects_a_sweep(&lab, &store);
    store.flush();
    a_slow_sweep_is_nothing(&lab, &store);
}

#[test]
fn cluster_shares_a_block() {
    let Some(lab) = lab() else { return };
    let store = Store::Cluster(Cluster::start_in_lab(&lab, REDIS));
    shares_a_block(&lab, &store);
}

#[test]
fn cluster_detects_a_sweep_once_and_a_slow_one_never() {
    let Some(lab) = lab() else { return };
    let store = Store::Cluster(Cluster::start_in_lab(&lab, REDIS));
    detects_a_sweep(&lab, &store);
    store.flush();
    a_slow_sweep_is_nothing(&lab, &store);
}

// ---------------------------------------------------------------------------
// The operator's blocks, and what a node never blocks

/// `blocks add` and `blocks remove` on node A, through its control socket,
/// are the fleet's: B and C apply A's block as A's and lift it when A
/// does. A fleet block of B's own address is refused by B (its own
/// allowlist, said on stderr) and applied by C; one in C's `--allow` is
/// refused by C and applied by B.
#[test]
fn operators_blocks_add_and_remove_reach_the_fleet_through_each_allowlist() {
    let Some(lab) = lab() else { return };
    let store = Store::One(Redis::start_in_lab(&lab, REDIS));
    let control = ControlSocket::new();
    let allowed_on_c = "203.0.113.50";
    let agents = start_agents(&lab, &store, |name| {
        let args = fleet_args(&store.urls(), name);
        match name {
            "node-a" => args.control(&control),
            "node-c" => args.set("--allow", allowed_on_c),
            _ => args,
        }
    });
    let add = |target: &str| {
        control.output(&lab, NODES[0], &["blocks", "add", target, "--ttl", "5m"]);
    };
    let shared = |ip: IpAddr| format!("{} (fleet: node-a)", blocked(ip, "5m", "nftables"));

    let target: IpAddr = "198.51.100.77".parse().unwrap();
    add(&target.to_string());
    agents[0].expect_event(&blocked(target, "5m", "nftables"), EVENT);
    for (agent, &index) in agents[1..].iter().zip(&NODES[1..]) {
        agent.expect_event(&shared(target), EVENT);
        assert!(kernel_holds(&lab, index, target), "host {index}");
    }
    control.output(&lab, NODES[0], &["blocks", "remove", &target.to_string()]);
    let unblocked = format!("Unblocked {target} via nftables");
    for (agent, &index) in agents.iter().zip(&NODES) {
        agent.expect_event(&unblocked, EVENT);
        assert!(within(EVENT, || !kernel_holds(&lab, index, target)));
    }

    // B's own address: B never blocks it, C does.
    let b_own = lab.addr(NODES[1], false);
    add(&b_own.to_string());
    agents[2].expect_event(&shared(b_own), EVENT);
    agents[1].expect_stderr(
        &format!("not blocking {b_own} from the fleet (node-a): "),
        EVENT,
    );
    assert!(!kernel_holds(&lab, NODES[1], b_own));
    // In C's --allow: C never blocks it, B does.
    let listed: IpAddr = allowed_on_c.parse().unwrap();
    add(allowed_on_c);
    agents[1].expect_event(&shared(listed), EVENT);
    agents[2].expect_stderr(
        &format!("not blocking {listed} from the fleet (node-a): "),
        EVENT,
    );
    assert!(!kernel_holds(&lab, NODES[2], listed));
    std::thread::sleep(SETTLE);
    assert!(events_starting(&agents[1], &format!("Blocked {b_own} ")).is_empty());
    assert!(events_starting(&agents[2], &format!("Blocked {listed} ")).is_empty());
    stop_all(agents);
}

// ---------------------------------------------------------------------------
// Redis down, back, and back empty

/// `Blocked IP for TTL via nftables (fleet: node-a)`: the TTL in seconds.
fn fleet_ttl(line: &str, ip: IpAddr) -> u64 {
    let re = regex::Regex::new(&format!(
        r"^Blocked {ip} for (\d+)(s|m) via nftables \(fleet: node-a\)$"
    ))
    .unwrap();
    let c = re.captures(line).unwrap_or_else(|| panic!("{line}"));
    let n: u64 = c[1].parse().unwrap();
    if &c[2] == "m" {
        n * 60
    } else {
        n
    }
}

/// Redis killed for 30 s while node A blocks a scanner: A goes on
/// detecting and blocking; once Redis is back (empty: it kept nothing), B
/// and C apply A's block with the time it has left, once. Redis restarted
/// empty again: A publishes the ban again, with its expiry; nobody applies
/// anything twice.
#[test]
fn redis_down_then_back_then_back_empty() {
    let Some(lab) = lab() else { return };
    let mut redis = Redis::start_in_lab(&lab, REDIS);
    let endpoints = [format!("{}:{}", redis.host, redis.port)];
    let urls = [redis.url()];
    let agents: Vec<Agent> = NODES
        .iter()
        .zip(NAMES)
        .map(|(&index, name)| {
            let agent = Agent::start_pcap(&lab, index, SCANNER, &fleet_args(&urls, name))
                .ignoring(format!(" -> {}", endpoints[0]));
            agent.expect_stderr("fleet: following ", EVENT);
            agent
        })
        .collect();
    let s = scanner(&lab);

    redis.kill();
    let killed = Instant::now();
    for agent in &agents {
        agent.expect_stderr("local detection and blocking go on, reconnecting", EVENT);
    }
    syn_scan(&lab, NODES[0]);
    agents[0].expect_event(&blocked(s, "10m", "nftables"), EVENT);
    assert!(kernel_holds(&lab, NODES[0], s));
    std::thread::sleep(Duration::from_secs(30).saturating_sub(killed.elapsed()));
    redis.start_again();

    let shared = regex::Regex::new(&format!(
        r"^Blocked {s} for \d+(s|m) via nftables \(fleet: node-a\)$"
    ))
    .unwrap();
    for (agent, &index) in agents[1..].iter().zip(&NODES[1..]) {
        let line = agent
            .wait_for(
                |l| event_text(l).is_some_and(|t| shared.is_match(t)),
                Duration::from_secs(30),
            )
            .unwrap_or_else(|| panic!("no fleet block; stderr {}", agent.stderr()));
        // What is left of A's 10 minutes, some 30 s later.
        let ttl = fleet_ttl(event_text(&line).unwrap(), s);
        assert!((480..=575).contains(&ttl), "{line}");
        assert!(kernel_holds(&lab, index, s));
    }
    for agent in &agents {
        // One warning for the outage, then following again.
        assert_eq!(
            agent.stderr_lines("reconnecting").len(),
            1,
            "{}",
            agent.stderr()
        );
        assert!(within(EVENT, || agent
            .stderr_lines("fleet: following ")
            .len()
            == 2));
    }
    let key = format!("tcpwatch:{{bans}}:ban:{s}");
    let expiry = redis.cli(&["PEXPIRETIME", &key]);
    assert!(expiry.parse::<u64>().is_ok_and(|e| e > 0), "{expiry}");

    // Back empty: the ban is published again, until the same instant.
    redis.kill();
    redis.start_again();
    assert!(
        within(Duration::from_secs(30), || redis
            .cli(&["PEXPIRETIME", &key])
            == expiry),
        "not published again: {}",
        redis.cli(&["PEXPIRETIME", &key])
    );
    std::thread::sleep(SETTLE);
    for (i, agent) in agents.iter().enumerate() {
        let blocks = events_starting(agent, &format!("Blocked {s} "));
        assert_eq!(blocks.len(), 1, "{}: applied twice? {blocks:#?}", NAMES[i]);
    }
    stop_all(agents);
}

/// Node A stopped, Redis losing its data meanwhile, A started again with
/// its state file: A gives the fleet the block it restored, with its
/// expiry, and node C (following the fleet since) applies it as A's and
/// drops the scanner.
#[test]
fn a_restarted_node_publishes_its_restored_blocks_again() {
    let Some(lab) = lab() else { return };
    let store = Store::One(Redis::start_in_lab(&lab, REDIS));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("fleetfin-node-a.state");
    let urls = store.urls();
    let a_args = fleet_args(&urls, NAMES[0]).state(&state);
    // The agents' probe SYN comes from node B's host (no agent there): the
    // restarted A drops and does not report the scanner's.
    let start = |index: usize, args: &Args| {
        let mut agent = Agent::start_pcap(&lab, index, NODES[1], args);
        for endpoint in store.endpoints() {
            agent = agent.ignoring(format!(" -> {endpoint}"));
        }
        agent.expect_stderr("fleet: following ", EVENT);
        agent
    };
    let s = scanner(&lab);
    let a = start(NODES[0], &a_args);
    syn_scan(&lab, NODES[0]);
    a.expect_event(&blocked(s, "10m", "nftables"), EVENT);
    stop_all(vec![a]);
    store.flush();

    let c = start(NODES[2], &fleet_args(&urls, NAMES[2]));
    let a = start(NODES[0], &a_args);
    assert!(a.stderr().contains("restored 1 blocks"), "{}", a.stderr());
    let shared = regex::Regex::new(&format!(
        r"^Blocked {s} for \d+(s|m) via nftables \(fleet: node-a\)$"
    ))
    .unwrap();
    let line = c
        .wait_for(|l| event_text(l).is_some_and(|t| shared.is_match(t)), EVENT)
        .unwrap_or_else(|| panic!("C: no fleet block; stderr {}", c.stderr()));
    // What is left of A's 10 minutes.
    let ttl = fleet_ttl(event_text(&line).unwrap(), s);
    assert!((500..=600).contains(&ttl), "{line}");
    assert!(kernel_holds(&lab, NODES[2], s));
    assert_dropped(&lab, NODES[2]);
    assert!(
        events_starting(&a, "Blocked ").is_empty(),
        "A reports it again"
    );
    stop_all(vec![a, c]);
}

// ---------------------------------------------------------------------------
// An ACL user over TLS; a wrong password

/// Redis with TLS only (a CA of the test's own) and two users: `tcpwatch`
/// with only the fleet's commands, `admin` for the test.
fn tls_redis(lab: &Lab, dir: &std::path::Path) -> (Redis, std::path::PathBuf) {
    let (ca, cert, key) = make_certs_for(dir, &[lab.addr(REDIS, false)]);
    let acl = dir.join("users.acl");
    std::fs::write(
        &acl,
        format!(
            "user default off\nuser admin on >admin-secret ~* &* +@all\nuser tcpwatch on >fleet-secret ~tcpwatch:* resetchannels {ACL_COMMANDS}\n"
        ),
    )
    .unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (cert, key, ca_arg, acl) = (path(&cert), path(&key), path(&ca), path(&acl));
    let extra = [
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_arg,
        "--tls-auth-clients",
        "no",
        "--aclfile",
        &acl,
    ];
    let mut redis = Redis::start_in_lab_with(lab, REDIS, 6380, &extra, true);
    redis.set_cli_args(&[
        "--tls",
        "--cacert",
        &ca_arg,
        "--user",
        "admin",
        "--pass",
        "admin-secret",
        "--no-auth-warning",
    ]);
    (redis, ca)
}

/// The three agents as the `tcpwatch` user over TLS (password in a file)
/// share a block, and Redis refused none of their commands. Then an agent
/// with a wrong password says so in one line, never the password, and goes
/// on detecting and blocking on its own.
#[test]
fn acl_user_over_tls_and_a_wrong_password() {
    let Some(lab) = lab() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (redis, ca) = tls_redis(&lab, dir.path());
    let password = dir.path().join("fleet.pass");
    std::fs::write(&password, "fleet-secret\n").unwrap();
    let url = format!("rediss://tcpwatch@{}:{}", redis.host, redis.port);
    let tls_args = |name: &str, password: &std::path::Path| {
        fleet_args(std::slice::from_ref(&url), name)
            .set("--fleet-password-file", password.display())
            .set("--fleet-tls-ca", ca.display())
    };
    let store = Store::One(redis);
    let agents = start_agents(&lab, &store, |name| tls_args(name, &password));
    let s = scanner(&lab);
    syn_scan(&lab, NODES[0]);
    agents[0].expect_event(&blocked(s, "10m", "nftables"), EVENT);
    let shared = format!("{} (fleet: node-a)", blocked(s, "10m", "nftables"));
    for (agent, &index) in agents[1..].iter().zip(&NODES[1..]) {
        agent.expect_event(&shared, EVENT);
        assert!(kernel_holds(&lab, index, s));
    }
    let Store::One(redis) = &store else {
        unreachable!()
    };
    let log = redis.cli(&["ACL", "LOG"]);
    assert!(log.is_empty(), "commands the ACL refused: {log}");
    stop_all(agents);

    let wrong = dir.path().join("wrong.pass");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    let agent = Agent::start_pcap(&lab, NODES[0], SCANNER, &tls_args("node-a", &wrong))
        .ignoring(format!(" -> {}:{}", redis.host, redis.port));
    agent.expect_stderr("authentication failed", EVENT);
    syn_scan(&lab, NODES[0]);
    agent.expect_event(&blocked(s, "10m", "nftables"), EVENT);
    std::thread::sleep(SETTLE);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let fleet_lines: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("fleet"))
        .collect();
    assert_eq!(fleet_lines.len(), 1, "{fleet_lines:#?}");
    assert!(
        fleet_lines[0].starts_with("tcpwatch: warning: fleet: ")
            && fleet_lines[0].contains("authentication failed"),
        "{}",
        fleet_lines[0]
    );
    assert!(!finished.stderr.contains("not-the-secret"));
}
