//! The scan decision in nftables (`--nft-decide on`): rules in the agent's
//! own table `inet tcpwatch` that block a SYN scanner at the probe that
//! makes it one, before userspace has read that probe. Userspace (which
//! reads every probe too, from pcap or XDP, before netfilter) prints the
//! scan and confirms the block by adding its own element to `blocked4` /
//! `blocked6` with its TTL, or lifts the kernel's decision
//! ([`super::backend::Backend::overrule`]). The pure builders of the
//! rules, sets and elements are here, tested; [`super::nft`] runs them.
//!
//! # The rules, after the two `@blocked` drops (so confirmed blocks are
//! counted per element, as before)
//!
//! 1. `ip saddr @allow4 return` (and IPv6): loopback, the host's addresses,
//!    its gateways and `--allow` are never decided on, nor dropped by a
//!    decision (an IPv6 network longer than `--ipv6-prefix` puts its
//!    whole prefix there: the kernel leaves that prefix to userspace,
//!    which blocks by address there);
//! 2. `ip saddr @decided4 drop`: the kernel's decisions, each for
//!    [`GRACE`] (they only bridge the moment until userspace writes its
//!    own element; one nobody confirms just expires);
//! 3. `ip saddr @spared4 update @spared4 { ip saddr } return`: sources
//!    userspace overruled (over its cap) are not decided on again while
//!    they keep sending (the element is refreshed by each packet and
//!    lapses after a quiet window, when the detector's episode ends too);
//! 4. the decision: a SYN, or a FIN, NULL or Xmas probe (a segment
//!    without SYN, ACK and RST: the detector counts both kinds among the
//!    TCP ports), to a local address whose (source, local address, port) is not in `seen4` adds it there (for the window) and
//!    takes a token from the pair's bucket in `meter4`; a pair out of
//!    tokens takes one from the global `decisions` limit, enters
//!    `decided4` and its probe is dropped.
//!
//! # Why the kernel never decides what the detector would not
//!
//! The detector's rule: more than N distinct ports of one local address
//! probed by one source within the window W. The kernel counts a (source,
//! local address, port) at most once per `seen` lifetime (W plus a
//! margin, [`SLACK`]), so the counted probes of any span of W are of
//! distinct ports. The pair's bucket holds N tokens and gains one every
//! `cost` <= W/N (the rate is rounded up, so `cost` never exceeds W/N);
//! over any span L it can give out at most N + L/cost >= N + L*N/W
//! tokens, while if no span of W held more than N counted probes, a span
//! L (cut into floor(L/W) + 1 spans of W) holds at most N + L*N/W. So the
//! bucket runs dry, at the (N+1)th counted port at the earliest, only when
//! some span of W held more than N distinct ports: a scan by the
//! detector's rule. The kernel may decide later than the detector (a slow
//! scan, probes the kernel does not count: UDP), never earlier. A bucket that lapsed (its pair quiet past W) starts full, as
//! it would have refilled by then.
//!
//! The global `decisions` limit mirrors `--max-blocks-per-minute` (C)
//! conservatively: a bucket of burst b and rate r gives out at most b + r
//! in any minute, and b + r <= C ([`cap_split`]).
//!
//! Bounded kernel memory: `seen`, `meter`, `decided` and `spared` hold at
//! most [`SIZE`] elements each. Under a flood of spoofed sources a full set
//! refuses the new element, and the rule stops there: no decision (the
//! detector still decides in userspace), never a wrong one.

use super::backend::{canonical, Family};
use crate::event::show_net;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// How long a kernel decision holds unconfirmed: the same grace as the
/// XDP program's.
pub const GRACE: Duration = super::xdp::UNCONFIRMED_GRACE;

/// Added to the window for how long a probed port is remembered (and a
/// pair's bucket kept): set timeouts are in jiffies (1 to 10 ms) and may
/// lapse up to one early; remembering longer only counts fewer probes.
pub const SLACK: Duration = Duration::from_millis(20);

/// Elements per dynamic set at most.
pub const SIZE: u32 = 65_536;

/// The sets and objects of the decision, besides `blocked4`/`blocked6`.
pub const SETS: [&str; 11] = [
    "allow4", "allow6", "holds6", "seen4", "seen6", "meter4", "meter6", "decided4", "decided6",
    "spared4", "spared6",
];
/// The global limit object (the cap) and the counter of decisions.
pub const LIMIT: &str = "decisions";
pub const COUNTER: &str = "decisions";
/// Rules the decision adds to the chain.
pub const RULES: usize = 11;

/// What the kernel decides with: the detector's main rule, the cap and
/// the IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// More than this many distinct ports...
    pub ports: usize,
    /// ...within this window is a scan.
    pub window: Duration,
    /// New blocks in any sliding minute at most; `None`: no cap.
    pub cap: Option<u32>,
    /// IPv6 sources are counted (and blocked) per prefix of this length.
    pub ipv6_prefix: u8,
}

impl Rule {
    /// Why nftables cannot decide with this rule, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        if self.ports == 0 || u32::try_from(self.ports).is_err() {
            return Some(format!("--scan-ports {}", self.ports));
        }
        if self.window < Duration::from_millis(1) {
            return Some("a scan window under 1ms".into());
        }
        if self.cap == Some(0) {
            return Some("--max-blocks-per-minute 0".into());
        }
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return Some(format!("--ipv6-prefix {}", self.ipv6_prefix));
        }
        None
    }
}

/// nft's rate units, in seconds.
const UNITS: [(&str, u64); 5] = [
    ("second", 1),
    ("minute", 60),
    ("hour", 3600),
    ("day", 86_400),
    ("week", 604_800),
];

/// A pair's refill, `rate/unit`: one token per unit/rate <= window/ports
/// (the rate rounded up). The first unit that gives exactly window/ports,
/// else the week (the finest).
pub fn refill(ports: usize, window: Duration) -> (u64, &'static str) {
    let window_ms = window.as_millis().max(1);
    let ports = ports as u128;
    let mut last = (0, "week");
    for (name, secs) in UNITS {
        let unit_ms = u128::from(secs) * 1000;
        let rate = (ports * unit_ms).div_ceil(window_ms);
        last = (u64::try_from(rate).unwrap_or(u64::MAX), name);
        if (ports * unit_ms).is_multiple_of(window_ms) {
            break;
        }
    }
    last
}

/// The global limit for a cap of `cap` blocks in any minute: (burst,
/// rate, unit) with burst + what the rate refills in a minute <= cap.
/// `None`: no cap; a cap of 0 is no decision at all ([`Rule::unsupported`]).
pub fn cap_split(cap: Option<u32>) -> Option<(u32, u32, &'static str)> {
    let cap = cap?;
    Some(match cap {
        0 | 1 => (1, 1, "hour"),
        _ => (cap / 2, cap - cap / 2, "minute"),
    })
}

/// The mask of `--ipv6-prefix`, as nft writes it.
pub fn mask6(prefix: u8) -> Ipv6Addr {
    let bits = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    Ipv6Addr::from(bits)
}

/// `ip6 saddr`, masked to the prefix unless it is 128.
fn source6(prefix: u8) -> String {
    if prefix >= 128 {
        "ip6 saddr".into()
    } else {
        format!("ip6 saddr & {}", mask6(prefix))
    }
}

/// nft's time syntax: whole seconds as `30s`, anything finer in `ms`.
pub fn nft_time(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Creates the decision's sets and objects (in a table that has none) and
/// its rules, appended after the `@blocked` drops; `allow` fills the
/// allowlist sets.
pub fn create_script(table: &str, chain: &str, rule: &Rule, allow: &[IpNet]) -> String {
    let mut s = String::new();
    let remember = nft_time(rule.window + SLACK);
    let grace = nft_time(GRACE);
    for (fam, addr) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let dynamic = |name: &str, ty: &str, timeout: &str| {
            format!(
                "add set {table} {name}{fam} {{ type {ty}; flags dynamic, timeout; timeout {timeout}; size {SIZE}; }}\n"
            )
        };
        let _ = write!(
            s,
            "add set {table} allow{fam} {{ type {addr}; flags interval; }}\n{}{}{}{}{}",
            if fam == "6" {
                format!("add set {table} holds6 {{ type {addr}; flags interval; }}\n")
            } else {
                String::new()
            },
            dynamic(
                "seen",
                &format!("{addr} . {addr} . inet_service"),
                &remember
            ),
            dynamic("meter", &format!("{addr} . {addr}"), &remember),
            dynamic("decided", addr, &grace),
            dynamic("spared", addr, &remember),
        );
    }
    if let Some((burst, rate, unit)) = cap_split(rule.cap) {
        let _ = writeln!(
            s,
            "add limit {table} {LIMIT} {{ rate {rate}/{unit} burst {burst} packets }}"
        );
    }
    let _ = writeln!(s, "add counter {table} {COUNTER}");
    s += &allow_elements(table, allow, rule.ipv6_prefix);
    s += &rules_script(table, chain, rule);
    s
}

/// The decision's rules (see the module's comment). IPv6 sources in a
/// prefix of `holds6` (one holding an allowed address) are counted,
/// decided and spared by address, the others per prefix.
pub fn rules_script(table: &str, chain: &str, rule: &Rule) -> String {
    let (rate, unit) = refill(rule.ports, rule.window);
    let burst = rule.ports;
    let cap = match cap_split(rule.cap) {
        Some(_) => format!("limit name \"{LIMIT}\" "),
        None => String::new(),
    };
    let src6 = source6(rule.ipv6_prefix);
    // What the detector counts as a TCP port probed, or part of it: a SYN
    // (here without RST), and a segment with none of SYN, ACK, RST (FIN,
    // NULL, Xmas probes), to a local address.
    let syn = "tcp flags & (syn|rst|ack) { syn, 0x0 } fib daddr type local";
    let held = "ip6 saddr @holds6 ";
    let whole = "ip6 saddr != @holds6 ";
    let kinds: [(&str, &str, &str, &str); 3] = [
        ("4", "", "ip saddr", "ip daddr"),
        ("6", held, "ip6 saddr", "ip6 daddr"),
        ("6", whole, &src6, "ip6 daddr"),
    ];
    let mut s = String::new();
    let _ = write!(
        s,
        "add rule {table} {chain} ip saddr @allow4 return\n\
         add rule {table} {chain} ip6 saddr @allow6 return\n"
    );
    for (_, pick, src, _) in kinds {
        let fam = if src.starts_with("ip6") { "6" } else { "4" };
        let _ = writeln!(s, "add rule {table} {chain} {pick}{src} @decided{fam} drop");
    }
    for (fam, pick, src, _) in kinds {
        let _ = writeln!(
            s,
            "add rule {table} {chain} {pick}{src} @spared{fam} update @spared{fam} {{ {src} }} return"
        );
    }
    for (fam, pick, src, dst) in kinds {
        let _ = writeln!(
            s,
            "add rule {table} {chain} {syn} {pick}{src} . {dst} . tcp dport != @seen{fam} \
             add @seen{fam} {{ {src} . {dst} . tcp dport }} \
             update @meter{fam} {{ {src} . {dst} limit rate over {rate}/{unit} burst {burst} packets }} \
             {cap}add @decided{fam} {{ {src} }} counter name \"{COUNTER}\" drop"
        );
    }
    s
}

/// Deletes what [`create_script`] created (the counter stays: its count
/// goes on), after the chain is flushed: the caller re-adds the
/// `@blocked` drops, then the new decision if any.
pub fn delete_script(table: &str, rule: &Rule) -> String {
    let mut s = String::new();
    for set in SETS {
        let _ = writeln!(s, "delete set {table} {set}");
    }
    if cap_split(rule.cap).is_some() {
        let _ = writeln!(s, "delete limit {table} {LIMIT}");
    }
    s
}

/// The allowlist sets' elements, replacing what they held.
pub fn sync_allow_script(table: &str, allow: &[IpNet], ipv6_prefix: u8) -> String {
    format!(
        "flush set {table} allow4\nflush set {table} allow6\nflush set {table} holds6\n{}",
        allow_elements(table, allow, ipv6_prefix)
    )
}

fn allow_elements(table: &str, allow: &[IpNet], ipv6_prefix: u8) -> String {
    let (v4, v6, holds) = allow_nets(allow, ipv6_prefix);
    let mut s = String::new();
    for (set, nets) in [("allow4", v4), ("allow6", v6), ("holds6", holds)] {
        if !nets.is_empty() {
            let items: Vec<String> = nets.iter().map(show_net).collect();
            let _ = writeln!(s, "add element {table} {set} {{ {} }}", items.join(", "));
        }
    }
    s
}

/// The loopback networks, always allowed.
pub fn loopback() -> [IpNet; 4] {
    [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("a prefix length")),
        IpNet::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        IpNet::from(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ]
}

/// The networks of the allowlist sets, (IPv4, IPv6, IPv6 prefixes
/// holding one), none inside another (an interval set refuses overlaps):
/// loopback and `allow`, IPv4-mapped IPv6 networks counted as IPv4; and
/// the prefixes (at `ipv6_prefix`) of the allowed IPv6 networks longer
/// than it, outside every allowed network: the kernel decides per address
/// there, never the prefix whole.
pub fn allow_nets(allow: &[IpNet], ipv6_prefix: u8) -> (Vec<IpNet>, Vec<IpNet>, Vec<IpNet>) {
    let mut all: Vec<IpNet> = loopback()
        .iter()
        .chain(allow)
        .map(|n| canonical(*n))
        .collect();
    all.sort();
    all.dedup();
    let outer: Vec<IpNet> = all
        .iter()
        .copied()
        .filter(|n| !all.iter().any(|o| o != n && o.contains(n)))
        .collect();
    let mut holds: Vec<IpNet> = outer
        .iter()
        .filter_map(|n| match n {
            IpNet::V6(v6) if v6.prefix_len() > ipv6_prefix => Ipv6Net::new(v6.addr(), ipv6_prefix)
                .ok()
                .map(|p| IpNet::V6(p.trunc())),
            _ => None,
        })
        .filter(|p| !outer.iter().any(|o| o.contains(p)))
        .collect();
    holds.sort();
    holds.dedup();
    let (v4, v6) = outer
        .into_iter()
        .partition(|n| Family::of_net(n) == Family::V4);
    (v4, v6, holds)
}

/// The element of a decided (or spared) set that holds `target`, with the
/// set's family ("4" or "6"): an IPv4 address; an IPv6 address in a prefix
/// of `holds` as is; another IPv6 target at least as long as
/// `ipv6_prefix`, masked to it. `None`: the kernel never decides such a
/// target (an IPv4 prefix, a shorter IPv6 one).
pub fn decided_key(
    target: IpNet,
    ipv6_prefix: u8,
    holds: &[IpNet],
) -> Option<(&'static str, IpAddr)> {
    match canonical(target) {
        IpNet::V4(v4) if v4.prefix_len() == 32 => Some(("4", IpAddr::V4(v4.addr()))),
        IpNet::V6(v6)
            if v6.prefix_len() == 128
                && holds.iter().any(|h| h.contains(&IpAddr::V6(v6.addr()))) =>
        {
            Some(("6", IpAddr::V6(v6.addr())))
        }
        IpNet::V6(v6) if v6.prefix_len() >= ipv6_prefix => {
            let net = Ipv6Net::new(v6.addr(), ipv6_prefix).ok()?.trunc();
            Some(("6", IpAddr::V6(net.addr())))
        }
        _ => None,
    }
}

/// Lifts the kernel's decisions on `targets` and spares them (userspace
/// overruled them: not blocked, not decided on again while they go on).
pub fn overrule_script(table: &str, targets: &[IpNet], ipv6_prefix: u8, holds: &[IpNet]) -> String {
    let mut s = String::new();
    for target in targets {
        if let Some((fam, key)) = decided_key(*target, ipv6_prefix, holds) {
            let _ = write!(
                s,
                "add element {table} decided{fam} {{ {key} }}\n\
                 delete element {table} decided{fam} {{ {key} }}\n\
                 add element {table} spared{fam} {{ {key} }}\n"
            );
        }
    }
    s
}

/// Lifts the kernel's decision on `target` (`tcpwatch blocks remove`).
pub fn lift_script(table: &str, target: IpNet, ipv6_prefix: u8, holds: &[IpNet]) -> String {
    match decided_key(target, ipv6_prefix, holds) {
        Some((fam, key)) => format!(
            "add element {table} decided{fam} {{ {key} }}\n\
             delete element {table} decided{fam} {{ {key} }}\n"
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockset::nets;

    fn rule() -> Rule {
        Rule {
            ports: 3,
            window: Duration::from_secs(60),
            cap: Some(60),
            ipv6_prefix: 64,
        }
    }

    #[test]
    fn the_refill_never_costs_more_than_window_over_ports() {
        let s = Duration::from_secs;
        assert_eq!(refill(3, s(60)), (3, "minute"));
        assert_eq!(refill(5, s(10)), (30, "minute"));
        assert_eq!(refill(1, s(1)), (1, "second"));
        assert_eq!(refill(10, s(3600)), (10, "hour"));
        // 3 ports in 7 s: no unit divides; the week, rounded up.
        let (rate, unit) = refill(3, s(7));
        assert_eq!(unit, "week");
        assert_eq!(rate, (3u64 * 604_800).div_ceil(7));
        assert!(604_800.0 / rate as f64 <= 7.0 / 3.0);
        // Milliseconds.
        assert_eq!(refill(3, Duration::from_millis(1500)), (2, "second"));
        let (rate, unit) = refill(7, Duration::from_millis(1234));
        assert_eq!(unit, "week");
        assert!(604_800_000.0 / rate as f64 <= 1234.0 / 7.0);
    }

    #[test]
    fn the_cap_splits_into_burst_and_rate_within_a_minute() {
        assert_eq!(cap_split(None), None);
        assert_eq!(cap_split(Some(1)), Some((1, 1, "hour")));
        assert_eq!(cap_split(Some(2)), Some((1, 1, "minute")));
        assert_eq!(cap_split(Some(60)), Some((30, 30, "minute")));
        for cap in 2..200 {
            let (burst, rate, _) = cap_split(Some(cap)).unwrap();
            assert!(burst >= 1 && rate >= 1 && burst + rate <= cap, "{cap}");
        }
    }

    #[test]
    fn unsupported_rules() {
        assert_eq!(rule().unsupported(), None);
        assert!(Rule { ports: 0, ..rule() }.unsupported().is_some());
        assert!(Rule {
            cap: Some(0),
            ..rule()
        }
        .unsupported()
        .is_some());
        assert!(Rule {
            window: Duration::ZERO,
            ..rule()
        }
        .unsupported()
        .is_some());
        assert_eq!(
            Rule {
                cap: None,
                ..rule()
            }
            .unsupported(),
            None
        );
    }

    #[test]
    fn the_prefix_masks_ipv6_sources() {
        assert_eq!(mask6(64).to_string(), "ffff:ffff:ffff:ffff::");
        assert_eq!(mask6(48).to_string(), "ffff:ffff:ffff::");
        assert_eq!(source6(128), "ip6 saddr");
        assert_eq!(source6(56), "ip6 saddr & ffff:ffff:ffff:ff00::");
    }

    #[test]
    fn the_rules_follow_the_detector_and_the_cap() {
        let script = rules_script("inet tcpwatch", "prerouting", &rule());
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.len(), RULES);
        assert_eq!(
            lines[0],
            "add rule inet tcpwatch prerouting ip saddr @allow4 return"
        );
        assert_eq!(
            lines[3],
            "add rule inet tcpwatch prerouting ip6 saddr @holds6 ip6 saddr @decided6 drop"
        );
        assert_eq!(
            lines[4],
            "add rule inet tcpwatch prerouting ip6 saddr != @holds6 ip6 saddr & ffff:ffff:ffff:ffff:: @decided6 drop"
        );
        assert_eq!(
            lines[7],
            "add rule inet tcpwatch prerouting ip6 saddr != @holds6 ip6 saddr & ffff:ffff:ffff:ffff:: @spared6 \
             update @spared6 { ip6 saddr & ffff:ffff:ffff:ffff:: } return"
        );
        assert_eq!(
            lines[8],
            "add rule inet tcpwatch prerouting tcp flags & (syn|rst|ack) { syn, 0x0 } fib daddr type local \
             ip saddr . ip daddr . tcp dport != @seen4 add @seen4 { ip saddr . ip daddr . tcp dport } \
             update @meter4 { ip saddr . ip daddr limit rate over 3/minute burst 3 packets } \
             limit name \"decisions\" add @decided4 { ip saddr } counter name \"decisions\" drop"
        );
        assert!(lines[9].contains("ip6 saddr @holds6 ip6 saddr . ip6 daddr . tcp dport != @seen6"));
        assert!(lines[10].contains(
            "ip6 saddr != @holds6 ip6 saddr & ffff:ffff:ffff:ffff:: . ip6 daddr . tcp dport != @seen6"
        ));
        assert!(lines[10].contains("add @decided6 { ip6 saddr & ffff:ffff:ffff:ffff:: }"));
        // No cap: no global limit.
        let uncapped = rules_script(
            "t",
            "c",
            &Rule {
                cap: None,
                ..rule()
            },
        );
        assert!(!uncapped.contains("limit name"), "{uncapped}");
    }

    #[test]
    fn the_sets_remember_a_window_and_hold_a_decision_for_the_grace() {
        let script = create_script("inet tcpwatch", "prerouting", &rule(), &[]);
        assert!(script.contains(
            "add set inet tcpwatch seen4 { type ipv4_addr . ipv4_addr . inet_service; flags dynamic, timeout; timeout 60020ms; size 65536; }"
        ), "{script}");
        assert!(script.contains(
            "add set inet tcpwatch decided6 { type ipv6_addr; flags dynamic, timeout; timeout 3s; size 65536; }"
        ));
        assert!(script
            .contains("add limit inet tcpwatch decisions { rate 30/minute burst 30 packets }"));
        assert!(script.contains("add element inet tcpwatch allow4 { 0.0.0.0, 127.0.0.0/8 }"));
        assert!(script.ends_with(&rules_script("inet tcpwatch", "prerouting", &rule())));
        let gone = delete_script("inet tcpwatch", &rule());
        assert_eq!(gone.lines().count(), SETS.len() + 1);
        assert!(!delete_script(
            "t",
            &Rule {
                cap: None,
                ..rule()
            }
        )
        .contains("limit"));
    }

    #[test]
    fn allow_elements_never_overlap_and_cover_the_prefix_of_a_longer_v6() {
        let (v4, v6, holds) = allow_nets(
            &nets(&[
                "10.0.0.0/8",
                "10.1.2.3",
                "192.0.2.1",
                "::ffff:198.51.100.7",
                "2001:db8:1:2::5",
                "2001:db8::/32",
                "fd00:1:2:3:4::9",
                "fd00:9::/48",
            ]),
            64,
        );
        assert_eq!(
            v4,
            nets(&[
                "0.0.0.0/32",
                "10.0.0.0/8",
                "127.0.0.0/8",
                "192.0.2.1/32",
                "198.51.100.7/32"
            ])
        );
        assert_eq!(
            v6,
            nets(&[
                "::/128",
                "::1/128",
                "2001:db8::/32",
                "fd00:1:2:3:4::9/128",
                "fd00:9::/48"
            ])
        );
        // Prefixes holding an allowed address, outside the allowed nets.
        assert_eq!(holds, nets(&["::/64", "fd00:1:2:3::/64"]));
        let script = sync_allow_script("t", &nets(&["192.0.2.1"]), 64);
        assert_eq!(
            script,
            "flush set t allow4\nflush set t allow6\nflush set t holds6\n\
             add element t allow4 { 0.0.0.0, 127.0.0.0/8, 192.0.2.1 }\n\
             add element t allow6 { ::, ::1 }\n\
             add element t holds6 { ::/64 }\n"
        );
    }

    #[test]
    fn overruled_and_lifted_targets_leave_the_decided_sets() {
        let script = overrule_script(
            "t",
            &nets(&["192.0.2.9", "fd00:1:2:3::/64", "10.0.0.0/8"]),
            64,
            &[],
        );
        assert_eq!(
            script,
            "add element t decided4 { 192.0.2.9 }\n\
             delete element t decided4 { 192.0.2.9 }\n\
             add element t spared4 { 192.0.2.9 }\n\
             add element t decided6 { fd00:1:2:3:: }\n\
             delete element t decided6 { fd00:1:2:3:: }\n\
             add element t spared6 { fd00:1:2:3:: }\n"
        );
        assert_eq!(
            lift_script("t", nets(&["fd00:1:2:3::77"])[0], 64, &[]),
            "add element t decided6 { fd00:1:2:3:: }\ndelete element t decided6 { fd00:1:2:3:: }\n"
        );
        assert_eq!(lift_script("t", nets(&["fd00::/48"])[0], 64, &[]), "");
        // In a prefix holding an allowed address: by address.
        let holds = nets(&["fd00:1:2:3::/64"]);
        assert_eq!(
            decided_key(nets(&["fd00:1:2:3::77"])[0], 64, &holds),
            Some(("6", "fd00:1:2:3::77".parse().unwrap()))
        );
        assert_eq!(
            decided_key(nets(&["::ffff:192.0.2.1"])[0], 64, &[]),
            Some(("4", "192.0.2.1".parse().unwrap()))
        );
    }
}
