//! [`Firewall`]: a [`Backend`] that keeps working when the firewall does
//! not. When a call fails (the tool missing or failing, the objects deleted
//! under the agent) detection goes on: the failure is said once, the blocks
//! are kept pending and retried by [`Firewall::tick`] until they are
//! applied or their TTL has ended, the deleted objects are re-created with
//! every block they held, and the recovery is said once.

use super::backend::{canonical, whole_seconds, Backend, Family};
use super::journal::Journal;
use crate::clock::Clock;
use crate::{diag, duration, text};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How often the block stage re-reads the firewall and retries what failed.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Blocks decided while the firewall fails, kept for retrying, at most: a
/// broken firewall under a distributed scan must not grow the agent.
pub const MAX_PENDING: usize = 65_536;

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
    health: Health,
    pub(super) max_pending: usize,
    journal: Option<Arc<dyn Journal>>,
    /// Whether the journal may drop blocks the firewall no longer holds
    /// (lifted by hand): not after a restore failed, or those blocks, never
    /// applied, would be dropped with them; never for a dry run.
    reconcile: bool,
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
        Some(Firewall {
            backend,
            clock,
            pending: HashMap::new(),
            active: HashMap::new(),
            fault: diag::Fault::default(),
            health: Health::default(),
            max_pending: MAX_PENDING,
            journal: None,
            reconcile,
        })
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

    pub fn failing(&self) -> bool {
        self.fault.failing()
    }

    /// Whether `target` is blocked now (applied and not expired).
    pub fn holds(&mut self, target: IpNet) -> bool {
        let now = self.clock.now().mono;
        self.active.retain(|_, expires| *expires > now);
        self.active.contains_key(&target)
    }

    /// Re-applies blocks with the time each has left, in one backend call.
    pub fn restore(&mut self, entries: &[(IpNet, Duration)]) -> anyhow::Result<()> {
        if let Err(e) = self.backend.restore(entries) {
            self.reconcile = false;
            return Err(e);
        }
        let now = self.clock.now().mono;
        self.active.extend(
            entries
                .iter()
                .map(|(target, left)| (canonical(*target), now + *left)),
        );
        Ok(())
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
                self.active.extend(chosen.iter().map(|ip| (*ip, end)));
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
                self.active.extend(self.pending.drain());
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
        self.active.retain(|_, end| *end > now);
        self.expire_pending(now);
        let mut entries = self.pending_entries(now);
        entries.extend(
            self.active
                .iter()
                .filter(|(ip, _)| !self.pending.contains_key(ip))
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

    /// Lists the firewall: the addresses it holds, (IPv4, IPv6). The
    /// firewall is the truth: a block lifted by hand or pushed out of a full
    /// XDP map is no longer held, and blocking that address again is a new
    /// block. A listing without timeouts keeps the known expiry. A dry run
    /// counts nothing: it holds no address.
    pub fn count(&mut self) -> anyhow::Result<Counted> {
        let entries = self.backend.list()?;
        let now = self.clock.now().mono;
        let known = std::mem::take(&mut self.active);
        self.active = entries
            .iter()
            .filter_map(|e| {
                let ip = canonical(e.target);
                let end = match e.remaining {
                    Some(left) => now + left,
                    None => *known.get(&ip)?,
                };
                Some((ip, end))
            })
            .collect();
        if !self.backend.applies() {
            return Ok((0, 0));
        }
        if let (Some(journal), true) = (&self.journal, self.reconcile) {
            // The firewall is the truth while running: a block lifted with
            // `tcpwatch blocks remove` must not come back at the next start.
            // Pending blocks are not in it yet, and stay.
            let held: HashSet<IpNet> = entries
                .iter()
                .map(|e| canonical(e.target))
                .chain(self.pending.keys().copied())
                .collect();
            journal.keep_only(&held);
        }
        let v4 = entries
            .iter()
            .filter(|e| Family::of_net(&e.target) == Family::V4)
            .count();
        Ok((v4, entries.len() - v4))
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
