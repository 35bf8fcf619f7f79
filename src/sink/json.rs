//! The JSON format (docs/output.md): one object a line.

use crate::event::{show_net, Event, EventKind, Owner};
use chrono::SecondsFormat;
use serde_json::{json, Value};

pub fn line(event: &Event) -> String {
    let time = event.at.wall.to_rfc3339_opts(SecondsFormat::Secs, false);
    let body: Value = match &event.kind {
        EventKind::NewConnection {
            conn,
            source,
            owner,
        } => {
            let mut body = json!({
                "time": time,
                "event": "new_connection",
                "src": conn.initiator.to_string(),
                "dst": conn.acceptor.to_string(),
                "direction": conn.direction.as_str(),
                "source": source,
            });
            if let (Some(owner), Some(fields)) = (owner, body.as_object_mut()) {
                add_owner(fields, owner);
            }
            body
        }
        EventKind::PortScan(scan) => json!({
            "time": time,
            "event": "port_scan",
            "src": show_net(&scan.source()),
            "dst": scan.local.to_string(),
            "ports": scan.ports,
            "kind": scan.kind.as_str(),
            "rule": scan.rule.to_string(),
        }),
        EventKind::FleetScan(scan) => json!({
            "time": time,
            "event": "fleet_scan",
            "src": show_net(&scan.source),
            "hosts": scan.hosts,
            "ports": scan.ports,
        }),
        EventKind::Blocked(block) => json!({
            "time": time,
            "event": "blocked",
            "ip": show_net(&block.target),
            "ttl_seconds": block.ttl.as_secs(),
            "backend": block.backend,
            "repeat": block.repeat,
            "origin": block.origin.node(),
        }),
        EventKind::Unblocked { target, backend } => json!({
            "time": time,
            "event": "unblocked",
            "ip": show_net(target),
            "backend": backend,
        }),
    };
    body.to_string()
}

/// What is known of a connection's owner; what is not known is left out.
fn add_owner(fields: &mut serde_json::Map<String, Value>, owner: &Owner) {
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            fields.insert(key.to_string(), value);
        }
    };
    put("netns", owner.netns.map(Value::from));
    put("pid", owner.pid.map(Value::from));
    put("comm", owner.comm.clone().map(Value::from));
    put("cgroup", owner.cgroup.clone().map(Value::from));
    put("container_id", owner.container_id.clone().map(Value::from));
    if let Some(pod) = &owner.pod {
        put("pod", Some(Value::from(pod.name.clone())));
        put("namespace", Some(Value::from(pod.namespace.clone())));
        put("pod_uid", Some(Value::from(pod.uid.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Connection, Direction, PortScan, ScanKind};
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
                owner: None,
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
            kind: EventKind::PortScan(PortScan::syn(
                "192.0.2.56".parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
                vec![80, 81, 82, 83],
            )),
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
            kind: EventKind::Blocked(crate::event::Block::here(
                "2001:db8::7".parse().unwrap(),
                Duration::from_secs(3600),
                "nftables",
                "node-a",
            )),
        };
        let v: Value = serde_json::from_str(&line(&blocked)).unwrap();
        assert_eq!(v["event"], "blocked");
        assert_eq!(v["ip"], "2001:db8::7");
        assert_eq!(v["ttl_seconds"], 3600);
        assert_eq!(v["backend"], "nftables");
        let unblocked = Event {
            at: at(),
            kind: EventKind::Unblocked {
                target: "192.0.2.56/32".parse().unwrap(),
                backend: "xdp",
            },
        };
        let v: Value = serde_json::from_str(&line(&unblocked)).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["ip"].as_str()),
            (Some("unblocked"), Some("192.0.2.56"))
        );
    }

    #[test]
    fn scans_carry_kind_and_rule_blocks_repeat_and_origin() {
        let scan = Event {
            at: at(),
            kind: EventKind::PortScan(PortScan {
                prefix: Some("2001:db8:1:2::/64".parse().unwrap()),
                kind: ScanKind::Xmas,
                ..PortScan::syn(
                    "2001:db8:1:2::9".parse().unwrap(),
                    "2001:db8::5".parse().unwrap(),
                    vec![20, 21, 22, 23],
                )
            }),
        };
        let v: Value = serde_json::from_str(&line(&scan)).unwrap();
        assert_eq!(v["src"], "2001:db8:1:2::/64");
        assert_eq!(v["kind"], "xmas");
        assert_eq!(v["rule"], "3/60s");
        let blocked = Event {
            at: at(),
            kind: EventKind::Blocked(crate::event::Block {
                target: "192.0.2.56/32".parse().unwrap(),
                ttl: Duration::from_secs(7200),
                backend: "xdp",
                repeat: 2,
                origin: crate::event::Origin::Fleet("node-b".into()),
            }),
        };
        let v: Value = serde_json::from_str(&line(&blocked)).unwrap();
        assert_eq!(
            (v["ip"].as_str(), v["repeat"].as_u64(), v["origin"].as_str()),
            (Some("192.0.2.56"), Some(2), Some("node-b"))
        );
        let fleet = Event {
            at: at(),
            kind: EventKind::FleetScan(crate::event::FleetScan {
                source: "192.0.2.56/32".parse().unwrap(),
                hosts: 12,
                ports: vec![22, 80],
            }),
        };
        let v: Value = serde_json::from_str(&line(&fleet)).unwrap();
        assert_eq!(v["event"], "fleet_scan");
        assert_eq!(
            (v["src"].as_str(), v["hosts"].as_u64()),
            (Some("192.0.2.56"), Some(12))
        );
        assert_eq!(v["ports"], json!([22, 80]));
    }

    #[test]
    fn a_connection_carries_what_is_known_of_its_owner_and_nothing_else() {
        let conn = |owner| Event {
            at: at(),
            kind: EventKind::NewConnection {
                conn: Connection {
                    initiator: "10.1.0.2:40000".parse().unwrap(),
                    acceptor: "10.1.0.3:80".parse().unwrap(),
                    direction: Direction::Outbound,
                },
                source: "tracepoint",
                owner,
            },
        };
        let owner = Owner {
            netns: Some(4026532185),
            pid: Some(16755),
            comm: Some("curl".into()),
            cgroup: Some("/kubepods/besteffort/pod1234/abcd".into()),
            container_id: Some("abcd".into()),
            pod: Some(crate::event::Pod {
                name: "web-0".into(),
                namespace: "shop".into(),
                uid: "1234".into(),
            }),
        };
        let v: Value = serde_json::from_str(&line(&conn(Some(owner.into())))).unwrap();
        assert_eq!(v["pid"], 16755);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["container_id"], "abcd");
        assert_eq!(
            (v["pod"].as_str(), v["namespace"].as_str()),
            (Some("web-0"), Some("shop"))
        );
        assert_eq!(v["netns"], 4026532185u64);
        let partial = Owner {
            netns: Some(1),
            ..Owner::default()
        };
        let v: Value = serde_json::from_str(&line(&conn(Some(partial.into())))).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert!(!keys
            .iter()
            .any(|k| ["pid", "comm", "pod", "container_id"].contains(&k.as_str())));
        let v: Value = serde_json::from_str(&line(&conn(None))).unwrap();
        assert!(v.get("netns").is_none());
    }
}
