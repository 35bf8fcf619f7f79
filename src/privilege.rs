//! Least privilege: the agent holds only the capabilities its configured
//! features need, whoever started it.
//!
//! At start-up, before any thread exists (capabilities are per thread and
//! threads inherit them), [`apply`]:
//! - works out what the configuration needs ([`needs`]: measured, feature by
//!   feature, as uid 65534 under `setpriv`; see docs/privileges.md);
//! - stops with one line naming the feature and the capability when a source
//!   or the metrics port lacks one, and turns blocking off with one warning
//!   when the firewall lacks one (blocking that cannot work is said once, and
//!   detection goes on);
//! - raises what it needs from permitted into effective, so a binary with
//!   file capabilities `+p` (no `e`) works;
//! - puts what the firewall tools need (`nft`, `iptables-restore`, `ipset`
//!   are child processes) into the inheritable and ambient sets, since a
//!   non-root exec keeps only ambient capabilities;
//! - drops every other capability from every set, and sets no_new_privs, so
//!   neither this process nor anything it runs can gain any back.

use crate::block::BlockKind;
use crate::diag;
use crate::metrics::Listen;
use crate::os::caps::{self, Cap, CapSet};
use crate::settings::RunSettings;
use crate::source::SourceKind;

/// What a capability is for, and what happens without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The feature cannot run: the agent stops (exit 1).
    Required,
    /// Blocking: without it the agent warns once and only detects.
    Blocking,
    /// Used when held, never asked for (see [`needs`]).
    Optional,
}

/// One feature's use of one capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The flag as the operator wrote it, e.g. `--source pcap`.
    pub feature: String,
    pub cap: Cap,
    pub role: Role,
    /// Used by a child process (a firewall tool), so it must be ambient.
    pub by_tools: bool,
}

/// What the host decides about needs.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    /// `net.ipv4.ip_unprivileged_port_start`: lower ports need a capability.
    pub unprivileged_port_start: u16,
    /// Whether the agent runs as uid 0, which owns root's files (tracefs).
    pub root: bool,
    /// Whether tracefs is mounted where the BPF loader looks for it.
    pub tracefs_mounted: bool,
}

/// The capabilities `config` needs, feature by feature.
///
/// Measured as uid 65534 (setpriv, a network namespace):
/// - procfs, netlink, a state file, metrics on a port >= 1024: none;
/// - pcap: CAP_NET_RAW (packet socket);
/// - nftables: CAP_NET_ADMIN, in-process (libnftables) or in `nft`;
/// - iptables: CAP_NET_ADMIN and CAP_NET_RAW, in `iptables-restore` (its set
///   match asks ipset over a raw socket) and `ipset`; iptables-nft takes no
///   lock file;
/// - XDP, source or blocklist: CAP_BPF (maps, BTF), CAP_NET_ADMIN (an XDP
///   program, attaching it) and CAP_PERFMON (without it the verifier rejects
///   the program); no memlock limit on this kernel (memcg accounting).
/// - tracepoint: CAP_BPF and CAP_PERFMON (a tracing program reading kernel
///   memory, attached through perf events); tracefs, where a tracepoint's id
///   is read, is root's with mode 0700: another user needs
///   CAP_DAC_READ_SEARCH; and when tracefs is not mounted, CAP_SYS_ADMIN to
///   mount it. Optional: CAP_SYS_PTRACE names the owners of the listeners
///   opened before the agent (reading other processes' `/proc/PID/fd`).
///
/// Optional, used when held: CAP_SYS_ADMIN lets the XDP code recognise a
/// program or pins another tcpwatch left (listing BPF objects by id), and
/// mount a BPF filesystem for the pins where none is mounted.
pub fn needs(config: &RunSettings, host: Host) -> Vec<Need> {
    let mut out = Vec::new();
    let mut add = |feature: &str, caps: &[Cap], role: Role, by_tools: bool| {
        for &cap in caps {
            out.push(Need {
                feature: feature.to_string(),
                cap,
                role,
                by_tools,
            });
        }
    };
    let xdp = [Cap::Bpf, Cap::NetAdmin, Cap::Perfmon];
    let kind = config.source.source;
    let source = format!("--source {}", kind.name());
    match kind {
        SourceKind::Procfs | SourceKind::Netlink => {}
        SourceKind::Pcap => add(&source, &[Cap::NetRaw], Role::Required, false),
        SourceKind::Xdp => add(&source, &xdp, Role::Required, false),
        SourceKind::Tracepoint => add(&source, &[Cap::Bpf, Cap::Perfmon], Role::Required, false),
        SourceKind::TracepointXdp => add(&source, &xdp, Role::Required, false),
    }
    if kind.uses_tracepoint() {
        if !host.tracefs_mounted {
            let feature = format!("{source} (to mount tracefs, which is not mounted)");
            add(&feature, &[Cap::SysAdmin], Role::Required, false);
        }
        if !host.root {
            let feature = format!("{source} (tracefs is root's, mode 0700)");
            add(&feature, &[Cap::DacReadSearch], Role::Required, false);
        }
        add("tracepoint", &[Cap::SysPtrace], Role::Optional, false);
    }
    let block = format!("--block {}", config.block.block.name());
    match (config.block.block, config.block.dry_run) {
        (BlockKind::None, _) | (_, true) => {}
        (BlockKind::Nftables, false) => add(&block, &[Cap::NetAdmin], Role::Blocking, true),
        (BlockKind::Iptables, false) => {
            add(&block, &[Cap::NetAdmin, Cap::NetRaw], Role::Blocking, true)
        }
        (BlockKind::Xdp, false) => add(&block, &xdp, Role::Blocking, false),
    }
    let uses_xdp = kind.uses_xdp() || config.block.block == BlockKind::Xdp;
    if uses_xdp {
        add("xdp", &[Cap::SysAdmin], Role::Optional, false);
    }
    if let Listen::At(addr) = config.metrics.metrics_addr {
        if addr.port() != 0 && addr.port() < host.unprivileged_port_start {
            let feature = format!("--metrics-addr {addr}");
            add(&feature, &[Cap::NetBindService], Role::Required, false);
        }
    }
    out
}

/// What to do, given the needs and the permitted set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The one-line reason to stop, if a required capability is missing.
    pub fatal: Option<String>,
    /// Blocking cannot work: warn with this line and turn it off.
    pub no_block: Option<String>,
    /// Effective and permitted from now on.
    pub keep: CapSet,
    /// Inheritable and ambient: what the firewall tools need.
    pub ambient: CapSet,
}

pub fn plan(needs: &[Need], permitted: CapSet) -> Plan {
    let missing = |role: Role| -> Option<String> {
        let mut features: Vec<(&str, Vec<&str>)> = Vec::new();
        for need in needs.iter().filter(|n| n.role == role) {
            if permitted.has(need.cap) {
                continue;
            }
            match features.iter_mut().find(|(f, _)| *f == need.feature) {
                Some((_, caps)) => caps.push(need.cap.name()),
                None => features.push((&need.feature, vec![need.cap.name()])),
            }
        }
        let lines: Vec<String> = features
            .iter()
            .map(|(feature, caps)| format!("{feature} needs {}", caps.join(", ")))
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    };
    let fatal = missing(Role::Required);
    let no_block = missing(Role::Blocking);
    let mut keep = CapSet::default();
    let mut ambient = CapSet::default();
    for need in needs {
        if need.role == Role::Blocking && no_block.is_some() {
            continue;
        }
        keep = keep.with(need.cap);
        if need.by_tools {
            ambient = ambient.with(need.cap);
        }
    }
    Plan {
        fatal,
        no_block,
        keep: keep.and(permitted),
        ambient: ambient.and(permitted),
    }
}

/// Applies the plan for `config` to this process: see the module docs.
/// Returns the configuration to run (blocking off if it cannot work), or
/// the one-line error of a feature that cannot run. Call before any thread
/// is started.
pub fn apply(mut config: RunSettings) -> anyhow::Result<RunSettings> {
    let needs = needs(&config, host());
    let held = match caps::get() {
        Ok(held) => held,
        Err(e) => {
            diag::warn(format_args!("cannot read this process's capabilities: {e}"));
            return Ok(config);
        }
    };
    let plan = plan(&needs, held.permitted);
    if let Some(line) = plan.fatal {
        anyhow::bail!("{line}");
    }
    if let Some(line) = &plan.no_block {
        diag::warn(format_args!("{line}; detecting only"));
        config.block.block = BlockKind::None;
    }
    if let Err(e) = caps::restrict(plan.keep, plan.ambient) {
        diag::warn(format_args!("cannot drop unneeded capabilities: {e}"));
    }
    Ok(config)
}

fn host() -> Host {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    Host {
        unprivileged_port_start: start,
        root: crate::os::process::euid() == 0,
        tracefs_mounted: crate::bpf::tracepoint::Tracefs::mounted(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        unprivileged_port_start: 1024,
        root: false,
        tracefs_mounted: true,
    };

    fn config(source: SourceKind, block: BlockKind) -> RunSettings {
        let mut c = RunSettings::default();
        c.source.source = source;
        c.block.block = block;
        c.metrics.metrics_addr = Listen::At("127.0.0.1:9472".parse().unwrap());
        c
    }

    /// The needs as (feature, capability) pairs of one role.
    fn of(needs: &[Need], role: Role) -> Vec<(String, Cap)> {
        needs
            .iter()
            .filter(|n| n.role == role)
            .map(|n| (n.feature.clone(), n.cap))
            .collect()
    }

    fn pairs(list: &[(&str, Cap)]) -> Vec<(String, Cap)> {
        list.iter().map(|(f, c)| (f.to_string(), *c)).collect()
    }

    #[test]
    fn polling_sources_without_blocking_need_nothing() {
        for source in [SourceKind::Procfs, SourceKind::Netlink] {
            assert!(needs(&config(source, BlockKind::None), HOST).is_empty());
        }
    }

    #[test]
    fn each_source_needs_its_capabilities() {
        let pcap = needs(&config(SourceKind::Pcap, BlockKind::None), HOST);
        assert_eq!(
            of(&pcap, Role::Required),
            pairs(&[("--source pcap", Cap::NetRaw)])
        );
        let xdp = needs(&config(SourceKind::Xdp, BlockKind::None), HOST);
        assert_eq!(
            of(&xdp, Role::Required),
            pairs(&[
                ("--source xdp", Cap::Bpf),
                ("--source xdp", Cap::NetAdmin),
                ("--source xdp", Cap::Perfmon),
            ])
        );
        assert_eq!(of(&xdp, Role::Optional), pairs(&[("xdp", Cap::SysAdmin)]));
    }

    #[test]
    fn the_tracepoint_source_needs_what_its_host_lacks() {
        let root = Host { root: true, ..HOST };
        let tp = needs(&config(SourceKind::Tracepoint, BlockKind::None), root);
        assert_eq!(
            of(&tp, Role::Required),
            pairs(&[
                ("--source tracepoint", Cap::Bpf),
                ("--source tracepoint", Cap::Perfmon),
            ])
        );
        assert_eq!(
            of(&tp, Role::Optional),
            pairs(&[("tracepoint", Cap::SysPtrace)])
        );
        let user = needs(&config(SourceKind::Tracepoint, BlockKind::None), HOST);
        assert_eq!(
            of(&user, Role::Required)[2..],
            pairs(&[(
                "--source tracepoint (tracefs is root's, mode 0700)",
                Cap::DacReadSearch
            )])
        );
        let unmounted = Host {
            tracefs_mounted: false,
            ..root
        };
        let c = config(SourceKind::Tracepoint, BlockKind::None);
        let plan = plan(&needs(&c, unmounted), CapSet::of(&[Cap::Bpf]));
        assert_eq!(
            plan.fatal.as_deref(),
            Some("--source tracepoint needs CAP_PERFMON; --source tracepoint (to mount tracefs, which is not mounted) needs CAP_SYS_ADMIN")
        );
        let both = needs(&config(SourceKind::TracepointXdp, BlockKind::None), root);
        assert_eq!(
            of(&both, Role::Required),
            pairs(&[
                ("--source tracepoint,xdp", Cap::Bpf),
                ("--source tracepoint,xdp", Cap::NetAdmin),
                ("--source tracepoint,xdp", Cap::Perfmon),
            ])
        );
        assert_eq!(
            of(&both, Role::Optional),
            pairs(&[("tracepoint", Cap::SysPtrace), ("xdp", Cap::SysAdmin)])
        );
    }

    #[test]
    fn each_backend_needs_its_capabilities_and_tools_get_them_ambient() {
        let nft = needs(&config(SourceKind::Procfs, BlockKind::Nftables), HOST);
        assert_eq!(
            of(&nft, Role::Blocking),
            pairs(&[("--block nftables", Cap::NetAdmin)])
        );
        assert!(nft.iter().all(|n| n.by_tools));
        let ipt = needs(&config(SourceKind::Procfs, BlockKind::Iptables), HOST);
        assert_eq!(
            of(&ipt, Role::Blocking),
            pairs(&[
                ("--block iptables", Cap::NetAdmin),
                ("--block iptables", Cap::NetRaw)
            ])
        );
        let xdp = needs(&config(SourceKind::Procfs, BlockKind::Xdp), HOST);
        assert_eq!(of(&xdp, Role::Blocking).len(), 3);
        assert!(xdp.iter().all(|n| !n.by_tools), "XDP runs in-process");
    }

    #[test]
    fn dry_run_needs_no_firewall_capability() {
        let mut c = config(SourceKind::Procfs, BlockKind::Iptables);
        c.block.dry_run = true;
        assert!(needs(&c, HOST).is_empty());
    }

    #[test]
    fn a_metrics_port_below_the_unprivileged_start_needs_bind_service() {
        let mut c = config(SourceKind::Procfs, BlockKind::None);
        c.metrics.metrics_addr = Listen::At("0.0.0.0:80".parse().unwrap());
        assert_eq!(
            of(&needs(&c, HOST), Role::Required),
            pairs(&[("--metrics-addr 0.0.0.0:80", Cap::NetBindService)])
        );
        let low_start = Host {
            unprivileged_port_start: 0,
            ..HOST
        };
        assert!(needs(&c, low_start).is_empty());
        c.metrics.metrics_addr = Listen::Off;
        assert!(needs(&c, HOST).is_empty());
    }

    #[test]
    fn everything_not_needed_is_dropped() {
        let all = CapSet(u64::MAX >> 23); // every capability up to 40
        let c = config(SourceKind::Pcap, BlockKind::Nftables);
        let plan = plan(&needs(&c, HOST), all);
        assert_eq!(plan.fatal, None);
        assert_eq!(plan.no_block, None);
        assert_eq!(plan.keep, CapSet::of(&[Cap::NetRaw, Cap::NetAdmin]));
        assert_eq!(plan.ambient, CapSet::of(&[Cap::NetAdmin]));
    }

    #[test]
    fn a_missing_source_capability_is_one_fatal_line() {
        let c = config(SourceKind::Xdp, BlockKind::None);
        let plan = plan(&needs(&c, HOST), CapSet::of(&[Cap::NetAdmin]));
        assert_eq!(
            plan.fatal.as_deref(),
            Some("--source xdp needs CAP_BPF, CAP_PERFMON")
        );
    }

    #[test]
    fn a_missing_firewall_capability_turns_blocking_off_only() {
        let c = config(SourceKind::Pcap, BlockKind::Iptables);
        let plan = plan(&needs(&c, HOST), CapSet::of(&[Cap::NetRaw]));
        assert_eq!(plan.fatal, None);
        assert_eq!(
            plan.no_block.as_deref(),
            Some("--block iptables needs CAP_NET_ADMIN")
        );
        assert_eq!(plan.keep, CapSet::of(&[Cap::NetRaw]));
        assert_eq!(plan.ambient, CapSet::default());
    }

    #[test]
    fn optional_capabilities_are_kept_only_when_held() {
        let c = config(SourceKind::Xdp, BlockKind::None);
        let xdp = CapSet::of(&[Cap::Bpf, Cap::NetAdmin, Cap::Perfmon]);
        let without = plan(&needs(&c, HOST), xdp);
        assert_eq!((without.fatal, without.keep), (None, xdp));
        let with = plan(&needs(&c, HOST), xdp.with(Cap::SysAdmin));
        assert_eq!(with.keep, xdp.with(Cap::SysAdmin));
    }
}
