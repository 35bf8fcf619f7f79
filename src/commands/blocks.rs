//! `tcpwatch blocks [list|add IP|CIDR [--ttl D]|remove IP|CIDR|flush]`:
//! inspect, add or lift the blocks of a running (or crashed) agent, in
//! whichever backend's objects exist (for `xdp`: the maps a running agent
//! pins in /sys/fs/bpf/tcpwatch). This is the direct path, used when no
//! agent answers: it changes the kernel's objects only, not an agent's
//! state file.

use crate::block::allow::Allowlist;
use crate::block::backend::{canonical, Backend, Entry};
use crate::block::{iptables::Iptables, nft::Nftables, xdp::XdpBlock};
use crate::event::show_net;
use crate::{diag, duration};
use ipnet::IpNet;
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Add(IpNet, Duration),
    Remove(IpNet),
    Flush,
}

const NOTHING: &str = "neither the nft table inet tcpwatch, the ipsets tcpwatch4/tcpwatch6 nor the XDP maps pinned in /sys/fs/bpf/tcpwatch exist";

/// The backends whose objects exist on this host.
fn present() -> Vec<Box<dyn Backend>> {
    let all: Vec<Box<dyn Backend>> = vec![
        Box::new(Nftables),
        Box::new(Iptables),
        Box::new(XdpBlock::pinned()),
    ];
    all.into_iter()
        .filter_map(|mut b| b.present().then_some(b))
        .collect()
}

pub fn run(action: Action) -> anyhow::Result<()> {
    if let Action::Add(target, _) = action {
        // Before anything is looked at: loopback and this host's own
        // addresses (and gateways) are never blocked.
        refuse_never_blocked(target, &Allowlist::of_host(Vec::new()))?;
    }
    let backends = present();
    if backends.is_empty() {
        if let Action::Add(..) = action {
            anyhow::bail!("nothing to add the block to: {NOTHING} (start the agent first)");
        }
        diag::note(format_args!("no blocks: {NOTHING}"));
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for mut backend in backends {
        let name = backend.name();
        match action {
            Action::List => {
                let mut entries = backend.list()?;
                entries.sort_by_key(|e| e.target);
                for entry in entries {
                    writeln!(out, "{}", list_line(&entry, name))?;
                }
            }
            Action::Add(target, ttl) => {
                let target = canonical(target);
                backend.block(&[target], ttl)?;
                writeln!(
                    out,
                    "Blocked {} for {} via {name}",
                    show_net(&target),
                    duration::format(ttl)
                )?;
            }
            Action::Remove(target) => {
                let target = canonical(target);
                backend.unblock(target)?;
                writeln!(out, "Unblocked {} via {name}", show_net(&target))?;
                still_covered(backend.as_mut(), target);
            }
            Action::Flush => {
                backend.flush()?;
                writeln!(out, "Flushed all blocks via {name}")?;
            }
        }
    }
    Ok(())
}

/// `blocks add` of an address or prefix holding loopback, an address of
/// this host or one of its gateways: an error of one line.
pub fn refuse_never_blocked(target: IpNet, allow: &Allowlist) -> anyhow::Result<()> {
    match allow.check_net(canonical(target)) {
        Some(reason) => anyhow::bail!("not blocking {}: {reason}", show_net(&canonical(target))),
        None => Ok(()),
    }
}

/// One line of `blocks list`: the target, its time left, the backend, and
/// the packets its block dropped when the backend counts them.
pub fn list_line(entry: &Entry, backend: &str) -> String {
    let left = match entry.remaining {
        Some(d) => format!("expires in {}s", d.as_secs()),
        None => "never expires".to_string(),
    };
    let mut line = format!("{} {left} via {backend}", show_net(&entry.target));
    if let Some(packets) = entry.packets {
        let unit = if packets == 1 { "packet" } else { "packets" };
        line.push_str(&format!(", {packets} {unit} dropped"));
    }
    line
}

/// After `remove`: says so when a blocked prefix still holds the target.
fn still_covered(backend: &mut dyn Backend, target: IpNet) {
    let Ok(entries) = backend.list() else { return };
    if let Some(outer) = entries
        .iter()
        .find(|e| e.target != target && e.target.contains(&target))
    {
        diag::note(format_args!(
            "{} is still blocked by {} via {}",
            show_net(&target),
            show_net(&outer.target),
            backend.name()
        ));
    }
}

/// `blocks add` and `remove` take an address or a prefix
/// (`2001:db8:1:2::/64`).
pub fn parse_target(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "'{}' is not an IP address or CIDR prefix",
                crate::text::printable(text)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_target(s).unwrap()
    }

    #[test]
    fn list_lines_show_time_left_and_drops() {
        let entry = Entry {
            target: net("2001:db8:1:2::/64"),
            remaining: Some(Duration::from_millis(3_599_400)),
            packets: Some(97),
        };
        assert_eq!(
            list_line(&entry, "nftables"),
            "2001:db8:1:2::/64 expires in 3599s via nftables, 97 packets dropped"
        );
        let one = Entry {
            packets: Some(1),
            ..entry.clone()
        };
        assert!(list_line(&one, "xdp").ends_with("via xdp, 1 packet dropped"));
        let bare = Entry::new(net("192.0.2.7"), None);
        assert_eq!(list_line(&bare, "iptables"), "192.0.2.7 never expires via iptables");
    }

    #[test]
    fn add_refuses_loopback_and_the_hosts_addresses() {
        let allow = Allowlist::new(
            Vec::new(),
            Box::new(|| Ok(vec!["10.0.0.5".parse().unwrap(), "fd00:1::5".parse().unwrap()])),
            Box::new(|| Ok(vec!["10.0.0.1".parse().unwrap()])),
        );
        let err = |s: &str| refuse_never_blocked(net(s), &allow).unwrap_err().to_string();
        assert_eq!(err("127.0.0.1"), "not blocking 127.0.0.1: loopback");
        assert_eq!(err("::1"), "not blocking ::1: loopback");
        assert_eq!(err("10.0.0.5"), "not blocking 10.0.0.5: an address of this host");
        assert_eq!(err("::ffff:10.0.0.5"), "not blocking 10.0.0.5: an address of this host");
        assert_eq!(
            err("fd00:1::77/64"),
            "not blocking fd00:1::/64: an address of this host"
        );
        assert_eq!(err("10.0.0.1"), "not blocking 10.0.0.1: a gateway of this host");
        refuse_never_blocked(net("198.51.100.7"), &allow).unwrap();
        refuse_never_blocked(net("fd00:2::/64"), &allow).unwrap();
    }

    #[test]
    fn targets_are_addresses_or_prefixes() {
        assert_eq!(net("10.1.2.3"), "10.1.2.3/32".parse::<IpNet>().unwrap());
        assert_eq!(net("2001:db8::/64").prefix_len(), 64);
        assert_eq!(
            parse_target("10.0.0.300").unwrap_err(),
            "'10.0.0.300' is not an IP address or CIDR prefix"
        );
    }
}
