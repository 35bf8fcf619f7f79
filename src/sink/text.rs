//! The text format (docs/output.md): `<local time>: <event>`.

use crate::duration;
use crate::event::{Event, EventKind};
use std::fmt::Write;

pub fn line(event: &Event) -> String {
    let mut out = event.at.wall.format("%Y-%m-%d %H:%M:%S: ").to_string();
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
            let ports: Vec<String> = scan.ports.iter().map(u16::to_string).collect();
            write!(
                out,
                "Port scan detected: {} -> {} on ports {}",
                scan.remote,
                scan.local,
                ports.join(",")
            )
        }
        EventKind::Blocked(block) => write!(
            out,
            "Blocked {} for {} via {}",
            block.ip,
            duration::format(block.ttl),
            block.backend
        ),
        EventKind::Unblocked { ip, backend } => write!(out, "Unblocked {ip} via {backend}"),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Block, Connection, Direction, PortScan};
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
            text(EventKind::PortScan(PortScan {
                remote: "192.0.2.56".parse().unwrap(),
                local: "10.0.0.5".parse().unwrap(),
                ports: vec![80, 81, 82, 83],
            })),
            "2021-04-28 15:28:05: Port scan detected: 192.0.2.56 -> 10.0.0.5 on ports 80,81,82,83"
        );
        assert_eq!(
            text(EventKind::Blocked(Block {
                ip: "192.0.2.56".parse().unwrap(),
                ttl: Duration::from_secs(3600),
                backend: "nftables",
            })),
            "2021-04-28 15:28:05: Blocked 192.0.2.56 for 1h via nftables"
        );
    }
}
