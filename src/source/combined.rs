//! `--source tracepoint,xdp`: the tracepoint source's connections, plus the
//! probes only a packet source sees.
//!
//! The tracepoints see a connection once its handshake ends and a SYN to a
//! closed port once the kernel resets it; a SYN to an open port that is
//! never completed (a half-open SYN scan, `nmap -sS`) changes no socket
//! state they report. The XDP program sees every SYN that reaches the
//! watched interfaces: here each inbound SYN it reports becomes an
//! [`Observation::Probe`] of a SYN scan, counted toward scans without a
//! line of its own, and the SYN-ACKs it reports (outbound connections) are
//! dropped. Every line therefore comes from the tracepoints, once, with its
//! owner; a port counted by both sources is one port of the scan. Losses
//! are counted under each source's own name.

use super::stream::{Context, Stream};
use crate::event::{Direction, Observation, ScanKind};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// Observations in flight from the packet source to the merge.
const IN_FLIGHT: usize = 8;

pub struct Combined {
    /// The source of the lines.
    lines: Box<dyn Stream>,
    /// The packet source whose SYNs become probes.
    probes: Box<dyn Stream>,
}

impl Combined {
    pub fn new(lines: Box<dyn Stream>, probes: Box<dyn Stream>) -> Combined {
        Combined { lines, probes }
    }
}

impl Stream for Combined {
    fn name(&self) -> &'static str {
        self.lines.name()
    }

    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(run(*self, ctx))
    }
}

async fn run(both: Combined, ctx: Context) -> anyhow::Result<()> {
    let Context { clock, out, health } = ctx;
    let (to_merge, mut from_probes) = mpsc::channel(IN_FLIGHT);
    let probes = both.probes.run(Context {
        clock: clock.clone(),
        out: to_merge,
        health: health.clone(),
    });
    let lines = both.lines.run(Context {
        clock,
        out: out.clone(),
        health,
    });
    let merge = async {
        while let Some(observation) = from_probes.recv().await {
            if let Some(probe) = as_probe(observation) {
                if out.send(probe).await.is_err() {
                    break;
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    // Whichever ends first ends the source: an error of either, or the
    // receiver gone (each then returns Ok).
    tokio::select! {
        ended = lines => ended,
        ended = probes => ended,
        ended = merge => ended,
    }
}

/// What an observation of the packet source adds to the lines' source: an
/// inbound SYN is a probe of its port; an outbound connection (a SYN-ACK)
/// is the lines' source's to report; losses and probes pass as they are;
/// a batch keeps what of it passes.
pub fn as_probe(observation: Observation) -> Option<Observation> {
    match observation {
        Observation::Attempt { at, conn, .. } => {
            (conn.direction == Direction::Inbound).then(|| Observation::Probe {
                at,
                remote: conn.initiator.ip(),
                local: conn.acceptor,
                kind: ScanKind::Syn,
            })
        }
        other @ (Observation::Probe { .. } | Observation::Lost { .. }) => Some(other),
        Observation::Batch(observations) => {
            let kept: Vec<Observation> = observations.into_iter().filter_map(as_probe).collect();
            (!kept.is_empty()).then_some(Observation::Batch(kept))
        }
        Observation::Snapshot { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::event::Connection;

    #[test]
    fn inbound_syns_become_probes_outbound_ones_are_dropped() {
        let at = ManualClock::new(chrono::Local::now()).now();
        let conn = Connection {
            initiator: "192.0.2.9:40000".parse().unwrap(),
            acceptor: "10.0.0.5:22".parse().unwrap(),
            direction: Direction::Inbound,
        };
        let syn = Observation::Attempt {
            at,
            conn,
            isn: 1,
            owner: None,
        };
        match as_probe(syn) {
            Some(Observation::Probe {
                remote,
                local,
                kind,
                ..
            }) => {
                assert_eq!(remote, conn.initiator.ip());
                assert_eq!(local, conn.acceptor);
                assert_eq!(kind, ScanKind::Syn);
            }
            other => panic!("{other:?}"),
        }
        let synack = Observation::Attempt {
            at,
            conn: Connection {
                direction: Direction::Outbound,
                ..conn
            },
            isn: 1,
            owner: None,
        };
        assert!(as_probe(synack).is_none());
        assert!(matches!(
            as_probe(Observation::Lost {
                count: 3,
                source: "xdp"
            }),
            Some(Observation::Lost {
                count: 3,
                source: "xdp"
            })
        ));
    }
}
