//! Wires the stages: source -> detect -> block -> sink, joined by bounded
//! channels, beside the metrics server; shuts them down in order on
//! SIGINT/SIGTERM and removes the firewall objects last.
//!
//! With a state file (`--state`), the connections accounted for and the
//! blocks decided are stored as they happen; at start-up the blocks are
//! re-applied with the time they have left and the connections opened while
//! the agent was down are reported. Shutdown still removes the firewall
//! objects: the blocks come back from the file at the next start. SIGHUP
//! re-reads `--config` (scan and block settings) without losing any of this.

use crate::block::allow::Allowlist;
use crate::block::{self, Blocker};
use crate::clock::{Clock, SystemClock};
use crate::config::{BlockKind, Listen, Rate, RunConfig, SourceKind, StatePath, DEFAULT_STATE};
use crate::detect::Detector;
use crate::event::Event;
use crate::metrics::{self, Metrics};
use crate::sink::LineSink;
use crate::source::{self, Observation, SocketTable};
use crate::state::{ConnKey, Loaded, StateError, Store};
use anyhow::Context;
use ipnet::IpNet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};

/// How often the blocked-address gauges are re-read from the firewall
/// (besides after each block): entries expire in the kernel, unseen. The
/// same tick re-creates deleted firewall objects and retries failed blocks.
const RECOUNT_EVERY: Duration = block::RETRY_EVERY;

/// Re-reads the configuration on SIGHUP: the `--config` file under the
/// command-line flags, exactly as at start-up.
pub type Reloader = Box<dyn Fn() -> anyhow::Result<RunConfig> + Send + Sync>;

/// The settings a SIGHUP changes in a running agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunables {
    pub scan_ports: usize,
    pub scan_window: Duration,
    pub block_ttl: Duration,
    pub allow: Vec<IpNet>,
    pub max_blocks_per_minute: Rate,
}

impl Tunables {
    pub fn of(config: &RunConfig) -> Self {
        Tunables {
            scan_ports: config.scan_ports,
            scan_window: config.scan_window,
            block_ttl: config.block_ttl,
            allow: config.allow.clone(),
            max_blocks_per_minute: config.max_blocks_per_minute,
        }
    }
}

/// Runs the agent on its own runtime until a signal or a fatal error.
pub fn run_blocking(config: RunConfig, reloader: Option<Reloader>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(config, reloader))
}

pub async fn run(config: RunConfig, reloader: Option<Reloader>) -> anyhow::Result<()> {
    // Watched from the start: SIGHUP's default action would end the agent
    // without removing its firewall objects.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch SIGHUP")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // Source, metrics port and state file first: an agent that is about to
    // exit on a bad interface, a taken port or a bad state file must not
    // touch the firewall.
    let mut opened = open_source(&config)?;
    let listener = match config.metrics_addr {
        Listen::At(addr) => Some(metrics_listener(addr)?),
        Listen::Off => None,
    };
    let mut store = open_state(&config.state).await?;
    // Only the polling sources diff socket tables, so only they keep the
    // connection table in the state file (a real-time source would write
    // every attempt of a flood to it).
    let polling = matches!(config.source, SourceKind::Procfs | SourceKind::Netlink);
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
    let mut blocker = Blocker::new(
        mode,
        config.block_ttl,
        Allowlist::of_host(config.allow.clone()),
        clock.clone(),
    )
    .with_limit(config.max_blocks_per_minute);
    let mut detector = Detector::new(
        config.source.name(),
        config.report_existing,
        config.scan_ports,
        config.scan_window,
    )
    .with_limits(config.limits);
    if let Some((store, loaded)) = &mut store {
        blocker = restore_state(store, loaded, blocker, &mut detector, polling).await?;
    }
    let store = store.map(|(store, _)| store);
    let (tunables, tuned) = watch::channel(Tunables::of(&config));
    let reload = tokio::spawn(reload_on_hangup(hangup, reloader, config.clone(), tunables));
    let conn_store = store.filter(|_| polling);
    let (observations, observed) = mpsc::channel(8);
    let (detected, to_block) = mpsc::channel(64);
    let (decided, to_print) = mpsc::channel(64);

    let server = listener.map(|l| tokio::spawn(serve_metrics(l, metrics.clone())));
    let mut source = match opened {
        Opened::Table(table) => tokio::spawn(poll(
            table,
            config.interval,
            clock,
            observations,
            metrics.clone(),
        )),
        Opened::Pcap(captures) => tokio::spawn(source::pcap::run(
            captures,
            clock,
            observations,
            metrics.clone(),
        )),
        Opened::Xdp(xdp) => tokio::spawn(xdp.run(clock, observations, metrics.clone())),
    };
    let detect = tokio::spawn(detect(
        detector,
        observed,
        detected,
        metrics.clone(),
        conn_store.clone(),
        tuned.clone(),
    ));
    let block = tokio::spawn(block_stage(
        blocker,
        to_block,
        decided,
        metrics.clone(),
        tuned,
    ));
    let mut sink = tokio::spawn(print(
        LineSink::new(std::io::stdout(), config.format),
        to_print,
        metrics,
        conn_store,
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
    reload.abort();
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

/// How often a taken metrics port is tried again.
const METRICS_RETRY: Duration = Duration::from_secs(2);

/// The metrics socket: bound, or its port taken by another process.
enum MetricsListener {
    Bound(std::net::TcpListener),
    Taken(std::net::SocketAddr),
}

/// Binds `--metrics-addr`. A taken port must not stop a security agent from
/// detecting: it is said once and retried; any other error (an address not
/// on this host, a privileged port) is a configuration error, fatal.
fn metrics_listener(addr: std::net::SocketAddr) -> anyhow::Result<MetricsListener> {
    match metrics::http::try_bind(addr) {
        Ok(listener) => Ok(MetricsListener::Bound(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!(
                "tcpwatch: warning: {}; detection goes on, retrying every {}",
                metrics::http::describe(addr, &e),
                crate::duration::format(METRICS_RETRY)
            );
            Ok(MetricsListener::Taken(addr))
        }
        Err(e) => Err(anyhow::anyhow!(metrics::http::describe(addr, &e))),
    }
}

/// Serves the metrics, first waiting for a taken port to be free.
async fn serve_metrics(listener: MetricsListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = match listener {
        MetricsListener::Bound(listener) => listener,
        MetricsListener::Taken(addr) => loop {
            tokio::time::sleep(METRICS_RETRY).await;
            if let Ok(listener) = metrics::http::try_bind(addr) {
                eprintln!("tcpwatch: metrics on {addr}");
                break listener;
            }
        },
    };
    metrics::http::serve(listener, metrics).await
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

/// Puts back what the state file holds: the blocks (re-applied with their
/// time left) and, for polling sources, the connections already accounted for.
async fn restore_state(
    store: &Arc<Store>,
    loaded: &mut Loaded,
    blocker: Blocker,
    detector: &mut Detector,
    polling: bool,
) -> anyhow::Result<Blocker> {
    let blocks = std::mem::take(&mut loaded.blocks);
    let blocker = restore_blocks(blocker.with_store(store.clone()), store.clone(), blocks).await?;
    if polling {
        let table = detector.connections_mut();
        table.track_changes();
        // A file that never stored a first table cannot tell which open
        // connections were reported: start as without one.
        if loaded.primed {
            table.restore(std::mem::take(&mut loaded.connections));
        }
    }
    Ok(blocker)
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(anyhow::anyhow!("internal task failed: {e}")),
    }
}

/// Opens `--state`. The default path degrades to no state when its
/// directory cannot be written (say, not root); a path the operator named,
/// or a default file that exists but is unusable, is a fatal error.
async fn open_state(state: &StatePath) -> anyhow::Result<Option<(Arc<Store>, Loaded)>> {
    let StatePath::At(path) = state else {
        return Ok(None);
    };
    let path = path.clone();
    if path == Path::new(DEFAULT_STATE) {
        if let Err(e) = writable_dir(&path) {
            eprintln!(
                "tcpwatch: warning: cannot use the state directory of {}: {e}; running without state",
                path.display()
            );
            return Ok(None);
        }
    }
    let (store, loaded) = tokio::task::spawn_blocking(move || {
        let store = Store::open(&path)?;
        let loaded = store.load()?;
        Ok::<_, StateError>((store, loaded))
    })
    .await
    .context("state set-up failed")??;
    Ok(Some((Arc::new(store), loaded)))
}

/// Makes the default state directory and checks this process may write it.
fn writable_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Re-applies the stored blocks (one stderr line, no event: they were
/// reported when decided). A failure is a warning: the blocks stay in the
/// file for the next start.
async fn restore_blocks(
    mut blocker: Blocker,
    store: Arc<Store>,
    stored: Vec<crate::state::StoredBlock>,
) -> anyhow::Result<Blocker> {
    if stored.is_empty() {
        return Ok(blocker);
    }
    off_thread(move || {
        match blocker.restore(stored) {
            Ok(done) if done.kept > 0 => eprintln!(
                "tcpwatch: {} stored blocks not applied (blocking is off or dry); kept in {}",
                done.kept,
                store.path().display()
            ),
            Ok(done) if done.applied > 0 => {
                eprintln!("tcpwatch: restored {} blocks", done.applied)
            }
            Ok(_) => {}
            Err(e) => eprintln!(
                "tcpwatch: warning: cannot restore the stored blocks: {}; kept in {}",
                format!("{e:#}").replace('\n', " "),
                store.path().display()
            ),
        }
        blocker
    })
    .await
}

/// Applies SIGHUP: re-reads the configuration and hands the new settings to
/// the stages; a bad file keeps the running configuration.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    reloader: Option<Reloader>,
    mut running: RunConfig,
    tunables: watch::Sender<Tunables>,
) {
    while hangup.recv().await.is_some() {
        let Some(reload) = &reloader else {
            eprintln!("tcpwatch: SIGHUP: no --config file to reload");
            continue;
        };
        match reload() {
            Ok(new) => {
                let fixed = restart_only(&running, &new);
                if !fixed.is_empty() {
                    eprintln!(
                        "tcpwatch: warning: {} changed; applied at the next start only",
                        fixed.join(", ")
                    );
                }
                tunables.send_replace(Tunables::of(&new));
                running.scan_ports = new.scan_ports;
                running.scan_window = new.scan_window;
                running.block_ttl = new.block_ttl;
                running.allow = new.allow;
                running.max_blocks_per_minute = new.max_blocks_per_minute;
                eprintln!("tcpwatch: configuration reloaded");
            }
            Err(e) => eprintln!(
                "tcpwatch: warning: configuration not reloaded, keeping the running one: {}",
                format!("{e:#}").replace('\n', " ")
            ),
        }
    }
}

/// The settings that differ between two configurations and that a running
/// agent cannot change.
fn restart_only(old: &RunConfig, new: &RunConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |differs: bool, name| {
        if differs {
            changed.push(name);
        }
    };
    check(old.source != new.source, "source");
    check(old.interval != new.interval, "interval");
    check(old.interfaces != new.interfaces, "interface");
    check(old.block != new.block, "block");
    check(old.dry_run != new.dry_run, "dry-run");
    check(old.metrics_addr != new.metrics_addr, "metrics-addr");
    check(old.format != new.format, "format");
    check(old.state != new.state, "state");
    check(
        old.report_existing != new.report_existing,
        "report-existing",
    );
    changed
}

/// Stores connection changes in one durable transaction, off the async
/// threads.
async fn store_connections(
    store: &Arc<Store>,
    added: Vec<ConnKey>,
    removed: Vec<ConnKey>,
) -> Result<(), StateError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.update_connections(&added, &removed, SystemTime::now())
    })
    .await
    .unwrap_or_else(|e| {
        Err(StateError::Io {
            path: String::new(),
            cause: e.to_string(),
        })
    })
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
/// that fails is reported once, marks the source unhealthy (`/healthz` 503)
/// and is retried each tick; the first good read after it says so once.
/// A failed read sends nothing: diffing a partial table would forget its
/// connections and report them again. The readiness line waits for the
/// first good read, even when that takes several ticks.
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
        match read {
            Ok(sockets) => {
                // Only reads of a table are timed: a read that fails at once
                // would drag the histogram towards zero; during a fault its
                // count stops growing instead.
                metrics.observe_poll(table.name(), took.as_secs_f64());
                if failing {
                    eprintln!("tcpwatch: {} source reads again", table.name());
                    metrics.source_fault(false);
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
                metrics.source_fault(true);
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Turns each observation into one batch of events, so that the scans one
/// poll finds reach the block stage together.
/// With a state file, each poll's silent and forgotten connections are
/// stored in one transaction (the reported ones once printed).
async fn detect(
    mut detector: Detector,
    mut input: mpsc::Receiver<Observation>,
    out: mpsc::Sender<Vec<Event>>,
    metrics: Arc<Metrics>,
    store: Option<Arc<Store>>,
    mut tuned: watch::Receiver<Tunables>,
) -> anyhow::Result<()> {
    let mut stored_once = false;
    loop {
        let observation = tokio::select! {
            // A reload is applied before the next observation.
            biased;
            Ok(()) = tuned.changed() => {
                let t = tuned.borrow_and_update().clone();
                detector.reconfigure(t.scan_ports, t.scan_window);
                continue;
            }
            observation = input.recv() => match observation {
                Some(o) => o,
                None => return Ok(()),
            },
        };
        if let Observation::Lost { count } = observation {
            metrics.events_lost(detector.source(), count);
        }
        let events = detector.process(&observation);
        metrics.set_tracked_sources(detector.tracked_sources());
        for (table, n) in detector.take_evictions() {
            metrics.evicted(table, n);
        }
        if let (Some(store), Observation::Snapshot { .. }) = (&store, &observation) {
            let changes = detector.connections_mut().take_changes();
            // The first table is stored even when empty: it primes the file.
            // Changes a failed write left are retried every poll.
            if !stored_once
                || !changes.silent.is_empty()
                || !changes.forgotten.is_empty()
                || store.has_unwritten()
            {
                let stored = store_connections(store, changes.silent, changes.forgotten).await;
                stored_once |= stored.is_ok();
                store.report(stored);
            }
        }
        if !events.is_empty() && out.send(events).await.is_err() {
            return Ok(());
        }
    }
}

/// Blocks the scanners of each batch (one backend call for all of them),
/// keeps the blocked-address gauges current, and removes the firewall
/// objects when its input closes.
async fn block_stage(
    blocker: Blocker,
    mut input: mpsc::Receiver<Vec<Event>>,
    out: mpsc::Sender<Vec<Event>>,
    metrics: Arc<Metrics>,
    mut tuned: watch::Receiver<Tunables>,
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
        let mut b = blocker.take().expect("the blocker is always put back");
        let batch = tokio::select! {
            Ok(()) = tuned.changed() => {
                let t = tuned.borrow_and_update().clone();
                b.reconfigure(t.block_ttl, t.allow, t.max_blocks_per_minute);
                blocker = Some(b);
                continue;
            }
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
                let (back, (late, counted)) = off_thread(move || {
                    let mut b = b;
                    let ticked = b.tick();
                    (b, ticked)
                })
                .await?;
                if let Some((v4, v6)) = counted {
                    metrics.set_blocked_ips(v4, v6);
                }
                metrics.set_block_health(back.health());
                blocker = Some(back);
                // Blocks applied late (the firewall works again) print now.
                if !late.is_empty() && out.send(late).await.is_err() {
                    let b = blocker.take().expect("just put back");
                    off_thread(move || {
                        let mut b = b;
                        b.shutdown()
                    })
                    .await?;
                    return Ok(());
                }
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
        // Only scans need a decision. The rest pass straight through: a
        // thread hop per batch would queue a scan behind every attempt
        // before it, and a SYN scan sends hundreds of probes a millisecond.
        let has_scan = events
            .iter()
            .any(|e| matches!(e.kind, crate::event::EventKind::PortScan(_)));
        let (back, events, counted) = if !has_scan {
            (b, events, None)
        } else {
            off_thread(move || {
                let mut b = b;
                let events = b.handle(events);
                let blocked = events
                    .iter()
                    .any(|e| matches!(e.kind, crate::event::EventKind::Blocked(_)));
                let counted = if blocked { Some(b.count()) } else { None };
                (b, events, counted)
            })
            .await?
        };
        let mut back = back;
        metrics.blocks_skipped(back.take_skipped());
        metrics.set_block_health(back.health());
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
///
/// With a state file, the connections of each batch are stored once
/// printed: a crash in between prints them again at the next start rather
/// than never.
async fn print(
    mut sink: LineSink<std::io::Stdout>,
    mut input: mpsc::Receiver<Vec<Event>>,
    metrics: Arc<Metrics>,
    store: Option<Arc<Store>>,
) -> anyhow::Result<()> {
    while let Some(mut events) = input.recv().await {
        // Whatever else is already waiting is written with the same call.
        while let Ok(more) = input.try_recv() {
            events.extend(more);
        }
        for event in &events {
            sink.write(event);
        }
        sink.flush().context("stdout")?;
        let mut printed = Vec::new();
        for event in &events {
            metrics.printed(event);
            if let crate::event::EventKind::NewConnection { conn, .. } = &event.kind {
                printed.push(crate::detect::connections::pair(
                    conn.initiator,
                    conn.acceptor,
                ));
            }
        }
        if let (Some(store), false) = (&store, printed.is_empty()) {
            store.report(store_connections(store, printed, Vec::new()).await);
        }
    }
    Ok(())
}
