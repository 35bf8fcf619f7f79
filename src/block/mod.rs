//! The block stage: between detect and the sinks, it blocks the remote of
//! every port scan that is not on the allowlist and adds a `Blocked` event
//! right after the scan's.
//!
//! - [`blocker`]: the decision (allowlist, cap, journal, where the `Blocked`
//!   events go);
//! - [`firewall`]: applying it through a backend, with the blocks kept
//!   pending and retried while the firewall fails, and deleted objects
//!   re-created;
//! - [`backend`]: the narrow interface the firewalls sit behind, and its
//!   implementations: [`nft`], [`iptables`], [`xdp`] and [`dry`] (a dry run
//!   is one more backend). Each turns requests into batched, idempotent
//!   scripts or map updates; the stage itself is tested with a fake.
//! - [`allow`] (never blocked: loopback, the host's addresses, its
//!   gateways from [`routes`], `--allow`) and [`limit`] (the cap);
//! - [`record`]: why each source was blocked and how often in a row, for
//!   a repeat offender's longer block.

pub mod allow;
pub mod backend;
pub mod blocker;
pub mod dry;
pub mod exec;
pub mod firewall;
pub mod iptables;
pub mod journal;
pub mod limit;
pub mod nft;
pub mod nft_decide;
pub mod record;
pub mod routes;
pub mod xdp;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod tests;

use crate::clock::Clock;
use ipnet::IpNet;
use std::sync::Arc;
use std::time::Duration;

/// The `--block` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlockKind {
    None,
    Nftables,
    Iptables,
    Xdp,
}
crate::value_enum!(BlockKind);

/// A feature switched `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}
crate::value_enum!(OnOff);

impl BlockKind {
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::None => "none",
            BlockKind::Nftables => "nftables",
            BlockKind::Iptables => "iptables",
            BlockKind::Xdp => "xdp",
        }
    }
}

crate::settings! {
    /// How scanners are blocked.
    pub struct Settings {
        /// How scanners are blocked
        block: BlockKind = BlockKind::Nftables => "block", "", restart;
        /// How long a block lasts
        block_ttl: Duration = Duration::from_secs(3600) => "block-ttl", "DURATION", live;
        /// A repeat offender's block doubles each time, up to this ('--block-ttl' or less: no escalation)
        block_ttl_max: Duration = Duration::from_secs(24 * 3600) => "block-ttl-max", "DURATION", live;
        /// New blocks in any sliding minute at most, or 'off'; scanners over the cap are reported, not blocked
        max_blocks_per_minute: limit::Rate = limit::Rate::default() => "max-blocks-per-minute", "N|off", live;
        /// --block xdp: entries per address family in the kernel blocklist; when full, the least recently used entry is evicted
        xdp_map_size: xdp::MapSize = xdp::MapSize::default() => "xdp-map-size", "N", restart;
        /// --block xdp with --source xdp: the XDP program blocks a scanner at the probe that makes it one (on), or leaves every decision to userspace (off)
        xdp_decide: OnOff = OnOff::On => "xdp-decide", "on|off", restart;
        /// --block nftables with --source pcap, xdp or tracepoint,xdp: rules in the agent's table block a SYN scanner at the probe that makes it one (on), or every decision is left to userspace (off)
        nft_decide: OnOff = OnOff::On => "nft-decide", "on|off", restart;
        /// Never block this IP or CIDR (repeatable); loopback, the host's own addresses and its gateways are always allowed
        allow: Vec<IpNet> = Vec::new() => "allow", "IP|CIDR", live;
        /// Decide and report blocks, change nothing
        dry_run: bool = false => "dry-run", "", restart;
    }
}

/// The backend of `settings.block`, or `None` for `--block none`. The
/// `xdp` backend loads its own program on `interfaces` unless it is handed
/// the `xdp` source's ([`xdp::XdpBlock::shared`]); a dry run wraps the
/// backend it stands for.
pub fn backend(
    settings: &Settings,
    interfaces: &[String],
    clock: Arc<dyn Clock>,
) -> Option<Box<dyn backend::Backend>> {
    let real: Box<dyn backend::Backend> = match settings.block {
        BlockKind::None => return None,
        BlockKind::Nftables => Box::new(nft::Nftables::new()),
        BlockKind::Iptables => Box::new(iptables::Iptables),
        BlockKind::Xdp => Box::new(xdp::XdpBlock::new(
            interfaces.to_vec(),
            settings.xdp_map_size.0,
        )),
    };
    if settings.dry_run {
        return Some(Box::new(dry::DryRun::new(real.name(), clock)));
    }
    Some(real)
}
