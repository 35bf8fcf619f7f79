//! The iptables backend: ipsets `tcpwatch4`/`tcpwatch6` (`hash:net`, so an
//! entry is an address or a prefix, with per-entry timeouts, so the kernel
//! expires blocks, and `counters`, so each entry counts the packets it
//! dropped) matched by one rule in a chain `TCPWATCH` that the `raw`
//! table's PREROUTING jumps to first, in iptables and ip6tables alike. Like
//! the nftables chain it sees traffic to the host and to containers before
//! conntrack, one set match per packet (a `hash:net` set looks up each
//! prefix length it holds, so a set of addresses and /64s costs two hash
//! lookups). Entries may overlap (an address inside a blocked /64): the
//! set holds both, each with its own timeout and counter.
//!
//! Without ipset there is no per-entry expiry in the kernel; the backend
//! then refuses to start (one warning, detection goes on) rather than grow a
//! rule per address with userspace timers.

use super::backend::{by_whole_seconds, canonical, Backend, Entry, Family};
use super::exec;
use crate::event::show_net;
use anyhow::Context;
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::Duration;

pub const SET4: &str = "tcpwatch4";
pub const SET6: &str = "tcpwatch6";
pub const CHAIN: &str = "TCPWATCH";
/// ipset's largest timeout, in seconds.
pub const MAX_TTL: Duration = Duration::from_secs(2_147_483);
/// Default maxelem is 65536; a large scan wave should not hit it.
const MAXELEM: &str = "1048576";

pub struct Iptables;

/// (tool, restore tool, set) of each family.
const FAMILIES: [(&str, &str, &str); 2] = [
    ("iptables", "iptables-restore", SET4),
    ("ip6tables", "ip6tables-restore", SET6),
];

impl Backend for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn install(&mut self, ttl: Duration) -> anyhow::Result<()> {
        if ttl > MAX_TTL {
            anyhow::bail!("--block-ttl is longer than ipset allows (2147483s)");
        }
        // A crashed run may have left anything: remove it all, then build.
        self.remove()?;
        for (family, set) in [("inet", SET4), ("inet6", SET6)] {
            exec::run(
                "ipset",
                &[
                    "create", set, "hash:net", "family", family, "timeout", "0", "counters",
                    "maxelem", MAXELEM,
                ],
                None,
            )?;
        }
        for (_, restore, set) in FAMILIES {
            exec::run(restore, &["--noflush"], Some(&chain_script(set)))
                .with_context(|| format!("cannot create chain {CHAIN}"))?;
        }
        Ok(())
    }

    fn block(&mut self, ips: &[IpNet], ttl: Duration) -> anyhow::Result<()> {
        exec::run(
            "ipset",
            &["-exist", "restore"],
            Some(&block_script(ips, ttl)),
        )
        .map(|_| ())
    }

    fn restore(&mut self, entries: &[(IpNet, Duration)]) -> anyhow::Result<()> {
        let script: String = by_whole_seconds(entries)
            .iter()
            .map(|(ttl, ips)| block_script(ips, *ttl))
            .collect();
        exec::run("ipset", &["-exist", "restore"], Some(&script)).map(|_| ())
    }

    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()> {
        exec::run(
            "ipset",
            &["-exist", "del", set_of(&target), &show_net(&target)],
            None,
        )
        .map(|_| ())
    }

    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for set in [SET4, SET6] {
            let saved = exec::run("ipset", &["list", set, "-output", "save"], None)?;
            entries.extend(parse_save(&saved));
        }
        Ok(entries)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for set in [SET4, SET6] {
            exec::run("ipset", &["flush", set], None)?;
        }
        Ok(())
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        for (tool, _, _) in FAMILIES {
            // Each jump is deleted until none is left (a crash loop could have
            // added several with an older build); errors mean "none left" or
            // "no such chain", and whatever remains is checked below.
            for _ in 0..16 {
                if exec::run(tool, &["-t", "raw", "-D", "PREROUTING", "-j", CHAIN], None).is_err() {
                    break;
                }
            }
            let _ = exec::run(tool, &["-t", "raw", "-F", CHAIN], None);
            let _ = exec::run(tool, &["-t", "raw", "-X", CHAIN], None);
        }
        for set in [SET4, SET6] {
            if let Err(e) = exec::run("ipset", &["destroy", set], None) {
                if set_exists(set)? {
                    return Err(e.context(format!("cannot remove ipset {set}")));
                }
            }
        }
        Ok(())
    }

    fn repair(&mut self, ttl: Duration, entries: &[(IpNet, Duration)]) -> anyhow::Result<bool> {
        // Not one transaction (ipset and iptables are separate tools): the
        // blocks are missing for the few ms between the two calls.
        self.install(ttl)?;
        if !entries.is_empty() {
            self.restore(entries)?;
        }
        Ok(true)
    }

    fn present(&mut self) -> bool {
        [SET4, SET6]
            .iter()
            .any(|set| set_exists(set).unwrap_or(false))
    }
}

fn set_exists(set: &str) -> anyhow::Result<bool> {
    let names = exec::run("ipset", &["list", "-n"], None)?;
    Ok(names.lines().any(|l| l.trim() == set))
}

fn set_of(target: &IpNet) -> &'static str {
    match Family::of_net(target) {
        Family::V4 => SET4,
        Family::V6 => SET6,
    }
}

/// The `raw` table's chain for one family, for `*-restore --noflush`
/// (declaring the chain flushes it; the jump goes first in PREROUTING).
pub fn chain_script(set: &str) -> String {
    format!(
        "*raw\n:{CHAIN} - [0:0]\n-A {CHAIN} -m set --match-set {set} src -j DROP\n-I PREROUTING 1 -j {CHAIN}\nCOMMIT\n"
    )
}

/// One `ipset -exist restore` batch: `-exist` makes re-adding an entry
/// succeed and reset its timeout (its counters are kept). ipset counts
/// whole seconds; a sub-second remainder rounds up so a block never ends
/// early.
pub fn block_script(targets: &[IpNet], ttl: Duration) -> String {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    targets
        .iter()
        .map(|t| canonical(*t))
        .map(|t| format!("add {} {} timeout {secs}\n", set_of(&t), show_net(&t)))
        .collect()
}

/// Reads `ipset list SET -output save`: `add SET TARGET [timeout N]
/// [packets N bytes N]` lines, TARGET an address or `ADDR/LEN`. `timeout
/// 0` is an entry that never expires (added by hand without a timeout): the
/// kernel shows an entry about to expire as `timeout 1`.
pub fn parse_save(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("add") {
                return None;
            }
            let target = parse_target(words.nth(1)?)?;
            let mut remaining = None;
            let mut packets = None;
            while let Some(word) = words.next() {
                match word {
                    "timeout" => {
                        remaining = words
                            .next()
                            .and_then(|n| n.parse().ok())
                            .filter(|&secs: &u64| secs > 0)
                            .map(Duration::from_secs)
                    }
                    "packets" => packets = words.next().and_then(|n| n.parse().ok()),
                    _ => {}
                }
            }
            Some(Entry {
                target,
                remaining,
                packets,
            })
        })
        .collect()
}

/// An entry of a `hash:net` set: `ADDR` or `ADDR/LEN` with its host bits
/// clear (as ipset prints them).
fn parse_target(word: &str) -> Option<IpNet> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    let net: IpNet = word.parse().ok()?;
    (net.trunc() == net).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_restore_batch_for_both_families() {
        let ips: Vec<IpNet> = vec![
            "192.0.2.1/32".parse().unwrap(),
            "2001:db8::7/128".parse().unwrap(),
        ];
        assert_eq!(
            block_script(&ips, Duration::from_millis(1500)),
            "add tcpwatch4 192.0.2.1 timeout 2\nadd tcpwatch6 2001:db8::7 timeout 2\n"
        );
    }

    #[test]
    fn chain_matches_the_set_and_is_jumped_to_first() {
        let script = chain_script(SET6);
        assert!(script.contains("-A TCPWATCH -m set --match-set tcpwatch6 src -j DROP\n"));
        assert!(script.contains("-I PREROUTING 1 -j TCPWATCH\n"));
        assert!(script.starts_with("*raw\n") && script.ends_with("COMMIT\n"));
    }

    #[test]
    fn timeout_zero_never_expires() {
        // As ipset 7.17 saves a set with a default timeout: the second entry
        // was added without one (found by the block_list fuzz seeds).
        let saved = "create tcpwatch4 hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 bucketsize 12 initval 0xbe1a1d3c\nadd tcpwatch4 10.99.1.1 timeout 3599\nadd tcpwatch4 192.0.2.7 timeout 0\n";
        let remaining: Vec<Option<Duration>> =
            parse_save(saved).iter().map(|e| e.remaining).collect();
        assert_eq!(remaining, [Some(Duration::from_secs(3599)), None]);
    }

    #[test]
    fn prefixes_and_counters_of_a_hash_net_set() {
        let ips: Vec<IpNet> = vec![
            "2001:db8:1:2::9/64".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        assert_eq!(
            block_script(&ips, Duration::from_secs(60)),
            "add tcpwatch6 2001:db8:1:2::/64 timeout 60\nadd tcpwatch4 10.1.0.0/16 timeout 60\n"
        );
        // As ipset 7.17 saves a hash:net set with counters.
        let saved = "create tcpwatch6 hash:net family inet6 hashsize 1024 maxelem 1048576 timeout 0 counters bucketsize 12 initval 0xfbf0f9e3\nadd tcpwatch6 fd00:1:2:3::5 timeout 69 packets 12 bytes 720\nadd tcpwatch6 fd00:1:2:3::/64 timeout 99 packets 0 bytes 0\nadd tcpwatch6 fd00:1:2:3::1/64 timeout 99\n";
        assert_eq!(
            parse_save(saved),
            [
                Entry {
                    target: "fd00:1:2:3::5/128".parse().unwrap(),
                    remaining: Some(Duration::from_secs(69)),
                    packets: Some(12),
                },
                Entry {
                    target: "fd00:1:2:3::/64".parse().unwrap(),
                    remaining: Some(Duration::from_secs(99)),
                    packets: Some(0),
                },
            ]
        );
    }

    #[test]
    fn parses_a_saved_set() {
        let saved = "create tcpwatch4 hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 bucketsize 12 initval 0x1b45a33a\nadd tcpwatch4 10.0.0.2 timeout 39\nadd tcpwatch4 10.0.0.3\n";
        assert_eq!(
            parse_save(saved),
            [
                Entry::new(
                    "10.0.0.2".parse::<IpAddr>().unwrap().into(),
                    Some(Duration::from_secs(39))
                ),
                Entry::new("10.0.0.3".parse::<IpAddr>().unwrap().into(), None),
            ]
        );
    }
}
