//! The blocklist of the XDP program: two BPF LRU hashes (`blocked4`,
//! `blocked6`) that the program checks for every IPv4/IPv6 packet, and the
//! per-family count of packets it dropped.
//!
//! - Key: the address in network order; value: when the block expires, in
//!   `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns()` in the program),
//!   so a suspend does not extend a block. The program ignores an expired
//!   entry; [`Maps::sweep`] deletes the expired entries it walks over.
//! - Capacity: `--xdp-map-size` per family. When a map is full the kernel
//!   evicts its least recently used entry; [`Maps::insert`] says when a new
//!   address went into a full map.
//! - Pins: while an agent runs the maps are pinned under
//!   `/sys/fs/bpf/tcpwatch/` so that `tcpwatch blocks` (another process)
//!   can open them.

use crate::diag;
use crate::os;
use anyhow::{bail, Context};
use aya::maps::{HashMap, IterableMap, Map, MapData, PerCpuArray};
use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the maps are pinned while an agent runs.
pub const PIN_DIR: &str = "/sys/fs/bpf/tcpwatch";
const BPF_FS: &str = "/sys/fs/bpf";
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
        let (v4, v6) = maps.sweep(crate::os::process::boot_ns())?;
        maps.len4 = v4.len();
        maps.len6 = v6.len();
        Ok(maps)
    }

    pub fn pin(&self, dir: &Path) -> anyhow::Result<()> {
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
    pub fn insert(&mut self, ip: IpAddr, expiry: u64) -> anyhow::Result<bool> {
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
    pub fn delete(&mut self, ip: IpAddr) -> anyhow::Result<()> {
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
    pub fn sweep(&mut self, now: u64) -> anyhow::Result<(Vec<(IpAddr, u64)>, Vec<(IpAddr, u64)>)> {
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

/// The expiry (boot-clock ns) of a block of `ttl` starting at `now`.
pub fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

/// Time left before `expiry`, rounded up to whole milliseconds.
pub fn remaining(now: u64, expiry: u64) -> Duration {
    Duration::from_nanos(expiry.saturating_sub(now))
}

/// Makes sure `/sys/fs/bpf` is a BPF filesystem (mounting one if this mount
/// namespace has none, as under `ip netns exec`) and that no pins of a live
/// agent are in `dir`; removes stale ones.
pub fn prepare_pins(dir: &Path) -> anyhow::Result<()> {
    if !os::fs::is_bpffs(Path::new(BPF_FS)) {
        os::fs::mount("bpf", Path::new(BPF_FS), "bpf", "mode=0700")
            .context("cannot mount one")
            .with_context(|| format!("{BPF_FS} is not a BPF filesystem"))?;
    }
    let stale: Vec<PathBuf> = [MAP4, MAP6, DROPPED]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    if let Some(id) = pinned_map_in_use(&dir.join(MAP4)) {
        bail!(
            "another tcpwatch blocks with XDP (program id {id} uses the maps pinned in {})",
            dir.display()
        );
    }
    unpin(dir);
    diag::note(format_args!(
        "xdp: removed the pins a previous tcpwatch left in {}",
        dir.display()
    ));
    Ok(())
}

/// Removes the pins in `dir` (and `dir` itself when empty).
pub fn unpin(dir: &Path) {
    for name in [MAP4, MAP6, DROPPED] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Whether a running agent's pins are in `dir`.
pub fn pinned(dir: &Path) -> bool {
    dir.join(MAP4).exists()
}

/// The id of a loaded tcpwatch program using the map pinned at `path`.
fn pinned_map_in_use(path: &Path) -> Option<u32> {
    let map_id = MapData::from_pin(path).ok()?.info().ok()?.id();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(super::xdp::PROGRAM))
        .find(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&map_id))
        })
        .map(|p| p.id())
}

#[cfg(test)]
mod tests {
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
    }
}
