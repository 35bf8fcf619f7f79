//! [`Firewall`]: a [`Backend`] that keeps working when the firewall does
//! not. When a call fails (the tool missing or failing, the objects deleted
//! under the agent) detection goes on: the failure is said once, the blocks
//! are kept pending and retried by [`Firewall::tick`] until they are
//! applied or their TTL has ended, the deleted objects are re-created with
//! every block they held, and the recovery is said once.
//!
//! The agent's blocks are the truth, not the firewall's listing: every
//! check ([`Firewall::count`]) compares the two and repairs the drift. A
//! block the agent holds that the firewall lost (an element deleted by hand)
//! is applied again with the time it has left; an element the agent did
//! not make (added by hand) is adopted with the time it has left. Both are
//! counted ([`Health::drift_missing`], [`Health::drift_unknown`]). A block
//! is lifted through the agent (`tcpwatch blocks remove`, which reaches
//! [`Firewall::unblock`]), so the state file forgets it too. The blocks in
//! force are mirrored in a [`BlockSet`] that the stages before this one
//! read, and each block's dropped packets are its backend's count or, when
//! larger or absent, the packets the agent saw it stop.

use super::backend::{canonical, whole_seconds, Backend, Entry, Family};
use super::journal::Journal;
use crate::blockset::BlockSet;
use crate::clock::Clock;
use crate::{diag, duration, text};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the block stage re-reads the firewall and retries what failed.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Blocks decided while the firewall fails, kept for retrying, at most: a
/// broken firewall under a distributed scan must not grow the agent.
pub const MAX_PENDING: usize = 65_536;

/// A block the firewall holds with less time left than this is taken as
/// ended: the kernel's timeout and the agent's clock differ by the time a
/// call takes and by rounding to whole seconds.
pub const MARGIN: Duration = Duration::from_secs(2);

/// The end of a block without a timeout (one added by hand): never.
const NEVER: Duration = Duration::MAX;

/// How blocking fares, for the metrics; counters are totals since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Backend calls that failed.
    pub errors: u64,
    /// Blocks never applied: the pending list was full, or their TTL ended
    /// before the firewall worked again.
    pub dropped: u64,
    pub pending: usize,
    /// Blocks the firewall lost behind the agent's back, applied again.
    pub drift_missing: u64,
    /// Elements the agent did not make, found in its objects and adopted.
    pub drift_unknown: u64,
    /// Packets the blocks dropped (the sum of the per-block counts as they
    /// grow).
    pub dropped_packets: u64,
}

/// A block in force, as `tcpwatch blocks list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub target: IpNet,
    /// Time left; `None` for an element without a timeout.
    pub left: Option<Duration>,
    /// Packets dropped since it was applied.
    pub dropped: u64,
}

/// One block's drop count: the backend's last reading, and the figure
/// already added to [`Health::dropped_packets`].
#[derive(Debug, Default, Clone, Copy)]
struct Drops {
    kernel: Option<u64>,
    counted: u64,
}

/// Applied blocks as of a firewall listing, by family.
pub type Counted = (usize, usize);

pub struct Firewall {
    backend: Box<dyn Backend>,
    clock: Arc<dyn Clock>,
    /// Not yet applied: target -> when its TTL ends (monotonic clock).
    pending: HashMap<IpNet, Duration>,
    /// Applied, as of the last listing and the blocks since: what a repair
    /// re-applies, and what re-blocking refreshes without taking from the
    /// cap's budget. Bounded by what the firewall holds.
    active: HashMap<IpNet, Duration>,
    fault: diag::Fault,
    /// Keeping a kernel that decides by itself (xdp) in sync fails.
    kernel_fault: diag::Fault,
    health: Health,
    pub(super) max_pending: usize,
    journal: Option<Arc<dyn Journal>>,
    /// Whether the journal may drop blocks the agent no longer holds: not
    /// after a restore failed, or those blocks, never applied, would be
    /// dropped with them; never for a dry run.
    reconcile: bool,
    /// The blocks in force, for the stages before this one (not for a dry
    /// run, whose blocks stop nothing).
    blockset: Arc<BlockSet>,
    drops: HashMap<IpNet, Drops>,
    /// Elements adopted at the last check, with their time left, for the
    /// blocker to record.
    adopted: Vec<(IpNet, Option<Duration>)>,
    /// The backend's evictions at the last check.
    evicted: u64,
}

impl Firewall {
    /// Installs `backend`'s objects. A backend that cannot start (not root,
    /// tool missing) costs one warning line, never the run: `None`.
    pub fn install(
        mut backend: Box<dyn Backend>,
        ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Option<Firewall> {
        if !backend.applies() {
            diag::note("dry run: blocks are decided and printed, the firewall is not changed");
        }
        if let Err(e) = backend.install(ttl) {
            diag::warn(format_args!(
                "cannot block via {}: {}; detecting only",
                backend.name(),
                text::chain(&e)
            ));
            return None;
        }
        let reconcile = backend.applies();
        let evicted = backend.evicted();
        Some(Firewall {
            backend,
            clock,
            pending: HashMap::new(),
            active: HashMap::new(),
            fault: diag::Fault::default(),
            kernel_fault: diag::Fault::default(),
            health: Health::default(),
            max_pending: MAX_PENDING,
            journal: None,
            reconcile,
            blockset: BlockSet::new(),
            drops: HashMap::new(),
            adopted: Vec::new(),
            evicted,
        })
    }

    /// The blocks in force.
    pub fn blockset(&self) -> &Arc<BlockSet> {
        &self.blockset
    }

    /// Takes `targets` as applied until `end` (monotonic): a new block each,
    /// its drop count from zero.
    fn activate(&mut self, targets: impl IntoIterator<Item = (IpNet, Duration)>) {
        let applies = self.backend.applies();
        for (target, end) in targets {
            let target = canonical(target);
            self.active.insert(target, end);
            self.drops.insert(target, Drops::default());
            if applies {
                self.blockset.insert(target);
            }
        }
    }

    /// Forgets `target`'s block (ended, lifted or lost).
    fn deactivate(&mut self, target: IpNet) {
        self.active.remove(&target);
        self.drops.remove(&target);
        self.blockset.remove(target);
    }

    /// Forgets the blocks ended by `now`.
    fn expire(&mut self, now: Duration) {
        let ended: Vec<IpNet> = self
            .active
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(t, _)| *t)
            .collect();
        for target in ended {
            self.deactivate(target);
        }
    }

    /// Records what the firewall holds in `journal` at each listing.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// Whether blocks reach the kernel (not a dry run).
    pub fn applies(&self) -> bool {
        self.backend.applies()
    }

    pub fn health(&self) -> Health {
        Health {
            pending: self.pending.len(),
            ..self.health
        }
    }

    /// The blocks in force, each with its time left and the packets it
    /// dropped.
    pub fn held(&mut self) -> Vec<Held> {
        let now = self.clock.now().mono;
        self.expire(now);
        let mut held: Vec<Held> = self
            .active
            .iter()
            .map(|(target, end)| Held {
                target: *target,
                left: (*end != NEVER).then(|| end.saturating_sub(now)),
                dropped: self.dropped(*target),
            })
            .collect();
        held.sort_by_key(|h| h.target);
        held
    }

    /// Packets `target`'s block dropped: its backend's count, or the
    /// packets the agent saw it stop when more (a packet source sees them
    /// before the firewall drops them) or when the backend counts none.
    pub fn dropped(&self, target: IpNet) -> u64 {
        let kernel = self.drops.get(&target).and_then(|d| d.kernel).unwrap_or(0);
        kernel.max(self.blockset.seen(target))
    }

    /// The blocks not applied yet.
    pub fn pending(&self) -> Vec<IpNet> {
        let mut pending: Vec<IpNet> = self.pending.keys().copied().collect();
        pending.sort();
        pending
    }

    /// Takes the elements adopted at the last check.
    pub fn take_adopted(&mut self) -> Vec<(IpNet, Option<Duration>)> {
        std::mem::take(&mut self.adopted)
    }

    pub fn failing(&self) -> bool {
        self.fault.failing()
    }

    /// Whether `target` is blocked now (applied and not expired).
    pub fn holds(&mut self, target: IpNet) -> bool {
        let now = self.clock.now().mono;
        self.expire(now);
        self.active.contains_key(&target)
    }

    /// Whether `target` waits to be applied.
    pub fn is_pending(&self, target: IpNet) -> bool {
        self.pending.contains_key(&target)
    }

    /// Applies one block now, never queued: the operator's block, whose
    /// caller hears the error when the firewall refuses it.
    pub fn block_now(&mut self, target: IpNet, ttl: Duration) -> anyhow::Result<()> {
        let target = canonical(target);
        match self.backend.block(&[target], ttl) {
            Ok(()) => {
                self.pending.remove(&target);
                let end = self.clock.now().mono + ttl;
                self.activate([(target, end)]);
                Ok(())
            }
            Err(e) => {
                self.health.errors += 1;
                Err(e)
            }
        }
    }

    /// Lifts `target`'s block (applied or pending) in the firewall and
    /// forgets it; `Ok(false)` when there was none. On a firewall error the
    /// block is kept, so nothing claims it lifted while it is not.
    pub fn unblock(&mut self, target: IpNet) -> anyhow::Result<bool> {
        let target = canonical(target);
        let now = self.clock.now().mono;
        self.expire(now);
        let held = self.active.contains_key(&target) || self.pending.contains_key(&target);
        self.backend.unblock(target)?;
        self.pending.remove(&target);
        self.deactivate(target);
        if let Some(journal) = self.journal.as_ref().filter(|_| self.backend.applies()) {
            journal.forget(target);
        }
        Ok(held)
    }

    /// Lifts every block, keeping the objects; returns those it lifted.
    pub fn flush(&mut self) -> anyhow::Result<Vec<IpNet>> {
        let now = self.clock.now().mono;
        self.expire(now);
        self.backend.flush()?;
        let mut lifted: Vec<IpNet> = self
            .active
            .keys()
            .chain(self.pending.keys())
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        lifted.sort();
        self.pending.clear();
        for target in &lifted {
            self.deactivate(*target);
        }
        if let Some(journal) = self.journal.as_ref().filter(|_| self.backend.applies()) {
            journal.keep_only(&HashSet::new());
        }
        Ok(lifted)
    }

    /// Re-applies blocks with the time each has left, in one backend call.
    pub fn restore(&mut self, entries: &[(IpNet, Duration)]) -> anyhow::Result<()> {
        if let Err(e) = self.backend.restore(entries) {
            self.reconcile = false;
            return Err(e);
        }
        let now = self.clock.now().mono;
        self.activate(
            entries
                .iter()
                .map(|(target, left)| (canonical(*target), now + *left)),
        );
        Ok(())
    }

    /// [`Firewall::apply`] for blocks of different TTLs: one call per TTL,
    /// in the order first seen; returns what was applied, with its TTL.
    pub fn apply_each(&mut self, chosen: Vec<(IpNet, Duration)>) -> Vec<(IpNet, Duration)> {
        let mut groups: Vec<(Duration, Vec<IpNet>)> = Vec::new();
        for (target, ttl) in chosen {
            match groups.iter_mut().find(|(t, _)| *t == ttl) {
                Some((_, targets)) => targets.push(target),
                None => groups.push((ttl, vec![target])),
            }
        }
        let mut applied = Vec::new();
        for (ttl, targets) in groups {
            applied.extend(self.apply(targets, ttl));
        }
        applied
    }

    /// Applies new blocks for `ttl`, or queues them behind the pending ones
    /// while the firewall fails; returns what was applied, with its TTL.
    pub fn apply(&mut self, chosen: Vec<IpNet>, ttl: Duration) -> Vec<(IpNet, Duration)> {
        let end = self.clock.now().mono + ttl;
        if self.fault.failing() || !self.pending.is_empty() {
            for ip in chosen {
                self.queue(ip, end);
            }
            return self.retry();
        }
        match self.backend.block(&chosen, ttl) {
            Ok(()) => {
                self.activate(chosen.iter().map(|ip| (*ip, end)));
                chosen.into_iter().map(|ip| (ip, ttl)).collect()
            }
            Err(e) => {
                self.failed(&e);
                for ip in chosen {
                    self.queue(ip, end);
                }
                Vec::new()
            }
        }
    }

    fn queue(&mut self, ip: IpNet, end: Duration) {
        if self.pending.len() >= self.max_pending && !self.pending.contains_key(&ip) {
            self.health.dropped += 1;
            return;
        }
        self.pending.insert(ip, end);
    }

    /// Drops the pending blocks whose TTL has ended, counting them.
    fn expire_pending(&mut self, now: Duration) {
        let before = self.pending.len();
        self.pending.retain(|_, end| *end > now);
        self.health.dropped += (before - self.pending.len()) as u64;
    }

    /// Applies the pending blocks that have time left, each with the time it
    /// has left (whole seconds, rounded up), in one backend call; returns
    /// what was applied.
    fn retry(&mut self) -> Vec<(IpNet, Duration)> {
        let now = self.clock.now().mono;
        self.expire_pending(now);
        if self.pending.is_empty() {
            return Vec::new();
        }
        let entries = self.pending_entries(now);
        match self.backend.restore(&entries) {
            Ok(()) => {
                self.recovered();
                let applied: Vec<(IpNet, Duration)> = self.pending.drain().collect();
                self.activate(applied);
                entries
            }
            Err(e) => {
                self.failed(&e);
                Vec::new()
            }
        }
    }

    fn pending_entries(&self, now: Duration) -> Vec<(IpNet, Duration)> {
        self.pending
            .iter()
            .map(|(ip, end)| (*ip, whole_seconds(end.saturating_sub(now))))
            .collect()
    }

    /// Says the first failure, counts every one.
    fn failed(&mut self, e: &anyhow::Error) {
        self.health.errors += 1;
        let name = self.backend.name();
        self.fault.fail(|| {
            format!(
                "blocking via {name} fails: {}; detection goes on, blocks are kept and retried every {}",
                text::chain(e),
                duration::format(RETRY_EVERY)
            )
        });
    }

    fn recovered(&mut self) {
        let name = self.backend.name();
        self.fault
            .recover(|| format!("blocking via {name} works again"));
    }

    /// The periodic check (every [`RETRY_EVERY`]): re-reads the firewall,
    /// re-creates its objects if they were deleted, retries the pending
    /// blocks. Returns the blocks applied now and the addresses held, when
    /// they could be read.
    pub fn tick(&mut self, ttl: Duration) -> (Vec<(IpNet, Duration)>, Option<Counted>) {
        let applied = match self.count() {
            Ok(counted) => {
                let applied = self.retry();
                if self.pending.is_empty() {
                    // Read and nothing left to apply (the pending blocks
                    // expired): the firewall works.
                    self.recovered();
                }
                let counted = if applied.is_empty() {
                    Some(counted)
                } else {
                    self.count().ok()
                };
                return (applied, counted);
            }
            Err(e) => self.repair(e, ttl),
        };
        (applied, self.count().ok())
    }

    /// The firewall could not be read: re-creates its objects with every
    /// active and pending block, in one call.
    fn repair(&mut self, unreadable: anyhow::Error, ttl: Duration) -> Vec<(IpNet, Duration)> {
        let now = self.clock.now().mono;
        self.expire(now);
        self.expire_pending(now);
        let mut entries = self.pending_entries(now);
        entries.extend(
            self.active
                .iter()
                .filter(|(ip, end)| !self.pending.contains_key(ip) && **end != NEVER)
                .map(|(ip, end)| (*ip, whole_seconds(end.saturating_sub(now)))),
        );
        match self.backend.repair(ttl, &entries) {
            Ok(true) => {
                diag::warn(format_args!(
                    "the {} objects were gone (deleted by someone else?); re-created them with {} blocks",
                    self.backend.name(),
                    entries.len()
                ));
                self.recovered();
                let applied: Vec<_> = entries
                    .into_iter()
                    .filter(|(ip, _)| self.pending.contains_key(ip))
                    .collect();
                let pending: Vec<(IpNet, Duration)> = self.pending.drain().collect();
                self.activate(pending);
                applied
            }
            Ok(false) => {
                self.failed(&unreadable);
                Vec::new()
            }
            Err(e) => {
                self.failed(&e);
                Vec::new()
            }
        }
    }

    /// The check: lists the firewall, repairs the drift between it and the
    /// agent's blocks (see the module docs), updates the drop counts, and
    /// keeps the journal to the agent's blocks. Returns the blocks held,
    /// (IPv4, IPv6). A block the firewall lost is applied again, unless the
    /// backend evicted entries since the last check (a full XDP map pushes
    /// out its least recently used entries): then the lost ones are taken
    /// as evicted. A listing without timeouts keeps the known expiry. A dry
    /// run counts nothing: it holds no address.
    pub fn count(&mut self) -> anyhow::Result<Counted> {
        let entries = self.backend.list()?;
        let now = self.clock.now().mono;
        self.expire(now);
        let listed: HashMap<IpNet, &Entry> =
            entries.iter().map(|e| (canonical(e.target), e)).collect();
        if !self.backend.applies() {
            return Ok((0, 0));
        }
        let evicted = self.backend.evicted();
        let evicting = evicted != self.evicted;
        self.evicted = evicted;
        // Held by the agent, gone from the firewall.
        let missing: Vec<(IpNet, Duration)> = self
            .active
            .iter()
            .filter(|(target, _)| {
                !listed.contains_key(target) && !self.pending.contains_key(target)
            })
            .map(|(target, end)| (*target, *end))
            .collect();
        let mut lost = Vec::new();
        let mut reapply = Vec::new();
        for (target, end) in missing {
            if end == NEVER || evicting || end <= now + MARGIN {
                lost.push(target);
            } else {
                reapply.push((target, whole_seconds(end - now)));
            }
        }
        for target in lost {
            self.deactivate(target);
        }
        if !reapply.is_empty() {
            match self.backend.restore(&reapply) {
                Ok(()) => {
                    self.health.drift_missing += reapply.len() as u64;
                    let n = reapply.len();
                    diag::warn(format_args!(
                        "{n} {} gone from {} (deleted behind the agent's back?); applied again",
                        if n == 1 { "block was" } else { "blocks were" },
                        self.backend.name()
                    ));
                    for (target, _) in &reapply {
                        self.drops.insert(*target, Drops::default());
                    }
                }
                Err(e) => self.failed(&e),
            }
        }
        // In the firewall, unknown to the agent.
        let unknown: Vec<(IpNet, Option<Duration>)> = listed
            .iter()
            .filter(|(target, _)| {
                !self.active.contains_key(target) && !self.pending.contains_key(target)
            })
            .filter(|(_, e)| e.remaining.is_none_or(|left| left > MARGIN))
            .map(|(target, e)| (*target, e.remaining))
            .collect();
        if !unknown.is_empty() {
            self.health.drift_unknown += unknown.len() as u64;
            for (target, left) in &unknown {
                let end = left.map_or(NEVER, |left| now + left);
                self.activate([(*target, end)]);
            }
            if let Some(journal) = &self.journal {
                let wall = SystemTime::now();
                for (target, left) in &unknown {
                    if let Some(left) = left {
                        journal.record(&[*target], wall + *left, self.backend.name());
                    }
                }
            }
            self.adopted.extend(unknown);
        }
        // A listing without timeouts keeps the known expiry; one with them
        // corrects it.
        for (target, entry) in &listed {
            if let (Some(left), Some(end)) = (entry.remaining, self.active.get_mut(target)) {
                *end = now + left;
            }
        }
        self.count_drops(&listed);
        if let (Some(journal), true) = (&self.journal, self.reconcile) {
            // The agent is the truth: a block lifted through it is gone from
            // the file, a block the firewall lost is still there. Pending
            // blocks are not applied yet, and stay.
            let held: HashSet<IpNet> = self
                .active
                .keys()
                .chain(self.pending.keys())
                .copied()
                .collect();
            journal.keep_only(&held);
        }
        let v4 = self
            .active
            .keys()
            .filter(|t| Family::of_net(t) == Family::V4)
            .count();
        Ok((v4, self.active.len() - v4))
    }

    /// Adds what each block dropped since the last check to the total. A
    /// figure lower than the last one is a block applied anew (its count
    /// started again): all of it is new.
    fn count_drops(&mut self, listed: &HashMap<IpNet, &Entry>) {
        let targets: Vec<IpNet> = self.active.keys().copied().collect();
        for target in targets {
            let kernel = listed.get(&target).and_then(|e| e.packets);
            let drops = self.drops.entry(target).or_default();
            if kernel.is_some() {
                drops.kernel = kernel;
            }
            let figure = drops.kernel.unwrap_or(0).max(self.blockset.seen(target));
            let new = if figure >= drops.counted {
                figure - drops.counted
            } else {
                figure
            };
            drops.counted = figure;
            self.health.dropped_packets += new;
        }
    }

    /// Lifts the blocks the kernel decided by itself for `targets`, which
    /// the agent does not block (see [`Backend::overrule`]).
    pub fn overrule(&mut self, targets: &[IpNet]) {
        if !targets.is_empty() {
            let done = self.backend.overrule(targets);
            self.kernel_sync(done);
        }
    }

    /// Tells a kernel that decides by itself what is never blocked.
    pub fn sync_allow(&mut self, nets: &[IpNet]) {
        let done = self.backend.sync_allow(nets);
        self.kernel_sync(done);
    }

    /// Tells a kernel that decides by itself the TTL and cap.
    pub fn retune(&mut self, ttl: Duration, cap: Option<u32>) {
        let done = self.backend.retune(ttl, cap);
        self.kernel_sync(done);
    }

    /// Tells a kernel that decides by itself the detector's rule.
    pub fn rescan(&mut self, ports: usize, window: Duration, ipv6_prefix: u8) {
        let done = self.backend.rescan(ports, window, ipv6_prefix);
        self.kernel_sync(done);
    }

    fn kernel_sync(&mut self, done: anyhow::Result<()>) {
        let name = self.backend.name();
        match done {
            Ok(()) => {
                self.kernel_fault
                    .recover(|| format!("the {name} scan decision follows the agent again"));
            }
            Err(e) => {
                self.kernel_fault.fail(|| {
                    format!(
                        "cannot keep the {name} scan decision to the agent's: {}",
                        text::chain(&e)
                    )
                });
            }
        }
    }

    /// Removes the backend's objects (shutdown).
    pub fn shutdown(&mut self) {
        if let Err(e) = self.backend.remove() {
            diag::warn(format_args!(
                "cannot remove the {} objects: {}",
                self.backend.name(),
                text::chain(&e)
            ));
        }
    }
}
