//! The block stage: between detect and the sinks, it blocks the remote of
//! every port scan that is not on the allowlist and adds a `Blocked` event
//! right after the scan's.
//!
//! Firewalls sit behind [`Backend`], a narrow interface whose two
//! implementations ([`nft`], [`iptables`]) turn requests into batched,
//! idempotent scripts for the system tools; the stage itself is tested with
//! a fake backend.

pub mod admin;
pub mod allow;
pub mod exec;
pub mod iptables;
pub mod libnft;
pub mod limit;
pub mod nft;
pub mod routes;
pub mod xdp;

use crate::clock::Clock;
use crate::config::BlockKind;
use crate::event::{Block, Event, EventKind};
use crate::state::{Store, StoredBlock};
use allow::Allowlist;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A blocked address as the firewall holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    /// Time left; `None` for an entry without a timeout (added by hand).
    pub remaining: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family an address is blocked in: IPv4-mapped IPv6 counts as IPv4
    /// (callers canonicalize first; this is the last guard).
    pub fn of(ip: IpAddr) -> Family {
        match ip.to_canonical() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A host firewall that can hold a set of blocked addresses with timeouts.
/// Every call is one transaction (or as close as the tool allows) and is
/// idempotent.
pub trait Backend: Send {
    /// The name printed in `Blocked ... via NAME` and in metric labels.
    fn name(&self) -> &'static str;
    /// Creates the backend's objects, replacing any a crashed run left.
    fn install(&mut self, ttl: Duration) -> anyhow::Result<()>;
    /// Blocks every address for `ttl`; re-blocking resets the timeout.
    fn block(&mut self, ips: &[IpAddr], ttl: Duration) -> anyhow::Result<()>;
    /// Lifts a block; succeeds if there was none.
    fn unblock(&mut self, ip: IpAddr) -> anyhow::Result<()>;
    fn list(&mut self) -> anyhow::Result<Vec<Entry>>;
    fn flush(&mut self) -> anyhow::Result<()>;
    /// Removes everything `install` created; succeeds if nothing is there.
    fn remove(&mut self) -> anyhow::Result<()>;
    /// Whether this backend's objects exist on the host.
    fn present(&mut self) -> bool;
    /// Re-applies blocks, each with its own time left (restart from the
    /// state file). By default one `block` call per distinct whole second;
    /// backends with scripts do it in one call.
    fn restore(&mut self, entries: &[(IpAddr, Duration)]) -> anyhow::Result<()> {
        for (ttl, ips) in by_whole_seconds(entries) {
            self.block(&ips, ttl)?;
        }
        Ok(())
    }
    /// Re-creates the objects after they could not be read (deleted under
    /// the agent: `nft flush ruleset`, a firewall service restart) with
    /// `entries` in them. `Ok(false)`: this backend cannot lose its objects
    /// that way (xdp keeps its maps in the agent), so there is nothing to do.
    fn repair(&mut self, _ttl: Duration, _entries: &[(IpAddr, Duration)]) -> anyhow::Result<bool> {
        Ok(false)
    }
}

/// Groups blocks by their time left rounded up to whole seconds (at least
/// one), so a restored block never ends before the time it was given.
pub fn by_whole_seconds(entries: &[(IpAddr, Duration)]) -> Vec<(Duration, Vec<IpAddr>)> {
    let mut groups: std::collections::BTreeMap<u64, Vec<IpAddr>> = Default::default();
    for (ip, left) in entries {
        groups
            .entry(whole_seconds(*left).as_secs())
            .or_default()
            .push(*ip);
    }
    groups
        .into_iter()
        .map(|(secs, ips)| (Duration::from_secs(secs), ips))
        .collect()
}

/// The backend of a `--block` value, if this build has one.
pub fn backend(kind: BlockKind) -> Option<Box<dyn Backend>> {
    match kind {
        BlockKind::Nftables => Some(Box::new(nft::Nftables)),
        BlockKind::Iptables => Some(Box::new(iptables::Iptables)),
        BlockKind::Xdp => Some(Box::new(xdp::XdpBlock::new(
            Vec::new(),
            xdp::DEFAULT_MAP_SIZE,
        ))),
        BlockKind::None => None,
    }
}

pub fn kind_name(kind: BlockKind) -> &'static str {
    match kind {
        BlockKind::None => "none",
        BlockKind::Nftables => "nftables",
        BlockKind::Iptables => "iptables",
        BlockKind::Xdp => "xdp",
    }
}

/// What the stage does with a decision to block.
pub enum Mode {
    /// Apply it with this backend.
    Apply(Box<dyn Backend>),
    /// Report it as if applied (`--dry-run`), under the backend's name.
    DryRun(&'static str),
    /// Report scans only (`--block none`, or a backend that could not start).
    Off,
}

impl Mode {
    /// Sets up the mode `--block`/`--dry-run` ask for. A backend that cannot
    /// start (not root, tool missing) costs one warning line, never the run.
    pub fn start(kind: BlockKind, ttl: Duration, dry_run: bool) -> Mode {
        if kind == BlockKind::None {
            return Mode::Off;
        }
        let Some(backend) = backend(kind) else {
            eprintln!(
                "tcpwatch: warning: --block {} is not available in this build; detecting only",
                kind_name(kind)
            );
            return Mode::Off;
        };
        Mode::start_with(backend, ttl, dry_run)
    }

    /// [`Mode::start`] with a backend built by the caller (the `xdp` one
    /// needs the interfaces, the map size, maybe the source's program).
    pub fn start_with(mut backend: Box<dyn Backend>, ttl: Duration, dry_run: bool) -> Mode {
        if dry_run {
            eprintln!(
                "tcpwatch: dry run: blocks are decided and printed, the firewall is not changed"
            );
            return Mode::DryRun(backend.name());
        }
        match backend.install(ttl) {
            Ok(()) => Mode::Apply(backend),
            Err(e) => {
                let cause = format!("{e:#}").replace('\n', " ");
                eprintln!(
                    "tcpwatch: warning: cannot block via {}: {cause}; detecting only",
                    backend.name()
                );
                Mode::Off
            }
        }
    }

    pub fn backend_name(&self) -> Option<&'static str> {
        match self {
            Mode::Apply(b) => Some(b.name()),
            Mode::DryRun(name) => Some(name),
            Mode::Off => None,
        }
    }
}

/// Blocks decided while the firewall fails, kept for retrying, at most: a
/// broken firewall under a distributed scan must not grow the agent.
pub const MAX_PENDING: usize = 65_536;

/// Decides and applies blocks for batches of events.
///
/// When the firewall fails (its tool missing or failing, its objects
/// deleted under the agent) detection goes on: the failure is said once,
/// the blocks are kept pending and retried by [`Blocker::tick`] until they
/// are applied (their `Blocked` line is printed then) or their TTL has
/// ended, and the recovery is said once.
pub struct Blocker {
    mode: Mode,
    ttl: Duration,
    allow: Allowlist,
    clock: Arc<dyn Clock>,
    store: Option<Arc<Store>>,
    /// Whether the store may drop blocks the firewall no longer holds
    /// (lifted by hand): not after a restore failed, or those blocks, never
    /// applied, would be dropped with them.
    reconcile: bool,
    limit: limit::Limit,
    skipped: Skipped,
    /// Not yet applied: address -> when its TTL ends (monotonic clock).
    pending: HashMap<IpAddr, Duration>,
    /// Applied, as of the last listing and the blocks since: what a repair
    /// re-applies, and what re-blocking refreshes without taking from the
    /// cap's budget. Bounded by what the firewall holds.
    active: HashMap<IpAddr, Duration>,
    failing: bool,
    health: Health,
    max_pending: usize,
}

/// How blocking fares, for the metrics; counters are totals since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Backend calls that failed.
    pub errors: u64,
    /// Blocks never applied: the pending list was full, or their TTL ended
    /// before the firewall worked again.
    pub dropped: u64,
    pub pending: usize,
}

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

impl Blocker {
    pub fn new(mode: Mode, ttl: Duration, allow: Allowlist, clock: Arc<dyn Clock>) -> Self {
        Blocker {
            mode,
            ttl,
            allow,
            clock,
            store: None,
            reconcile: true,
            limit: limit::Limit::new(limit::Rate(None)),
            skipped: Skipped::default(),
            pending: HashMap::new(),
            active: HashMap::new(),
            failing: false,
            health: Health::default(),
            max_pending: MAX_PENDING,
        }
    }

    /// Caps new blocks (`--max-blocks-per-minute`); none by default.
    pub fn with_limit(mut self, rate: limit::Rate) -> Self {
        self.limit.set_rate(rate);
        self
    }

    /// The scanners skipped since the last call.
    pub fn take_skipped(&mut self) -> Skipped {
        std::mem::take(&mut self.skipped)
    }

    /// Records every block in `store` before it is applied, so a crash
    /// right after applying it cannot lose it.
    pub fn with_store(mut self, store: Arc<Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// New TTL, `--allow` entries and cap (SIGHUP); active blocks are kept.
    pub fn reconfigure(&mut self, ttl: Duration, allow: Vec<IpNet>, rate: limit::Rate) {
        self.ttl = ttl;
        self.allow.set_nets(allow);
        self.limit.set_rate(rate);
    }

    pub fn health(&self) -> Health {
        Health {
            pending: self.pending.len(),
            ..self.health
        }
    }

    /// Re-applies the unexpired stored blocks with the time they have left,
    /// in one backend call; allowlisted ones are dropped from the store. No
    /// event is made: these blocks were reported when they were decided.
    pub fn restore(&mut self, blocks: Vec<StoredBlock>) -> anyhow::Result<Restored> {
        let now = SystemTime::now();
        // Expiries are wall time (they must survive a reboot): a clock set
        // back while the agent was down would lengthen them, so no block
        // comes back longer than `--block-ttl`.
        let live: Vec<(IpAddr, Duration)> = blocks
            .iter()
            .filter_map(|b| Some((b.ip, b.expires.duration_since(now).ok()?)))
            .filter(|(_, left)| !left.is_zero())
            .map(|(ip, left)| (ip, left.min(self.ttl)))
            .collect();
        let Mode::Apply(backend) = &mut self.mode else {
            return Ok(Restored {
                applied: 0,
                kept: live.len(),
            });
        };
        self.allow.refresh();
        let (allowed, apply): (Vec<_>, Vec<_>) = live
            .into_iter()
            .partition(|(ip, _)| self.allow.check(*ip).is_some());
        if let Some(store) = &self.store {
            let allowed: HashSet<IpAddr> = allowed.iter().map(|(ip, _)| *ip).collect();
            store.retain_blocks(now, |ip| !allowed.contains(&ip))?;
        }
        if !apply.is_empty() {
            if let Err(e) = backend.restore(&apply) {
                self.reconcile = false;
                return Err(e);
            }
            let now = self.clock.now().mono;
            self.active.extend(
                apply
                    .iter()
                    .map(|(ip, left)| (ip.to_canonical(), now + *left)),
            );
        }
        Ok(Restored {
            applied: apply.len(),
            kept: 0,
        })
    }

    /// Blocks the scanners of one batch of events in one backend call and
    /// returns the events with a `Blocked` right after each scan whose
    /// remote was blocked. Every input event is returned, in order. While
    /// the firewall fails, new blocks join the pending ones and all are
    /// retried in that one call.
    pub fn handle(&mut self, events: Vec<Event>) -> Vec<Event> {
        let Some(backend_name) = self.mode.backend_name() else {
            return events;
        };
        let scanners: Vec<IpAddr> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::PortScan(scan) => Some(scan.remote.to_canonical()),
                _ => None,
            })
            .collect();
        if scanners.is_empty() {
            return events;
        }
        self.allow.refresh();
        let chosen = self.choose(scanners);
        if chosen.is_empty() {
            return events;
        }
        let ttl = self.ttl;
        let applied = if matches!(self.mode, Mode::Apply(_)) {
            if let Some(store) = &self.store {
                let now = SystemTime::now();
                store.report(store.put_blocks(&chosen, now + ttl, backend_name, now));
            }
            self.apply(chosen)
        } else {
            // Dry run: remembered as if applied, so the cap counts the same.
            let end = self.clock.now().mono + ttl;
            self.active.extend(chosen.iter().map(|ip| (*ip, end)));
            chosen.into_iter().map(|ip| (ip, ttl)).collect()
        };
        self.place(events, applied, backend_name)
    }

    /// Applies new blocks for the full TTL, or queues them behind the
    /// pending ones while the firewall fails; returns what was applied.
    fn apply(&mut self, chosen: Vec<IpAddr>) -> Vec<(IpAddr, Duration)> {
        let end = self.clock.now().mono + self.ttl;
        if self.failing || !self.pending.is_empty() {
            for ip in chosen {
                self.queue(ip, end);
            }
            return self.retry();
        }
        let Mode::Apply(backend) = &mut self.mode else {
            return Vec::new();
        };
        match backend.block(&chosen, self.ttl) {
            Ok(()) => {
                self.active.extend(chosen.iter().map(|ip| (*ip, end)));
                chosen.into_iter().map(|ip| (ip, self.ttl)).collect()
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

    fn queue(&mut self, ip: IpAddr, end: Duration) {
        if self.pending.len() >= self.max_pending && !self.pending.contains_key(&ip) {
            self.health.dropped += 1;
            return;
        }
        self.pending.insert(ip, end);
    }

    /// Applies the pending blocks that have time left, each with the time it
    /// has left (whole seconds, rounded up), in one backend call; returns
    /// what was applied.
    fn retry(&mut self) -> Vec<(IpAddr, Duration)> {
        let now = self.clock.now().mono;
        let before = self.pending.len();
        self.pending.retain(|_, end| *end > now);
        self.health.dropped += (before - self.pending.len()) as u64;
        if self.pending.is_empty() {
            return Vec::new();
        }
        let entries = self.pending_entries(now);
        let Mode::Apply(backend) = &mut self.mode else {
            return Vec::new();
        };
        match backend.restore(&entries) {
            Ok(()) => {
                self.recovered();
                self.active.extend(self.pending.drain());
                entries
            }
            Err(e) => {
                self.failed(&e);
                Vec::new()
            }
        }
    }

    fn pending_entries(&self, now: Duration) -> Vec<(IpAddr, Duration)> {
        self.pending
            .iter()
            .map(|(ip, end)| (*ip, whole_seconds(end.saturating_sub(now))))
            .collect()
    }

    /// Says the first failure, counts every one.
    fn failed(&mut self, e: &anyhow::Error) {
        self.health.errors += 1;
        if self.failing {
            return;
        }
        self.failing = true;
        let cause = format!("{e:#}").replace('\n', " ");
        eprintln!(
            "tcpwatch: warning: blocking via {} fails: {cause}; detection goes on, blocks are kept and retried every {}",
            self.mode.backend_name().unwrap_or("?"),
            crate::duration::format(RETRY_EVERY)
        );
    }

    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            eprintln!(
                "tcpwatch: blocking via {} works again",
                self.mode.backend_name().unwrap_or("?")
            );
        }
    }

    /// Puts a `Blocked` event right after the scan of each applied address
    /// in `events`, and those of addresses without a scan here (pending
    /// ones, applied late) at the end.
    fn place(
        &self,
        events: Vec<Event>,
        applied: Vec<(IpAddr, Duration)>,
        backend: &'static str,
    ) -> Vec<Event> {
        let at = self.clock.now();
        let blocked = |ip, ttl| Event {
            at,
            kind: EventKind::Blocked(Block { ip, ttl, backend }),
        };
        let mut left: HashMap<IpAddr, Duration> = applied.iter().copied().collect();
        let mut out = Vec::with_capacity(events.len() + left.len());
        for event in events {
            let scanner = match &event.kind {
                EventKind::PortScan(scan) => left.remove_entry(&scan.remote.to_canonical()),
                _ => None,
            };
            out.push(event);
            if let Some((ip, ttl)) = scanner {
                out.push(blocked(ip, ttl));
            }
        }
        // In the order applied, not the map's.
        for (ip, _) in applied {
            if let Some(ttl) = left.remove(&ip) {
                out.push(blocked(ip, ttl));
            }
        }
        out
    }

    /// The distinct scanners to block, in order: those not allowlisted,
    /// already blocked (a refresh) or within the cap's budget. The others
    /// are counted and said on stderr (over the cap, once a minute at most).
    fn choose(&mut self, scanners: Vec<IpAddr>) -> Vec<IpAddr> {
        let now = self.clock.now().mono;
        self.active.retain(|_, expires| *expires > now);
        let mut seen = HashSet::new();
        let mut chosen = Vec::new();
        for ip in scanners {
            if !seen.insert(ip) {
                continue;
            }
            if let Some(reason) = self.allow.check(ip) {
                eprintln!("tcpwatch: not blocking {ip}: {reason}");
                self.skipped.allowlist += 1;
                continue;
            }
            if self.active.contains_key(&ip) {
                chosen.push(ip);
                continue;
            }
            match self.limit.take(now) {
                limit::Verdict::Granted => chosen.push(ip),
                limit::Verdict::Skipped { warn } => {
                    self.skipped.rate_limit += 1;
                    if warn {
                        eprintln!(
                            "tcpwatch: warning: block limit of {} a minute reached; not blocking {ip} ({} skipped so far)",
                            self.limit.rate(),
                            self.limit.skipped()
                        );
                    }
                }
            }
        }
        chosen
    }

    /// The periodic check (every [`RETRY_EVERY`]): re-reads the firewall,
    /// re-creates its objects if they were deleted, retries the pending
    /// blocks. Returns the `Blocked` events of the blocks applied now and
    /// the addresses held, (IPv4, IPv6), when they could be read.
    pub fn tick(&mut self) -> (Vec<Event>, Option<(usize, usize)>) {
        let Some(name) = self.mode.backend_name() else {
            return (Vec::new(), None);
        };
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
                return (self.place(Vec::new(), applied, name), counted);
            }
            Err(e) => self.repair(e),
        };
        let counted = self.count().ok();
        (self.place(Vec::new(), applied, name), counted)
    }

    /// The firewall could not be read: re-creates its objects with every
    /// active and pending block, in one call.
    fn repair(&mut self, unreadable: anyhow::Error) -> Vec<(IpAddr, Duration)> {
        let now = self.clock.now().mono;
        self.active.retain(|_, end| *end > now);
        let before = self.pending.len();
        self.pending.retain(|_, end| *end > now);
        self.health.dropped += (before - self.pending.len()) as u64;
        let mut entries = self.pending_entries(now);
        entries.extend(
            self.active
                .iter()
                .filter(|(ip, _)| !self.pending.contains_key(ip))
                .map(|(ip, end)| (*ip, whole_seconds(end.saturating_sub(now)))),
        );
        let Mode::Apply(backend) = &mut self.mode else {
            return Vec::new();
        };
        match backend.repair(self.ttl, &entries) {
            Ok(true) => {
                eprintln!(
                    "tcpwatch: warning: the {} objects were gone (deleted by someone else?); re-created them with {} blocks",
                    backend.name(),
                    entries.len()
                );
                self.recovered();
                let applied: Vec<_> = entries
                    .into_iter()
                    .filter(|(ip, _)| self.pending.contains_key(ip))
                    .collect();
                self.active.extend(self.pending.drain());
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

    /// Counts the addresses in the backend's sets, (IPv4, IPv6); zero when
    /// nothing is applied.
    pub fn count(&mut self) -> anyhow::Result<(usize, usize)> {
        let Mode::Apply(backend) = &mut self.mode else {
            return Ok((0, 0));
        };
        let entries = backend.list()?;
        // The firewall is the truth: a block lifted by hand or pushed out of
        // a full XDP map is no longer held, and blocking that address again
        // is a new block. A listing without timeouts keeps the known expiry.
        let now = self.clock.now().mono;
        let known = std::mem::take(&mut self.active);
        self.active = entries
            .iter()
            .filter_map(|e| {
                let ip = e.ip.to_canonical();
                let end = match e.remaining {
                    Some(left) => now + left,
                    None => *known.get(&ip)?,
                };
                Some((ip, end))
            })
            .collect();
        if let (Some(store), true) = (&self.store, self.reconcile) {
            // The firewall is the truth while running: a block lifted with
            // `tcpwatch blocks remove` must not come back at the next start.
            // Pending blocks are not in it yet, and stay.
            let held: HashSet<IpAddr> = entries
                .iter()
                .map(|e| e.ip.to_canonical())
                .chain(self.pending.keys().copied())
                .collect();
            let kept = store.retain_blocks(SystemTime::now(), |ip| held.contains(&ip));
            store.report(kept.map(|_| ()));
        }
        let v4 = entries
            .iter()
            .filter(|e| Family::of(e.ip) == Family::V4)
            .count();
        Ok((v4, entries.len() - v4))
    }

    /// Removes the backend's objects (shutdown).
    pub fn shutdown(&mut self) {
        if let Mode::Apply(backend) = &mut self.mode {
            if let Err(e) = backend.remove() {
                let cause = format!("{e:#}").replace('\n', " ");
                eprintln!(
                    "tcpwatch: warning: cannot remove the {} objects: {cause}",
                    backend.name()
                );
            }
        }
    }

    pub fn is_active(&self) -> bool {
        !matches!(self.mode, Mode::Off)
    }
}

/// How often the block stage re-reads the firewall and retries what failed.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// A time left as whole seconds, rounded up, at least one: what a late
/// block is applied (and printed) with, so it ends when it would have.
fn whole_seconds(left: Duration) -> Duration {
    Duration::from_secs((left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, Stamp};
    use crate::event::{Connection, Direction, PortScan};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    type Blocks = Vec<(IpAddr, Duration)>;

    /// Records every call; fails `block` when told to. `gone`: its objects
    /// were deleted (listing fails until a repair).
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<Vec<IpAddr>>>>,
        ttls: Arc<Mutex<Vec<Duration>>>,
        held: Arc<Mutex<std::collections::BTreeSet<IpAddr>>>,
        repairs: Arc<Mutex<Vec<Blocks>>>,
        fail: bool,
        failing: Arc<AtomicBool>,
        gone: Arc<AtomicBool>,
    }

    impl Fake {
        fn check(&self) -> anyhow::Result<()> {
            if self.fail || self.failing.load(Ordering::Relaxed) {
                anyhow::bail!("nft: Operation not permitted");
            }
            Ok(())
        }
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn install(&mut self, _: Duration) -> anyhow::Result<()> {
            Ok(())
        }
        fn block(&mut self, ips: &[IpAddr], ttl: Duration) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(ips.to_vec());
            self.ttls.lock().unwrap().push(ttl);
            self.check()?;
            self.held.lock().unwrap().extend(ips);
            Ok(())
        }
        fn repair(&mut self, _: Duration, entries: &[(IpAddr, Duration)]) -> anyhow::Result<bool> {
            self.check()?;
            self.repairs.lock().unwrap().push(entries.to_vec());
            *self.held.lock().unwrap() = entries.iter().map(|(ip, _)| *ip).collect();
            self.gone.store(false, Ordering::Relaxed);
            Ok(true)
        }
        fn unblock(&mut self, _: IpAddr) -> anyhow::Result<()> {
            Ok(())
        }
        fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
            self.check()?;
            if self.gone.load(Ordering::Relaxed) {
                anyhow::bail!("nft: No such file or directory");
            }
            Ok(self
                .held
                .lock()
                .unwrap()
                .iter()
                .map(|ip| Entry {
                    ip: *ip,
                    remaining: Some(Duration::from_secs(30)),
                })
                .collect())
        }
        fn flush(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
        fn remove(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
        fn present(&mut self) -> bool {
            true
        }
    }

    fn stamp() -> Stamp {
        Stamp {
            wall: chrono::Local::now(),
            mono: Duration::ZERO,
        }
    }

    fn scan(remote: &str) -> Event {
        Event {
            at: stamp(),
            kind: EventKind::PortScan(PortScan {
                remote: remote.parse().unwrap(),
                local: "10.0.0.5".parse().unwrap(),
                ports: vec![1, 2, 3, 4],
            }),
        }
    }

    fn conn() -> Event {
        Event {
            at: stamp(),
            kind: EventKind::NewConnection {
                conn: Connection {
                    initiator: "192.0.2.9:4000".parse().unwrap(),
                    acceptor: "10.0.0.5:22".parse().unwrap(),
                    direction: Direction::Inbound,
                },
                source: "procfs",
            },
        }
    }

    fn blocker(mode: Mode, allow: &[&str]) -> Blocker {
        blocker_on(
            mode,
            allow,
            Arc::new(ManualClock::new(chrono::Local::now())),
        )
    }

    fn blocker_on(mode: Mode, allow: &[&str], clock: Arc<ManualClock>) -> Blocker {
        let host = vec!["10.0.0.5".parse().unwrap()];
        Blocker::new(
            mode,
            Duration::from_secs(30),
            Allowlist::new(
                allow.iter().map(|a| a.parse().unwrap()).collect(),
                Box::new(move || Ok(host.clone())),
                Box::new(|| Ok(vec!["10.0.0.1".parse().unwrap()])),
            ),
            clock,
        )
    }

    /// The events as short tags: `C` connection, `S ip` scan, `B ip` block.
    fn tags(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match &e.kind {
                EventKind::NewConnection { .. } => "C".to_string(),
                EventKind::PortScan(s) => format!("S {}", s.remote),
                EventKind::Blocked(b) if b.ttl == Duration::from_secs(30) => {
                    format!("B {} {}", b.ip, b.backend)
                }
                EventKind::Blocked(b) => format!("B {} {} {:?}", b.ip, b.backend, b.ttl),
                EventKind::Unblocked { ip, .. } => format!("U {ip}"),
            })
            .collect()
    }

    #[test]
    fn scans_of_one_batch_are_blocked_in_one_call_each_right_after_its_scan() {
        let fake = Fake::default();
        let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
        let out = b.handle(vec![
            conn(),
            scan("192.0.2.1"),
            conn(),
            scan("2001:db8::7"),
            scan("192.0.2.1"),
        ]);
        assert_eq!(
            tags(&out),
            [
                "C",
                "S 192.0.2.1",
                "B 192.0.2.1 fake",
                "C",
                "S 2001:db8::7",
                "B 2001:db8::7 fake",
                "S 192.0.2.1"
            ]
        );
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]]
        );
        assert_eq!(b.count().unwrap(), (1, 1));
    }

    #[test]
    fn allowlisted_scanners_are_reported_but_never_blocked() {
        let fake = Fake::default();
        let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &["192.0.2.0/24"]);
        let batch = vec![
            scan("192.0.2.1"),
            scan("127.0.0.1"),
            scan("10.0.0.5"),
            scan("::ffff:10.0.0.5"),
        ];
        let out = b.handle(batch);
        assert_eq!(
            tags(&out),
            [
                "S 192.0.2.1",
                "S 127.0.0.1",
                "S 10.0.0.5",
                "S ::ffff:10.0.0.5"
            ]
        );
        assert!(
            fake.calls.lock().unwrap().is_empty(),
            "no backend call at all"
        );
    }

    #[test]
    fn mapped_scanners_are_blocked_as_ipv4() {
        let fake = Fake::default();
        let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
        let out = b.handle(vec![scan("::ffff:198.51.100.7")]);
        assert_eq!(tags(&out), ["S ::ffff:198.51.100.7", "B 198.51.100.7 fake"]);
    }

    #[test]
    fn a_failed_block_is_not_reported_as_blocked() {
        let fake = Fake {
            fail: true,
            ..Fake::default()
        };
        let mut b = blocker(Mode::Apply(Box::new(fake)), &[]);
        assert_eq!(tags(&b.handle(vec![scan("192.0.2.1")])), ["S 192.0.2.1"]);
    }

    #[test]
    fn restore_applies_live_blocks_only_and_records_new_ones_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let now = SystemTime::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let hour = Duration::from_secs(3600);
        store
            .put_blocks(&[ip("198.51.100.1")], now + hour, "iptables", now)
            .unwrap();
        store
            .put_blocks(&[ip("192.0.2.7")], now + hour, "nftables", now)
            .unwrap();
        store
            .put_blocks(
                &[ip("198.51.100.2")],
                now + Duration::from_millis(1),
                "nftables",
                now,
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let fake = Fake::default();
        let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &["192.0.2.0/24"])
            .with_store(store.clone());
        let done = b.restore(store.blocks().unwrap()).unwrap();
        assert_eq!(
            done,
            Restored {
                applied: 1,
                kept: 0
            }
        );
        assert_eq!(*fake.calls.lock().unwrap(), [vec![ip("198.51.100.1")]]);
        assert_eq!(
            *fake.ttls.lock().unwrap(),
            [Duration::from_secs(30)],
            "an hour stored (a clock set back, a TTL shortened) comes back as --block-ttl at most"
        );
        let left: Vec<IpAddr> = store.blocks().unwrap().iter().map(|b| b.ip).collect();
        assert_eq!(
            left,
            [ip("198.51.100.1")],
            "allowlisted and expired are dropped"
        );

        // A block the firewall no longer holds (lifted by hand) leaves the
        // file at the next recount; the ones it holds stay.
        store
            .put_blocks(&[ip("203.0.113.9")], now + hour, "nftables", now)
            .unwrap();
        b.count().unwrap();
        let left: Vec<IpAddr> = store.blocks().unwrap().iter().map(|b| b.ip).collect();
        assert_eq!(left, [ip("198.51.100.1")]);
        // A new block is in the file before the backend is called.
        b.handle(vec![scan("203.0.113.10")]);
        assert_eq!(store.blocks().unwrap().len(), 2);

        // Blocking off: nothing applied, nothing dropped.
        store
            .put_blocks(&[ip("198.51.100.3")], now + hour, "nftables", now)
            .unwrap();
        let mut off = blocker(Mode::Off, &[]).with_store(store.clone());
        let done = off.restore(store.blocks().unwrap()).unwrap();
        assert_eq!(
            done,
            Restored {
                applied: 0,
                kept: 3
            }
        );
        assert_eq!(store.blocks().unwrap().len(), 3);
    }

    /// A blocker capped at `rate` new blocks a minute, on `clock`.
    fn capped(mode: Mode, rate: u32, clock: &Arc<ManualClock>) -> Blocker {
        let mut b = blocker(mode, &["192.0.2.0/24"]).with_limit(limit::Rate(Some(rate)));
        b.clock = clock.clone();
        b
    }

    #[test]
    fn the_cap_skips_new_blocks_over_it_until_the_minute_slides() {
        let clock = Arc::new(ManualClock::new(chrono::Local::now()));
        let fake = Fake::default();
        let mut b = capped(Mode::Apply(Box::new(fake.clone())), 2, &clock);
        let out = b.handle(vec![
            scan("198.51.100.1"),
            scan("198.51.100.2"),
            scan("198.51.100.3"),
            scan("192.0.2.9"),
        ]);
        assert_eq!(
            tags(&out),
            [
                "S 198.51.100.1",
                "B 198.51.100.1 fake",
                "S 198.51.100.2",
                "B 198.51.100.2 fake",
                "S 198.51.100.3",
                "S 192.0.2.9"
            ]
        );
        assert_eq!(
            b.take_skipped(),
            Skipped {
                allowlist: 1,
                rate_limit: 1
            }
        );
        assert_eq!(b.take_skipped(), Skipped::default(), "taken once");

        // Re-blocking a held address refreshes it and costs no budget.
        clock.advance(Duration::from_secs(20));
        let out = b.handle(vec![scan("198.51.100.1"), scan("198.51.100.4")]);
        assert_eq!(
            tags(&out),
            ["S 198.51.100.1", "B 198.51.100.1 fake", "S 198.51.100.4"]
        );
        assert_eq!(b.take_skipped().rate_limit, 1);

        // 60 s after the first two blocks their slots are free again.
        clock.advance(Duration::from_secs(40));
        let out = b.handle(vec![scan("198.51.100.4"), scan("198.51.100.5")]);
        assert_eq!(
            tags(&out),
            [
                "S 198.51.100.4",
                "B 198.51.100.4 fake",
                "S 198.51.100.5",
                "B 198.51.100.5 fake"
            ]
        );
        assert_eq!(b.take_skipped(), Skipped::default());
        let calls = fake.calls.lock().unwrap().len();
        assert_eq!(calls, 3, "one backend call per batch");
    }

    #[test]
    fn an_expired_block_is_new_again_and_a_failed_one_keeps_its_budget() {
        let clock = Arc::new(ManualClock::new(chrono::Local::now()));
        let mut b = capped(Mode::DryRun("nftables"), 1, &clock);
        assert_eq!(tags(&b.handle(vec![scan("198.51.100.1")])).len(), 2);
        // The TTL is 30 s: past it, the same address is a new block, and
        // the minute's budget is spent.
        clock.advance(Duration::from_secs(31));
        assert_eq!(tags(&b.handle(vec![scan("198.51.100.1")])).len(), 1);
        assert_eq!(b.take_skipped().rate_limit, 1);

        let failing = Fake {
            fail: true,
            ..Fake::default()
        };
        let mut b = capped(Mode::Apply(Box::new(failing)), 1, &clock);
        assert_eq!(tags(&b.handle(vec![scan("198.51.100.1")])).len(), 1);
        assert_eq!(tags(&b.handle(vec![scan("198.51.100.2")])).len(), 1);
        assert_eq!(
            b.take_skipped().rate_limit,
            1,
            "a block that failed is pending, to be applied: it keeps its budget"
        );
        assert_eq!(b.health().pending, 1);
    }

    #[test]
    fn a_reload_changes_the_cap() {
        let clock = Arc::new(ManualClock::new(chrono::Local::now()));
        let mut b = capped(Mode::DryRun("nftables"), 1, &clock);
        let out = b.handle(vec![scan("198.51.100.1"), scan("198.51.100.2")]);
        assert_eq!(tags(&out).len(), 3);
        b.reconfigure(Duration::from_secs(30), Vec::new(), limit::Rate(None));
        let out = b.handle(vec![scan("198.51.100.2"), scan("198.51.100.3")]);
        assert_eq!(tags(&out).len(), 4, "off: no cap");
        // Blocks made with no cap are not recorded; the one before still is.
        b.reconfigure(Duration::from_secs(30), Vec::new(), limit::Rate(Some(2)));
        let out = b.handle(vec![scan("198.51.100.4"), scan("198.51.100.5")]);
        assert_eq!(
            tags(&out),
            [
                "S 198.51.100.4",
                "B 198.51.100.4 nftables",
                "S 198.51.100.5"
            ]
        );
    }

    #[test]
    fn dry_run_reports_without_a_backend_and_off_passes_through() {
        let mut b = blocker(Mode::DryRun("nftables"), &[]);
        assert_eq!(
            tags(&b.handle(vec![scan("192.0.2.1")])),
            ["S 192.0.2.1", "B 192.0.2.1 nftables"]
        );
        assert_eq!(b.count().unwrap(), (0, 0));
        let mut off = blocker(Mode::Off, &[]);
        assert_eq!(
            tags(&off.handle(vec![scan("192.0.2.1"), conn()])),
            ["S 192.0.2.1", "C"]
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_failing_firewall_keeps_blocks_pending_and_applies_them_when_it_works() {
        let fake = Fake::default();
        let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
        fake.failing.store(true, Ordering::Relaxed);
        assert_eq!(tags(&b.handle(vec![scan("192.0.2.1")])), ["S 192.0.2.1"]);
        assert!(b.failing);
        // While failing, a new scan joins the pending ones in one call.
        assert_eq!(
            tags(&b.handle(vec![scan("2001:db8::7")])),
            ["S 2001:db8::7"]
        );
        assert_eq!(fake.calls.lock().unwrap().len(), 2);
        let (late, counted) = b.tick();
        assert!(late.is_empty() && counted.is_none());
        assert_eq!(
            b.health(),
            Health {
                errors: 3,
                dropped: 0,
                pending: 2
            },
            "the block, the retry, the repair after a failed listing: each failed call counts"
        );

        fake.failing.store(false, Ordering::Relaxed);
        let (late, counted) = b.tick();
        let mut late = tags(&late);
        late.sort();
        assert_eq!(late, ["B 192.0.2.1 fake", "B 2001:db8::7 fake"]);
        assert_eq!(counted, Some((1, 1)));
        assert!(!b.failing);
        assert_eq!(b.health().pending, 0);
        // Works again: a new scan is blocked at once, for the full TTL.
        let calls = fake.calls.lock().unwrap().len();
        assert_eq!(
            tags(&b.handle(vec![scan("198.51.100.3")])),
            ["S 198.51.100.3", "B 198.51.100.3 fake"]
        );
        assert_eq!(fake.calls.lock().unwrap().len(), calls + 1);
        assert_eq!(b.tick().0.len(), 0, "nothing is printed twice");
    }

    #[test]
    fn a_late_block_gets_the_time_its_ttl_has_left_and_an_ended_one_is_dropped() {
        let fake = Fake::default();
        let clock = Arc::new(ManualClock::new(chrono::Local::now()));
        let mut b = blocker_on(Mode::Apply(Box::new(fake.clone())), &[], clock.clone());
        fake.failing.store(true, Ordering::Relaxed);
        b.handle(vec![scan("192.0.2.1")]);
        clock.advance(Duration::from_millis(9_500));
        b.handle(vec![scan("192.0.2.2")]);
        clock.advance(Duration::from_millis(20_700));
        fake.failing.store(false, Ordering::Relaxed);
        // At 30.2 s: 192.0.2.1's 30 s have ended; 192.0.2.2 has 9.3 s left,
        // applied as 10 s so it never ends early.
        let (late, _) = b.tick();
        assert_eq!(tags(&late), ["B 192.0.2.2 fake 10s"]);
        assert_eq!(
            fake.ttls.lock().unwrap().last(),
            Some(&Duration::from_secs(10))
        );
        assert_eq!(b.health().dropped, 1);
        assert_eq!(b.health().pending, 0);

        // Every pending block expired: the next good reading is the recovery.
        fake.failing.store(true, Ordering::Relaxed);
        b.handle(vec![scan("192.0.2.3")]);
        clock.advance(Duration::from_secs(31));
        fake.failing.store(false, Ordering::Relaxed);
        assert!(b.failing);
        assert!(b.tick().0.is_empty());
        assert!(!b.failing);
        assert_eq!(b.health().dropped, 2);
    }

    #[test]
    fn pending_blocks_are_capped_and_the_excess_counted() {
        let fake = Fake::default();
        let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
        b.max_pending = 2;
        fake.failing.store(true, Ordering::Relaxed);
        b.handle(vec![
            scan("192.0.2.1"),
            scan("192.0.2.2"),
            scan("192.0.2.3"),
        ]);
        b.handle(vec![scan("192.0.2.1")]);
        assert_eq!(
            b.health(),
            Health {
                errors: 2,
                dropped: 1,
                pending: 2
            },
            "a pending address again is no new entry"
        );
    }

    #[test]
    fn deleted_objects_are_recreated_with_the_active_and_pending_blocks() {
        let fake = Fake::default();
        let mut b = blocker(Mode::Apply(Box::new(fake.clone())), &[]);
        b.handle(vec![scan("192.0.2.1")]);
        fake.gone.store(true, Ordering::Relaxed);
        fake.failing.store(true, Ordering::Relaxed);
        b.handle(vec![scan("192.0.2.2")]);
        fake.failing.store(false, Ordering::Relaxed);
        let (late, _) = b.tick();
        assert_eq!(
            tags(&late),
            ["B 192.0.2.2 fake"],
            "only the pending one prints"
        );
        let mut repaired = fake.repairs.lock().unwrap()[0].clone();
        repaired.sort();
        assert_eq!(
            repaired,
            [
                (ip("192.0.2.1"), Duration::from_secs(30)),
                (ip("192.0.2.2"), Duration::from_secs(30))
            ]
        );
        assert!(!b.failing);
        assert_eq!(b.health().pending, 0);
        assert!(b.tick().0.is_empty());
        assert_eq!(fake.repairs.lock().unwrap().len(), 1, "repaired once");
    }
}
