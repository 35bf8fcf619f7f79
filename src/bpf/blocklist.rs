//! The blocklist of the XDP program: two BPF LRU hashes of addresses
//! (`blocked4`, `blocked6`) and two LPM tries of prefixes
//! (`blocked_nets4`, `blocked_nets6`) that the program checks for every
//! IPv4/IPv6 packet, and the per-family count of packets it dropped.
//!
//! - Key: the address in network order (a trie key adds its prefix length).
//!   Value: a [`Block`]: when it expires, in `CLOCK_BOOTTIME` nanoseconds
//!   (`bpf_ktime_get_boot_ns()` in the program), so a suspend does not
//!   extend a block; the packets it dropped, counted by the program with an
//!   atomic add; whether the program decided it by itself and userspace has
//!   not confirmed it yet; when it was applied. The program ignores an
//!   expired entry; [`Maps::sweep`] deletes the expired entries it walks
//!   over.
//! - Capacity: `--xdp-map-size` per family and kind. When an address map is
//!   full the kernel evicts its least recently used entry; [`Maps::insert`]
//!   says when a new address went into a full map. A full trie refuses a
//!   new prefix (an error).
//! - Pins: while an agent runs the maps are pinned under
//!   `/sys/fs/bpf/tcpwatch/` so that `tcpwatch blocks` (another process)
//!   can open them.

use super::decide::Decide;
use super::not_found;
use crate::diag;
use crate::os;
use anyhow::{bail, Context};
use aya::maps::lpm_trie::{Key as NetKey, LpmTrie};
use aya::maps::{HashMap, IterableMap, Map, MapData, PerCpuArray};
use ipnet::IpNet;
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
pub const NETS4: &str = "blocked_nets4";
pub const NETS6: &str = "blocked_nets6";
pub const DROPPED: &str = "dropped";
/// Every pinned map, by name.
const PINNED: [&str; 5] = [MAP4, MAP6, NETS4, NETS6, DROPPED];
/// Entries per family unless `--xdp-map-size` says otherwise.
pub const DEFAULT_MAP_SIZE: u32 = 131_072;

/// `struct block` of `bpf/xdp_blocklist.h`: one block as the program holds
/// it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Block {
    /// Boot-clock ns.
    pub expiry: u64,
    /// Packets dropped since the block was applied.
    pub packets: u64,
    /// [`BLOCK_KERNEL`] or 0.
    pub flags: u64,
    /// Boot-clock ns when it was applied.
    pub since: u64,
}

/// The program decided this block by itself; userspace has not confirmed
/// it yet.
pub const BLOCK_KERNEL: u64 = 1;

// SAFETY: `Block` is four u64 in a repr(C) struct: no padding, and every
// bit pattern is a valid value, as the kernel's copy requires.
unsafe impl aya::Pod for Block {}

impl Block {
    /// Decided by the program and not yet confirmed by userspace.
    pub fn kernel(&self) -> bool {
        self.flags & BLOCK_KERNEL != 0
    }
}

/// Something that keeps the XDP program attached while it lives.
pub type Owner = Arc<dyn Any + Send + Sync>;

/// The blocklist maps of a loaded program, or of the pins.
pub struct Maps {
    v4: HashMap<MapData, [u8; 4], Block>,
    v6: HashMap<MapData, [u8; 16], Block>,
    nets4: LpmTrie<MapData, [u8; 4], Block>,
    nets6: LpmTrie<MapData, [u8; 16], Block>,
    dropped: PerCpuArray<MapData, u64>,
    /// The scan decision's maps (a loaded program's, not the pins).
    decide: Option<Decide>,
    capacity: u32,
    /// Entries believed to be in each address map, to count evictions.
    len4: usize,
    len6: usize,
    _owner: Option<Owner>,
}

impl Maps {
    /// Takes the blocklist maps (and those of the scan decision) out of a
    /// loaded program; `owner` (set later with [`Maps::owned_by`]) keeps
    /// that program attached.
    pub fn take(bpf: &mut aya::Ebpf) -> anyhow::Result<Maps> {
        let mut take = |name: &str| {
            bpf.take_map(name)
                .with_context(|| format!("the BPF object has no map '{name}'"))
        };
        let maps = [
            take(MAP4)?,
            take(MAP6)?,
            take(NETS4)?,
            take(NETS6)?,
            take(DROPPED)?,
        ];
        let mut maps = Maps::from_maps(maps)?;
        maps.decide = Some(Decide::take(bpf)?);
        Ok(maps)
    }

    fn from_maps([v4, v6, nets4, nets6, dropped]: [Map; 5]) -> anyhow::Result<Maps> {
        let v4 = HashMap::try_from(v4).context("map blocked4")?;
        let v6 = HashMap::try_from(v6).context("map blocked6")?;
        let capacity = capacity_of(&v4);
        Ok(Maps {
            v4,
            v6,
            nets4: LpmTrie::try_from(nets4).context("map blocked_nets4")?,
            nets6: LpmTrie::try_from(nets6).context("map blocked_nets6")?,
            dropped: PerCpuArray::try_from(dropped).context("map dropped")?,
            decide: None,
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
        let mut maps = Maps::from_maps([
            open(MAP4)?,
            open(MAP6)?,
            open(NETS4)?,
            open(NETS6)?,
            open(DROPPED)?,
        ])
        .context("the pinned maps are not this version's (is the running agent older?)")?;
        maps.sweep(crate::os::process::boot_ns())?;
        Ok(maps)
    }

    pub fn pin(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let pin = |data: &MapData, name: &str| {
            let path = dir.join(name);
            data.pin(&path)
                .map_err(|e| anyhow::anyhow!("cannot pin {}: {e}", path.display()))
        };
        pin(IterableMap::map(&self.v4), MAP4)?;
        pin(IterableMap::map(&self.v6), MAP6)?;
        pin(IterableMap::map(&self.nets4), NETS4)?;
        pin(IterableMap::map(&self.nets6), NETS6)?;
        pin(IterableMap::map(&self.dropped), DROPPED)
    }

    /// The scan decision's maps, when these came from a loaded program.
    pub fn decide(&mut self) -> Option<&mut Decide> {
        self.decide.as_mut()
    }

    /// The block of exactly `target`, if any (expired or not).
    pub fn get(&self, target: IpNet) -> Option<Block> {
        match key(target) {
            Key::Addr4(k) => self.v4.get(&k, 0).ok(),
            Key::Addr6(k) => self.v6.get(&k, 0).ok(),
            Key::Net4(k) => exact(&self.nets4, &k),
            Key::Net6(k) => exact(&self.nets6, &k),
        }
    }

    /// Blocks `target` until `expiry` (boot-clock ns), as userspace's own
    /// block: a block still in force keeps its drop count (and a block the
    /// program decided is confirmed). Returns whether a new address went
    /// into a full map (the kernel evicted another).
    pub fn insert(&mut self, target: IpNet, expiry: u64, now: u64) -> anyhow::Result<bool> {
        let block = match self.get(target).filter(|b| b.expiry > now) {
            Some(held) => Block {
                expiry,
                flags: 0,
                ..held
            },
            None => Block {
                expiry,
                packets: 0,
                flags: 0,
                since: now,
            },
        };
        self.put(target, block)
    }

    /// Writes `block` for `target`; whether a new address went into a full
    /// map.
    fn put(&mut self, target: IpNet, block: Block) -> anyhow::Result<bool> {
        let capacity = self.capacity as usize;
        let cannot = || format!("cannot block {target} in the XDP blocklist");
        let (added, len) = match key(target) {
            Key::Addr4(k) => {
                let added = self.v4.get(&k, 0).is_err();
                self.v4.insert(k, block, 0).with_context(cannot)?;
                (added, &mut self.len4)
            }
            Key::Addr6(k) => {
                let added = self.v6.get(&k, 0).is_err();
                self.v6.insert(k, block, 0).with_context(cannot)?;
                (added, &mut self.len6)
            }
            Key::Net4(k) => {
                self.nets4.insert(&k, block, 0).with_context(cannot)?;
                return Ok(false);
            }
            Key::Net6(k) => {
                self.nets6.insert(&k, block, 0).with_context(cannot)?;
                return Ok(false);
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

    /// Deletes `target`'s block; fine if it is not there.
    pub fn delete(&mut self, target: IpNet) -> anyhow::Result<()> {
        let result = match key(target) {
            Key::Addr4(k) => self
                .v4
                .remove(&k)
                .map(|()| self.len4 = self.len4.saturating_sub(1)),
            Key::Addr6(k) => self
                .v6
                .remove(&k)
                .map(|()| self.len6 = self.len6.saturating_sub(1)),
            Key::Net4(k) => self.nets4.remove(&k),
            Key::Net6(k) => self.nets6.remove(&k),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("cannot delete {target}: {e}")),
        }
    }

    /// Walks the four maps: returns the live blocks and deletes the
    /// expired ones.
    pub fn sweep(&mut self, now: u64) -> anyhow::Result<Vec<(IpNet, Block)>> {
        let mut all: Vec<(IpNet, Block)> = Vec::new();
        for item in self.v4.iter() {
            let (k, block) = item.context("cannot read blocked4")?;
            all.push((IpNet::from(IpAddr::V4(Ipv4Addr::from(k))), block));
        }
        let len4 = all.len();
        for item in self.v6.iter() {
            let (k, block) = item.context("cannot read blocked6")?;
            all.push((IpNet::from(IpAddr::V6(Ipv6Addr::from(k))), block));
        }
        let len6 = all.len() - len4;
        for item in self.nets4.iter() {
            let (k, block) = item.context("cannot read blocked_nets4")?;
            if let Some(net) = net_of(IpAddr::V4(Ipv4Addr::from(k.data())), k.prefix_len()) {
                all.push((net, block));
            }
        }
        for item in self.nets6.iter() {
            let (k, block) = item.context("cannot read blocked_nets6")?;
            if let Some(net) = net_of(IpAddr::V6(Ipv6Addr::from(k.data())), k.prefix_len()) {
                all.push((net, block));
            }
        }
        let (live, dead): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, b)| b.expiry > now);
        let dead4 = dead.iter().filter(|(t, _)| is_addr4(t)).count();
        let dead6 = dead.iter().filter(|(t, _)| is_addr6(t)).count();
        for (target, _) in dead {
            let _ = self.delete(target);
        }
        self.len4 = len4.saturating_sub(dead4);
        self.len6 = len6.saturating_sub(dead6);
        Ok(live)
    }

    /// Packets dropped so far, (IPv4, IPv6), summed over the CPUs.
    pub fn dropped(&self) -> (u64, u64) {
        (
            super::per_cpu_sum(&self.dropped, 0),
            super::per_cpu_sum(&self.dropped, 1),
        )
    }
}

fn is_addr4(target: &IpNet) -> bool {
    matches!(target, IpNet::V4(n) if n.prefix_len() == 32)
}

fn is_addr6(target: &IpNet) -> bool {
    matches!(target, IpNet::V6(n) if n.prefix_len() == 128)
}

/// The entry of exactly `key` in a trie (a lookup finds the longest prefix
/// holding the key's address, which may be another entry).
fn exact<K: aya::Pod + PartialEq>(
    trie: &LpmTrie<MapData, K, Block>,
    key: &NetKey<K>,
) -> Option<Block> {
    trie.iter()
        .filter_map(Result::ok)
        .find(|(k, _)| k.prefix_len() == key.prefix_len() && k.data() == key.data())
        .map(|(_, block)| block)
}

fn net_of(addr: IpAddr, len: u32) -> Option<IpNet> {
    IpNet::new(addr, u8::try_from(len).ok()?).ok()
}

fn capacity_of(map: &HashMap<MapData, [u8; 4], Block>) -> u32 {
    IterableMap::map(map)
        .info()
        .map(|i| i.max_entries())
        .unwrap_or(0)
}

/// Where a target lives: an address map or a trie, and its key.
enum Key {
    Addr4([u8; 4]),
    Addr6([u8; 16]),
    Net4(NetKey<[u8; 4]>),
    Net6(NetKey<[u8; 16]>),
}

/// The map key of a target: an address (a /32 or /128, IPv4-mapped IPv6
/// counted as IPv4) goes to an address map, a prefix (host bits cleared)
/// to a trie.
fn key(target: IpNet) -> Key {
    match canonical(target) {
        IpNet::V4(n) if n.prefix_len() == 32 => Key::Addr4(n.addr().octets()),
        IpNet::V6(n) if n.prefix_len() == 128 => Key::Addr6(n.addr().octets()),
        IpNet::V4(n) => Key::Net4(NetKey::new(u32::from(n.prefix_len()), n.network().octets())),
        IpNet::V6(n) => Key::Net6(NetKey::new(u32::from(n.prefix_len()), n.network().octets())),
    }
}

/// An IPv4-mapped IPv6 address as IPv4; a prefix with its host bits clear.
fn canonical(net: IpNet) -> IpNet {
    if net.prefix_len() == net.max_prefix_len() {
        return IpNet::from(net.addr().to_canonical());
    }
    net.trunc()
}

/// The expiry (boot-clock ns) of a block of `ttl` starting at `now`.
pub fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

/// Time left before `expiry`.
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
    let stale: Vec<PathBuf> = PINNED
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
    for name in PINNED {
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

    fn net(s: &str) -> IpNet {
        s.parse::<IpNet>()
            .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
    }

    #[test]
    fn addresses_key_the_hashes_in_network_order_mapped_v6_as_v4() {
        assert!(matches!(key(net("10.1.2.3")), Key::Addr4([10, 1, 2, 3])));
        assert!(matches!(
            key(net("::ffff:10.1.2.3")),
            Key::Addr4([10, 1, 2, 3])
        ));
        match key(net("fd00::1")) {
            Key::Addr6(k) => assert_eq!((k[0], k[15]), (0xfd, 1)),
            _ => panic!("an IPv6 address goes to blocked6"),
        }
    }

    #[test]
    fn prefixes_key_the_tries_with_host_bits_cleared() {
        match key(net("2001:db8:1:2::9/64")) {
            Key::Net6(k) => {
                assert_eq!(k.prefix_len(), 64);
                assert_eq!(
                    Ipv6Addr::from(k.data()),
                    "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap()
                );
            }
            _ => panic!("a prefix goes to blocked_nets6"),
        }
        match key(net("10.9.8.7/16")) {
            Key::Net4(k) => assert_eq!((k.prefix_len(), k.data()), (16, [10, 9, 0, 0])),
            _ => panic!("a prefix goes to blocked_nets4"),
        }
    }

    #[test]
    fn the_block_value_is_the_programs_layout() {
        // struct block: four __u64, 32 bytes, no padding.
        assert_eq!(std::mem::size_of::<Block>(), 32);
        let b = Block {
            flags: BLOCK_KERNEL,
            ..Block::default()
        };
        assert!(b.kernel() && !Block::default().kernel());
    }
}
