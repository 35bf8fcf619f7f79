//! The hash of the detector's tables.
//!
//! Their keys are addresses and ports a remote host chooses (a spoofed
//! flood chooses a new source per packet), so the hash must not let anyone
//! outside pick keys that collide: the tables use foldhash, a fast keyed
//! hash, with keys drawn once per process from the operating system's
//! random source (through the standard library's `RandomState`). SipHash,
//! the standard library's default, resists the same attack with far more
//! margin but cost most of the detector's time under a flood (a fifth of
//! the profile); foldhash's own default seed comes from address-space
//! layout and the clock, which is why the seed is taken from the OS here.
//! What is left to an attacker is inferring the key from timing, which a
//! remote host cannot measure finely enough through this agent.

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::OnceLock;

/// Builds the keyed hashers of one table.
pub type Keyed = SeedableRandomState;

/// A `HashMap` keyed by [`keyed`].
pub type Map<K, V> = std::collections::HashMap<K, V, Keyed>;

/// Random 64 bits from the operating system's random source: the standard
/// library keys each `RandomState` from it, and a keyed SipHash of a
/// constant under a random key is a random number.
fn os_random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x7463_7077_6174_6368u64)
}

/// A hasher builder with random keys: the shared part drawn once per
/// process, the per-table part drawn for each table.
pub fn keyed() -> Keyed {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(os_random()));
    SeedableRandomState::with_seed(os_random(), shared)
}

/// An address as 128 bits, to hash: IPv4 as its mapped IPv6 form (the
/// tables see canonical addresses, so the two never stand for each other).
pub fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// Rebuilds a map that has just lost entries into the smallest table that
/// holds the rest. Removing leaves tombstones, and a hashbrown table whose
/// free slots run out while it is more than half full doubles instead of
/// cleaning them up: under a steady churn of inserts and evictions that
/// doubled the table for good (measured: 29 MB instead of 13 MB for 65,536
/// entries). Rebuilding after each batch costs O(n) per n/8 inserts.
pub fn compact<K: Hash + Eq, V>(map: &mut Map<K, V>) {
    map.shrink_to(0);
}

/// An empty [`Map`].
pub fn map<K, V>() -> Map<K, V> {
    Map::with_hasher(keyed())
}

/// The hash of `value` under `keys`.
pub fn hash_of<T: Hash + ?Sized>(keys: &Keyed, value: &T) -> u64 {
    keys.hash_one(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_get_different_keys() {
        let (a, b) = (keyed(), keyed());
        let differ = (0u64..8)
            .filter(|n| hash_of(&a, n) != hash_of(&b, n))
            .count();
        assert_eq!(differ, 8);
        assert_eq!(hash_of(&a, &1u64), hash_of(&a, &1u64));
    }
}
