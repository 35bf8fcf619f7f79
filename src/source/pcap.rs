//! The `pcap` source: libpcap captures on the watched interfaces, with an
//! in-kernel BPF filter that passes only TCP SYNs without ACK, so userspace
//! wakes once per connection attempt and never for data packets.
//!
//! Each SYN becomes an [`Observation::Attempt`]: inbound when its destination
//! is an address of this host, outbound when its source is. Kernel and
//! interface drops become [`Observation::Lost`].

use crate::clock::Clock;
use crate::event::{Connection, Direction};
use crate::source::Observation;
use anyhow::Context;
use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket};
use futures_util::StreamExt;
use pcap::{Active, Capture, Linktype, PacketCodec, PacketStream};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Enough for Ethernet + two VLAN tags + the longest IPv4 header (60 bytes)
/// + the first 14 bytes of TCP (ports and flags), the most we read.
pub const SNAPLEN: i32 = 96;

/// SYN set, ACK clear. Classic BPF cannot walk IPv6 extension headers and
/// `tcp[tcpflags]` only works for IPv4, so the IPv6 half reads the flags at
/// a fixed offset (40-byte header + 13) and requires TCP as the *first* next
/// header: SYNs behind IPv6 extension headers are not seen.
pub const FILTER: &str = "(ip and tcp and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) \
     or (ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x02)";

/// The filter once more behind an 802.1Q tag, for tags the NIC left in the
/// frame (accelerated tags are outside the frame and match the plain filter).
/// `vlan` shifts the offsets of everything after it, so it must come last.
fn filter_with_vlan() -> String {
    format!("{FILTER} or (vlan and ({FILTER}))")
}

/// A burst of SYNs (a fast scan, a flood) queues here while we catch up.
const BUFFER_BYTES: i32 = 4 << 20;
/// How often kernel drop counters are read.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often the host's addresses are re-read (they change: DHCP, SLAAC).
const ADDRESSES_EVERY: Duration = Duration::from_secs(5);
/// How often a capture that failed (interface gone) is reopened.
const REOPEN_EVERY: Duration = Duration::from_secs(5);

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// How the frames of a capture begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Bare IPv4/IPv6 (tun devices, WireGuard).
    RawIp,
    /// Linux cooked capture v1 (16-byte header) and v2 (20 bytes).
    LinuxSll,
    LinuxSll2,
}

impl Link {
    pub fn of(linktype: Linktype) -> Option<Link> {
        match linktype.0 {
            1 => Some(Link::Ethernet),
            12 | 14 | 101 | 228 | 229 => Some(Link::RawIp),
            113 => Some(Link::LinuxSll),
            276 => Some(Link::LinuxSll2),
            _ => None,
        }
    }
}

/// A TCP SYN without ACK, as it was on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syn {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The SYN a captured frame carries; `None` for anything else, including
/// frames cut short before the TCP flags.
pub fn parse_syn(link: Link, frame: &[u8]) -> Option<Syn> {
    let packet = slice(link, frame)?;
    let (src, dst, payload) = match packet.net? {
        LaxNetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload().clone(),
        ),
        LaxNetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload().clone(),
        ),
        LaxNetSlice::Arp(_) => return None,
    };
    // A later fragment starts with data, not a TCP header.
    if payload.ip_number != IpNumber::TCP || payload.fragmented {
        return None;
    }
    let tcp = payload.payload.get(..14)?;
    let data_offset = tcp[12] >> 4;
    if data_offset < 5 || tcp[13] & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    Some(Syn {
        src: SocketAddr::new(src, port(0)),
        dst: SocketAddr::new(dst, port(2)),
    })
}

/// Splits a frame down to the IP layer. Lax: the IP payload may be cut short
/// by the snaplen.
fn slice(link: Link, frame: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    let cooked = |proto_at: usize, header: usize| {
        let proto = frame.get(proto_at..proto_at + 2)?;
        let rest = frame.get(header..)?;
        Some(LaxSlicedPacket::from_ether_type(
            EtherType(u16::from_be_bytes([proto[0], proto[1]])),
            rest,
        ))
    };
    match link {
        Link::Ethernet => LaxSlicedPacket::from_ethernet(frame).ok(),
        Link::RawIp => LaxSlicedPacket::from_ip(frame).ok(),
        Link::LinuxSll => cooked(14, 16),
        Link::LinuxSll2 => cooked(0, 20),
    }
}

/// The connection a SYN opens, seen from this host: inbound when it is
/// addressed to one of our addresses, outbound when it leaves from one.
/// Traffic between two other hosts (forwarded, bridged) is not ours.
pub fn classify(syn: Syn, is_local: impl Fn(IpAddr) -> bool) -> Option<Connection> {
    let direction = if is_local(syn.dst.ip()) {
        Direction::Inbound
    } else if is_local(syn.src.ip()) {
        Direction::Outbound
    } else {
        return None;
    };
    Some(Connection {
        initiator: syn.src,
        acceptor: syn.dst,
        direction,
    })
}

/// A frame to the attempt it reports, given the host's addresses.
pub fn parse_attempt(link: Link, frame: &[u8], local: &HashSet<IpAddr>) -> Option<Connection> {
    classify(parse_syn(link, frame)?, |ip| local.contains(&ip))
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
        .filter(|d| d.flags.is_up() && !d.flags.is_loopback() && is_kernel_interface(&d.name))
        .map(|d| d.name)
        .collect();
    if names.is_empty() {
        anyhow::bail!("pcap: no up, non-loopback interface to watch; name one with --interface");
    }
    Ok(names)
}

fn is_kernel_interface(name: &str) -> bool {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string and nothing else.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
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
    let link = Link::of(capture.get_datalink()).ok_or_else(|| {
        fail(&format!(
            "unsupported link type {:?}",
            capture.get_datalink()
        ))
    })?;
    let filter = if link == Link::Ethernet {
        filter_with_vlan()
    } else {
        FILTER.to_string()
    };
    capture.filter(&filter, true).map_err(|e| fail(&e))?;
    let capture = capture.setnonblock().map_err(|e| fail(&e))?;
    Ok(Opened {
        name: name.to_string(),
        link,
        capture,
    })
}

/// Decodes in the stream itself, so no frame is copied.
struct SynCodec(Link);

impl PacketCodec for SynCodec {
    type Item = Option<Syn>;
    fn decode(&mut self, packet: pcap::Packet<'_>) -> Option<Syn> {
        parse_syn(self.0, packet.data)
    }
}

type Local = watch::Receiver<Arc<HashSet<IpAddr>>>;

/// Runs the captures until the receiver goes away (`Ok`) or every capture
/// has failed for good (never: failed captures are reopened).
pub async fn run(
    opened: Vec<Opened>,
    clock: Arc<dyn Clock>,
    out: mpsc::Sender<Observation>,
) -> anyhow::Result<()> {
    let (publish, local) = watch::channel(Arc::new(host_addresses().await?));
    let mut tasks = JoinSet::new();
    tasks.spawn(refresh_addresses(publish));
    for capture in opened {
        tasks.spawn(watch_interface(
            capture,
            clock.clone(),
            local.clone(),
            out.clone(),
        ));
    }
    // The first task to end means the pipeline is shutting down.
    tasks.join_next().await;
    Ok(())
}

/// Every address of every interface, from pcap's device list.
async fn host_addresses() -> anyhow::Result<HashSet<IpAddr>> {
    let devices = tokio::task::spawn_blocking(pcap::Device::list)
        .await
        .context("address task failed")?
        .context("cannot list the host's addresses")?;
    Ok(devices
        .iter()
        .flat_map(|d| d.addresses.iter().map(|a| a.addr.to_canonical()))
        .collect())
}

async fn refresh_addresses(publish: watch::Sender<Arc<HashSet<IpAddr>>>) {
    let mut ticks = tokio::time::interval(ADDRESSES_EVERY);
    let mut warned = false;
    loop {
        ticks.tick().await;
        match host_addresses().await {
            Ok(addrs) => {
                warned = false;
                if publish.send(Arc::new(addrs)).is_err() {
                    return;
                }
            }
            // Keep the last list: addresses rarely all vanish at once.
            Err(e) if !warned => {
                eprintln!("tcpwatch: warning: pcap source: {e:#}");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// One interface for the agent's life: captures until the capture fails,
/// then reopens it every few seconds (an interface can go down and come
/// back). Returns when the pipeline stops listening.
async fn watch_interface(
    mut opened: Opened,
    clock: Arc<dyn Clock>,
    local: Local,
    out: mpsc::Sender<Observation>,
) {
    let name = opened.name.clone();
    loop {
        match pump(opened, clock.as_ref(), &local, &out).await {
            Ok(()) => return,
            Err(e) => eprintln!(
                "tcpwatch: warning: pcap capture on '{name}' stopped: {e:#}; reopening every {}",
                crate::duration::format(REOPEN_EVERY)
            ),
        }
        opened = loop {
            tokio::time::sleep(REOPEN_EVERY).await;
            if out.is_closed() {
                return;
            }
            if let Ok(again) = open_one(&name) {
                eprintln!("tcpwatch: pcap capture on '{name}' reopened");
                break again;
            }
        };
    }
}

/// Reads one capture: SYNs as they come, drop counters every second.
/// `Ok` when the receiver is gone, `Err` when the capture fails.
async fn pump(
    opened: Opened,
    clock: &dyn Clock,
    local: &Local,
    out: &mpsc::Sender<Observation>,
) -> anyhow::Result<()> {
    let mut stream: PacketStream<Active, SynCodec> =
        opened.capture.stream(SynCodec(opened.link))?;
    let mut drops = Drops::default();
    let mut ticks = tokio::time::interval(STATS_EVERY);
    loop {
        let observation = tokio::select! {
            packet = stream.next() => match packet {
                Some(Ok(Some(syn))) => attempt(syn, clock, local),
                Some(Ok(None)) => None,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("capture ended"),
            },
            _ = ticks.tick() => {
                let stat = stream.capture_mut().stats()?;
                drops.lost_since_last(stat).map(|count| Observation::Lost { count })
            }
        };
        if let Some(observation) = observation {
            if out.send(observation).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn attempt(syn: Syn, clock: &dyn Clock, local: &Local) -> Option<Observation> {
    let at = clock.now();
    let local = local.borrow();
    classify(syn, |ip| local.contains(&ip)).map(|conn| Observation::Attempt { at, conn })
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
