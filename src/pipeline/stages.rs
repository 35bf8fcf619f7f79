//! The stage tasks and their channels. [`start`] spawns them in order, sink
//! first, so nothing sent is ever waiting for a reader that is not there;
//! [`Running::stop`] drains them: the source stops, what is in flight goes
//! through every stage and is printed, and the block stage removes the
//! firewall objects once its input is closed.
//!
//! Every block decided or lifted — for a scan, late after a firewall fault,
//! or by the operator through the control socket — leaves the block stage
//! as a `Blocked` or `Unblocked` event on its output channel, in the order
//! it happened: that one stream is where a stage that shares blocks (the
//! fleet) takes them from. The block stage also shares the blocks in force
//! ([`crate::blockset::BlockSet`]) with the detect task, which drops what
//! a packet source saw from a blocked source before it becomes a connection.

use super::control::{self, BlockCommand};
use super::fleet_link::{self, Link, Outbox};
use crate::block::blocker::{is_scan, Blocker};
use crate::block::xdp::Stats;
use crate::blockset::BlockSet;
use crate::clock::Clock;
use crate::detect::connections::pair;
use crate::detect::Detector;
use crate::event::{Event, EventKind, Observation};
use crate::fleet::{FleetEvent, FleetHandle};
use crate::metrics::Metrics;
use crate::settings::RunSettings;
use crate::sink::LineSink;
use crate::source::{Context as SourceContext, SocketTable, Stream};
use crate::state::{ConnKey, StateError, Store};
use crate::{diag, duration};
use anyhow::Context;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Observations in flight from a polling source: few, so a slow detector
/// slows the source (it waits) instead of queueing whole tables.
const OBSERVATIONS: usize = 8;
/// Observations in flight from a real-time source: one ring's worth of a
/// burst, so the source hands a burst on without waiting on the detector
/// for each attempt; past it the source waits, and the kernel's buffer
/// fills and counts what it drops. Bounded: an observation is small.
pub(super) const STREAM_OBSERVATIONS: usize = 1024;
/// Observations the detect stage takes from its input at once.
pub(super) const DETECT_AT_ONCE: usize = 256;
/// Batches of events in flight between the later stages.
pub(super) const BATCHES: usize = 64;

/// A source, opened.
pub enum Source {
    /// A polling source and its period.
    Table(Box<dyn SocketTable>, Duration),
    /// A real-time source.
    Stream(Box<dyn Stream>),
}

impl Source {
    /// The name printed in events and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Table(table, _) => table.name(),
            Source::Stream(stream) => stream.name(),
        }
    }
}

/// Everything a run is made of, opened and ready to start.
pub struct Parts {
    pub source: Source,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub detector: Detector,
    pub blocker: Blocker,
    pub sink: LineSink<Box<dyn Write + Send>>,
    /// The state file, when the source polls (it keeps connections).
    pub store: Option<Arc<Store>>,
    /// The settings the run started with; reloads replace the live ones.
    pub settings: RunSettings,
    /// The XDP drop counters to copy into the metrics (`--block xdp`).
    pub xdp_stats: Option<Stats>,
    /// How often the block stage re-reads the firewall and retries.
    pub block_tick: Duration,
    /// The fleet stage (`--fleet`), started.
    pub fleet: Option<Link>,
}

/// The running stages.
pub struct Running {
    source: JoinHandle<anyhow::Result<()>>,
    detect: JoinHandle<anyhow::Result<()>>,
    block: JoinHandle<anyhow::Result<()>>,
    sink: JoinHandle<anyhow::Result<()>>,
    xdp_metrics: Option<JoinHandle<()>>,
    fleet_metrics: Option<JoinHandle<()>>,
    /// The fleet task: it ends once detect and block have dropped their
    /// handles and it has published what it holds.
    fleet: Option<JoinHandle<()>>,
    reload: watch::Sender<RunSettings>,
    /// The block stage's requests (the control socket's).
    commands: mpsc::Sender<BlockCommand>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

/// Spawns the stages, joined by bounded channels.
pub fn start(parts: Parts) -> Running {
    let Parts {
        source,
        clock,
        metrics,
        detector,
        blocker,
        sink,
        store,
        settings,
        xdp_stats,
        block_tick,
        fleet,
    } = parts;
    let (fleet_handle, fleet_events, fleet_task) = match fleet {
        Some(Link {
            handle,
            events,
            task,
        }) => (Some(handle), Some(events), Some(task)),
        None => (None, None, None),
    };
    let fleet_metrics = fleet_handle
        .as_ref()
        .map(|handle| tokio::spawn(fleet_link::copy_metrics(handle.counters(), metrics.clone())));
    let capacity = match source {
        Source::Table(..) => OBSERVATIONS,
        Source::Stream(_) => STREAM_OBSERVATIONS,
    };
    let (observations, observed) = mpsc::channel(capacity);
    let (detected, to_block) = mpsc::channel(BATCHES);
    let (decided, to_print) = mpsc::channel(BATCHES);
    let (commands, to_run) = mpsc::channel(control::COMMANDS);
    let (reload, reloaded) = watch::channel(settings);
    let blockset = blocker.blockset();
    let sink = tokio::spawn(print(sink, to_print, metrics.clone(), store.clone()));
    let block = tokio::spawn(block(
        blocker,
        Inputs {
            events: to_block,
            commands: to_run,
            reloaded: reloaded.clone(),
            fleet: fleet_events,
        },
        Outputs {
            out: decided,
            outbox: Outbox::new(fleet_handle.clone()),
            clock: clock.clone(),
        },
        metrics.clone(),
        block_tick,
        xdp_stats.is_some(),
    ));
    let detect = tokio::spawn(detect(
        detector,
        observed,
        detected,
        metrics.clone(),
        store,
        reloaded,
        Beside {
            blockset,
            fleet: fleet_handle,
        },
    ));
    let xdp_metrics = xdp_stats.map(|stats| tokio::spawn(xdp_metrics(stats, metrics.clone())));
    let source = match source {
        Source::Table(table, every) => tokio::spawn(poll(
            table,
            every,
            clock.clone(),
            observations,
            metrics.clone(),
        )),
        Source::Stream(stream) => tokio::spawn(stream.run(SourceContext {
            clock: clock.clone(),
            out: observations,
            health: metrics.source_health(),
        })),
    };
    Running {
        source,
        detect,
        block,
        sink,
        xdp_metrics,
        fleet_metrics,
        fleet: fleet_task,
        reload,
        commands,
        metrics,
        clock,
    }
}

impl Running {
    /// Where reloaded settings go: the stages take their live settings from
    /// it before their next input.
    pub fn reload_sender(&self) -> watch::Sender<RunSettings> {
        self.reload.clone()
    }

    /// What answers the control socket: the running stages.
    pub fn control(&self, node: String, dry_run: bool) -> Arc<control::Agent> {
        Arc::new(control::Agent {
            commands: self.commands.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            node,
            dry_run,
            started: Instant::now(),
        })
    }

    /// Runs until `stop` resolves (a signal), the source or the sink ends,
    /// or `server` (the metrics server) fails; then stops in order. The
    /// first failure is the result.
    pub async fn until(
        mut self,
        stop: impl std::future::Future<Output = anyhow::Result<()>>,
        server: Option<JoinHandle<anyhow::Result<()>>>,
    ) -> anyhow::Result<()> {
        let server_ended = async {
            match server {
                Some(task) => flatten(task.await).context("metrics server"),
                None => std::future::pending().await,
            }
        };
        let mut sink_done = None;
        let outcome = tokio::select! {
            signal = stop => signal,
            ended = &mut self.source => flatten(ended),
            ended = &mut self.sink => {
                let result = flatten(ended);
                sink_done = Some(());
                result
            }
            ended = server_ended => ended,
        };
        let stopped = self.drain(sink_done.is_some()).await;
        outcome.and(stopped)
    }

    /// Stops the source and lets what is in flight drain through every
    /// stage; the block stage removes its firewall objects.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.drain(false).await
    }

    async fn drain(self, sink_done: bool) -> anyhow::Result<()> {
        self.source.abort();
        if let Some(task) = &self.xdp_metrics {
            task.abort();
        }
        // The source's sender is gone: detect ends, then block (which
        // removes the firewall objects), then the sink once it has printed
        // everything they sent.
        let _ = self.detect.await;
        let blocked = flatten(self.block.await);
        // Detect and block have dropped their fleet handles: the fleet task
        // publishes what it still holds, then ends.
        if let Some(task) = self.fleet {
            if tokio::time::timeout(fleet_link::SHUTDOWN_WAIT, task)
                .await
                .is_err()
            {
                diag::warn("fleet: decisions not yet in Redis at shutdown are lost");
            }
        }
        if let Some(task) = &self.fleet_metrics {
            task.abort();
        }
        let printed = if sink_done {
            Ok(())
        } else {
            flatten(self.sink.await)
        };
        blocked.and(printed)
    }
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(anyhow::anyhow!("internal task failed: {e}")),
    }
}

/// The polling source: one table read a tick, off the async threads. A read
/// that fails is said once, marks the source unhealthy (`/healthz` 503) and
/// is retried each tick; the first good read after it says so once. A
/// failed read sends nothing: diffing a partial table would forget its
/// connections and report them again. The readiness line waits for the
/// first good read, even when that takes several ticks.
async fn poll(
    mut table: Box<dyn SocketTable>,
    every: Duration,
    clock: Arc<dyn Clock>,
    out: mpsc::Sender<Observation>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let health = metrics.source_health();
    let _running = crate::health::Running::new(health.clone());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fault = diag::Fault::default();
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
        let name = table.name();
        match read {
            Ok(sockets) => {
                // Only reads of a table are timed: a read that fails at once
                // would drag the histogram towards zero; during a fault its
                // count stops growing instead.
                metrics.observe_poll(name, took.as_secs_f64());
                if fault.recover(|| format!("{name} source reads again")) {
                    health.fault(false);
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
                    diag::note(format_args!(
                        "watching: {name} every {}",
                        duration::format(every)
                    ));
                    ready = true;
                }
            }
            Err(e) => {
                let said = fault.fail(|| {
                    format!(
                        "{name} source: {e:#}; retrying every {}",
                        duration::format(every)
                    )
                });
                if said {
                    health.fault(true);
                }
            }
        }
    }
}

/// What the detect task shares with the stages beside it: the blocks in
/// force (read), the fleet (told every inbound attempt).
struct Beside {
    blockset: Option<Arc<BlockSet>>,
    fleet: Option<FleetHandle>,
}

/// Turns each observation into one batch of events, so that the scans one
/// poll finds reach the block stage together. With a state file, each
/// poll's silent and forgotten connections are stored in one transaction
/// (the reported ones once printed).
async fn detect(
    mut detector: Detector,
    mut input: mpsc::Receiver<Observation>,
    out: mpsc::Sender<Vec<Event>>,
    metrics: Arc<Metrics>,
    store: Option<Arc<Store>>,
    mut reloaded: watch::Receiver<RunSettings>,
    beside: Beside,
) -> anyhow::Result<()> {
    let Beside { blockset, fleet } = beside;
    let mut stored_once = false;
    loop {
        let observation = tokio::select! {
            // A reload is applied before the next observation.
            biased;
            Ok(()) = reloaded.changed() => {
                let settings = reloaded.borrow_and_update();
                detector.reconfigure(&settings.scan);
                if let Some(fleet) = &fleet {
                    let (pairs, window) = settings
                        .fleet
                        .rule(settings.scan.scan_ports, settings.scan.scan_window);
                    if let Err(e) = fleet.set_rule(pairs, window) {
                        diag::warn(format_args!("{e}"));
                    }
                }
                continue;
            }
            observation = input.recv() => match observation {
                Some(o) => o,
                None => return Ok(()),
            },
        };
        count_lost(&observation, &metrics);
        // A packet from a blocked source is its block at work: counted as
        // seen by the block, never a connection or a probe.
        let observation = match &blockset {
            Some(set) => match unblocked(observation, set, &metrics) {
                Some(observation) => observation,
                None => continue,
            },
            None => observation,
        };
        let mut events = detector.process(&observation);
        if let Some(fleet) = &fleet {
            // Aggregated by the fleet stage, sent once a flush; never waits.
            fleet.observe_attempts(&fleet_link::attempts(&observation, &events));
        }
        // A real-time source's observations already waiting join this
        // batch: one hand-off to the next stage for the lot, not one per
        // attempt (a flood brings thousands). A snapshot stays alone: its
        // scans are a batch of their own, and it is stored below.
        if !matches!(observation, Observation::Snapshot { .. }) {
            for _ in 1..DETECT_AT_ONCE {
                let Ok(more) = input.try_recv() else { break };
                count_lost(&more, &metrics);
                let more = match &blockset {
                    Some(set) => match unblocked(more, set, &metrics) {
                        Some(more) => more,
                        None => continue,
                    },
                    None => more,
                };
                let more_events = detector.process(&more);
                if let Some(fleet) = &fleet {
                    fleet.observe_attempts(&fleet_link::attempts(&more, &more_events));
                }
                events.extend(more_events);
            }
        }
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
        if diag::hops::on() {
            for scan in events.iter().filter_map(|e| match &e.kind {
                EventKind::PortScan(scan) => Some(scan),
                _ => None,
            }) {
                diag::hops::detected(scan.remote);
            }
        }
        if !events.is_empty() && out.send(events).await.is_err() {
            return Ok(());
        }
    }
}

/// Counts the events a source says it missed (a batch may say so too).
fn count_lost(observation: &Observation, metrics: &Metrics) {
    match observation {
        Observation::Lost { count, source } => metrics.events_lost(source, *count),
        Observation::Batch(observations) => {
            for observation in observations {
                count_lost(observation, metrics);
            }
        }
        _ => {}
    }
}

/// `observation` without what a blocked source sent: a batch keeps the
/// rest, a single observation is `None` when a blocked source sent it.
fn unblocked(observation: Observation, set: &BlockSet, metrics: &Metrics) -> Option<Observation> {
    let blocked = |o: &Observation| sender(o).is_some_and(|remote| set.hit(remote));
    match observation {
        Observation::Batch(mut observations) => {
            let before = observations.len();
            observations.retain(|o| !blocked(o));
            let dropped = before - observations.len();
            if dropped > 0 {
                metrics.blocked_seen(dropped as u64);
            }
            Some(Observation::Batch(observations))
        }
        observation if blocked(&observation) => {
            metrics.blocked_seen(1);
            None
        }
        observation => Some(observation),
    }
}

/// Who sent what a real-time source saw: the remote of an attempt (an
/// inbound SYN, or the answer to an outbound one), the sender of a probe.
fn sender(observation: &Observation) -> Option<std::net::IpAddr> {
    match observation {
        Observation::Attempt { conn, .. } => Some(conn.remote().ip()),
        Observation::Probe { remote, .. } => Some(*remote),
        Observation::Snapshot { .. } | Observation::Lost { .. } | Observation::Batch(_) => None,
    }
}

/// What the block stage reads: batches of events, the operator's
/// requests, reloaded settings.
struct Inputs {
    events: mpsc::Receiver<Vec<Event>>,
    commands: mpsc::Receiver<BlockCommand>,
    reloaded: watch::Receiver<RunSettings>,
    /// What the fleet says (`--fleet`).
    fleet: Option<mpsc::Receiver<FleetEvent>>,
}

/// Where the block stage's events go: down the pipeline, and this node's
/// decisions to the fleet.
struct Outputs {
    out: mpsc::Sender<Vec<Event>>,
    outbox: Outbox,
    clock: Arc<dyn Clock>,
}

/// Copies the block stage's figures into the metrics.
fn report(blocker: &mut Blocker, metrics: &Metrics, xdp: bool, records_evicted: &mut u64) {
    let skipped = blocker.take_skipped();
    metrics.blocks_skipped(skipped.allowlist, skipped.rate_limit);
    let health = blocker.health();
    metrics.set_block_health(health.errors, health.dropped, health.pending);
    metrics.set_block_drift(health.drift_missing, health.drift_unknown);
    // XDP counts its drops itself, per family (`xdp_metrics`).
    if !xdp {
        metrics.set_dropped_packets(health.dropped_packets);
    }
    let suppressed = blocker.take_suppressed();
    if suppressed > 0 {
        metrics.blocked_seen(suppressed);
    }
    let evicted = blocker.records_evicted();
    if evicted > *records_evicted {
        metrics.evicted("block_records", evicted - *records_evicted);
        *records_evicted = evicted;
    }
}

/// Blocks the scanners of each batch (one backend call for all of them),
/// keeps the blocked-address gauges current, retries and repairs every
/// `tick`, applies what the fleet says (`--fleet`), and removes the
/// firewall objects when its input closes. Firewall calls (tens of ms
/// through a tool) run where they may block ([`off_thread`]). Every
/// decision of this node goes through [`Outbox::publish`] on its way out.
async fn block(
    mut blocker: Blocker,
    inputs: Inputs,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    tick: Duration,
    xdp: bool,
) -> anyhow::Result<()> {
    let Inputs {
        events: mut input,
        mut commands,
        mut reloaded,
        mut fleet,
    } = inputs;
    let Outputs { out, outbox, clock } = outputs;
    let node = reloaded.borrow().fleet.node();
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut records_evicted = 0;
    let recount = |blocker: &mut Blocker, events: &[Event]| {
        let blocked = events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Blocked(_) | EventKind::Unblocked { .. }));
        if blocked {
            if let Ok((v4, v6)) = blocker.count() {
                metrics.set_blocked_ips(v4, v6);
            }
        }
    };
    loop {
        let events = tokio::select! {
            Ok(()) = reloaded.changed() => {
                let settings = reloaded.borrow_and_update();
                blocker.reconfigure(&settings.block);
                let scan = &settings.scan;
                blocker.rescan(scan.scan_ports, scan.scan_window, scan.ipv6_prefix.0);
                continue;
            }
            batch = input.recv() => match batch {
                Some(mut events) => {
                    // Whatever else is already waiting joins the same batch.
                    while let Ok(more) = input.try_recv() {
                        events.extend(more);
                    }
                    events
                }
                None => break,
            },
            Some(command) = commands.recv() => {
                // The operator's blocks and lifts are the fleet's too; a
                // flush lifts this node's blocks only.
                let shared = !matches!(command, BlockCommand::Flush { .. });
                let (events, reply, counted) = off_thread(|| {
                    let (events, reply) = command.run(&mut blocker);
                    let counted = if events.is_empty() { None } else { blocker.count().ok() };
                    (events, reply, counted)
                });
                if let Some((v4, v6)) = counted {
                    metrics.set_blocked_ips(v4, v6);
                }
                report(&mut blocker, &metrics, xdp, &mut records_evicted);
                if shared {
                    outbox.publish(&events, blocker.applies());
                }
                if !events.is_empty() && out.send(events).await.is_err() {
                    break;
                }
                reply();
                continue;
            }
            _ = ticks.tick(), if blocker.is_active() => {
                let (late, counted) = off_thread(|| blocker.tick());
                if let Some((v4, v6)) = counted {
                    metrics.set_blocked_ips(v4, v6);
                }
                report(&mut blocker, &metrics, xdp, &mut records_evicted);
                outbox.publish(&late, blocker.applies());
                late
            }
            Some(first) = recv_fleet(&mut fleet) => {
                let mut batch = vec![first];
                if let Some(fleet) = &mut fleet {
                    while let Ok(more) = fleet.try_recv() {
                        batch.push(more);
                    }
                }
                let handled = off_thread(|| {
                    let handled = fleet_link::on_events(&mut blocker, batch, &clock, &node);
                    recount(&mut blocker, &handled.fleet);
                    recount(&mut blocker, &handled.decided);
                    handled
                });
                report(&mut blocker, &metrics, xdp, &mut records_evicted);
                outbox.publish(&handled.decided, blocker.applies());
                let mut events = handled.fleet;
                events.extend(handled.decided);
                // Decided already (a fleet scan and its block): straight on,
                // not through the scans' path, which would block it again.
                if !events.is_empty() && out.send(events).await.is_err() {
                    break;
                }
                continue;
            }
        };
        // Only scans need a decision. The rest pass straight through: a
        // thread hop per batch would queue a scan behind every attempt
        // before it, and a SYN scan sends hundreds of probes a millisecond.
        let has_scan = events.iter().any(is_scan);
        let events = if has_scan && blocker.is_active() {
            let received = std::time::Instant::now();
            let (events, counted) = off_thread(|| {
                let events = blocker.handle(events);
                if diag::hops::on() {
                    say_hops(&events, received, clock.as_ref());
                }
                let blocked = events
                    .iter()
                    .any(|e| matches!(e.kind, EventKind::Blocked(_)));
                let counted = if blocked { blocker.count().ok() } else { None };
                (events, counted)
            });
            if let Some((v4, v6)) = counted {
                metrics.set_blocked_ips(v4, v6);
            }
            report(&mut blocker, &metrics, xdp, &mut records_evicted);
            outbox.publish(&events, blocker.applies());
            events
        } else {
            let events = blocker.pass(events);
            let suppressed = blocker.take_suppressed();
            if suppressed > 0 {
                metrics.blocked_seen(suppressed);
            }
            events
        };
        if !events.is_empty() && out.send(events).await.is_err() {
            break;
        }
    }
    off_thread(|| blocker.shutdown());
    Ok(())
}

/// `TCPWATCH_HOPS=1`: the hops of the userspace path of each scan blocked
/// in `events`, from the read of its threshold probe (the event's stamp).
fn say_hops(events: &[Event], received: std::time::Instant, clock: &dyn Clock) {
    let now = clock.now().mono;
    let applied = received.elapsed();
    for event in events {
        let EventKind::PortScan(scan) = &event.kind else {
            continue;
        };
        let Some(detected) = diag::hops::take_detected(scan.remote) else {
            continue;
        };
        let total = now.saturating_sub(event.at.mono);
        let queued = received.saturating_duration_since(detected);
        let read = total.saturating_sub(applied + queued);
        let micros = |d: std::time::Duration| d.as_secs_f64() * 1e6;
        diag::note(format_args!(
            "hops: {}: read to detected {:.0} us, detected to block stage {:.0} us, block stage to commit returned {:.0} us (the allowlist re-read {:.0} us, the nft commit {:.0} us), read to commit returned {:.0} us",
            scan.remote,
            micros(read),
            micros(queued),
            micros(applied),
            micros(diag::hops::last_allow_read()),
            micros(diag::hops::last_commit()),
            micros(total)
        ));
    }
}

/// The next fleet event, or never without a fleet (or once it ended).
async fn recv_fleet(fleet: &mut Option<mpsc::Receiver<FleetEvent>>) -> Option<FleetEvent> {
    match fleet {
        Some(events) => match events.recv().await {
            Some(event) => Some(event),
            None => {
                *fleet = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Runs a firewall call where it may block: the runtime moves this
/// worker's other tasks to another thread meanwhile.
fn off_thread<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Prints each event and counts it once printed: the counters always equal
/// the lines on stdout. With a state file, the connections of each batch
/// are stored once printed: a crash in between prints them again at the
/// next start rather than never.
async fn print(
    mut sink: LineSink<Box<dyn Write + Send>>,
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
            if let EventKind::NewConnection { conn, .. } = &event.kind {
                printed.push(pair(conn.initiator, conn.acceptor));
            }
        }
        if let (Some(store), false) = (&store, printed.is_empty()) {
            store.report(store_connections(store, printed, Vec::new()).await);
        }
    }
    Ok(())
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

/// How often the XDP drop counters are read into the metrics.
const XDP_METRICS_EVERY: Duration = Duration::from_secs(1);

/// Copies the kernel's per-CPU drop counters and the eviction count into
/// the metrics, as deltas, every [`XDP_METRICS_EVERY`].
async fn xdp_metrics(stats: Stats, metrics: Arc<Metrics>) {
    let mut seen = (0u64, 0u64, 0u64);
    let mut ticks = tokio::time::interval(XDP_METRICS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some((v4, v6)) = stats.dropped() else {
            continue;
        };
        let evictions = stats.evictions();
        let (new4, new6) = (v4.wrapping_sub(seen.0), v6.wrapping_sub(seen.1));
        metrics.xdp_dropped(new4, new6, evictions.wrapping_sub(seen.2));
        metrics.add_dropped_packets(new4.wrapping_add(new6));
        seen = (v4, v6, evictions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Connection, Direction, ScanKind};
    use std::net::{IpAddr, SocketAddr};

    fn stamp() -> Stamp {
        Stamp {
            wall: chrono::Local::now(),
            mono: Duration::ZERO,
        }
    }

    fn attempt(from: &str) -> Observation {
        let initiator: SocketAddr = format!("{from}:40000").parse().unwrap();
        Observation::Attempt {
            at: stamp(),
            conn: Connection {
                initiator,
                acceptor: "192.0.2.1:22".parse().unwrap(),
                direction: Direction::Inbound,
            },
            isn: 1,
            owner: None,
        }
    }

    fn probe(from: &str) -> Observation {
        Observation::Probe {
            at: stamp(),
            remote: from.parse().unwrap(),
            local: "192.0.2.1:23".parse().unwrap(),
            kind: ScanKind::Fin,
        }
    }

    fn senders(observation: &Observation) -> Vec<IpAddr> {
        match observation {
            Observation::Batch(observations) => observations.iter().filter_map(sender).collect(),
            other => sender(other).into_iter().collect(),
        }
    }

    #[test]
    fn a_blocked_source_is_dropped_alone_and_from_inside_a_batch() {
        let set = BlockSet::new();
        let blocked: ipnet::IpNet = "198.51.100.7/32".parse().unwrap();
        set.insert(blocked);
        let metrics = Metrics::new("xdp", None);

        assert!(unblocked(attempt("198.51.100.7"), &set, &metrics).is_none());
        let free = unblocked(probe("203.0.113.5"), &set, &metrics).unwrap();
        assert_eq!(senders(&free), ["203.0.113.5".parse::<IpAddr>().unwrap()]);

        let batch = Observation::Batch(vec![
            attempt("203.0.113.5"),
            probe("198.51.100.7"),
            Observation::Lost {
                count: 3,
                source: "xdp",
            },
            attempt("198.51.100.7"),
            probe("203.0.113.6"),
        ]);
        let kept = unblocked(batch, &set, &metrics).unwrap();
        let Observation::Batch(ref rest) = kept else {
            panic!("{kept:?}")
        };
        assert_eq!(rest.len(), 3, "{rest:?}");
        assert!(matches!(rest[1], Observation::Lost { count: 3, .. }));
        assert_eq!(
            senders(&kept),
            ["203.0.113.5", "203.0.113.6"].map(|ip| ip.parse::<IpAddr>().unwrap())
        );
        // One alone and two in the batch, counted as seen by the block.
        assert_eq!(set.seen(blocked), 3);
    }
}
