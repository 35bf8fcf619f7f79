//! Prometheus metrics (names, types and labels in docs/metrics.md): what
//! the agent counts, and both exposition formats. [`http`] serves them.
//!
//! The stages update the handles in [`Metrics`] directly (they are atomics);
//! nothing here reads a clock or the OS, so the exposition is unit-tested.
//! Labels are closed sets (`direction`, `backend`, `family`, `source`,
//! `version`): never an address or a port, so cardinality stays fixed.

pub mod http;
pub mod recent;

use crate::setting::Value;
use crate::text::printable;
use std::net::SocketAddr;

/// Where metrics are served, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl Value for Listen {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Listen::Off);
        }
        text.parse().map(Listen::At).map_err(|_| {
            format!(
                "'{}' is not ADDR:PORT or 'off' (e.g. 127.0.0.1:9472)",
                printable(text)
            )
        })
    }
    fn show(&self) -> String {
        match self {
            Listen::Off => "off".to_string(),
            Listen::At(addr) => addr.to_string(),
        }
    }
}

crate::settings! {
    /// The metrics endpoint.
    pub struct Settings {
        /// Serve Prometheus metrics here, or 'off'
        metrics_addr: Listen = Listen::At(SocketAddr::from(([127, 0, 0, 1], 9472))) => "metrics-addr", "ADDR:PORT|off", restart;
    }
}

use crate::event::{Event, EventKind, FLEET_MESSAGES};
use crate::health::SourceHealth;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// One label, `name="value"`; values are static strings from closed sets.
type Label = [(&'static str, &'static str); 1];
/// Two labels.
type Labels2 = [(&'static str, &'static str); 2];

/// The fleet stage's state and totals (`--fleet`), copied in by the
/// pipeline: the counters move up to these totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetSample {
    /// Connected to Redis and following the fleet.
    pub up: bool,
    /// Messages by (direction, kind).
    pub messages: Vec<(&'static str, &'static str, u64)>,
    /// Drops by reason.
    pub dropped: Vec<(&'static str, u64)>,
    /// Things read from Redis that failed validation.
    pub malformed: u64,
}
type HistogramFamily = Family<Label, Histogram, fn() -> Histogram>;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every metric the agent exports (docs/metrics.md), plus the health flag `/healthz` reports.
pub struct Metrics {
    registry: Registry,
    new_connections: Family<Label, Counter>,
    port_scans: Counter,
    blocks: Family<Label, Counter>,
    blocks_skipped: Family<Label, Counter>,
    blocked_ips: Family<Label, Gauge>,
    events_lost: Family<Label, Counter>,
    poll_duration: HistogramFamily,
    tracked_sources: Gauge,
    evictions: Family<Label, Counter>,
    xdp_dropped: Family<Label, Counter>,
    xdp_evictions: Counter,
    block_errors: Family<Label, Counter>,
    blocks_dropped: Family<Label, Counter>,
    blocks_pending: Gauge,
    fleet_up: Gauge,
    fleet_messages: Family<Labels2, Counter>,
    fleet_dropped: Family<Label, Counter>,
    fleet_malformed: Counter,
    block_drift: Family<[(&'static str, &'static str); 2], Counter>,
    dropped_packets: Family<Label, Counter>,
    blocked_seen: Family<Label, Counter>,
    source_up: Family<Label, Gauge>,
    source: &'static str,
    backend: Option<&'static str>,
    /// Whether the source runs and sees traffic (`/healthz`, `/livez`).
    health: Arc<SourceHealth>,
    /// The last hour's events, for `tcpwatch status`.
    recent: recent::Recent,
}

fn poll_buckets() -> Histogram {
    // 1 ms .. ~16 s: an empty /proc/net/tcp read costs ~3.5 ms, 20k sockets
    // ~55 ms; a stalled read should still land in a finite bucket.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    /// Registers every metric; the label sets that are known up front
    /// (`source`, `backend`, both families) start at zero so that a
    /// dashboard sees the series before the first event.
    pub fn new(source: &'static str, backend: Option<&'static str>) -> Arc<Metrics> {
        Metrics::build(source, backend, false)
    }

    /// [`Metrics::new`], with the fleet's metrics when `fleet` (`--fleet`):
    /// an agent outside a fleet has no `tcpwatch_fleet_up` to alert on.
    pub fn with_fleet(
        source: &'static str,
        backend: Option<&'static str>,
        fleet: bool,
    ) -> Arc<Metrics> {
        Metrics::build(source, backend, fleet)
    }

    fn build(source: &'static str, backend: Option<&'static str>, fleet: bool) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tcpwatch");
        let new_connections = Family::<Label, Counter>::default();
        let port_scans = Counter::default();
        let blocks = Family::<Label, Counter>::default();
        let blocks_skipped = Family::<Label, Counter>::default();
        let blocked_ips = Family::<Label, Gauge>::default();
        let events_lost = Family::<Label, Counter>::default();
        let poll_duration = HistogramFamily::new_with_constructor(poll_buckets);
        let tracked_sources = Gauge::default();
        let build_info = Family::<Label, Gauge>::default();
        let evictions = Family::<Label, Counter>::default();

        // Counters are registered without `_total`: the encoder appends it
        // (and a registered `*_total` name panics in debug builds).
        registry.register(
            "new_connections",
            "New TCP connections reported, by direction",
            new_connections.clone(),
        );
        registry.register("port_scans", "Port scans detected", port_scans.clone());
        registry.register(
            "blocks",
            "Scanners blocked (or, with --dry-run, that would have been), by backend",
            blocks.clone(),
        );
        registry.register(
            "blocks_skipped",
            "Scanners reported but not blocked, by reason (allowlist, rate_limit)",
            blocks_skipped.clone(),
        );
        registry.register(
            "blocked_ips",
            "Addresses currently in the block sets, by address family",
            blocked_ips.clone(),
        );
        registry.register(
            "events_lost",
            "Events a source dropped before the detectors saw them",
            events_lost.clone(),
        );
        registry.register(
            "poll_duration_seconds",
            "Time to read the kernel's socket table once",
            poll_duration.clone(),
        );
        registry.register(
            "tracked_sources",
            "(remote, local) address pairs the scan detector is tracking",
            tracked_sources.clone(),
        );
        registry.register(
            "evictions",
            "Entries dropped from a full table (detector: connections, scan_sources, attempts; block stage: block_records; status: status_top)",
            evictions.clone(),
        );
        registry.register(
            "build_info",
            "Always 1; the version label names the build",
            build_info.clone(),
        );

        // Registered with `--block xdp` only: other agents have no program
        // to read them from.
        let xdp_dropped = Family::<Label, Counter>::default();
        let xdp_evictions = Counter::default();
        if backend == Some("xdp") {
            registry.register(
                "xdp_dropped_packets",
                "Packets of blocked addresses dropped by the XDP program, by address family",
                xdp_dropped.clone(),
            );
            registry.register(
                "xdp_blocklist_evictions",
                "New blocks that went into a full XDP blocklist map, evicting its least recently used entry",
                xdp_evictions.clone(),
            );
            for family in ["ipv4", "ipv6"] {
                let _ = xdp_dropped.get_or_create(&[("family", family)]);
            }
        }

        let block_errors = Family::<Label, Counter>::default();
        let blocks_dropped = Family::<Label, Counter>::default();
        let blocks_pending = Gauge::default();
        registry.register(
            "block_errors",
            "Firewall calls that failed (the blocks are kept and retried), by backend",
            block_errors.clone(),
        );
        registry.register(
            "blocks_dropped",
            "Blocks never applied: too many pending, or their TTL ended while the firewall failed",
            blocks_dropped.clone(),
        );
        registry.register(
            "blocks_pending",
            "Blocks decided but not applied yet (the firewall fails)",
            blocks_pending.clone(),
        );
        if let Some(backend) = backend {
            let _ = block_errors.get_or_create(&[("backend", backend)]);
            let _ = blocks_dropped.get_or_create(&[("backend", backend)]);
        }

        let fleet_up = Gauge::default();
        let fleet_messages = Family::<Labels2, Counter>::default();
        let fleet_dropped = Family::<Label, Counter>::default();
        let fleet_malformed = Counter::default();
        if fleet {
            registry.register(
                "fleet_up",
                "1 while connected to the fleet's Redis and following it",
                fleet_up.clone(),
            );
            registry.register(
                "fleet_messages",
                "Fleet messages, by direction (out: written to Redis, in: read) and kind (block, unblock, observe, scan)",
                fleet_messages.clone(),
            );
            registry.register(
                "fleet_dropped",
                "What the fleet stage dropped, by reason: queue (decisions while its queue was full), pending (decisions while Redis was down, over the cap), attempts (not sent: over the per-flush caps or Redis down), events (not delivered)",
                fleet_dropped.clone(),
            );
            registry.register(
                "fleet_malformed",
                "Entries and replies read from Redis that failed validation and were ignored",
                fleet_malformed.clone(),
            );
            for (direction, kind) in FLEET_MESSAGES {
                let _ = fleet_messages.get_or_create(&[("direction", direction), ("kind", kind)]);
            }
            for reason in FLEET_DROPS {
                let _ = fleet_dropped.get_or_create(&[("reason", reason)]);
            }
        }
        let block_drift = Family::<[(&'static str, &'static str); 2], Counter>::default();
        let dropped_packets = Family::<Label, Counter>::default();
        let blocked_seen = Family::<Label, Counter>::default();
        let source_up = Family::<Label, Gauge>::default();
        registry.register(
            "block_drift",
            "Differences found between the firewall and the agent's blocks, repaired: missing (a block gone from the firewall, applied again), unknown (an element the agent did not make, adopted)",
            block_drift.clone(),
        );
        registry.register(
            "dropped_packets",
            "Packets dropped by the blocks, by backend",
            dropped_packets.clone(),
        );
        registry.register(
            "blocked_packets_seen",
            "Packets from blocked sources that the source saw before the firewall dropped them: not reported as connections, counted as drops of their block",
            blocked_seen.clone(),
        );
        registry.register(
            "source_up",
            "1 while the source runs without a fault (what /healthz answers 200 for), else 0",
            source_up.clone(),
        );
        if let Some(backend) = backend {
            for kind in ["missing", "unknown"] {
                let _ = block_drift.get_or_create(&[("backend", backend), ("kind", kind)]);
            }
            let _ = dropped_packets.get_or_create(&[("backend", backend)]);
            let _ = blocked_seen.get_or_create(&[("source", source)]);
        }
        let _ = source_up.get_or_create(&[("source", source)]);

        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        for direction in ["inbound", "outbound"] {
            let _ = new_connections.get_or_create(&[("direction", direction)]);
        }
        let _ = events_lost.get_or_create(&[("source", source)]);
        let _ = poll_duration.get_or_create(&[("source", source)]);
        if let Some(backend) = backend {
            let _ = blocks.get_or_create(&[("backend", backend)]);
            for reason in ["allowlist", "rate_limit"] {
                let _ = blocks_skipped.get_or_create(&[("reason", reason)]);
            }
        }
        for family in ["ipv4", "ipv6"] {
            let _ = blocked_ips.get_or_create(&[("family", family)]);
        }

        Arc::new(Metrics {
            registry,
            new_connections,
            port_scans,
            blocks,
            blocks_skipped,
            blocked_ips,
            events_lost,
            poll_duration,
            tracked_sources,
            evictions,
            xdp_dropped,
            xdp_evictions,
            block_errors,
            blocks_dropped,
            blocks_pending,
            fleet_up,
            fleet_messages,
            fleet_dropped,
            fleet_malformed,
            block_drift,
            dropped_packets,
            blocked_seen,
            source_up,
            source,
            backend,
            health: Arc::new(SourceHealth::default()),
            recent: recent::Recent::default(),
        })
    }

    /// Counts an event as it is printed, so that the counters always equal
    /// the lines on stdout.
    pub fn printed(&self, event: &Event) {
        let cut = self.recent.record(event);
        if cut > 0 {
            self.evicted("status_top", cut);
        }
        match &event.kind {
            EventKind::NewConnection { conn, .. } => {
                self.new_connections
                    .get_or_create(&[("direction", conn.direction.as_str())])
                    .inc();
            }
            EventKind::PortScan(_) => {
                self.port_scans.inc();
            }
            EventKind::Blocked(block) => {
                self.blocks
                    .get_or_create(&[("backend", block.backend)])
                    .inc();
            }
            EventKind::FleetScan(_) | EventKind::Unblocked { .. } => {}
        }
    }

    /// Scanners the block stage did not block, by reason.
    pub fn blocks_skipped(&self, allowlist: u64, rate_limit: u64) {
        for (reason, n) in [("allowlist", allowlist), ("rate_limit", rate_limit)] {
            if n > 0 {
                self.blocks_skipped
                    .get_or_create(&[("reason", reason)])
                    .inc_by(n);
            }
        }
    }

    pub fn observe_poll(&self, source: &'static str, seconds: f64) {
        self.poll_duration
            .get_or_create(&[("source", source)])
            .observe(seconds);
    }

    pub fn events_lost(&self, source: &'static str, n: u64) {
        self.events_lost
            .get_or_create(&[("source", source)])
            .inc_by(n);
    }

    /// Starts the eviction counters of these detector tables at zero, so a
    /// dashboard sees them before the first eviction.
    pub fn declare_tables(&self, tables: &[&'static str]) {
        for table in tables {
            let _ = self.evictions.get_or_create(&[("table", table)]);
        }
    }

    /// `n` entries evicted from the detector table `table`.
    pub fn evicted(&self, table: &'static str, n: u64) {
        self.evictions.get_or_create(&[("table", table)]).inc_by(n);
    }

    pub fn set_tracked_sources(&self, n: usize) {
        self.tracked_sources.set(clamp(n));
    }

    pub fn set_blocked_ips(&self, v4: usize, v6: usize) {
        self.blocked_ips
            .get_or_create(&[("family", "ipv4")])
            .set(clamp(v4));
        self.blocked_ips
            .get_or_create(&[("family", "ipv6")])
            .set(clamp(v6));
    }

    /// Adds packets dropped by XDP (IPv4, IPv6) and blocklist evictions.
    pub fn xdp_dropped(&self, v4: u64, v6: u64, evictions: u64) {
        self.xdp_dropped
            .get_or_create(&[("family", "ipv4")])
            .inc_by(v4);
        self.xdp_dropped
            .get_or_create(&[("family", "ipv6")])
            .inc_by(v6);
        self.xdp_evictions.inc_by(evictions);
    }

    /// Copies the block stage's totals (failed calls, blocks never applied)
    /// and its pending blocks: the counters move up to the totals.
    pub fn set_block_health(&self, errors: u64, dropped: u64, pending: usize) {
        let Some(backend) = self.backend else {
            return;
        };
        let raise = |family: &Family<Label, Counter>, total: u64| {
            let counter = family.get_or_create(&[("backend", backend)]);
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        raise(&self.block_errors, errors);
        raise(&self.blocks_dropped, dropped);
        self.blocks_pending.set(clamp(pending));
    }

    /// Copies the fleet stage's state and totals.
    pub fn set_fleet(&self, sample: FleetSample) {
        self.fleet_up.set(i64::from(sample.up));
        for (direction, kind, total) in sample.messages {
            let counter = self
                .fleet_messages
                .get_or_create(&[("direction", direction), ("kind", kind)]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        for (reason, total) in sample.dropped {
            let counter = self.fleet_dropped.get_or_create(&[("reason", reason)]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.fleet_malformed
            .inc_by(sample.malformed.saturating_sub(self.fleet_malformed.get()));
    }

    /// Raises the drift counters to the block stage's totals: blocks the
    /// firewall lost (applied again) and elements it did not make (adopted).
    pub fn set_block_drift(&self, missing: u64, unknown: u64) {
        let Some(backend) = self.backend else {
            return;
        };
        for (kind, total) in [("missing", missing), ("unknown", unknown)] {
            let counter = self
                .block_drift
                .get_or_create(&[("backend", backend), ("kind", kind)]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Raises the dropped-packet counter to the block stage's total.
    pub fn set_dropped_packets(&self, total: u64) {
        let Some(backend) = self.backend else {
            return;
        };
        let counter = self.dropped_packets.get_or_create(&[("backend", backend)]);
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// Adds packets dropped by the backend (XDP: its per-family counters).
    pub fn add_dropped_packets(&self, n: u64) {
        if let Some(backend) = self.backend {
            self.dropped_packets
                .get_or_create(&[("backend", backend)])
                .inc_by(n);
        }
    }

    /// `n` packets from blocked sources seen and left unreported.
    pub fn blocked_seen(&self, n: u64) {
        self.blocked_seen
            .get_or_create(&[("source", self.source)])
            .inc_by(n);
    }

    /// The last hour's figures before `now` (monotonic).
    pub fn recent(&self, now: std::time::Duration, top: usize) -> recent::Summary {
        self.recent.summary(now, top)
    }

    /// The source's name (metric labels, status).
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Events the source lost so far.
    pub fn lost(&self) -> u64 {
        self.events_lost
            .get_or_create(&[("source", self.source)])
            .get()
    }

    /// Sets `tcpwatch_source_up` from the source's health, as a scrape
    /// reads it.
    fn refresh_source_up(&self) {
        let up = i64::from(self.health.ready().is_ok());
        self.source_up
            .get_or_create(&[("source", self.source)])
            .set(up);
    }

    /// The source's health, which the source updates and `/healthz` and
    /// `/livez` report.
    pub fn source_health(&self) -> Arc<SourceHealth> {
        self.health.clone()
    }

    /// OpenMetrics 1.0 text, `# EOF` included.
    pub fn openmetrics(&self) -> String {
        self.refresh_source_up();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format 0.0.4. prometheus-client 0.26
    /// encodes it natively (counters TYPEd under their `_total` name, no
    /// `_created`, `# UNIT` or `# EOF`), so no conversion of the OpenMetrics
    /// text is needed.
    pub fn prometheus_text(&self) -> String {
        self.refresh_source_up();
        let mut out = String::new();
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The reasons of `tcpwatch_fleet_dropped_total`.
pub const FLEET_DROPS: [&str; 4] = ["queue", "pending", "attempts", "events"];

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Which format an `Accept` header asks for: OpenMetrics when it lists
/// `application/openmetrics-text` with a non-zero quality (Prometheus sends
/// it first), the text format otherwise (curl, browsers, promtool).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if !media.eq_ignore_ascii_case("application/openmetrics-text") {
            return false;
        }
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .filter_map(|q| q.parse::<f64>().ok())
            .next()
            .unwrap_or(1.0);
        q > 0.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Block, Connection, Direction, PortScan};
    use std::time::Duration;

    fn event(kind: EventKind) -> Event {
        Event {
            at: Stamp {
                wall: chrono::Local::now(),
                mono: Duration::ZERO,
            },
            kind,
        }
    }

    fn sample() -> Arc<Metrics> {
        let m = Metrics::new("procfs", Some("nftables"));
        m.declare_tables(&["connections", "scan_sources", "attempts"]);
        let conn = |direction| {
            event(EventKind::NewConnection {
                conn: Connection {
                    initiator: "192.0.2.56:5973".parse().unwrap(),
                    acceptor: "10.0.0.5:80".parse().unwrap(),
                    direction,
                },
                source: "procfs",
                owner: None,
            })
        };
        m.printed(&conn(Direction::Inbound));
        m.printed(&conn(Direction::Inbound));
        m.printed(&conn(Direction::Outbound));
        m.printed(&event(EventKind::PortScan(PortScan::syn(
            "192.0.2.56".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
            vec![80, 81, 82, 83],
        ))));
        m.printed(&event(EventKind::Blocked(Block::here(
            "192.0.2.56".parse().unwrap(),
            Duration::from_secs(3600),
            "nftables",
            "node-a",
        ))));
        m.observe_poll("procfs", 0.004);
        m.set_tracked_sources(7);
        m.set_blocked_ips(1, 0);
        m.evicted("scan_sources", 8192);
        m.blocks_skipped(0, 3);
        m.set_block_health(2, 0, 1);
        m.set_block_health(3, 0, 1);
        m
    }

    /// A small checker of the 0.0.4 text format, the rules promtool and the
    /// Prometheus parser apply: every sample belongs to the family TYPEd
    /// just before it (counters by their `_total` name; histograms by
    /// `_bucket`/`_sum`/`_count`), names and labels are well-formed, values
    /// are numbers, and nothing OpenMetrics-only is left.
    fn check_text_format(text: &str) -> Result<(), String> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        };
        let mut current: Option<(String, String)> = None;
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (kind, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                match kind {
                    "HELP" => {}
                    "TYPE" => {
                        let ty = words.next().unwrap_or("");
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                            return Err(format!("bad type: {line}"));
                        }
                        if ty == "counter" && !name.ends_with("_total") {
                            return Err(format!("counter without _total: {line}"));
                        }
                        if !seen.insert(name.to_string()) {
                            return Err(format!("family TYPEd twice: {line}"));
                        }
                        current = Some((name.to_string(), ty.to_string()));
                    }
                    _ => return Err(format!("not a text-format comment: {line}")),
                }
                if !name_ok(name) {
                    return Err(format!("bad name: {line}"));
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("no value: {line}"))?;
            if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
                return Err(format!("bad value: {line}"));
            }
            let name = series.split('{').next().unwrap_or("");
            if series.contains('{') && !series.ends_with('}') {
                return Err(format!("bad labels: {line}"));
            }
            let (family, ty) = current
                .as_ref()
                .ok_or_else(|| format!("sample before TYPE: {line}"))?;
            let belongs = match ty.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{family}{s}")),
                _ => name == family,
            };
            if !belongs {
                return Err(format!("sample {name} outside its family {family}"));
            }
        }
        Ok(())
    }

    #[test]
    fn text_format_has_every_metric_with_its_type_and_labels() {
        let text = sample().prometheus_text();
        for expected in [
            "# TYPE tcpwatch_new_connections_total counter",
            "tcpwatch_new_connections_total{direction=\"inbound\"} 2",
            "tcpwatch_new_connections_total{direction=\"outbound\"} 1",
            "# TYPE tcpwatch_port_scans_total counter",
            "tcpwatch_port_scans_total 1",
            "# TYPE tcpwatch_blocks_total counter",
            "tcpwatch_blocks_total{backend=\"nftables\"} 1",
            "# TYPE tcpwatch_blocks_skipped_total counter",
            "tcpwatch_blocks_skipped_total{reason=\"allowlist\"} 0",
            "tcpwatch_blocks_skipped_total{reason=\"rate_limit\"} 3",
            "# TYPE tcpwatch_blocked_ips gauge",
            "tcpwatch_blocked_ips{family=\"ipv4\"} 1",
            "tcpwatch_blocked_ips{family=\"ipv6\"} 0",
            "# TYPE tcpwatch_events_lost_total counter",
            "tcpwatch_events_lost_total{source=\"procfs\"} 0",
            "# TYPE tcpwatch_poll_duration_seconds histogram",
            "tcpwatch_poll_duration_seconds_count{source=\"procfs\"} 1",
            "tcpwatch_poll_duration_seconds_bucket{source=\"procfs\",le=\"+Inf\"} 1",
            "# TYPE tcpwatch_tracked_sources gauge",
            "tcpwatch_tracked_sources 7",
            "# TYPE tcpwatch_evictions_total counter",
            "tcpwatch_evictions_total{table=\"scan_sources\"} 8192",
            "tcpwatch_evictions_total{table=\"connections\"} 0",
            "tcpwatch_evictions_total{table=\"attempts\"} 0",
            "# TYPE tcpwatch_build_info gauge",
            "# TYPE tcpwatch_block_errors_total counter",
            "tcpwatch_block_errors_total{backend=\"nftables\"} 3",
            "tcpwatch_blocks_dropped_total{backend=\"nftables\"} 0",
            "tcpwatch_blocks_pending 1",
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "missing line {expected:?} in\n{text}"
            );
        }
        assert!(text.contains(&format!(
            "tcpwatch_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        check_text_format(&text).unwrap();
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("_created"));
        assert!(!text.contains("# UNIT"));
    }

    #[test]
    fn fleet_metrics_only_in_a_fleet_and_moving_up_to_the_totals() {
        assert!(!sample().prometheus_text().contains("fleet"));
        let m = Metrics::with_fleet("pcap", Some("nftables"), true);
        let text = m.prometheus_text();
        for line in [
            "tcpwatch_fleet_up 0",
            "tcpwatch_fleet_messages_total{direction=\"out\",kind=\"block\"} 0",
            "tcpwatch_fleet_messages_total{direction=\"in\",kind=\"scan\"} 0",
            "tcpwatch_fleet_dropped_total{reason=\"queue\"} 0",
            "tcpwatch_fleet_malformed_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let sample = |n| FleetSample {
            up: true,
            messages: vec![("out", "block", n), ("in", "block", 2 * n)],
            dropped: vec![("attempts", n)],
            malformed: n,
        };
        m.set_fleet(sample(3));
        m.set_fleet(sample(5));
        let text = m.prometheus_text();
        for line in [
            "tcpwatch_fleet_up 1",
            "tcpwatch_fleet_messages_total{direction=\"out\",kind=\"block\"} 5",
            "tcpwatch_fleet_messages_total{direction=\"in\",kind=\"block\"} 10",
            "tcpwatch_fleet_dropped_total{reason=\"attempts\"} 5",
            "tcpwatch_fleet_malformed_total 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        check_text_format(&text).unwrap();
    }

    #[test]
    fn operators_metrics_start_at_zero_and_follow_the_stages() {
        let m = Metrics::new("pcap", Some("nftables"));
        let text = m.prometheus_text();
        for line in [
            "tcpwatch_block_drift_total{backend=\"nftables\",kind=\"missing\"} 0",
            "tcpwatch_block_drift_total{backend=\"nftables\",kind=\"unknown\"} 0",
            "tcpwatch_dropped_packets_total{backend=\"nftables\"} 0",
            "tcpwatch_blocked_packets_seen_total{source=\"pcap\"} 0",
            "tcpwatch_source_up{source=\"pcap\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.set_block_drift(2, 1);
        m.set_block_drift(3, 1);
        m.set_dropped_packets(100);
        m.set_dropped_packets(90);
        m.blocked_seen(7);
        let _running = crate::health::Running::new(m.source_health());
        let text = m.prometheus_text();
        for line in [
            "tcpwatch_block_drift_total{backend=\"nftables\",kind=\"missing\"} 3",
            "tcpwatch_block_drift_total{backend=\"nftables\",kind=\"unknown\"} 1",
            "tcpwatch_dropped_packets_total{backend=\"nftables\"} 100",
            "tcpwatch_blocked_packets_seen_total{source=\"pcap\"} 7",
            "tcpwatch_source_up{source=\"pcap\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.source_health().fault(true);
        assert!(m
            .openmetrics()
            .contains("tcpwatch_source_up{source=\"pcap\"} 0"));
        check_text_format(&text).unwrap();
    }

    #[test]
    fn no_label_holds_an_address_or_port() {
        let text = sample().prometheus_text();
        for bad in ["192.0.2.56", "10.0.0.5", "5973", "80,"] {
            assert!(!text.contains(bad), "{bad} leaked into\n{text}");
        }
    }

    #[test]
    fn the_checker_catches_what_promtool_would() {
        assert!(check_text_format("# TYPE a counter\na_total 1\n").is_err());
        assert!(check_text_format("# TYPE a_total counter\na_total 1\n# EOF\n").is_err());
        assert!(check_text_format("# TYPE a_total counter\nb_total 1\n").is_err());
        assert!(check_text_format(
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"
        )
        .is_ok());
    }

    #[test]
    fn openmetrics_ends_with_eof_and_types_counters_by_base_name() {
        let text = sample().openmetrics();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE tcpwatch_new_connections counter\n"));
        assert!(text.contains("tcpwatch_new_connections_total{direction=\"inbound\"} 2\n"));
    }

    #[test]
    fn content_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0, text/plain"
        )));
    }
}
