//! The `xdp` backend: blocked addresses live in two BPF LRU hashes
//! (`blocked4`, `blocked6`) and blocked prefixes in two LPM tries
//! (`blocked_nets4`, `blocked_nets6`) that the XDP program
//! (`bpf/tcpwatch.bpf.c`) checks for every IPv4/IPv6 packet, dropping a
//! blocked source before the kernel allocates anything for it.
//!
//! - Value ([`crate::bpf::blocklist::Block`]): when the block expires, in
//!   `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns()` in the
//!   program), so a suspend does not extend a block, and the packets it
//!   dropped (counted by the program, kept when a block is refreshed). The
//!   program ignores an expired entry; [`Backend::list`] deletes the
//!   expired entries it walks over (the block stage lists every 5 s, so
//!   expired entries are swept at that pace).
//! - Capacity: `--xdp-map-size` per family and kind. When an address map
//!   is full the kernel evicts its least recently used entry; inserts of a
//!   new address into a map already holding its capacity are counted as
//!   evictions (`tcpwatch_xdp_blocklist_evictions_total`). The LRU may also
//!   evict a little before it is exactly full (per-CPU free lists): the
//!   count is a lower bound. A full trie refuses a new prefix.
//! - Program: with `--source xdp` the source's program does both jobs (its
//!   maps are handed over, [`XdpBlock::shared`]); with any other source,
//!   [`Backend::install`] loads it for blocking only and attaches it to
//!   `--interface` (default every up, non-loopback Ethernet interface).
//! - The scan decision ([`crate::bpf::decide`], `--source xdp` only): the
//!   program blocks a scanner at its threshold probe by itself, flagged as
//!   its own. A `block` of the same target confirms it (userspace's TTL
//!   and state take over); [`Backend::overrule`] lifts it when the agent
//!   decides otherwise (allowlist, cap); one nobody confirmed within
//!   [`UNCONFIRMED_GRACE`] (the agent never saw its scan: the ring was
//!   full, or its rule saw it differently) is lifted by the next listing.
//!   The agent keeps the program's allowlist, TTL and cap to its own.
//! - Pins: while the agent runs the maps are pinned under
//!   `/sys/fs/bpf/tcpwatch/` so that `tcpwatch blocks` (another process) can
//!   open them; the pins are removed on exit, and stale pins of a killed
//!   agent are replaced at the next start. Nothing is persisted in the maps:
//!   blocks that must survive a restart come back through the state store
//!   and [`Backend::block`].

use super::backend::{canonical, Backend, Entry};
use crate::bpf::blocklist::{self, expiry, remaining, Maps, DEFAULT_MAP_SIZE, PIN_DIR};
use crate::bpf::decide::{self, Rule};
use crate::bpf::xdp::{self as program, LoadOptions};
use crate::diag;
use crate::os::process::boot_ns;
use crate::setting::Value;
use crate::text::printable;
use anyhow::bail;
use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest `--xdp-map-size`: 16 Mi entries per family (an IPv6 entry
/// costs ~100 bytes of kernel memory, preallocated).
pub const MAX_MAP_SIZE: u32 = 1 << 24;

/// How long a block the program decided by itself may wait for the agent
/// to confirm it: past that, the next listing lifts it.
pub const UNCONFIRMED_GRACE: Duration = Duration::from_secs(3);

/// (source, local address) pairs the program's scan decision tracks at
/// most (an LRU, preallocated: about 4 MiB of kernel memory).
pub const TRACKED_PAIRS: u32 = 16_384;

/// `--xdp-map-size`: entries per family, 1 ..= 16777216.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSize(pub u32);

impl Default for MapSize {
    fn default() -> Self {
        MapSize(DEFAULT_MAP_SIZE)
    }
}

impl Value for MapSize {
    const TOML: crate::setting::Toml = crate::setting::Toml::Integer;
    fn parse(text: &str) -> Result<Self, String> {
        match text.parse::<u32>() {
            Ok(n) if (1..=MAX_MAP_SIZE).contains(&n) => Ok(MapSize(n)),
            _ => Err(format!(
                "'{}' is not a map size (a whole number from 1 to {MAX_MAP_SIZE})",
                printable(text)
            )),
        }
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

/// What the metrics task reads while the agent runs.
#[derive(Clone, Default)]
pub struct Stats {
    maps: Arc<Mutex<Option<Maps>>>,
    evictions: Arc<AtomicU64>,
    overruled: Arc<AtomicU64>,
}

impl Stats {
    /// Packets dropped so far (IPv4, IPv6), once the backend is installed.
    pub fn dropped(&self) -> Option<(u64, u64)> {
        let maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.as_ref().map(Maps::dropped)
    }

    /// New entries that went into a full map.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// What the program's scan decision did so far, when it decides.
    pub fn decisions(&self) -> Option<decide::Counts> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let decide = maps.as_mut()?.decide()?;
        decide.rule()?;
        Some(decide.counts())
    }

    /// Blocks the program decided that the agent lifted (overruled, or
    /// never confirmed).
    pub fn overruled(&self) -> u64 {
        self.overruled.load(Ordering::Relaxed)
    }
}

enum Role {
    /// The agent's backend: loads (or is handed) the program on install.
    Agent {
        interfaces: Vec<String>,
        map_size: u32,
        shared: Option<Box<Maps>>,
    },
    /// `tcpwatch blocks`: works on a running agent's pins.
    Admin,
}

pub struct XdpBlock {
    role: Role,
    dir: PathBuf,
    stats: Stats,
    pinned: bool,
    /// The rule of the program's scan decision (with a shared program).
    rule: Option<Rule>,
    /// The networks never blocked besides loopback, as last told (applied
    /// at install when told before).
    allow: Vec<IpNet>,
}

impl XdpBlock {
    /// The agent's backend, loading the program for blocking only on
    /// `interfaces` (none: the default interfaces) at install.
    pub fn new(interfaces: Vec<String>, map_size: u32) -> XdpBlock {
        XdpBlock {
            role: Role::Agent {
                interfaces,
                map_size,
                shared: None,
            },
            dir: PathBuf::from(PIN_DIR),
            stats: Stats::default(),
            pinned: false,
            rule: None,
            allow: Vec::new(),
        }
    }

    /// The agent's backend using the maps of the program the `xdp` source
    /// loaded (with its blocklist check enabled).
    pub fn shared(maps: Maps) -> XdpBlock {
        let mut block = XdpBlock::new(Vec::new(), 0);
        block.role = Role::Agent {
            interfaces: Vec::new(),
            map_size: 0,
            shared: Some(Box::new(maps)),
        };
        block
    }

    /// For `tcpwatch blocks`: the maps pinned by a running agent.
    pub fn pinned() -> XdpBlock {
        XdpBlock {
            role: Role::Admin,
            dir: PathBuf::from(PIN_DIR),
            stats: Stats::default(),
            pinned: false,
            rule: None,
            allow: Vec::new(),
        }
    }

    /// Has the program decide scans with `rule` (a shared program loaded
    /// with the decision; see [`crate::bpf::decide`]), from install on. A
    /// rule the program cannot apply leaves every decision to userspace,
    /// said once at install.
    pub fn deciding(mut self, rule: Rule) -> XdpBlock {
        self.rule = Some(rule);
        self
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Runs `f` on the maps: the installed ones, or (admin) the pins.
    fn with_maps<T>(
        &mut self,
        f: impl FnOnce(&mut Maps) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut guard = self.stats.maps.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match self.role {
                Role::Admin => *guard = Some(Maps::open_pinned(&self.dir)?),
                Role::Agent { .. } => bail!("the XDP blocklist is not installed"),
            }
        }
        f(guard.as_mut().expect("just set"))
    }
}

impl Backend for XdpBlock {
    fn name(&self) -> &'static str {
        "xdp"
    }

    fn install(&mut self, _ttl: Duration) -> anyhow::Result<()> {
        let Role::Agent {
            interfaces,
            map_size,
            shared,
        } = &mut self.role
        else {
            bail!("tcpwatch blocks does not install the XDP blocklist");
        };
        let maps = match shared.take() {
            Some(maps) => *maps,
            None => {
                let opts = LoadOptions {
                    report: false,
                    block: true,
                    map_size: *map_size,
                    decide: 0,
                };
                let mut bpf = program::load(interfaces, &opts)?;
                let maps = Maps::take(&mut bpf)?;
                maps.owned_by(Arc::new(Mutex::new(bpf)))
            }
        };
        let pinned = match blocklist::prepare_pins(&self.dir) {
            Ok(()) => maps.pin(&self.dir).map(|()| true),
            Err(e) => Err(e),
        };
        match pinned {
            Ok(_) => self.pinned = true,
            Err(e) => {
                blocklist::unpin(&self.dir);
                diag::warn(format_args!(
                    "xdp: blocking without pins (`tcpwatch blocks` cannot see these blocks): {e:#}"
                ));
            }
        }
        let mut maps = maps;
        if let (Some(rule), Some(decide)) = (self.rule, maps.decide()) {
            match rule.unsupported() {
                Some(why) => diag::note(format_args!(
                    "xdp: every block is decided in userspace: {why}"
                )),
                None => {
                    decide.set_rule(Some(rule))?;
                    let mut all = decide::loopback().to_vec();
                    all.extend_from_slice(&self.allow);
                    decide.sync_allow(&all)?;
                }
            }
        }
        *self.stats.maps.lock().unwrap_or_else(|p| p.into_inner()) = Some(maps);
        Ok(())
    }

    fn block(&mut self, targets: &[IpNet], ttl: Duration) -> anyhow::Result<()> {
        let evictions = self.stats.evictions.clone();
        self.with_maps(|maps| {
            let now = boot_ns();
            let until = expiry(now, ttl);
            for target in targets {
                if maps.insert(canonical(*target), until, now)? {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    }

    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()> {
        self.with_maps(|maps| maps.delete(canonical(target)))
    }

    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        let overruled = self.stats.overruled.clone();
        let agent = matches!(self.role, Role::Agent { .. });
        self.with_maps(|maps| {
            let now = boot_ns();
            let grace = expiry(0, UNCONFIRMED_GRACE);
            let mut entries = Vec::new();
            for (target, block) in maps.sweep(now)? {
                // Only the agent lifts what it never confirmed: `tcpwatch
                // blocks` may be looking the moment before it does.
                if agent && block.kernel() && block.since.saturating_add(grace) <= now {
                    maps.delete(target)?;
                    overruled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                entries.push(Entry {
                    target,
                    remaining: Some(remaining(now, block.expiry)),
                    packets: Some(block.packets),
                });
            }
            Ok(entries)
        })
    }

    fn overrule(&mut self, targets: &[IpNet]) -> anyhow::Result<()> {
        let overruled = self.stats.overruled.clone();
        self.with_maps(|maps| {
            for target in targets {
                let target = canonical(*target);
                if maps.get(target).is_some_and(|b| b.kernel()) {
                    maps.delete(target)?;
                    overruled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    }

    fn sync_allow(&mut self, nets: &[IpNet]) -> anyhow::Result<()> {
        self.allow = nets.to_vec();
        if self.rule.is_none() {
            return Ok(());
        }
        self.with_maps(|maps| match maps.decide() {
            Some(decide) if decide.rule().is_some() => {
                let mut all = decide::loopback().to_vec();
                all.extend_from_slice(nets);
                decide.sync_allow(&all)
            }
            _ => Ok(()),
        })
    }

    fn retune(&mut self, ttl: Duration, cap: Option<u32>) -> anyhow::Result<()> {
        let Some(rule) = self.rule.as_mut() else {
            return Ok(());
        };
        rule.ttl = ttl;
        rule.cap = cap;
        let rule = *rule;
        self.with_maps(|maps| match maps.decide() {
            Some(decide) if decide.rule().is_some() => decide.set_rule(Some(rule)),
            _ => Ok(()),
        })
    }

    fn rescan(&mut self, ports: usize, window: Duration, ipv6_prefix: u8) -> anyhow::Result<()> {
        let Some(rule) = self.rule.as_mut() else {
            return Ok(());
        };
        if (rule.ports, rule.window, rule.ipv6_prefix) == (ports, window, ipv6_prefix) {
            return Ok(());
        }
        rule.ports = ports;
        rule.window = window;
        rule.ipv6_prefix = ipv6_prefix;
        let rule = *rule;
        let mut allow = decide::loopback().to_vec();
        allow.extend_from_slice(&self.allow);
        self.with_maps(|maps| {
            let Some(decide) = maps.decide() else {
                return Ok(());
            };
            let was = decide.rule().is_some();
            // An unsupported rule turns the decision off.
            decide.set_rule(Some(rule))?;
            match (was, rule.unsupported()) {
                (true, Some(why)) => diag::note(format_args!(
                    "xdp: every block is decided in userspace: {why}"
                )),
                (false, None) => diag::note("xdp: the program decides scans again"),
                _ => {}
            }
            if decide.rule().is_some() {
                // Per the new prefix, and at once when it is back on.
                decide.sync_allow(&allow)?;
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.with_maps(|maps| {
            for (target, _) in maps.sweep(boot_ns())? {
                maps.delete(target)?;
            }
            Ok(())
        })
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        if matches!(self.role, Role::Admin) {
            bail!("tcpwatch blocks does not remove the XDP blocklist");
        }
        if self.pinned {
            blocklist::unpin(&self.dir);
            self.pinned = false;
        }
        // Dropping the maps drops the last owner of a blocking-only program:
        // its links go, and the program is detached.
        *self.stats.maps.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn present(&mut self) -> bool {
        blocklist::pinned(&self.dir)
    }

    fn evicted(&self) -> u64 {
        self.stats.evictions()
    }
}
