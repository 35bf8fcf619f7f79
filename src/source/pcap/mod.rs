//! The `pcap` source: libpcap captures on the watched interfaces, with an
//! in-kernel BPF filter ([`filter`]) that passes only what can be a probe,
//! so userspace never wakes for ordinary traffic.
//!
//! Each frame is parsed ([`frame`]) and turned into observations
//! ([`probes`]): a SYN is an [`Observation::Attempt`], inbound when its
//! destination is an address of this host, outbound when its source is; a
//! FIN/NULL/Xmas segment, a fragmented TCP packet whose flags never came,
//! and a UDP probe this host answered with ICMP port unreachable are
//! [`Observation::Probe`]s. Kernel and interface drops become
//! [`Observation::Lost`].

#[doc(hidden)]
pub mod craft;
pub mod filter;
pub mod frame;
pub mod probes;

use super::link;
use super::stream::{Context, Stream};
use crate::clock::Clock;
use crate::diag;
use crate::event::Observation;
use crate::os::{addrs, iface, poll};
use anyhow::Context as _;
use futures_util::future::BoxFuture;
use pcap::{Active, Capture};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The kernel's ring for the capture: a burst of SYNs (a fast scan, a
/// flood) queues here while the agent catches up. About 36,000 frames at
/// this snaplen: a quarter of a second of a 130,000 SYN/s flood.
pub const BUFFER_BYTES: i32 = 8 << 20;
/// Frames read from the ring in one go before the observations are handed
/// on.
const READ_AT_ONCE: usize = 1024;
/// While frames keep coming (each pass within [`BUSY`] of the last), the
/// ring is read at most once per `PACE`: what arrives in between waits in
/// the ring (36,000 frames) and is read in one pass. Measured under a
/// 120,000 SYN/s flood on this 2-core VM: read as each frame came, nearly
/// every frame was a pass of its own (500,000 `epoll_wait`, 520,000 `poll`
/// and 500,000 `write` calls for 615,000 SYNs), 5.7 µs of CPU a SYN
/// against tcpdump's 2.2. A SYN after a quiet spell is read at once; one
/// in a burst waits at most this long.
const PACE: Duration = Duration::from_millis(1);
/// A pass closer than this to the one before is paced.
const BUSY: Duration = Duration::from_millis(10);
/// The longest the capture thread waits in `poll`: how soon it sees that
/// its [`pump`] was dropped.
const WAIT_AT_MOST: Duration = Duration::from_millis(250);
/// How often kernel drop counters are read.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often first fragments waiting for their flags are checked.
const FRAGMENTS_EVERY: Duration = Duration::from_millis(250);
/// How often the host's addresses are re-read (they change: DHCP, SLAAC).
const ADDRESSES_EVERY: Duration = Duration::from_secs(5);

pub use frame::{parse, Link, Seen, SNAPLEN};

/// The filter compiled on a capture of `link`.
pub fn filter_for(link: Link) -> String {
    if link == Link::Ethernet {
        filter::with_vlan()
    } else {
        filter::plain()
    }
}

/// The filter an Ethernet capture compiles (what the benchmarks hand
/// tcpdump).
pub fn filter_with_vlan() -> String {
    filter::with_vlan()
}

/// The observations one frame gives at once (a first fragment gives none
/// until its flags come: see [`probes::Probes`]), given the host's
/// addresses.
pub fn observe(
    link: Link,
    frame: &[u8],
    at: crate::clock::Stamp,
    local: &HashSet<IpAddr>,
) -> Vec<Observation> {
    let mut out = Vec::new();
    if let Some(seen) = parse(link, frame) {
        let is_local = |ip: IpAddr| local.contains(&ip);
        probes::Probes::new().frame(at, seen, &is_local, &mut |o| out.push(o));
    }
    out
}

/// An interface opened for capture, before it is turned into a stream.
pub struct Opened {
    name: String,
    link: Link,
    capture: Capture<Active>,
}

/// Opens every interface to watch: `names`, or by default every up,
/// non-loopback one. The first that fails is the error, naming it.
pub fn open(names: &[String]) -> anyhow::Result<Vec<Opened>> {
    let names = if names.is_empty() {
        default_interfaces()?
    } else {
        names.to_vec()
    };
    names.iter().map(|name| open_one(name)).collect()
}

/// Every up, non-loopback interface in pcap's device list. pcap also lists
/// pseudo-devices (`any`, `nflog`, `dbus-system`, …); only names the kernel
/// knows as network interfaces are real ones (`any` would see each packet
/// twice).
fn default_interfaces() -> anyhow::Result<Vec<String>> {
    let devices = pcap::Device::list().context("cannot list interfaces")?;
    let names: Vec<String> = devices
        .into_iter()
        .filter(|d| d.flags.is_up() && !d.flags.is_loopback() && iface::exists(&d.name))
        .map(|d| d.name)
        .collect();
    if names.is_empty() {
        anyhow::bail!("pcap: no up, non-loopback interface to watch; name one with --interface");
    }
    Ok(names)
}

fn open_one(name: &str) -> anyhow::Result<Opened> {
    let fail =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot capture on interface '{name}': {e}");
    let mut capture = Capture::from_device(name)
        .map_err(|e| fail(&e))?
        .promisc(false)
        .immediate_mode(true)
        .snaplen(SNAPLEN)
        .buffer_size(BUFFER_BYTES)
        .open()
        .map_err(|e| fail(&e))?;
    let linktype = capture.get_datalink();
    let link = Link::of(linktype.0 as u32, cfg!(target_endian = "big"))
        .ok_or_else(|| fail(&format!("unsupported link type {linktype:?}")))?;
    capture
        .filter(&filter_for(link), true)
        .map_err(|e| fail(&e))?;
    let capture = capture.setnonblock().map_err(|e| fail(&e))?;
    Ok(Opened {
        name: name.to_string(),
        link,
        capture,
    })
}

type Local = watch::Receiver<Arc<HashSet<IpAddr>>>;

/// The opened captures, as a running source.
pub struct PcapSource(pub Vec<Opened>);

impl Stream for PcapSource {
    fn name(&self) -> &'static str {
        "pcap"
    }

    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(run(self.0, ctx))
    }
}

/// Runs the captures until the receiver goes away (`Ok`). A capture that
/// fails, or whose interface is re-created, is reopened (see [`link`]).
async fn run(opened: Vec<Opened>, ctx: Context) -> anyhow::Result<()> {
    let Context { clock, out, health } = ctx;
    let (publish, local) = watch::channel(Arc::new(host_addresses().await?));
    let publish = Arc::new(publish);
    let mut tasks = JoinSet::new();
    tasks.spawn(refresh_addresses(publish.clone()));
    let names: Vec<String> = opened.iter().map(|c| c.name.clone()).collect();
    for capture in opened {
        let index = iface::lookup(&capture.name).map_or(0, |l| l.index);
        let watched = link::Watched::new("pcap", &capture.name, index, health.clone());
        tasks.spawn(watch_interface(
            capture,
            watched,
            Bound {
                clock: clock.clone(),
                local: local.clone(),
                out: out.clone(),
                publish: publish.clone(),
            },
        ));
    }
    let _running = crate::health::Running::new(health);
    diag::note(format_args!("watching: pcap on {}", names.join(", ")));
    // The first task to end means the pipeline is shutting down.
    tasks.join_next().await;
    Ok(())
}

/// Every address of every interface (the allowlist's reader: one source of
/// truth for "this host").
async fn host_addresses() -> anyhow::Result<HashSet<IpAddr>> {
    let addrs = tokio::task::spawn_blocking(addrs::host)
        .await
        .context("address task failed")?
        .context("cannot list the host's addresses")?;
    Ok(addrs.into_iter().map(|a| a.to_canonical()).collect())
}

type Publish = Arc<watch::Sender<Arc<HashSet<IpAddr>>>>;

async fn refresh_addresses(publish: Publish) {
    let mut ticks = tokio::time::interval(ADDRESSES_EVERY);
    let mut fault = diag::Fault::default();
    loop {
        ticks.tick().await;
        match host_addresses().await {
            Ok(addrs) => {
                fault.clear();
                if publish.send(Arc::new(addrs)).is_err() {
                    return;
                }
            }
            // Keep the last list: addresses rarely all vanish at once.
            Err(e) => {
                fault.fail(|| format!("pcap source: {e:#}"));
            }
        }
    }
}

/// What every capture of the source shares.
struct Bound {
    clock: Arc<dyn Clock>,
    local: Local,
    out: mpsc::Sender<Observation>,
    /// Where the host's addresses are published.
    publish: Publish,
}

/// One interface for the agent's life: captures, checking the interface by
/// name every few seconds beside it. A capture that fails, or whose
/// interface was replaced by a new one of the same name, is reopened once
/// the interface is up. (A capture survives its interface going down and
/// up: nothing to reopen then.) Returns when the pipeline stops listening.
async fn watch_interface(opened: Opened, mut watched: link::Watched, bound: Bound) {
    let mut checks = tokio::time::interval(link::CHECK_EVERY);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut capture = Some(opened);
    loop {
        if let Some(opened) = capture.take() {
            let mut pumping = std::pin::pin!(pump(
                opened,
                bound.clock.clone(),
                bound.local.clone(),
                bound.out.clone()
            ));
            loop {
                tokio::select! {
                    ended = &mut pumping => match ended {
                        Ok(()) => return,
                        Err(e) => {
                            watched.broke(&e);
                            break;
                        }
                    },
                    _ = checks.tick() => {
                        if watched.check().is_some_and(|now| watched.replaced(now)) {
                            break;
                        }
                    }
                }
            }
        }
        checks.tick().await;
        if bound.out.is_closed() {
            return;
        }
        let Some(now) = watched.check().filter(|now| now.up) else {
            continue;
        };
        match open_one(watched.name()) {
            Ok(again) => {
                // The addresses came back with the interface: know them
                // before the first SYN, or it would not look like ours.
                if let Ok(addrs) = host_addresses().await {
                    bound.publish.send_replace(Arc::new(addrs));
                }
                watched.attached(now, "capture reopened");
                capture = Some(again);
            }
            Err(e) => watched.retry_failed(&e),
        }
    }
}

/// Reads one capture on a thread of its own (see [`read_ring`]) until the
/// receiver is gone (`Ok`) or the capture fails (`Err`). Dropping the
/// future stops the thread within [`WAIT_AT_MOST`].
async fn pump(
    opened: Opened,
    clock: Arc<dyn Clock>,
    local: Local,
    out: mpsc::Sender<Observation>,
) -> anyhow::Result<()> {
    let stop = Stop::default();
    let flag = stop.0.clone();
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tcpwatch-pcap".into())
        .spawn(move || {
            let _ = done.send(read_ring(opened, clock.as_ref(), &local, &out, &flag));
        })
        .context("cannot start the capture thread")?;
    ended
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the capture thread ended")))
}

/// Set when the [`pump`] that started a capture thread is dropped.
#[derive(Default)]
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The capture loop: what the ring holds is read in one `pcap_dispatch`
/// (no copy per frame), turned into observations with one clock reading
/// and one look at the host's addresses, and handed on; kernel drop
/// counters every [`STATS_EVERY`]. While frames keep coming the ring is
/// read once per [`PACE`] (see there); otherwise the thread waits in
/// `poll` for the next frame.
fn read_ring(
    opened: Opened,
    clock: &dyn Clock,
    local: &Local,
    out: &mpsc::Sender<Observation>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let Opened {
        link, mut capture, ..
    } = opened;
    let mut drops = Drops::default();
    let mut probes = probes::Probes::new();
    let mut batch = Vec::new();
    let mut next_stats = Instant::now() + STATS_EVERY;
    let mut next_fragments = Instant::now() + FRAGMENTS_EVERY;
    let mut last_pass: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) || out.is_closed() {
            return Ok(());
        }
        let at = clock.now();
        let read = {
            let addrs = local.borrow();
            let is_local = |ip: IpAddr| addrs.contains(&ip);
            capture.dispatch(Some(READ_AT_ONCE), |packet| {
                if let Some(seen) = parse(link, packet.data) {
                    probes.frame(at, seen, &is_local, &mut |o| batch.push(o));
                }
            })?
        };
        let now = Instant::now();
        if now >= next_fragments {
            if probes.pending() > 0 {
                let addrs = local.borrow();
                let is_local = |ip: IpAddr| addrs.contains(&ip);
                probes.expire(clock.now().mono, &is_local, &mut |o| batch.push(o));
            }
            next_fragments = now + FRAGMENTS_EVERY;
        }
        if now >= next_stats {
            let lost = drops.lost_since_last(capture.stats()?);
            batch.extend(lost.map(|count| Observation::Lost {
                count,
                source: "pcap",
            }));
            next_stats = now + STATS_EVERY;
        }
        for observation in batch.drain(..) {
            if out.blocking_send(observation).is_err() {
                return Ok(());
            }
        }
        if read == READ_AT_ONCE {
            // More is waiting.
            continue;
        }
        if read > 0 {
            let busy = last_pass.is_some_and(|last| now - last < BUSY);
            last_pass = Some(now);
            if busy {
                std::thread::sleep(PACE);
                continue;
            }
        }
        let tick = if probes.pending() > 0 {
            next_stats.min(next_fragments)
        } else {
            next_stats
        };
        let wait = tick.saturating_duration_since(Instant::now());
        poll::readable(&capture, wait.min(WAIT_AT_MOST)).context("cannot wait for the capture")?;
    }
}

/// pcap's drop counters are totals since the capture opened, 32 bits wide;
/// this turns them into increments.
#[derive(Debug, Default)]
struct Drops {
    kernel: u32,
    interface: u32,
}

impl Drops {
    /// Packets dropped since the last reading, if any. `if_dropped` counts
    /// every frame the interface dropped, not only SYNs: an upper bound.
    fn lost_since_last(&mut self, stat: pcap::Stat) -> Option<u64> {
        let kernel = stat.dropped.wrapping_sub(self.kernel);
        let interface = stat.if_dropped.wrapping_sub(self.interface);
        self.kernel = stat.dropped;
        self.interface = stat.if_dropped;
        let lost = u64::from(kernel) + u64::from(interface);
        (lost > 0).then_some(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counters_become_increments_across_wraparound() {
        let stat = |dropped, if_dropped| pcap::Stat {
            received: 0,
            dropped,
            if_dropped,
        };
        let mut drops = Drops::default();
        assert_eq!(drops.lost_since_last(stat(0, 0)), None);
        assert_eq!(drops.lost_since_last(stat(5, 2)), Some(7));
        assert_eq!(drops.lost_since_last(stat(5, 2)), None);
        assert_eq!(
            drops.lost_since_last(stat(u32::MAX, 2)),
            Some(u64::from(u32::MAX - 5))
        );
        assert_eq!(drops.lost_since_last(stat(3, 2)), Some(4));
    }
}
