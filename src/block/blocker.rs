//! [`Blocker`]: the decision. For each batch of events it picks the
//! scanners to block (not allowlisted, within the cap, or already blocked
//! and only refreshed), records them in the journal, has the [`Firewall`]
//! apply them in one call, and puts a `Blocked` event right after each
//! scan whose remote was blocked.

use super::allow::Allowlist;
use super::backend::canonical;
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
        if !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::PortScan(_)))
        {
            return events;
        }
        self.allow.refresh();
        let scanners: Vec<IpNet> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::PortScan(scan) => Some(self.target_of(scan)),
                _ => None,
            })
            .collect();
        let chosen = self.choose(scanners);
        if chosen.is_empty() {
            return events;
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
        let blocked = |ip, ttl| Event {
            at,
            kind: EventKind::Blocked(Block {
                target: ip,
                ttl,
                backend,
                repeat: 1,
                origin: Origin::Here(self.node.clone()),
            }),
        };
        let mut left: HashMap<IpNet, Duration> = applied.iter().copied().collect();
        let mut out = Vec::with_capacity(events.len() + left.len());
        for event in events {
            let scanner = match &event.kind {
                EventKind::PortScan(scan) => left.remove_entry(&self.target_of(scan)),
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
