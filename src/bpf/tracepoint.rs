//! The tracepoint program (`bpf/tcpstate.bpf.c`, compiled by `build.rs`):
//! the embedded object, tracefs (where the kernel lists its tracepoints,
//! mounted here when it is not), loading the program and attaching its
//! three parts, and the ring buffer its records come through
//! ([`super::tcpstate`] decodes them).
//!
//! The attachments live as long as the returned [`Loaded`]: dropping it
//! detaches the programs, and so does the kernel when the process dies.

use super::tcpstate::{ListenerKey, OwnerValue};
use super::{error_line_needing, per_cpu_sum, ring_buffer};
use crate::os::fs;
use anyhow::{bail, Context};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;

/// The ring buffer of records, the per-CPU count of records it had no room
/// for, and the namespaces to report when filtering.
const RING: &str = "events";
const LOST: &str = "lost";
const NETNS_FILTER: &str = "netns_filter";
/// Listening sockets' owners, by namespace and address.
const LISTENERS: &str = "listeners";
/// `BPF_NOEXIST`: insert only where there is no entry.
const NOEXIST: u64 = 1;

// SAFETY: both are `#[repr(C)]` structs of integers and byte arrays without
// padding (build.rs refuses a header that would leave any), so every bit
// pattern is a valid value and none has uninitialised bytes.
unsafe impl aya::Pod for ListenerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for OwnerValue {}

/// The programs of the object: (name, category, tracepoint).
const STATE: (&str, &str, &str) = ("tcpw_state", "sock", "inet_sock_set_state");
const SYN_RETRANSMIT: (&str, &str, &str) = ("tcpw_synrtx", "tcp", "tcp_retransmit_skb");
const RESET: (&str, &str, &str) = ("tcpw_reset", "tcp", "tcp_send_reset");

/// What the kernel refuses without, said after an EPERM.
const NEEDS: &str = "CAP_BPF and CAP_PERFMON";

/// The object `build.rs` compiled; empty when clang was missing. Aligned so
/// the ELF parser can read its headers in place.
#[repr(C, align(32))]
struct Aligned<B: ?Sized>(B);
static OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/tcpstate.bpf.o")));

/// Whether this binary carries the tracepoint program.
pub fn built() -> bool {
    !OBJECT.0.is_empty()
}

/// The compiled object (for the layout test).
pub fn object() -> &'static [u8] {
    &OBJECT.0
}

/// How the program is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, at least a page); `None`:
    /// the program's 4 MiB (about 43,000 records).
    pub ring_bytes: Option<u32>,
    /// Report only these network namespaces (inodes); empty: every one.
    pub netns: Vec<u64>,
}

/// The program, loaded and attached.
pub struct Loaded {
    pub ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    listeners: BpfHashMap<MapData, ListenerKey, OwnerValue>,
    /// What works only in part (tracefs mounted here, no reset probes on
    /// this kernel), one line each, for the caller to say.
    pub notes: Vec<String>,
    /// Owns the programs and their attachments.
    _bpf: Ebpf,
}

impl Loaded {
    /// Records the kernel could not queue so far (ring buffer full); only
    /// grows (wrapping).
    pub fn lost_total(&self) -> u64 {
        per_cpu_sum(&self.lost, 0)
    }

    /// Names the owners of listening sockets the program did not see open
    /// (they listened before it was attached); a listener it has seen since
    /// keeps the owner it recorded. Returns how many were added.
    pub fn add_listeners(&mut self, listeners: &[(ListenerKey, OwnerValue)]) -> usize {
        listeners
            .iter()
            .filter(|(key, owner)| self.listeners.insert(key, owner, NOEXIST).is_ok())
            .count()
    }
}

/// Mounts tracefs if needed, loads the program and attaches it. Must run
/// inside the tokio runtime.
pub fn load(opts: &LoadOptions) -> anyhow::Result<Loaded> {
    if !built() {
        bail!("the tracepoint program was not built (clang was missing at build time): install clang and rebuild, or use another --source");
    }
    let tracefs = Tracefs::ensure()?;
    let mut notes = Vec::new();
    if tracefs.mounted_here {
        notes.push(format!("mounted tracefs at {}", tracefs.path.display()));
    }
    if !tracefs.event(STATE.1, STATE.2).join("id").exists() {
        bail!("this kernel has no sock:inet_sock_set_state tracepoint (Linux 4.16 or later)");
    }
    let reset_format = std::fs::read_to_string(tracefs.event(RESET.1, RESET.2).join("format"));
    let no_socket = match reset_format {
        Ok(format) => no_socket_reason(&format),
        Err(e) => Err(format!("no tcp:tcp_send_reset tracepoint: {e}")),
    };

    let mut loader = EbpfLoader::new();
    let reason = *no_socket.as_ref().unwrap_or(&0);
    let filter = u8::from(!opts.netns.is_empty());
    loader
        .override_global("no_socket_reason", &reason, true)
        .override_global("filter_netns", &filter, true)
        .map_max_entries(NETNS_FILTER, opts.netns.len().max(1) as u32);
    if let Some(bytes) = opts.ring_bytes {
        loader.map_max_entries(RING, bytes);
    }
    let mut bpf = loader.load(&OBJECT.0).map_err(|e| {
        anyhow::anyhow!(
            "cannot load the tracepoint program: {}",
            error_line_needing(&e, NEEDS)
        )
    })?;
    if !opts.netns.is_empty() {
        let mut filter: BpfHashMap<_, u64, u8> =
            BpfHashMap::try_from(bpf.map_mut(NETNS_FILTER).context("no netns filter map")?)
                .context("netns filter map")?;
        for inode in &opts.netns {
            filter
                .insert(inode, 1, 0)
                .map_err(|e| anyhow::anyhow!("netns filter: {}", error_line_needing(&e, NEEDS)))?;
        }
    }
    attach(&mut bpf, STATE)?;
    if let Err(e) = attach(&mut bpf, SYN_RETRANSMIT) {
        notes.push(format!(
            "unanswered outbound connections are reported when they give up, not after 1 s: {e:#}"
        ));
    }
    match no_socket {
        Ok(_) => {
            if let Err(e) = attach(&mut bpf, RESET) {
                notes.push(format!("probes of closed ports are not seen: {e:#}"));
            }
        }
        Err(why) => notes.push(format!("probes of closed ports are not seen: {why}")),
    }
    let ring = ring_buffer(bpf.take_map(RING).context("no ring buffer map")?)?;
    let lost = PerCpuArray::try_from(bpf.take_map(LOST).context("no loss counter map")?)
        .context("loss counter map")?;
    let listeners = BpfHashMap::try_from(bpf.take_map(LISTENERS).context("no listener map")?)
        .context("listener map")?;
    Ok(Loaded {
        ring,
        lost,
        listeners,
        notes,
        _bpf: bpf,
    })
}

fn attach(bpf: &mut Ebpf, (name, category, tracepoint): (&str, &str, &str)) -> anyhow::Result<()> {
    let program: &mut TracePoint = bpf
        .program_mut(name)
        .with_context(|| format!("the BPF object has no program '{name}'"))?
        .try_into()
        .with_context(|| format!("program '{name}' is not a tracepoint program"))?;
    program
        .load()
        .map_err(|e| anyhow::anyhow!("cannot load '{name}': {}", error_line_needing(&e, NEEDS)))?;
    program.attach(category, tracepoint).map_err(|e| {
        anyhow::anyhow!(
            "cannot attach to {category}:{tracepoint}: {}",
            error_line_needing(&e, NEEDS)
        )
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// tracefs

/// Where tracefs is looked for, in the order the loader looks.
const PLACES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A tracefs mount.
#[derive(Debug, Clone)]
pub struct Tracefs {
    pub path: PathBuf,
    /// True when this process mounted it (it is left mounted: harmless, and
    /// another tool may be using it by then).
    pub mounted_here: bool,
}

impl Tracefs {
    /// The directory of tracepoint `category/name`.
    pub fn event(&self, category: &str, name: &str) -> PathBuf {
        self.path.join("events").join(category).join(name)
    }

    /// Whether tracefs is mounted where the loader looks for it, according
    /// to this mount namespace's mount table (readable without privilege,
    /// unlike tracefs itself).
    pub fn mounted() -> bool {
        mounted_at(&fs::mount_points("tracefs")).is_some()
    }

    /// Finds tracefs, mounting it at `/sys/kernel/tracing` when it is
    /// nowhere; the error says what is missing.
    pub fn ensure() -> anyhow::Result<Tracefs> {
        if let Some(path) = mounted_at(&fs::mount_points("tracefs")) {
            readable(&path)?;
            return Ok(Tracefs {
                path,
                mounted_here: false,
            });
        }
        let target = Path::new(PLACES[0]);
        if !target.is_dir() {
            bail!(
                "tracefs is not mounted and {} does not exist (no /sys, or a kernel without tracing)",
                target.display()
            );
        }
        if let Err(e) = fs::mount("nodev", target, "tracefs", "") {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (mounting needs CAP_SYS_ADMIN; or mount it before starting: mount -t tracefs nodev /sys/kernel/tracing)"
                }
                _ => "",
            };
            bail!(
                "tracefs is not mounted and mounting it at {} failed: {e}{hint}",
                target.display()
            );
        }
        readable(target)?;
        Ok(Tracefs {
            path: target.to_path_buf(),
            mounted_here: true,
        })
    }
}

/// The first of [`PLACES`] among `mounts`.
fn mounted_at(mounts: &[PathBuf]) -> Option<PathBuf> {
    PLACES
        .iter()
        .map(PathBuf::from)
        .find(|place| mounts.contains(place))
}

/// tracefs is root's, mode 0700: another user needs CAP_DAC_READ_SEARCH.
fn readable(tracefs: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(tracefs.join("events")) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "cannot read tracefs at {}: {e} (it is root's, mode 0700: run as root, or with CAP_DAC_READ_SEARCH)",
            tracefs.display()
        ),
        Err(e) => bail!("cannot read tracefs at {}: {e}", tracefs.display()),
    }
}

/// The value of the reset reason `NO_SOCKET` (a segment that found no
/// socket: a closed port) in `tcp:tcp_send_reset`'s `format` file, after
/// checking the record has what the program reads: `reason`, and `saddr` /
/// `daddr` as 28-byte sockaddrs (Linux 6.10 and later). The error says what
/// is missing.
pub fn no_socket_reason(format: &str) -> Result<u32, String> {
    let field = |name: &str| {
        format.lines().any(|line| {
            line.trim_start()
                .strip_prefix("field:")
                .and_then(|f| f.split(';').next())
                .is_some_and(|decl| decl.split_whitespace().last() == Some(name))
        })
    };
    if !field("reason") {
        return Err("tcp_send_reset has no `reason` field (kernel older than 6.10)".into());
    }
    if !field("saddr[28]") || !field("daddr[28]") {
        return Err("tcp_send_reset does not carry saddr/daddr as 28-byte sockaddrs".into());
    }
    // print fmt: ... __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, ...)
    let at = format
        .find("\"NO_SOCKET\"")
        .ok_or("tcp_send_reset's format names no NO_SOCKET reason")?;
    let open = format[..at]
        .rfind('{')
        .ok_or("tcp_send_reset's format: NO_SOCKET without a value")?;
    let value = format[open + 1..at]
        .trim()
        .strip_suffix(',')
        .map(str::trim)
        .ok_or("tcp_send_reset's format: NO_SOCKET without a value")?;
    value
        .parse()
        .map_err(|_| format!("tcp_send_reset's format: NO_SOCKET is {value:?}, not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_is_elf_or_empty() {
        assert!(!built() || OBJECT.0.starts_with(b"\x7fELF"));
    }

    #[test]
    fn tracefs_is_found_where_the_loader_looks() {
        let mounts = |list: &[&str]| list.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            mounted_at(&mounts(&["/proc", "/sys/kernel/debug/tracing"])),
            Some(PathBuf::from("/sys/kernel/debug/tracing"))
        );
        assert_eq!(
            mounted_at(&mounts(&[
                "/sys/kernel/debug/tracing",
                "/sys/kernel/tracing"
            ])),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
        // A tracefs mounted elsewhere is not where the loader looks.
        assert_eq!(mounted_at(&mounts(&["/mnt/trace"])), None);
    }

    /// The file on Linux 6.18 (trimmed print fmt).
    const FORMAT_6_18: &str = r#"name: tcp_send_reset
ID: 2280
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;

print fmt: "skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }) : "UNKNOWN", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, { 2, "TCP_INVALID_ACK_SEQUENCE" })
"#;

    /// Linux 6.1: no reason.
    const FORMAT_6_1: &str = r#"name: tcp_send_reset
format:
	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:__u16 sport;	offset:28;	size:2;	signed:0;
	field:__u16 dport;	offset:30;	size:2;	signed:0;
	field:__u16 family;	offset:32;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:34;	size:4;	signed:0;
print fmt: "family=%s"
"#;

    #[test]
    fn no_socket_reason_of_this_kernel() {
        assert_eq!(no_socket_reason(FORMAT_6_18), Ok(1));
        let renumbered = FORMAT_6_18.replace("{ 1, \"NO_SOCKET\" }", "{ 7, \"NO_SOCKET\" }");
        assert_eq!(no_socket_reason(&renumbered), Ok(7));
    }

    #[test]
    fn older_or_odd_formats_say_what_is_missing() {
        assert!(no_socket_reason(FORMAT_6_1)
            .unwrap_err()
            .contains("no `reason`"));
        let small = FORMAT_6_18.replace("saddr[28]", "saddr[16]");
        assert!(no_socket_reason(&small).unwrap_err().contains("28-byte"));
        let unnamed = FORMAT_6_18.replace("\"NO_SOCKET\"", "\"GONE\"");
        assert!(no_socket_reason(&unnamed)
            .unwrap_err()
            .contains("no NO_SOCKET"));
        let symbolic = FORMAT_6_18.replace(
            "{ 1, \"NO_SOCKET\" }",
            "{ SK_RST_NO_SOCKET, \"NO_SOCKET\" }",
        );
        assert!(no_socket_reason(&symbolic)
            .unwrap_err()
            .contains("not a number"));
        assert!(no_socket_reason("").is_err());
    }

    #[test]
    fn the_running_kernels_format_when_tracefs_is_readable() {
        let path = "/sys/kernel/tracing/events/tcp/tcp_send_reset/format";
        if let Ok(format) = std::fs::read_to_string(path) {
            if format.contains(" reason;") {
                assert!(no_socket_reason(&format).is_ok(), "{format}");
            }
        }
    }
}
