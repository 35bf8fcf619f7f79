//! The `xdp` source: the XDP program ([`crate::bpf::xdp`]) reports every
//! SYN and SYN+ACK, every stealth TCP probe and first TCP fragment that
//! reaches the watched interfaces, and its TC egress program the UDP probes
//! this host answers with a port unreachable, through one ring buffer; this
//! module drains the ring buffer and turns its records into
//! [`Observation::Attempt`]s and [`Observation::Probe`]s, and re-attaches
//! the programs to an interface re-created under its name.
//!
//! Draining: each wakeup reads up to [`BATCH`] records, stamps them with one
//! clock reading and hands them on as one [`Observation::Batch`] (one
//! channel send, no allocation per record). The kernel wakes the reader
//! only for a record that finds the ring empty; a drain of at least
//! [`FLOOD`] records means records come faster than wakeups are worth, so
//! the reader lets [`LINGER`] pass before the next drain, and a flood costs
//! about one wakeup a millisecond instead of one every few records. A lone
//! SYN is read at once.
//!
//! The attachments live as long as [`XdpSource`] (and the blocklist maps it
//! may hand to the `xdp` block backend): the pipeline drops it on
//! SIGINT/SIGTERM, and the kernel detaches the programs when the process
//! dies, even by `kill -9`.

use super::link;
use super::stream::{Context, Stream};
use crate::bpf::blocklist::{Maps, Owner};
use crate::bpf::record::{parse_event, Report};
use crate::bpf::xdp::{self as program, LoadOptions, LOST, RING};
use crate::bpf::{per_cpu_sum, ring_buffer};
use crate::clock::Stamp;
use crate::diag;
use crate::event::Observation;
use crate::os::iface;
use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How often the loss counter is read.
const LOSS_PERIOD: Duration = Duration::from_secs(1);
/// Records drained from the ring buffer at most before they are handed on.
pub const BATCH: usize = 1024;
/// A drain at least this long means a flood: wait [`LINGER`] before the next.
pub const FLOOD: usize = 64;
/// How long the reader waits after a flood-sized drain.
pub const LINGER: Duration = Duration::from_millis(1);

pub struct XdpSource {
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    blocklist: Option<Maps>,
    /// Owns the program and its links: dropping it (and the blocklist maps,
    /// which share it) detaches them.
    bpf: Arc<std::sync::Mutex<Ebpf>>,
    /// The interfaces it is attached to, by name, as first resolved.
    interfaces: Vec<(String, u32)>,
}

impl XdpSource {
    /// Loads the program and attaches it to `interfaces` (none: every up,
    /// non-loopback Ethernet interface). With `opts.block`, the program
    /// checks the blocklist too, and [`XdpSource::take_blocklist`] hands its
    /// maps to the `xdp` backend. Must run inside the tokio runtime.
    pub fn open(interfaces: &[String], opts: &LoadOptions) -> anyhow::Result<XdpSource> {
        let opts = LoadOptions {
            report: true,
            ..*opts
        };
        let names = program::interfaces_or_default(interfaces)?;
        let mut bpf = program::load(&names, &opts)?;
        let interfaces = names
            .into_iter()
            .map(|name| iface::index(&name).map(|index| (name, index)))
            .collect::<anyhow::Result<_>>()?;
        let ring = ring_buffer(bpf.take_map(RING).context("no ring buffer map")?)?;
        let lost = PerCpuArray::try_from(bpf.take_map(LOST).context("no loss counter map")?)
            .context("loss counter map")?;
        let blocklist = if opts.block {
            Some(Maps::take(&mut bpf)?)
        } else {
            None
        };
        let bpf = Arc::new(std::sync::Mutex::new(bpf));
        let owner: Owner = bpf.clone();
        Ok(XdpSource {
            ring,
            lost,
            blocklist: blocklist.map(|maps| maps.owned_by(owner)),
            bpf,
            interfaces,
        })
    }

    /// The blocklist maps of this program (when opened with `block`); they
    /// keep the program attached as long as they live, too.
    pub fn take_blocklist(&mut self) -> Option<Maps> {
        self.blocklist.take()
    }

    fn lost_total(&self) -> u64 {
        per_cpu_sum(&self.lost, 0)
    }

    /// Reads events until the receiver goes away; the attachments last as
    /// long as this future.
    async fn read(mut self, ctx: Context) -> anyhow::Result<()> {
        let Context { clock, out, health } = ctx;
        let mut watched: Vec<link::Watched> = self
            .interfaces
            .iter()
            .map(|(name, index)| link::Watched::new("xdp", name, *index, health.clone()))
            .collect();
        let mut checks = tokio::time::interval(link::CHECK_EVERY);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let _running = crate::health::Running::new(health.clone());
        let mut losses = LossCounter::new(self.lost_total());
        let mut malformed = 0u64;
        let mut ticks = tokio::time::interval(LOSS_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reports: Vec<Report> = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.context("ring buffer poll")?;
                    let ring = guard.get_inner_mut();
                    while reports.len() < BATCH {
                        let Some(item) = ring.next() else { break };
                        match parse_event(&item) {
                            Ok(report) => reports.push(report),
                            Err(_) => malformed += 1,
                        }
                    }
                    let drained = reports.len();
                    if drained < BATCH {
                        guard.clear_ready();
                    }
                    drop(guard);
                    if let Some(observation) = batch(&mut reports, clock.now()) {
                        if out.send(observation).await.is_err() {
                            return Ok(());
                        }
                    }
                    if drained >= FLOOD {
                        tokio::time::sleep(LINGER).await;
                    }
                }
                _ = checks.tick() => {
                    for interface in &mut watched {
                        self.reattach_if_replaced(interface);
                    }
                }
                _ = ticks.tick() => {
                    let total = self.lost_total().wrapping_add(malformed);
                    if let Some(count) = losses.delta(total) {
                        if out.send(Observation::Lost { count, source: "xdp" }).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

impl XdpSource {
    /// Checks one watched interface; a new interface under its name (the
    /// old one deleted, its attachment gone with it) gets the program
    /// attached anew. An interface that only went down keeps the program.
    fn reattach_if_replaced(&self, interface: &mut link::Watched) {
        let Some(now) = interface.check().filter(|now| interface.replaced(*now)) else {
            return;
        };
        let mut bpf = self.bpf.lock().unwrap_or_else(|e| e.into_inner());
        let attached = program::program(&mut bpf)
            .and_then(|program| program::attach(program, interface.name(), now.index));
        match attached {
            Ok((mode, _)) => {
                if let Err(e) = program::attach_udp(&mut bpf, interface.name()) {
                    diag::warn(format_args!(
                        "xdp: UDP scans are not seen on {}: {e:#}",
                        interface.name()
                    ));
                }
                interface.attached(now, &format!("program attached ({mode} mode)"))
            }
            Err(e) => interface.retry_failed(&e),
        }
    }
}

/// The drained `reports`, seen `at`, as one observation (a batch when
/// there are several); `reports` is left empty, its capacity kept.
fn batch(reports: &mut Vec<Report>, at: Stamp) -> Option<Observation> {
    match reports.len() {
        0 => None,
        1 => reports.pop().map(|report| report.observation(at)),
        _ => Some(Observation::Batch(
            reports
                .drain(..)
                .map(|report| report.observation(at))
                .collect(),
        )),
    }
}

impl Stream for XdpSource {
    fn name(&self) -> &'static str {
        "xdp"
    }

    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self.read(ctx))
    }
}

/// Turns the kernel's running loss total into the deltas to report.
struct LossCounter {
    reported: u64,
}

impl LossCounter {
    fn new(start: u64) -> Self {
        LossCounter { reported: start }
    }

    /// The losses since the last report, if any (the counter is a u64 that
    /// only grows; wrapping arithmetic keeps a wrap-around right).
    fn delta(&mut self, total: u64) -> Option<u64> {
        let count = total.wrapping_sub(self.reported);
        self.reported = total;
        (count > 0).then_some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_reported_as_deltas_once() {
        let mut losses = LossCounter::new(5);
        assert_eq!(losses.delta(5), None);
        assert_eq!(losses.delta(12), Some(7));
        assert_eq!(losses.delta(12), None);
        assert_eq!(losses.delta(13), Some(1));
        let mut wrapping = LossCounter::new(u64::MAX - 1);
        assert_eq!(wrapping.delta(2), Some(4));
    }
}
