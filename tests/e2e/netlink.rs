//! The netlink source sees exactly what procfs sees: `tcpwatch list` from
//! both, in a namespace holding thousands of connections (IPv4 and IPv6,
//! inbound and outbound), prints the same rows.

use crate::agent::AGENT;
use crate::lab::*;
use std::net::IpAddr;

/// Connections each way per family: 4 x 600 = 2,400 connections, 2,400
/// sockets on A (its end of each), plus the listeners.
const PER_KIND: usize = 600;

fn list(lab: &Lab, source: &str) -> Vec<String> {
    let out = lab.output(A, AGENT, &["list", "--source", source]);
    out.lines().map(str::to_string).collect()
}

#[test]
fn netlink_lists_the_same_connections_as_procfs() {
    let Some(lab) = Lab::new(2) else { return };
    let _servers = [
        lab.serve(A, Listen::Dual, &[8080]),
        lab.serve(B, Listen::Dual, &[9090]),
    ];
    let ports = |port: u16| vec![port; PER_KIND];
    let mut clients = Vec::new();
    for (from, to, port) in [(B, A, 8080), (A, B, 9090)] {
        let v4: IpAddr = lab.v4(to).into();
        let v6: IpAddr = lab.v6(to).into();
        clients.push(lab.connect(from, v4, &ports(port), None));
        clients.push(lab.connect(from, v6, &ports(port), None));
    }
    let procfs = list(&lab, "procfs");
    let netlink = list(&lab, "netlink");
    let established = |rows: &[String], direction: &str| {
        rows.iter()
            .filter(|r| r.starts_with(&format!("ESTABLISHED {direction}")))
            .count()
    };
    assert_eq!(
        established(&procfs, "inbound "),
        2 * PER_KIND,
        "procfs inbound"
    );
    assert_eq!(
        established(&procfs, "outbound"),
        2 * PER_KIND,
        "procfs outbound"
    );
    let v4_inbound = format!("-> {}:8080", lab.v4(A));
    assert!(
        procfs.iter().any(|r| r.ends_with(&v4_inbound)),
        "dual-stack v4 rows unmapped"
    );
    assert_eq!(procfs.len(), netlink.len());
    let differ: Vec<_> = procfs
        .iter()
        .zip(&netlink)
        .filter(|(p, n)| p != n)
        .take(5)
        .collect();
    assert!(
        differ.is_empty(),
        "first differences (procfs, netlink): {differ:#?}"
    );
}
