//! Start-up: opens what the settings name, in an order that keeps the host
//! safe. Source, metrics port and state file come first: an agent that is
//! about to exit on a bad interface, a taken port or a bad state file must
//! not touch the firewall. Then the firewall, then what the state file
//! holds is put back.

use super::fleet_link::{Link, EVENTS};
use super::stages::{Parts, Source};
use crate::block::allow::Allowlist;
use crate::block::backend::Backend;
use crate::block::blocker::Blocker;
use crate::block::firewall::Firewall;
use crate::block::journal::Journal;
use crate::block::nft::Nftables;
use crate::block::nft_decide::Rule as NftRule;
use crate::block::record::Record;
use crate::block::xdp::{Stats, XdpBlock, TRACKED_PAIRS};
use crate::block::{BlockKind, OnOff};
use crate::bpf::decide::Rule;
use crate::bpf::xdp::LoadOptions;
use crate::clock::{Clock, SystemClock};
use crate::detect::Detector;
use crate::metrics::{self, Listen, Metrics};
use crate::settings::RunSettings;
use crate::sink::LineSink;
use crate::source::combined::Combined;
use crate::source::tracepoint::{self, TracepointSource};
use crate::source::{self, xdp::XdpSource, SourceKind};
use crate::state::{Loaded, StateError, StatePath, Store, StoredRecord, DEFAULT_STATE};
use crate::{diag, duration, text};
use anyhow::Context;
use futures_util::future::BoxFuture;
use ipnet::IpNet;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Everything the pipeline runs, opened.
pub struct Opened {
    pub parts: Parts,
    /// The metrics server, to run beside the stages.
    pub server: Option<BoxFuture<'static, anyhow::Result<()>>>,
    /// The control socket, bound.
    pub control: Option<super::control::Socket>,
    /// This node's name (the origin of its blocks).
    pub node: String,
}

/// Opens the parts of a run of `settings`.
pub async fn open(settings: &RunSettings) -> anyhow::Result<Opened> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let mut opening = open_source(settings)?;
    let listener = match settings.metrics.metrics_addr {
        Listen::At(addr) => Some(metrics_listener(addr)?),
        Listen::Off => None,
    };
    let mut store = open_state(&settings.state.state).await?;
    let control = super::control::bind(&settings.control);
    // Only the polling sources diff socket tables, so only they keep the
    // connection table in the state file (a real-time source would write
    // every attempt of a flood to it).
    let polling = settings.source.source.polls();
    let (backend, xdp_stats) = backend(settings, &mut opening, clock.clone());
    let source = match opening {
        Opening::Ready(source) => source,
        Opening::Xdp(xdp) => Source::Stream(xdp),
        Opening::TracepointXdp(lines, xdp) => Source::Stream(Box::new(Combined::new(lines, xdp))),
    };
    let ttl = settings.block.block_ttl;
    let firewall_clock = clock.clone();
    let firewall = tokio::task::spawn_blocking(move || {
        backend.and_then(|backend| Firewall::install(backend, ttl, firewall_clock))
    })
    .await
    .context("block set-up failed")?;
    let applies = firewall.as_ref().is_some_and(Firewall::applies);
    let metrics = Metrics::with_fleet(
        source.name(),
        firewall.as_ref().map(Firewall::name),
        settings.fleet.enabled(),
    );
    if settings.source.source == SourceKind::TracepointXdp {
        // The XDP program's losses are counted under its own name.
        metrics.events_lost("xdp", 0);
    }
    metrics.declare_tables(&crate::detect::EVICTION_TABLES);
    metrics.declare_tables(&["block_records", "status_top"]);
    // `--node-name`, else the host name: the origin of this node's blocks.
    let node = settings.fleet.node();
    let mut blocker = Blocker::new(
        firewall,
        ttl,
        Allowlist::of_host(settings.block.allow.clone()),
        clock.clone(),
    )
    .with_limit(settings.block.max_blocks_per_minute)
    .with_ttl_max(settings.block.block_ttl_max)
    .with_node(&node);
    let mut detector = Detector::new(
        source.name(),
        settings.source.report_existing,
        &settings.scan,
        &settings.limits,
    );
    if let Some((store, loaded)) = &mut store {
        let records = std::mem::take(&mut loaded.records)
            .into_iter()
            .map(record_of)
            .collect();
        blocker = blocker
            .with_records(records)
            .with_journal(Arc::new(StoreJournal(store.clone())));
        blocker =
            restore_blocks(blocker, store.clone(), std::mem::take(&mut loaded.blocks)).await?;
        if polling {
            restore_connections(&mut detector, loaded);
        }
    }
    // Last: the blocks the fleet holds are applied as soon as the block
    // stage runs.
    let fleet = open_fleet(settings)?;
    if let Some(link) = &fleet {
        republish_own(&mut blocker, &link.handle);
    }
    let server = listener.map(|listener| {
        Box::pin(serve_metrics(listener, metrics.clone())) as BoxFuture<'static, _>
    });
    Ok(Opened {
        parts: Parts {
            source,
            clock,
            metrics,
            detector,
            blocker,
            sink: LineSink::new(Box::new(std::io::stdout()), settings.sink.format),
            store: store.map(|(store, _)| store).filter(|_| polling),
            settings: settings.clone(),
            xdp_stats: xdp_stats.filter(|_| applies),
            block_tick: crate::block::firewall::RETRY_EVERY,
            fleet,
        },
        server,
        control,
        node,
    })
}

/// IPv6 sources are counted per address by the scan detector: the fleet
/// counts them the same way.
const FLEET_IPV6_PREFIX: u8 = 128;

/// Starts the fleet stage (`--fleet`). Redis being down is no error (the
/// stage says so and retries); an unreadable password or CA file is.
fn open_fleet(settings: &RunSettings) -> anyhow::Result<Option<Link>> {
    let scan = &settings.scan;
    let Some(fleet) = settings
        .fleet
        .fleet(scan.scan_ports, scan.scan_window, FLEET_IPV6_PREFIX)
    else {
        return Ok(None);
    };
    if fleet.urls.iter().any(|u| u.password.is_some()) {
        diag::warn(
            "fleet: the Redis password in --fleet is visible to every local user; use --fleet-password-file or $TCPWATCH_FLEET_PASSWORD",
        );
    }
    let (handle, events, task) =
        crate::fleet::Fleet::spawn(fleet, EVENTS).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(Link {
        handle,
        events,
        task,
    }))
}

/// Gives the fleet the blocks this node holds as its own at start-up (those
/// restored from the state file, those found in the firewall): the fleet
/// stage carries them as this node's from then on, so a Redis that lost its
/// data (restarted empty while this agent was down, or later) gets them
/// again. A ban Redis still holds until the same time is left as it is,
/// and nobody is told twice.
fn republish_own(blocker: &mut Blocker, fleet: &crate::fleet::FleetHandle) {
    for (target, expires, reason) in blocker.own_blocks() {
        // What the fleet refuses (a local target, a queue full) is counted
        // there, as for any decision of this node.
        let _ = fleet.publish_block(target, expires, &reason);
    }
}

/// A source, opened. An `xdp` source is kept apart until the `xdp` backend
/// has taken its blocklist maps (one program does both jobs).
enum Opening {
    Ready(Source),
    Xdp(Box<XdpSource>),
    /// `tracepoint,xdp`: the source of the lines and the XDP one.
    TracepointXdp(Box<TracepointSource>, Box<XdpSource>),
}

fn open_source(settings: &RunSettings) -> anyhow::Result<Opening> {
    let s = &settings.source;
    Ok(match s.source {
        SourceKind::Procfs | SourceKind::Netlink => {
            Opening::Ready(Source::Table(source::socket_table(s.source)?, s.interval))
        }
        SourceKind::Pcap => Opening::Ready(Source::Stream(Box::new(source::pcap::PcapSource(
            source::pcap::open(&s.interface)?,
        )))),
        SourceKind::Xdp => Opening::Xdp(open_xdp(settings)?),
        SourceKind::Tracepoint => Opening::Ready(Source::Stream(Box::new(TracepointSource::open(
            &tracepoint_options(s),
        )?))),
        SourceKind::TracepointXdp => {
            let lines = TracepointSource::open(&tracepoint_options(s))?;
            Opening::TracepointXdp(Box::new(lines), open_xdp(settings)?)
        }
    })
}

/// What the source settings say of the tracepoint source.
fn tracepoint_options(s: &source::Settings) -> tracepoint::Options {
    tracepoint::Options {
        ring_bytes: Some(s.tracepoint_ring.0),
        netns: s.netns.clone(),
        paths: tracepoint::attribution::Paths {
            cgroup_root: match &s.cgroup_root {
                tracepoint::CgroupRoot::Auto => None,
                tracepoint::CgroupRoot::At(path) => Some(path.clone()),
            },
            pod_logs: s.pod_logs.clone(),
        },
    }
}

/// The XDP program reporting SYNs, and dropping blocked sources too with
/// `--block xdp`.
fn open_xdp(settings: &RunSettings) -> anyhow::Result<Box<XdpSource>> {
    let block = settings.block.block == BlockKind::Xdp && !settings.block.dry_run;
    let decide = block && settings.block.xdp_decide == OnOff::On;
    let opts = LoadOptions {
        report: true,
        block,
        map_size: settings.block.xdp_map_size.0,
        decide: if decide { TRACKED_PAIRS } else { 0 },
    };
    Ok(Box::new(XdpSource::open(
        &settings.source.interface,
        &opts,
    )?))
}

/// The backend of `--block`: for `xdp`, on the `xdp` source's program when
/// there is one, else one that loads its own at install; and the handle its
/// metrics are read through.
fn backend(
    settings: &RunSettings,
    opening: &mut Opening,
    clock: Arc<dyn Clock>,
) -> (Option<Box<dyn Backend>>, Option<Stats>) {
    let shared = match (settings.block.block, settings.block.dry_run, opening) {
        (BlockKind::Xdp, false, Opening::Xdp(source))
        | (BlockKind::Xdp, false, Opening::TracepointXdp(_, source)) => source.take_blocklist(),
        _ => None,
    };
    if let Some(maps) = shared {
        let mut backend = XdpBlock::shared(maps);
        if settings.block.xdp_decide == OnOff::On {
            backend = backend.deciding(kernel_rule(settings));
        }
        let stats = backend.stats();
        return (Some(Box::new(backend)), Some(stats));
    }
    if let Some(rule) = nft_rule(settings) {
        return (Some(Box::new(Nftables::new().deciding(rule))), None);
    }
    if settings.block.block == BlockKind::Xdp && !settings.block.dry_run {
        let backend = XdpBlock::new(
            settings.source.interface.clone(),
            settings.block.xdp_map_size.0,
        );
        let stats = backend.stats();
        return (Some(Box::new(backend)), Some(stats));
    }
    (
        crate::block::backend(&settings.block, &settings.source.interface, clock),
        None,
    )
}

/// The rule the XDP program decides scans with: the detector's main rule,
/// with the block stage's TTL and cap.
fn kernel_rule(settings: &RunSettings) -> Rule {
    Rule {
        ports: settings.scan.scan_ports,
        window: settings.scan.scan_window,
        ttl: settings.block.block_ttl,
        cap: settings.block.max_blocks_per_minute.0,
        // The kernel counts IPv6 sources as the detector does.
        ipv6_prefix: settings.scan.ipv6_prefix.0,
    }
}

/// The rule nftables decides scans with (`--nft-decide on`): only with
/// `--block nftables` applied for real, and a source that sees the SYNs
/// of a SYN scan (to closed ports too), before netfilter: pcap, xdp,
/// tracepoint,xdp. With the others (procfs, netlink, tracepoint) the
/// detector would never confirm what the kernel decides.
fn nft_rule(settings: &RunSettings) -> Option<NftRule> {
    let b = &settings.block;
    let sees_syns = matches!(
        settings.source.source,
        SourceKind::Pcap | SourceKind::Xdp | SourceKind::TracepointXdp
    );
    (b.block == BlockKind::Nftables && !b.dry_run && b.nft_decide == OnOff::On && sees_syns)
        .then_some(NftRule {
            ports: settings.scan.scan_ports,
            window: settings.scan.scan_window,
            cap: b.max_blocks_per_minute.0,
            ipv6_prefix: settings.scan.ipv6_prefix.0,
        })
}

/// The state file as the block stage's journal.
struct StoreJournal(Arc<Store>);

impl Journal for StoreJournal {
    fn record(&self, targets: &[IpNet], expires: SystemTime, backend: &'static str) {
        let now = SystemTime::now();
        self.0
            .report(self.0.put_blocks(targets, expires, backend, now));
    }

    fn keep_only(&self, held: &HashSet<IpNet>) {
        let kept = self
            .0
            .retain_blocks(SystemTime::now(), |ip| held.contains(&ip));
        self.0.report(kept.map(|_| ()));
    }

    fn forget(&self, target: IpNet) {
        self.0.report(self.0.forget_block(target));
    }

    fn note(&self, records: &[(IpNet, Record)]) {
        let stored: Vec<StoredRecord> = records
            .iter()
            .map(|(target, r)| StoredRecord {
                target: *target,
                repeat: r.repeat,
                scan_ttl: r.scan_ttl,
                ttl: r.ttl,
                applied: r.applied,
                lapses: r.lapses,
                reason: r.reason.clone(),
                origin: r.origin.clone(),
            })
            .collect();
        self.0
            .report(self.0.put_records(&stored, SystemTime::now()));
    }
}

/// A stored record as the block stage keeps it.
fn record_of(stored: StoredRecord) -> (IpNet, Record) {
    (
        stored.target,
        Record {
            repeat: stored.repeat,
            scan_ttl: stored.scan_ttl,
            ttl: stored.ttl,
            applied: stored.applied,
            lapses: stored.lapses,
            reason: stored.reason,
            origin: stored.origin,
        },
    )
}

/// How often a taken metrics port is tried again.
const METRICS_RETRY: Duration = Duration::from_secs(2);

/// The metrics socket: bound, or its port taken by another process.
enum MetricsListener {
    Bound(std::net::TcpListener),
    Taken(std::net::SocketAddr),
}

/// Binds `--metrics-addr`. A taken port must not stop a security agent from
/// detecting: it is said once and retried; any other error (an address not
/// on this host, a privileged port) is a configuration error, fatal.
fn metrics_listener(addr: std::net::SocketAddr) -> anyhow::Result<MetricsListener> {
    match metrics::http::try_bind(addr) {
        Ok(listener) => Ok(MetricsListener::Bound(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            diag::warn(format_args!(
                "{}; detection goes on, retrying every {}",
                metrics::http::describe(addr, &e),
                duration::format(METRICS_RETRY)
            ));
            Ok(MetricsListener::Taken(addr))
        }
        Err(e) => Err(anyhow::anyhow!(metrics::http::describe(addr, &e))),
    }
}

/// Serves the metrics, first waiting for a taken port to be free.
async fn serve_metrics(listener: MetricsListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = match listener {
        MetricsListener::Bound(listener) => listener,
        MetricsListener::Taken(addr) => loop {
            tokio::time::sleep(METRICS_RETRY).await;
            if let Ok(listener) = metrics::http::try_bind(addr) {
                diag::note(format_args!("metrics on {addr}"));
                break listener;
            }
        },
    };
    metrics::http::serve(listener, metrics).await
}

/// Opens `--state`. The default path degrades to no state when its
/// directory cannot be written (say, not root); a path the operator named,
/// or a default file that exists but is unusable, is a fatal error.
async fn open_state(state: &StatePath) -> anyhow::Result<Option<(Arc<Store>, Loaded)>> {
    let StatePath::At(path) = state else {
        return Ok(None);
    };
    let path = path.clone();
    if path == Path::new(DEFAULT_STATE) {
        if let Err(e) = writable_dir(&path) {
            diag::warn(format_args!(
                "cannot use the state directory of {}: {e}; running without state",
                path.display()
            ));
            return Ok(None);
        }
    }
    let (store, loaded) = tokio::task::spawn_blocking(move || {
        let store = Store::open(&path)?;
        let loaded = store.load()?;
        Ok::<_, StateError>((store, loaded))
    })
    .await
    .context("state set-up failed")??;
    Ok(Some((Arc::new(store), loaded)))
}

/// Makes the default state directory and checks this process may write it.
fn writable_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    crate::os::fs::writable(dir)
}

/// Re-applies the stored blocks (one stderr line, no event: they were
/// reported when decided). A failure is a warning: the blocks stay in the
/// file for the next start.
async fn restore_blocks(
    mut blocker: Blocker,
    store: Arc<Store>,
    stored: Vec<crate::state::StoredBlock>,
) -> anyhow::Result<Blocker> {
    if stored.is_empty() {
        return Ok(blocker);
    }
    let stored: Vec<(IpNet, SystemTime)> = stored.iter().map(|b| (b.target, b.expires)).collect();
    let restore = tokio::task::spawn_blocking(move || {
        match blocker.restore(stored) {
            Ok(done) if done.kept > 0 => diag::note(format_args!(
                "{} stored blocks not applied (blocking is off or dry); kept in {}",
                done.kept,
                store.path().display()
            )),
            Ok(done) if done.applied > 0 => {
                diag::note(format_args!("restored {} blocks", done.applied))
            }
            Ok(_) => {}
            Err(e) => diag::warn(format_args!(
                "cannot restore the stored blocks: {}; kept in {}",
                text::chain(&e),
                store.path().display()
            )),
        }
        blocker
    });
    restore.await.context("block stage failed")
}

/// For polling sources: the connections already accounted for, so the
/// first table after a restart reports only those opened meanwhile.
fn restore_connections(detector: &mut Detector, loaded: &mut Loaded) {
    let table = detector.connections_mut();
    table.track_changes();
    // A file that never stored a first table cannot tell which open
    // connections were reported: start as without one.
    if loaded.primed {
        table.restore(std::mem::take(&mut loaded.connections));
    }
}
