//! The control socket's requests, answered by the running stages: the
//! block stage takes the operator's blocks and lifts ([`BlockCommand`],
//! run in its own task between two batches, so the firewall, the state
//! file and the blocks in force stay one story), the metrics stage gives
//! the last hour's figures and the source's health.

use crate::block::blocker::{Blocker, Refused};
use crate::block::firewall::Health;
use crate::clock::Clock;
use crate::control::server::Handler;
use crate::control::{
    self, BlockInfo, BlockingStatus, LastHour, Port, Request, Response, Scanner, SourceStatus,
    Status,
};
use crate::event::{show_net, Event, EventKind};
use crate::metrics::Metrics;
use crate::setting::Value;
use crate::{diag, text};
use futures_util::future::BoxFuture;
use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Requests queued for the block stage at most: the socket serves a few at
/// once, so this never fills.
pub const COMMANDS: usize = 16;

/// What the block stage knows for `tcpwatch status`.
pub struct BlockState {
    pub backend: Option<&'static str>,
    pub health: Health,
    pub blocks: Vec<BlockInfo>,
}

/// A request for the block stage, with where its answer goes.
pub enum BlockCommand {
    Add {
        target: IpNet,
        ttl: Option<Duration>,
        reply: oneshot::Sender<Result<Event, Refused>>,
    },
    Remove {
        target: IpNet,
        reply: oneshot::Sender<Result<Option<Event>, Refused>>,
    },
    Flush {
        reply: oneshot::Sender<Result<Vec<Event>, Refused>>,
    },
    State {
        reply: oneshot::Sender<BlockState>,
    },
}

/// Sends the answer once the events are on their way.
pub type Reply = Box<dyn FnOnce() + Send>;

impl BlockCommand {
    /// Runs the command on `blocker` (off the async threads: it calls the
    /// firewall). Returns the events it made (`Blocked`, `Unblocked`),
    /// which go down the pipeline like any other, and the answer, to send
    /// after them.
    pub fn run(self, blocker: &mut Blocker) -> (Vec<Event>, Reply) {
        match self {
            BlockCommand::Add { target, ttl, reply } => {
                let result = blocker.add(target, ttl);
                let events = result.iter().cloned().collect();
                (events, Box::new(move || drop(reply.send(result))))
            }
            BlockCommand::Remove { target, reply } => {
                let result = blocker.remove(target);
                let events = result.iter().flatten().cloned().collect();
                (events, Box::new(move || drop(reply.send(result))))
            }
            BlockCommand::Flush { reply } => {
                let result = blocker.flush();
                let events = result.iter().flatten().cloned().collect();
                (events, Box::new(move || drop(reply.send(result))))
            }
            BlockCommand::State { reply } => {
                let state = BlockState {
                    backend: blocker.backend_name(),
                    health: blocker.health(),
                    blocks: blocker.views(),
                };
                (Vec::new(), Box::new(move || drop(reply.send(state))))
            }
        }
    }
}

/// Answers the control socket's requests from the running stages.
pub struct Agent {
    pub commands: mpsc::Sender<BlockCommand>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub node: String,
    pub dry_run: bool,
    pub started: Instant,
}

/// The stage is gone (the agent is stopping).
fn stopping() -> Response {
    Response::Refused {
        message: "the agent is shutting down".into(),
    }
}

fn target(text: &str) -> Result<IpNet, Response> {
    <IpNet as Value>::parse(text).map_err(|message| Response::Refused { message })
}

impl Agent {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> BlockCommand) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    async fn answer(self: Arc<Self>, request: Request) -> Response {
        match request {
            Request::Status { top } => self.status(top).await.unwrap_or_else(stopping),
            Request::List => match self.ask(|reply| BlockCommand::State { reply }).await {
                Some(state) => Response::Blocks {
                    blocks: state.blocks,
                },
                None => stopping(),
            },
            Request::Add { target: t, ttl_ms } => {
                let target = match target(&t) {
                    Ok(target) => target,
                    Err(refused) => return refused,
                };
                let ttl = ttl_ms.map(Duration::from_millis);
                match self
                    .ask(|reply| BlockCommand::Add { target, ttl, reply })
                    .await
                {
                    Some(Ok(Event {
                        kind: EventKind::Blocked(block),
                        ..
                    })) => Response::Added {
                        target: show_net(&block.target),
                        ttl_ms: u64::try_from(block.ttl.as_millis()).unwrap_or(u64::MAX),
                        backend: block.backend.to_string(),
                    },
                    Some(Ok(_)) => stopping(),
                    Some(Err(refused)) => Response::Refused { message: refused.0 },
                    None => stopping(),
                }
            }
            Request::Remove { target: t } => {
                let target = match target(&t) {
                    Ok(target) => target,
                    Err(refused) => return refused,
                };
                let backend = self.backend().await;
                match self
                    .ask(|reply| BlockCommand::Remove { target, reply })
                    .await
                {
                    Some(Ok(event)) => Response::Removed {
                        target: show_net(&crate::block::backend::canonical(target)),
                        backend,
                        was_blocked: event.is_some(),
                    },
                    Some(Err(refused)) => Response::Refused { message: refused.0 },
                    None => stopping(),
                }
            }
            Request::Flush => {
                let backend = self.backend().await;
                match self.ask(|reply| BlockCommand::Flush { reply }).await {
                    Some(Ok(events)) => Response::Flushed {
                        targets: events
                            .iter()
                            .filter_map(|e| match &e.kind {
                                EventKind::Unblocked { target, .. } => Some(show_net(target)),
                                _ => None,
                            })
                            .collect(),
                        backend,
                    },
                    Some(Err(refused)) => Response::Refused { message: refused.0 },
                    None => stopping(),
                }
            }
        }
    }

    async fn backend(&self) -> Option<String> {
        self.ask(|reply| BlockCommand::State { reply })
            .await
            .and_then(|s| s.backend.map(str::to_string))
    }

    async fn status(&self, top: usize) -> Option<Response> {
        let state = self.ask(|reply| BlockCommand::State { reply }).await?;
        let recent = self.metrics.recent(self.clock.now().mono, top);
        let health = self.metrics.source_health();
        let source = SourceStatus {
            name: self.metrics.source().to_string(),
            health: match health.ready() {
                Ok(()) => "ok".to_string(),
                Err(why) => why.to_string(),
            },
            events_lost: self.metrics.lost(),
        };
        let blocking = BlockingStatus {
            backend: state.backend.map(str::to_string),
            dry_run: self.dry_run,
            active: state.blocks.len(),
            pending: state.health.pending,
            errors: state.health.errors,
            drift_repaired: state.health.drift_missing + state.health.drift_unknown,
            packets_dropped: state.health.dropped_packets,
        };
        Some(Response::Status(Box::new(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node: self.node.clone(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            source,
            blocking,
            last_hour: LastHour {
                connections_inbound: recent.connections_inbound,
                connections_outbound: recent.connections_outbound,
                port_scans: recent.port_scans,
                blocks: recent.blocks,
            },
            top_scanners: recent
                .top_scanners
                .into_iter()
                .map(|(source, scans)| Scanner { source, scans })
                .collect(),
            top_ports: recent
                .top_ports
                .into_iter()
                .map(|(port, scans)| Port { port, scans })
                .collect(),
            blocks: state.blocks,
        })))
    }
}

impl Handler for Arc<Agent> {
    fn handle(&self, request: Request) -> BoxFuture<'static, Response> {
        Box::pin(self.clone().answer(request))
    }
}

/// The control socket, bound at start-up.
pub struct Socket {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
}

/// Binds `--control`. A socket that cannot be bound (another agent answers
/// there, a directory this user may not write) costs a warning, never the
/// run: detection and blocking go on without `status` and `blocks`.
pub fn bind(settings: &control::Settings) -> Option<Socket> {
    let path = settings.control.path()?.to_path_buf();
    match crate::os::socket::bind_private(&path) {
        Ok(listener) => Some(Socket { listener, path }),
        Err(e) => {
            diag::warn(format_args!(
                "control socket {}: {}; `tcpwatch status` and `tcpwatch blocks` cannot reach this agent",
                path.display(),
                text::one_line(&e)
            ));
            None
        }
    }
}
