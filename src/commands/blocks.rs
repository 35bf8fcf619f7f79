//! `tcpwatch blocks [list|remove IP|flush]`: inspect or lift the blocks of
//! a running (or crashed) agent, in whichever backend's objects exist (for
//! `xdp`: the maps a running agent pins in /sys/fs/bpf/tcpwatch).

use crate::block::backend::{canonical, Backend};
use crate::block::{iptables::Iptables, nft::Nftables, xdp::XdpBlock};
use crate::diag;
use crate::event::show_net;
use ipnet::IpNet;
use std::io::Write;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Remove(IpNet),
    Flush,
}

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
    let backends = present();
    if backends.is_empty() {
        diag::note(
            "no blocks: neither the nft table inet tcpwatch, the ipsets tcpwatch4/tcpwatch6 nor the XDP maps pinned in /sys/fs/bpf/tcpwatch exist",
        );
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
                    let left = match entry.remaining {
                        Some(d) => format!("expires in {}s", d.as_secs()),
                        None => "never expires".to_string(),
                    };
                    writeln!(out, "{} {left} via {name}", show_net(&entry.target))?;
                }
            }
            Action::Remove(target) => {
                let target = canonical(target);
                backend.unblock(target)?;
                writeln!(out, "Unblocked {} via {name}", show_net(&target))?;
            }
            Action::Flush => {
                backend.flush()?;
                writeln!(out, "Flushed all blocks via {name}")?;
            }
        }
    }
    Ok(())
}

/// `blocks remove` takes an address or a prefix (`2001:db8:1:2::/64`).
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
