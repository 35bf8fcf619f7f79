//! Wires the stages: source -> detect -> block -> sink, joined by bounded
//! channels, beside the metrics server; shuts them down in order on
//! SIGINT/SIGTERM and removes the firewall objects last.

use crate::block::allow::Allowlist;
use crate::block::{self, Blocker};
use crate::clock::{Clock, SystemClock};
use crate::config::{BlockKind, Listen, RunConfig, SourceKind};
use crate::detect::Detector;
use crate::event::Event;
use crate::metrics::{self, Metrics};
use crate::sink::LineSink;
use crate::source::{self, Observation, SocketTable};
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often the blocked-address gauges are re-read from the firewall
/// (besides after each block): entries expire in the kernel, unseen.
const RECOUNT_EVERY: Duration = Duration::from_secs(5);

/// Runs the agent on its own runtime until a signal or a fatal error.
pub fn run_blocking(config: RunConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(config))
}

pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // Opened and bound first: an agent that is about to exit on a bad
    // interface or a taken port must not touch the firewall.
    let mut opened = open_source(&config)?;
    // Bound first: an agent that is about to exit on a taken port must not
    // touch the firewall.
    let listener = match config.metrics_addr {
        Listen::At(addr) => Some(metrics::http::bind(addr)?),
        Listen::Off => None,
    };
    let (kind, ttl, dry_run) = (config.block, config.block_ttl, config.dry_run);
    let (backend, xdp_stats) = xdp_backend(&config, &mut opened);
    let mode = tokio::task::spawn_blocking(move || match backend {
        Some(backend) => block::Mode::start_with(backend, ttl, dry_run),
        None => block::Mode::start(kind, ttl, dry_run),
    })
    .await
    .context("block set-up failed")?;
    let metrics = Metrics::new(config.source.name(), mode.backend_name());
    let xdp_stats = xdp_stats.filter(|_| matches!(mode, block::Mode::Apply(_)));
    let xdp_task = xdp_stats.map(|stats| tokio::spawn(xdp_metrics(stats, metrics.clone())));
    let blocker = Blocker::new(
        mode,
        config.block_ttl,
        Allowlist::of_host(config.allow.clone()),
        clock.clone(),
    );
    let detector = Detector::new(
        config.source.name(),
        config.report_existing,
        config.scan_ports,
        config.scan_window,
    );
    let (observations, observed) = mpsc::channel(8);
    let (detected, to_block) = mpsc::channel(64);
    let (decided, to_print) = mpsc::channel(64);

    let server = listener.map(|l| tokio::spawn(metrics::http::serve(l, metrics.clone())));
    let mut source = match opened {
        Opened::Table(table) => tokio::spawn(poll(
            table,
            config.interval,
            clock,
            observations,
            metrics.clone(),
        )),
        Opened::Pcap(captures) => tokio::spawn(source::pcap::run(captures, clock, observations)),
        Opened::Xdp(xdp) => tokio::spawn(xdp.run(clock, observations)),
    };
    let detect = tokio::spawn(detect(detector, observed, detected, metrics.clone()));
    let block = tokio::spawn(block_stage(blocker, to_block, decided, metrics.clone()));
    let mut sink = tokio::spawn(print(
        LineSink::new(std::io::stdout(), config.format),
        to_print,
        metrics,
    ));
    let server_ended = async {
        match server {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let mut server_ended = std::pin::pin!(server_ended);

    let mut sink_done = false;
    let outcome = tokio::select! {
        signal = shutdown_signal() => signal,
        ended = &mut source => flatten(ended),
        ended = &mut sink => {
            sink_done = true;
            flatten(ended)
        }
        ended = &mut server_ended => flatten(ended).context("metrics server"),
    };
    // Stop reading, let the events in flight drain through every stage, and
    // let the block stage remove its firewall objects, whatever ended the run.
    source.abort();
    if let Some(task) = xdp_task {
        task.abort();
    }
    let _ = detect.await;
    let _ = block.await;
    let printed = if sink_done {
        Ok(())
    } else {
        flatten(sink.await)
    };
    outcome.and(printed)
}

/// A source, opened but not yet running.
enum Opened {
    Table(Box<dyn SocketTable>),
    Pcap(Vec<source::pcap::Opened>),
    Xdp(Box<source::xdp::XdpSource>),
}

fn open_source(config: &RunConfig) -> anyhow::Result<Opened> {
    Ok(match config.source {
        SourceKind::Procfs | SourceKind::Netlink => {
            Opened::Table(source::socket_table(config.source.name())?)
        }
        SourceKind::Pcap => Opened::Pcap(source::pcap::open(&config.interfaces)?),
        SourceKind::Xdp => {
            let opts = source::xdp::LoadOptions {
                report: true,
                block: config.block == BlockKind::Xdp && !config.dry_run,
                map_size: config.xdp_map_size,
            };
            Opened::Xdp(Box::new(source::xdp::XdpSource::open(
                &config.interfaces,
                &opts,
            )?))
        }
    })
}

/// The `xdp` backend of `--block xdp`: on the `xdp` source's program when
/// there is one (one program does both jobs), else one that loads its own
/// at install; and the handle its metrics are read through.
fn xdp_backend(
    config: &RunConfig,
    opened: &mut Opened,
) -> (Option<Box<dyn block::Backend>>, Option<block::xdp::Stats>) {
    if config.block != BlockKind::Xdp {
        return (None, None);
    }
    let shared = match opened {
        Opened::Xdp(source) => source.take_blocklist(),
        _ => None,
    };
    let backend = match shared {
        Some(maps) => block::xdp::XdpBlock::shared(maps),
        None => block::xdp::XdpBlock::new(config.interfaces.clone(), config.xdp_map_size),
    };
    let stats = backend.stats();
    (Some(Box::new(backend)), Some(stats))
}

/// How often the XDP drop counters are read into the metrics.
const XDP_METRICS_EVERY: Duration = Duration::from_secs(1);

/// Copies the kernel's per-CPU drop counters and the eviction count into
/// the metrics, as deltas, every [`XDP_METRICS_EVERY`].
async fn xdp_metrics(stats: block::xdp::Stats, metrics: Arc<Metrics>) {
    let mut seen = (0u64, 0u64, 0u64);
    let mut ticks = tokio::time::interval(XDP_METRICS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some((v4, v6)) = stats.dropped() else {
            continue;
        };
        let evictions = stats.evictions();
        metrics.xdp_dropped(
            v4.wrapping_sub(seen.0),
            v6.wrapping_sub(seen.1),
            evictions.wrapping_sub(seen.2),
        );
        seen = (v4, v6, evictions);
    }
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(anyhow::anyhow!("internal task failed: {e}")),
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Clears the health flag however the poll task ends (error, abort).
struct Running(Arc<Metrics>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.set_source_running(false);
    }
}

/// The polling source: one table read a tick, off the async threads. A read
/// that fails is reported once and retried each tick.
async fn poll(
    mut table: Box<dyn SocketTable>,
    every: Duration,
    clock: Arc<dyn Clock>,
    out: mpsc::Sender<Observation>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    metrics.set_source_running(true);
    let _running = Running(metrics.clone());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut ready = false;
    loop {
        ticks.tick().await;
        let at = clock.now();
        let (back, read, took) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let read = table.snapshot();
            (table, read, started.elapsed())
        })
        .await
        .context("source task failed")?;
        table = back;
        metrics.observe_poll(table.name(), took.as_secs_f64());
        match read {
            Ok(sockets) => {
                if failing {
                    eprintln!("tcpwatch: {} source reads again", table.name());
                    failing = false;
                }
                if out
                    .send(Observation::Snapshot { at, sockets })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                if !ready {
                    // For operators and tests: the first table is read, so
                    // every connection from now on will be reported.
                    eprintln!(
                        "tcpwatch: watching: {} every {}",
                        table.name(),
                        crate::duration::format(every)
                    );
                    ready = true;
                }
            }
            Err(e) if !failing => {
                eprintln!(
                    "tcpwatch: warning: {} source: {e:#}; retrying every {}",
                    table.name(),
                    crate::duration::format(every)
                );
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Turns each observation into one batch of events, so that the scans one
/// poll finds reach the block stage together.
async fn detect(
    mut detector: Detector,
    mut input: mpsc::Receiver<Observation>,
    out: mpsc::Sender<Vec<Event>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    while let Some(observation) = input.recv().await {
        if let Observation::Lost { count } = observation {
            metrics.events_lost(detector.source(), count);
        }
        let events = detector.process(&observation);
        metrics.set_tracked_sources(detector.tracked_sources());
        if !events.is_empty() && out.send(events).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Blocks the scanners of each batch (one backend call for all of them),
/// keeps the blocked-address gauges current, and removes the firewall
/// objects when its input closes.
async fn block_stage(
    blocker: Blocker,
    mut input: mpsc::Receiver<Vec<Event>>,
    out: mpsc::Sender<Vec<Event>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    if !blocker.is_active() {
        while let Some(events) = input.recv().await {
            if out.send(events).await.is_err() {
                break;
            }
        }
        return Ok(());
    }
    let mut blocker = Some(blocker);
    let mut recount = tokio::time::interval(RECOUNT_EVERY);
    recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let b = blocker.take().expect("the blocker is always put back");
        let batch = tokio::select! {
            batch = input.recv() => match batch {
                Some(mut events) => {
                    // Whatever else is already waiting joins the same batch.
                    while let Ok(more) = input.try_recv() {
                        events.extend(more);
                    }
                    Some(events)
                }
                None => None,
            },
            _ = recount.tick() => {
                let (back, counted) = off_thread(move || {
                    let mut b = b;
                    let counted = b.count();
                    (b, counted)
                })
                .await?;
                if let Ok((v4, v6)) = counted {
                    metrics.set_blocked_ips(v4, v6);
                }
                blocker = Some(back);
                continue;
            }
        };
        let Some(events) = batch else {
            off_thread(move || {
                let mut b = b;
                b.shutdown()
            })
            .await?;
            return Ok(());
        };
        let (back, events, counted) = off_thread(move || {
            let mut b = b;
            let events = b.handle(events);
            let blocked = events
                .iter()
                .any(|e| matches!(e.kind, crate::event::EventKind::Blocked(_)));
            let counted = if blocked { Some(b.count()) } else { None };
            (b, events, counted)
        })
        .await?;
        blocker = Some(back);
        if let Some(Ok((v4, v6))) = counted {
            metrics.set_blocked_ips(v4, v6);
        }
        if out.send(events).await.is_err() {
            let b = blocker.take().expect("just put back");
            off_thread(move || {
                let mut b = b;
                b.shutdown()
            })
            .await?;
            return Ok(());
        }
    }
}

/// Runs firewall tool calls (tens of ms each) off the async threads.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("block stage failed")
}

/// Prints each event and counts it once printed: the counters always equal
/// the lines on stdout.
async fn print(
    mut sink: LineSink<std::io::Stdout>,
    mut input: mpsc::Receiver<Vec<Event>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    while let Some(events) = input.recv().await {
        for event in events {
            sink.write(&event).context("stdout")?;
            metrics.printed(&event);
        }
    }
    Ok(())
}
