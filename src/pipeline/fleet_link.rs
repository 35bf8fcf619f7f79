//! The fleet beside the stages (`--fleet`): what the pipeline tells it and
//! what it does with what the fleet says. The fleet stage runs as its own
//! task ([`crate::fleet`]); nothing here ever waits for Redis:
//!
//! - the detect task hands it every inbound attempt ([`attempts`]), which
//!   it aggregates and sends once a flush;
//! - every block this node decides, and every block it lifts, goes through
//!   one place, [`Outbox::publish`], on its way from the block stage to the
//!   sinks: the fleet gets the block with its absolute expiry;
//! - the block task takes what the fleet says ([`on_events`]): the other
//!   nodes' blocks are applied through this node's own allowlist, cap and
//!   backend with the time they have left, and printed `Blocked ... (fleet:
//!   node-b)`, never published again as this node's; lifted ones are
//!   lifted; a fleet scan this node saw cross the line is printed and
//!   blocked like a port scan (and so published); the link going down or
//!   up is one line on stderr.

use crate::block::blocker::{Blocker, Remote};
use crate::clock::Clock;
use crate::diag;
use crate::event::{Direction, Event, EventKind, FleetScan, Observation, Origin};
use crate::fleet::{Attempt, FleetCounters, FleetEvent, FleetHandle, Rejected};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Fleet events in flight to the block task: the fleet task waits (and only
/// it) when the block task is behind.
pub const EVENTS: usize = 256;

/// The fleet stage, started.
pub struct Link {
    pub handle: FleetHandle,
    pub events: mpsc::Receiver<FleetEvent>,
    /// Ends once every handle is dropped and what it held is published.
    pub task: JoinHandle<()>,
}

/// How long a shutdown waits for the fleet task to publish what it holds.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// The inbound attempts among an observation and the events it gave: every
/// inbound new connection (a SYN a real-time source saw, a connection a
/// polling source found) and every probe that is not one (FIN, NULL, Xmas,
/// UDP). Outbound connections never count.
pub fn attempts(observation: &Observation, events: &[Event]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::NewConnection { conn, .. } if conn.direction == Direction::Inbound => {
                Some(Attempt {
                    source: conn.initiator.ip(),
                    host: conn.acceptor.ip(),
                    port: conn.acceptor.port(),
                })
            }
            _ => None,
        })
        .collect();
    if let Observation::Probe { remote, local, .. } = observation {
        out.push(Attempt {
            source: *remote,
            host: local.ip(),
            port: local.port(),
        });
    }
    out
}

/// The one place this node's block decisions go through on their way to
/// the sinks: whatever decided them (a port scan, a fleet scan, an
/// operator's `blocks add` or `blocks remove`), [`Outbox::publish`] tells
/// the fleet. The events the fleet itself made here (its blocks applied,
/// its unblocks) never go through it.
#[derive(Clone, Default)]
pub struct Outbox {
    fleet: Option<FleetHandle>,
}

impl Outbox {
    /// An outbox to `fleet`, or one that tells nobody.
    pub fn new(fleet: Option<FleetHandle>) -> Outbox {
        Outbox { fleet }
    }

    /// Publishes this node's decisions among `events`: each `Blocked` it
    /// decided (`Origin::Here`), with its absolute expiry and the kind of
    /// scan before it as the reason, and each `Unblocked`. Never waits;
    /// what the fleet refuses (its queue full, a target it does not carry)
    /// is counted there. `applies`: whether the blocks reached the kernel
    /// (a dry run tells the fleet nothing: it must not make other nodes
    /// block).
    pub fn publish(&self, events: &[Event], applies: bool) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        if !applies {
            return;
        }
        let mut reason = "block";
        for event in events {
            let sent = match &event.kind {
                EventKind::PortScan(_) => {
                    reason = "port scan";
                    continue;
                }
                EventKind::FleetScan(_) => {
                    reason = "fleet scan";
                    continue;
                }
                EventKind::Blocked(block) if matches!(block.origin, Origin::Here(_)) => {
                    let expires = SystemTime::from(event.at.wall) + block.ttl;
                    fleet.publish_block(block.target, expires, reason)
                }
                EventKind::Unblocked { target, .. } => fleet.publish_unblock(*target),
                _ => continue,
            };
            match sent {
                // Counted by the stage; a local address or a broad prefix
                // is simply not the fleet's business.
                Ok(()) | Err(Rejected::QueueFull | Rejected::Target(_)) => {}
                Err(e) => diag::note(format_args!("{e}")),
            }
        }
    }
}

/// What the block task does with a batch of fleet events: the events to
/// print made by the fleet (its blocks applied here, its unblocks), and
/// those this node decided (a fleet scan and its block), which the caller
/// publishes through the [`Outbox`].
pub struct Handled {
    pub fleet: Vec<Event>,
    pub decided: Vec<Event>,
}

/// Applies a batch of fleet events through `blocker` (firewall calls: run
/// it where it may block). `node` is this node's name (for the lines).
pub fn on_events(
    blocker: &mut Blocker,
    batch: Vec<FleetEvent>,
    clock: &Arc<dyn Clock>,
    node: &str,
) -> Handled {
    let mut handled = Handled {
        fleet: Vec::new(),
        decided: Vec::new(),
    };
    let mut remote = Vec::new();
    // In order: a block and its lifting in one batch must end lifted.
    let flush = |blocker: &mut Blocker, remote: &mut Vec<Remote>, out: &mut Vec<Event>| {
        if !remote.is_empty() {
            out.extend(blocker.apply_remote(std::mem::take(remote)));
        }
    };
    for event in batch {
        match event {
            FleetEvent::Up { server } => {
                diag::note(format_args!("fleet: following {server} as node {node}"))
            }
            FleetEvent::Down { reason } => diag::warn(format_args!(
                "fleet: {reason}; local detection and blocking go on, reconnecting"
            )),
            FleetEvent::RemoteBlock {
                target,
                expires,
                origin,
                ..
            } => remote.push(Remote {
                target,
                expires,
                origin,
            }),
            FleetEvent::RemoteUnblock { target, .. } => {
                flush(blocker, &mut remote, &mut handled.fleet);
                handled.fleet.extend(blocker.lift(target));
            }
            FleetEvent::FleetScan {
                source,
                hosts,
                ports,
                ..
            } => {
                // A source whose pairs all lie on one host is that host's
                // port scan, reported there by its own detector; one this
                // node already blocks has nothing new to say.
                if hosts < 2 || blocker.holds(source) {
                    continue;
                }
                let scan = Event {
                    at: clock.now(),
                    kind: EventKind::FleetScan(FleetScan {
                        source,
                        hosts,
                        ports,
                    }),
                };
                handled.decided.extend(blocker.handle(vec![scan]));
            }
        }
    }
    flush(blocker, &mut remote, &mut handled.fleet);
    handled
}

/// How often the fleet's counters are copied into the metrics.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// Copies the fleet stage's counters into the metrics every second.
pub async fn copy_metrics(counters: Arc<FleetCounters>, metrics: Arc<Metrics>) {
    let mut ticks = tokio::time::interval(METRICS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        copy(&counters, &metrics);
    }
}

/// The fleet's counters into the metrics, once.
pub fn copy(counters: &FleetCounters, metrics: &Metrics) {
    use std::sync::atomic::Ordering::Relaxed;
    metrics.set_fleet(crate::metrics::FleetSample {
        up: counters.up(),
        messages: counters.messages().to_vec(),
        dropped: vec![
            ("queue", counters.dropped_queue.load(Relaxed)),
            ("pending", counters.dropped_pending.load(Relaxed)),
            ("attempts", counters.dropped_attempts.load(Relaxed)),
            ("events", counters.dropped_events.load(Relaxed)),
        ],
        malformed: counters.malformed.load(Relaxed),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Block, Connection, ScanKind};

    fn at() -> Stamp {
        Stamp {
            wall: chrono::Local::now(),
            mono: Duration::ZERO,
        }
    }

    #[test]
    fn inbound_connections_and_probes_are_attempts_outbound_never() {
        let conn = |i: &str, a: &str, direction| Event {
            at: at(),
            kind: EventKind::NewConnection {
                conn: Connection {
                    initiator: i.parse().unwrap(),
                    acceptor: a.parse().unwrap(),
                    direction,
                },
                source: "pcap",
                owner: None,
            },
        };
        let events = [
            conn("192.0.2.56:4000", "10.0.0.5:22", Direction::Inbound),
            conn("10.0.0.5:5000", "192.0.2.9:443", Direction::Outbound),
        ];
        let probe = Observation::Probe {
            at: at(),
            remote: "192.0.2.56".parse().unwrap(),
            local: "10.0.0.5:80".parse().unwrap(),
            kind: ScanKind::Fin,
        };
        let got = attempts(&probe, &events);
        let want = |port| Attempt {
            source: "192.0.2.56".parse().unwrap(),
            host: "10.0.0.5".parse().unwrap(),
            port,
        };
        assert_eq!(got, [want(22), want(80)]);
        let lost = Observation::Lost {
            count: 1,
            source: "pcap",
        };
        assert!(attempts(&lost, &events[1..]).is_empty());
    }

    #[test]
    fn an_outbox_without_a_fleet_tells_nobody() {
        let block = Event {
            at: at(),
            kind: EventKind::Blocked(Block::here(
                "192.0.2.56".parse().unwrap(),
                Duration::from_secs(3600),
                "fake",
                "node-a",
            )),
        };
        Outbox::default().publish(&[block], true);
    }
}
