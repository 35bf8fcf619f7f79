//! The `xdp` backend: blocked addresses live in two BPF LRU hashes
//! (`blocked4`, `blocked6`) that the XDP program (`bpf/tcpwatch.bpf.c`)
//! checks for every IPv4/IPv6 packet, dropping a blocked source before the
//! kernel allocates anything for it.
//!
//! - Key: the address in network order; value: when the block expires, in
//!   `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns()` in the program),
//!   so a suspend does not extend a block. The program ignores an expired
//!   entry; [`Backend::list`] deletes the expired entries it walks over (the
//!   block stage lists every 5 s, so expired entries are swept at that pace).
//! - Capacity: `--xdp-map-size` per family. When a map is full the kernel
//!   evicts its least recently used entry; inserts of a new address into a
//!   map already holding its capacity are counted as evictions
//!   (`tcpwatch_xdp_blocklist_evictions_total`). The LRU may also evict a
//!   little before it is exactly full (per-CPU free lists): the count is a
//!   lower bound.
//! - Program: with `--source xdp` the source's program does both jobs (its
//!   maps are handed over, [`XdpBlock::shared`]); with any other source,
//!   [`Backend::install`] loads it for blocking only and attaches it to
//!   `--interface` (default every up, non-loopback Ethernet interface).
//! - Pins: while the agent runs the maps are pinned under
//!   `/sys/fs/bpf/tcpwatch/` so that `tcpwatch blocks` (another process) can
//!   open them; the pins are removed on exit, and stale pins of a killed
//!   agent are replaced at the next start. Nothing is persisted in the maps:
//!   blocks that must survive a restart come back through the state store
//!   and [`Backend::block`].

use super::backend::{Backend, Entry};
use crate::bpf::blocklist::{self, expiry, remaining, Maps, DEFAULT_MAP_SIZE, PIN_DIR};
use crate::bpf::xdp::{self as program, LoadOptions};
use crate::diag;
use crate::os::process::boot_ns;
use crate::setting::Value;
use crate::text::printable;
use anyhow::bail;
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest `--xdp-map-size`: 16 Mi entries per family (an IPv6 entry
/// costs ~100 bytes of kernel memory, preallocated).
pub const MAX_MAP_SIZE: u32 = 1 << 24;

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

/// The one address of a target: the blocklist holds addresses.
fn host(target: &IpNet) -> anyhow::Result<IpAddr> {
    if !super::backend::is_host(target) {
        bail!("the XDP blocklist holds addresses, not prefixes like {target}");
    }
    Ok(target.addr())
}

/// What the metrics task reads while the agent runs.
#[derive(Clone, Default)]
pub struct Stats {
    maps: Arc<Mutex<Option<Maps>>>,
    evictions: Arc<AtomicU64>,
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
        }
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
        *self.stats.maps.lock().unwrap_or_else(|p| p.into_inner()) = Some(maps);
        Ok(())
    }

    fn block(&mut self, targets: &[IpNet], ttl: Duration) -> anyhow::Result<()> {
        let evictions = self.stats.evictions.clone();
        self.with_maps(|maps| {
            let until = expiry(boot_ns(), ttl);
            for target in targets {
                if maps.insert(host(target)?, until)? {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    }

    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()> {
        let ip = host(&target)?;
        self.with_maps(|maps| maps.delete(ip))
    }

    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        self.with_maps(|maps| {
            let now = boot_ns();
            let (v4, v6) = maps.sweep(now)?;
            Ok(v4
                .into_iter()
                .chain(v6)
                .map(|(ip, until)| Entry::new(IpNet::from(ip), Some(remaining(now, until))))
                .collect())
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.with_maps(|maps| {
            let (v4, v6) = maps.sweep(boot_ns())?;
            for (ip, _) in v4.into_iter().chain(v6) {
                maps.delete(ip)?;
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
