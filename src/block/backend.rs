//! [`Backend`]: the narrow interface every firewall sits behind. Each call
//! is one transaction (or as close as the tool allows) and idempotent, so
//! the block stage can retry anything and tests can use a fake.
//!
//! A block's target is an [`IpNet`]: an address (a /32 or /128) or an IPv6
//! prefix (a scanner rotating addresses inside its /64).

use ipnet::IpNet;
use std::net::IpAddr;
use std::time::Duration;

/// A block as the firewall holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: IpNet,
    /// Time left; `None` for an entry without a timeout (added by hand).
    pub remaining: Option<Duration>,
    /// Packets the firewall dropped for this block since it was applied,
    /// when the backend counts them.
    pub packets: Option<u64>,
}

impl Entry {
    /// An entry of `target` with `remaining` time and no drop count.
    pub fn new(target: IpNet, remaining: Option<Duration>) -> Self {
        Entry {
            target,
            remaining,
            packets: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family an address is blocked in: IPv4-mapped IPv6 counts as IPv4
    /// (callers canonicalize first; this is the last guard).
    pub fn of(ip: IpAddr) -> Family {
        match ip.to_canonical() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a block's target.
    pub fn of_net(net: &IpNet) -> Family {
        match canonical(*net) {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// A target as it is blocked: an IPv4-mapped IPv6 address as IPv4, host
/// bits of a prefix cleared.
pub fn canonical(net: IpNet) -> IpNet {
    if net.prefix_len() == net.max_prefix_len() {
        return IpNet::from(net.addr().to_canonical());
    }
    net.trunc()
}

/// Whether `net` is a single address (not a prefix).
pub fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// A host firewall that can hold a set of blocked addresses with timeouts.
/// Every call is one transaction (or as close as the tool allows) and is
/// idempotent.
pub trait Backend: Send {
    /// The name printed in `Blocked ... via NAME` and in metric labels.
    fn name(&self) -> &'static str;
    /// Creates the backend's objects, replacing any a crashed run left.
    fn install(&mut self, ttl: Duration) -> anyhow::Result<()>;
    /// Blocks every target for `ttl`; re-blocking resets the timeout.
    fn block(&mut self, targets: &[IpNet], ttl: Duration) -> anyhow::Result<()>;
    /// Lifts a block; succeeds if there was none.
    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()>;
    fn list(&mut self) -> anyhow::Result<Vec<Entry>>;
    fn flush(&mut self) -> anyhow::Result<()>;
    /// Removes everything `install` created; succeeds if nothing is there.
    fn remove(&mut self) -> anyhow::Result<()>;
    /// Whether this backend's objects exist on the host.
    fn present(&mut self) -> bool;
    /// Whether blocks reach the kernel: `false` for a dry run, whose blocks
    /// are decided and reported but neither applied, stored nor counted.
    fn applies(&self) -> bool {
        true
    }
    /// Re-applies blocks, each with its own time left (restart from the
    /// state file). By default one `block` call per distinct whole second;
    /// backends with scripts do it in one call.
    fn restore(&mut self, entries: &[(IpNet, Duration)]) -> anyhow::Result<()> {
        for (ttl, ips) in by_whole_seconds(entries) {
            self.block(&ips, ttl)?;
        }
        Ok(())
    }
    /// Entries the backend pushed out on its own since it started (a full
    /// LRU map evicts its least recently used entry): a block gone from a
    /// listing after an eviction was evicted, not deleted by hand.
    fn evicted(&self) -> u64 {
        0
    }
    /// Re-creates the objects after they could not be read (deleted under
    /// the agent: `nft flush ruleset`, a firewall service restart) with
    /// `entries` in them. `Ok(false)`: this backend cannot lose its objects
    /// that way (xdp keeps its maps in the agent), so there is nothing to do.
    fn repair(&mut self, _ttl: Duration, _entries: &[(IpNet, Duration)]) -> anyhow::Result<bool> {
        Ok(false)
    }

    // A backend whose kernel side decides blocks by itself (xdp: the
    // program blocks a scanner at its threshold probe) is kept to the
    // agent's decisions with the three calls below; for the others they do
    // nothing.

    /// Lifts the blocks of `targets` that the kernel decided by itself and
    /// the agent does not make (allowlisted, over the cap); a block the
    /// agent applied is left alone.
    fn overrule(&mut self, _targets: &[IpNet]) -> anyhow::Result<()> {
        Ok(())
    }
    /// The networks never to be blocked (`--allow`, the host's addresses,
    /// its gateways; loopback is implied), for the kernel's own decisions.
    fn sync_allow(&mut self, _nets: &[IpNet]) -> anyhow::Result<()> {
        Ok(())
    }
    /// A new `--block-ttl` and cap for the kernel's own decisions.
    fn retune(&mut self, _ttl: Duration, _cap: Option<u32>) -> anyhow::Result<()> {
        Ok(())
    }
    /// A new scan rule (more than `ports` distinct ports within `window`,
    /// IPv6 sources per `/ipv6_prefix`) for the kernel's own decisions: the
    /// detector's, reloaded.
    fn rescan(&mut self, _ports: usize, _window: Duration, _ipv6_prefix: u8) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Groups blocks by their time left rounded up to whole seconds (at least
/// one), so a restored block never ends before the time it was given.
pub fn by_whole_seconds(entries: &[(IpNet, Duration)]) -> Vec<(Duration, Vec<IpNet>)> {
    let mut groups: std::collections::BTreeMap<u64, Vec<IpNet>> = Default::default();
    for (ip, left) in entries {
        groups
            .entry(whole_seconds(*left).as_secs())
            .or_default()
            .push(*ip);
    }
    groups
        .into_iter()
        .map(|(secs, ips)| (Duration::from_secs(secs), ips))
        .collect()
}

/// A time left as whole seconds, rounded up, at least one: what a late
/// block is applied (and printed) with, so it ends when it would have.
pub fn whole_seconds(left: Duration) -> Duration {
    Duration::from_secs((left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_v6_is_blocked_as_v4() {
        assert_eq!(Family::of("::ffff:10.1.2.3".parse().unwrap()), Family::V4);
        assert_eq!(Family::of("fd00::1".parse().unwrap()), Family::V6);
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(canonical(net("::ffff:10.1.2.3/128")), net("10.1.2.3/32"));
        assert_eq!(
            canonical(net("2001:db8:1:2::9/64")),
            net("2001:db8:1:2::/64")
        );
        assert_eq!(Family::of_net(&net("2001:db8:1:2::/64")), Family::V6);
        assert!(is_host(&net("10.1.2.3/32")) && !is_host(&net("2001:db8::/64")));
    }

    #[test]
    fn restored_blocks_are_grouped_by_whole_seconds_rounded_up() {
        let ip = |s: &str| IpNet::from(s.parse::<IpAddr>().unwrap());
        let groups = by_whole_seconds(&[
            (ip("192.0.2.1"), Duration::from_millis(9_300)),
            (ip("192.0.2.2"), Duration::from_secs(10)),
            (ip("192.0.2.3"), Duration::ZERO),
        ]);
        assert_eq!(
            groups,
            [
                (Duration::from_secs(1), vec![ip("192.0.2.3")]),
                (
                    Duration::from_secs(10),
                    vec![ip("192.0.2.1"), ip("192.0.2.2")]
                )
            ]
        );
    }
}
