//! [`Blocker`]: the decision. For each batch of events it picks the
//! scanners to block (not allowlisted, within the cap, or already blocked
//! and only refreshed), gives each its TTL (twice the last for a repeat
//! offender, [`super::record`]), records them in the journal, has the
//! [`Firewall`] apply them, and puts a `Blocked` event right after each
//! scan whose remote was blocked. It takes the operator's blocks and lifts
//! ([`Blocker::add`], [`Blocker::remove`]) the same way, so every block
//! decided or lifted leaves this stage as a `Blocked` or `Unblocked` event.
//!
//! Connections from a source already blocked are not reported: they are
//! the block at work (a packet source sees them before the firewall drops
//! them), counted as seen by their block instead.
//!
//! The scans are this host's port scans and the fleet scans it reported.
//! It also applies the blocks other nodes of a fleet decided
//! ([`Blocker::apply_remote`]: through the same allowlist and cap, until
//! the same instant) and lifts blocks the fleet lifted ([`Blocker::lift`]).
//! Their `Blocked` events name the node that decided them
//! (`Origin::Fleet`), also when the firewall applies them late.

use super::allow::Allowlist;
use super::backend::{canonical, whole_seconds};
use super::firewall::{Counted, Firewall, Health};
use super::journal::Journal;
use super::limit;
use super::record::{self, Escalation, Record, Records};
use super::Settings;
use crate::blockset::{BlockInfo, BlockSet};
use crate::clock::Clock;
use crate::diag;
use crate::event::{show_net, Block, Event, EventKind, Origin};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Scanners not blocked, by reason (`tcpwatch_blocks_skipped_total`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub allowlist: u64,
    pub rate_limit: u64,
}

/// What a restore at start-up did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub applied: usize,
    /// Stored blocks kept for a later start: blocking is off or dry.
    pub kept: usize,
}

/// Why the operator's block was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Blocker {
    /// `None`: blocking is off (`--block none`, or a backend that could not
    /// start); scans are reported only.
    firewall: Option<Firewall>,
    ttl: Duration,
    /// `--block-ttl-max`: a repeat offender's TTL doubles up to this.
    ttl_max: Duration,
    allow: Allowlist,
    clock: Arc<dyn Clock>,
    journal: Option<Arc<dyn Journal>>,
    limit: limit::Limit,
    skipped: Skipped,
    /// This node's name: the origin of the blocks it decides.
    node: Arc<str>,
    records: Records,
    /// Connections of blocked sources not reported since the last call.
    suppressed: u64,
    /// The blocks applied (or pending) for another node of the fleet, by
    /// target: the node that decided each. Bounded by the firewall's blocks.
    fleet: HashMap<IpNet, Arc<str>>,
}

/// A block another node of the fleet decided, to apply here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub target: IpNet,
    /// When it ends, the same instant on every node.
    pub expires: SystemTime,
    /// The node that decided it.
    pub origin: String,
}

/// The reason recorded for a block another node decided.
pub const FROM_FLEET: &str = "decided by the fleet";

impl Blocker {
    /// A blocker giving every block `ttl` (no escalation until
    /// [`Blocker::with_ttl_max`]).
    pub fn new(
        mut firewall: Option<Firewall>,
        ttl: Duration,
        allow: Allowlist,
        clock: Arc<dyn Clock>,
    ) -> Self {
        if let Some(firewall) = firewall.as_mut() {
            firewall.sync_allow(&allow.entries());
        }
        Blocker {
            firewall,
            ttl,
            ttl_max: ttl,
            allow,
            clock,
            journal: None,
            limit: limit::Limit::new(limit::Rate(None)),
            skipped: Skipped::default(),
            node: "localhost".into(),
            records: Records::new(),
            suppressed: 0,
            fleet: HashMap::new(),
        }
    }

    /// Names this node (`--node-name`, or the host name) in the blocks it
    /// decides.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    /// Caps new blocks (`--max-blocks-per-minute`); none by default.
    pub fn with_limit(mut self, rate: limit::Rate) -> Self {
        self.limit.set_rate(rate);
        let ttl = self.ttl;
        if let Some(firewall) = self.firewall.as_mut() {
            firewall.retune(ttl, rate.0);
        }
        self
    }

    /// A repeat offender's TTL doubles up to `max` (`--block-ttl-max`).
    pub fn with_ttl_max(mut self, max: Duration) -> Self {
        self.ttl_max = max;
        self
    }

    /// The blocks in force, for the stages before this one; `None` when
    /// nothing is blocked for real (blocking off, or a dry run).
    pub fn blockset(&self) -> Option<Arc<BlockSet>> {
        self.firewall
            .as_ref()
            .filter(|f| f.applies())
            .map(|f| f.blockset().clone())
    }

    /// Records every block in `journal` before it is applied, and keeps the
    /// journal to what the agent holds.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.firewall = self.firewall.map(|f| f.with_journal(journal.clone()));
        self.journal = Some(journal);
        self
    }

    /// The records the state file kept (the lapsed ones are dropped).
    pub fn with_records(mut self, records: Vec<(IpNet, Record)>) -> Self {
        let now = SystemTime::now();
        for (target, record) in records {
            if record.lapses > now {
                self.records.put(canonical(target), record);
            }
        }
        self
    }

    fn escalation(&self) -> Escalation {
        Escalation {
            base: self.ttl,
            max: self.ttl_max,
        }
    }

    /// The scanners skipped since the last call.
    pub fn take_skipped(&mut self) -> Skipped {
        std::mem::take(&mut self.skipped)
    }

    /// Connections of blocked sources left unreported since the last call.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }

    /// Records evicted from the full table since start.
    pub fn records_evicted(&self) -> u64 {
        self.records.evicted()
    }

    /// New TTLs, `--allow` entries and cap (SIGHUP); active blocks are kept.
    pub fn reconfigure(&mut self, settings: &Settings) {
        self.ttl = settings.block_ttl;
        self.ttl_max = settings.block_ttl_max;
        self.allow.set_nets(settings.allow.clone());
        self.limit.set_rate(settings.max_blocks_per_minute);
        if let Some(firewall) = self.firewall.as_mut() {
            firewall.retune(settings.block_ttl, settings.max_blocks_per_minute.0);
            firewall.sync_allow(&self.allow.entries());
        }
    }

    /// The detector's rule, reloaded (SIGHUP), for a kernel that decides
    /// scans by itself.
    pub fn rescan(&mut self, ports: usize, window: Duration, ipv6_prefix: u8) {
        if let Some(firewall) = self.firewall.as_mut() {
            firewall.rescan(ports, window, ipv6_prefix);
        }
    }

    pub fn health(&self) -> Health {
        self.firewall
            .as_ref()
            .map(Firewall::health)
            .unwrap_or_default()
    }

    /// The backend's name, when blocking is on.
    pub fn backend_name(&self) -> Option<&'static str> {
        self.firewall.as_ref().map(Firewall::name)
    }

    pub fn is_active(&self) -> bool {
        self.firewall.is_some()
    }

    /// Re-applies the unexpired stored blocks (address, absolute expiry)
    /// with the time they have left, in one backend call; allowlisted ones
    /// are dropped from the journal. No event is made: these blocks were
    /// reported when they were decided.
    pub fn restore(&mut self, blocks: Vec<(IpNet, SystemTime)>) -> anyhow::Result<Restored> {
        let now = SystemTime::now();
        // Expiries are wall time (they must survive a reboot): a clock set
        // back while the agent was down would lengthen them, so no block
        // comes back longer than it was given (its record's TTL), or than
        // the longest TTL this agent gives.
        let cap = self.escalation().cap();
        let live: Vec<(IpNet, Duration)> = blocks
            .iter()
            .filter_map(|(ip, expires)| Some((*ip, expires.duration_since(now).ok()?)))
            .filter(|(_, left)| !left.is_zero())
            .map(|(ip, left)| {
                let given = self
                    .records
                    .get(&canonical(ip))
                    .map_or(cap, |r| r.ttl.max(Duration::from_secs(1)));
                (ip, left.min(given))
            })
            .collect();
        let Some(firewall) = self.firewall.as_mut().filter(|f| f.applies()) else {
            return Ok(Restored {
                applied: 0,
                kept: live.len(),
            });
        };
        self.allow.refresh();
        let (_allowed, apply): (Vec<_>, Vec<_>) = live
            .into_iter()
            .partition(|(target, _)| self.allow.check_net(*target).is_some());
        if let Some(journal) = &self.journal {
            // Drops the allowlisted and the expired ones.
            let keep: HashSet<IpNet> = apply.iter().map(|(target, _)| *target).collect();
            journal.keep_only(&keep);
        }
        if !apply.is_empty() {
            firewall.restore(&apply)?;
        }
        Ok(Restored {
            applied: apply.len(),
            kept: 0,
        })
    }

    /// Blocks the scanners of one batch of events and returns the events
    /// with a `Blocked` right after each scan whose remote was blocked.
    /// Every input event is returned, in order, but the connections of
    /// sources already blocked. While the firewall fails, new blocks join
    /// the pending ones and all are retried in one call.
    pub fn handle(&mut self, events: Vec<Event>) -> Vec<Event> {
        let Some(backend_name) = self.backend_name() else {
            return events;
        };
        if !events.iter().any(is_scan) {
            return self.pass(events);
        }
        self.allow.refresh();
        if let Some(firewall) = self.firewall.as_mut() {
            firewall.sync_allow(&self.allow.entries());
        }
        let mut reasons: HashMap<IpNet, String> = HashMap::new();
        let scanners: Vec<IpNet> = events
            .iter()
            .filter_map(|e| {
                let target = self.target(e)?;
                reasons.entry(target).or_insert_with(|| match &e.kind {
                    EventKind::PortScan(scan) => record::scan_reason(scan),
                    EventKind::FleetScan(scan) => fleet_scan_reason(scan),
                    _ => String::new(),
                });
                Some(target)
            })
            .collect();
        let chosen = self.choose(scanners);
        if chosen.is_empty() {
            return self.pass(events);
        }
        // Decided here now, whoever decided it before.
        for target in &chosen {
            self.fleet.remove(target);
        }
        let wall = SystemTime::now();
        let rule = self.escalation();
        let firewall = self
            .firewall
            .as_mut()
            .expect("a backend name means a firewall");
        // A block in force or pending is refreshed as it was; a new one
        // escalates from its record.
        let mut plan = Vec::with_capacity(chosen.len());
        let mut fresh = HashSet::new();
        for target in chosen {
            let held = firewall.holds(target) || firewall.is_pending(target);
            let (ttl, repeat) = match self.records.get(&target) {
                Some(r) if held && r.repeat > 0 => (r.scan_ttl, r.repeat),
                _ => self.records.escalate(&target, wall, rule),
            };
            if !held {
                fresh.insert(target);
            }
            plan.push((target, ttl, repeat));
        }
        let applies = firewall.applies();
        if let (Some(journal), true) = (&self.journal, applies) {
            for (target, ttl, _) in &plan {
                journal.record(&[*target], wall + *ttl, backend_name);
            }
        }
        let mut noted = Vec::with_capacity(plan.len());
        for (target, ttl, repeat) in &plan {
            let reason = reasons.remove(target).unwrap_or_default();
            let record = self.records.blocked(
                *target,
                wall,
                *ttl,
                Some(*repeat),
                reason,
                &self.node,
                rule.memory(),
            );
            noted.push((*target, record));
        }
        if let (Some(journal), true) = (&self.journal, applies) {
            journal.note(&noted);
        }
        let applied = firewall.apply_each(plan.iter().map(|(t, ttl, _)| (*t, *ttl)).collect());
        let placed = self.place(events, applied, backend_name);
        self.suppress(placed, fresh)
    }

    /// A batch without scans: every event but the connections of sources
    /// already blocked.
    pub fn pass(&mut self, events: Vec<Event>) -> Vec<Event> {
        self.suppress(events, HashSet::new())
    }

    /// Leaves out the connections from sources blocked before them: every
    /// block in force, but those in `fresh` (applied in this batch) until
    /// their `Blocked` event. Each is counted as seen by its block.
    fn suppress(&mut self, events: Vec<Event>, mut fresh: HashSet<IpNet>) -> Vec<Event> {
        let Some(set) = self
            .firewall
            .as_ref()
            .filter(|f| f.applies())
            .map(|f| f.blockset().clone())
        else {
            return events;
        };
        if set.is_empty() {
            return events;
        }
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            match &event.kind {
                EventKind::Blocked(block) => {
                    fresh.remove(&block.target);
                }
                EventKind::NewConnection { conn, .. } => {
                    let remote = conn.remote().ip();
                    if let Some(target) = set.lookup(remote) {
                        if !fresh.contains(&target) && set.hit(remote) {
                            self.suppressed += 1;
                            continue;
                        }
                    }
                }
                _ => {}
            }
            out.push(event);
        }
        out
    }

    /// What a scan event blocks: see [`Blocker::target_of`]; a fleet scan's
    /// source, unless it is a prefix holding an address never to be blocked
    /// (its addresses are not known here: nothing is blocked, and the
    /// allowlist check says why).
    fn target(&self, event: &Event) -> Option<IpNet> {
        match &event.kind {
            EventKind::PortScan(scan) => Some(self.target_of(scan)),
            EventKind::FleetScan(scan) => Some(canonical(scan.source)),
            _ => None,
        }
    }

    /// What a scan blocks: its prefix, unless the prefix holds an address
    /// never to be blocked — then only the scanning address (the others are
    /// blocked one by one as they scan).
    fn target_of(&self, scan: &crate::event::PortScan) -> IpNet {
        let source = canonical(scan.source());
        if source.prefix_len() != source.max_prefix_len() && self.allow.check_net(source).is_some()
        {
            return IpNet::from(scan.remote.to_canonical());
        }
        source
    }

    /// The `Blocked` event of `target`'s block for `ttl`, with its place in
    /// a row of scan blocks.
    fn blocked_event(&self, target: IpNet, ttl: Duration, backend: &'static str) -> Event {
        let repeat = self.records.get(&target).map_or(1, |r| r.repeat.max(1));
        Event {
            at: self.clock.now(),
            kind: EventKind::Blocked(Block {
                target,
                ttl,
                backend,
                repeat,
                origin: match self.fleet.get(&target) {
                    Some(node) => Origin::Fleet(node.clone()),
                    None => Origin::Here(self.node.clone()),
                },
            }),
        }
    }

    /// Puts a `Blocked` event right after the scan of each applied address
    /// in `events`, and those of addresses without a scan here (pending
    /// ones, applied late) at the end.
    fn place(
        &self,
        events: Vec<Event>,
        applied: Vec<(IpNet, Duration)>,
        backend: &'static str,
    ) -> Vec<Event> {
        let mut left: HashMap<IpNet, Duration> = applied.iter().copied().collect();
        let mut out = Vec::with_capacity(events.len() + left.len());
        for event in events {
            let scanner = self.target(&event).and_then(|t| left.remove_entry(&t));
            out.push(event);
            if let Some((ip, ttl)) = scanner {
                out.push(self.blocked_event(ip, ttl, backend));
            }
        }
        // In the order applied, not the map's.
        for (ip, _) in applied {
            if let Some(ttl) = left.remove(&ip) {
                out.push(self.blocked_event(ip, ttl, backend));
            }
        }
        out
    }

    /// The distinct scanners to block, in order: those not allowlisted,
    /// already blocked (a refresh) or within the cap's budget. The others
    /// are counted and said on stderr (over the cap, once a minute at most).
    fn choose(&mut self, scanners: Vec<IpNet>) -> Vec<IpNet> {
        let now = self.clock.now().mono;
        let mut seen = HashSet::new();
        let mut chosen = Vec::new();
        // Not blocked here: a block the kernel decided by itself is lifted.
        let mut overruled = Vec::new();
        for ip in scanners {
            if !seen.insert(ip) {
                continue;
            }
            if let Some(reason) = self.allow.check_net(ip) {
                diag::note(format_args!("not blocking {}: {reason}", show_net(&ip)));
                self.skipped.allowlist += 1;
                overruled.push(ip);
                continue;
            }
            if self.firewall.as_mut().is_some_and(|f| f.holds(ip)) {
                chosen.push(ip);
                continue;
            }
            match self.limit.take(now) {
                limit::Verdict::Granted => chosen.push(ip),
                limit::Verdict::Skipped { warn } => {
                    self.skipped.rate_limit += 1;
                    overruled.push(ip);
                    if warn {
                        diag::warn(format_args!(
                            "block limit of {} a minute reached; not blocking {} ({} skipped so far)",
                            self.limit.rate(),
                            show_net(&ip),
                            self.limit.skipped()
                        ));
                    }
                }
            }
        }
        if let Some(firewall) = self.firewall.as_mut() {
            firewall.overrule(&overruled);
        }
        chosen
    }

    /// The operator's block of `target` for `ttl` (default `--block-ttl`):
    /// checked against the allowlist, applied now (not queued: the operator
    /// hears at once if the firewall refuses), journaled and recorded as
    /// `manual`. Returns its `Blocked` event. Not counted against the cap.
    pub fn add(&mut self, target: IpNet, ttl: Option<Duration>) -> Result<Event, Refused> {
        let target = canonical(target);
        let shown = show_net(&target);
        let Some(backend) = self.backend_name() else {
            return Err(Refused(format!(
                "not blocking {shown}: blocking is off in the running agent"
            )));
        };
        self.allow.refresh();
        if let Some(reason) = self.allow.check_net(target) {
            let why = if super::backend::is_host(&target) {
                format!("it is never blocked ({reason})")
            } else {
                format!("it holds an address never to be blocked ({reason})")
            };
            return Err(Refused(format!("not blocking {shown}: {why}")));
        }
        let ttl = ttl.unwrap_or(self.ttl);
        if ttl.is_zero() {
            return Err(Refused(format!("not blocking {shown}: a TTL of zero")));
        }
        let wall = SystemTime::now();
        let firewall = self.firewall.as_mut().expect("a backend name");
        let applies = firewall.applies();
        if let (Some(journal), true) = (&self.journal, applies) {
            journal.record(&[target], wall + ttl, backend);
        }
        if let Err(e) = firewall.block_now(target, ttl) {
            if let (Some(journal), true) = (&self.journal, applies) {
                journal.forget(target);
            }
            return Err(Refused(format!(
                "cannot block {shown} via {backend}: {}",
                crate::text::chain(&e)
            )));
        }
        let record = self.records.blocked(
            target,
            wall,
            ttl,
            None,
            record::MANUAL.to_string(),
            &self.node,
            self.escalation().memory(),
        );
        if let (Some(journal), true) = (&self.journal, applies) {
            journal.note(&[(target, record)]);
        }
        self.fleet.remove(&target);
        let mut event = self.blocked_event(target, ttl, backend);
        if let EventKind::Blocked(block) = &mut event.kind {
            block.repeat = 1;
        }
        Ok(event)
    }

    /// Lifts the block of `target` (applied or pending): from the
    /// firewall, the journal and the blocks in force. Its `Unblocked`
    /// event, or `None` when it was not blocked.
    pub fn remove(&mut self, target: IpNet) -> Result<Option<Event>, Refused> {
        let target = canonical(target);
        let Some(firewall) = self.firewall.as_mut() else {
            return Ok(None);
        };
        let backend = firewall.name();
        let unblocked = firewall.unblock(target);
        if unblocked.is_ok() {
            self.fleet.remove(&target);
        }
        match unblocked {
            Ok(true) => Ok(Some(Event {
                at: self.clock.now(),
                kind: EventKind::Unblocked { target, backend },
            })),
            Ok(false) => Ok(None),
            Err(e) => Err(Refused(format!(
                "cannot unblock {} via {backend}: {}",
                show_net(&target),
                crate::text::chain(&e)
            ))),
        }
    }

    /// Lifts every block; an `Unblocked` event each.
    pub fn flush(&mut self) -> Result<Vec<Event>, Refused> {
        let Some(firewall) = self.firewall.as_mut() else {
            return Ok(Vec::new());
        };
        let backend = firewall.name();
        let lifted = firewall.flush().map_err(|e| {
            Refused(format!(
                "cannot flush via {backend}: {}",
                crate::text::chain(&e)
            ))
        })?;
        self.fleet.clear();
        let at = self.clock.now();
        Ok(lifted
            .into_iter()
            .map(|target| Event {
                at,
                kind: EventKind::Unblocked { target, backend },
            })
            .collect())
    }

    /// The blocks in force, with what the agent knows of each.
    pub fn views(&mut self) -> Vec<BlockInfo> {
        let Some(firewall) = self.firewall.as_mut() else {
            return Vec::new();
        };
        let backend = firewall.name();
        firewall
            .held()
            .into_iter()
            .map(|held| {
                let record = self.records.get(&held.target);
                BlockInfo {
                    target: show_net(&held.target),
                    backend: backend.to_string(),
                    expires_in_seconds: held.left.map(|d| d.as_secs()),
                    ttl_seconds: record.map(|r| r.ttl.as_secs()),
                    repeat: record.map_or(1, |r| r.repeat.max(1)),
                    reason: record
                        .map_or_else(|| record::ADOPTED.to_string(), |r| r.reason.clone()),
                    origin: record.map_or_else(|| self.node.to_string(), |r| r.origin.clone()),
                    packets_dropped: held.dropped,
                }
            })
            .collect()
    }

    /// Blocks decided and not applied yet (the firewall fails).
    pub fn pending(&self) -> Vec<IpNet> {
        self.firewall
            .as_ref()
            .map(Firewall::pending)
            .unwrap_or_default()
    }

    /// Applies blocks other nodes of the fleet decided, each until the
    /// instant it ends (the time left, in whole seconds rounded up), and
    /// returns their `Blocked` events (`Origin::Fleet`). Each goes through
    /// this host's allowlist and cap like its own decisions; one this host
    /// already holds at least as long is left as it is (no event: nothing
    /// is applied twice). Nothing with blocking off.
    pub fn apply_remote(&mut self, blocks: Vec<Remote>) -> Vec<Event> {
        let Some(backend_name) = self.backend_name() else {
            return Vec::new();
        };
        self.allow.refresh();
        let now = SystemTime::now();
        let mono = self.clock.now().mono;
        let mut seen = HashSet::new();
        let mut apply = Vec::new();
        let mut origins = Vec::new();
        for remote in blocks {
            let target = canonical(remote.target);
            let Ok(left) = remote.expires.duration_since(now) else {
                continue;
            };
            if left.is_zero() || !seen.insert(target) {
                continue;
            }
            let ttl = whole_seconds(left);
            if let Some(reason) = self.allow.check_net(target) {
                diag::note(format_args!(
                    "not blocking {} from the fleet ({}): {reason}",
                    show_net(&target),
                    remote.origin
                ));
                self.skipped.allowlist += 1;
                continue;
            }
            let firewall = self
                .firewall
                .as_mut()
                .expect("a backend name means a firewall");
            match firewall.remaining(target) {
                Some(held) if held + Duration::from_secs(1) >= ttl => continue,
                Some(_) => {}
                None if firewall.is_pending(target) => {}
                None => {
                    if let limit::Verdict::Skipped { warn } = self.limit.take(mono) {
                        self.skipped.rate_limit += 1;
                        if warn {
                            diag::warn(format_args!(
                                "block limit of {} a minute reached; not blocking {} from the fleet ({} skipped so far)",
                                self.limit.rate(),
                                show_net(&target),
                                self.limit.skipped()
                            ));
                        }
                        continue;
                    }
                }
            }
            apply.push((target, ttl, remote.expires));
            origins.push((target, Arc::<str>::from(remote.origin)));
        }
        if apply.is_empty() {
            return Vec::new();
        }
        if self.fleet.len() + origins.len() > super::firewall::MAX_PENDING * 4 {
            // Forget origins of blocks long gone (bounded by what a firewall
            // holds; a firewall listing prunes nothing here).
            let firewall = self.firewall.as_mut().expect("checked above");
            self.fleet
                .retain(|t, _| firewall.remaining(*t).is_some() || firewall.is_pending(*t));
        }
        let memory = self.escalation().memory();
        let mut noted = Vec::with_capacity(origins.len());
        for ((target, ttl, _), (_, origin)) in apply.iter().zip(&origins) {
            let record = self.records.blocked(
                *target,
                now,
                *ttl,
                None,
                FROM_FLEET.to_string(),
                origin,
                memory,
            );
            noted.push((*target, record));
        }
        self.fleet.extend(origins);
        let firewall = self.firewall.as_mut().expect("checked above");
        if let (Some(journal), true) = (&self.journal, firewall.applies()) {
            for (target, _, expires) in &apply {
                journal.record(&[*target], *expires, backend_name);
            }
            journal.note(&noted);
        }
        let applied = firewall.apply_each(apply.into_iter().map(|(t, ttl, _)| (t, ttl)).collect());
        self.place(Vec::new(), applied, backend_name)
    }

    /// Lifts the block of `target` because the fleet lifted it: its
    /// `Unblocked` event, or `None` when this host held no such block or
    /// blocking is off. A firewall that fails to lift it is said; the block
    /// then ends with its TTL.
    pub fn lift(&mut self, target: IpNet) -> Option<Event> {
        let target = canonical(target);
        self.fleet.remove(&target);
        match self.remove(target) {
            Ok(event) => event,
            Err(refused) => {
                diag::warn(format_args!("fleet unblock: {refused}"));
                None
            }
        }
    }

    /// Whether `target` is blocked here now (applied, not expired).
    pub fn holds(&mut self, target: IpNet) -> bool {
        let target = canonical(target);
        self.firewall.as_mut().is_some_and(|f| f.holds(target))
    }

    /// The blocks in force here that this node decided, each with its
    /// absolute expiry and its reason: what the fleet carries as this
    /// node's. At start-up, these are the blocks restored from the state
    /// file and those found in the firewall, so that a Redis that lost its
    /// data while this agent was down gets them again. Blocks another node
    /// decided (by their record) are that node's to publish; blocks without
    /// a timeout never go to the fleet (a fleet ban always ends); nothing
    /// when blocks do not reach the kernel.
    pub fn own_blocks(&mut self) -> Vec<(IpNet, SystemTime, String)> {
        if !self.applies() {
            return Vec::new();
        }
        let Some(firewall) = self.firewall.as_mut() else {
            return Vec::new();
        };
        let held = firewall.held();
        let now = SystemTime::now();
        held.into_iter()
            .filter(|held| !self.fleet.contains_key(&held.target))
            .filter_map(|held| {
                let left = held.left.filter(|left| !left.is_zero())?;
                let record = self.records.get(&held.target);
                if record.is_some_and(|r| r.origin != *self.node) {
                    return None;
                }
                let reason =
                    record.map_or_else(|| record::ADOPTED.to_string(), |r| r.reason.clone());
                Some((held.target, now + left, reason))
            })
            .collect()
    }

    /// Whether blocks reach the kernel (blocking on, not a dry run): only
    /// then are this host's decisions worth telling the fleet.
    pub fn applies(&self) -> bool {
        self.firewall.as_ref().is_some_and(Firewall::applies)
    }

    /// The periodic check: see [`Firewall::tick`]. Returns the `Blocked`
    /// events of the blocks applied now and the addresses held, (IPv4,
    /// IPv6), when they could be read.
    pub fn tick(&mut self) -> (Vec<Event>, Option<Counted>) {
        let ttl = self.ttl;
        let Some(firewall) = self.firewall.as_mut() else {
            return (Vec::new(), None);
        };
        // A new address or route reaches a kernel that decides by itself
        // within a tick.
        self.allow.refresh();
        firewall.sync_allow(&self.allow.entries());
        let name = firewall.name();
        let (applied, counted) = firewall.tick(ttl);
        self.adopt();
        self.records.prune(SystemTime::now());
        (self.place(Vec::new(), applied, name), counted)
    }

    /// Records the elements the last check adopted.
    fn adopt(&mut self) {
        let Some(firewall) = self.firewall.as_mut() else {
            return;
        };
        let adopted = firewall.take_adopted();
        if adopted.is_empty() {
            return;
        }
        let wall = SystemTime::now();
        let memory = self.escalation().memory();
        let mut noted = Vec::new();
        for (target, left) in adopted {
            let record = self.records.blocked(
                target,
                wall,
                left.unwrap_or(Duration::ZERO),
                None,
                record::ADOPTED.to_string(),
                &self.node,
                memory,
            );
            noted.push((target, record));
        }
        let n = noted.len();
        diag::warn(format_args!(
            "{n} {} in the firewall that the agent did not make; adopted",
            if n == 1 { "block was" } else { "blocks were" }
        ));
        if let Some(journal) = &self.journal {
            journal.note(&noted);
        }
    }

    /// Counts the addresses in the backend's sets, (IPv4, IPv6); zero when
    /// nothing is applied. Repairs drift on the way ([`Firewall::count`]).
    pub fn count(&mut self) -> anyhow::Result<Counted> {
        let counted = match self.firewall.as_mut() {
            Some(firewall) => firewall.count(),
            None => Ok((0, 0)),
        };
        self.adopt();
        counted
    }

    /// Removes the backend's objects (shutdown).
    pub fn shutdown(&mut self) {
        if let Some(firewall) = self.firewall.as_mut() {
            firewall.shutdown();
        }
    }

    /// The firewall, for tests that look inside.
    #[cfg(test)]
    pub(super) fn firewall_mut(&mut self) -> Option<&mut Firewall> {
        self.firewall.as_mut()
    }
}

/// A port scan or a fleet scan: an event the block stage decides on.
pub fn is_scan(event: &Event) -> bool {
    matches!(event.kind, EventKind::PortScan(_) | EventKind::FleetScan(_))
}

/// The reason of a block for a fleet scan.
fn fleet_scan_reason(scan: &crate::event::FleetScan) -> String {
    let ports: Vec<String> = scan.ports.iter().take(16).map(u16::to_string).collect();
    format!(
        "fleet scan of {} hosts on ports {}",
        scan.hosts,
        ports.join(",")
    )
}
