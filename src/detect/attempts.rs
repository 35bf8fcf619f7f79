//! Deduplication of real-time attempts: a SYN that is retransmitted (the
//! kernel retries after 1 s, 3 s, 7 s, … up to about two minutes) is the same
//! attempt and is reported once. A retransmission carries the same initial
//! sequence number; a new connection that reuses the tuple at once (the
//! client may, when the server closed first) carries another, and is new.
//!
//! The attempts are kept in a ring in the order first seen (expiry and
//! eviction take from its front), found through a hash table of ring
//! positions that keeps each tuple's hash: an attempt hashes its tuple once
//! and allocates nothing once the ring has grown to its cap.
//!
//! An attempt is also told apart by its direction and its network namespace
//! (when the source knows it): the `tracepoint` source sees the same two
//! endpoints as one namespace's outbound connection and another's inbound
//! one, or in two namespaces that use the same addresses.

use super::hash::{self, bits, Keyed};
use crate::event::{Connection, Direction};
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// Longer than the kernel's default SYN retry span (6 retries: 127 s).
pub const RETRANSMIT_WINDOW: Duration = Duration::from_secs(130);
/// Spoofed floods create one entry per packet; past this the oldest go.
pub const CAPACITY: usize = 65_536;

pub struct AttemptTable {
    window: Duration,
    capacity: usize,
    /// Attempts in the order first seen, the oldest at the front; an entry
    /// replaced by a new connection on its tuple stays, dead, until it
    /// reaches the front. Never longer than the capacity.
    ring: VecDeque<Attempt>,
    /// The position of `ring[0]` since the table was made.
    head: u64,
    /// The positions of the live entries, by the hash of their tuple.
    index: HashTable<u64>,
    keys: Keyed,
    evicted: u64,
}

struct Attempt {
    hash: u64,
    initiator: SocketAddr,
    acceptor: SocketAddr,
    direction: Direction,
    /// The network namespace's inode; 0 when the source does not say.
    netns: u64,
    first: Duration,
    isn: u32,
    live: bool,
}

impl AttemptTable {
    pub fn new(window: Duration, capacity: usize) -> Self {
        AttemptTable {
            window,
            capacity: capacity.max(1),
            ring: VecDeque::new(),
            head: 0,
            index: HashTable::new(),
            keys: hash::keyed(),
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
        let (initiator, acceptor, direction) = (conn.initiator, conn.acceptor, conn.direction);
        let netns = netns.unwrap_or(0);
        let ports = (u32::from(initiator.port()) << 16) | u32::from(acceptor.port());
        let hash = hash::hash_of(
            &self.keys,
            &(
                bits(initiator.ip()),
                bits(acceptor.ip()),
                ports,
                direction,
                netns,
            ),
        );
        let (ring, head) = (&mut self.ring, self.head);
        if let Ok(found) = self.index.find_entry(hash, |&at| {
            let a = &ring[(at - head) as usize];
            a.initiator == initiator
                && a.acceptor == acceptor
                && a.direction == direction
                && a.netns == netns
        }) {
            let old = &mut ring[(*found.get() - head) as usize];
            if old.isn == isn {
                return false;
            }
            // A new connection on the tuple: the old entry dies in place.
            old.live = false;
            found.remove();
        }
        if self.ring.len() >= self.capacity {
            // The oldest eighth in one batch: amortised O(1) an attempt.
            let batch = (self.capacity / 8).max(1);
            for _ in 0..batch {
                if self.pop_front() {
                    self.evicted += 1;
                }
            }
        }
        self.ring.push_back(Attempt {
            hash,
            initiator,
            acceptor,
            direction,
            netns,
            first: at,
            isn,
            live: true,
        });
        let at = self.head + self.ring.len() as u64 - 1;
        let (ring, head) = (&self.ring, self.head);
        self.index
            .insert_unique(hash, at, |&at| ring[(at - head) as usize].hash);
        true
    }

    fn expire(&mut self, now: Duration) {
        while self
            .ring
            .front()
            .is_some_and(|a| a.first + self.window <= now)
        {
            self.pop_front();
        }
    }

    /// Drops the oldest entry; returns whether it was live.
    fn pop_front(&mut self) -> bool {
        let Some(old) = self.ring.pop_front() else {
            return false;
        };
        let at = self.head;
        self.head += 1;
        if old.live {
            if let Ok(found) = self.index.find_entry(old.hash, |&a| a == at) {
                found.remove();
            }
        }
        old.live
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
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
