//! Sources: the kernel's view of TCP, behind two narrow interfaces so the
//! detectors can be fed fixtures.
//!
//! Polling sources (`procfs`, `netlink`) are [`SocketTable`]s: whole socket
//! tables, read every `--interval`, that the detectors diff to find new
//! connections. Real-time sources (`pcap`, `xdp`, `tracepoint`) are
//! [`Stream`]s: they run on their own and send each connection attempt as
//! it happens. `tracepoint,xdp` runs two streams as one ([`combined`]).

pub mod combined;
pub mod link;
pub mod netlink;
pub mod pcap;
pub mod procfs;
pub mod stream;
pub mod table;
pub mod tracepoint;
pub mod xdp;

use std::path::PathBuf;
use std::time::Duration;
pub use stream::{Context, Stream};
pub use table::SocketTable;
use tracepoint::{CgroupRoot, RingSize};

/// The `--source` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    Procfs,
    Netlink,
    Pcap,
    Xdp,
    Tracepoint,
    /// The tracepoint source's connections, with the XDP program's SYNs as
    /// probes (the half-open ones the tracepoints cannot see).
    #[value(name = "tracepoint,xdp", alias = "xdp,tracepoint")]
    TracepointXdp,
}
crate::value_enum!(SourceKind);

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Procfs => "procfs",
            SourceKind::Netlink => "netlink",
            SourceKind::Pcap => "pcap",
            SourceKind::Xdp => "xdp",
            SourceKind::Tracepoint => "tracepoint",
            SourceKind::TracepointXdp => "tracepoint,xdp",
        }
    }

    /// Whether the source polls socket tables (and so sees connections, not
    /// attempts).
    pub fn polls(self) -> bool {
        matches!(self, SourceKind::Procfs | SourceKind::Netlink)
    }

    /// Whether it loads the XDP program on the watched interfaces.
    pub fn uses_xdp(self) -> bool {
        matches!(self, SourceKind::Xdp | SourceKind::TracepointXdp)
    }

    /// Whether it loads the tracepoint program.
    pub fn uses_tracepoint(self) -> bool {
        matches!(self, SourceKind::Tracepoint | SourceKind::TracepointXdp)
    }
}

crate::settings! {
    /// Where connections come from.
    pub struct Settings {
        /// Where connections come from
        source: SourceKind = SourceKind::Procfs => "source", "", restart, short 's';
        /// Poll period of the procfs/netlink sources (e.g. 500ms, 10s)
        interval: Duration = Duration::from_secs(10) => "interval", "DURATION", restart, short 'i';
        /// pcap/xdp: interface to watch (repeatable; default every up, non-loopback interface)
        interface: Vec<String> = Vec::new() => "interface", "IFACE", restart;
        /// Also report the connections open at start-up
        report_existing: bool = false => "report-existing", "", restart;
        /// tracepoint: report only the connections of this network namespace: its inode number, a path such as /var/run/netns/NAME, or `self` (repeatable; default every namespace)
        netns: Vec<String> = Vec::new() => "netns", "NETNS", restart;
        /// tracepoint: ring buffer size in bytes (a power of two; K and M suffixes)
        tracepoint_ring: RingSize = RingSize::DEFAULT => "tracepoint-ring", "BYTES", restart;
        /// tracepoint: the host's cgroup2 tree, where cgroup ids become paths (`auto`: the cgroup2 mount of this mount namespace)
        cgroup_root: CgroupRoot = CgroupRoot::Auto => "cgroup-root", "PATH", restart;
        /// tracepoint: the kubelet's pod log directory, where pod UIDs get their names
        pod_logs: PathBuf = PathBuf::from(tracepoint::attribution::DEFAULT_POD_LOGS) => "pod-logs", "DIR", restart;
    }
}

/// Builds the polling source named on the command line.
pub fn socket_table(kind: SourceKind) -> anyhow::Result<Box<dyn SocketTable>> {
    match kind {
        SourceKind::Procfs => Ok(Box::new(procfs::Procfs::host())),
        SourceKind::Netlink => Ok(Box::new(netlink::Netlink::open()?)),
        other => anyhow::bail!(
            "--source {} reports connections as they happen and has no socket table to list: use procfs or netlink",
            other.name()
        ),
    }
}
