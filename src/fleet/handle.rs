//! The stage's types and the pipeline's handle on it: what the fleet says
//! ([`FleetEvent`]), what the pipeline tells it ([`FleetHandle`]), and what
//! it counts ([`FleetCounters`]). The handle never waits for Redis: it
//! puts decisions in a bounded channel to the task and attempts in a
//! bounded aggregate the task takes once a flush.

use super::settings::FleetLimits;
use super::wire::{self, target_text};
use crate::event::FLEET_MESSAGES;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What the fleet tells the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetEvent {
    /// Connected (again) to Redis, synchronised, following the fleet.
    Up { server: String },
    /// Redis cannot be used; sent once per outage, `reason` is one line.
    /// Local detection and blocking go on; the stage reconnects by itself.
    Down { reason: String },
    /// Another node (or this node in an earlier run) decided this block:
    /// apply it through this node's backend and allowlist, until `expires`.
    RemoteBlock {
        target: IpNet,
        expires: SystemTime,
        origin: String,
        reason: String,
    },
    /// The fleet lifted this block. `origin`: the node that lifted it, or
    /// `None` when it was found missing while catching up.
    RemoteUnblock {
        target: IpNet,
        origin: Option<String>,
    },
    /// This node saw `source` cross the fleet's line: it touched more than
    /// the limit of distinct (host, port) pairs across the fleet within the
    /// window. Reported by one node only in the whole fleet, once per
    /// episode.
    FleetScan {
        source: IpNet,
        /// Distinct hosts in the window.
        hosts: usize,
        /// Distinct ports in the window, ascending.
        ports: Vec<u16>,
        /// Distinct (host, port) pairs in the window.
        pairs: usize,
    },
}

/// The text after `Fleet scan detected: `: `192.0.2.56 -> 12 hosts on ports
/// 22,80`.
pub fn scan_text(source: &IpNet, hosts: usize, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "{} -> {hosts} {} on ports {}",
        target_text(source),
        if hosts == 1 { "host" } else { "hosts" },
        ports.join(",")
    )
}

/// One inbound attempt seen by this node: from `source` to `host:port`
/// (`host` is the local address that was touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempt {
    pub source: IpAddr,
    pub host: IpAddr,
    pub port: u16,
}

/// Why a handle refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a target the fleet carries (see [`wire::check_target`]).
    Target(&'static str),
    /// Already expired, or further than the stage's maximum TTL.
    Expiry,
    /// The queue to the fleet task is full (counted as dropped).
    QueueFull,
    /// The fleet task has stopped.
    Stopped,
    /// A scan rule the stage cannot use (no pairs, a window under 100ms).
    Rule,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Target(why) => write!(f, "not published to the fleet: {why}"),
            Rejected::Expiry => f.write_str("not published to the fleet: expired or too far away"),
            Rejected::QueueFull => f.write_str("not published to the fleet: queue full"),
            Rejected::Stopped => f.write_str("not published to the fleet: fleet stage stopped"),
            Rejected::Rule => {
                f.write_str("fleet scan rule refused: no pairs or a window under 100ms")
            }
        }
    }
}

impl std::error::Error for Rejected {}

/// The stage's counters, read by the metrics stage. Messages are counted by
/// direction (`out`: written to Redis, `in`: read from it) and kind.
#[derive(Debug, Default)]
pub struct FleetCounters {
    pub(super) up: AtomicBool,
    pub(super) out_block: AtomicU64,
    pub(super) out_unblock: AtomicU64,
    pub(super) out_observe: AtomicU64,
    pub(super) in_block: AtomicU64,
    pub(super) in_unblock: AtomicU64,
    pub(super) in_scan: AtomicU64,
    /// Decisions refused because the handle's queue was full.
    pub dropped_queue: AtomicU64,
    /// Decisions lost because the store kept while Redis is down was full.
    pub dropped_pending: AtomicU64,
    /// Attempts not sent: over the per-flush limits, or while Redis was down.
    pub dropped_attempts: AtomicU64,
    /// Fleet events not delivered because the pipeline's receiver is gone.
    pub dropped_events: AtomicU64,
    /// Things read from Redis that failed validation and were ignored.
    pub malformed: AtomicU64,
    /// Commands Redis refused (wrong key type, script error), not counting
    /// connection failures.
    pub errors: AtomicU64,
    /// Full reads of the ban index (first connection, log gap, data loss).
    pub resyncs: AtomicU64,
    /// Own bans published again after Redis lost its data.
    pub republished: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
}

impl FleetCounters {
    /// `tcpwatch_fleet_up`.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `(direction, kind, count)` for `tcpwatch_fleet_messages_total`, in
    /// the order of [`FLEET_MESSAGES`].
    pub fn messages(&self) -> [(&'static str, &'static str, u64); 6] {
        let v = [
            &self.out_block,
            &self.out_unblock,
            &self.out_observe,
            &self.in_block,
            &self.in_unblock,
            &self.in_scan,
        ];
        std::array::from_fn(|i| {
            (
                FLEET_MESSAGES[i].0,
                FLEET_MESSAGES[i].1,
                v[i].load(Ordering::Relaxed),
            )
        })
    }

    /// One message counter.
    pub fn message(&self, direction: &str, kind: &str) -> u64 {
        self.messages()
            .iter()
            .find(|(d, k, _)| *d == direction && *k == kind)
            .map_or(0, |m| m.2)
    }

    /// Every drop, whatever its cause.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue.load(Ordering::Relaxed)
            + self.dropped_pending.load(Ordering::Relaxed)
            + self.dropped_attempts.load(Ordering::Relaxed)
            + self.dropped_events.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A decision of this node, on its way to the task.
#[derive(Debug, Clone)]
pub(super) enum Command {
    Block {
        target: IpNet,
        expires_ms: u64,
        reason: String,
    },
    Unblock {
        target: IpNet,
    },
    /// A new fleet scan rule (SIGHUP).
    Rule {
        pairs: usize,
        window: Duration,
    },
}

/// Per source, the (host, port) pairs seen since the last flush; bounded.
#[derive(Debug, Default)]
pub(super) struct Aggregate {
    pub(super) sources: HashMap<IpNet, HashSet<SocketAddr>>,
}

pub(super) struct Shared {
    pub(super) counters: Arc<FleetCounters>,
    pub(super) aggregate: Mutex<Aggregate>,
    pub(super) node: String,
    pub(super) instance: u64,
    pub(super) ipv6_prefix: u8,
    pub(super) limits: FleetLimits,
}

/// The pipeline's side of the fleet stage. Cheap to clone; the task stops
/// (after publishing what it still holds, when it can) once every clone is
/// dropped, and then the event receiver ends.
#[derive(Clone)]
pub struct FleetHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) commands: mpsc::Sender<Command>,
}

impl fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetHandle")
            .field("node", &self.shared.node)
            .field("instance", &format_args!("{:016x}", self.shared.instance))
            .finish()
    }
}

impl FleetHandle {
    /// Publishes a block decided on this node, with its absolute expiry.
    /// Never waits: `Err(QueueFull)` when the task is behind (counted).
    pub fn publish_block(
        &self,
        target: IpNet,
        expires: SystemTime,
        reason: &str,
    ) -> Result<(), Rejected> {
        wire::check_target(&target).map_err(|m| Rejected::Target(m.0))?;
        let expires_ms = unix_ms(expires).ok_or(Rejected::Expiry)?;
        let now = unix_ms(SystemTime::now()).unwrap_or(0);
        if expires_ms <= now
            || expires_ms > wire::MAX_EXPIRY_MS
            || Duration::from_millis(expires_ms - now) > self.shared.limits.max_ttl
        {
            return Err(Rejected::Expiry);
        }
        self.send(Command::Block {
            target,
            expires_ms,
            reason: wire::clean_reason(reason),
        })
    }

    /// Takes a new fleet scan rule (more than `pairs` distinct (host, port)
    /// pairs within `window`) from the next flush on. Never waits.
    pub fn set_rule(&self, pairs: usize, window: Duration) -> Result<(), Rejected> {
        if pairs == 0 || window < Duration::from_millis(100) {
            return Err(Rejected::Rule);
        }
        self.send(Command::Rule { pairs, window })
    }

    /// Publishes the lifting of a block. Never waits.
    pub fn publish_unblock(&self, target: IpNet) -> Result<(), Rejected> {
        wire::check_target(&target).map_err(|m| Rejected::Target(m.0))?;
        self.send(Command::Unblock { target })
    }

    fn send(&self, command: Command) -> Result<(), Rejected> {
        match self.commands.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                FleetCounters::add(&self.shared.counters.dropped_queue, 1);
                Err(Rejected::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Rejected::Stopped),
        }
    }

    /// Adds inbound attempts to what the next flush sends (per source, the
    /// distinct (host, port) pairs). Never waits for Redis; attempts over
    /// the per-flush limits are dropped and counted. Loopback, unspecified
    /// and multicast sources are ignored.
    pub fn observe_attempts<'a>(&self, attempts: impl IntoIterator<Item = &'a Attempt>) {
        let limits = &self.shared.limits;
        let mut dropped = 0;
        {
            let mut agg = self
                .shared
                .aggregate
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for a in attempts {
                let source = wire::source_key(a.source, self.shared.ipv6_prefix);
                if wire::check_target(&source).is_err() || a.port == 0 {
                    continue;
                }
                let pair = SocketAddr::new(wire::canonical_ip(a.host), a.port);
                let full = agg.sources.len() >= limits.sources_per_flush;
                match agg.sources.get_mut(&source) {
                    Some(pairs) => {
                        if pairs.len() < limits.pairs_per_source {
                            pairs.insert(pair);
                        } else if !pairs.contains(&pair) {
                            dropped += 1;
                        }
                    }
                    None if full => dropped += 1,
                    None => {
                        agg.sources.insert(source, HashSet::from([pair]));
                    }
                }
            }
        }
        if dropped > 0 {
            FleetCounters::add(&self.shared.counters.dropped_attempts, dropped);
        }
    }

    /// The counters (shared with the task).
    pub fn counters(&self) -> Arc<FleetCounters> {
        self.shared.counters.clone()
    }

    /// This node's name in the fleet.
    pub fn node_name(&self) -> &str {
        &self.shared.node
    }

    /// This run's random id (tells this run's own messages apart).
    pub fn instance(&self) -> u64 {
        self.shared.instance
    }
}

/// Unix milliseconds of a time (None before 1970).
pub fn unix_ms(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The time of Unix milliseconds.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A random number from the OS's hash seed (no extra dependency; unique
/// enough to tell runs apart).
pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lines() {
        let s: IpNet = "192.0.2.56/32".parse().unwrap();
        assert_eq!(
            scan_text(&s, 12, &[22, 80]),
            "192.0.2.56 -> 12 hosts on ports 22,80"
        );
    }

    #[test]
    fn counters_have_no_address_labels() {
        let c = FleetCounters::default();
        c.in_scan.fetch_add(2, Ordering::Relaxed);
        assert_eq!(c.message("in", "scan"), 2);
        assert!(c
            .messages()
            .iter()
            .all(|(d, k, _)| !d.contains('.') && !k.contains('.')));
    }
}
