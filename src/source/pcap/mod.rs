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
use crate::os::{addrs, iface};
use anyhow::Context as _;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use pcap::{Active, Capture, PacketCodec, PacketStream};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The kernel's ring for the capture: a burst of SYNs (a fast scan, a
/// flood) queues here while the agent catches up. About 36,000 frames at
/// this snaplen: a quarter of a second of a 130,000 SYN/s flood.
pub const BUFFER_BYTES: i32 = 8 << 20;
/// Frames read from the ring in one go before the observations are handed
/// on (and other tasks get a turn).
const READ_AT_ONCE: usize = 256;
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

/// Decodes in the stream itself, so no frame is copied.
struct FrameCodec(Link);

impl PacketCodec for FrameCodec {
    type Item = Option<Seen>;
    fn decode(&mut self, packet: pcap::Packet<'_>) -> Option<Seen> {
        parse(self.0, packet.data)
    }
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
            let mut pumping =
                std::pin::pin!(pump(opened, bound.clock.as_ref(), &bound.local, &bound.out));
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

/// Reads one capture: probes as they come, drop counters every second.
/// `Ok` when the receiver is gone, `Err` when the capture fails.
async fn pump(
    opened: Opened,
    clock: &dyn Clock,
    local: &Local,
    out: &mpsc::Sender<Observation>,
) -> anyhow::Result<()> {
    let mut stream: PacketStream<Active, FrameCodec> =
        opened.capture.stream(FrameCodec(opened.link))?;
    let mut drops = Drops::default();
    let mut stats = tokio::time::interval(STATS_EVERY);
    let mut fragments = tokio::time::interval(FRAGMENTS_EVERY);
    fragments.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes = probes::Probes::new();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            packet = stream.next() => {
                // What the ring holds past this packet is read at once: one
                // wake-up, one clock reading and one look at the host's
                // addresses for the lot (a flood comes in thousands).
                let at = clock.now();
                let addrs = local.borrow();
                let is_local = |ip: IpAddr| addrs.contains(&ip);
                let mut next = Some(packet);
                let mut read = 0;
                while let Some(packet) = next.take() {
                    match packet {
                        Some(Ok(Some(seen))) => {
                            probes.frame(at, seen, &is_local, &mut |o| batch.push(o));
                        }
                        Some(Ok(None)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => anyhow::bail!("capture ended"),
                    }
                    read += 1;
                    if read < READ_AT_ONCE {
                        next = stream.next().now_or_never();
                    }
                }
            }
            _ = fragments.tick(), if probes.pending() > 0 => {
                let addrs = local.borrow();
                let is_local = |ip: IpAddr| addrs.contains(&ip);
                probes.expire(clock.now().mono, &is_local, &mut |o| batch.push(o));
            }
            _ = stats.tick() => {
                let stat = stream.capture_mut().stats()?;
                batch.extend(drops.lost_since_last(stat).map(|count| Observation::Lost { count, source: "pcap" }));
            }
        };
        for observation in batch.drain(..) {
            if out.send(observation).await.is_err() {
                return Ok(());
            }
        }
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
