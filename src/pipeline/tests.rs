//! The pipeline in-process: fake sources, a fake firewall, a manual clock
//! and a writer in memory, through the real stage tasks and channels.

use super::stages::{self, Parts, Source};
use crate::block::allow::Allowlist;
use crate::block::blocker::Blocker;
use crate::block::fake::Fake;
use crate::block::firewall::Firewall;
use crate::clock::{Clock, ManualClock};
use crate::detect::Detector;
use crate::event::{Connection, Direction, Observation, Socket, TcpState};
use crate::metrics::Metrics;
use crate::settings::RunSettings;
use crate::sink::{Format, LineSink};
use crate::source::{Context, SocketTable, Stream};
use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the pipeline printed, shared with the test. `hold` makes writes
/// wait (a slow reader of stdout).
#[derive(Clone, Default)]
struct Out {
    bytes: Arc<Mutex<Vec<u8>>>,
    hold: Arc<AtomicBool>,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        while self.hold.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    /// The lines so far, without their time stamps.
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.bytes.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| l.split_once(": ").unwrap().1.to_string())
            .collect()
    }

    /// Waits up to 5 s for `n` lines.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A real-time source fed by the test.
struct FakeStream(mpsc::Receiver<Observation>);

impl Stream for FakeStream {
    fn name(&self) -> &'static str {
        "pcap"
    }
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>> {
        let mut input = self.0;
        Box::pin(async move {
            let _running = crate::health::Running::new(ctx.health);
            while let Some(observation) = input.recv().await {
                if ctx.out.send(observation).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }
}

/// A real-time source that sends what it was given at once, says so, and
/// then waits to be stopped.
struct Burst(Vec<Observation>, Option<tokio::sync::oneshot::Sender<()>>);

impl Stream for Burst {
    fn name(&self) -> &'static str {
        "pcap"
    }
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>> {
        let Burst(observations, sent) = *self;
        Box::pin(async move {
            for observation in observations {
                ctx.out.send(observation).await?;
            }
            if let Some(sent) = sent {
                let _ = sent.send(());
            }
            std::future::pending().await
        })
    }
}

/// A polling source whose tables the test queues; the last one repeats.
#[derive(Clone, Default)]
struct FakeTable(Arc<Mutex<VecDeque<Vec<Socket>>>>);

impl SocketTable for FakeTable {
    fn name(&self) -> &'static str {
        "procfs"
    }
    fn snapshot(&mut self) -> anyhow::Result<Vec<Socket>> {
        let mut tables = self.0.lock().unwrap();
        if tables.len() > 1 {
            Ok(tables.pop_front().unwrap())
        } else {
            Ok(tables.front().cloned().unwrap_or_default())
        }
    }
}

impl FakeTable {
    fn push(&self, sockets: Vec<Socket>) {
        self.0.lock().unwrap().push_back(sockets);
    }
}

struct Rig {
    out: Out,
    firewall: Fake,
    metrics: Arc<Metrics>,
    clock: Arc<ManualClock>,
}

/// The parts of a run over `source`, blocking through a fake firewall.
fn parts(source: Source, settings: RunSettings) -> (Parts, Rig) {
    let clock = Arc::new(ManualClock::new(chrono::Local::now()));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let firewall = Fake::default();
    let metrics = Metrics::new(source.name(), Some("fake"));
    let installed = Firewall::install(
        Box::new(firewall.clone()),
        settings.block.block_ttl,
        dyn_clock.clone(),
    );
    let host: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
    let blocker = Blocker::new(
        installed,
        settings.block.block_ttl,
        Allowlist::new(
            Vec::new(),
            Box::new(move || Ok(host.clone())),
            Box::new(|| Ok(Vec::new())),
        ),
        dyn_clock.clone(),
    );
    let detector = Detector::new(
        source.name(),
        settings.source.report_existing,
        &settings.scan,
        &settings.limits,
    );
    let out = Out::default();
    let parts = Parts {
        source,
        clock: dyn_clock,
        metrics: metrics.clone(),
        detector,
        blocker,
        sink: LineSink::new(Box::new(out.clone()), Format::Text),
        store: None,
        settings,
        xdp_stats: None,
        block_tick: Duration::from_millis(20),
        fleet: None,
    };
    let rig = Rig {
        out,
        firewall,
        metrics,
        clock,
    };
    (parts, rig)
}

fn attempt(clock: &ManualClock, port: u16) -> Observation {
    Observation::Attempt {
        at: clock.now(),
        conn: Connection {
            initiator: "192.0.2.56:40000".parse().unwrap(),
            acceptor: format!("10.0.0.5:{port}").parse().unwrap(),
            direction: Direction::Inbound,
        },
        isn: u32::from(port),
        owner: None,
    }
}

fn scan_lines(ports: &[u16]) -> Vec<String> {
    let mut lines: Vec<String> = ports
        .iter()
        .map(|p| format!("New connection: 192.0.2.56:40000 -> 10.0.0.5:{p}"))
        .collect();
    lines.push("Port scan detected: 192.0.2.56 -> 10.0.0.5 on ports 80,81,82,83".into());
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_in_flight_is_printed_and_the_firewall_removed_last() {
    let clock = ManualClock::new(chrono::Local::now());
    let burst: Vec<Observation> = (80..84).map(|port| attempt(&clock, port)).collect();
    let (sent, burst_sent) = tokio::sync::oneshot::channel();
    let (parts, rig) = parts(
        Source::Stream(Box::new(Burst(burst, Some(sent)))),
        RunSettings::default(),
    );
    let running = stages::start(parts);
    burst_sent.await.unwrap();
    // Stop as soon as the source has sent: nothing it sent may be lost on
    // the way out.
    running.stop().await.unwrap();
    let mut want = scan_lines(&[80, 81, 82, 83]);
    want.push("Blocked 192.0.2.56 for 1h via fake".into());
    assert_eq!(rig.out.lines(), want);
    assert_eq!(
        rig.firewall.log(),
        ["install", "block [192.0.2.56/32]", "remove"],
        "blocked before the objects were removed, removed once"
    );
    let text = rig.metrics.prometheus_text();
    assert!(text.contains("tcpwatch_new_connections_total{direction=\"inbound\"} 4"));
    assert!(text.contains("tcpwatch_blocks_total{backend=\"fake\"} 1"));
    assert!(
        !rig.metrics.source_health().running(),
        "the source is marked ended"
    );
}

fn socket(local: &str, remote: &str, state: TcpState, inode: u64) -> Socket {
    Socket {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        state,
        inode,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rule_and_keeps_the_tables() {
    let table = FakeTable::default();
    let listener = socket("10.0.0.5:80", "0.0.0.0:0", TcpState::Listen, 1);
    let listener2 = socket("10.0.0.5:81", "0.0.0.0:0", TcpState::Listen, 2);
    let a = socket("10.0.0.5:80", "192.0.2.9:4000", TcpState::Established, 3);
    let b = socket("10.0.0.5:81", "192.0.2.9:4001", TcpState::Established, 4);
    table.push(vec![listener, listener2]);
    table.push(vec![listener, listener2, a]);
    let (parts, rig) = parts(
        Source::Table(Box::new(table.clone()), Duration::from_millis(10)),
        RunSettings::default(),
    );
    let running = stages::start(parts);
    let reload = running.reload_sender();
    assert_eq!(
        rig.out.wait_for(1).await,
        ["New connection: 192.0.2.9:4000 -> 10.0.0.5:80"]
    );
    // Two ports are a scan from now on; the connection already reported
    // is not reported again.
    let mut settings = RunSettings::default();
    settings.scan.scan_ports = 1;
    reload.send_replace(settings);
    tokio::time::sleep(Duration::from_millis(50)).await;
    table.push(vec![listener, listener2, a, b]);
    let lines = rig.out.wait_for(3).await;
    running.stop().await.unwrap();
    assert_eq!(
        lines[..3],
        [
            "New connection: 192.0.2.9:4000 -> 10.0.0.5:80",
            "New connection: 192.0.2.9:4001 -> 10.0.0.5:81",
            "Port scan detected: 192.0.2.9 -> 10.0.0.5 on ports 80,81",
        ]
    );
    assert_eq!(
        rig.out.lines()[3..],
        ["Blocked 192.0.2.9 for 1h via fake"],
        "nothing else, nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_firewall_keeps_detecting_and_blocks_once_it_works() {
    let (send, observed) = mpsc::channel(64);
    let (parts, rig) = parts(
        Source::Stream(Box::new(FakeStream(observed))),
        RunSettings::default(),
    );
    let running = stages::start(parts);
    rig.firewall.failing.store(true, Ordering::Relaxed);
    for port in 80..84 {
        send.send(attempt(&rig.clock, port)).await.unwrap();
    }
    assert_eq!(rig.out.wait_for(5).await, scan_lines(&[80, 81, 82, 83]));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(rig.out.lines().len(), 5, "no Blocked line while it fails");
    assert!(rig
        .metrics
        .prometheus_text()
        .contains("tcpwatch_blocks_pending 1"));
    rig.firewall.failing.store(false, Ordering::Relaxed);
    let lines = rig.out.wait_for(6).await;
    running.stop().await.unwrap();
    assert_eq!(lines[5], "Blocked 192.0.2.56 for 1h via fake", "{lines:?}");
    let text = rig.metrics.prometheus_text();
    assert!(text.contains("tcpwatch_blocks_pending 0"), "{text}");
    assert!(!text.contains("tcpwatch_block_errors_total{backend=\"fake\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_source_and_loses_nothing() {
    // More events than every channel holds together (a stream source's
    // observations, then two channels of batches as large as the detect
    // stage makes them): the source must wait.
    const N: usize =
        stages::STREAM_OBSERVATIONS + 2 * stages::BATCHES * stages::DETECT_AT_ONCE + 1000;
    let (send, observed) = mpsc::channel(1);
    let (parts, rig) = parts(
        Source::Stream(Box::new(FakeStream(observed))),
        RunSettings::default(),
    );
    rig.out.hold.store(true, Ordering::Relaxed);
    let running = stages::start(parts);
    let feeder = {
        let clock = rig.clock.clone();
        tokio::spawn(async move {
            for n in 0..N {
                // One attempt from each of N addresses: N lines, no scan.
                let mut observation = attempt(&clock, 80);
                if let Observation::Attempt { conn, .. } = &mut observation {
                    let from = std::net::Ipv4Addr::from(0x0a00_0000 + n as u32);
                    conn.initiator.set_ip(from.into());
                }
                send.send(observation).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let went_on = feeder.is_finished();
    // Released before asserting: a writer held forever would hang the
    // runtime's shutdown instead of failing the test.
    rig.out.hold.store(false, Ordering::Relaxed);
    assert!(
        !went_on,
        "the source went on although nothing could be printed"
    );
    feeder.await.unwrap();
    let lines = rig.out.wait_for(N).await;
    running.stop().await.unwrap();
    assert_eq!(lines.len(), N);
    assert!(rig.metrics.prometheus_text().contains(&format!(
        "tcpwatch_new_connections_total{{direction=\"inbound\"}} {N}"
    )));
}

fn attempt_from(clock: &ManualClock, remote: &str, port: u16) -> Observation {
    Observation::Attempt {
        at: clock.now(),
        conn: Connection {
            initiator: format!("{remote}:40000").parse().unwrap(),
            acceptor: format!("10.0.0.5:{port}").parse().unwrap(),
            direction: Direction::Inbound,
        },
        isn: u32::from(port),
        owner: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_packet_source_sees_of_a_blocked_scanner_is_never_a_connection() {
    let (send, observed) = mpsc::channel(64);
    let (parts, rig) = parts(
        Source::Stream(Box::new(FakeStream(observed))),
        RunSettings::default(),
    );
    let running = stages::start(parts);
    for port in 80..84 {
        send.send(attempt(&rig.clock, port)).await.unwrap();
    }
    let mut want = scan_lines(&[80, 81, 82, 83]);
    want.push("Blocked 192.0.2.56 for 1h via fake".into());
    assert_eq!(rig.out.wait_for(6).await, want);
    // The scan goes on: the firewall drops it, the source still sees it.
    for port in 84..184 {
        send.send(attempt(&rig.clock, port)).await.unwrap();
    }
    send.send(Observation::Probe {
        at: rig.clock.now(),
        remote: "192.0.2.56".parse().unwrap(),
        local: "10.0.0.5:53".parse().unwrap(),
        kind: crate::event::ScanKind::Udp,
    })
    .await
    .unwrap();
    send.send(attempt_from(&rig.clock, "198.51.100.1", 22))
        .await
        .unwrap();
    let lines = rig.out.wait_for(7).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = rig.metrics.prometheus_text();
    running.stop().await.unwrap();
    assert_eq!(
        lines[6..],
        ["New connection: 198.51.100.1:40000 -> 10.0.0.5:22"]
    );
    assert_eq!(rig.out.lines().len(), 7, "{:#?}", rig.out.lines());
    assert!(
        text.contains("tcpwatch_blocked_packets_seen_total{source=\"pcap\"} 101"),
        "{text}"
    );
    assert!(text.contains("tcpwatch_new_connections_total{direction=\"inbound\"} 5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_requests_go_through_the_block_stage_and_out_as_events() {
    use crate::control::server::Handler;
    use crate::control::{Request, Response};
    let (_send, observed) = mpsc::channel(64);
    let (parts, rig) = parts(
        Source::Stream(Box::new(FakeStream(observed))),
        RunSettings::default(),
    );
    let running = stages::start(parts);
    let agent = running.control("node-a".into(), false);
    let added = agent
        .handle(Request::Add {
            target: "198.51.100.7".into(),
            ttl_ms: Some(300_000),
        })
        .await;
    assert_eq!(
        added,
        Response::Added {
            target: "198.51.100.7".into(),
            ttl_ms: 300_000,
            backend: "fake".into()
        }
    );
    assert_eq!(
        rig.out.wait_for(1).await,
        ["Blocked 198.51.100.7 for 5m via fake"]
    );
    let refused = agent
        .handle(Request::Add {
            target: "10.0.0.5".into(),
            ttl_ms: None,
        })
        .await;
    assert_eq!(
        refused,
        Response::Refused {
            message: "not blocking 10.0.0.5: it is never blocked (an address of this host)".into()
        }
    );
    let Response::Status(status) = agent.handle(Request::Status { top: 10 }).await else {
        panic!("not a status");
    };
    assert_eq!(status.node, "node-a");
    assert_eq!(status.blocking.backend.as_deref(), Some("fake"));
    assert_eq!(status.last_hour.blocks, 1);
    assert_eq!(status.blocks.len(), 1);
    assert_eq!(status.blocks[0].target, "198.51.100.7");
    assert_eq!(status.blocks[0].reason, "manual");
    assert_eq!(status.blocks[0].ttl_seconds, Some(300));
    let removed = agent
        .handle(Request::Remove {
            target: "198.51.100.7".into(),
        })
        .await;
    assert_eq!(
        removed,
        Response::Removed {
            target: "198.51.100.7".into(),
            backend: Some("fake".into()),
            was_blocked: true
        }
    );
    assert_eq!(
        rig.out.wait_for(2).await[1],
        "Unblocked 198.51.100.7 via fake"
    );
    assert_eq!(
        agent.handle(Request::List).await,
        Response::Blocks { blocks: Vec::new() }
    );
    running.stop().await.unwrap();
    assert!(rig
        .metrics
        .prometheus_text()
        .contains("tcpwatch_blocks_total{backend=\"fake\"} 1"));
}
