//! Port-scan detection over a sliding window.
//!
//! For each (remote IP, local IP) pair the detector keeps the distinct local
//! ports touched and when each was last touched. An attempt at time `t`
//! counts the ports touched in `(t - window, t]`; when that count is MORE than
//! the threshold the pair is reported, once per episode. An episode ends when
//! the pair has been quiet for a whole window.

use crate::event::PortScan;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

pub struct ScanDetector {
    threshold: usize,
    window: Duration,
    peers: HashMap<(IpAddr, IpAddr), Peer>,
}

#[derive(Default)]
struct Peer {
    /// Local port -> when it was last touched (monotonic).
    ports: BTreeMap<u16, Duration>,
    last_attempt: Duration,
    reported: bool,
}

impl ScanDetector {
    /// Alerts when one remote touches more than `threshold` ports of one local
    /// address within `window`.
    pub fn new(threshold: usize, window: Duration) -> Self {
        ScanDetector {
            threshold,
            window,
            peers: HashMap::new(),
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
        let peer = self.peers.entry((remote, local)).or_default();
        if peer.last_attempt + window <= at {
            // Quiet for a whole window (or new): a new episode.
            *peer = Peer::default();
        }
        peer.ports.retain(|_, seen| *seen + window > at);
        peer.ports.insert(port, at);
        peer.last_attempt = at;
        if peer.reported || peer.ports.len() <= self.threshold {
            return None;
        }
        peer.reported = true;
        Some(PortScan {
            remote,
            local,
            ports: peer.ports.keys().copied().collect(),
        })
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

    /// Pairs currently tracked.
    pub fn tracked(&self) -> usize {
        self.peers.len()
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
}
