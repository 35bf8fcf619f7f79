//! The fleet stage's task: one loop that owns the Redis session, publishes
//! this node's decisions, sends the aggregated attempts, follows the change
//! log, and reconnects with backoff. Nothing here is awaited by the
//! pipeline: it talks to the handles through a bounded channel and a
//! bounded aggregate.

use super::conn::{one_line, Conn, Connector};
use super::handle::{
    from_unix_ms, random_u64, unix_ms, Command, FleetCounters, FleetEvent, Shared,
};
use super::scripts;
use super::settings::FleetSettings;
use super::settings::Resolved;
use super::wire::{self, keys, BanRecord, LogEntry, Message, StreamId};
use ipnet::IpNet;
use redis::{RedisError, RedisResult, Script, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{interval, Instant, MissedTickBehavior};

/// How long one blocking read of the log waits before it asks again.
const BLOCK_WAIT: Duration = Duration::from_secs(5);
/// Log entries read at most per call.
const READ_COUNT: usize = 256;
/// Bans read per page of the index.
const PAGE: usize = 1000;
/// Decisions sent per pipeline (one round trip).
const BATCH: usize = 256;
/// Sources per observe call on a single server (2 keys each).
const OBSERVE_CHUNK: usize = 128;
/// Observe calls in flight at once on a cluster (one per source).
const CLUSTER_CONCURRENCY: usize = 64;
/// How often a connected node checks that Redis still holds its data.
const EPOCH_CHECK: Duration = Duration::from_secs(10);
/// The first wait before reconnecting; it doubles up to the settings' max.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// How long the task may take to publish what it holds when it stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct OwnBan {
    expires_ms: u64,
    reason: String,
}

struct KnownBan {
    expires_ms: u64,
    origin: String,
}

#[derive(Clone)]
enum Op {
    Block { expires_ms: u64, reason: String },
    Unblock,
}

/// This node's decisions not yet in Redis: one per target (the latest
/// wins), in the order they were made, bounded.
struct Pending {
    order: BTreeMap<u64, IpNet>,
    ops: HashMap<IpNet, (u64, Op)>,
    next: u64,
    cap: usize,
}

impl Pending {
    fn new(cap: usize) -> Pending {
        Pending {
            order: BTreeMap::new(),
            ops: HashMap::new(),
            next: 0,
            cap,
        }
    }

    /// False when full (the decision is dropped).
    fn insert(&mut self, target: IpNet, op: Op) -> bool {
        if let Some((seq, _)) = self.ops.get(&target) {
            self.order.remove(seq);
        } else if self.ops.len() >= self.cap {
            return false;
        }
        self.next += 1;
        self.order.insert(self.next, target);
        self.ops.insert(target, (self.next, op));
        true
    }

    fn contains(&self, target: &IpNet) -> bool {
        self.ops.contains_key(target)
    }

    fn peek(&self, n: usize) -> Vec<(u64, IpNet, Op)> {
        self.order
            .iter()
            .take(n)
            .map(|(seq, t)| (*seq, *t, self.ops[t].1.clone()))
            .collect()
    }

    fn remove(&mut self, seq: u64, target: &IpNet) {
        if self.ops.get(target).is_some_and(|(s, _)| *s == seq) {
            self.ops.remove(target);
            self.order.remove(&seq);
        }
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Why a session ended.
enum Fault {
    /// The link or the server failed: report Down (once), back off, retry.
    Link(String),
    /// A single-server connection reached a cluster node: use the cluster
    /// client instead, at once.
    Cluster,
}

enum ReaderMsg {
    Entries(Vec<LogEntry>),
    Failed(String),
}

struct Session {
    conn: Conn,
    log: mpsc::Receiver<ReaderMsg>,
    reader: Option<JoinHandle<()>>,
    epoch_checked: Instant,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

struct Scripts {
    block: Script,
    unblock: Script,
    observe: Script,
    sync: Script,
}

pub(super) struct Task {
    settings: FleetSettings,
    resolved: Resolved,
    connector: Connector,
    shared: Arc<Shared>,
    counters: Arc<FleetCounters>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<FleetEvent>,
    scripts: Scripts,
    session: Option<Session>,
    /// The data epoch of the Redis this node last synchronised with.
    epoch: Option<String>,
    /// The last log entry this node applied.
    position: Option<StreamId>,
    pending: Pending,
    own: HashMap<IpNet, OwnBan>,
    known: HashMap<IpNet, KnownBan>,
    backoff: Duration,
    next_attempt: Instant,
    down_reported: bool,
    ever_up: bool,
    /// Events held back while connecting.
    held: Option<Vec<FleetEvent>>,
    /// (source, pair) -> when this node last sent it; bounded.
    recent: HashMap<(IpNet, SocketAddr), Instant>,
}

impl Task {
    pub(super) fn new(
        settings: FleetSettings,
        resolved: Resolved,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<FleetEvent>,
    ) -> Result<Task, String> {
        let connector = Connector::new(&settings, &resolved, settings.is_cluster(), BLOCK_WAIT)?;
        Ok(Task {
            pending: Pending::new(settings.limits.pending),
            counters: shared.counters.clone(),
            settings,
            resolved,
            connector,
            shared,
            commands,
            events,
            scripts: Scripts {
                block: Script::new(scripts::BLOCK),
                unblock: Script::new(scripts::UNBLOCK),
                observe: Script::new(scripts::OBSERVE),
                sync: Script::new(scripts::SYNC),
            },
            session: None,
            epoch: None,
            position: None,
            own: HashMap::new(),
            known: HashMap::new(),
            backoff: MIN_BACKOFF,
            next_attempt: Instant::now(),
            down_reported: false,
            ever_up: false,
            held: None,
            recent: HashMap::new(),
        })
    }

    pub(super) async fn run(mut self) {
        let mut flush = interval(self.settings.flush_interval);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tick = interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.try_connect().await;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(c) => {
                        self.accept(c);
                        while let Ok(c) = self.commands.try_recv() {
                            self.accept(c);
                        }
                        let r = self.publish_pending().await;
                        self.check(r).await;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                msg = recv_log(&mut self.session) => match msg {
                    ReaderMsg::Entries(entries) => self.on_entries(entries).await,
                    ReaderMsg::Failed(reason) => {
                        let reason = format!(
                            "Redis at {} unusable: {reason}",
                            self.connector.description()
                        );
                        self.fail(Fault::Link(reason)).await
                    }
                },
                _ = flush.tick() => {
                    let r = self.flush().await;
                    self.check(r).await;
                }
                _ = tick.tick() => self.maintain().await,
            }
        }
    }

    // -- decisions of this node ------------------------------------------

    fn accept(&mut self, command: Command) {
        let (target, op) = match command {
            Command::Block {
                target,
                expires_ms,
                reason,
            } => {
                self.own.insert(
                    target,
                    OwnBan {
                        expires_ms,
                        reason: reason.clone(),
                    },
                );
                (target, Op::Block { expires_ms, reason })
            }
            Command::Unblock { target } => {
                self.own.remove(&target);
                self.known.remove(&target);
                (target, Op::Unblock)
            }
            Command::Rule { pairs, window } => {
                self.settings.scan_pairs = pairs;
                self.settings.scan_window = window;
                return;
            }
        };
        if self.own.len() > self.settings.limits.bans {
            self.own.remove(&target);
        }
        if !self.pending.insert(target, op) {
            self.counters
                .dropped_pending
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the pending decisions (if connected), a pipeline at a time;
    /// what a failure interrupts stays pending.
    async fn publish_pending(&mut self) -> Result<(), Fault> {
        let Some(session) = &mut self.session else {
            return Ok(());
        };
        let mut conn = session.conn.clone();
        let log_len = self.settings.limits.log_len;
        while !self.pending.is_empty() {
            let batch = self.pending.peek(BATCH);
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (_, target, op) in &batch {
                let text = wire::target_text(target);
                match op {
                    Op::Block { expires_ms, reason } => {
                        let message = wire::encode(&Message::Block(BanRecord {
                            target: *target,
                            expires_ms: *expires_ms,
                            origin: self.shared.node.clone(),
                            instance: self.shared.instance,
                            reason: reason.clone(),
                        }));
                        pipe.cmd("EVALSHA")
                            .arg(self.scripts.block.get_hash())
                            .arg(3)
                            .arg(keys::ban(target))
                            .arg(keys::INDEX)
                            .arg(keys::LOG)
                            .arg(&text)
                            .arg(*expires_ms)
                            .arg(message)
                            .arg(log_len);
                    }
                    Op::Unblock => {
                        let message = wire::encode(&Message::Unblock {
                            target: *target,
                            origin: self.shared.node.clone(),
                            instance: self.shared.instance,
                        });
                        pipe.cmd("EVALSHA")
                            .arg(self.scripts.unblock.get_hash())
                            .arg(3)
                            .arg(keys::ban(target))
                            .arg(keys::INDEX)
                            .arg(keys::LOG)
                            .arg(&text)
                            .arg(message)
                            .arg(log_len);
                    }
                }
            }
            let results: Vec<RedisResult<Value>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fault(&e))?;
            for ((seq, target, op), result) in batch.iter().zip(results) {
                if let Err(e) = result {
                    if let Some(f) = self.session_fault(&e) {
                        return Err(f);
                    }
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                let counter = match op {
                    Op::Block { .. } => &self.counters.out_block,
                    Op::Unblock => &self.counters.out_unblock,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.pending.remove(*seq, target);
            }
        }
        Ok(())
    }

    // -- attempts ----------------------------------------------------------

    /// Sends what the handles aggregated since the last flush; reports the
    /// sources this node saw cross the line.
    async fn flush(&mut self) -> Result<(), Fault> {
        let sources: Vec<(IpNet, Vec<SocketAddr>)> = {
            let mut agg = self
                .shared
                .aggregate
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut agg.sources)
                .into_iter()
                .map(|(s, pairs)| {
                    let mut pairs: Vec<SocketAddr> = pairs.into_iter().collect();
                    pairs.sort();
                    (s, pairs)
                })
                .collect()
        };
        if sources.is_empty() {
            return Ok(());
        }
        let Some(session) = &self.session else {
            let n: usize = sources.iter().map(|(_, p)| p.len()).sum();
            self.counters
                .dropped_attempts
                .fetch_add(n as u64, Ordering::Relaxed);
            return Ok(());
        };
        let conn = session.conn.clone();
        // A pair this node sent less than a quarter window ago is not sent
        // again: its score in Redis is at most that old, so it stays in the
        // window at least three quarters of a window after its last touch.
        // Repeat visitors cost Redis nothing; a scan, all new pairs, is sent
        // whole.
        let now = Instant::now();
        let fresh = self.settings.scan_window / 4;
        if self.recent.len() >= self.settings.limits.recent_pairs {
            self.recent.retain(|_, t| now.duration_since(*t) < fresh);
        }
        let sources: Vec<(IpNet, Vec<SocketAddr>)> = sources
            .into_iter()
            .filter_map(|(source, pairs)| {
                let pairs: Vec<SocketAddr> = pairs
                    .into_iter()
                    .filter(|p| {
                        self.recent
                            .get(&(source, *p))
                            .is_none_or(|t| now.duration_since(*t) >= fresh)
                    })
                    .collect();
                (!pairs.is_empty()).then_some((source, pairs))
            })
            .collect();
        if sources.is_empty() {
            return Ok(());
        }
        let window_ms = self.settings.scan_window.as_millis().max(1) as u64;
        let limit = self.settings.scan_pairs;
        let cap = self
            .settings
            .limits
            .pairs_per_window
            .max(self.settings.scan_pairs + 1);
        // (first source index, the call's reply)
        let mut replies: Vec<(usize, Value)> = Vec::new();
        let call = |chunk: &[(IpNet, Vec<SocketAddr>)]| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.scripts.observe.get_hash())
                .arg(chunk.len() * 2);
            for (source, _) in chunk {
                cmd.arg(keys::pairs(source)).arg(keys::reported(source));
            }
            cmd.arg(window_ms).arg(limit).arg(cap);
            for (_, pairs) in chunk {
                cmd.arg(pairs.len());
                for p in pairs {
                    cmd.arg(wire::encode_pair(p));
                }
            }
            cmd
        };
        if self.connector.is_cluster() {
            // One call per source: its keys are in its own slot.
            let mut calls = tokio::task::JoinSet::new();
            let mut next = 0;
            while next < sources.len() || !calls.is_empty() {
                while next < sources.len() && calls.len() < CLUSTER_CONCURRENCY {
                    let cmd = call(&sources[next..next + 1]);
                    let mut c = conn.clone();
                    let index = next;
                    calls.spawn(async move { (index, cmd.query_async::<Value>(&mut c).await) });
                    next += 1;
                }
                let Some(joined) = calls.join_next().await else {
                    break;
                };
                let Ok((index, result)) = joined else {
                    continue;
                };
                match result {
                    Ok(v) => replies.push((index, v)),
                    Err(e) => {
                        if let Some(f) = self.session_fault(&e) {
                            return Err(f);
                        }
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        } else {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut starts = Vec::new();
            for (i, chunk) in sources.chunks(OBSERVE_CHUNK).enumerate() {
                pipe.add_command(call(chunk));
                starts.push(i * OBSERVE_CHUNK);
            }
            let mut c = conn.clone();
            let results: Vec<RedisResult<Value>> =
                pipe.query_async(&mut c).await.map_err(|e| self.fault(&e))?;
            for (start, result) in starts.into_iter().zip(results) {
                match result {
                    Ok(v) => replies.push((start, v)),
                    Err(e) => {
                        if let Some(f) = self.session_fault(&e) {
                            return Err(f);
                        }
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.counters
            .out_observe
            .fetch_add(sources.len() as u64, Ordering::Relaxed);
        for (source, pairs) in &sources {
            for p in pairs {
                if self.recent.len() < self.settings.limits.recent_pairs {
                    self.recent.insert((*source, *p), now);
                }
            }
        }
        for (start, reply) in replies {
            let in_call = if self.connector.is_cluster() {
                1
            } else {
                (sources.len() - start).min(OBSERVE_CHUNK)
            };
            let (crossings, errors, malformed) = wire::decode_observe_reply(&reply, in_call);
            self.counters.errors.fetch_add(errors, Ordering::Relaxed);
            self.counters
                .malformed
                .fetch_add(malformed, Ordering::Relaxed);
            for crossing in crossings {
                let source = sources[start + crossing.index - 1].0;
                let (summary, bad) = wire::summarize_pairs(&crossing.members);
                self.counters.malformed.fetch_add(bad, Ordering::Relaxed);
                self.counters.in_scan.fetch_add(1, Ordering::Relaxed);
                self.emit(FleetEvent::FleetScan {
                    source,
                    hosts: summary.hosts,
                    ports: summary.ports,
                    pairs: summary.pairs,
                })
                .await;
            }
        }
        Ok(())
    }

    // -- the fleet's decisions ---------------------------------------------

    async fn on_entries(&mut self, entries: Vec<LogEntry>) {
        for entry in entries {
            self.position = Some(entry.id);
            match entry.message {
                Ok(m) => self.apply(m).await,
                Err(_) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn apply(&mut self, message: Message) {
        match message {
            Message::Block(record) => self.apply_block(record).await,
            Message::Unblock {
                target,
                origin,
                instance,
            } => {
                if instance == self.shared.instance {
                    return;
                }
                self.counters.in_unblock.fetch_add(1, Ordering::Relaxed);
                self.own.remove(&target);
                self.known.remove(&target);
                self.emit(FleetEvent::RemoteUnblock {
                    target,
                    origin: Some(origin),
                })
                .await;
            }
        }
    }

    async fn apply_block(&mut self, record: BanRecord) {
        if record.instance == self.shared.instance {
            return;
        }
        self.counters.in_block.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        if record.expires_ms <= now {
            return;
        }
        if Duration::from_millis(record.expires_ms - now) > self.settings.limits.max_ttl {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(k) = self.known.get(&record.target) {
            if k.expires_ms == record.expires_ms && k.origin == record.origin {
                return;
            }
        } else if self.known.len() >= self.settings.limits.bans {
            self.counters.dropped_events.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.known.insert(
            record.target,
            KnownBan {
                expires_ms: record.expires_ms,
                origin: record.origin.clone(),
            },
        );
        self.emit(FleetEvent::RemoteBlock {
            target: record.target,
            expires: from_unix_ms(record.expires_ms),
            origin: record.origin,
            reason: record.reason,
        })
        .await;
    }

    async fn emit(&mut self, event: FleetEvent) {
        if let Some(held) = &mut self.held {
            held.push(event);
            return;
        }
        self.send(event).await;
    }

    async fn send(&self, event: FleetEvent) {
        if self.events.send(event).await.is_err() {
            self.counters.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
    }

    // -- the session -------------------------------------------------------

    async fn maintain(&mut self) {
        let now = now_ms();
        self.own.retain(|_, b| b.expires_ms > now);
        self.known.retain(|_, b| b.expires_ms > now);
        match &self.session {
            None => {
                if Instant::now() >= self.next_attempt {
                    self.try_connect().await;
                }
            }
            Some(s) if s.epoch_checked.elapsed() >= EPOCH_CHECK => {
                let r = self.synchronise().await;
                self.check(r).await;
            }
            Some(_) => {}
        }
    }

    async fn try_connect(&mut self) {
        // What the catch-up finds is told after `Up` (or after `Down`, if
        // the catch-up fails half-way: what was applied stays applied).
        self.held = Some(Vec::new());
        let result = self.connect().await;
        let held = self.held.take().unwrap_or_default();
        match result {
            Ok(()) => {
                self.backoff = MIN_BACKOFF;
                self.down_reported = false;
                // Redis may have lost the windows meanwhile.
                self.recent.clear();
                self.counters.up.store(true, Ordering::Relaxed);
                if self.ever_up {
                    self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.ever_up = true;
                self.send(FleetEvent::Up {
                    server: self.connector.description().to_string(),
                })
                .await;
            }
            Err(f) => self.fail(f).await,
        }
        for event in held {
            self.send(event).await;
        }
    }

    async fn connect(&mut self) -> Result<(), Fault> {
        let mut conn = self
            .connector
            .commands()
            .await
            .map_err(|e| self.fault(&e))?;
        for script in [
            &self.scripts.block,
            &self.scripts.unblock,
            &self.scripts.observe,
            &self.scripts.sync,
        ] {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| self.fault(&e))?;
        }
        let reader = self.connector.reader().await.map_err(|e| self.fault(&e))?;
        let (_, log) = mpsc::channel(1);
        self.session = Some(Session {
            conn,
            log,
            reader: None,
            epoch_checked: Instant::now(),
        });
        if let Err(f) = self.synchronise().await {
            self.session = None;
            return Err(f);
        }
        self.start_reader(reader);
        Ok(())
    }

    /// Compares Redis's data epoch with what this node knows, publishes what
    /// it must (pending decisions; all its own bans when Redis lost its
    /// data), reads the whole ban index when the log cannot tell what was
    /// missed, and sets where to follow the log from.
    async fn synchronise(&mut self) -> Result<(), Fault> {
        let Some(session) = &mut self.session else {
            return Err(Fault::Link("not connected".into()));
        };
        session.epoch_checked = Instant::now();
        let mut conn = session.conn.clone();
        let proposal = format!("{:016x}", random_u64());
        let reply: Value = self
            .scripts
            .sync
            .key(keys::EPOCH)
            .key(keys::LOG)
            .arg(&proposal)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fault(&e))?;
        let state = wire::decode_sync_reply(&reply).map_err(|m| {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            Fault::Link(format!("unreadable reply from Redis: {m}"))
        })?;
        let (epoch, last) = (state.epoch.clone(), state.last);
        let fresh = self.epoch.is_none();
        let lost = self.epoch.as_ref().is_some_and(|e| *e != epoch);
        let gap = match self.position {
            _ if fresh || lost => false,
            None => true,
            Some(p) => state.gap_after(p),
        };
        if !fresh && !lost && !gap {
            // Same data, the log reaches back to where this node stopped.
            self.publish_pending().await?;
            if self.position.is_none() {
                self.position = Some(last);
            }
            return Ok(());
        }
        if lost {
            // Redis lost its data: publish this node's bans still in force.
            let now = now_ms();
            let mut again = 0;
            let own: Vec<(IpNet, u64, String)> = self
                .own
                .iter()
                .filter(|(t, b)| b.expires_ms > now && !self.pending.contains(t))
                .map(|(t, b)| (*t, b.expires_ms, b.reason.clone()))
                .collect();
            for (target, expires_ms, reason) in own {
                if self
                    .pending
                    .insert(target, Op::Block { expires_ms, reason })
                {
                    again += 1;
                } else {
                    self.counters
                        .dropped_pending
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            self.counters
                .republished
                .fetch_add(again, Ordering::Relaxed);
        }
        self.publish_pending().await?;
        self.resync(!lost).await?;
        self.epoch = Some(epoch);
        self.position = Some(last);
        // A reader started from `last` replays whatever changed while the
        // index was read.
        if let Some(session) = &mut self.session {
            if session.reader.is_some() {
                let reader = self.connector.reader().await.map_err(|e| self.fault(&e))?;
                self.start_reader(reader);
            }
        }
        Ok(())
    }

    /// Reads the ban index page by page; applies what this node lacks and,
    /// when `lifted` (the data is the same, only the log was too short),
    /// lifts what Redis no longer holds.
    async fn resync(&mut self, lifted: bool) -> Result<(), Fault> {
        self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        let Some(session) = &self.session else {
            return Err(Fault::Link("not connected".into()));
        };
        let mut conn = session.conn.clone();
        let now = now_ms();
        let mut seen: HashSet<IpNet> = HashSet::new();
        let mut start = format!("({now}");
        let mut skip = 0usize;
        let max_pages = self.settings.limits.bans / PAGE + 2;
        for _ in 0..max_pages {
            let page: Value = redis::cmd("ZRANGE")
                .arg(keys::INDEX)
                .arg(&start)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(skip)
                .arg(PAGE)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fault(&e))?;
            let raw = wire::value_items(&page).map_or(0, |i| i.len());
            let (entries, bad) = wire::decode_index_page(&page);
            self.counters.malformed.fetch_add(bad, Ordering::Relaxed);
            if !entries.is_empty() {
                let mut mget = redis::cmd("MGET");
                for (t, _) in &entries {
                    mget.arg(keys::ban(t));
                }
                let records: Value = mget
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.fault(&e))?;
                let records = wire::value_items(&records).unwrap_or(&[]).to_vec();
                if records.len() != entries.len() {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
                for ((target, _), record) in entries.iter().zip(records.iter()) {
                    match wire::decode_record(record, target) {
                        Ok(Some(r)) => {
                            seen.insert(*target);
                            if r.instance != self.shared.instance {
                                self.apply_block(r).await;
                            }
                        }
                        Ok(None) => {}
                        Err(_) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            // The next page starts at the last score read, skipping the
            // members of that score already read.
            if let Some((_, last_score)) = entries.last() {
                let same = entries.iter().filter(|(_, s)| s == last_score).count();
                let from = last_score.to_string();
                if from == start {
                    skip += same;
                } else {
                    start = from;
                    skip = same;
                }
            } else {
                skip += raw / 2;
            }
            if raw < PAGE * 2 {
                break;
            }
        }
        if lifted {
            let now = now_ms();
            let gone: Vec<IpNet> = self
                .known
                .iter()
                .filter(|(t, k)| k.expires_ms > now && !seen.contains(t))
                .map(|(t, _)| *t)
                .chain(
                    self.own
                        .iter()
                        .filter(|(t, b)| {
                            b.expires_ms > now && !seen.contains(t) && !self.pending.contains(t)
                        })
                        .map(|(t, _)| *t),
                )
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            for target in gone {
                self.known.remove(&target);
                self.own.remove(&target);
                self.emit(FleetEvent::RemoteUnblock {
                    target,
                    origin: None,
                })
                .await;
            }
        }
        Ok(())
    }

    fn start_reader(&mut self, reader: Conn) {
        let Some(session) = &mut self.session else {
            return;
        };
        let from = self.position.unwrap_or(StreamId::ZERO);
        let (tx, rx) = mpsc::channel(4);
        if let Some(old) = session.reader.take() {
            old.abort();
        }
        session.log = rx;
        session.reader = Some(tokio::spawn(read_log(reader, from, tx)));
    }

    async fn check(&mut self, result: Result<(), Fault>) {
        if let Err(f) = result {
            self.fail(f).await;
        }
    }

    async fn fail(&mut self, fault: Fault) {
        self.session = None;
        self.counters.up.store(false, Ordering::Relaxed);
        match fault {
            Fault::Cluster => {
                // Same settings, read as a cluster: connect again at once.
                let mut settings = self.settings.clone();
                settings.cluster = true;
                match Connector::new(&settings, &self.resolved, true, BLOCK_WAIT) {
                    Ok(c) => {
                        self.connector = c;
                        self.settings = settings;
                        self.next_attempt = Instant::now();
                        return;
                    }
                    Err(reason) => self.report_down(reason).await,
                }
            }
            Fault::Link(reason) => self.report_down(reason).await,
        }
        // Jittered backoff, so a fleet does not reconnect in step.
        let jitter = 0.8 + (random_u64() % 400) as f64 / 1000.0;
        self.next_attempt = Instant::now() + self.backoff.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(self.settings.max_backoff.max(MIN_BACKOFF));
    }

    async fn report_down(&mut self, reason: String) {
        if !self.down_reported {
            self.down_reported = true;
            self.emit(FleetEvent::Down { reason }).await;
        }
    }

    /// What a failed command means for the session.
    fn fault(&self, e: &RedisError) -> Fault {
        self.session_fault(e)
            .unwrap_or_else(|| Fault::Link(self.describe(e)))
    }

    /// `Some` when the error ends the session; `None` when only the one
    /// command failed (a key of the wrong type, a script error).
    fn session_fault(&self, e: &RedisError) -> Option<Fault> {
        use redis::{ErrorKind, ServerErrorKind};
        match e.kind() {
            ErrorKind::Server(
                ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::CrossSlot,
            ) if !self.connector.is_cluster() => Some(Fault::Cluster),
            ErrorKind::Server(
                ServerErrorKind::ResponseError
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::NotBusy
                | ServerErrorKind::NoSub,
            )
            | ErrorKind::Extension
            | ErrorKind::UnexpectedReturnType => None,
            _ => Some(Fault::Link(self.describe(e))),
        }
    }

    fn describe(&self, e: &RedisError) -> String {
        format!(
            "Redis at {} unusable: {}",
            self.connector.description(),
            one_line(e)
        )
    }

    async fn shutdown(&mut self) {
        if self.session.is_some() && !self.pending.is_empty() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.publish_pending()).await;
        }
        self.session = None;
        self.counters.up.store(false, Ordering::Relaxed);
    }
}

async fn recv_log(session: &mut Option<Session>) -> ReaderMsg {
    match session {
        Some(s) => match s.log.recv().await {
            Some(m) => m,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Follows the log with blocking reads, from `from` on.
async fn read_log(mut conn: Conn, mut from: StreamId, tx: mpsc::Sender<ReaderMsg>) {
    loop {
        let reply: RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK_WAIT.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys::LOG)
            .arg(from.to_string())
            .query_async(&mut conn)
            .await;
        let msg = match reply {
            Ok(v) => match wire::decode_xread(&v) {
                Ok(entries) if entries.is_empty() => continue,
                Ok(entries) => {
                    from = entries.last().map_or(from, |e| e.id);
                    ReaderMsg::Entries(entries)
                }
                Err(m) => ReaderMsg::Failed(format!("unreadable change log from Redis: {m}")),
            },
            Err(e) => ReaderMsg::Failed(format!("change log read failed: {}", one_line(&e))),
        };
        let failed = matches!(msg, ReaderMsg::Failed(_));
        if tx.send(msg).await.is_err() || failed {
            return;
        }
    }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now()).unwrap_or(0)
}
