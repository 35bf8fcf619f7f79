//! [`Blocker`]: the decision. For each batch of events it picks the
//! scanners to block (not allowlisted, within the cap, or already blocked
//! and only refreshed), records them in the journal, has the [`Firewall`]
//! apply them in one call, and puts a `Blocked` event right after each
//! scan whose remote was blocked. The scans are this host's port scans and
//! the fleet scans it reported.
//!
//! It also applies the blocks other nodes of a fleet decided
//! ([`Blocker::apply_remote`]: through the same allowlist and cap, until
//! the same instant) and lifts blocks ([`Blocker::lift`]). Their `Blocked`
//! events name the node that decided them (`Origin::Fleet`), also when the
//! firewall applies them late.

use super::allow::Allowlist;
use super::backend::{canonical, whole_seconds};
use super::firewall::{Counted, Firewall, Health};
use super::journal::Journal;
use super::limit;
use super::Settings;
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

pub struct Blocker {
    /// `None`: blocking is off (`--block none`, or a backend that could not
    /// start); scans are reported only.
    firewall: Option<Firewall>,
    ttl: Duration,
    allow: Allowlist,
    clock: Arc<dyn Clock>,
    journal: Option<Arc<dyn Journal>>,
    limit: limit::Limit,
    skipped: Skipped,
    /// This node's name: the origin of the blocks it decides.
    node: Arc<str>,
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

impl Blocker {
    pub fn new(
        firewall: Option<Firewall>,
        ttl: Duration,
        allow: Allowlist,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Blocker {
            firewall,
            ttl,
            allow,
            clock,
            journal: None,
            limit: limit::Limit::new(limit::Rate(None)),
            skipped: Skipped::default(),
            node: "localhost".into(),
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
        self
    }

    /// Records every block in `journal` before it is applied, and keeps the
    /// journal to what the firewall holds.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.firewall = self.firewall.map(|f| f.with_journal(journal.clone()));
        self.journal = Some(journal);
        self
    }

    /// The scanners skipped since the last call.
    pub fn take_skipped(&mut self) -> Skipped {
        std::mem::take(&mut self.skipped)
    }

    /// New TTL, `--allow` entries and cap (SIGHUP); active blocks are kept.
    pub fn reconfigure(&mut self, settings: &Settings) {
        self.ttl = settings.block_ttl;
        self.allow.set_nets(settings.allow.clone());
        self.limit.set_rate(settings.max_blocks_per_minute);
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
        // comes back longer than `--block-ttl`.
        let live: Vec<(IpNet, Duration)> = blocks
            .iter()
            .filter_map(|(ip, expires)| Some((*ip, expires.duration_since(now).ok()?)))
            .filter(|(_, left)| !left.is_zero())
            .map(|(ip, left)| (ip, left.min(self.ttl)))
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

    /// Blocks the scanners of one batch of events in one backend call and
    /// returns the events with a `Blocked` right after each scan whose
    /// remote was blocked. Every input event is returned, in order. While
    /// the firewall fails, new blocks join the pending ones and all are
    /// retried in that one call.
    pub fn handle(&mut self, events: Vec<Event>) -> Vec<Event> {
        let Some(backend_name) = self.backend_name() else {
            return events;
        };
        if !events.iter().any(is_scan) {
            return events;
        }
        self.allow.refresh();
        let scanners: Vec<IpNet> = events.iter().filter_map(|e| self.target(e)).collect();
        let chosen = self.choose(scanners);
        if chosen.is_empty() {
            return events;
        }
        // Decided here now, whoever decided it before.
        for target in &chosen {
            self.fleet.remove(target);
        }
        let ttl = self.ttl;
        let firewall = self
            .firewall
            .as_mut()
            .expect("a backend name means a firewall");
        if let (Some(journal), true) = (&self.journal, firewall.applies()) {
            journal.record(&chosen, SystemTime::now() + ttl, backend_name);
        }
        let applied = firewall.apply(chosen, ttl);
        self.place(events, applied, backend_name)
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

    /// Puts a `Blocked` event right after the scan of each applied address
    /// in `events`, and those of addresses without a scan here (pending
    /// ones, applied late) at the end.
    fn place(
        &self,
        events: Vec<Event>,
        applied: Vec<(IpNet, Duration)>,
        backend: &'static str,
    ) -> Vec<Event> {
        let at = self.clock.now();
        let blocked = |ip: IpNet, ttl| Event {
            at,
            kind: EventKind::Blocked(Block {
                target: ip,
                ttl,
                backend,
                repeat: 1,
                origin: match self.fleet.get(&ip) {
                    Some(node) => Origin::Fleet(node.clone()),
                    None => Origin::Here(self.node.clone()),
                },
            }),
        };
        let mut left: HashMap<IpNet, Duration> = applied.iter().copied().collect();
        let mut out = Vec::with_capacity(events.len() + left.len());
        for event in events {
            let scanner = self.target(&event).and_then(|t| left.remove_entry(&t));
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
    fn choose(&mut self, scanners: Vec<IpNet>) -> Vec<IpNet> {
        let now = self.clock.now().mono;
        let mut seen = HashSet::new();
        let mut chosen = Vec::new();
        for ip in scanners {
            if !seen.insert(ip) {
                continue;
            }
            if let Some(reason) = self.allow.check_net(ip) {
                diag::note(format_args!("not blocking {}: {reason}", show_net(&ip)));
                self.skipped.allowlist += 1;
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
        chosen
    }

    /// Applies blocks other nodes of the fleet decided, each until the
    /// instant it ends (the time left, in whole seconds rounded up), in one
    /// backend call, and returns their `Blocked` events (`Origin::Fleet`).
    /// Each goes through this host's allowlist and cap like its own
    /// decisions; one this host already holds at least as long is left as
    /// it is (no event: nothing is applied twice). Nothing with blocking
    /// off.
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
            self.fleet.retain(|t, _| firewall.remaining(*t).is_some());
        }
        self.fleet.extend(origins);
        let firewall = self.firewall.as_mut().expect("checked above");
        if let (Some(journal), true) = (&self.journal, firewall.applies()) {
            for (target, _, expires) in &apply {
                journal.record(&[*target], *expires, backend_name);
            }
        }
        let applied = firewall.apply_each(apply.into_iter().map(|(t, ttl, _)| (t, ttl)).collect());
        self.place(Vec::new(), applied, backend_name)
    }

    /// Lifts the block of `target` (the fleet lifted it, or an operator):
    /// its `Unblocked` event, or `None` when this host held no such block or
    /// blocking is off. A firewall that fails to lift it is said once; the
    /// block then ends with its TTL.
    pub fn lift(&mut self, target: IpNet) -> Option<Event> {
        let target = canonical(target);
        let firewall = self.firewall.as_mut()?;
        let backend = firewall.name();
        let lifted = firewall.lift(target).unwrap_or(false);
        self.fleet.remove(&target);
        if !lifted {
            return None;
        }
        if let Some(journal) = &self.journal {
            journal.forget(target);
        }
        Some(Event {
            at: self.clock.now(),
            kind: EventKind::Unblocked { target, backend },
        })
    }

    /// Whether `target` is blocked here now (applied, not expired).
    pub fn holds(&mut self, target: IpNet) -> bool {
        let target = canonical(target);
        self.firewall.as_mut().is_some_and(|f| f.holds(target))
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
        let name = firewall.name();
        let (applied, counted) = firewall.tick(ttl);
        (self.place(Vec::new(), applied, name), counted)
    }

    /// Counts the addresses in the backend's sets, (IPv4, IPv6); zero when
    /// nothing is applied.
    pub fn count(&mut self) -> anyhow::Result<Counted> {
        match self.firewall.as_mut() {
            Some(firewall) => firewall.count(),
            None => Ok((0, 0)),
        }
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
