//! Wires the stages: source -> detect -> sink, joined by bounded channels, and
//! shuts them down in order on SIGINT/SIGTERM.

use crate::clock::{Clock, SystemClock};
use crate::config::{BlockKind, Listen, RunConfig, SourceKind};
use crate::detect::Detector;
use crate::event::Event;
use crate::sink::LineSink;
use crate::source::{self, Observation, SocketTable};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs the agent on its own runtime until a signal or a fatal error.
pub fn run_blocking(config: RunConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(config))
}

pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    warn_unavailable(&config);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let detector = Detector::new(
        config.source.name(),
        config.report_existing,
        config.scan_ports,
        config.scan_window,
    );
    let (observations, observed) = mpsc::channel(8);
    let (events, to_print) = mpsc::channel(1024);

    let mut source = match config.source {
        SourceKind::Xdp => {
            let xdp = source::xdp::XdpSource::open(&config.interfaces)?;
            tokio::spawn(xdp.run(clock, observations))
        }
        _ => {
            let table = source::socket_table(config.source.name())?;
            tokio::spawn(poll(table, config.interval, clock, observations))
        }
    };
    let detect = tokio::spawn(detect(detector, observed, events));
    let mut sink = tokio::spawn(print(
        LineSink::new(std::io::stdout(), config.format),
        to_print,
    ));

    let outcome = tokio::select! {
        signal = shutdown_signal() => signal,
        ended = &mut source => flatten(ended),
        ended = &mut sink => return flatten(ended),
    };
    source.abort();
    let _ = detect.await;
    outcome.and(flatten(sink.await))
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(anyhow::anyhow!("internal task failed: {e}")),
    }
}

/// Capabilities whose flags are accepted but that this build does not have.
fn warn_unavailable(config: &RunConfig) {
    if config.block != BlockKind::None {
        eprintln!("tcpwatch: warning: blocking is not available in this build; detecting only");
    }
    if let Listen::At(addr) = config.metrics_addr {
        eprintln!("tcpwatch: warning: metrics are not available in this build; not serving {addr}");
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The polling source: one table read a tick, off the async threads. A read
/// that fails is reported once and retried each tick.
async fn poll(
    mut table: Box<dyn SocketTable>,
    every: Duration,
    clock: Arc<dyn Clock>,
    out: mpsc::Sender<Observation>,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        let at = clock.now();
        let (back, read) = tokio::task::spawn_blocking(move || {
            let read = table.snapshot();
            (table, read)
        })
        .await
        .context("source task failed")?;
        table = back;
        match read {
            Ok(sockets) => {
                if failing {
                    eprintln!("tcpwatch: {} source reads again", table.name());
                    failing = false;
                }
                if out
                    .send(Observation::Snapshot { at, sockets })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            Err(e) if !failing => {
                eprintln!(
                    "tcpwatch: warning: {} source: {e:#}; retrying every {}",
                    table.name(),
                    crate::duration::format(every)
                );
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn detect(
    mut detector: Detector,
    mut input: mpsc::Receiver<Observation>,
    out: mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    while let Some(observation) = input.recv().await {
        for event in detector.process(&observation) {
            if out.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn print(
    mut sink: LineSink<std::io::Stdout>,
    mut input: mpsc::Receiver<Event>,
) -> anyhow::Result<()> {
    while let Some(event) = input.recv().await {
        sink.write(&event).context("stdout")?;
    }
    Ok(())
}
