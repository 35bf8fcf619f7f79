//! The host's gateways: the next hop of every route that has one, read from
//! `/proc/net/route` (IPv4) and `/proc/net/ipv6_route` (IPv6) of the agent's
//! network namespace.
//!
//! Why they are never blocked: anyone can send a SYN with the gateway's
//! address as its source, and a blocked gateway stops the host hearing its
//! router (IPv6 neighbour discovery and router advertisements, ICMP
//! "packet too big", often DHCP and DNS).
//!
//! Limits of these files: `/proc/net/route` shows the main table only and,
//! for a multipath route, its first next hop; `/proc/net/ipv6_route` shows
//! every table and every next hop. Gateways of other IPv4 tables (policy
//! routing) need `--allow`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `RTF_GATEWAY` of `<linux/route.h>`: the route goes through a next hop.
const RTF_GATEWAY: u32 = 0x0002;

/// Every gateway of both families, in the order the kernel lists them,
/// without repeats. A missing `ipv6_route` (IPv6 disabled) is no gateway.
pub fn gateways() -> std::io::Result<Vec<IpAddr>> {
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    let v6 = match std::fs::read_to_string("/proc/net/ipv6_route") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        other => other?,
    };
    let mut all = parse_v4(&v4).map_err(|e| invalid("/proc/net/route", e))?;
    all.extend(parse_v6(&v6).map_err(|e| invalid("/proc/net/ipv6_route", e))?);
    let mut seen = std::collections::HashSet::new();
    all.retain(|ip| seen.insert(*ip));
    Ok(all)
}

fn invalid(file: &str, reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{file}: {reason}"))
}

/// The complete lines of `text`: a read racing a route change can end in
/// the middle of a line, which is dropped rather than misparsed.
fn complete_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.lines().enumerate().map(|(i, l)| (i + 1, l))
}

/// Gateways of `/proc/net/route`: a header line, then tab-separated
/// `Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT`,
/// addresses as the 8-hex-digit word the kernel holds (network byte order
/// printed as a host integer), flags as 4 hex digits.
pub fn parse_v4(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut gateways = Vec::new();
    for (number, line) in complete_lines(text) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if number == 1 {
            if fields.first() != Some(&"Iface") {
                return Err(format!("line 1: not the header: '{line}'"));
            }
            continue;
        }
        if fields.len() != 11 {
            return Err(format!("line {number}: {} fields, not 11", fields.len()));
        }
        let bad = |what: &str| format!("line {number}: bad {what} in '{}'", line.trim_end());
        let gateway = hex_u32(fields[2], 8).ok_or_else(|| bad("gateway"))?;
        let flags = hex_u32(fields[3], 4).ok_or_else(|| bad("flags"))?;
        if flags & RTF_GATEWAY != 0 && gateway != 0 {
            gateways.push(IpAddr::V4(Ipv4Addr::from(gateway.to_ne_bytes())));
        }
    }
    Ok(gateways)
}

/// Gateways of `/proc/net/ipv6_route`: space-separated `destination
/// dst_len source src_len next_hop metric refcnt use flags device`, each
/// address 32 hex digits in network byte order, the numbers 2 or 8 hex
/// digits; no header.
pub fn parse_v6(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut gateways = Vec::new();
    for (number, line) in complete_lines(text) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 10 {
            return Err(format!("line {number}: {} fields, not 10", fields.len()));
        }
        let bad = |what: &str| format!("line {number}: bad {what} in '{}'", line.trim_end());
        let widths = [32, 2, 32, 2, 32, 8, 8, 8, 8];
        if !fields.iter().zip(widths).all(|(f, w)| is_hex(f, w)) {
            return Err(bad("field"));
        }
        let next_hop = hex_v6(fields[4]).ok_or_else(|| bad("next hop"))?;
        let flags = hex_u32(fields[8], 8).ok_or_else(|| bad("flags"))?;
        if flags & RTF_GATEWAY != 0 && !next_hop.is_unspecified() {
            gateways.push(IpAddr::V6(next_hop));
        }
    }
    Ok(gateways)
}

/// Exactly `width` hex digits (`from_str_radix` alone would take a `+`).
fn is_hex(text: &str, width: usize) -> bool {
    text.len() == width && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex_u32(text: &str, width: usize) -> Option<u32> {
    is_hex(text, width)
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

fn hex_v6(text: &str) -> Option<Ipv6Addr> {
    is_hex(text, 32)
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
        .map(Ipv6Addr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured with `cat` in a namespace set up with:
    //   ip route add default via 10.20.30.1
    //   ip route add 198.51.100.0/24 via 10.20.30.254
    //   ip route add 203.0.113.0/24 nexthop via 10.20.30.7 nexthop via 10.20.30.8
    //   ip -6 route add default via fd00:20:30::1
    //   ip -6 route add 2001:db8:5::/48 via fe80::1 dev eth0
    //   ip -6 route add 2001:db8:9::/48 nexthop via fd00:20:30::7 nexthop via fd00:20:30::8
    // (addresses 10.20.30.2/24 and fd00:20:30::2/64 on eth0).
    const ROUTE: &str = include_str!("../../tests/fixtures/proc_net_route");
    const IPV6_ROUTE: &str = include_str!("../../tests/fixtures/proc_net_ipv6_route");

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ipv4_gateways_of_a_real_table() {
        // The multipath route shows its first next hop only: the kernel's
        // file has one line per route.
        assert_eq!(
            parse_v4(ROUTE).unwrap(),
            ips(&["10.20.30.1", "10.20.30.254", "10.20.30.7"])
        );
    }

    #[test]
    fn ipv6_gateways_of_a_real_table() {
        assert_eq!(
            parse_v6(IPV6_ROUTE).unwrap(),
            ips(&["fe80::1", "fd00:20:30::7", "fd00:20:30::8", "fd00:20:30::1"])
        );
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let cut = ROUTE.find("006433C6").unwrap() + 4;
        assert_eq!(parse_v4(&ROUTE[..cut]).unwrap(), ips(&["10.20.30.1"]));
        let cut = IPV6_ROUTE.find("fd000020003000000000000000000001").unwrap();
        assert_eq!(
            parse_v6(&IPV6_ROUTE[..cut]).unwrap(),
            ips(&["fe80::1", "fd00:20:30::7", "fd00:20:30::8"])
        );
        assert_eq!(parse_v4("").unwrap(), ips(&[]));
        assert_eq!(parse_v6("").unwrap(), ips(&[]));
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let header = ROUTE.lines().next().unwrap();
        for bad in [
            "eth0\t00000000\t+11E140A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
            "eth0\t00000000\t011E140\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
            "eth0\t00000000\t011E140A\t03\t0\t0\t0\t00000000\t0\t0\t0\n",
            "eth0\t00000000\t011E140A\t0003\n",
        ] {
            let err = parse_v4(&format!("{header}\n{bad}")).unwrap_err();
            assert!(err.starts_with("line 2: "), "{err}");
        }
        assert!(parse_v4("eth0\t00000000\t011E140A\t0003\n").is_err());
        let line = IPV6_ROUTE.lines().next().unwrap();
        let err = parse_v6(&format!("{line}\n{}\n", line.replacen("30", "3g", 1))).unwrap_err();
        assert!(err.starts_with("line 2: "), "{err}");
        assert!(parse_v6(&format!("{}\n", line.replace(" eth0", ""))).is_err());
    }

    #[test]
    fn this_hosts_tables_parse() {
        gateways().unwrap();
    }
}
