//! The `pcap` source: libpcap captures on the watched interfaces, with an
//! in-kernel BPF filter that passes only TCP SYNs without ACK, so userspace
//! wakes once per connection attempt and never for data packets.
//!
//! Each SYN becomes an [`Observation::Attempt`]: inbound when its destination
//! is an address of this host, outbound when its source is. Kernel and
//! interface drops become [`Observation::Lost`].

use super::link;
use super::stream::{Context, Stream};
use crate::clock::Clock;
use crate::diag;
use crate::event::{Connection, Direction, Observation};
use crate::os::{addrs, iface};
use anyhow::Context as _;
use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket};
use futures_util::future::BoxFuture;
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
/// Public so `examples/pcap_filter.rs` hands the benchmarks' tcpdump anchor
/// the exact filter an Ethernet capture compiles.
pub fn filter_with_vlan() -> String {
    format!("{FILTER} or (vlan and ({FILTER}))")
}

/// A burst of SYNs (a fast scan, a flood) queues here while we catch up.
const BUFFER_BYTES: i32 = 4 << 20;
/// How often kernel drop counters are read.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often the host's addresses are re-read (they change: DHCP, SLAAC).
const ADDRESSES_EVERY: Duration = Duration::from_secs(5);

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
    /// The SYN's sequence number: tells a retransmission from a new
    /// connection that reuses the same ports.
    pub isn: u32,
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
        isn: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
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
                drops.lost_since_last(stat).map(|count| Observation::Lost { count, source: "pcap" })
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
    let isn = syn.isn;
    classify(syn, |ip| local.contains(&ip)).map(|conn| Observation::Attempt {
        at,
        conn,
        isn,
        owner: None,
    })
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

    const SYN: u8 = TCP_SYN;
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const RST: u8 = TCP_RST;

    /// A 20-byte TCP header followed by 20 bytes of options, as a real SYN
    /// carries (MSS, SACK, timestamps, window scale).
    fn tcp(src: u16, dst: u16, flags: u8) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0..2].copy_from_slice(&src.to_be_bytes());
        h[2..4].copy_from_slice(&dst.to_be_bytes());
        h[12] = 10 << 4; // data offset: 40 bytes
        h[13] = flags;
        h
    }

    /// IPv4 header with `options` 32-bit words of options (IHL = 5 + options).
    fn ipv4(src: [u8; 4], dst: [u8; 4], options: usize, payload: &[u8]) -> Vec<u8> {
        let ihl = 5 + options;
        let mut h = vec![0u8; ihl * 4];
        h[0] = 0x40 | ihl as u8;
        let total = (h.len() + payload.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[8] = 64; // TTL
        h[9] = 6; // TCP
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        // Options: NOPs (type 1), which any parser must skip.
        for byte in &mut h[20..] {
            *byte = 1;
        }
        h.extend_from_slice(payload);
        h
    }

    fn ipv6(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        h[6] = 6; // next header: TCP
        h[7] = 64;
        h[8..24].copy_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
        h[24..40].copy_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(payload);
        h
    }

    fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn vlan(id: u16, ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut tag = id.to_be_bytes().to_vec();
        tag.extend_from_slice(&ether_type.to_be_bytes());
        tag.extend_from_slice(payload);
        ethernet(0x8100, &tag)
    }

    fn v4_syn(flags: u8) -> Vec<u8> {
        ethernet(
            0x0800,
            &ipv4([10, 0, 0, 7], [10, 0, 0, 5], 0, &tcp(40000, 22, flags)),
        )
    }

    fn syn(src: &str, dst: &str) -> Option<Syn> {
        Some(Syn {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            isn: 0,
        })
    }

    #[test]
    fn ipv4_syn_is_read() {
        assert_eq!(
            parse_syn(Link::Ethernet, &v4_syn(SYN)),
            syn("10.0.0.7:40000", "10.0.0.5:22")
        );
    }

    #[test]
    fn ipv6_syn_is_read() {
        let frame = ethernet(0x86dd, &ipv6("fd00::7", "fd00::5", &tcp(40000, 443, SYN)));
        assert_eq!(
            parse_syn(Link::Ethernet, &frame),
            syn("[fd00::7]:40000", "[fd00::5]:443")
        );
    }

    #[test]
    fn vlan_tagged_syn_is_read() {
        let frame = vlan(
            42,
            0x0800,
            &ipv4([10, 0, 0, 7], [10, 0, 0, 5], 0, &tcp(40000, 80, SYN)),
        );
        assert_eq!(
            parse_syn(Link::Ethernet, &frame),
            syn("10.0.0.7:40000", "10.0.0.5:80")
        );
        let frame = vlan(7, 0x86dd, &ipv6("fd00::7", "fd00::5", &tcp(1, 2, SYN)));
        assert_eq!(
            parse_syn(Link::Ethernet, &frame),
            syn("[fd00::7]:1", "[fd00::5]:2")
        );
    }

    #[test]
    fn ipv4_options_are_skipped() {
        // IHL 15: the longest IPv4 header; the ports must come from after it.
        let frame = ethernet(
            0x0800,
            &ipv4([10, 0, 0, 7], [10, 0, 0, 5], 10, &tcp(1234, 8080, SYN)),
        );
        assert_eq!(
            parse_syn(Link::Ethernet, &frame),
            syn("10.0.0.7:1234", "10.0.0.5:8080")
        );
    }

    #[test]
    fn syn_ack_rst_and_plain_ack_are_not_attempts() {
        for flags in [SYN_ACK, RST, SYN | RST, TCP_ACK, 0] {
            assert_eq!(
                parse_syn(Link::Ethernet, &v4_syn(flags)),
                None,
                "{flags:#x}"
            );
        }
    }

    #[test]
    fn truncated_frames_are_none() {
        let frame = v4_syn(SYN);
        // 14 Ethernet + 20 IPv4 + 14 TCP bytes are the least that holds the flags.
        assert!(parse_syn(Link::Ethernet, &frame[..48]).is_some());
        for len in 0..48 {
            assert_eq!(
                parse_syn(Link::Ethernet, &frame[..len]),
                None,
                "{len} bytes"
            );
        }
    }

    #[test]
    fn snaplen_cut_is_enough_for_the_longest_headers() {
        // Two VLAN tags and a 60-byte IPv4 header still fit in SNAPLEN.
        let mut inner = 0x0800u16.to_be_bytes().to_vec();
        inner.extend(ipv4([10, 0, 0, 7], [10, 0, 0, 5], 10, &tcp(5, 6, SYN)));
        let frame = vlan(1, 0x8100, &[&2u16.to_be_bytes()[..], &inner].concat());
        let cut = &frame[..SNAPLEN as usize];
        assert_eq!(
            parse_syn(Link::Ethernet, cut),
            syn("10.0.0.7:5", "10.0.0.5:6")
        );
    }

    #[test]
    fn non_tcp_and_later_fragments_are_none() {
        let mut udp = ipv4([10, 0, 0, 7], [10, 0, 0, 5], 0, &tcp(1, 2, SYN));
        udp[9] = 17;
        assert_eq!(parse_syn(Link::Ethernet, &ethernet(0x0800, &udp)), None);
        let mut fragment = ipv4([10, 0, 0, 7], [10, 0, 0, 5], 0, &tcp(1, 2, SYN));
        fragment[6..8].copy_from_slice(&100u16.to_be_bytes()); // offset 800 bytes
        assert_eq!(
            parse_syn(Link::Ethernet, &ethernet(0x0800, &fragment)),
            None
        );
        assert_eq!(parse_syn(Link::Ethernet, &ethernet(0x0806, &[0; 28])), None);
    }

    #[test]
    fn raw_and_cooked_links_are_read() {
        let packet = ipv4([10, 0, 0, 7], [10, 0, 0, 5], 0, &tcp(40000, 22, SYN));
        let want = syn("10.0.0.7:40000", "10.0.0.5:22");
        assert_eq!(parse_syn(Link::RawIp, &packet), want);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&0x0800u16.to_be_bytes());
        sll.extend_from_slice(&packet);
        assert_eq!(parse_syn(Link::LinuxSll, &sll), want);
        let mut sll2 = 0x0800u16.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.extend_from_slice(&packet);
        assert_eq!(parse_syn(Link::LinuxSll2, &sll2), want);
    }

    #[test]
    fn direction_follows_the_host_addresses() {
        let local: HashSet<IpAddr> = ["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()]
            .into_iter()
            .collect();
        let inbound = parse_attempt(Link::Ethernet, &v4_syn(SYN), &local).unwrap();
        assert_eq!(inbound.direction, Direction::Inbound);
        assert_eq!(inbound.initiator, "10.0.0.7:40000".parse().unwrap());
        assert_eq!(inbound.acceptor, "10.0.0.5:22".parse().unwrap());

        let out = ethernet(0x86dd, &ipv6("fd00::5", "fd00::9", &tcp(50000, 80, SYN)));
        let outbound = parse_attempt(Link::Ethernet, &out, &local).unwrap();
        assert_eq!(outbound.direction, Direction::Outbound);
        assert_eq!(outbound.initiator, "[fd00::5]:50000".parse().unwrap());
        assert_eq!(outbound.acceptor, "[fd00::9]:80".parse().unwrap());

        let transit = ethernet(0x86dd, &ipv6("fd00::7", "fd00::9", &tcp(1, 2, SYN)));
        assert_eq!(parse_attempt(Link::Ethernet, &transit, &local), None);
    }

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

    #[test]
    fn kernel_filter_passes_only_syns() {
        let dead = Capture::dead(Linktype(1)).unwrap();
        let program = dead.compile(&filter_with_vlan(), true).unwrap();
        let v6 = |flags| ethernet(0x86dd, &ipv6("fd00::7", "fd00::5", &tcp(1, 2, flags)));
        let tagged = vlan(
            9,
            0x0800,
            &ipv4([10, 0, 0, 7], [10, 0, 0, 5], 2, &tcp(1, 2, SYN)),
        );
        for frame in [v4_syn(SYN), v4_syn(SYN | RST), v6(SYN), tagged] {
            assert!(program.filter(&frame), "{frame:02x?}");
        }
        let udp = ethernet(0x0800, &{
            let mut p = ipv4([10, 0, 0, 7], [10, 0, 0, 5], 0, &tcp(1, 2, SYN));
            p[9] = 17;
            p
        });
        for frame in [v4_syn(SYN_ACK), v4_syn(TCP_ACK), v6(SYN_ACK), v6(RST), udp] {
            assert!(!program.filter(&frame), "{frame:02x?}");
        }
        let raw = Capture::dead(Linktype(12)).unwrap();
        assert!(raw.compile(FILTER, true).is_ok());
    }
}
