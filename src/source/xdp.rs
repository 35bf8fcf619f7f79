//! The `xdp` source: an XDP program (`bpf/tcpwatch.bpf.c`, built by
//! `build.rs`) reports every SYN and SYN+ACK that reaches the watched
//! interfaces through a ring buffer; this module attaches it, reads the ring
//! buffer and turns its events into [`Observation::Attempt`]s.
//!
//! Attachments are BPF links owned by [`XdpSource`]: dropping it (the
//! pipeline drops its tasks on SIGINT/SIGTERM) detaches the program, and so
//! does the kernel when the process dies, even by `kill -9`. A program left
//! behind by an older, netlink-attached run is found by name at start-up and
//! detached before attaching anew; a program of anyone else is never touched.

mod ifxdp;

use super::{link, Observation};
use crate::clock::Clock;
use crate::event::{Connection, Direction};
use anyhow::{bail, Context};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

/// The name of the program in the object and in the kernel (`bpftool prog`,
/// `ip link`): how a leftover of a previous run is recognised.
pub const PROGRAM: &str = "tcpwatch";
const RING: &str = "events";
const LOST: &str = "lost";
/// How often the loss counter is read.
const LOSS_PERIOD: Duration = Duration::from_secs(1);
/// Events drained from the ring buffer before they are handed on.
const BATCH: usize = 1024;

/// The object `build.rs` compiled; empty when clang was missing. Aligned so
/// the ELF parser can read its headers in place.
#[repr(C, align(32))]
struct Aligned<B: ?Sized>(B);
static OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/tcpwatch.bpf.o")));

/// Whether this binary carries the XDP program.
pub fn built() -> bool {
    !OBJECT.0.is_empty()
}

// ---------------------------------------------------------------------------
// Events

/// `struct event` of the BPF program: family, kind, TCP flags, pad, source
/// port, destination port, sequence number (network order), source and
/// destination addresses (16 bytes each, network order; IPv4 in the first 4).
pub const EVENT_LEN: usize = 44;
const SADDR: usize = 12;
const DADDR: usize = 28;
const KIND_SYN: u8 = 1;
const KIND_SYNACK: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEvent {
    #[error("event of {0} bytes, expected {EVENT_LEN}")]
    Length(usize),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// One decoded event: the connection and the sender's initial sequence
/// number (the same in a retransmission, new when a 4-tuple is reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynEvent {
    pub conn: Connection,
    pub isn: u32,
}

/// Turns one ring-buffer event into the connection it reports: a SYN is an
/// inbound attempt (source -> destination); a SYN+ACK answers an outbound
/// connection of this host (destination -> source).
pub fn parse_event(bytes: &[u8]) -> Result<SynEvent, BadEvent> {
    let bytes: &[u8; EVENT_LEN] = bytes
        .try_into()
        .map_err(|_| BadEvent::Length(bytes.len()))?;
    let sport = u16::from_be_bytes([bytes[4], bytes[5]]);
    let dport = u16::from_be_bytes([bytes[6], bytes[7]]);
    let addr = |at: usize| -> Result<IpAddr, BadEvent> {
        let raw = &bytes[at..at + 16];
        match bytes[0] {
            4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(raw).expect("16 bytes"),
            ))),
            other => Err(BadEvent::Family(other)),
        }
    };
    let isn = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let src = SocketAddr::new(addr(SADDR)?, sport);
    let dst = SocketAddr::new(addr(DADDR)?, dport);
    let conn = match bytes[1] {
        KIND_SYN => Connection {
            initiator: src,
            acceptor: dst,
            direction: Direction::Inbound,
        },
        KIND_SYNACK => Connection {
            initiator: dst,
            acceptor: src,
            direction: Direction::Outbound,
        },
        other => return Err(BadEvent::Kind(other)),
    };
    Ok(SynEvent { conn, isn })
}

// ---------------------------------------------------------------------------
// Interfaces

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const ARPHRD_ETHER: u32 = 1;

fn sys_net(name: &str, file: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/{file}")).ok()?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Every up, non-loopback Ethernet interface, by name (the program parses
/// Ethernet frames; L3 devices such as WireGuard are left out).
pub fn default_interfaces() -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net").context("/sys/class/net")? {
        let name = entry.context("/sys/class/net")?.file_name();
        let Some(name) = name.to_str() else { continue };
        let flags = sys_net(name, "flags").unwrap_or(0);
        if flags & IFF_UP != 0
            && flags & IFF_LOOPBACK == 0
            && sys_net(name, "type") == Some(ARPHRD_ETHER)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no up, non-loopback Ethernet interface to watch (name one with --interface)");
    }
    Ok(names)
}

fn if_index(name: &str) -> anyhow::Result<u32> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| anyhow::anyhow!("bad interface name {name:?}"))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("no such interface '{name}'");
    }
    Ok(index)
}

// ---------------------------------------------------------------------------
// The source

pub struct XdpSource {
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    blocklist: Option<crate::block::xdp::Maps>,
    /// Owns the program and its links: dropping it (and the blocklist maps,
    /// which share it) detaches them.
    bpf: Arc<std::sync::Mutex<Ebpf>>,
    /// The interfaces it is attached to, by name, as first resolved.
    interfaces: Vec<(String, u32)>,
}

/// One line of an error chain, without the verifier log's many lines.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    // Some errors repeat their source in their own text: keep each once.
    let mut line = String::new();
    for part in &parts {
        let part = part.lines().next().unwrap_or("").trim();
        if part.is_empty() || line.contains(part) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(part);
    }
    if line.contains("Operation not permitted") {
        line.push_str(" (needs root, or CAP_BPF and CAP_NET_ADMIN)");
    }
    line
}

/// How the program is loaded: what it does, and the blocklist size.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Report SYNs and SYN+ACKs through the ring buffer (`--source xdp`).
    pub report: bool,
    /// Drop the packets of blocked sources (`--block xdp`).
    pub block: bool,
    /// Entries per blocklist map (`--xdp-map-size`).
    pub map_size: u32,
}

/// Ring buffer size when the program does not report (the map must exist;
/// one page is the smallest a ring buffer can be).
const IDLE_RING: u32 = 4096;

/// Loads the program with `opts` and attaches it to `interfaces` (none:
/// every up, non-loopback Ethernet interface), replacing a leftover tcpwatch
/// program on each. Dropping the returned object detaches it.
pub fn load(interfaces: &[String], opts: &LoadOptions) -> anyhow::Result<Ebpf> {
    if !built() {
        bail!("the XDP program was not built (clang was missing at build time): install clang and rebuild, or use another --source/--block");
    }
    let interfaces = if interfaces.is_empty() {
        default_interfaces()?
    } else {
        interfaces.to_vec()
    };
    let indexes = interfaces
        .iter()
        .map(|name| if_index(name))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let report = u8::from(opts.report);
    let check = u8::from(opts.block);
    let mut loader = EbpfLoader::new();
    loader
        .override_global("report_syns", &report, true)
        .override_global("check_blocked", &check, true);
    if opts.map_size > 0 {
        loader
            .map_max_entries("blocked4", opts.map_size)
            .map_max_entries("blocked6", opts.map_size);
    }
    if !opts.report {
        loader.map_max_entries(RING, IDLE_RING);
    }
    let mut bpf = loader
        .load(&OBJECT.0)
        .map_err(|e| anyhow::anyhow!("cannot load the XDP program: {}", one_line(&e)))?;
    let program = program(&mut bpf)?;
    program
        .load()
        .map_err(|e| anyhow::anyhow!("cannot load the XDP program: {}", one_line(&e)))?;

    for (name, &index) in interfaces.iter().zip(&indexes) {
        reconcile(name, index)?;
        let (mode, _) = attach(program, name, index)?;
        if opts.report {
            eprintln!("tcpwatch: watching: xdp on {name} ({mode} mode)");
        } else {
            eprintln!("tcpwatch: xdp: blocking on {name} ({mode} mode)");
        }
    }
    Ok(bpf)
}

/// The program of a loaded object.
fn program(bpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    bpf.program_mut(PROGRAM)
        .context("the BPF object has no program 'tcpwatch'")?
        .try_into()
        .context("program 'tcpwatch' is not XDP")
}

/// Attaches `program` to interface `index` in driver mode, else generic
/// mode; the mode it got and the link.
fn attach(
    program: &mut Xdp,
    name: &str,
    index: u32,
) -> anyhow::Result<(&'static str, aya::programs::xdp::XdpLinkId)> {
    match program.attach_to_if_index(index, XdpMode::Driver) {
        Ok(link) => Ok(("driver", link)),
        Err(driver) => match program.attach_to_if_index(index, XdpMode::Skb) {
            Ok(link) => Ok(("generic", link)),
            Err(generic) => bail!(
                "cannot attach the XDP program to {name}: driver mode: {}; generic mode: {}",
                one_line(&driver),
                one_line(&generic)
            ),
        },
    }
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
        let names = if interfaces.is_empty() {
            default_interfaces()?
        } else {
            interfaces.to_vec()
        };
        let mut bpf = load(&names, &opts)?;
        let interfaces = names
            .into_iter()
            .map(|name| if_index(&name).map(|index| (name, index)))
            .collect::<anyhow::Result<_>>()?;
        let ring = RingBuf::try_from(bpf.take_map(RING).context("no ring buffer map")?)
            .context("ring buffer map")?;
        // SAFETY: the ring buffer owns its map descriptor, which stays open
        // and unchanged until the AsyncFd (which owns the ring buffer) drops.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("ring buffer poll: {e}"))?;
        let lost = PerCpuArray::try_from(bpf.take_map(LOST).context("no loss counter map")?)
            .context("loss counter map")?;
        let blocklist = if opts.block {
            Some(crate::block::xdp::Maps::take(&mut bpf)?)
        } else {
            None
        };
        let bpf = Arc::new(std::sync::Mutex::new(bpf));
        let owner: crate::block::xdp::Owner = bpf.clone();
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
    pub fn take_blocklist(&mut self) -> Option<crate::block::xdp::Maps> {
        self.blocklist.take()
    }

    fn lost_total(&self) -> u64 {
        match self.lost.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
            Err(_) => 0,
        }
    }

    /// Reads events until the receiver goes away; the attachments last as
    /// long as this future.
    pub async fn run(
        mut self,
        clock: Arc<dyn Clock>,
        out: mpsc::Sender<Observation>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<()> {
        let mut watched: Vec<link::Watched> = self
            .interfaces
            .iter()
            .map(|(name, index)| link::Watched::new("xdp", name, *index, metrics.clone()))
            .collect();
        let mut checks = tokio::time::interval(link::CHECK_EVERY);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        metrics.set_source_running(true);
        let mut losses = LossCounter::new(self.lost_total());
        let mut malformed = 0u64;
        let mut ticks = tokio::time::interval(LOSS_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.context("ring buffer poll")?;
                    let ring = guard.get_inner_mut();
                    while batch.len() < BATCH {
                        let Some(item) = ring.next() else { break };
                        match parse_event(&item) {
                            Ok(event) => batch.push((clock.now(), event.conn, event.isn)),
                            Err(_) => malformed += 1,
                        }
                    }
                    if batch.len() < BATCH {
                        guard.clear_ready();
                    }
                    for (at, conn, isn) in batch.drain(..) {
                        if out.send(Observation::Attempt { at, conn, isn }).await.is_err() {
                            return Ok(());
                        }
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
                        if out.send(Observation::Lost { count }).await.is_err() {
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
        let attached =
            program(&mut bpf).and_then(|program| attach(program, interface.name(), now.index));
        match attached {
            Ok((mode, _)) => interface.attached(now, &format!("program attached ({mode} mode)")),
            Err(e) => interface.retry_failed(&e),
        }
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

/// Removes a tcpwatch program a previous run left on the interface; refuses
/// to touch anyone else's.
fn reconcile(name: &str, index: u32) -> anyhow::Result<()> {
    let Some(attached) =
        ifxdp::query(index).with_context(|| format!("cannot read the XDP state of {name}"))?
    else {
        return Ok(());
    };
    let owner = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == attached.prog_id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_default();
    if owner != PROGRAM {
        bail!(
            "{name} already has an XDP program '{owner}' (id {}, {} mode); tcpwatch does not replace programs it did not load",
            attached.prog_id,
            attached.mode_name()
        );
    }
    match ifxdp::detach(index, attached.mode_flag) {
        Ok(()) => {
            eprintln!(
                "tcpwatch: xdp: removed the program a previous tcpwatch left on {name} (id {})",
                attached.prog_id
            );
            Ok(())
        }
        Err(e) => bail!(
            "{name} already has tcpwatch's XDP program (id {}) held by a running process (is another tcpwatch watching it?): {e:#}",
            attached.prog_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(family: u8, kind: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut e = vec![0u8; EVENT_LEN];
        e[0] = family;
        e[1] = kind;
        e[2] = if kind == KIND_SYN { 0x02 } else { 0x12 };
        e[4..6].copy_from_slice(&sport.to_be_bytes());
        e[6..8].copy_from_slice(&dport.to_be_bytes());
        e[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        e[12..12 + src.len()].copy_from_slice(src);
        e[28..28 + dst.len()].copy_from_slice(dst);
        e
    }

    fn conn(from: &str, to: &str, direction: Direction) -> Connection {
        Connection {
            initiator: from.parse().unwrap(),
            acceptor: to.parse().unwrap(),
            direction,
        }
    }

    #[test]
    fn syn_v4_is_inbound_from_source() {
        let e = event(4, KIND_SYN, &[10, 9, 0, 2], 40000, &[10, 9, 0, 1], 22);
        let got = parse_event(&e).unwrap();
        assert_eq!(
            got.conn,
            conn("10.9.0.2:40000", "10.9.0.1:22", Direction::Inbound)
        );
        assert_eq!(got.isn, 0xdead_beef);
    }

    #[test]
    fn synack_v4_is_outbound_from_destination() {
        // The SYN+ACK of 10.9.0.2:80 answering our 10.9.0.1:51000.
        let e = event(4, KIND_SYNACK, &[10, 9, 0, 2], 80, &[10, 9, 0, 1], 51000);
        assert_eq!(
            parse_event(&e).unwrap().conn,
            conn("10.9.0.1:51000", "10.9.0.2:80", Direction::Outbound)
        );
    }

    #[test]
    fn syn_v6_keeps_all_sixteen_bytes_and_port_order() {
        let src: Ipv6Addr = "fd00::2".parse().unwrap();
        let dst: Ipv6Addr = "fd00:0:0:1::ffff:1".parse().unwrap();
        let e = event(6, KIND_SYN, &src.octets(), 0x1234, &dst.octets(), 0xfffe);
        let got = parse_event(&e).unwrap().conn;
        assert_eq!(
            got,
            conn(
                "[fd00::2]:4660",
                "[fd00:0:0:1::ffff:1]:65534",
                Direction::Inbound
            )
        );
    }

    #[test]
    fn bad_events_are_errors() {
        let good = event(4, KIND_SYN, &[1, 2, 3, 4], 1, &[5, 6, 7, 8], 2);
        assert_eq!(parse_event(&good[..43]), Err(BadEvent::Length(43)));
        assert_eq!(
            parse_event(&[good.clone(), vec![0]].concat()),
            Err(BadEvent::Length(45))
        );
        assert_eq!(parse_event(&[]), Err(BadEvent::Length(0)));
        let mut fam = good.clone();
        fam[0] = 10;
        assert_eq!(parse_event(&fam), Err(BadEvent::Family(10)));
        let mut kind = good;
        kind[1] = 3;
        assert_eq!(parse_event(&kind), Err(BadEvent::Kind(3)));
    }

    #[test]
    fn any_bytes_parse_or_error_without_panic() {
        // Every family/kind byte combination over a fixed body.
        for family in 0..=255u8 {
            for kind in [0u8, 1, 2, 3, 255] {
                let mut e = vec![0xabu8; EVENT_LEN];
                e[0] = family;
                e[1] = kind;
                let ok = parse_event(&e).is_ok();
                assert_eq!(ok, matches!(family, 4 | 6) && matches!(kind, 1 | 2));
            }
        }
    }

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn error_chains_become_one_line_without_repeats() {
        let e = Chain(
            "map error: failed to create map `lost`",
            Some(Box::new(Chain(
                "failed to create map `lost`",
                Some(Box::new(Chain(
                    "Operation not permitted (os error 1)",
                    None,
                ))),
            ))),
        );
        assert_eq!(
            one_line(&e),
            "map error: failed to create map `lost`: Operation not permitted (os error 1) (needs root, or CAP_BPF and CAP_NET_ADMIN)"
        );
        let log = Chain("verifier rejected\nline 2\nline 3", None);
        assert_eq!(one_line(&log), "verifier rejected");
    }

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

    #[test]
    fn the_embedded_object_is_elf_or_empty() {
        // build.rs embeds an empty object only when clang is missing.
        assert!(!built() || OBJECT.0.starts_with(b"\x7fELF"));
    }
}
