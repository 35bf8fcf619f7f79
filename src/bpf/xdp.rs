//! The XDP program (`bpf/tcpwatch.bpf.c`, compiled by `build.rs`): the
//! embedded object, its load options, attaching it to interfaces and
//! removing a copy a previous run left.
//!
//! Attachments are BPF links owned by the loaded object: dropping it
//! detaches the program, and so does the kernel when the process dies, even
//! by `kill -9`. A program left behind by an older, netlink-attached run is
//! found by name at start-up and detached before attaching anew; a program
//! of anyone else is never touched.

use super::{error_line, ifxdp};
use crate::diag;
use crate::os::iface;
use anyhow::{bail, Context};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

/// The name of the program in the object and in the kernel (`bpftool prog`,
/// `ip link`): how a leftover of a previous run is recognised.
pub const PROGRAM: &str = "tcpwatch";
/// The ring buffer of reports, and the per-CPU count of reports it had no
/// room for.
pub const RING: &str = "events";
pub const LOST: &str = "lost";

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
    if !opts.report {
        loader.map_max_entries(RING, IDLE_RING);
    }
    let mut bpf = loader
        .load(&OBJECT.0)
        .map_err(|e| anyhow::anyhow!("cannot load the XDP program: {}", error_line(&e)))?;
    let program = program(&mut bpf)?;
    program
        .load()
        .map_err(|e| anyhow::anyhow!("cannot load the XDP program: {}", error_line(&e)))?;

    for (name, &index) in interfaces.iter().zip(&indexes) {
        reconcile(name, index)?;
        let (mode, _) = attach(program, name, index)?;
        if opts.report {
            diag::note(format_args!("watching: xdp on {name} ({mode} mode)"));
        } else {
            diag::note(format_args!("xdp: blocking on {name} ({mode} mode)"));
        }
    }
    Ok(bpf)
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
