//! [`Records`]: what the agent remembers of each source it blocked — why,
//! for whom and when the last block was applied, and how often in a row it
//! was blocked for a scan — so that a repeat offender gets a longer block
//! and `tcpwatch blocks list` can say why each block is there.
//!
//! Escalation: a source blocked for a scan again before its record lapses
//! gets twice its previous TTL, at most `--block-ttl-max`. A record lapses
//! `--block-ttl-max` after its last block ended: that long without a block
//! is good behaviour, and the next block is a first one again. The records
//! live in the state file beside the blocks, so a restart keeps the count.
//! The table is bounded ([`MAX_RECORDS`]): when full, the record that
//! lapses soonest is evicted (and counted).

use crate::event::PortScan;
use ipnet::IpNet;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Records kept at most: as many as blocks the default cap allows in a
/// day and a half. Each is about 200 bytes.
pub const MAX_RECORDS: usize = 131_072;

/// The reason of a block added with `tcpwatch blocks add`.
pub const MANUAL: &str = "manual";
/// The reason of a block found in the firewall that the agent did not make
/// (added by hand with nft, ipset or bpftool): the agent adopts it.
pub const ADOPTED: &str = "found in the firewall";
/// Ports a scan's reason names at most; more are summed up.
const REASON_PORTS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Blocks for a scan in a row, counting the last (0: none, only manual
    /// blocks).
    pub repeat: u32,
    /// The TTL of the last block for a scan: what the next one doubles.
    pub scan_ttl: Duration,
    /// The TTL of the last block, whatever its reason.
    pub ttl: Duration,
    /// When the last block was applied.
    pub applied: SystemTime,
    /// When this record is forgotten: the last block's end plus
    /// `--block-ttl-max`.
    pub lapses: SystemTime,
    /// Why the last block was applied: `port scan 3/60s on ports
    /// 80,81,82,83`, [`MANUAL`], [`ADOPTED`].
    pub reason: String,
    /// The node that decided it.
    pub origin: String,
}

/// The reason of a block for `scan`: its rule, its ports (the first
/// [`REASON_PORTS`]) and its kind when it is not a SYN scan.
pub fn scan_reason(scan: &PortScan) -> String {
    let shown: Vec<String> = scan
        .ports
        .iter()
        .take(REASON_PORTS)
        .map(u16::to_string)
        .collect();
    let more = scan.ports.len().saturating_sub(REASON_PORTS);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let kind = scan
        .kind
        .suffix()
        .map(|k| format!(" ({k})"))
        .unwrap_or_default();
    format!(
        "port scan {} on ports {}{more}{kind}",
        scan.rule,
        shown.join(",")
    )
}

/// What the TTL and repeat count of a new block are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    /// `--block-ttl`: a first block's TTL.
    pub base: Duration,
    /// `--block-ttl-max`: at most this; at most `base` turns escalation off.
    pub max: Duration,
}

impl Escalation {
    pub fn off(&self) -> bool {
        self.max <= self.base
    }

    /// The longest TTL a block of this agent gets.
    pub fn cap(&self) -> Duration {
        self.max.max(self.base)
    }

    /// How long a record outlives the block it records.
    pub fn memory(&self) -> Duration {
        self.cap()
    }
}

#[derive(Debug, Default)]
pub struct Records {
    map: HashMap<IpNet, Record>,
    capacity: usize,
    evicted: u64,
}

impl Records {
    pub fn new() -> Self {
        Records::with_capacity(MAX_RECORDS)
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Records {
            map: HashMap::new(),
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    pub fn get(&self, target: &IpNet) -> Option<&Record> {
        self.map.get(target)
    }

    /// The TTL and repeat count of a new block of `target` for a scan at
    /// `now`: twice the last scan TTL (at least `base`, at most the cap)
    /// and one more than the last count while its record lives; `base` and
    /// 1 otherwise.
    pub fn escalate(&self, target: &IpNet, now: SystemTime, rule: Escalation) -> (Duration, u32) {
        if rule.off() {
            return (rule.base, 1);
        }
        match self.map.get(target) {
            Some(r) if r.repeat > 0 && r.lapses > now => {
                let doubled = r.scan_ttl.saturating_mul(2).max(rule.base);
                (doubled.min(rule.cap()), r.repeat.saturating_add(1))
            }
            _ => (rule.base, 1),
        }
    }

    /// Records a block of `target` applied at `now` for `ttl`: a scan's
    /// (`repeat` > 0, from [`Records::escalate`]) or another reason's,
    /// which keeps the scan count it had. Returns the record as stored.
    #[allow(clippy::too_many_arguments)]
    pub fn blocked(
        &mut self,
        target: IpNet,
        now: SystemTime,
        ttl: Duration,
        repeat: Option<u32>,
        reason: String,
        origin: &str,
        memory: Duration,
    ) -> Record {
        let before = self.map.get(&target).filter(|r| r.lapses > now);
        let (repeat, scan_ttl) = match (repeat, before) {
            (Some(n), _) => (n, ttl),
            (None, Some(r)) => (r.repeat, r.scan_ttl),
            (None, None) => (0, Duration::ZERO),
        };
        let lapses = now + ttl + memory;
        let record = Record {
            repeat,
            scan_ttl,
            ttl,
            applied: now,
            lapses: before.map_or(lapses, |r| r.lapses.max(lapses)),
            reason,
            origin: origin.to_string(),
        };
        self.put(target, record.clone());
        record
    }

    /// Stores `record` (from the state file, or as decided), evicting the
    /// record that lapses soonest when full.
    pub fn put(&mut self, target: IpNet, record: Record) {
        if !self.map.contains_key(&target) && self.map.len() >= self.capacity {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, r)| r.lapses)
                .map(|(t, _)| *t)
            {
                self.map.remove(&oldest);
                self.evicted += 1;
            }
        }
        self.map.insert(target, record);
    }

    /// Forgets the records lapsed by `now`.
    pub fn prune(&mut self, now: SystemTime) {
        self.map.retain(|_, r| r.lapses > now);
    }

    /// Records evicted from a full table since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn net(s: &str) -> IpNet {
        IpNet::from(s.parse::<std::net::IpAddr>().unwrap())
    }

    fn rule() -> Escalation {
        Escalation {
            base: Duration::from_secs(30),
            max: 2 * MIN,
        }
    }

    /// Blocks `target` for a scan at `now` as the blocker does.
    fn scan_block(r: &mut Records, target: IpNet, now: SystemTime) -> (Duration, u32) {
        let (ttl, repeat) = r.escalate(&target, now, rule());
        r.blocked(
            target,
            now,
            ttl,
            Some(repeat),
            "port scan".into(),
            "node-a",
            rule().memory(),
        );
        (ttl, repeat)
    }

    #[test]
    fn a_repeat_offender_gets_twice_its_ttl_up_to_the_max() {
        let mut r = Records::new();
        let ip = net("192.0.2.56");
        let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut got = Vec::new();
        for _ in 0..4 {
            let (ttl, repeat) = scan_block(&mut r, ip, now);
            got.push((ttl.as_secs(), repeat));
            // Scans again right after the block ends.
            now += ttl + Duration::from_secs(5);
        }
        assert_eq!(got, [(30, 1), (60, 2), (120, 3), (120, 4)]);
        assert_eq!(scan_block(&mut r, net("192.0.2.57"), now), (rule().base, 1));
    }

    #[test]
    fn the_record_lapses_after_the_max_of_good_behaviour() {
        let mut r = Records::new();
        let ip = net("192.0.2.56");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        scan_block(&mut r, ip, start);
        // The block ends at +30 s; the record at +30 s + 2 min.
        let just_before = start + Duration::from_secs(30) + 2 * MIN - Duration::from_secs(1);
        assert_eq!(r.escalate(&ip, just_before, rule()).1, 2);
        let after = start + Duration::from_secs(30) + 2 * MIN;
        assert_eq!(r.escalate(&ip, after, rule()), (rule().base, 1));
        r.prune(after);
        assert!(r.is_empty());
    }

    #[test]
    fn escalation_off_when_the_max_is_the_ttl() {
        let mut r = Records::new();
        let ip = net("192.0.2.56");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let off = Escalation {
            base: Duration::from_secs(30),
            max: Duration::from_secs(30),
        };
        r.blocked(ip, now, off.base, Some(1), "x".into(), "n", off.memory());
        assert_eq!(r.escalate(&ip, now, off), (off.base, 1));
    }

    #[test]
    fn a_manual_block_keeps_the_scan_count() {
        let mut r = Records::new();
        let ip = net("192.0.2.56");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        scan_block(&mut r, ip, now);
        let record = r.blocked(
            ip,
            now + MIN,
            Duration::from_secs(300),
            None,
            MANUAL.into(),
            "node-a",
            rule().memory(),
        );
        assert_eq!((record.repeat, record.scan_ttl.as_secs()), (1, 30));
        assert_eq!(record.reason, "manual");
        assert_eq!(r.escalate(&ip, now + 2 * MIN, rule()).0.as_secs(), 60);
        let fresh = r.blocked(
            net("192.0.2.9"),
            now,
            MIN,
            None,
            MANUAL.into(),
            "n",
            rule().memory(),
        );
        assert_eq!(fresh.repeat, 0);
        assert_eq!(r.escalate(&net("192.0.2.9"), now, rule()), (rule().base, 1));
    }

    #[test]
    fn a_full_table_evicts_the_record_that_lapses_soonest() {
        let mut r = Records::with_capacity(2);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for (i, ttl) in [(1, 60), (2, 30), (3, 90)] {
            r.blocked(
                net(&format!("192.0.2.{i}")),
                now,
                Duration::from_secs(ttl),
                Some(1),
                "x".into(),
                "n",
                MIN,
            );
        }
        assert_eq!(r.len(), 2);
        assert_eq!(r.evicted(), 1);
        assert!(r.get(&net("192.0.2.2")).is_none(), "the soonest to lapse");
    }

    #[test]
    fn scan_reasons_name_rule_ports_and_kind() {
        use crate::event::ScanKind;
        let mut scan = PortScan::syn(
            "192.0.2.56".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
            vec![80, 81, 82, 83],
        );
        assert_eq!(scan_reason(&scan), "port scan 3/60s on ports 80,81,82,83");
        scan.kind = ScanKind::Fin;
        scan.ports = (1..=20).collect();
        assert_eq!(
            scan_reason(&scan),
            "port scan 3/60s on ports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 and 4 more (FIN scan)"
        );
    }
}
