//! The `tracepoint` source: the kernel's TCP tracepoints
//! ([`crate::bpf::tracepoint`]) report every new connection of the host, in
//! every network namespace (containers, pods) and on loopback, IPv4 and
//! IPv6, with its owner where the kernel knows it:
//!
//! - outbound: once per connect(), when the socket leaves SYN_SENT (answered,
//!   refused or closed) or first retransmits its SYN (unanswered for 1 s);
//!   the owner is the process that called connect();
//! - inbound: once per accepted connection, when the listener's child socket
//!   reaches ESTABLISHED; the owner is the process that called listen()
//!   (for a listener older than the agent, the one [`listeners`] finds);
//! - a connection between two sockets of one network namespace (loopback)
//!   once, by its accepting end, as that namespace's socket table shows it
//!   once;
//! - reset probes: a SYN to a closed port, answered with a reset: a
//!   [`Observation::Probe`] of a SYN scan, which counts toward the scan and
//!   prints no line (no connection was made).
//!
//! Each namespace is a host of its own: a connection from one namespace of
//! this machine to another is one namespace's outbound connection and the
//! other's inbound one, two lines, each with its namespace and owner.
//!
//! Records arrive through a ring buffer; the ones the kernel could not queue
//! (ring buffer full) are counted, and so are records this side cannot
//! decode. Each connection is attributed by [`attribution`]: the network
//! namespace's inode, the cgroup path, the container id and the Kubernetes
//! pod.

pub mod attribution;
pub mod listeners;

use super::stream::{Context, Stream};
use crate::bpf::tcpstate::{decode, Kind, Record};
use crate::bpf::tracepoint::{self as program, LoadOptions, Loaded};
use crate::clock::Stamp;
use crate::diag;
use crate::event::{Observation, ScanKind};
use crate::setting::{Toml, Value};
use anyhow::Context as _;
use attribution::{Attribution, Paths, Traits};
use futures_util::future::BoxFuture;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name in lines and metric labels.
pub const NAME: &str = "tracepoint";
/// Records drained from the ring buffer before they are handed on.
const BATCH: usize = 1024;
/// How often the loss counter is read.
const LOSS_PERIOD: Duration = Duration::from_secs(1);

/// The ring buffer size (`--tracepoint-ring`): a power of two, at least a
/// page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSize(pub u32);

impl RingSize {
    /// 4 MiB: about 43,000 records, a few seconds of the fastest connection
    /// storm two cores make.
    pub const DEFAULT: RingSize = RingSize(4 << 20);
    const MIN: u64 = 4096;
    const MAX: u64 = 1 << 30;
}

impl Value for RingSize {
    const TOML: Toml = Toml::IntegerOrString;
    fn parse(text: &str) -> Result<Self, String> {
        let (digits, unit) = match text.strip_suffix(['K', 'k']) {
            Some(d) => (d, 1u64 << 10),
            None => match text.strip_suffix(['M', 'm']) {
                Some(d) => (d, 1 << 20),
                None => (text, 1),
            },
        };
        let bytes = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .ok_or_else(|| {
                format!(
                    "'{}' is not a size in bytes (4096, 64K, 4M)",
                    crate::text::printable(text)
                )
            })?;
        if !(Self::MIN..=Self::MAX).contains(&bytes) || !bytes.is_power_of_two() {
            return Err(format!(
                "{bytes} bytes: must be a power of two from 4K to 1024M"
            ));
        }
        Ok(RingSize(bytes as u32))
    }
    fn show(&self) -> String {
        let bytes = self.0;
        if bytes.is_multiple_of(1 << 20) {
            format!("{}M", bytes >> 20)
        } else if bytes.is_multiple_of(1 << 10) {
            format!("{}K", bytes >> 10)
        } else {
            bytes.to_string()
        }
    }
}

/// Where the cgroup2 tree is (`--cgroup-root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupRoot {
    /// The first cgroup2 mount of this mount namespace.
    Auto,
    At(PathBuf),
}

impl Value for CgroupRoot {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(CgroupRoot::Auto),
            "" => Err("an empty path".to_string()),
            path => Ok(CgroupRoot::At(PathBuf::from(path))),
        }
    }
    fn show(&self) -> String {
        match self {
            CgroupRoot::Auto => "auto".to_string(),
            CgroupRoot::At(path) => path.display().to_string(),
        }
    }
}

/// How the source is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Ring buffer size in bytes; `None`: the program's own (4 MiB).
    pub ring_bytes: Option<u32>,
    /// The network namespaces to report, as the flag names them (`self`, or
    /// a path whose inode is the namespace's); empty: every one.
    pub netns: Vec<String>,
    /// Where attribution looks.
    pub paths: Paths,
}

/// The inode of the network namespace `name` names: `self` is this
/// process's; an inode number as `stat -L -c %i` or `readlink
/// /proc/PID/ns/net` (`net:[4026532398]`) print it is itself; anything else
/// a path to a namespace file (`/var/run/netns/X`, `/proc/PID/ns/net`),
/// followed. (Reading another process's `/proc/PID/ns/net` needs
/// CAP_SYS_PTRACE when that process holds capabilities the agent does not:
/// name such a namespace by its number, or `ip netns attach` it.)
pub fn netns_inode(name: &str) -> anyhow::Result<u64> {
    let number = name
        .strip_prefix("net:[")
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(inode) = number.parse::<u64>() {
        return Ok(inode);
    }
    let path = if name == "self" {
        Path::new("/proc/self/ns/net")
    } else {
        Path::new(name)
    };
    let meta = std::fs::metadata(path)
        .with_context(|| format!("--netns {}: cannot read {}", name, path.display()))?;
    Ok(meta.ino())
}

pub struct TracepointSource {
    loaded: Loaded,
    attribution: Attribution,
    /// Records that could not be decoded, counted as lost.
    malformed: u64,
    /// How the readiness line names what is watched.
    scope: String,
}

impl TracepointSource {
    /// Mounts tracefs if needed (said on stderr), loads and attaches the
    /// program. What works only in part (no reset probes on this kernel,
    /// no cgroup2 tree) is said once as a warning. Must run inside the
    /// tokio runtime.
    pub fn open(opts: &Options) -> anyhow::Result<TracepointSource> {
        let netns = opts
            .netns
            .iter()
            .map(|name| netns_inode(name))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let scope = match netns.len() {
            0 => "every network namespace".to_string(),
            1 => format!("network namespace {}", netns[0]),
            n => format!("{n} network namespaces"),
        };
        let mut loaded = program::load(&LoadOptions {
            ring_bytes: opts.ring_bytes,
            netns,
        })?;
        // After the attachment: a listener opened meanwhile is the program's.
        let older = listeners::existing(Path::new("/proc"));
        loaded.add_listeners(&older.listeners);
        // Some processes are unreadable even with CAP_SYS_PTRACE (a sandbox's
        // supervisor): say so only when the capability would help.
        let ptrace = crate::os::caps::get()
            .is_ok_and(|held| held.permitted.has(crate::os::caps::Cap::SysPtrace));
        if older.unreadable > 0 && !ptrace {
            diag::warn(format_args!(
                "tracepoint: cannot read the sockets of {} processes (needs CAP_SYS_PTRACE): connections to what they were listening on before the agent started carry no pid or comm",
                older.unreadable
            ));
        }
        for note in &loaded.notes {
            if note.starts_with("mounted") {
                diag::note(note);
            } else {
                diag::warn(note);
            }
        }
        let attribution = Attribution::new(&opts.paths);
        if attribution.cgroup_root().is_none() {
            diag::warn("tracepoint: no cgroup2 tree (see --cgroup-root): connections carry no cgroup path, container or pod");
        }
        Ok(TracepointSource {
            loaded,
            attribution,
            malformed: 0,
            scope,
        })
    }

    fn lost_total(&self) -> u64 {
        self.loaded.lost_total().wrapping_add(self.malformed)
    }

    /// Reads records until the receiver goes away; the attachments last as
    /// long as this future.
    async fn read(mut self, ctx: Context) -> anyhow::Result<()> {
        let Context { clock, out, health } = ctx;
        let _running = crate::health::Running::new(health);
        diag::note(format_args!("watching: {NAME}, {}", self.scope));
        let mut reported = self.lost_total();
        let mut ticks = tokio::time::interval(LOSS_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                ready = self.loaded.ring.readable_mut() => {
                    let mut guard = ready.context("ring buffer poll")?;
                    let ring = guard.get_inner_mut();
                    while batch.len() < BATCH {
                        let Some(item) = ring.next() else { break };
                        match decode(&item) {
                            Ok(record) => batch.push(record),
                            Err(_) => self.malformed += 1,
                        }
                    }
                    if batch.len() < BATCH {
                        guard.clear_ready();
                    }
                    let at = clock.now();
                    for record in batch.drain(..) {
                        let observation = observe(at, record, &mut self.attribution);
                        if out.send(observation).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                _ = ticks.tick() => {
                    let total = self.lost_total();
                    let count = total.wrapping_sub(reported);
                    reported = total;
                    if count > 0 && out.send(Observation::Lost { count, source: NAME }).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl Stream for TracepointSource {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(self.read(ctx))
    }
}

/// What one record is to the detectors: a connection with its owner, or a
/// probe of a closed port.
pub fn observe(at: Stamp, record: Record, attribution: &mut Attribution) -> Observation {
    match record.kind {
        Kind::Connection => {
            let owner = attribution.owner(Traits {
                netns: record.netns,
                pid: record.pid,
                comm: record.comm,
                cgroup_id: record.cgroup_id,
            });
            Observation::Attempt {
                at,
                conn: record.conn,
                isn: record.isn,
                owner: Some(owner),
            }
        }
        Kind::ResetProbe => Observation::Probe {
            at,
            remote: record.conn.initiator.ip(),
            local: record.conn.acceptor,
            kind: ScanKind::Syn,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::tcpstate::tests::Builder;
    use crate::bpf::tcpstate::{TCPSTATE_KIND_OUTBOUND, TCPSTATE_KIND_RESET_PROBE};
    use crate::clock::{Clock, ManualClock};
    use crate::event::{Direction, Owner};

    fn stamp() -> Stamp {
        ManualClock::new(chrono::Local::now()).now()
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(RingSize::parse("4M"), Ok(RingSize(4 << 20)));
        assert_eq!(RingSize::parse("64K"), Ok(RingSize(64 << 10)));
        assert_eq!(RingSize::parse("4096"), Ok(RingSize(4096)));
        for bad in ["", "4G", "3000", "2048", "5M", "-4K", "M", "1024M1"] {
            assert!(RingSize::parse(bad).is_err(), "{bad}");
        }
        assert!(RingSize::parse("1024M").is_ok());
        assert_eq!(RingSize::DEFAULT.show(), "4M");
        assert_eq!(RingSize(4096).show(), "4K");
        assert_eq!(CgroupRoot::parse("auto"), Ok(CgroupRoot::Auto));
        assert_eq!(
            CgroupRoot::parse("/host/cgroup").map(|r| r.show()),
            Ok("/host/cgroup".to_string())
        );
    }

    #[test]
    fn connections_are_attempts_with_their_owner_and_resets_are_probes() {
        let cgroups = tempfile::tempdir().unwrap();
        let mut attribution = Attribution::with(
            Some(cgroups.path().to_path_buf()),
            cgroups.path().join("no-pods"),
            Duration::ZERO,
        );
        let mut b = Builder::new(TCPSTATE_KIND_OUTBOUND, 4);
        b.local(&[10, 1, 0, 2], 40000)
            .remote(&[10, 1, 0, 1], 80)
            .owner(42, "curl", cgroups.path().metadata().unwrap().ino())
            .netns(4026532398)
            .isn(77);
        let at = stamp();
        match observe(at, decode(&b.0).unwrap(), &mut attribution) {
            Observation::Attempt {
                conn, isn, owner, ..
            } => {
                assert_eq!(conn.direction, Direction::Outbound);
                assert_eq!(isn, 77);
                assert_eq!(
                    owner.as_deref(),
                    Some(&Owner {
                        netns: Some(4026532398),
                        pid: Some(42),
                        comm: Some("curl".into()),
                        cgroup: Some("/".into()),
                        container_id: None,
                        pod: None,
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        let mut probe = Builder::new(TCPSTATE_KIND_RESET_PROBE, 4);
        probe
            .local(&[10, 1, 0, 1], 23)
            .remote(&[10, 1, 0, 66], 61000);
        match observe(at, decode(&probe.0).unwrap(), &mut attribution) {
            Observation::Probe {
                remote,
                local,
                kind,
                ..
            } => {
                assert_eq!(remote, "10.1.0.66".parse::<std::net::IpAddr>().unwrap());
                assert_eq!(local, "10.1.0.1:23".parse().unwrap());
                assert_eq!(kind, ScanKind::Syn);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn namespaces_are_named_by_inode() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(netns_inode("self").unwrap(), own);
        assert_eq!(netns_inode("/proc/self/ns/net").unwrap(), own);
        assert_eq!(netns_inode("4026532398").unwrap(), 4026532398);
        assert_eq!(netns_inode("net:[4026532398]").unwrap(), 4026532398);
        let e = netns_inode("/nonexistent/netns").unwrap_err();
        assert!(format!("{e:#}").starts_with("--netns /nonexistent/netns: cannot read"));
    }
}
