//! Port-scan detection over a sliding window.
//!
//! For each (remote IP, local IP) pair the detector keeps the distinct local
//! ports touched and when each was last touched. An attempt at time `t`
//! counts the ports touched in `(t - window, t]`; when that count is MORE than
//! the threshold the pair is reported, once per episode. An episode ends when
//! the pair has been quiet for a whole window.
//!
//! Memory is bounded two ways, because a spoofed-source flood creates one
//! pair per packet: a pair holds at most `threshold + 1` ports (once it is
//! reported, new ports are not recorded: they could not change the outcome
//! until the episode ends), and at most `capacity` pairs are tracked. When
//! the table is full the pairs quiet for a window are dropped and, if that
//! is not enough, the least recently active eighth is evicted in one batch
//! (amortised O(1) per attempt) and counted.

use crate::event::{PortScan, Rule, ScanKind};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Default of `--max-scan-sources`.
pub const DEFAULT_CAPACITY: usize = 65_536;

pub struct ScanDetector {
    threshold: usize,
    window: Duration,
    capacity: usize,
    peers: HashMap<(IpAddr, IpAddr), Peer>,
    /// Bumped on every attempt: a total order of activity, so eviction is
    /// deterministic even when many attempts share a timestamp.
    touches: u64,
    evicted: u64,
}

struct Peer {
    /// (local port, when it was last touched), at most threshold + 1 of
    /// them; a Vec, since a handful of entries is cheaper to scan than a
    /// tree is to allocate (most pairs of a flood hold one port).
    ports: Vec<(u16, Duration)>,
    last_attempt: Duration,
    touched: u64,
    reported: bool,
}

impl ScanDetector {
    /// Alerts when one remote touches more than `threshold` ports of one local
    /// address within `window`.
    pub fn new(threshold: usize, window: Duration) -> Self {
        Self::with_capacity(threshold, window, DEFAULT_CAPACITY)
    }

    /// [`ScanDetector::new`] tracking at most `capacity` (remote, local) pairs.
    pub fn with_capacity(threshold: usize, window: Duration, capacity: usize) -> Self {
        ScanDetector {
            threshold,
            window,
            capacity: capacity.max(1),
            peers: HashMap::new(),
            touches: 0,
            evicted: 0,
        }
    }

    /// Records an inbound attempt from `remote` to `local:port` at `at`
    /// (monotonic time, non-decreasing); returns the scan it completes, if any.
    pub fn observe(
        &mut self,
        at: Duration,
        remote: IpAddr,
        local: IpAddr,
        port: u16,
    ) -> Option<PortScan> {
        let window = self.window;
        let key = (remote, local);
        if self.peers.len() >= self.capacity && !self.peers.contains_key(&key) {
            self.make_room(at);
        }
        self.touches += 1;
        let touched = self.touches;
        let peer = self.peers.entry(key).or_insert_with(|| Peer {
            // One slot: most pairs of a flood never see a second port (a
            // bare Vec would reserve four on the first push).
            ports: Vec::with_capacity(1),
            last_attempt: at,
            touched,
            reported: false,
        });
        if peer.last_attempt + window <= at {
            // Quiet for a whole window: a new episode.
            peer.ports.clear();
            peer.reported = false;
        }
        peer.last_attempt = at;
        peer.touched = touched;
        peer.ports.retain(|&(_, seen)| seen + window > at);
        match peer.ports.iter_mut().find(|(p, _)| *p == port) {
            Some(entry) => entry.1 = at,
            // Reported: this episode's outcome is settled; more ports would
            // only cost memory.
            None if peer.reported => {}
            None => peer.ports.push((port, at)),
        }
        if peer.reported || peer.ports.len() <= self.threshold {
            return None;
        }
        peer.reported = true;
        let mut ports: Vec<u16> = peer.ports.iter().map(|&(p, _)| p).collect();
        ports.sort_unstable();
        Some(PortScan {
            remote,
            prefix: None,
            local,
            ports,
            kind: ScanKind::Syn,
            rule: Rule {
                ports: self.threshold,
                window,
            },
        })
    }

    /// Frees at least one slot: drops the pairs quiet for a window, then, if
    /// fewer than an eighth went, evicts the least recently active down to
    /// seven eighths of the capacity.
    fn make_room(&mut self, now: Duration) {
        self.sweep(now);
        let target = self.capacity - (self.capacity / 8).max(1);
        if self.peers.len() > target {
            let excess = self.peers.len() - target;
            let mut touched: Vec<u64> = self.peers.values().map(|p| p.touched).collect();
            // Touches are unique: the `excess` smallest are exactly those <=
            // the excess-th smallest.
            let (_, &mut cut, _) = touched.select_nth_unstable(excess - 1);
            self.peers.retain(|_, p| p.touched > cut);
            self.evicted += excess as u64;
        }
        compact(&mut self.peers);
    }

    /// Takes a new threshold and window (SIGHUP) and keeps what was seen, so
    /// a reload neither forgets a scan in progress nor reports one twice.
    pub fn reconfigure(&mut self, threshold: usize, window: Duration) {
        self.threshold = threshold;
        self.window = window;
    }

    /// Forgets pairs that have been quiet for a whole window.
    pub fn sweep(&mut self, now: Duration) {
        let window = self.window;
        self.peers
            .retain(|_, peer| peer.last_attempt + window > now);
    }

    /// The threshold and window it was made with.
    pub fn settings(&self) -> (usize, Duration) {
        (self.threshold, self.window)
    }

    /// Pairs currently tracked.
    pub fn tracked(&self) -> usize {
        self.peers.len()
    }

    /// Pairs dropped, while still active, because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Rebuilds a map that has just lost entries into the smallest table that
/// holds the rest. Removing leaves tombstones, and a hashbrown table whose
/// free slots run out while it is more than half full doubles instead of
/// cleaning them up: under a steady churn of inserts and evictions that
/// doubled the table for good (measured: 29 MB instead of 13 MB for 65,536
/// pairs). Rebuilding after each batch costs O(n) per n/8 inserts.
pub(crate) fn compact<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    map.shrink_to(0);
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
        d.reconfigure(1, secs(60));
        assert_eq!(hit(&mut d, secs(2), 81), Some(vec![80, 81]));
        assert_eq!(
            hit(&mut d, secs(3), 82),
            None,
            "still one report per episode"
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
        let peer = &d.peers[&(ip(SCANNER), ip(HOST))];
        assert_eq!(peer.ports.len(), 4, "threshold + 1 ports at most");
        assert!(peer.reported);
        // Still the same episode: the pair is refreshed, not re-reported.
        assert_eq!(hit(&mut d, secs(50), 2000), None);
        assert_eq!(hit(&mut d, secs(100), 2001), None);
        assert_eq!(d.peers[&(ip(SCANNER), ip(HOST))].last_attempt, secs(100));
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
        assert!(!d.peers.contains_key(&(source(2), host)));
        assert!(d.peers.contains_key(&(source(1), host)));
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
}
