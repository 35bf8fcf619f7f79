//! The scan decision in the XDP program (`bpf/xdp_decide.h`), from
//! userspace: its configuration (the rule, the TTL of the blocks it
//! decides, the cap, the IPv6 prefix length), the allowlist it must never
//! block, kept in sync with the agent's, and its counters.
//!
//! The program drops the probe that makes its source a scanner and blocks
//! the source at once, flagged as its own; userspace, which reads that
//! probe too, prints the scan and then confirms the block (rewriting it
//! with its own TTL) or lifts it. What the kernel decides is computed from
//! the same rule as userspace's detector, so the two agree; the builders of
//! its configuration and allowlist entries are pure functions, tested here.

use super::not_found;
use anyhow::Context;
use aya::maps::lpm_trie::{Key as NetKey, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

pub const CONFIG: &str = "decide_config";
pub const ALLOW4: &str = "allow4";
pub const ALLOW6: &str = "allow6";
pub const STATS: &str = "decide_stats";
/// The LRU of (source, local address) pairs the program tracks.
pub const TRACKS: &str = "tracks";
/// Port slots per tracked pair (`DECIDE_SLOTS`): `--scan-ports` up to one
/// less is decided in the kernel.
pub const SLOTS: usize = 16;
/// The largest cap the program enforces exactly (`CAP_RING`); a larger one
/// is enforced as this many a minute (userspace allows the rest).
pub const CAP_RING: u32 = 1024;
/// Never block (loopback, the host's addresses, gateways, `--allow`).
pub const ALLOW_ALL: u32 = 1;
/// A prefix at `--ipv6-prefix` holding an address never to be blocked: its
/// scanners are blocked one address at a time.
pub const ALLOW_HOLDS: u32 = 2;

/// What the program decides with: the main scan rule of the detector, the
/// TTL of the blocks it decides (until userspace confirms them), the
/// blocks-per-minute cap and the IPv6 prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// More than this many distinct ports...
    pub ports: usize,
    /// ...within this window is a scan.
    pub window: Duration,
    pub ttl: Duration,
    /// New blocks in any sliding minute at most; `None`: no cap.
    pub cap: Option<u32>,
    /// IPv6 sources are counted (and blocked) per prefix of this length.
    pub ipv6_prefix: u8,
}

impl Rule {
    /// Why the program cannot apply this rule, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        if self.ports == 0 || self.ports >= SLOTS {
            return Some(format!(
                "--scan-ports {} (the kernel decides up to {})",
                self.ports,
                SLOTS - 1
            ));
        }
        None
    }
}

/// `struct decide_config` of `bpf/xdp_decide.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub window: u64,
    pub ttl: u64,
    pub ports: u32,
    pub cap: u32,
    pub prefix6: u32,
    pub pad: u32,
    pub mask6: [u8; 16],
}

// SAFETY: `Config` is repr(C) integers and a byte array laid out without
// padding (8 + 8 + 4 * 4 + 16 = 48 bytes, 8-aligned), and any bit pattern
// is a valid value.
unsafe impl aya::Pod for Config {}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The program's configuration for `rule`; `None` (or a rule it cannot
/// apply) turns the decision off (`ports` 0).
pub fn config(rule: Option<&Rule>) -> Config {
    let Some(rule) = rule.filter(|r| r.unsupported().is_none()) else {
        return Config::default();
    };
    let prefix = rule.ipv6_prefix.min(128);
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Config {
        window: nanos(rule.window),
        // At least one ns: a zero TTL would block nothing.
        ttl: nanos(rule.ttl).max(1),
        ports: rule.ports as u32,
        cap: rule.cap.map_or(0, |c| c.min(CAP_RING)),
        prefix6: u32::from(prefix),
        pad: 0,
        mask6: mask.to_be_bytes(),
    }
}

/// The entries of the program's allowlist tries for the networks never to
/// be blocked (`nets`: loopback, the host's addresses, its gateways,
/// `--allow`), with IPv6 counted per `/ipv6_prefix`:
///
/// - every network is [`ALLOW_ALL`]; an IPv4 one is also entered in its
///   IPv4-mapped IPv6 form;
/// - an IPv6 network longer than the prefix marks its prefix
///   [`ALLOW_HOLDS`] (a scanner there is blocked by address, never the
///   prefix whole), unless that prefix lies in an `ALLOW_ALL` network
///   (then the longer mark would hide the allowance).
pub fn allow_entries(nets: &[IpNet], ipv6_prefix: u8) -> BTreeMap<IpNet, u32> {
    let mut entries = BTreeMap::new();
    for net in nets {
        let net = net.trunc();
        entries.insert(net, ALLOW_ALL);
        if let IpNet::V4(v4) = net {
            let mapped = v4.network().to_ipv6_mapped();
            if let Ok(m) = IpNet::new(IpAddr::V6(mapped), v4.prefix_len() + 96) {
                entries.insert(m, ALLOW_ALL);
            }
        }
    }
    let all: Vec<IpNet> = entries.keys().copied().collect();
    // Marks come from the IPv6 networks given (not the IPv4-mapped forms:
    // no IPv6 scanner comes from ::ffff:0:0/96).
    for net in nets {
        let IpNet::V6(v6) = net.trunc() else { continue };
        if v6.prefix_len() <= ipv6_prefix {
            continue;
        }
        let Ok(mark) = IpNet::new(IpAddr::V6(v6.addr()), ipv6_prefix).map(|m| m.trunc()) else {
            continue;
        };
        let allowed = all.iter().any(|a| a.contains(&mark));
        if !allowed {
            entries.entry(mark).or_insert(ALLOW_HOLDS);
        }
    }
    entries
}

/// The scan decision's maps of a loaded program.
pub struct Decide {
    config: Array<MapData, Config>,
    allow4: LpmTrie<MapData, [u8; 4], u32>,
    allow6: LpmTrie<MapData, [u8; 16], u32>,
    stats: PerCpuArray<MapData, u64>,
    /// What the tries hold, as last written.
    allowed: BTreeMap<IpNet, u32>,
    rule: Option<Rule>,
}

/// What the program's decision did, since it was loaded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Sources it blocked.
    pub decided: u64,
    /// Decisions the cap refused.
    pub capped: u64,
    /// Probes not counted: their slot kept changing under them.
    pub contended: u64,
}

impl Decide {
    pub fn take(bpf: &mut aya::Ebpf) -> anyhow::Result<Decide> {
        let mut take = |name: &str| {
            bpf.take_map(name)
                .with_context(|| format!("the BPF object has no map '{name}'"))
        };
        Ok(Decide {
            config: Array::try_from(take(CONFIG)?).context("map decide_config")?,
            allow4: LpmTrie::try_from(take(ALLOW4)?).context("map allow4")?,
            allow6: LpmTrie::try_from(take(ALLOW6)?).context("map allow6")?,
            stats: PerCpuArray::try_from(take(STATS)?).context("map decide_stats")?,
            allowed: BTreeMap::new(),
            rule: None,
        })
    }

    /// Sets (or, with `None`, turns off) the rule the program decides with.
    pub fn set_rule(&mut self, rule: Option<Rule>) -> anyhow::Result<()> {
        self.config
            .set(0, config(rule.as_ref()), 0)
            .context("cannot configure the kernel's scan decision")?;
        self.rule = rule.filter(|r| r.unsupported().is_none());
        Ok(())
    }

    /// The rule in force, if the program decides.
    pub fn rule(&self) -> Option<Rule> {
        self.rule
    }

    /// Makes the program's allowlist hold `nets` (see [`allow_entries`]),
    /// writing only what changed.
    pub fn sync_allow(&mut self, nets: &[IpNet]) -> anyhow::Result<()> {
        let prefix = self.rule.map_or(128, |r| r.ipv6_prefix);
        let wanted = allow_entries(nets, prefix);
        if wanted == self.allowed {
            return Ok(());
        }
        for net in self.allowed.keys() {
            if !wanted.contains_key(net) {
                let removed = match net {
                    IpNet::V4(n) => self.allow4.remove(&NetKey::new(
                        u32::from(n.prefix_len()),
                        n.network().octets(),
                    )),
                    IpNet::V6(n) => self.allow6.remove(&NetKey::new(
                        u32::from(n.prefix_len()),
                        n.network().octets(),
                    )),
                };
                match removed {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => {
                        return Err(anyhow::anyhow!("cannot update the kernel allowlist: {e}"))
                    }
                }
            }
        }
        for (net, verdict) in &wanted {
            if self.allowed.get(net) == Some(verdict) {
                continue;
            }
            let written = match net {
                IpNet::V4(n) => self.allow4.insert(
                    &NetKey::new(u32::from(n.prefix_len()), n.network().octets()),
                    verdict,
                    0,
                ),
                IpNet::V6(n) => self.allow6.insert(
                    &NetKey::new(u32::from(n.prefix_len()), n.network().octets()),
                    verdict,
                    0,
                ),
            };
            written.map_err(|e| anyhow::anyhow!("cannot update the kernel allowlist: {e}"))?;
        }
        self.allowed = wanted;
        Ok(())
    }

    pub fn counts(&self) -> Counts {
        Counts {
            decided: super::per_cpu_sum(&self.stats, 0),
            capped: super::per_cpu_sum(&self.stats, 1),
            contended: super::per_cpu_sum(&self.stats, 2),
        }
    }
}

/// The networks always allowed besides the host's addresses, gateways and
/// `--allow`: loopback and the unspecified addresses.
pub fn loopback() -> [IpNet; 4] {
    [
        "127.0.0.0/8".parse().expect("a CIDR"),
        "0.0.0.0/32".parse().expect("a CIDR"),
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        IpNet::from(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse::<IpNet>()
            .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
    }

    fn rule() -> Rule {
        Rule {
            ports: 3,
            window: Duration::from_secs(60),
            ttl: Duration::from_secs(3600),
            cap: Some(60),
            ipv6_prefix: 64,
        }
    }

    #[test]
    fn the_config_is_the_programs_layout() {
        assert_eq!(std::mem::size_of::<Config>(), 48);
        let c = config(Some(&rule()));
        assert_eq!(c.window, 60_000_000_000);
        assert_eq!(c.ttl, 3_600_000_000_000);
        assert_eq!((c.ports, c.cap, c.prefix6), (3, 60, 64));
        assert_eq!(
            c.mask6,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn masks_caps_and_rules_the_kernel_cannot_apply() {
        let per_address = config(Some(&Rule {
            ipv6_prefix: 128,
            ..rule()
        }));
        assert_eq!(per_address.mask6, [0xff; 16]);
        let odd = config(Some(&Rule {
            ipv6_prefix: 60,
            cap: None,
            ..rule()
        }));
        assert_eq!(odd.mask6[7], 0xf0);
        assert_eq!(odd.mask6[8], 0);
        assert_eq!(odd.cap, 0, "no cap");
        let large = config(Some(&Rule {
            cap: Some(100_000),
            ..rule()
        }));
        assert_eq!(large.cap, CAP_RING);
        // Off: no rule, or more ports than there are slots.
        assert_eq!(config(None).ports, 0);
        let wide = Rule {
            ports: SLOTS,
            ..rule()
        };
        assert_eq!(config(Some(&wide)).ports, 0);
        assert_eq!(
            wide.unsupported().unwrap(),
            "--scan-ports 16 (the kernel decides up to 15)"
        );
        assert!(Rule {
            ports: 15,
            ..rule()
        }
        .unsupported()
        .is_none());
        assert_eq!(config(Some(&Rule { ports: 0, ..rule() })).ports, 0);
    }

    #[test]
    fn allow_entries_mark_prefixes_holding_an_allowed_address() {
        let entries = allow_entries(
            &[
                net("10.0.0.5"),
                net("fd00:1:2:3::5"),
                net("2001:db8::/32"),
                net("2001:db8:7:7::1"),
                net("fd00:9::/48"),
            ],
            64,
        );
        let got: Vec<(String, u32)> = entries.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        assert_eq!(
            got,
            [
                ("10.0.0.5/32".to_string(), ALLOW_ALL),
                ("::ffff:10.0.0.5/128".to_string(), ALLOW_ALL),
                ("2001:db8::/32".to_string(), ALLOW_ALL),
                // No mark for 2001:db8:7:7::/64: it lies in an allowed /32.
                ("2001:db8:7:7::1/128".to_string(), ALLOW_ALL),
                ("fd00:1:2:3::/64".to_string(), ALLOW_HOLDS),
                ("fd00:1:2:3::5/128".to_string(), ALLOW_ALL),
                ("fd00:9::/48".to_string(), ALLOW_ALL),
            ]
        );
        // Per address: no marks at all.
        let per_address = allow_entries(&[net("fd00:1:2:3::5")], 128);
        assert_eq!(per_address.len(), 1);
    }
}
