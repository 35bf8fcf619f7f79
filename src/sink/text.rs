//! The text format (docs/output.md): `<local time>: <event>`.

use crate::duration;
use crate::event::{show_net, Event, EventKind, Origin};
use chrono::{Datelike, Timelike};
use std::fmt::Write;

pub fn line(event: &Event) -> String {
    // `%Y-%m-%d %H:%M:%S: ` by hand: chrono's strftime parses its format
    // string for every line, which under a SYN flood costs more than the
    // rest of the line.
    let wall = &event.at.wall;
    let mut out = String::with_capacity(96);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}: ",
        wall.year(),
        wall.month(),
        wall.day(),
        wall.hour(),
        wall.minute(),
        wall.second()
    );
    // Writing to a String cannot fail.
    let _ = match &event.kind {
        EventKind::NewConnection { conn, .. } => {
            write!(
                out,
                "New connection: {} -> {}",
                conn.initiator, conn.acceptor
            )
        }
        EventKind::PortScan(scan) => {
            let _ = write!(
                out,
                "Port scan detected: {} -> {} on ports {}",
                show_net(&scan.source()),
                scan.local,
                ports(&scan.ports)
            );
            match scan.kind.suffix() {
                Some(kind) => write!(out, " ({kind})"),
                None => Ok(()),
            }
        }
        EventKind::FleetScan(scan) => write!(
            out,
            "Fleet scan detected: {} -> {} hosts on ports {}",
            show_net(&scan.source),
            scan.hosts,
            ports(&scan.ports)
        ),
        EventKind::Blocked(block) => {
            let _ = write!(
                out,
                "Blocked {} for {} via {}",
                show_net(&block.target),
                duration::format(block.ttl),
                block.backend
            );
            if block.repeat > 1 {
                let _ = write!(out, " (repeat {})", block.repeat);
            }
            match &block.origin {
                Origin::Fleet(node) => write!(out, " (fleet: {node})"),
                Origin::Here(_) => Ok(()),
            }
        }
        EventKind::Unblocked { target, backend } => {
            write!(out, "Unblocked {} via {backend}", show_net(target))
        }
    };
    out
}

/// Ports ascending as given, comma-separated, no spaces.
fn ports(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    ports.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Block, Connection, Direction, FleetScan, Origin, PortScan, ScanKind};
    use chrono::TimeZone;
    use std::time::Duration;

    fn at() -> Stamp {
        Stamp {
            wall: chrono::Local
                .with_ymd_and_hms(2021, 4, 28, 15, 28, 5)
                .unwrap(),
            mono: Duration::ZERO,
        }
    }

    fn text(kind: EventKind) -> String {
        line(&Event { at: at(), kind })
    }

    #[test]
    fn prints_the_spec_lines_to_the_byte() {
        let conn = |i: &str, a: &str| EventKind::NewConnection {
            conn: Connection {
                initiator: i.parse().unwrap(),
                acceptor: a.parse().unwrap(),
                direction: Direction::Inbound,
            },
            source: "procfs",
            owner: None,
        };
        assert_eq!(
            text(conn("192.0.2.56:5973", "10.0.0.5:80")),
            "2021-04-28 15:28:05: New connection: 192.0.2.56:5973 -> 10.0.0.5:80"
        );
        assert_eq!(
            text(conn("[2001:db8::7]:40112", "[2001:db8::1]:443")),
            "2021-04-28 15:28:05: New connection: [2001:db8::7]:40112 -> [2001:db8::1]:443"
        );
        assert_eq!(
            text(EventKind::PortScan(PortScan::syn(
                "192.0.2.56".parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
                vec![80, 81, 82, 83],
            ))),
            "2021-04-28 15:28:05: Port scan detected: 192.0.2.56 -> 10.0.0.5 on ports 80,81,82,83"
        );
        assert_eq!(
            text(EventKind::Blocked(Block::here(
                "192.0.2.56".parse().unwrap(),
                Duration::from_secs(3600),
                "nftables",
                "node-a",
            ))),
            "2021-04-28 15:28:05: Blocked 192.0.2.56 for 1h via nftables"
        );
    }

    #[test]
    fn prints_kinds_prefixes_repeats_and_the_fleet_to_the_byte() {
        let scan = |remote: &str, prefix: Option<&str>, local: &str, ports: Vec<u16>, kind| {
            EventKind::PortScan(PortScan {
                prefix: prefix.map(|p| p.parse().unwrap()),
                kind,
                ..PortScan::syn(remote.parse().unwrap(), local.parse().unwrap(), ports)
            })
        };
        assert_eq!(
            text(scan("192.0.2.56", None, "10.0.0.5", vec![21, 22, 23, 25], ScanKind::Fin)),
            "2021-04-28 15:28:05: Port scan detected: 192.0.2.56 -> 10.0.0.5 on ports 21,22,23,25 (FIN scan)"
        );
        for (kind, words) in [
            (ScanKind::Null, "NULL scan"),
            (ScanKind::Xmas, "Xmas scan"),
            (ScanKind::Udp, "UDP scan"),
        ] {
            let line = text(scan("192.0.2.56", None, "10.0.0.5", vec![1, 2, 3, 4], kind));
            assert!(
                line.ends_with(&format!("on ports 1,2,3,4 ({words})")),
                "{line}"
            );
        }
        assert_eq!(
            text(scan(
                "2001:db8:1:2::9",
                Some("2001:db8:1:2::/64"),
                "2001:db8::5",
                vec![20, 21, 22, 23],
                ScanKind::Syn
            )),
            "2021-04-28 15:28:05: Port scan detected: 2001:db8:1:2::/64 -> 2001:db8::5 on ports 20,21,22,23"
        );
        let block = |target: &str, hours: u64, repeat, origin| {
            EventKind::Blocked(Block {
                target: target.parse().unwrap(),
                ttl: Duration::from_secs(3600 * hours),
                backend: "nftables",
                repeat,
                origin,
            })
        };
        let here = Origin::Here("node-a".into());
        assert_eq!(
            text(block("2001:db8:1:2::/64", 1, 1, here.clone())),
            "2021-04-28 15:28:05: Blocked 2001:db8:1:2::/64 for 1h via nftables"
        );
        assert_eq!(
            text(block("192.0.2.56/32", 2, 2, here)),
            "2021-04-28 15:28:05: Blocked 192.0.2.56 for 2h via nftables (repeat 2)"
        );
        assert_eq!(
            text(block("192.0.2.56/32", 1, 1, Origin::Fleet("node-b".into()))),
            "2021-04-28 15:28:05: Blocked 192.0.2.56 for 1h via nftables (fleet: node-b)"
        );
        assert_eq!(
            text(EventKind::FleetScan(FleetScan {
                source: "192.0.2.56/32".parse().unwrap(),
                hosts: 12,
                ports: vec![22, 80],
            })),
            "2021-04-28 15:28:05: Fleet scan detected: 192.0.2.56 -> 12 hosts on ports 22,80"
        );
    }
}
