//! The fleet stage against real Redis, in-process: several nodes (one
//! `FleetHandle` each) share one `redis-server`, a three-master Redis
//! Cluster, or a TLS server with an ACL user. Each test starts its own
//! servers on free loopback ports ([`crate::redis`]); without
//! `redis-server` they skip, or fail under `CI=true`. The agents
//! themselves, in namespaces, are the `fleet` suite.

use crate::redis::{self as redis_server, available, Cluster, Redis};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tcpwatch::fleet::{
    parse_url, unix_ms, Attempt, Fleet, FleetEvent, FleetHandle, FleetSettings, PasswordSource,
};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

/// One in-process node.
struct Node {
    name: String,
    handle: FleetHandle,
    events: mpsc::Receiver<FleetEvent>,
}

fn settings(urls: &[String], name: &str) -> FleetSettings {
    let urls = urls.iter().map(|u| parse_url(u).unwrap()).collect();
    let mut s = FleetSettings::new(urls, name);
    s.flush_interval = Duration::from_millis(100);
    s.scan_window = Duration::from_secs(5);
    s.scan_pairs = 3;
    s.max_backoff = Duration::from_millis(800);
    s.timeout = Duration::from_secs(2);
    s
}

fn start(settings: FleetSettings) -> Node {
    let name = settings.node_name.clone();
    let (handle, events) = Fleet::start(settings, 1024).expect("start fleet");
    Node {
        name,
        handle,
        events,
    }
}

/// Nodes of these `names` on `urls`, each with its settings `tune`d, once
/// every one is up.
async fn up_nodes(urls: &[String], names: &[&str], tune: &dyn Fn(&mut FleetSettings)) -> Vec<Node> {
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| {
            let mut s = settings(urls, n);
            tune(&mut s);
            start(s)
        })
        .collect();
    for n in nodes.iter_mut() {
        n.up().await;
    }
    nodes
}

/// A node of `name` on `urls` with the tests' settings, once it is up.
async fn up_node(urls: &[String], name: &str) -> Node {
    up_nodes(urls, &[name], &|_| {}).await.remove(0)
}

impl Node {
    /// The next event that `pick` accepts (others are skipped); panics
    /// after `within`.
    async fn expect<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&FleetEvent) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Ok(None) => panic!("{}: event channel closed waiting for {what}", self.name),
                Err(_) => panic!("{}: no {what} within {within:?}", self.name),
            }
        }
    }

    async fn up(&mut self) {
        self.expect(WAIT, "Up", |e| match e {
            FleetEvent::Up { .. } => Some(()),
            FleetEvent::Down { reason } => {
                eprintln!("(waiting for Up) Down: {reason}");
                None
            }
            _ => None,
        })
        .await
    }

    /// Every event within `d`.
    async fn drain(&mut self, d: Duration) -> Vec<FleetEvent> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            out.push(e);
        }
        out
    }
}

fn net(s: &str) -> IpNet {
    if s.contains('/') {
        s.parse().unwrap()
    } else {
        IpNet::from(s.parse::<IpAddr>().unwrap())
    }
}

fn in_an_hour() -> SystemTime {
    // Whole milliseconds, as the fleet carries them.
    let ms = unix_ms(SystemTime::now()).unwrap() + 3_600_000;
    tcpwatch::fleet::from_unix_ms(ms)
}

async fn remote_block(node: &mut Node, target: IpNet) -> (SystemTime, String) {
    node.expect(WAIT, &format!("RemoteBlock {target}"), |e| match e {
        FleetEvent::RemoteBlock {
            target: t,
            expires,
            origin,
            ..
        } if *t == target => Some((*expires, origin.clone())),
        _ => None,
    })
    .await
}

async fn remote_unblock(node: &mut Node, target: IpNet) -> Option<String> {
    node.expect(WAIT, &format!("RemoteUnblock {target}"), |e| match e {
        FleetEvent::RemoteUnblock { target: t, origin } if *t == target => Some(origin.clone()),
        _ => None,
    })
    .await
}

fn attempts(source: &str, host: &str, ports: &[u16]) -> Vec<Attempt> {
    ports
        .iter()
        .map(|p| Attempt {
            source: source.parse().unwrap(),
            host: host.parse().unwrap(),
            port: *p,
        })
        .collect()
}

fn scans(events: &[FleetEvent]) -> Vec<(IpNet, usize, Vec<u16>)> {
    events
        .iter()
        .filter_map(|e| match e {
            FleetEvent::FleetScan {
                source,
                hosts,
                ports,
                ..
            } => Some((*source, *hosts, ports.clone())),
            _ => None,
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---------------------------------------------------------------------------
// Scenarios, shared by the single server, the cluster and the TLS/ACL server

/// A block from A reaches B and C with the same absolute expiry, never A;
/// an unblock follows; returns A-publish to C-event latencies of 20 blocks.
async fn share_blocks(urls: &[String], tune: &dyn Fn(&mut FleetSettings)) -> Vec<Duration> {
    let mut nodes = up_nodes(urls, &["node-a", "node-b", "node-c"], tune).await;
    let (a, rest) = nodes.split_first_mut().unwrap();
    let (b, rest) = rest.split_first_mut().unwrap();
    let c = &mut rest[0];

    let target = net("192.0.2.56");
    let expires = in_an_hour();
    a.handle
        .publish_block(target, expires, "port scan")
        .unwrap();
    for n in [&mut *b, &mut *c] {
        let (got, origin) = remote_block(n, target).await;
        assert_eq!(got, expires, "{}: same absolute expiry", n.name);
        assert_eq!(origin, "node-a");
    }
    // A prefix travels as a prefix.
    let prefix = net("2001:db8:1:2::/64");
    b.handle.publish_block(prefix, expires, "").unwrap();
    assert_eq!(remote_block(c, prefix).await.1, "node-b");
    assert_eq!(remote_block(a, prefix).await.1, "node-b");

    a.handle.publish_unblock(target).unwrap();
    for n in [&mut *b, &mut *c] {
        assert_eq!(remote_unblock(n, target).await.as_deref(), Some("node-a"));
    }

    // Latency: A publishes, C applies.
    let mut latencies = Vec::new();
    for i in 0..20u8 {
        let t = net(&format!("198.51.100.{}", 100 + i));
        let sent = Instant::now();
        a.handle.publish_block(t, in_an_hour(), "latency").unwrap();
        remote_block(c, t).await;
        latencies.push(sent.elapsed());
    }

    // A never hears its own blocks back.
    let echoed: Vec<FleetEvent> = a
        .drain(Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|e| matches!(e, FleetEvent::RemoteBlock { origin, .. } | FleetEvent::RemoteUnblock { origin: Some(origin), .. } if origin == "node-a"))
        .collect();
    assert!(
        echoed.is_empty(),
        "A got its own decisions back: {echoed:?}"
    );
    let counters = a.handle.counters();
    assert_eq!(counters.message("out", "block"), 21);
    assert_eq!(counters.message("out", "unblock"), 1);
    assert_eq!(c.handle.counters().message("in", "block"), 22);
    assert_eq!(c.handle.counters().malformed.load(Ordering::Relaxed), 0);
    latencies.sort();
    latencies
}

/// Two ports on each of three nodes within the window: exactly one fleet
/// scan in the whole fleet. The same spread over more than the window: none.
async fn detect_fleet_scan(urls: &[String], tune: &dyn Fn(&mut FleetSettings)) {
    let mut nodes = up_nodes(urls, &["node-a", "node-b", "node-c"], tune).await;
    let hosts = ["10.9.0.1", "10.9.0.2", "10.9.0.3"];
    // All three at once: the scripts are atomic, one call crosses the line.
    for (n, host) in nodes.iter().zip(hosts) {
        n.handle
            .observe_attempts(&attempts("192.0.2.99", host, &[22, 80]));
    }
    let mut all = Vec::new();
    for n in nodes.iter_mut() {
        let events = n.drain(Duration::from_millis(1500)).await;
        for s in scans(&events) {
            all.push((n.name.clone(), s));
        }
    }
    assert_eq!(all.len(), 1, "exactly one fleet scan in the fleet: {all:?}");
    let (_, (source, hosts_seen, ports)) = &all[0];
    assert_eq!(*source, net("192.0.2.99"));
    assert!(*hosts_seen >= 2, "{all:?}");
    assert_eq!(ports, &vec![22, 80]);

    // The episode goes on: more attempts, no second report.
    for (n, host) in nodes.iter().zip(hosts) {
        n.handle
            .observe_attempts(&attempts("192.0.2.99", host, &[443]));
    }
    for n in nodes.iter_mut() {
        let events = n.drain(Duration::from_millis(400)).await;
        assert!(scans(&events).is_empty(), "{}: reported twice", n.name);
    }
    let in_scan: u64 = nodes
        .iter()
        .map(|n| n.handle.counters().message("in", "scan"))
        .sum();
    assert_eq!(in_scan, 1);

    // Spread over more than a window (1.5 s here, sweeps 3 s apart so a
    // loaded machine's late flush cannot bring two together): never more
    // than 2 pairs in the window, no scan.
    let slow_window = |s: &mut FleetSettings| {
        tune(s);
        s.scan_window = Duration::from_millis(1500);
    };
    let mut slow = up_nodes(urls, &["slow-a", "slow-b", "slow-c"], &slow_window).await;
    for i in 0..3 {
        slow[i]
            .handle
            .observe_attempts(&attempts("192.0.2.98", hosts[i], &[22, 80]));
        tokio::time::sleep(Duration::from_millis(3000)).await;
    }
    for n in slow.iter_mut() {
        let events = n.drain(Duration::from_millis(300)).await;
        assert!(scans(&events).is_empty(), "{}: slow sweep reported", n.name);
    }
}

fn report_latency(label: &str, l: &[Duration]) {
    eprintln!(
        "fleet propagation ({label}): A publish -> C event over {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        percentile(l, 0.50).as_secs_f64() * 1e3,
        percentile(l, 0.99).as_secs_f64() * 1e3,
        l.last().unwrap().as_secs_f64() * 1e3
    );
}

// ---------------------------------------------------------------------------
// One server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_shares_blocks() {
    if !available() {
        return;
    }
    let r = Redis::start();
    let latencies = share_blocks(&[r.url()], &|_| {}).await;
    report_latency("one server", &latencies);
    // The ban is a key with the absolute expiry.
    let key = "tcpwatch:{bans}:ban:198.51.100.100";
    let at: u64 = r.cli(&["PEXPIRETIME", key]).parse().unwrap();
    let now = unix_ms(SystemTime::now()).unwrap();
    assert!(at > now + 3_500_000 && at < now + 3_700_000, "{at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_detects_fleet_scans() {
    if !available() {
        return;
    }
    let r = Redis::start();
    detect_fleet_scan(&[r.url()], &|_| {}).await;
}

// ---------------------------------------------------------------------------
// Faults

/// A TCP relay whose link can be cut and restored, to take one node off
/// Redis while the others stay.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Relay { port, up, cut }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn downs(events: &[FleetEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            FleetEvent::Down { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_back_publishes_and_catches_up() {
    if !available() {
        return;
    }
    // Persistent (every write synced), so a killed server comes back with
    // its data.
    let mut r = Redis::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let mut a = start(settings(&[r.url()], "node-a"));
    let mut b = start(settings(&[r.url()], "node-b"));
    a.up().await;
    b.up().await;
    let x1 = net("192.0.2.1");
    a.handle.publish_block(x1, in_an_hour(), "before").unwrap();
    remote_block(&mut b, x1).await;

    r.kill();
    for n in [&mut a, &mut b] {
        let reason = n
            .expect(WAIT, "Down", |e| match e {
                FleetEvent::Down { reason } => Some(reason.clone()),
                _ => None,
            })
            .await;
        assert!(!reason.contains('\n') && !reason.is_empty(), "{reason:?}");
        eprintln!("{} down: {reason}", n.name);
        assert!(!n.handle.counters().up());
    }
    // Decisions made while Redis is away are accepted (never waited for).
    let x2 = net("192.0.2.2");
    let exp2 = in_an_hour();
    a.handle.publish_block(x2, exp2, "meanwhile").unwrap();
    b.handle.publish_unblock(x1).unwrap();
    a.handle
        .observe_attempts(&attempts("192.0.2.77", "10.9.0.1", &[1, 2]));
    // Several reconnection attempts fail meanwhile: still one Down each.
    let meanwhile_a = a.drain(Duration::from_secs(3)).await;
    let meanwhile_b = b.drain(Duration::from_millis(10)).await;
    assert!(downs(&meanwhile_a).is_empty(), "{meanwhile_a:?}");
    assert!(downs(&meanwhile_b).is_empty(), "{meanwhile_b:?}");
    assert!(a.handle.counters().dropped_attempts.load(Ordering::Relaxed) >= 2);

    r.restart();
    a.up().await;
    b.up().await;
    let (got, origin) = remote_block(&mut b, x2).await;
    assert_eq!((got, origin.as_str()), (exp2, "node-a"));
    assert_eq!(remote_unblock(&mut a, x1).await.as_deref(), Some("node-b"));
    assert_eq!(a.handle.counters().reconnects.load(Ordering::Relaxed), 1);
    assert!(a.handle.counters().up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_never_makes_the_handle_wait() {
    if !available() {
        return;
    }
    let r = Redis::start();
    let mut a = up_node(&[r.url()], "node-a").await;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &r.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    // Hammer the handle while Redis answers nothing: every call returns at
    // once; what does not fit is refused and counted.
    let started = Instant::now();
    let mut refused = 0u64;
    for i in 0..20_000u32 {
        let t = net(&format!("198.18.{}.{}", i / 250, i % 250 + 1));
        if a.handle.publish_block(t, in_an_hour(), "").is_err() {
            refused += 1;
        }
        a.handle.observe_attempts(&attempts(
            "192.0.2.1",
            "10.9.0.1",
            &[(i % 60000 + 1) as u16],
        ));
    }
    let took = started.elapsed();
    eprintln!(
        "20,000 publish_block + observe_attempts with Redis stopped: {took:?}, {refused} refused"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    let c = a.handle.counters();
    assert_eq!(c.dropped_queue.load(Ordering::Relaxed), refused);
    assert!(refused > 0, "the queue is bounded");
    // The task notices (its command time-out) and says so once.
    let reason = a
        .expect(WAIT, "Down", |e| match e {
            FleetEvent::Down { reason } => Some(reason.clone()),
            _ => None,
        })
        .await;
    eprintln!("stalled Redis: {reason}");
    signal("-CONT");
    a.up().await;
    assert!(c.dropped_attempts.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cut_off_catches_up_from_the_log_or_the_index() {
    if !available() {
        return;
    }
    let r = Redis::start();
    let relay = Relay::start(r.port).await;
    let tune = |s: &mut FleetSettings| {
        s.limits.log_len = 20;
        s.limits.queue = 4096;
    };
    let mut sa = settings(&[r.url()], "node-a");
    tune(&mut sa);
    let mut a = start(sa);
    let mut c = start(settings(&[relay.url()], "node-c"));
    a.up().await;
    c.up().await;
    let y = net("192.0.2.10");
    a.handle.publish_block(y, in_an_hour(), "").unwrap();
    remote_block(&mut c, y).await;
    let resyncs_before = c.handle.counters().resyncs.load(Ordering::Relaxed);

    // A short cut: C catches up from the log.
    relay.cut();
    c.expect(WAIT, "Down", |e| {
        matches!(e, FleetEvent::Down { .. }).then_some(())
    })
    .await;
    for i in 0..3u8 {
        a.handle
            .publish_block(net(&format!("192.0.2.{}", 20 + i)), in_an_hour(), "")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.restore();
    c.up().await;
    for i in 0..3u8 {
        remote_block(&mut c, net(&format!("192.0.2.{}", 20 + i))).await;
    }
    assert_eq!(
        c.handle.counters().resyncs.load(Ordering::Relaxed),
        resyncs_before,
        "caught up from the log, no full read"
    );

    // A long cut: the log is trimmed past C's position; C reads the index,
    // and lifts the ban that is gone.
    relay.cut();
    c.expect(WAIT, "Down", |e| {
        matches!(e, FleetEvent::Down { .. }).then_some(())
    })
    .await;
    a.handle.publish_unblock(y).unwrap();
    // More than one page (1000) of the index.
    let many: Vec<IpNet> = (0..2100u32)
        .map(|i| net(&format!("100.65.{}.{}", i / 250, i % 250 + 1)))
        .collect();
    for t in &many {
        a.handle.publish_block(*t, in_an_hour(), "").unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Unblock entries fill the log past the trim too.
    for i in 0..150u32 {
        a.handle
            .publish_unblock(net(&format!("198.18.{}.{}", i / 200, i % 200 + 1)))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let len: usize = r.cli(&["XLEN", "tcpwatch:{bans}:log"]).parse().unwrap();
    assert!(len < 400, "log not trimmed: {len}");
    relay.restore();
    c.up().await;
    let mut pending: std::collections::HashSet<IpNet> = many.iter().copied().collect();
    let mut lifted = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while (!pending.is_empty() || !lifted) && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, c.events.recv()).await {
            Ok(Some(FleetEvent::RemoteBlock { target, .. })) => {
                pending.remove(&target);
            }
            Ok(Some(FleetEvent::RemoteUnblock { target, .. })) if target == y => lifted = true,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert!(pending.is_empty(), "missed {} bans", pending.len());
    assert!(lifted, "the lifted ban was not lifted on C");
    assert!(c.handle.counters().resyncs.load(Ordering::Relaxed) > resyncs_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_the_bans_again() {
    if !available() {
        return;
    }
    let mut r = Redis::start();
    let mut a = start(settings(&[r.url()], "node-a"));
    let mut b = start(settings(&[r.url()], "node-b"));
    a.up().await;
    b.up().await;
    let x = net("192.0.2.5");
    let expires = in_an_hour();
    a.handle.publish_block(x, expires, "scan").unwrap();
    remote_block(&mut b, x).await;

    r.restart(); // no persistence: empty
    assert_eq!(r.cli(&["DBSIZE"]), "0");
    a.up().await;
    b.up().await;
    // A published its ban again, with the same absolute expiry.
    let key = "tcpwatch:{bans}:ban:192.0.2.5";
    let deadline = Instant::now() + WAIT;
    while r.cli(&["EXISTS", key]) != "1" {
        assert!(Instant::now() < deadline, "ban not published again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at: u64 = r.cli(&["PEXPIRETIME", key]).parse().unwrap();
    assert_eq!(at, unix_ms(expires).unwrap());
    // (A sent it again as a ban still in force, counted in `republished`;
    // or, when the kill cut the reply to its first publish, as a decision
    // still pending. Only A holds it, so the key is A's either way.)
    // A node that joins now gets it.
    let mut d = up_node(&[r.url()], "node-d").await;
    let (got, origin) = remote_block(&mut d, x).await;
    assert_eq!((got, origin.as_str()), (expires, "node-a"));
    // B did not lift it meanwhile.
    let events = b.drain(Duration::from_millis(500)).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, FleetEvent::RemoteUnblock { .. })),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_while_connected_is_noticed_within_the_epoch_check() {
    if !available() {
        return;
    }
    let r = Redis::start();
    let mut a = up_node(&[r.url()], "node-a").await;
    let x = net("192.0.2.6");
    let expires = in_an_hour();
    a.handle.publish_block(x, expires, "").unwrap();
    let key = "tcpwatch:{bans}:ban:192.0.2.6";
    let deadline = Instant::now() + WAIT;
    while r.cli(&["EXISTS", key]) != "1" {
        assert!(Instant::now() < deadline, "ban not published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection stays; the data goes.
    assert_eq!(r.cli(&["FLUSHALL"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.cli(&["EXISTS", key]) != "1" {
        assert!(
            Instant::now() < deadline,
            "ban not published again after FLUSHALL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at: u64 = r.cli(&["PEXPIRETIME", key]).parse().unwrap();
    assert_eq!(at, unix_ms(expires).unwrap());
    assert_eq!(a.handle.counters().republished.load(Ordering::Relaxed), 1);
    // Never down meanwhile.
    let events = a.drain(Duration::from_millis(200)).await;
    assert!(downs(&events).is_empty(), "{events:?}");

    // Dropping the handle stops the task: the event channel ends.
    let Node {
        handle, mut events, ..
    } = a;
    drop(handle);
    let end = tokio::time::timeout(WAIT, async { while events.recv().await.is_some() {} }).await;
    assert!(end.is_ok(), "the task did not stop");
}

// ---------------------------------------------------------------------------
// Redis Cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_of_three_masters() {
    if !available() {
        return;
    }
    let cluster = Cluster::start();
    let urls = cluster.urls();
    let latencies = share_blocks(&urls, &|_| {}).await;
    report_latency("3-master cluster", &latencies);
    detect_fleet_scan(&urls, &|_| {}).await;
    // One seed URL is enough when told it is a cluster, and a single-server
    // client that meets a cluster switches by itself.
    for cluster_flag in [true, false] {
        let mut s = settings(&urls[..1], "seed-only");
        s.cluster = cluster_flag;
        let mut n = start(s);
        n.up().await;
        remote_block(&mut n, net("198.51.100.100")).await;
    }
    // As the ACL user (created on every master), with the password from the
    // environment: the windows of 300 sources spread over the shards, and
    // nothing is refused.
    for n in &cluster.nodes {
        let mut args = vec![
            "ACL",
            "SETUSER",
            "tcpwatch",
            "on",
            ">cluster-secret",
            "~tcpwatch:*",
            "resetchannels",
        ];
        args.extend(ACL_COMMANDS.split(' '));
        assert_eq!(n.cli(&args), "OK");
    }
    std::env::set_var("TCPWATCH_FLEET_TEST_CLUSTER_PW", "cluster-secret");
    let acl_urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://tcpwatch@127.0.0.1:{}", n.port))
        .collect();
    let mut s = settings(&acl_urls, "acl-node");
    s.password = Some(PasswordSource::Env("TCPWATCH_FLEET_TEST_CLUSTER_PW".into()));
    s.scan_window = Duration::from_secs(30);
    let mut n = start(s);
    n.up().await;
    remote_block(&mut n, net("198.51.100.100")).await;
    let many: Vec<Attempt> = (0..300u32)
        .flat_map(|i| {
            attempts(
                &format!("100.64.{}.{}", i / 250, i % 250 + 1),
                "10.9.0.1",
                &[443],
            )
        })
        .collect();
    n.handle.observe_attempts(&many);
    n.handle
        .publish_block(net("198.51.100.250"), in_an_hour(), "acl")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(n.handle.counters().message("out", "observe"), 300);
    assert_eq!(n.handle.counters().errors.load(Ordering::Relaxed), 0);
    let keys_per_node: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).parse().unwrap())
        .collect();
    eprintln!("cluster keys per master (300 source windows + the bans): {keys_per_node:?}");
    assert!(keys_per_node.iter().all(|k| *k >= 50), "{keys_per_node:?}");
    for node in &cluster.nodes {
        let log = node.cli(&["ACL", "LOG"]);
        assert!(log.is_empty(), "ACL refusals on {}: {log}", node.port);
    }
}

// ---------------------------------------------------------------------------
// Security: an ACL user with only the commands it needs, over TLS

/// The ACL rule of the fleet user, as documented in docs/fleet.md.
pub const ACL_COMMANDS: &str = "-@all +evalsha +script|load +xread +zrange +mget +time +exists +get +set +del +zadd +zrem +zscore +zcard +zremrangebyscore +zremrangebyrank +pexpire +xadd +xinfo|stream +cluster|slots +ping";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_over_tls() {
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = redis_server::make_certs(tmp.path());
    let user = format!("user tcpwatch on >fleet-secret ~tcpwatch:* resetchannels {ACL_COMMANDS}");
    let acl = tmp.path().join("users.acl");
    std::fs::write(
        &acl,
        format!("user default on >admin-secret ~* &* +@all\n{user}\n"),
    )
    .unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let port = redis_server::free_port();
    let mut r = Redis::start_in(
        &dir,
        port,
        &[
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--aclfile",
            acl.to_str().unwrap(),
        ],
        true,
    );
    r.set_cli_args(&[
        "--tls",
        "--cacert",
        ca.to_str().unwrap(),
        "--user",
        "default",
        "--pass",
        "admin-secret",
        "--no-auth-warning",
    ]);
    let password = tmp.path().join("fleet.pass");
    std::fs::write(&password, "fleet-secret\n").unwrap();
    let url = format!("rediss://tcpwatch@localhost:{port}");
    let (pw, ca2) = (password.clone(), ca.clone());
    let tune = move |s: &mut FleetSettings| {
        s.password = Some(PasswordSource::File(pw.clone()));
        s.tls_ca = Some(ca2.clone());
    };
    let latencies = share_blocks(std::slice::from_ref(&url), &tune).await;
    report_latency("TLS + ACL user", &latencies);
    detect_fleet_scan(std::slice::from_ref(&url), &tune).await;
    // Nothing the fleet did was refused by the ACL.
    let log = r.cli(&["ACL", "LOG"]);
    assert!(log.is_empty(), "ACL refusals: {log}");

    // The password from the environment works too.
    std::env::set_var("TCPWATCH_FLEET_TEST_PW", "fleet-secret");
    let mut s = settings(std::slice::from_ref(&url), "env-node");
    s.password = Some(PasswordSource::Env("TCPWATCH_FLEET_TEST_PW".into()));
    s.tls_ca = Some(ca.clone());
    start(s).up().await;

    // A wrong password: one clear Down line, no Up, no panic.
    let wrong = tmp.path().join("wrong.pass");
    std::fs::write(&wrong, "nope\n").unwrap();
    let mut s = settings(std::slice::from_ref(&url), "wrong-pw");
    s.password = Some(PasswordSource::File(wrong));
    s.tls_ca = Some(ca.clone());
    let mut n = start(s);
    let events = n.drain(Duration::from_secs(3)).await;
    let d = downs(&events);
    assert_eq!(d.len(), 1, "{events:?}");
    eprintln!("wrong password: {}", d[0]);
    assert!(
        d[0].contains("WRONGPASS") || d[0].to_lowercase().contains("auth"),
        "{}",
        d[0]
    );
    assert!(!d[0].contains("nope") && !d[0].contains('\n'));
    assert!(!events.iter().any(|e| matches!(e, FleetEvent::Up { .. })));

    // A server certificate from another CA: Down, with the TLS reason.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = redis_server::make_certs(other.path());
    let mut s = settings(std::slice::from_ref(&url), "wrong-ca");
    s.password = Some(PasswordSource::File(password.clone()));
    s.tls_ca = Some(other_ca);
    let mut n = start(s);
    let events = n.drain(Duration::from_secs(3)).await;
    let d = downs(&events);
    assert_eq!(d.len(), 1, "{events:?}");
    eprintln!("wrong CA: {}", d[0]);

    // Plain redis:// to a TLS port never gets up.
    let mut s = settings(&[format!("redis://tcpwatch@localhost:{port}")], "no-tls");
    s.password = Some(PasswordSource::File(password));
    let mut n = start(s);
    let events = n.drain(Duration::from_secs(3)).await;
    assert!(!events.iter().any(|e| matches!(e, FleetEvent::Up { .. })));
    r.kill();
}

// ---------------------------------------------------------------------------
// What is read from Redis is checked

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_ignored_and_counted() {
    if !available() {
        return;
    }
    let r = Redis::start();
    let mut b = up_node(&[r.url()], "node-b").await;
    let soon = unix_ms(SystemTime::now()).unwrap() + 3_600_000;
    let far = unix_ms(SystemTime::now()).unwrap() + 400 * 24 * 3_600_000;
    let log = "tcpwatch:{bans}:log";
    let big = "x".repeat(600);
    let bad_messages = [
        format!("block 10.0.0.0/8 {soon} evil 0123456789abcdef"),
        format!("block 192.0.2.256 {soon} evil 0123456789abcdef"),
        "block 192.0.2.7 -5 evil 0123456789abcdef".to_string(),
        format!("block 192.0.2.7 {soon} evil 0123456789abcdef {big}"),
        format!("block 192.0.2.7 {soon} evil 0123456789abcdef \u{1b}[31mred"),
        "garbage".to_string(),
    ];
    for m in &bad_messages {
        r.cli(&["XADD", log, "*", "m", m]);
    }
    r.cli(&["XADD", log, "*", "x", "y"]);
    r.cli(&["XADD", log, "*", "m", "a", "n", "b"]);
    // Valid syntax, but further away than the node accepts.
    r.cli(&[
        "XADD",
        log,
        "*",
        "m",
        &format!("block 192.0.2.8 {far} evil 0123456789abcdef"),
    ]);
    // And one good one after them.
    r.cli(&[
        "XADD",
        log,
        "*",
        "m",
        &format!("block 192.0.2.9 {soon} node-x 0123456789abcdef fine"),
    ]);
    let (_, origin) = remote_block(&mut b, net("192.0.2.9")).await;
    assert_eq!(origin, "node-x");
    let malformed = b.handle.counters().malformed.load(Ordering::Relaxed);
    assert_eq!(malformed, 9, "malformed counted");

    // The index and the ban keys, read by a node that joins.
    let index = "tcpwatch:{bans}:index";
    r.cli(&["ZADD", index, &soon.to_string(), "not-an-ip"]);
    r.cli(&["ZADD", index, &soon.to_string(), "192.0.2.30"]);
    r.cli(&[
        "SET",
        "tcpwatch:{bans}:ban:192.0.2.30",
        "block 192.0.2.31 1 x 0123456789abcdef",
    ]);
    r.cli(&["ZADD", index, &soon.to_string(), "192.0.2.32"]);
    r.cli(&["HSET", "tcpwatch:{bans}:ban:192.0.2.32", "a", "b"]);
    r.cli(&["ZADD", index, &soon.to_string(), "192.0.2.40"]);
    r.cli(&[
        "SET",
        "tcpwatch:{bans}:ban:192.0.2.40",
        &format!("block 192.0.2.40 {soon} node-x 0123456789abcdef"),
    ]);
    let mut d = up_node(&[r.url()], "node-d").await;
    remote_block(&mut d, net("192.0.2.40")).await;
    let events = d.drain(Duration::from_millis(500)).await;
    assert!(
        !events.iter().any(|e| matches!(e, FleetEvent::RemoteBlock { target, .. } if target.addr().to_string().starts_with("192.0.2.3"))),
        "{events:?}"
    );
    assert!(d.handle.counters().malformed.load(Ordering::Relaxed) >= 2);

    // A window of the wrong type: that source is skipped and counted, the
    // others go on.
    r.cli(&["SET", "tcpwatch:{198.51.100.9}:pairs", "not-a-zset"]);
    b.handle
        .observe_attempts(&attempts("198.51.100.9", "10.9.0.1", &[1, 2, 3, 4, 5]));
    b.handle
        .observe_attempts(&attempts("198.51.100.10", "10.9.0.1", &[1, 2, 3, 4, 5]));
    let scan = b
        .expect(WAIT, "FleetScan", |e| match e {
            FleetEvent::FleetScan { source, .. } => Some(*source),
            _ => None,
        })
        .await;
    assert_eq!(scan, net("198.51.100.10"));
    assert!(b.handle.counters().errors.load(Ordering::Relaxed) >= 1);
    // Still up and following.
    assert!(b.handle.counters().up());
    // The log itself of the wrong type: the node reports it down (once)
    // and does not crash.
    r.cli(&["DEL", log]);
    r.cli(&["SET", log, "oops"]);
    let reason = b
        .expect(WAIT, "Down", |e| match e {
            FleetEvent::Down { reason } => Some(reason.clone()),
            _ => None,
        })
        .await;
    eprintln!("log of the wrong type: {reason}");
    assert!(reason.contains("WRONGTYPE"), "{reason}");
    // It keeps retrying, silently.
    let events = b.drain(Duration::from_secs(3)).await;
    assert!(downs(&events).is_empty(), "{events:?}");
    assert!(!b.handle.counters().up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_errors_are_one_line() {
    let urls = vec![parse_url("redis://127.0.0.1:1").unwrap()];
    let mut s = FleetSettings::new(urls.clone(), "node a");
    assert!(Fleet::start(s.clone(), 8)
        .unwrap_err()
        .contains("node name"));
    s.node_name = "a".into();
    s.password = Some(PasswordSource::File("/nonexistent/pw".into()));
    let e = Fleet::start(s.clone(), 8).unwrap_err();
    assert!(e.contains("/nonexistent/pw") && !e.contains('\n'), "{e}");
    s.password = None;
    s.tls_ca = Some("/etc/hostname".into());
    assert!(Fleet::start(s.clone(), 8)
        .unwrap_err()
        .contains("rediss://"));
    // Unreachable Redis is not an error: one Down, then retries.
    s.tls_ca = None;
    let (handle, mut events) = Fleet::start(s, 8).unwrap();
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(FleetEvent::Down { reason })) => {
            assert!(reason.contains("127.0.0.1:1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Bounded: the queue fills, then refuses and counts.
    let t = net("192.0.2.1");
    let mut refused = 0;
    for _ in 0..5000 {
        if handle.publish_block(t, in_an_hour(), "").is_err() {
            refused += 1;
        }
    }
    let counters = handle.counters();
    assert_eq!(
        counters.dropped_queue.load(Ordering::Relaxed),
        refused,
        "every refusal counted"
    );
    assert!(handle
        .publish_block(net("10.0.0.0/8"), in_an_hour(), "")
        .is_err());
    assert!(handle
        .publish_block(t, SystemTime::now() - Duration::from_secs(1), "")
        .is_err());
}
