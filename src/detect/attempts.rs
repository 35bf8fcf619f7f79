//! Deduplication of real-time attempts: a SYN that is retransmitted (the
//! kernel retries after 1 s, 3 s, 7 s, … up to about two minutes) is the same
//! attempt and is reported once. A retransmission carries the same initial
//! sequence number; a new connection that reuses the tuple at once (the
//! client may, when the server closed first) carries another, and is new.
//!
//! An attempt is also told apart by its direction and its network namespace
//! (when the source knows it): the `tracepoint` source sees the same two
//! endpoints as one namespace's outbound connection and another's inbound
//! one, or in two namespaces that use the same addresses.

use crate::event::{Connection, Direction};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Longer than the kernel's default SYN retry span (6 retries: 127 s).
pub const RETRANSMIT_WINDOW: Duration = Duration::from_secs(130);
/// Spoofed floods create one entry per packet; past this the oldest go.
pub const CAPACITY: usize = 65_536;

/// An attempt's identity: its endpoints, its direction and its network
/// namespace (0 when the source does not say).
type Key = (SocketAddr, SocketAddr, Direction, u64);

pub struct AttemptTable {
    window: Duration,
    capacity: usize,
    /// (initiator, acceptor, ...) -> when first seen, and its sequence number.
    seen: HashMap<Key, (Duration, u32)>,
    /// Insertion order, for expiry and eviction.
    order: VecDeque<(Key, Duration)>,
    evicted: u64,
}

impl AttemptTable {
    pub fn new(window: Duration, capacity: usize) -> Self {
        AttemptTable {
            window,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    /// Whether `conn`, observed at `at` (monotonic, non-decreasing), is a new
    /// attempt rather than a retransmission of one seen within the window.
    pub fn is_new(&mut self, at: Duration, conn: &Connection, isn: u32) -> bool {
        self.is_new_in(at, conn, isn, None)
    }

    /// [`Self::is_new`] for an attempt seen in network namespace `netns`.
    pub fn is_new_in(
        &mut self,
        at: Duration,
        conn: &Connection,
        isn: u32,
        netns: Option<u64>,
    ) -> bool {
        self.expire(at);
        let key = (
            conn.initiator,
            conn.acceptor,
            conn.direction,
            netns.unwrap_or(0),
        );
        if self.seen.get(&key).is_some_and(|&(_, seen)| seen == isn) {
            return false;
        }
        if self.seen.len() >= self.capacity {
            // The oldest eighth in one batch, then one rebuild of the map
            // (see `portscan::compact`): one at a time, the removals leave
            // tombstones that make the table double.
            let batch = (self.capacity / 8).max(1);
            let oldest: Vec<_> = self.order.drain(..batch.min(self.order.len())).collect();
            for (old, first) in oldest {
                if self.forget(old, first) {
                    self.evicted += 1;
                }
            }
            super::portscan::compact(&mut self.seen);
        }
        self.seen.insert(key, (at, isn));
        self.order.push_back((key, at));
        true
    }

    fn expire(&mut self, now: Duration) {
        while let Some(&(key, first)) = self.order.front() {
            if first + self.window > now {
                break;
            }
            self.order.pop_front();
            self.forget(key, first);
        }
    }

    /// Removes `key` if its entry is the one queued at `first` (a tuple
    /// reused by a new connection is queued again, later).
    fn forget(&mut self, key: Key, first: Duration) -> bool {
        let current = self.seen.get(&key).is_some_and(|&(at, _)| at == first);
        if current {
            self.seen.remove(&key);
        }
        current
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Entries dropped because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Direction;

    fn syn(from: &str, to: &str) -> Connection {
        Connection {
            initiator: from.parse().unwrap(),
            acceptor: to.parse().unwrap(),
            direction: Direction::Inbound,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn retransmissions_are_one_attempt() {
        let mut table = AttemptTable::new(RETRANSMIT_WINDOW, CAPACITY);
        let a = syn("10.0.0.7:40000", "10.0.0.5:80");
        assert!(table.is_new(secs(0), &a, 7));
        for t in [1, 3, 7, 15, 31, 63] {
            assert!(!table.is_new(secs(t), &a, 7), "retransmission at {t}s");
        }
        let b = syn("10.0.0.7:40001", "10.0.0.5:80");
        assert!(table.is_new(secs(0), &b, 7));
        assert!(
            table.is_new(secs(200), &a, 7),
            "the same tuple much later is new"
        );
    }

    #[test]
    fn a_reused_tuple_with_a_new_sequence_number_is_a_new_attempt() {
        let mut table = AttemptTable::new(RETRANSMIT_WINDOW, CAPACITY);
        let a = syn("10.0.0.7:40000", "10.0.0.5:80");
        assert!(table.is_new(secs(0), &a, 1000));
        assert!(table.is_new(secs(1), &a, 2000), "new ISN: a new connection");
        assert!(!table.is_new(secs(2), &a, 2000), "its retransmission");
        // The first entry's expiry must not drop the second.
        assert!(!table.is_new(secs(130), &a, 2000));
        assert!(
            table.is_new(secs(131), &a, 2000),
            "expired with its own window"
        );
    }

    #[test]
    fn the_same_endpoints_in_another_direction_or_namespace_are_another_attempt() {
        let mut table = AttemptTable::new(RETRANSMIT_WINDOW, CAPACITY);
        let inbound = syn("10.0.0.7:40000", "10.0.0.5:80");
        let outbound = Connection {
            direction: Direction::Outbound,
            ..inbound
        };
        assert!(table.is_new_in(secs(0), &inbound, 7, Some(1)));
        assert!(table.is_new_in(secs(0), &outbound, 7, Some(2)));
        assert!(table.is_new_in(secs(0), &inbound, 7, Some(3)));
        assert!(table.is_new_in(secs(0), &inbound, 7, None));
        assert!(!table.is_new_in(secs(1), &inbound, 7, Some(3)));
        assert!(!table.is_new(secs(1), &inbound, 7));
    }

    #[test]
    fn full_table_evicts_the_oldest_and_counts_it() {
        let mut table = AttemptTable::new(RETRANSMIT_WINDOW, 2);
        let (a, b, c) = (
            syn("10.0.0.7:1", "10.0.0.5:80"),
            syn("10.0.0.7:2", "10.0.0.5:80"),
            syn("10.0.0.7:3", "10.0.0.5:80"),
        );
        assert!(table.is_new(secs(0), &a, 1));
        assert!(table.is_new(secs(0), &b, 1));
        assert!(table.is_new(secs(0), &c, 1));
        assert_eq!((table.len(), table.evicted()), (2, 1));
        assert!(table.is_new(secs(1), &a, 1), "a was evicted");
        assert!(!table.is_new(secs(1), &c, 1));
    }
}
