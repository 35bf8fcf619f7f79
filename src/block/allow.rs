//! Who is never blocked: `--allow` networks, loopback, every address of the
//! host's own interfaces and every gateway of its routes (both re-read
//! before each decision, so an address added by DHCP or an operator a minute
//! ago is already safe). Blocking the host's own address would cut it off
//! from itself; blocking loopback would break every local service; blocking
//! a gateway would cut the host off from its router. A SYN's source address
//! can be forged, so these are exactly the addresses an attacker would
//! forge to turn the agent against its own host.

use crate::setting::Value;
use crate::text::printable;
use ipnet::IpNet;
use std::net::IpAddr;

/// `--allow` takes an address or a CIDR block.
impl Value for IpNet {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("'{}' is not an IP address or CIDR block", printable(text)))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Why an address is not blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Loopback,
    HostAddress,
    Gateway,
    Listed(IpNet),
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allowed::Loopback => write!(f, "loopback"),
            Allowed::HostAddress => write!(f, "an address of this host"),
            Allowed::Gateway => write!(f, "a gateway of this host"),
            Allowed::Listed(net) => write!(f, "--allow {net}"),
        }
    }
}

/// Reads the host's interface addresses; injected so tests need no OS.
pub type AddressReader = Box<dyn FnMut() -> std::io::Result<Vec<IpAddr>> + Send>;

/// Addresses read from the system, kept across a failed read.
struct Read {
    what: &'static str,
    addrs: Vec<IpAddr>,
    reader: AddressReader,
    fault: crate::diag::Fault,
}

impl Read {
    fn new(what: &'static str, reader: AddressReader) -> Self {
        Read {
            what,
            addrs: Vec::new(),
            reader,
            fault: crate::diag::Fault::default(),
        }
    }

    /// On failure the last list is kept (it only errs on the safe side for
    /// addresses that were removed) and the first failure is reported.
    fn refresh(&mut self) {
        match (self.reader)() {
            Ok(addrs) => {
                self.addrs = addrs.into_iter().map(|a| a.to_canonical()).collect();
                self.fault.clear();
            }
            Err(e) => {
                let what = self.what;
                self.fault.fail(|| format!("cannot list {what}: {e}"));
            }
        }
    }
}

pub struct Allowlist {
    nets: Vec<IpNet>,
    host: Read,
    gateways: Read,
}

impl Allowlist {
    /// An allowlist of `nets`, the addresses `read_host` lists and the
    /// gateways `read_gateways` lists.
    pub fn new(nets: Vec<IpNet>, read_host: AddressReader, read_gateways: AddressReader) -> Self {
        let mut list = Allowlist {
            nets,
            host: Read::new("the host's addresses", read_host),
            gateways: Read::new("the host's gateways", read_gateways),
        };
        list.refresh();
        list
    }

    /// The allowlist of this host: `--allow`, getifaddrs(3) and the routing
    /// tables' gateways.
    pub fn of_host(nets: Vec<IpNet>) -> Self {
        Self::new(
            nets,
            Box::new(crate::os::addrs::host),
            Box::new(super::routes::gateways),
        )
    }

    /// Replaces the `--allow` entries (SIGHUP).
    pub fn set_nets(&mut self, nets: Vec<IpNet>) {
        self.nets = nets;
    }

    /// Every network never blocked besides loopback, as networks: the
    /// `--allow` entries, the host's addresses and its gateways (for a
    /// firewall that decides by itself and must be told).
    pub fn entries(&self) -> Vec<IpNet> {
        let mut all = self.nets.clone();
        all.extend(
            self.host
                .addrs
                .iter()
                .chain(&self.gateways.addrs)
                .map(|a| IpNet::from(*a)),
        );
        all.sort();
        all.dedup();
        all
    }

    /// Re-reads the host's addresses and gateways.
    pub fn refresh(&mut self) {
        self.host.refresh();
        self.gateways.refresh();
    }

    /// `Some(reason)` when `ip` must not be blocked. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are judged as the IPv4 address they
    /// carry, both ways round.
    pub fn check(&self, ip: IpAddr) -> Option<Allowed> {
        let canonical = ip.to_canonical();
        if canonical.is_loopback() || canonical.is_unspecified() {
            return Some(Allowed::Loopback);
        }
        if self.host.addrs.contains(&canonical) {
            return Some(Allowed::HostAddress);
        }
        if self.gateways.addrs.contains(&canonical) {
            return Some(Allowed::Gateway);
        }
        let mapped = match canonical {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        self.nets
            .iter()
            .find(|net| {
                net.contains(&canonical)
                    || mapped.is_some_and(|m| net.contains(&m))
                    || unmapped_net(net).is_some_and(|n| n.contains(&canonical))
            })
            .map(|net| Allowed::Listed(*net))
    }
}

impl Allowlist {
    /// `Some(reason)` when `net` holds an address never to be blocked: for
    /// an address, as [`Allowlist::check`]; for a prefix, when loopback, an
    /// address of the host, a gateway or an `--allow` network lies in it
    /// (or it lies in an `--allow` network). A prefix is never blocked whole
    /// over such an address.
    pub fn check_net(&self, net: IpNet) -> Option<Allowed> {
        if net.prefix_len() == net.max_prefix_len() {
            return self.check(net.addr());
        }
        let net = net.trunc();
        let loopback: IpNet = match net {
            IpNet::V4(_) => "127.0.0.0/8".parse().expect("a CIDR"),
            IpNet::V6(_) => "::1/128".parse().expect("a CIDR"),
        };
        if overlaps(&net, &loopback) || net.contains(&net.addr()) && net.addr().is_unspecified() {
            return Some(Allowed::Loopback);
        }
        if self.host.addrs.iter().any(|a| net.contains(a)) {
            return Some(Allowed::HostAddress);
        }
        if self.gateways.addrs.iter().any(|a| net.contains(a)) {
            return Some(Allowed::Gateway);
        }
        self.nets
            .iter()
            .find(|listed| overlaps(&net, listed))
            .map(|listed| Allowed::Listed(*listed))
    }
}

/// Whether two networks share an address (one holds the other).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `::ffff:10.0.0.0/104` is the IPv4 network `10.0.0.0/8`.
fn unmapped_net(net: &IpNet) -> Option<IpNet> {
    let IpNet::V6(v6) = net else { return None };
    let v4 = v6.addr().to_ipv4_mapped()?;
    let prefix = v6.prefix_len().checked_sub(96)?;
    ipnet::Ipv4Net::new(v4, prefix).ok().map(IpNet::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(nets: &[&str], host: &[&str]) -> Allowlist {
        with_gateways(nets, host, &[])
    }

    fn with_gateways(nets: &[&str], host: &[&str], gateways: &[&str]) -> Allowlist {
        let host: Vec<IpAddr> = host.iter().map(|s| ip(s)).collect();
        let gateways: Vec<IpAddr> = gateways.iter().map(|s| ip(s)).collect();
        Allowlist::new(
            nets.iter().map(|n| n.parse().unwrap()).collect(),
            Box::new(move || Ok(host.clone())),
            Box::new(move || Ok(gateways.clone())),
        )
    }

    #[test]
    fn loopback_is_always_allowed() {
        let l = list(&[], &[]);
        for addr in [
            "127.0.0.1",
            "127.200.0.9",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
        ] {
            assert_eq!(l.check(ip(addr)), Some(Allowed::Loopback), "{addr}");
        }
        assert_eq!(l.check(ip("192.0.2.1")), None);
        assert_eq!(l.check(ip("2001:db8::1")), None);
    }

    #[test]
    fn host_addresses_are_allowed_in_every_form() {
        let l = list(&[], &["10.0.0.5", "fd00::5", "fe80::1"]);
        assert_eq!(l.check(ip("10.0.0.5")), Some(Allowed::HostAddress));
        assert_eq!(l.check(ip("::ffff:10.0.0.5")), Some(Allowed::HostAddress));
        assert_eq!(l.check(ip("fd00::5")), Some(Allowed::HostAddress));
        assert_eq!(l.check(ip("fe80::1")), Some(Allowed::HostAddress));
        assert_eq!(l.check(ip("10.0.0.6")), None);
    }

    #[test]
    fn gateways_are_allowed_in_every_form() {
        let l = with_gateways(&[], &["10.0.0.5"], &["10.0.0.1", "fe80::1"]);
        assert_eq!(l.check(ip("10.0.0.1")), Some(Allowed::Gateway));
        assert_eq!(l.check(ip("::ffff:10.0.0.1")), Some(Allowed::Gateway));
        assert_eq!(l.check(ip("fe80::1")), Some(Allowed::Gateway));
        assert_eq!(l.check(ip("10.0.0.2")), None);
        assert_eq!(
            Allowed::Gateway.to_string(),
            "a gateway of this host",
            "the reason stderr prints"
        );
    }

    #[test]
    fn the_hosts_allowlist_reads_its_gateways() {
        let gateways = crate::block::routes::gateways().unwrap();
        let l = Allowlist::of_host(Vec::new());
        for gw in gateways {
            assert!(l.check(gw).is_some(), "{gw}");
        }
    }

    #[test]
    fn allow_networks_match_plain_and_mapped_addresses() {
        let l = list(
            &["10.1.0.0/16", "2001:db8::/32", "::ffff:192.0.2.0/120"],
            &[],
        );
        let net = |s: &str| Some(Allowed::Listed(s.parse().unwrap()));
        assert_eq!(l.check(ip("10.1.2.3")), net("10.1.0.0/16"));
        assert_eq!(l.check(ip("::ffff:10.1.2.3")), net("10.1.0.0/16"));
        assert_eq!(l.check(ip("2001:db8:1::9")), net("2001:db8::/32"));
        assert_eq!(l.check(ip("192.0.2.77")), net("::ffff:192.0.2.0/120"));
        assert_eq!(l.check(ip("10.2.0.1")), None);
        assert_eq!(l.check(ip("192.0.3.1")), None);
    }

    #[test]
    fn a_prefix_holding_an_address_never_blocked_is_allowed() {
        let l = with_gateways(
            &["2001:db8:5::/48"],
            &["2001:db8:1:2::5"],
            &["2001:db8:9::1"],
        );
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            l.check_net(net("2001:db8:1:2::/64")),
            Some(Allowed::HostAddress)
        );
        assert_eq!(l.check_net(net("2001:db8:9::/64")), Some(Allowed::Gateway));
        assert_eq!(
            l.check_net(net("2001:db8:5:1::/64")),
            Some(Allowed::Listed(net("2001:db8:5::/48")))
        );
        assert_eq!(l.check_net(net("::/0")), Some(Allowed::Loopback));
        assert_eq!(l.check_net(net("2001:db8:7:7::/64")), None);
        assert_eq!(
            l.check_net(net("2001:db8:1:2::5/128")),
            Some(Allowed::HostAddress)
        );
        assert_eq!(l.check_net(net("2001:db8:1:2::6/128")), None);
    }

    #[test]
    fn refresh_follows_address_changes_and_keeps_the_list_on_error() {
        let current = Arc::new(Mutex::new(Ok(vec![ip("10.0.0.5")])));
        let feed = current.clone();
        let mut l = Allowlist::new(
            Vec::new(),
            Box::new(move || match &*feed.lock().unwrap() {
                Ok(v) => Ok(v.clone()),
                Err(()) => Err(std::io::Error::other("boom")),
            }),
            Box::new(|| Ok(Vec::new())),
        );
        assert!(l.check(ip("10.0.0.9")).is_none());
        *current.lock().unwrap() = Ok(vec![ip("10.0.0.5"), ip("10.0.0.9")]);
        l.refresh();
        assert_eq!(l.check(ip("10.0.0.9")), Some(Allowed::HostAddress));
        *current.lock().unwrap() = Err(());
        l.refresh();
        assert_eq!(l.check(ip("10.0.0.9")), Some(Allowed::HostAddress));
    }
}
