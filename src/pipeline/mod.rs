//! Wires the stages: source -> detect -> block -> sink, joined by bounded
//! channels, beside the metrics server; shuts them down in order on
//! SIGINT/SIGTERM and removes the firewall objects last.
//!
//! - [`setup`]: opens what the settings name (source, metrics port, state
//!   file, firewall) and puts back what the state file holds;
//! - [`stages`]: the stage tasks, each taking its parts as values (a
//!   source, a detector, a blocker, a writer, a clock), so the pipeline is
//!   tested in-process with fakes ([`Parts`], [`Running`]);
//! - [`fleet_link`]: the fleet beside the stages (`--fleet`): the attempts
//!   it is told, the one place this node's block decisions go through to it
//!   ([`fleet_link::Outbox`]), and what the block task does with what it
//!   says;
//! - [`reload`]: SIGHUP re-reads `--config`; [`shutdown`]: the signals;
//! - [`control`]: the control socket's requests, answered by the stages.
//!
//! With a state file (`--state`), the connections accounted for and the
//! blocks decided are stored as they happen; at start-up the blocks are
//! re-applied with the time they have left and the connections opened while
//! the agent was down are reported. Shutdown still removes the firewall
//! objects: the blocks come back from the file at the next start. SIGHUP
//! re-reads `--config` (the settings declared `live`) without losing any of
//! this.

pub mod control;
pub mod fleet_link;
pub mod reload;
pub mod setup;
pub mod shutdown;
pub mod stages;
#[cfg(test)]
mod tests;

use crate::settings::RunSettings;
use anyhow::Context;
pub use reload::Reloader;
pub use stages::{Parts, Running, Source};
use std::sync::Arc;

/// Runs the agent on its own runtime until a signal or a fatal error. The
/// capabilities are settled first, before any thread exists (they are per
/// thread, and threads inherit them).
pub fn run_blocking(settings: RunSettings, reloader: Option<Reloader>) -> anyhow::Result<()> {
    crate::os::process::return_big_frees_to_the_os();
    let settings = crate::privilege::apply(settings)?;
    // One worker: the stages hand each other batches through channels, and
    // with two workers most hand-offs woke the other thread (a context
    // switch per few events); under a SYN flood one worker spends about a
    // third less CPU per SYN and drops nothing where two dropped a few per
    // cent (scripts/bench-pcap-flood.sh). Firewall calls, table reads and
    // the state file run off the worker (block_in_place, spawn_blocking).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(settings, reloader))
}

/// Runs the agent until SIGINT/SIGTERM (`Ok`) or a fatal error.
pub async fn run(settings: RunSettings, reloader: Option<Reloader>) -> anyhow::Result<()> {
    // Watched from the start: SIGHUP's default action would end the agent
    // without removing its firewall objects.
    let hangup = reload::watch_hangup()?;
    let signals = shutdown::Signals::watch()?;
    let opened = setup::open(&settings).await?;
    let dry_run = settings.block.dry_run;
    let running = stages::start(opened.parts);
    let control = opened.control.map(|socket| {
        let agent = running.control(opened.node.clone(), dry_run);
        let task = tokio::spawn(crate::control::server::serve(
            socket.listener,
            Arc::new(agent),
        ));
        (task, socket.path)
    });
    let reload = tokio::spawn(reload::on_hangup(
        hangup,
        reloader,
        settings,
        running.reload_sender(),
    ));
    let server = opened.server.map(tokio::spawn);
    let outcome = running.until(signals.wait(), server).await;
    reload.abort();
    if let Some((task, path)) = control {
        task.abort();
        crate::os::socket::unlink(&path);
    }
    outcome
}
