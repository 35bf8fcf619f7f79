//! Port-scan detection over sliding windows.
//!
//! A **source** is a remote address, or for IPv6 its prefix of
//! `--ipv6-prefix` bits (a scanner rotating addresses inside its /64 is one
//! source), seen from one local address. For each source the detector keeps
//! the distinct local ports probed, each with when it was last probed and
//! by what (a SYN or connection, a FIN, NULL or Xmas probe, a UDP probe).
//! TCP and UDP ports are two port spaces: TCP 53 and UDP 53 are two ports,
//! each counted only against the others of its protocol.
//!
//! A probe at time `t` checks each rule (more than N ports within window
//! W) over the ports of its protocol probed in `(t - W, t]`; the first rule
//! that trips reports the source, once per episode. An episode ends when
//! the source has been quiet for the longest window.
//!
//! Memory is bounded two ways, because a spoofed-source flood creates one
//! source per packet: a source keeps at most (the largest N + 1) ports per
//! protocol, over the longest window (once reported, new ports are not
//! recorded: they could not change the outcome until the episode ends), and
//! at most `capacity` sources are tracked. When the table is full the
//! sources quiet for the longest window are dropped and, if that is not
//! enough, the least recently active eighth is evicted in one batch
//! (amortised O(1) per probe) and counted.
//!
//! The sources live in a slab, found through a hash table of slab indices
//! that keeps each key's hash: a probe hashes its key once, nothing is
//! allocated for a source's first two ports, and the table never rehashes
//! a key.

use super::hash::{self, bits, Keyed};
use super::rules::Rules;
use crate::event::{PortScan, Rule, ScanKind};
use hashbrown::HashTable;
use ipnet::{IpNet, Ipv6Net};
use smallvec::SmallVec;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// Default of `--max-scan-sources`.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Default of `--ipv6-prefix`.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

pub struct ScanDetector {
    rules: Rules,
    /// The longest window, in milliseconds.
    longest: u64,
    /// IPv6 prefix length sources are counted by.
    prefix: u8,
    capacity: usize,
    /// Slab indices of the sources, by the hash of their key.
    index: HashTable<u32>,
    slab: Vec<Source>,
    /// When each slot's source was last active, beside the slab: what a
    /// sweep or an eviction reads, in one dense pass.
    activity: Vec<Activity>,
    /// Slab slots not in use.
    free: Vec<u32>,
    /// The activity of the sources an eviction weighs (kept to be reused).
    order: Vec<u64>,
    keys: Keyed,
    /// Bumped on every probe: a total order of activity, so eviction is
    /// deterministic even when many probes share a timestamp.
    touches: u64,
    evicted: u64,
}

struct Source {
    /// The hash of (`remote`, `local`).
    hash: u64,
    /// The remote address, or its IPv6 prefix (the host bits zero).
    remote: IpAddr,
    local: IpAddr,
    /// The first address of the episode; `many` once another address of
    /// the prefix has taken part.
    first: IpAddr,
    many: bool,
    reported: bool,
    /// The ports probed within the longest window; the first two inline
    /// (most sources of a flood probe one).
    ports: SmallVec<[Port; 2]>,
}

/// When a slot's source was last active; `touched` is 0 for a free slot.
#[derive(Clone, Copy, Default)]
struct Activity {
    /// The last probe, in milliseconds of monotonic time.
    last: u64,
    /// Its rank among all probes.
    touched: u64,
}

/// A probed port, in one word: when it was last probed (milliseconds of
/// monotonic time, 45 bits: a millennium), by what (3 bits) and its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Port(u64);

const KINDS: [ScanKind; 5] = [
    ScanKind::Syn,
    ScanKind::Fin,
    ScanKind::Null,
    ScanKind::Xmas,
    ScanKind::Udp,
];
const MAX_MS: u64 = (1 << 45) - 1;

impl Port {
    fn new(ms: u64, kind: ScanKind, port: u16) -> Port {
        let code = KINDS.iter().position(|&k| k == kind).unwrap_or(0) as u64;
        Port((ms.min(MAX_MS) << 19) | (code << 16) | u64::from(port))
    }

    fn ms(self) -> u64 {
        self.0 >> 19
    }

    fn kind(self) -> ScanKind {
        KINDS[((self.0 >> 16) & 7) as usize]
    }

    fn number(self) -> u16 {
        self.0 as u16
    }

    fn udp(self) -> bool {
        self.kind() == ScanKind::Udp
    }

    /// The same port of the same protocol.
    fn is(self, udp: bool, port: u16) -> bool {
        self.number() == port && self.udp() == udp
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `ip` with all but its first `len` bits zero.
fn mask(ip: Ipv6Addr, len: u8) -> Ipv6Addr {
    let keep = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    Ipv6Addr::from_bits(ip.to_bits() & keep)
}

/// The kind of a TCP scan made of `ports`: the kind most of them were last
/// probed by; a tie goes to the probes that are never legitimate, in the
/// order FIN, NULL, Xmas, then SYN.
fn tcp_kind(ports: impl Iterator<Item = Port>) -> ScanKind {
    let mut counts = [0usize; 5];
    for port in ports {
        counts[((port.0 >> 16) & 7) as usize] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(0);
    [ScanKind::Fin, ScanKind::Null, ScanKind::Xmas, ScanKind::Syn]
        .into_iter()
        .find(|&k| counts[KINDS.iter().position(|&c| c == k).unwrap_or(0)] == most)
        .unwrap_or(ScanKind::Syn)
}

impl ScanDetector {
    /// Alerts when one remote touches more than `threshold` ports of one local
    /// address within `window`.
    pub fn new(threshold: usize, window: Duration) -> Self {
        Self::with_capacity(threshold, window, DEFAULT_CAPACITY)
    }

    /// [`ScanDetector::new`] tracking at most `capacity` sources.
    pub fn with_capacity(threshold: usize, window: Duration, capacity: usize) -> Self {
        let main = Rule {
            ports: threshold,
            window,
        };
        Self::with_rules(Rules::one(main), DEFAULT_IPV6_PREFIX, capacity)
    }

    /// A detector checking `rules`, counting IPv6 sources per prefix of
    /// `prefix` bits, tracking at most `capacity` sources.
    pub fn with_rules(rules: Rules, prefix: u8, capacity: usize) -> Self {
        let mut detector = ScanDetector {
            rules: Rules::one(Rule::default()),
            longest: 0,
            prefix: DEFAULT_IPV6_PREFIX,
            capacity: capacity.clamp(1, u32::MAX as usize),
            index: HashTable::new(),
            slab: Vec::new(),
            activity: Vec::new(),
            free: Vec::new(),
            order: Vec::new(),
            keys: hash::keyed(),
            touches: 0,
            evicted: 0,
        };
        detector.reconfigure(rules, prefix);
        detector
    }

    /// Takes new rules and prefix length (SIGHUP) and keeps what was seen,
    /// so a reload neither forgets a scan in progress nor reports one twice.
    /// A new prefix length applies to the sources seen from then on.
    pub fn reconfigure(&mut self, rules: Rules, prefix: u8) {
        self.longest = millis(rules.longest());
        self.rules = rules;
        self.prefix = prefix.clamp(1, 128);
    }

    /// The key a probe from `remote` counts under: IPv4 addresses one by
    /// one, IPv6 ones by prefix.
    fn source_of(&self, remote: IpAddr) -> IpAddr {
        match remote {
            IpAddr::V4(_) => remote,
            IpAddr::V6(v6) => IpAddr::V6(mask(v6, self.prefix)),
        }
    }

    /// Records an inbound SYN or connection from `remote` to `local:port` at
    /// `at` (monotonic time, non-decreasing); returns the scan it completes,
    /// if any.
    pub fn observe(
        &mut self,
        at: Duration,
        remote: IpAddr,
        local: IpAddr,
        port: u16,
    ) -> Option<PortScan> {
        self.probe(at, remote, local, port, ScanKind::Syn)
    }

    /// Records a probe of `kind` (a UDP probe counts among UDP ports, the
    /// others among TCP ports); returns the scan it completes, if any.
    pub fn probe(
        &mut self,
        at: Duration,
        remote: IpAddr,
        local: IpAddr,
        port: u16,
        kind: ScanKind,
    ) -> Option<PortScan> {
        let now = millis(at);
        let (remote, local) = (remote.to_canonical(), local.to_canonical());
        let key = self.source_of(remote);
        let hash = hash::hash_of(&self.keys, &(bits(key), bits(local)));
        let slab = &self.slab;
        let found = self.index.find(hash, |&i| {
            let s = &slab[i as usize];
            s.remote == key && s.local == local
        });
        let at_slot = match found {
            Some(&i) => i as usize,
            None => {
                if self.index.len() >= self.capacity {
                    self.make_room(now);
                }
                self.insert(hash, key, local, remote, now)
            }
        };
        self.touches += 1;
        let (longest, most) = (self.longest, self.rules.most_ports());
        let activity = &mut self.activity[at_slot];
        let quiet = activity.last.saturating_add(longest) <= now;
        *activity = Activity {
            last: now,
            touched: self.touches,
        };
        let source = &mut self.slab[at_slot];
        if quiet {
            // Quiet for the longest window: a new episode.
            source.ports.clear();
            source.reported = false;
            source.first = remote;
            source.many = false;
        }
        source.many |= remote != source.first;
        source
            .ports
            .retain(|p| p.ms().saturating_add(longest) > now);
        let udp = kind == ScanKind::Udp;
        match source.ports.iter_mut().find(|p| p.is(udp, port)) {
            Some(seen) => *seen = Port::new(now, kind, port),
            // Reported: this episode's outcome is settled; more ports would
            // only cost memory.
            None if source.reported => {}
            None => source.ports.push(Port::new(now, kind, port)),
        }
        if source.reported {
            return None;
        }
        let in_window =
            |p: &Port, window: u64| p.udp() == udp && p.ms().saturating_add(window) > now;
        let tripped = self.rules.iter().find(|rule| {
            let window = millis(rule.window);
            source.ports.iter().filter(|p| in_window(p, window)).count() > rule.ports
        });
        let Some(&rule) = tripped else {
            // Not a scan yet: the `most` + 1 newest ports of this protocol
            // decide every rule; older ones only cost memory. (More are
            // kept only after a reload lowered the rules, and then the
            // next probe reports them all, as the ports in its window.)
            let same = source.ports.iter().filter(|p| p.udp() == udp);
            if same.clone().count() > most + 1 {
                if let Some(oldest) = same.min_by_key(|p| p.ms()).copied() {
                    source.ports.retain(|p| *p != oldest);
                }
            }
            return None;
        };
        source.reported = true;
        let window = millis(rule.window);
        let counted = || {
            source
                .ports
                .iter()
                .copied()
                .filter(move |p| in_window(p, window))
        };
        let mut ports: Vec<u16> = counted().map(Port::number).collect();
        ports.sort_unstable();
        let kind = if udp {
            ScanKind::Udp
        } else {
            tcp_kind(counted())
        };
        let prefix = match (source.many, key) {
            (true, IpAddr::V6(net)) => Ipv6Net::new(net, self.prefix).ok().map(IpNet::V6),
            _ => None,
        };
        Some(PortScan {
            remote,
            prefix,
            local,
            ports,
            kind,
            rule,
        })
    }

    /// Puts a new source in a free slot; returns the slot.
    fn insert(
        &mut self,
        hash: u64,
        remote: IpAddr,
        local: IpAddr,
        first: IpAddr,
        now: u64,
    ) -> usize {
        let source = Source {
            hash,
            remote,
            local,
            first,
            many: false,
            reported: false,
            ports: SmallVec::new(),
        };
        // Active now: `probe` sets its rank.
        let activity = Activity {
            last: now,
            touched: u64::MAX,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = source;
                self.activity[slot as usize] = activity;
                slot
            }
            None => {
                self.slab.push(source);
                self.activity.push(activity);
                (self.slab.len() - 1) as u32
            }
        };
        let slab = &self.slab;
        self.index
            .insert_unique(hash, slot, |&i| slab[i as usize].hash);
        slot as usize
    }

    /// Frees at least one slot: drops the sources quiet for the longest
    /// window, then, if fewer than an eighth went, evicts the least
    /// recently active down to seven eighths of the capacity. Two passes
    /// over the activity array at most, per eighth of the capacity.
    fn make_room(&mut self, now: u64) {
        self.sweep_ms(now);
        let target = self.capacity - (self.capacity / 8).max(1);
        if self.index.len() <= target {
            return;
        }
        let excess = self.index.len() - target;
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(
            self.activity
                .iter()
                .map(|a| a.touched)
                .filter(|&touched| touched != 0),
        );
        // Touches are unique: the `excess` smallest are exactly those <=
        // the excess-th smallest.
        let (_, &mut cut, _) = order.select_nth_unstable(excess - 1);
        self.order = order;
        self.remove_where(|a| a.touched <= cut);
        self.evicted += excess as u64;
    }

    /// Forgets the sources whose activity `gone` picks, freeing their slots.
    fn remove_where(&mut self, mut gone: impl FnMut(&Activity) -> bool) {
        for (slot, activity) in self.activity.iter_mut().enumerate() {
            if activity.touched == 0 || !gone(activity) {
                continue;
            }
            *activity = Activity::default();
            let source = &mut self.slab[slot];
            let slot = slot as u32;
            if let Ok(entry) = self.index.find_entry(source.hash, |&i| i == slot) {
                entry.remove();
            }
            // Give back a spilled port list at once.
            source.ports = SmallVec::new();
            self.free.push(slot);
        }
    }

    /// Forgets sources that have been quiet for the longest window.
    pub fn sweep(&mut self, now: Duration) {
        self.sweep_ms(millis(now));
    }

    fn sweep_ms(&mut self, now: u64) {
        let longest = self.longest;
        self.remove_where(|a| a.last.saturating_add(longest) <= now);
    }

    /// The rules and the IPv6 prefix length in force.
    pub fn settings(&self) -> (&Rules, u8) {
        (&self.rules, self.prefix)
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.index.len()
    }

    /// Sources dropped, while still active, because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The ports a source holds (tests).
    #[cfg(test)]
    fn ports_of(&self, remote: IpAddr, local: IpAddr) -> Option<(usize, bool, u64)> {
        let key = self.source_of(remote);
        self.index
            .iter()
            .map(|&i| (&self.slab[i as usize], self.activity[i as usize].last))
            .find(|(s, _)| s.remote == key && s.local == local)
            .map(|(s, last)| (s.ports.len(), s.reported, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCANNER: &str = "192.0.2.56";
    const HOST: &str = "10.0.0.5";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn detector() -> ScanDetector {
        ScanDetector::new(3, secs(60))
    }

    fn hit(d: &mut ScanDetector, at: Duration, port: u16) -> Option<Vec<u16>> {
        d.observe(at, ip(SCANNER), ip(HOST), port).map(|s| s.ports)
    }

    #[test]
    fn a_lower_threshold_applies_to_ports_already_seen() {
        let mut d = detector();
        assert_eq!(hit(&mut d, secs(1), 80), None);
        assert_eq!(hit(&mut d, secs(1), 81), None);
        d.reconfigure(Rules::one(rule(1, 60)), DEFAULT_IPV6_PREFIX);
        assert_eq!(hit(&mut d, secs(2), 81), Some(vec![80, 81]));
        assert_eq!(
            hit(&mut d, secs(3), 82),
            None,
            "still one report per episode"
        );
    }

    #[test]
    fn a_lowered_threshold_reports_every_port_of_the_window() {
        let mut d = ScanDetector::new(10, secs(300));
        for port in [8001, 8002, 8003, 8004] {
            assert_eq!(hit(&mut d, secs(1), port), None);
        }
        d.reconfigure(Rules::one(rule(3, 300)), DEFAULT_IPV6_PREFIX);
        assert_eq!(
            hit(&mut d, secs(2), 8005),
            Some(vec![8001, 8002, 8003, 8004, 8005])
        );
    }

    #[test]
    fn three_ports_is_not_a_scan() {
        let mut d = detector();
        for port in [80, 81, 82] {
            assert_eq!(hit(&mut d, secs(1), port), None);
        }
    }

    #[test]
    fn the_fourth_distinct_port_alerts_once_with_ports_ascending() {
        let mut d = detector();
        for port in [83, 80, 82] {
            assert_eq!(hit(&mut d, secs(1), port), None);
        }
        assert_eq!(hit(&mut d, secs(2), 81), Some(vec![80, 81, 82, 83]));
        assert_eq!(hit(&mut d, secs(3), 84), None, "one report per episode");
    }

    #[test]
    fn the_same_port_many_times_is_not_a_scan() {
        let mut d = detector();
        for t in 0..10 {
            assert_eq!(hit(&mut d, secs(t), 443), None);
        }
    }

    #[test]
    fn four_ports_spread_over_61_seconds_is_not_a_scan() {
        let mut d = detector();
        assert_eq!(hit(&mut d, secs(0), 80), None);
        assert_eq!(hit(&mut d, secs(20), 81), None);
        assert_eq!(hit(&mut d, secs(40), 82), None);
        assert_eq!(hit(&mut d, secs(61), 83), None);
    }

    #[test]
    fn four_ports_within_the_window_edge_alert() {
        let mut d = detector();
        assert_eq!(hit(&mut d, secs(0), 80), None);
        assert_eq!(hit(&mut d, secs(20), 81), None);
        assert_eq!(hit(&mut d, secs(40), 82), None);
        assert_eq!(hit(&mut d, secs(59), 83), Some(vec![80, 81, 82, 83]));
    }

    #[test]
    fn four_ports_straddling_a_poll_boundary_alert() {
        // Two ports seen by the poll at 10 s, two by the poll at 20 s.
        let mut d = detector();
        assert_eq!(hit(&mut d, secs(10), 80), None);
        assert_eq!(hit(&mut d, secs(10), 81), None);
        assert_eq!(hit(&mut d, secs(20), 82), None);
        assert_eq!(hit(&mut d, secs(20), 83), Some(vec![80, 81, 82, 83]));
    }

    #[test]
    fn a_second_episode_after_a_quiet_window_alerts_again() {
        let mut d = detector();
        for port in 80..84 {
            hit(&mut d, secs(0), port);
        }
        // Still scanning 30 s later: same episode.
        for port in 90..95 {
            assert_eq!(hit(&mut d, secs(30), port), None);
        }
        // Quiet from 30 s to 90 s: the episode is over.
        for port in 100..103 {
            assert_eq!(hit(&mut d, secs(90), port), None);
        }
        assert_eq!(hit(&mut d, secs(91), 103), Some(vec![100, 101, 102, 103]));
    }

    #[test]
    fn ipv6_scans_are_detected() {
        let mut d = detector();
        let (scanner, host) = (ip("2001:db8::7"), ip("2001:db8::1"));
        for port in 1..4 {
            assert!(d.observe(secs(0), scanner, host, port).is_none());
        }
        let scan = d.observe(secs(0), scanner, host, 4).unwrap();
        assert_eq!(
            (scan.remote, scan.local, scan.ports),
            (scanner, host, vec![1, 2, 3, 4])
        );
    }

    #[test]
    fn interleaved_scanners_are_counted_apart() {
        let mut d = detector();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let host = ip(HOST);
        let mut alerts = Vec::new();
        for port in [10, 20, 30, 40] {
            alerts.extend(d.observe(secs(1), a, host, port));
            alerts.extend(d.observe(secs(1), b, host, port + 1));
        }
        let got: Vec<_> = alerts.iter().map(|s| (s.remote, s.ports.clone())).collect();
        assert_eq!(got, [(a, vec![10, 20, 30, 40]), (b, vec![11, 21, 31, 41])]);
    }

    #[test]
    fn ports_on_different_local_addresses_are_counted_apart() {
        let mut d = detector();
        let scanner = ip(SCANNER);
        for (n, port) in [80, 81, 82, 83].into_iter().enumerate() {
            let local = ip(&format!("10.0.0.{}", n + 1));
            assert!(d.observe(secs(1), scanner, local, port).is_none());
        }
    }

    #[test]
    fn sweep_forgets_quiet_pairs() {
        let mut d = detector();
        hit(&mut d, secs(0), 80);
        d.sweep(secs(59));
        assert_eq!(d.tracked(), 1);
        d.sweep(secs(60));
        assert_eq!(d.tracked(), 0);
    }
    #[test]
    fn a_reported_pair_stops_recording_ports() {
        let mut d = detector();
        for port in 1..=1000 {
            hit(&mut d, secs(1), port);
        }
        let (ports, reported, _) = d.ports_of(ip(SCANNER), ip(HOST)).unwrap();
        assert_eq!(ports, 4, "threshold + 1 ports at most");
        assert!(reported);
        // Still the same episode: the pair is refreshed, not re-reported.
        assert_eq!(hit(&mut d, secs(50), 2000), None);
        assert_eq!(hit(&mut d, secs(100), 2001), None);
        assert_eq!(d.ports_of(ip(SCANNER), ip(HOST)).unwrap().2, 100_000);
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_active_and_counts() {
        let mut d = ScanDetector::with_capacity(3, secs(60), 8);
        let host = ip(HOST);
        let source = |n: u8| ip(&format!("192.0.2.{n}"));
        for n in 1..=8 {
            d.observe(secs(1), source(n), host, 80);
        }
        // Source 1 is active again: source 2 is now the least recent.
        d.observe(secs(2), source(1), host, 81);
        assert_eq!((d.tracked(), d.evicted()), (8, 0));
        d.observe(secs(3), source(9), host, 80);
        assert_eq!((d.tracked(), d.evicted()), (8, 1), "one eighth of 8");
        assert!(d.ports_of(source(2), host).is_none());
        assert!(d.ports_of(source(1), host).is_some());
        // Source 1 kept its ports: two more make a scan.
        d.observe(secs(4), source(1), host, 82);
        let scan = d.observe(secs(4), source(1), host, 83).unwrap();
        assert_eq!(scan.ports, [80, 81, 82, 83]);
    }

    #[test]
    fn quiet_pairs_make_room_before_active_ones_are_evicted() {
        let mut d = ScanDetector::with_capacity(3, secs(60), 4);
        let host = ip(HOST);
        for n in 1..=4 {
            d.observe(secs(n), ip(&format!("192.0.2.{n}")), host, 80);
        }
        // At 62 s the pairs last seen at 1 s and 2 s have been quiet a window.
        d.observe(secs(62), ip("192.0.2.5"), host, 80);
        assert_eq!((d.tracked(), d.evicted()), (3, 0));
    }

    #[test]
    fn eviction_stays_bounded_under_a_flood_of_sources() {
        let mut d = ScanDetector::with_capacity(3, secs(60), 1000);
        for n in 0..100_000u32 {
            let remote = IpAddr::from(n.to_be_bytes());
            d.observe(secs(1), remote, ip(HOST), (n % 65_536) as u16);
            assert!(d.tracked() <= 1000);
        }
        assert!(d.evicted() >= 99_000, "{}", d.evicted());
    }

    // --- Several rules, IPv6 prefixes, probe kinds, protocols ---

    fn rule(ports: usize, secs: u64) -> Rule {
        Rule {
            ports,
            window: Duration::from_secs(secs),
        }
    }

    fn ruled(extra: &[Rule], prefix: u8) -> ScanDetector {
        let rules = Rules::new(rule(3, 60), extra);
        ScanDetector::with_rules(rules, prefix, DEFAULT_CAPACITY)
    }

    fn probe(
        d: &mut ScanDetector,
        at: Duration,
        from: &str,
        port: u16,
        kind: ScanKind,
    ) -> Option<PortScan> {
        d.probe(at, ip(from), ip(HOST), port, kind)
    }

    /// 5 ports, one every 45 s: never 4 within a minute.
    fn slow_scan(d: &mut ScanDetector) -> Vec<PortScan> {
        (0..5u16)
            .filter_map(|n| d.observe(secs(u64::from(n) * 45), ip(SCANNER), ip(HOST), 20 + n))
            .collect()
    }

    #[test]
    fn a_slow_scan_trips_a_slow_rule_once() {
        let mut d = ruled(&[rule(4, 300)], 64);
        let scans = slow_scan(&mut d);
        assert_eq!(scans.len(), 1, "{scans:?}");
        let scan = &scans[0];
        assert_eq!(scan.ports, [20, 21, 22, 23, 24]);
        assert_eq!(scan.rule, rule(4, 300));
        assert_eq!(scan.rule.to_string(), "4/300s");
        assert_eq!((scan.kind, scan.prefix), (ScanKind::Syn, None));
    }

    #[test]
    fn a_slow_scan_without_a_slow_rule_is_not_a_scan() {
        let mut d = ruled(&[], 64);
        assert!(slow_scan(&mut d).is_empty());
    }

    #[test]
    fn the_main_rule_reports_with_its_own_rule() {
        let mut d = ruled(&[rule(4, 300)], 64);
        let scan = (80..84)
            .find_map(|port| d.observe(secs(1), ip(SCANNER), ip(HOST), port))
            .unwrap();
        assert_eq!((scan.ports, scan.rule), (vec![80, 81, 82, 83], rule(3, 60)));
    }

    #[test]
    fn a_source_is_reported_once_per_episode_across_rules() {
        let mut d = ruled(&[rule(4, 300), rule(10, 3600)], 64);
        let mut scans = Vec::new();
        // A port every 30 s: 3/60s never trips, 4/300s trips at the fifth
        // port, 10/1h would at the eleventh, in the same episode: no second
        // report.
        for n in 0..30u16 {
            scans.extend(d.observe(secs(u64::from(n) * 30), ip(SCANNER), ip(HOST), 1000 + n));
        }
        assert_eq!(scans.len(), 1);
        assert_eq!(scans[0].rule, rule(4, 300));
        // The episode ends when the source has been quiet for the longest
        // window (1 h), not the main one.
        let last = 29 * 30;
        for (at, port) in [(last + 61, 2000), (last + 301, 2001), (last + 3599, 2002)] {
            assert!(
                d.observe(secs(at), ip(SCANNER), ip(HOST), port).is_none(),
                "{at}"
            );
        }
        // Quiet from last + 3599 for an hour: a new episode, reported again.
        let again = last + 3599 + 3600;
        let scans: Vec<_> = (0..4u16)
            .filter_map(|n| d.observe(secs(again), ip(SCANNER), ip(HOST), 3000 + n))
            .collect();
        assert_eq!(scans.len(), 1);
        assert_eq!(scans[0].ports, [3000, 3001, 3002, 3003]);
    }

    #[test]
    fn when_two_rules_trip_on_one_probe_the_first_listed_reports() {
        let mut d = ScanDetector::with_rules(
            Rules::new(rule(5, 60), &[rule(2, 60), rule(2, 10)]),
            64,
            DEFAULT_CAPACITY,
        );
        let scan = (1..=4)
            .find_map(|port| d.observe(secs(1), ip(SCANNER), ip(HOST), port))
            .unwrap();
        // The third port trips 2/60s and 2/10s at once: 2/60s is listed first.
        assert_eq!((scan.ports.len(), scan.rule), (3, rule(2, 60)));
    }

    #[test]
    fn a_source_keeps_at_most_the_largest_n_plus_one_ports() {
        let mut d = ruled(&[rule(10, 3600)], 64);
        for n in 0..100u16 {
            d.observe(secs(u64::from(n) * 100), ip(SCANNER), ip(HOST), n);
            let (ports, _, _) = d.ports_of(ip(SCANNER), ip(HOST)).unwrap();
            assert!(ports <= 11, "{ports} ports at {n}");
        }
    }

    #[test]
    fn addresses_rotating_inside_a_64_are_one_scan_naming_the_prefix() {
        let mut d = ruled(&[], 64);
        let mut scans = Vec::new();
        for n in 0..20u16 {
            let from = format!("2001:db8:1:2::{:x}", 0x100 + n);
            scans.extend(probe(&mut d, secs(1), &from, 20 + n, ScanKind::Syn));
        }
        assert_eq!(scans.len(), 1, "{scans:?}");
        let scan = &scans[0];
        assert_eq!(scan.prefix, Some("2001:db8:1:2::/64".parse().unwrap()));
        assert_eq!(scan.source().to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            scan.remote,
            ip("2001:db8:1:2::103"),
            "the probe that crossed the line"
        );
        assert_eq!(scan.ports, [20, 21, 22, 23]);
        assert_eq!(d.tracked(), 1);
    }

    #[test]
    fn one_address_of_a_prefix_is_named_alone() {
        let mut d = ruled(&[], 64);
        let scan = (0..4)
            .find_map(|n| probe(&mut d, secs(1), "2001:db8:1:2::7", 20 + n, ScanKind::Syn))
            .unwrap();
        assert_eq!((scan.remote, scan.prefix), (ip("2001:db8:1:2::7"), None));
        assert_eq!(scan.source().to_string(), "2001:db8:1:2::7/128");
    }

    #[test]
    fn other_prefixes_are_other_sources() {
        let mut d = ruled(&[], 64);
        for n in 0..8u16 {
            let from = format!("2001:db8:1:{n}::1");
            assert!(probe(&mut d, secs(1), &from, 20 + n, ScanKind::Syn).is_none());
        }
        assert_eq!(d.tracked(), 8);
    }

    #[test]
    fn prefix_128_counts_each_address_alone() {
        let mut d = ruled(&[], 128);
        for n in 0..20u16 {
            let from = format!("2001:db8:1:2::{:x}", 0x100 + n);
            assert!(probe(&mut d, secs(1), &from, 20 + n, ScanKind::Syn).is_none());
        }
        assert_eq!(d.tracked(), 20);
        let scan = (0..4)
            .find_map(|n| probe(&mut d, secs(2), "2001:db8:1:2::100", 100 + n, ScanKind::Syn))
            .unwrap();
        assert_eq!(scan.prefix, None);
    }

    #[test]
    fn a_48_prefix_takes_in_a_whole_site() {
        let mut d = ruled(&[], 48);
        let scan = (0..4u16)
            .find_map(|n| {
                let from = format!("2001:db8:1:{n}::9");
                probe(&mut d, secs(1), &from, 20 + n, ScanKind::Syn)
            })
            .unwrap();
        assert_eq!(scan.prefix, Some("2001:db8:1::/48".parse().unwrap()));
    }

    #[test]
    fn ipv4_sources_are_counted_per_address() {
        let mut d = ruled(&[], 64);
        for n in 1..=20u16 {
            let from = format!("192.0.2.{n}");
            assert!(probe(&mut d, secs(1), &from, 20 + n, ScanKind::Syn).is_none());
        }
        // An IPv4-mapped address is the IPv4 address.
        for n in 0..2 {
            assert!(probe(&mut d, secs(1), "::ffff:192.0.2.1", 100 + n, ScanKind::Syn).is_none());
        }
        assert_eq!(d.tracked(), 20);
        let scan = probe(&mut d, secs(1), "192.0.2.1", 200, ScanKind::Syn).unwrap();
        assert_eq!((scan.remote, scan.prefix), (ip("192.0.2.1"), None));
    }

    #[test]
    fn a_new_prefix_length_applies_to_sources_seen_after_a_reload() {
        let mut d = ruled(&[], 64);
        d.reconfigure(Rules::one(rule(3, 60)), 128);
        for n in 0..8u16 {
            let from = format!("2001:db8:1:2::{n}");
            assert!(probe(&mut d, secs(1), &from, 20 + n, ScanKind::Syn).is_none());
        }
        d.reconfigure(Rules::one(rule(3, 60)), 64);
        let scans: Vec<_> = (0..8u16)
            .filter_map(|n| {
                let from = format!("2001:db8:1:2::{n}");
                probe(&mut d, secs(2), &from, 20 + n, ScanKind::Syn)
            })
            .collect();
        assert_eq!(scans.len(), 1);
        assert_eq!(scans[0].prefix, Some("2001:db8:1:2::/64".parse().unwrap()));
    }

    #[test]
    fn stealth_and_udp_probes_name_their_kind() {
        for kind in [ScanKind::Fin, ScanKind::Null, ScanKind::Xmas, ScanKind::Udp] {
            let mut d = ruled(&[], 64);
            let scans: Vec<_> = [21, 22, 23, 25]
                .into_iter()
                .filter_map(|port| probe(&mut d, secs(1), SCANNER, port, kind))
                .collect();
            assert_eq!(scans.len(), 1, "{kind:?}");
            assert_eq!(
                (scans[0].kind, scans[0].ports.clone()),
                (kind, vec![21, 22, 23, 25])
            );
        }
    }

    #[test]
    fn tcp_and_udp_ports_are_counted_apart() {
        let mut d = ruled(&[], 64);
        // TCP 53 and UDP 53 are two ports, each only of its protocol: two
        // of each is no scan under "more than 3".
        for (port, kind) in [
            (53, ScanKind::Syn),
            (53, ScanKind::Udp),
            (80, ScanKind::Syn),
            (123, ScanKind::Udp),
        ] {
            assert!(probe(&mut d, secs(1), SCANNER, port, kind).is_none());
        }
        assert!(
            probe(&mut d, secs(1), SCANNER, 443, ScanKind::Fin).is_none(),
            "3 TCP ports"
        );
        // A fourth UDP port: a UDP scan of the UDP ports only.
        let scan = probe(&mut d, secs(2), SCANNER, 161, ScanKind::Udp);
        assert!(scan.is_none(), "3 UDP ports");
        let scan = probe(&mut d, secs(2), SCANNER, 500, ScanKind::Udp).unwrap();
        assert_eq!(
            (scan.kind, scan.ports),
            (ScanKind::Udp, vec![53, 123, 161, 500])
        );
        // Same episode: the TCP side crossing the line later is not reported.
        assert!(probe(&mut d, secs(3), SCANNER, 8080, ScanKind::Syn).is_none());
    }

    #[test]
    fn a_mixed_scan_takes_the_kind_of_most_of_its_ports() {
        use ScanKind::*;
        let kind_of = |probes: &[(u16, ScanKind)]| {
            let mut d = ruled(&[], 64);
            probes
                .iter()
                .find_map(|&(port, kind)| probe(&mut d, secs(1), SCANNER, port, kind))
                .map(|scan| scan.kind)
        };
        // nmap's host discovery sends a SYN to 443 before a FIN scan.
        assert_eq!(
            kind_of(&[(443, Syn), (21, Fin), (22, Fin), (23, Fin)]),
            Some(Fin)
        );
        assert_eq!(
            kind_of(&[(21, Syn), (22, Syn), (23, Syn), (25, Fin)]),
            Some(Syn)
        );
        // A tie goes to the probes no legitimate client sends.
        assert_eq!(
            kind_of(&[(21, Syn), (22, Syn), (23, Xmas), (25, Xmas)]),
            Some(Xmas)
        );
        assert_eq!(
            kind_of(&[(21, Null), (22, Fin), (23, Xmas), (25, Syn)]),
            Some(Fin)
        );
        // A port probed again counts by its last probe.
        assert_eq!(
            kind_of(&[(21, Fin), (21, Syn), (22, Syn), (23, Fin), (25, Fin)]),
            Some(Fin)
        );
        assert_eq!(
            kind_of(&[
                (21, Fin),
                (22, Fin),
                (21, Syn),
                (22, Syn),
                (23, Syn),
                (25, Null)
            ]),
            Some(Syn)
        );
    }

    #[test]
    fn a_full_table_still_evicts_and_counts_with_several_rules() {
        let rules = Rules::new(rule(3, 60), &[rule(10, 3600)]);
        let mut d = ScanDetector::with_rules(rules, 64, 8);
        for n in 1..=8 {
            d.observe(secs(1), ip(&format!("192.0.2.{n}")), ip(HOST), 80);
        }
        // Quiet for more than the main window but not the longest: still
        // tracked, so a newcomer evicts the least recent.
        d.observe(secs(120), ip("192.0.2.9"), ip(HOST), 80);
        assert_eq!((d.tracked(), d.evicted()), (8, 1));
        // After the longest window, the sweep makes room without evicting.
        d.observe(secs(3720), ip("192.0.2.10"), ip(HOST), 80);
        assert_eq!((d.tracked(), d.evicted()), (1, 1));
        // A flood of spoofed IPv6 sources from many prefixes stays bounded.
        for n in 0..10_000u32 {
            let from =
                IpAddr::from(((0x2001_0db8u128 << 96) | (u128::from(n) << 64)).to_be_bytes());
            d.probe(secs(3721), from, ip(HOST), 80, ScanKind::Null);
            assert!(d.tracked() <= 8);
        }
        assert!(d.evicted() >= 9_990, "{}", d.evicted());
    }

    #[test]
    fn ports_pack_into_one_word() {
        for kind in KINDS {
            let p = Port::new(MAX_MS + 5, kind, 65_535);
            assert_eq!((p.ms(), p.kind(), p.number()), (MAX_MS, kind, 65_535));
            let p = Port::new(1234, kind, 0);
            assert_eq!((p.ms(), p.kind(), p.number()), (1234, kind, 0));
        }
        assert_eq!(std::mem::size_of::<Port>(), 8);
    }
}
