//! The JSON format (docs/output.md): one object a line.

use crate::event::{Event, EventKind};
use chrono::SecondsFormat;
use serde_json::{json, Value};

pub fn line(event: &Event) -> String {
    let time = event.at.wall.to_rfc3339_opts(SecondsFormat::Secs, false);
    let body: Value = match &event.kind {
        EventKind::NewConnection { conn, source } => json!({
            "time": time,
            "event": "new_connection",
            "src": conn.initiator.to_string(),
            "dst": conn.acceptor.to_string(),
            "direction": conn.direction.as_str(),
            "source": source,
        }),
        EventKind::PortScan(scan) => json!({
            "time": time,
            "event": "port_scan",
            "src": scan.remote.to_string(),
            "dst": scan.local.to_string(),
            "ports": scan.ports,
        }),
        EventKind::Blocked(block) => json!({
            "time": time,
            "event": "blocked",
            "ip": block.ip.to_string(),
            "ttl_seconds": block.ttl.as_secs(),
            "backend": block.backend,
        }),
        EventKind::Unblocked { ip, backend } => json!({
            "time": time,
            "event": "unblocked",
            "ip": ip.to_string(),
            "backend": backend,
        }),
    };
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Connection, Direction, PortScan};
    use std::time::Duration;

    fn at() -> Stamp {
        let wall = chrono::DateTime::parse_from_rfc3339("2021-04-28T15:28:05+00:00").unwrap();
        Stamp {
            wall: wall.with_timezone(&chrono::Local),
            mono: Duration::ZERO,
        }
    }

    #[test]
    fn connection_has_every_field() {
        let event = Event {
            at: at(),
            kind: EventKind::NewConnection {
                conn: Connection {
                    initiator: "[2001:db8::7]:40112".parse().unwrap(),
                    acceptor: "[2001:db8::1]:443".parse().unwrap(),
                    direction: Direction::Inbound,
                },
                source: "procfs",
            },
        };
        let v: Value = serde_json::from_str(&line(&event)).unwrap();
        assert_eq!(v["event"], "new_connection");
        assert_eq!(v["src"], "[2001:db8::7]:40112");
        assert_eq!(v["dst"], "[2001:db8::1]:443");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["source"], "procfs");
        let time = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
        assert_eq!(time.timestamp(), 1619623685);
    }

    #[test]
    fn scan_lists_ports_as_numbers() {
        let event = Event {
            at: at(),
            kind: EventKind::PortScan(PortScan {
                remote: "192.0.2.56".parse().unwrap(),
                local: "10.0.0.5".parse().unwrap(),
                ports: vec![80, 81, 82, 83],
            }),
        };
        let v: Value = serde_json::from_str(&line(&event)).unwrap();
        assert_eq!(v["event"], "port_scan");
        assert_eq!(v["src"], "192.0.2.56");
        assert_eq!(v["dst"], "10.0.0.5");
        assert_eq!(v["ports"], json!([80, 81, 82, 83]));
    }

    #[test]
    fn block_events_carry_ip_ttl_and_backend() {
        let blocked = Event {
            at: at(),
            kind: EventKind::Blocked(crate::event::Block {
                ip: "2001:db8::7".parse().unwrap(),
                ttl: Duration::from_secs(3600),
                backend: "nftables",
            }),
        };
        let v: Value = serde_json::from_str(&line(&blocked)).unwrap();
        assert_eq!(v["event"], "blocked");
        assert_eq!(v["ip"], "2001:db8::7");
        assert_eq!(v["ttl_seconds"], 3600);
        assert_eq!(v["backend"], "nftables");
        let unblocked = Event {
            at: at(),
            kind: EventKind::Unblocked {
                ip: "192.0.2.56".parse().unwrap(),
                backend: "xdp",
            },
        };
        let v: Value = serde_json::from_str(&line(&unblocked)).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["ip"].as_str()),
            (Some("unblocked"), Some("192.0.2.56"))
        );
    }
}
