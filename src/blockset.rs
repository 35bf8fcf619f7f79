//! [`BlockSet`]: the blocks in force, shared by the block stage (which
//! writes it as it applies and lifts blocks) with the stages before it
//! (which read it). A packet source (pcap, xdp) sees packets before an
//! nftables or iptables rule drops them: a probe from a blocked source is
//! the block at work, not a connection, so the pipeline drops it here and
//! counts it as seen by its block.
//!
//! Lookups are cheap when nothing is blocked (one atomic load) and one
//! hash lookup otherwise; prefixes (IPv6 /64s) are few and checked in
//! turn. The set holds what the firewall holds, so it is bounded by it.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct BlockSet {
    inner: RwLock<Inner>,
    /// Blocks in the set: the fast path when there are none.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Single addresses (a /32 or /128), canonical.
    hosts: HashMap<IpAddr, Arc<AtomicU64>>,
    /// Prefixes, host bits cleared.
    prefixes: Vec<(IpNet, Arc<AtomicU64>)>,
}

impl Inner {
    fn counter(&self, target: &IpNet) -> Option<&Arc<AtomicU64>> {
        if is_host(target) {
            self.hosts.get(&target.addr().to_canonical())
        } else {
            let target = target.trunc();
            self.prefixes
                .iter()
                .find(|(net, _)| *net == target)
                .map(|(_, c)| c)
        }
    }

    fn len(&self) -> usize {
        self.hosts.len() + self.prefixes.len()
    }
}

fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

impl BlockSet {
    pub fn new() -> Arc<BlockSet> {
        Arc::new(BlockSet::default())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of `target` is in force from now: its count of packets seen
    /// starts at zero (a block applied again is a new block).
    pub fn insert(&self, target: IpNet) {
        let mut inner = self.write();
        let counter = Arc::new(AtomicU64::new(0));
        if is_host(&target) {
            inner.hosts.insert(target.addr().to_canonical(), counter);
        } else {
            let target = target.trunc();
            inner.prefixes.retain(|(net, _)| *net != target);
            inner.prefixes.push((target, counter));
        }
        self.len.store(inner.len(), Ordering::Relaxed);
    }

    /// The block of `target` is lifted or has ended.
    pub fn remove(&self, target: IpNet) {
        let mut inner = self.write();
        if is_host(&target) {
            inner.hosts.remove(&target.addr().to_canonical());
        } else {
            let target = target.trunc();
            inner.prefixes.retain(|(net, _)| *net != target);
        }
        self.len.store(inner.len(), Ordering::Relaxed);
    }

    /// Keeps only the blocks `keep` accepts (their counts with them).
    pub fn retain(&self, mut keep: impl FnMut(IpNet) -> bool) {
        let mut inner = self.write();
        inner.hosts.retain(|ip, _| keep(IpNet::from(*ip)));
        inner.prefixes.retain(|(net, _)| keep(*net));
        self.len.store(inner.len(), Ordering::Relaxed);
    }

    /// The block `ip` falls under, if any: its own address first, then a
    /// prefix holding it.
    pub fn lookup(&self, ip: IpAddr) -> Option<IpNet> {
        if self.is_empty() {
            return None;
        }
        let ip = ip.to_canonical();
        let inner = self.read();
        if inner.hosts.contains_key(&ip) {
            return Some(IpNet::from(ip));
        }
        inner
            .prefixes
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(net, _)| *net)
    }

    /// Whether a packet from `ip` falls under a block; if so it is counted
    /// as seen by that block.
    pub fn hit(&self, ip: IpAddr) -> bool {
        if self.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        let inner = self.read();
        let counter = inner.hosts.get(&ip).or_else(|| {
            inner
                .prefixes
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, c)| c)
        });
        match counter {
            Some(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Packets from `target`'s block seen since it was applied.
    pub fn seen(&self, target: IpNet) -> u64 {
        self.read()
            .counter(&target)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn contains(&self, target: IpNet) -> bool {
        self.read().counter(&target).is_some()
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Targets from text, for tests: a prefix, or an address as its host
/// prefix.
#[cfg(test)]
pub fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_prefixes_are_hit_and_counted() {
        let set = BlockSet::new();
        assert!(!set.hit(ip("192.0.2.56")), "empty");
        set.insert(net("192.0.2.56"));
        set.insert(net("2001:db8:1:2::9/64"));
        assert_eq!(set.len(), 2);
        assert!(set.hit(ip("192.0.2.56")));
        assert!(
            set.hit(ip("::ffff:192.0.2.56")),
            "mapped is the IPv4 address"
        );
        assert!(!set.hit(ip("192.0.2.57")));
        assert!(set.hit(ip("2001:db8:1:2::1234")));
        assert!(!set.hit(ip("2001:db8:1:3::1")));
        assert_eq!(set.seen(net("192.0.2.56")), 2);
        assert_eq!(set.seen(net("2001:db8:1:2::/64")), 1);
        assert_eq!(
            set.lookup(ip("2001:db8:1:2::7")),
            Some(net("2001:db8:1:2::/64"))
        );
        assert_eq!(set.lookup(ip("192.0.2.56")), Some(net("192.0.2.56")));
    }

    #[test]
    fn a_block_applied_again_counts_from_zero_and_a_lifted_one_is_gone() {
        let set = BlockSet::new();
        set.insert(net("192.0.2.56"));
        set.hit(ip("192.0.2.56"));
        set.insert(net("192.0.2.56"));
        assert_eq!(set.seen(net("192.0.2.56")), 0);
        set.remove(net("192.0.2.56"));
        assert!(set.is_empty());
        assert!(!set.hit(ip("192.0.2.56")));
        set.insert(net("192.0.2.1"));
        set.insert(net("192.0.2.2"));
        set.retain(|t| t == net("192.0.2.2"));
        assert!(!set.contains(net("192.0.2.1")) && set.contains(net("192.0.2.2")));
        assert_eq!(set.len(), 1);
    }
}

/// A block in force as `tcpwatch blocks list` and `tcpwatch status` show
/// it: written by the block stage, sent by the control socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockInfo {
    /// An address or a prefix, as the lines print it.
    pub target: String,
    pub backend: String,
    /// Seconds left; `None` for a block without a timeout.
    pub expires_in_seconds: Option<u64>,
    /// The TTL it was given, when the agent knows it.
    pub ttl_seconds: Option<u64>,
    /// Its place in a row of blocks for scans (1: a first block).
    pub repeat: u32,
    /// Why: `port scan 3/60s on ports 80,81,82,83`, `manual`, `found in
    /// the firewall`.
    pub reason: String,
    /// The node that decided it.
    pub origin: String,
    /// Packets it dropped since it was applied.
    pub packets_dropped: u64,
}
