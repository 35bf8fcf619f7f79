//! Sources: the kernel's view of TCP, behind two narrow interfaces so the
//! detectors can be fed fixtures.
//!
//! Polling sources (`procfs`, `netlink`) are [`SocketTable`]s: whole socket
//! tables, read every `--interval`, that the detectors diff to find new
//! connections. Real-time sources (`pcap`, `xdp`) are [`Stream`]s: they run
//! on their own and send each connection attempt as it happens.

pub mod link;
pub mod netlink;
pub mod pcap;
pub mod procfs;
pub mod stream;
pub mod table;
pub mod xdp;

use std::time::Duration;
pub use stream::{Context, Stream};
pub use table::SocketTable;

/// The `--source` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    Procfs,
    Netlink,
    Pcap,
    Xdp,
}
crate::value_enum!(SourceKind);

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Procfs => "procfs",
            SourceKind::Netlink => "netlink",
            SourceKind::Pcap => "pcap",
            SourceKind::Xdp => "xdp",
        }
    }

    /// Whether the source polls socket tables (and so sees connections, not
    /// attempts).
    pub fn polls(self) -> bool {
        matches!(self, SourceKind::Procfs | SourceKind::Netlink)
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
    }
}

/// Builds the polling source named on the command line.
pub fn socket_table(kind: SourceKind) -> anyhow::Result<Box<dyn SocketTable>> {
    match kind {
        SourceKind::Procfs => Ok(Box::new(procfs::Procfs::host())),
        SourceKind::Netlink => Ok(Box::new(netlink::Netlink::open()?)),
        other => anyhow::bail!("source '{}' is not available in this build", other.name()),
    }
}
