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

use super::{Backend, Entry};
use crate::source::xdp::{self as loader, LoadOptions};
use anyhow::{bail, Context};
use aya::maps::{HashMap, IterableMap, Map, MapData, PerCpuArray};
use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the maps are pinned while an agent runs.
pub const PIN_DIR: &str = "/sys/fs/bpf/tcpwatch";
const BPF_FS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const MAP4: &str = "blocked4";
pub const MAP6: &str = "blocked6";
pub const DROPPED: &str = "dropped";
/// Entries per family unless `--xdp-map-size` says otherwise.
pub const DEFAULT_MAP_SIZE: u32 = 131_072;

/// Something that keeps the XDP program attached while it lives.
pub type Owner = Arc<dyn Any + Send + Sync>;

/// The blocklist maps of a loaded program, or of the pins.
pub struct Maps {
    v4: HashMap<MapData, [u8; 4], u64>,
    v6: HashMap<MapData, [u8; 16], u64>,
    dropped: PerCpuArray<MapData, u64>,
    capacity: u32,
    /// Entries believed to be in each map, to count evictions.
    len4: usize,
    len6: usize,
    _owner: Option<Owner>,
}

impl Maps {
    /// Takes the blocklist maps out of a loaded program; `owner` (set later
    /// with [`Maps::owned_by`]) keeps that program attached.
    pub fn take(bpf: &mut aya::Ebpf) -> anyhow::Result<Maps> {
        let mut take = |name: &str| {
            bpf.take_map(name)
                .with_context(|| format!("the BPF object has no map '{name}'"))
        };
        Maps::from_maps(take(MAP4)?, take(MAP6)?, take(DROPPED)?)
    }

    fn from_maps(v4: Map, v6: Map, dropped: Map) -> anyhow::Result<Maps> {
        let v4 = HashMap::try_from(v4).context("map blocked4")?;
        let v6 = HashMap::try_from(v6).context("map blocked6")?;
        let capacity = capacity_of(&v4);
        Ok(Maps {
            v4,
            v6,
            dropped: PerCpuArray::try_from(dropped).context("map dropped")?,
            capacity,
            len4: 0,
            len6: 0,
            _owner: None,
        })
    }

    pub fn owned_by(mut self, owner: Owner) -> Maps {
        self._owner = Some(owner);
        self
    }

    /// Opens the maps a running agent pinned in `dir`.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Maps> {
        let open = |name: &str| -> anyhow::Result<Map> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("{}", path.display()))
        };
        let mut maps = Maps::from_maps(open(MAP4)?, open(MAP6)?, open(DROPPED)?)?;
        let (v4, v6) = maps.sweep(now_boot())?;
        maps.len4 = v4.len();
        maps.len6 = v6.len();
        Ok(maps)
    }

    fn pin(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let pin = |data: &MapData, name: &str| {
            let path = dir.join(name);
            data.pin(&path)
                .map_err(|e| anyhow::anyhow!("cannot pin {}: {e}", path.display()))
        };
        pin(self.v4_data(), MAP4)?;
        pin(self.v6_data(), MAP6)?;
        pin(self.dropped_data(), DROPPED)
    }

    fn v4_data(&self) -> &MapData {
        IterableMap::map(&self.v4)
    }
    fn v6_data(&self) -> &MapData {
        IterableMap::map(&self.v6)
    }
    fn dropped_data(&self) -> &MapData {
        IterableMap::map(&self.dropped)
    }

    /// Blocks `ip` until `expiry` (boot-clock ns). Returns whether a new
    /// entry went into a full map (the kernel evicted another).
    fn insert(&mut self, ip: IpAddr, expiry: u64) -> anyhow::Result<bool> {
        let capacity = self.capacity as usize;
        let (added, len) = match key(ip) {
            Key::V4(k) => {
                let added = self.v4.get(&k, 0).is_err();
                self.v4
                    .insert(k, expiry, 0)
                    .with_context(|| format!("cannot add {ip} to blocked4"))?;
                (added, &mut self.len4)
            }
            Key::V6(k) => {
                let added = self.v6.get(&k, 0).is_err();
                self.v6
                    .insert(k, expiry, 0)
                    .with_context(|| format!("cannot add {ip} to blocked6"))?;
                (added, &mut self.len6)
            }
        };
        if !added {
            return Ok(false);
        }
        if *len >= capacity {
            return Ok(true);
        }
        *len += 1;
        Ok(false)
    }

    /// Deletes `ip`; fine if it is not there.
    fn delete(&mut self, ip: IpAddr) -> anyhow::Result<()> {
        let (result, len) = match key(ip) {
            Key::V4(k) => (self.v4.remove(&k), &mut self.len4),
            Key::V6(k) => (self.v6.remove(&k), &mut self.len6),
        };
        match result {
            Ok(()) => {
                *len = len.saturating_sub(1);
                Ok(())
            }
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("cannot delete {ip}: {e}")),
        }
    }

    /// Walks both maps: returns the live entries as (ip, expiry) and
    /// deletes the expired ones.
    #[allow(clippy::type_complexity)]
    fn sweep(&mut self, now: u64) -> anyhow::Result<(Vec<(IpAddr, u64)>, Vec<(IpAddr, u64)>)> {
        let mut live4 = Vec::new();
        let mut dead4 = Vec::new();
        for item in self.v4.iter() {
            let (k, expiry) = item.context("cannot read blocked4")?;
            let ip = IpAddr::V4(Ipv4Addr::from(k));
            if expiry > now {
                live4.push((ip, expiry));
            } else {
                dead4.push(k);
            }
        }
        let mut live6 = Vec::new();
        let mut dead6 = Vec::new();
        for item in self.v6.iter() {
            let (k, expiry) = item.context("cannot read blocked6")?;
            let ip = IpAddr::V6(Ipv6Addr::from(k));
            if expiry > now {
                live6.push((ip, expiry));
            } else {
                dead6.push(k);
            }
        }
        for k in dead4 {
            let _ = self.v4.remove(&k);
        }
        for k in dead6 {
            let _ = self.v6.remove(&k);
        }
        self.len4 = live4.len();
        self.len6 = live6.len();
        Ok((live4, live6))
    }

    /// Packets dropped so far, (IPv4, IPv6), summed over the CPUs.
    pub fn dropped(&self) -> (u64, u64) {
        let sum = |index: u32| match self.dropped.get(&index, 0) {
            Ok(per_cpu) => per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
            Err(_) => 0,
        };
        (sum(0), sum(1))
    }
}

fn capacity_of(map: &HashMap<MapData, [u8; 4], u64>) -> u32 {
    IterableMap::map(map)
        .info()
        .map(|i| i.max_entries())
        .unwrap_or(0)
}

fn not_found(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::KeyNotFound)
        || matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

enum Key {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// The map key of an address; IPv4-mapped IPv6 is blocked as IPv4.
fn key(ip: IpAddr) -> Key {
    match ip.to_canonical() {
        IpAddr::V4(v4) => Key::V4(v4.octets()),
        IpAddr::V6(v6) => Key::V6(v6.octets()),
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock of `bpf_ktime_get_boot_ns()`.
pub fn now_boot() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The expiry (boot-clock ns) of a block of `ttl` starting at `now`.
pub fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

/// Time left before `expiry`, rounded up to whole milliseconds.
pub fn remaining(now: u64, expiry: u64) -> Duration {
    Duration::from_nanos(expiry.saturating_sub(now))
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

    fn unpin(&self) {
        for name in [MAP4, MAP6, DROPPED] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Makes sure `/sys/fs/bpf` is a BPF filesystem (mounting one if this
    /// mount namespace has none, as under `ip netns exec`) and that no pins
    /// of a live agent are in the way; removes stale ones.
    fn prepare_pins(&self) -> anyhow::Result<()> {
        if !is_bpffs(Path::new(BPF_FS)) {
            mount_bpffs().with_context(|| format!("{BPF_FS} is not a BPF filesystem"))?;
        }
        let stale: Vec<PathBuf> = [MAP4, MAP6, DROPPED]
            .iter()
            .map(|n| self.dir.join(n))
            .filter(|p| p.exists())
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        if let Some(id) = pinned_map_in_use(&self.dir.join(MAP4)) {
            bail!(
                "another tcpwatch blocks with XDP (program id {id} uses the maps pinned in {})",
                self.dir.display()
            );
        }
        self.unpin();
        eprintln!(
            "tcpwatch: xdp: removed the pins a previous tcpwatch left in {}",
            self.dir.display()
        );
        Ok(())
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out-pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs() -> anyhow::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype, opts) = (c("bpf"), c(BPF_FS), c("bpf"), c("mode=0700"));
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot mount one");
    }
    Ok(())
}

/// The id of a loaded tcpwatch program using the map pinned at `path`.
fn pinned_map_in_use(path: &Path) -> Option<u32> {
    let map_id = MapData::from_pin(path).ok()?.info().ok()?.id();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(loader::PROGRAM))
        .find(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&map_id))
        })
        .map(|p| p.id())
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
                let mut bpf = loader::load(interfaces, &opts)?;
                let maps = Maps::take(&mut bpf)?;
                maps.owned_by(Arc::new(Mutex::new(bpf)))
            }
        };
        let pinned = match self.prepare_pins() {
            Ok(()) => maps.pin(&self.dir).map(|()| true),
            Err(e) => Err(e),
        };
        match pinned {
            Ok(_) => self.pinned = true,
            Err(e) => {
                self.unpin();
                eprintln!(
                    "tcpwatch: warning: xdp: blocking without pins (`tcpwatch blocks` cannot see these blocks): {e:#}"
                );
            }
        }
        *self.stats.maps.lock().unwrap_or_else(|p| p.into_inner()) = Some(maps);
        Ok(())
    }

    fn block(&mut self, ips: &[IpAddr], ttl: Duration) -> anyhow::Result<()> {
        let evictions = self.stats.evictions.clone();
        self.with_maps(|maps| {
            let until = expiry(now_boot(), ttl);
            for &ip in ips {
                if maps.insert(ip, until)? {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    }

    fn unblock(&mut self, ip: IpAddr) -> anyhow::Result<()> {
        self.with_maps(|maps| maps.delete(ip))
    }

    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        self.with_maps(|maps| {
            let now = now_boot();
            let (v4, v6) = maps.sweep(now)?;
            Ok(v4
                .into_iter()
                .chain(v6)
                .map(|(ip, until)| Entry {
                    ip,
                    remaining: Some(remaining(now, until)),
                })
                .collect())
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.with_maps(|maps| {
            let (v4, v6) = maps.sweep(now_boot())?;
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
            self.unpin();
            self.pinned = false;
        }
        // Dropping the maps drops the last owner of a blocking-only program:
        // its links go, and the program is detached.
        *self.stats.maps.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn present(&mut self) -> bool {
        self.dir.join(MAP4).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Family;
    use super::*;

    #[test]
    fn expiry_and_remaining_use_one_clock_and_saturate() {
        let now = 5_000_000_000;
        let until = expiry(now, Duration::from_secs(3));
        assert_eq!(until, 8_000_000_000);
        assert_eq!(remaining(now, until), Duration::from_secs(3));
        assert_eq!(remaining(until + 1, until), Duration::ZERO);
        assert_eq!(expiry(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
        assert_eq!(expiry(1, Duration::MAX), u64::MAX);
    }

    #[test]
    fn boot_clock_moves_forward() {
        let a = now_boot();
        std::thread::sleep(Duration::from_millis(2));
        let b = now_boot();
        assert!(b > a && b - a >= 2_000_000, "{a} {b}");
    }

    #[test]
    fn keys_are_network_order_and_mapped_v6_is_v4() {
        match key("10.1.2.3".parse().unwrap()) {
            Key::V4(k) => assert_eq!(k, [10, 1, 2, 3]),
            Key::V6(_) => panic!("v4 expected"),
        }
        match key("::ffff:10.1.2.3".parse().unwrap()) {
            Key::V4(k) => assert_eq!(k, [10, 1, 2, 3]),
            Key::V6(_) => panic!("mapped v6 is blocked as v4"),
        }
        match key("fd00::1".parse().unwrap()) {
            Key::V6(k) => {
                assert_eq!(k[0], 0xfd);
                assert_eq!(k[15], 1);
            }
            Key::V4(_) => panic!("v6 expected"),
        }
        assert_eq!(Family::of("::ffff:10.1.2.3".parse().unwrap()), Family::V4);
    }
}
