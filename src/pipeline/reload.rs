//! SIGHUP: the `--config` file is read again under the same command-line
//! flags, exactly as at start-up. The stages take the settings declared
//! `live` before their next input; the others are named once as needing a
//! restart. A file that does not load keeps the running settings.

use crate::diag;
use crate::settings::RunSettings;
use crate::text;
use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// Re-reads the configuration: the `--config` file under the command-line
/// flags.
pub type Reloader = Box<dyn Fn() -> anyhow::Result<RunSettings> + Send + Sync>;

/// Watches SIGHUP (from the start: its default action would end the agent
/// without removing its firewall objects).
pub fn watch_hangup() -> anyhow::Result<Signal> {
    signal(SignalKind::hangup()).context("cannot watch SIGHUP")
}

/// Applies each SIGHUP: hands the new settings to the stages through
/// `stages`.
pub async fn on_hangup(
    mut hangup: Signal,
    reloader: Option<Reloader>,
    running: RunSettings,
    stages: watch::Sender<RunSettings>,
) {
    let mut running = running;
    while hangup.recv().await.is_some() {
        reload(reloader.as_ref(), &mut running, &stages);
    }
}

/// One reload: reads the settings again and, when they load, takes their
/// live part.
pub fn reload(
    reloader: Option<&Reloader>,
    running: &mut RunSettings,
    stages: &watch::Sender<RunSettings>,
) {
    let Some(reload) = reloader else {
        diag::note("SIGHUP: no --config file to reload");
        return;
    };
    match reload() {
        Ok(new) => {
            let fixed = running.reload(&new);
            if !fixed.is_empty() {
                diag::warn(format_args!(
                    "{} changed; applied at the next start only",
                    fixed.join(", ")
                ));
            }
            stages.send_replace(running.clone());
            diag::note("configuration reloaded");
        }
        Err(e) => diag::warn(format_args!(
            "configuration not reloaded, keeping the running one: {}",
            text::chain(&e)
        )),
    }
}
