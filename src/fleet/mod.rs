//! Fleet mode: the nodes of a fleet share their blocks and detect scans that
//! are spread over many hosts, through Redis (one server, or a Redis
//! Cluster).
//!
//! This stage stands alone: it talks to the rest of the agent only through
//! its own types. The pipeline starts it with [`Fleet::start`], which spawns
//! one task and returns
//!
//! - a [`FleetHandle`]: [`FleetHandle::publish_block`],
//!   [`FleetHandle::publish_unblock`] and [`FleetHandle::observe_attempts`]
//!   never wait for Redis; what they queue is bounded, and what does not fit
//!   is dropped and counted in [`FleetCounters`];
//! - a receiver of [`FleetEvent`]s: the fleet's blocks and unblocks to apply
//!   through this node's own backend and allowlist, the fleet scans this node
//!   saw cross the line, and the link's `Up`/`Down` changes (one `Down` per
//!   outage, with a one-line reason).
//!
//! How it works (keys, scripts, limits): `docs/fleet.md`.
//!
//! - A ban is a Redis key that expires with the ban (`PXAT`, an absolute
//!   time), so every node applies the same remaining time; a change log (a
//!   capped stream) tells the nodes, which follow it with a blocking read.
//! - Attempts are aggregated per flush interval (per source, the set of
//!   (host, port) pairs seen) and sent to a server-side script that keeps one
//!   sliding window per source (a sorted set keyed by the source, so a
//!   cluster spreads sources over its shards); the one call that sees a
//!   source cross the line is told so, and only that node reports it.
//! - Redis unreachable: decisions are kept (bounded, one per target) and
//!   published on reconnect; the log is read from where the node left it, or
//!   the whole ban index when the log no longer reaches back that far. Redis
//!   restarted empty (its epoch key is gone): each node publishes its own
//!   bans still in force again.

mod conn;
mod handle;
pub mod scripts;
pub mod settings;
mod task;
pub mod wire;

pub use settings::{
    default_node_name, parse_node_name, parse_url, FleetLimits, FleetSettings, FleetUrl, NodeName,
    PasswordSource, Settings, PASSWORD_ENV,
};
pub use wire::target_text;

pub use handle::{
    from_unix_ms, scan_text, unix_ms, Attempt, FleetCounters, FleetEvent, FleetHandle, Rejected,
};

use handle::{random_u64, Aggregate, Shared};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Starts the fleet stage.
pub struct Fleet;

impl Fleet {
    /// Checks the settings, reads the password and CA files, and spawns the
    /// stage's task on the current tokio runtime. Redis being unreachable is
    /// not an error here (the task reports `Down` and retries); a bad
    /// setting or an unreadable file is, with a one-line message.
    ///
    /// `events` is the capacity of the event channel; the task waits (and
    /// only the task) when the pipeline is behind.
    pub fn start(
        settings: FleetSettings,
        events: usize,
    ) -> Result<(FleetHandle, mpsc::Receiver<FleetEvent>), String> {
        Fleet::spawn(settings, events).map(|(handle, events, _)| (handle, events))
    }

    /// [`Fleet::start`], and the task itself: it ends once every handle is
    /// dropped and it has published what it still held (2 s at most), so a
    /// shutdown can wait for it.
    pub fn spawn(
        settings: FleetSettings,
        events: usize,
    ) -> Result<
        (
            FleetHandle,
            mpsc::Receiver<FleetEvent>,
            tokio::task::JoinHandle<()>,
        ),
        String,
    > {
        let resolved = settings.resolve()?;
        // rustls needs a process-wide crypto provider; an error means one
        // is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let counters = Arc::new(FleetCounters::default());
        let shared = Arc::new(Shared {
            counters,
            aggregate: Mutex::new(Aggregate::default()),
            node: settings.node_name.clone(),
            instance: random_u64(),
            ipv6_prefix: settings.ipv6_prefix,
            limits: settings.limits.clone(),
        });
        let (command_tx, command_rx) = mpsc::channel(settings.limits.queue.max(1));
        let (event_tx, event_rx) = mpsc::channel(events.max(1));
        let task = task::Task::new(settings, resolved, shared.clone(), command_rx, event_tx)?;
        let task = tokio::spawn(task.run());
        Ok((
            FleetHandle {
                shared,
                commands: command_tx,
            },
            event_rx,
            task,
        ))
    }
}
