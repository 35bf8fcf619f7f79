//! `tcpwatch blocks [list|add IP|CIDR [--ttl D]|remove IP|CIDR|flush]`:
//! inspect, add or lift blocks.
//!
//! Through the running agent when one answers on its control socket: its
//! backend, its state file and its record of each block (reason, origin,
//! packets dropped) stay one story, and what it does is printed on its
//! stdout like its own decisions. With no agent, directly in whichever
//! backend's objects exist (for `xdp`: the maps an agent pins in
//! /sys/fs/bpf/tcpwatch), and in the state file, so that a lifted block
//! does not come back at the next start and an added one does.

use super::status::{block_line, no_agent};
use crate::block::allow::Allowlist;
use crate::block::backend::{canonical, Backend};
use crate::block::{iptables::Iptables, nft::Nftables, xdp::XdpBlock};
use crate::control::client::ask;
use crate::control::{Request, Response};
use crate::event::show_net;
use crate::state::Store;
use crate::{diag, duration};
use ipnet::IpNet;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Add {
        target: IpNet,
        ttl: Option<Duration>,
    },
    Remove(IpNet),
    Flush,
}

/// The TTL of a block added without an agent and without `--ttl`: the
/// agent's default `--block-ttl`.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Where the command finds the agent and its state file.
pub struct Places<'a> {
    pub control: &'a Path,
    pub state: &'a Path,
}

pub fn run(action: Action, places: &Places) -> anyhow::Result<()> {
    let request = match action {
        Action::List => Request::List,
        Action::Add { target, ttl } => Request::Add {
            target: show_net(&target),
            ttl_ms: ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        },
        Action::Remove(target) => Request::Remove {
            target: show_net(&target),
        },
        Action::Flush => Request::Flush,
    };
    match ask(places.control, &request)? {
        Some(answer) => through_agent(answer),
        None => direct(action, places),
    }
}

/// Prints what the agent did.
fn through_agent(answer: Response) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match answer {
        Response::Blocks { blocks } => {
            for block in &blocks {
                writeln!(out, "{}", block_line(block))?;
            }
        }
        Response::Added {
            target,
            ttl_ms,
            backend,
        } => writeln!(
            out,
            "Blocked {target} for {} via {backend}",
            duration::format(Duration::from_millis(ttl_ms))
        )?,
        Response::Removed {
            target,
            backend,
            was_blocked,
        } => match (was_blocked, backend) {
            (true, Some(backend)) => writeln!(out, "Unblocked {target} via {backend}")?,
            _ => writeln!(out, "{target} is not blocked")?,
        },
        Response::Flushed { targets, backend } => writeln!(
            out,
            "Flushed {} {} via {}",
            targets.len(),
            if targets.len() == 1 {
                "block"
            } else {
                "blocks"
            },
            backend.as_deref().unwrap_or("none")
        )?,
        Response::Refused { message } => anyhow::bail!("{message}"),
        Response::Status(_) => anyhow::bail!("unexpected answer from the agent"),
    }
    Ok(())
}

/// The backends whose objects exist on this host.
fn present() -> Vec<Box<dyn Backend>> {
    let all: Vec<Box<dyn Backend>> = vec![
        Box::new(Nftables::new()),
        Box::new(Iptables),
        Box::new(XdpBlock::pinned()),
    ];
    all.into_iter()
        .filter_map(|mut b| b.present().then_some(b))
        .collect()
}

/// Opens the state file for a change, if it exists and no process holds
/// it. An agent that runs without its control socket holds it: said once.
fn state_file(path: &Path) -> Option<Store> {
    if !path.exists() {
        return None;
    }
    match Store::open(path) {
        Ok(store) => Some(store),
        Err(e) => {
            diag::warn(format_args!(
                "{e}; an agent running without its control socket keeps its blocks as it knows them (use --control)"
            ));
            None
        }
    }
}

/// Without an agent: the objects that exist, and the state file.
fn direct(action: Action, places: &Places) -> anyhow::Result<()> {
    let backends = present();
    let mut out = std::io::stdout().lock();
    if let Action::Add { target, ttl } = action {
        return add_direct(
            target,
            ttl.unwrap_or(DEFAULT_TTL),
            backends,
            places,
            &mut out,
        );
    }
    if let Action::Remove(target) = action {
        let target = canonical(target);
        if let Some(store) = state_file(places.state) {
            store.forget_block(target)?;
        }
    }
    if backends.is_empty() {
        diag::note(
            "no blocks: neither the nft table inet tcpwatch, the ipsets tcpwatch4/tcpwatch6 nor the XDP maps pinned in /sys/fs/bpf/tcpwatch exist",
        );
        return Ok(());
    }
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
                    let dropped = entry
                        .packets
                        .map(|n| format!("; {n} packets dropped"))
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{} {left} via {name}{dropped}",
                        show_net(&entry.target)
                    )?;
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
            Action::Add { .. } => unreachable!("handled above"),
        }
    }
    Ok(())
}

/// A block added without an agent: never loopback, the host's addresses
/// or its gateways (the `--allow` entries are the agent's, which is not
/// there to say); applied in the objects that exist and recorded in the
/// state file, so the next start applies it for the time it has left.
fn add_direct(
    target: IpNet,
    ttl: Duration,
    backends: Vec<Box<dyn Backend>>,
    places: &Places,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let target = canonical(target);
    let shown = show_net(&target);
    let allow = Allowlist::of_host(Vec::new());
    if let Some(reason) = allow.check_net(target) {
        anyhow::bail!("not blocking {shown}: it is never blocked ({reason})");
    }
    let store = state_file(places.state);
    if backends.is_empty() && store.is_none() {
        anyhow::bail!(
            "{}, no firewall objects and no state file at {}: nothing to add {shown} to",
            no_agent(places.control),
            places.state.display()
        );
    }
    if let Some(store) = &store {
        let now = SystemTime::now();
        store.put_blocks(&[target], now + ttl, "manual", now)?;
    }
    for mut backend in backends {
        backend.block(&[target], ttl)?;
        writeln!(
            out,
            "Blocked {shown} for {} via {}",
            duration::format(ttl),
            backend.name()
        )?;
    }
    if store.is_some() {
        diag::note(format_args!(
            "no agent running: {shown} recorded in {}; the agent applies it when it starts",
            places.state.display()
        ));
    }
    Ok(())
}

/// `blocks add` and `blocks remove` take an address or a prefix
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
