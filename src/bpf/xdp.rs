//! The XDP program (`bpf/tcpwatch.bpf.c`, compiled by `build.rs`): the
//! embedded object, its load options, attaching it to interfaces and
//! removing a copy a previous run left. When it reports, the object's TC
//! program (`tcpwatch_udp`) goes on the same interfaces' egress: it reports
//! the UDP probes this host answers with a port unreachable.
//!
//! Attachments are BPF links owned by the loaded object (XDP links, and
//! TCX links for the TC program): dropping it detaches the programs, and so
//! does the kernel when the process dies, even by `kill -9`. A program left
//! behind by an older, netlink-attached run is found by name at start-up
//! and detached before attaching anew; a program of anyone else is never
//! touched.

use super::{error_line, ifxdp};
use crate::diag;
use crate::os::iface;
use anyhow::{bail, Context};
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::programs::{LinkOrder, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

/// The name of the program in the object and in the kernel (`bpftool prog`,
/// `ip link`): how a leftover of a previous run is recognised.
pub const PROGRAM: &str = "tcpwatch";
/// The ring buffer of reports, and the per-CPU count of reports it had no
/// room for.
pub const RING: &str = "events";
pub const LOST: &str = "lost";
/// The TC egress program that reports UDP probes.
pub const UDP_PROGRAM: &str = "tcpwatch_udp";

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

/// The compiled object (empty when clang was missing at build time).
pub fn object() -> &'static [u8] {
    &OBJECT.0
}

/// Every up, non-loopback Ethernet interface, by name (the program parses
/// Ethernet frames; L3 devices such as WireGuard are left out).
pub fn default_interfaces() -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = iface::list()?
        .into_iter()
        .filter(|i| i.up && !i.loopback && i.ethernet)
        .map(|i| i.name)
        .collect();
    if names.is_empty() {
        bail!("no up, non-loopback Ethernet interface to watch (name one with --interface)");
    }
    Ok(names)
}

/// `names`, or the default interfaces when there are none.
pub fn interfaces_or_default(names: &[String]) -> anyhow::Result<Vec<String>> {
    if names.is_empty() {
        default_interfaces()
    } else {
        Ok(names.to_vec())
    }
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
    /// Decide scans in the program (with `report` and `block`): see
    /// [`super::decide`]. The pairs it tracks at most (an LRU); 0: it does
    /// not decide.
    pub decide: u32,
}

/// Ring buffer size when the program does not report (the map must exist;
/// one page is the smallest a ring buffer can be).
const IDLE_RING: u32 = 4096;

/// Ring buffer size when it reports: 4 MiB, 74,898 records of 56 bytes (a
/// 44-byte record behind its 8-byte header, rounded to 8), so 0.6 s of a
/// 120,000 SYN/s flood while the reader is held up. The reader keeps up with
/// such a flood on average (docs/sources.md); the ring absorbs its stalls:
/// under a spoofed flood the detector's tables are rebuilt now and then,
/// which held the pipeline up to 0.5 s on a busy 2-core host, where 1 MiB
/// lost 15-20 % of a 30,000 SYN/s flood and 4 MiB none. The kernel charges
/// it to the agent's memory cgroup; the reader maps it, and the pages it
/// has read count in its RSS (4 MiB more than 1 MiB did, measured).
pub const REPORT_RING: u32 = 4 << 20;

/// Loads the program with `opts` and attaches it to `interfaces` (none:
/// every up, non-loopback Ethernet interface), replacing a leftover tcpwatch
/// program on each. Dropping the returned object detaches it.
pub fn load(interfaces: &[String], opts: &LoadOptions) -> anyhow::Result<Ebpf> {
    if !built() {
        bail!("the XDP program was not built (clang was missing at build time): install clang and rebuild, or use another --source/--block");
    }
    let interfaces = interfaces_or_default(interfaces)?;
    let indexes = interfaces
        .iter()
        .map(|name| iface::index(name))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let report = u8::from(opts.report);
    let check = u8::from(opts.block);
    let decide = u8::from(opts.report && opts.block && opts.decide > 0);
    let mut loader = EbpfLoader::new();
    loader
        .override_global("report_syns", &report, true)
        .override_global("check_blocked", &check, true)
        .override_global("decide_scans", &decide, true);
    if opts.map_size > 0 {
        for map in ["blocked4", "blocked6", "blocked_nets4", "blocked_nets6"] {
            loader.map_max_entries(map, opts.map_size);
        }
    }
    // The LRU of tracked pairs is preallocated: one entry unless it is used.
    let tracks = if decide == 1 { opts.decide } else { 1 };
    loader.map_max_entries(super::decide::TRACKS, tracks);
    loader.map_max_entries(RING, if opts.report { REPORT_RING } else { IDLE_RING });
    let mut bpf = loader
        .load(&OBJECT.0)
        .map_err(|e| anyhow::anyhow!("cannot load the XDP program: {}", error_line(&e)))?;
    let program = program(&mut bpf)?;
    program
        .load()
        .map_err(|e| anyhow::anyhow!("cannot load the XDP program: {}", error_line(&e)))?;

    let mut modes = Vec::with_capacity(interfaces.len());
    for (name, &index) in interfaces.iter().zip(&indexes) {
        reconcile(name, index)?;
        modes.push(attach(program, name, index)?.0);
    }
    if !opts.report {
        for (name, mode) in interfaces.iter().zip(modes) {
            diag::note(format_args!("xdp: blocking on {name} ({mode} mode)"));
        }
        return Ok(bpf);
    }
    let udp = load_udp(&mut bpf);
    for (name, mode) in interfaces.iter().zip(modes) {
        // Before the readiness line: UDP probes are seen from then on too.
        if let Err(e) = udp
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|()| attach_udp(&mut bpf, name))
        {
            diag::warn(format_args!("xdp: UDP scans are not seen on {name}: {e:#}"));
        }
        diag::note(format_args!("watching: xdp on {name} ({mode} mode)"));
    }
    Ok(bpf)
}

/// Loads the TC program that reports UDP probes.
fn load_udp(bpf: &mut Ebpf) -> anyhow::Result<()> {
    udp_program(bpf)?
        .load()
        .map_err(|e| anyhow::anyhow!("cannot load the TC egress program: {}", error_line(&e)))
}

fn udp_program(bpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    bpf.program_mut(UDP_PROGRAM)
        .with_context(|| format!("the BPF object has no program '{UDP_PROGRAM}'"))?
        .try_into()
        .with_context(|| format!("program '{UDP_PROGRAM}' is not a TC classifier"))
}

/// Attaches the loaded TC program to the egress of interface `name` by a
/// TCX link (kernel 6.6 or later): like the XDP link, it goes when the
/// object is dropped or the process dies, and it runs beside any other
/// program on the interface.
pub fn attach_udp(bpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    udp_program(bpf)?
        .attach_with_options(
            name,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map(|_| ())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot attach the TC egress program (needs TCX, Linux 6.6 or later): {}",
                error_line(&e)
            )
        })
}

/// The program of a loaded object.
pub fn program(bpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    bpf.program_mut(PROGRAM)
        .context("the BPF object has no program 'tcpwatch'")?
        .try_into()
        .context("program 'tcpwatch' is not XDP")
}

/// Attaches `program` to interface `index` in driver mode, else generic
/// mode; the mode it got and the link.
pub fn attach(
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
                error_line(&driver),
                error_line(&generic)
            ),
        },
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
            diag::note(format_args!(
                "xdp: removed the program a previous tcpwatch left on {name} (id {})",
                attached.prog_id
            ));
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

    #[test]
    fn the_embedded_object_is_elf_or_empty() {
        // build.rs embeds an empty object only when clang is missing.
        assert!(!built() || OBJECT.0.starts_with(b"\x7fELF"));
    }
}
