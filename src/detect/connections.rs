//! The new-connection table: which connections of a socket table were not
//! there before.
//!
//! A connection is keyed by its two endpoints in either order, so it is
//! reported once whatever state it goes through, and a connection between
//! two sockets of this host (both ends visible, e.g. over loopback) is
//! reported once, not once per end.

use super::hash::{self, Map};
use crate::event::{Connection, Direction};
use crate::event::{Socket, TcpState};
use hashbrown::HashTable;
use std::collections::HashSet;

/// A set hashed as the detector's tables are ([`hash`]): every row of a
/// table whose local port listens is looked up here, on every poll and by
/// `tcpwatch list` (SipHash, the default, was a tenth of `list`'s own time).
type Set<T> = HashSet<T, hash::Keyed>;
use std::net::{SocketAddr, SocketAddrV4};

/// Polls a connection may be absent from before it is forgotten. The kernel's
/// table walk can skip a socket that moves while it is read; forgetting on
/// the first miss would report that connection a second time.
const GRACE_POLLS: u64 = 2;

/// Default of `--max-connections`.
pub const DEFAULT_CAPACITY: usize = 262_144;

pub struct ConnectionTable {
    /// Connection key -> when it was last seen.
    /// Keyed by remote endpoints: a keyed hash ([`hash`]).
    seen: Map<(SocketAddr, SocketAddr), Seen>,
    poll: u64,
    report_existing: bool,
    /// At most this many connections are remembered (see [`Self::observe`]).
    capacity: usize,
    /// Bumped on every row seen: a total order of recency, so eviction is
    /// deterministic within one poll.
    touches: u64,
    evicted: u64,
    /// With a state file: what changed since the last [`Self::take_changes`].
    changes: Option<Changes>,
    /// The last table observed, when [`Self::settled`].
    last: Vec<Socket>,
    /// Whether every connection remembered was in the last table (none
    /// absent, none evicted): the same table again then changes nothing
    /// (see [`Self::observe`]).
    settled: bool,
    /// Whether an unchanged table is skipped (off only to test that
    /// skipping it changes nothing).
    skips: bool,
}

#[derive(Clone, Copy)]
struct Seen {
    poll: u64,
    touch: u64,
}

/// Connection keys the state file must learn: those accounted for without
/// being reported (the first table), and those forgotten. Reported ones are
/// stored once printed, by the print stage.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub silent: Vec<(SocketAddr, SocketAddr)>,
    pub forgotten: Vec<(SocketAddr, SocketAddr)>,
}

impl ConnectionTable {
    /// `report_existing`: whether the connections of the first table are
    /// reported (they were open before the agent started).
    pub fn new(report_existing: bool) -> Self {
        Self::with_capacity(report_existing, DEFAULT_CAPACITY)
    }

    /// [`ConnectionTable::new`] remembering at most `capacity` connections.
    pub fn with_capacity(report_existing: bool, capacity: usize) -> Self {
        ConnectionTable {
            seen: hash::map(),
            poll: 0,
            report_existing,
            capacity: capacity.max(1),
            touches: 0,
            evicted: 0,
            changes: None,
            last: Vec::new(),
            settled: false,
            skips: true,
        }
    }

    /// Records what [`Self::take_changes`] returns from now on.
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Changes::default);
    }

    /// Seeds the table with the connections a state file says were already
    /// accounted for, and reports every other connection of the first table:
    /// those were opened while the agent was down. Seeded keys get the same
    /// grace as seen ones, then are forgotten if they are not open.
    pub fn restore(&mut self, known: impl IntoIterator<Item = (SocketAddr, SocketAddr)>) {
        self.settled = false;
        for key in known {
            self.touches += 1;
            let seen = Seen {
                poll: self.poll,
                touch: self.touches,
            };
            self.seen.insert(key, seen);
        }
        self.report_existing = true;
    }

    /// The changes since the last call (empty unless tracking).
    pub fn take_changes(&mut self) -> Changes {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Takes the next socket table and returns the connections new in it, in
    /// table order.
    ///
    /// When a new connection finds the table full, the least recently seen
    /// eighth is forgotten in one batch (amortised O(1) a row) and counted in
    /// [`Self::evicted`]; a forgotten connection that is still open is
    /// reported again when next seen. That is the price of bounded memory
    /// when the kernel's table outgrows the cap (a SYN flood fills it with
    /// SYN-RECV rows).
    ///
    /// A table equal to the last one, when that one left every connection
    /// remembered seen in it, is skipped (one comparison instead of a
    /// lookup per row): observing it would only move every connection to
    /// this poll and touch them again in the same order, which changes no
    /// later answer, since both the grace and the eviction order are
    /// relative. The poll count is then not bumped. An idle host's table
    /// is that, poll after poll.
    pub fn observe(&mut self, sockets: &[Socket]) -> Vec<Connection> {
        if self.settled && sockets == self.last.as_slice() {
            return Vec::new();
        }
        let evicted = self.evicted;
        self.poll += 1;
        let report = self.poll > 1 || self.report_existing;
        let mut fresh = Vec::new();
        for Row { conn, .. } in distinct(sockets) {
            let key = pair(conn.initiator, conn.acceptor);
            if self.seen.len() >= self.capacity && !self.seen.contains_key(&key) {
                self.evict_oldest();
            }
            self.touches += 1;
            let seen = Seen {
                poll: self.poll,
                touch: self.touches,
            };
            let known = self.seen.insert(key, seen).is_some();
            if !known && report {
                fresh.push(conn);
            } else if !known {
                if let Some(changes) = &mut self.changes {
                    changes.silent.push(key);
                }
            }
        }
        let poll = self.poll;
        let changes = &mut self.changes;
        let mut all_seen = self.evicted == evicted;
        self.seen.retain(|key, last| {
            let keep = poll - last.poll < GRACE_POLLS;
            if let (false, Some(changes)) = (keep, changes.as_mut()) {
                changes.forgotten.push(*key);
            }
            all_seen &= last.poll == poll || !keep;
            keep
        });
        // Kept only when it can be used: its memory is the table's size.
        self.settled = all_seen && self.skips;
        self.last.clear();
        if self.settled {
            self.last.extend_from_slice(sockets);
        } else {
            self.last.shrink_to(0);
        }
        fresh
    }

    /// Forgets the least recently seen eighth of a full table.
    fn evict_oldest(&mut self) {
        let excess = (self.capacity / 8).max(1).min(self.seen.len());
        let mut touches: Vec<u64> = self.seen.values().map(|s| s.touch).collect();
        // Touches are unique: the `excess` smallest are those <= this one.
        let (_, &mut cut, _) = touches.select_nth_unstable(excess - 1);
        let changes = &mut self.changes;
        self.seen.retain(|key, s| {
            let keep = s.touch > cut;
            if let (false, Some(changes)) = (keep, changes.as_mut()) {
                changes.forgotten.push(*key);
            }
            keep
        });
        self.evicted += excess as u64;
        super::hash::compact(&mut self.seen);
    }

    /// Connections forgotten, while possibly still open, because the table
    /// was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn reports_existing(&self) -> bool {
        self.report_existing
    }

    /// Connections currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A connection's identity: its two endpoints, in either order. The same for
/// both ends of a local connection, and unchanged when a listener closes and
/// the direction can no longer be told.
pub fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// A connection of a socket table and the state of the row it came from.
///
/// Aligned as [`Socket`] and no larger, so that [`distinct_owned`] can
/// write rows over the table they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(align(8))]
pub struct Row {
    pub conn: Connection,
    pub state: TcpState,
}

/// The connections of one socket table, each once, in table order. The two
/// ends of a local connection are one connection, inbound (the end that
/// matches a listener wins).
pub fn distinct(sockets: &[Socket]) -> Vec<Row> {
    let listeners = Listeners::of(sockets);
    let mut rows: Vec<_> = sockets
        .iter()
        .filter(|s| is_connection(s))
        .map(|s| Row::of(s, &listeners))
        .collect();
    dedup(&mut rows);
    rows
}

/// [`distinct`] of a table that is not needed afterwards: the rows are
/// written over the table's own memory (a collect from a vector's
/// `into_iter` into smaller items reuses its allocation), so a table of
/// tens of thousands of rows costs no second allocation of its size.
pub fn distinct_owned(sockets: Vec<Socket>) -> Vec<Row> {
    let listeners = Listeners::of(&sockets);
    let mut rows: Vec<_> = sockets
        .into_iter()
        .filter(is_connection)
        .map(|s| Row::of(&s, &listeners))
        .collect();
    dedup(&mut rows);
    rows
}

/// Keeps the first row of each connection, or the last of its inbound rows
/// if it has any, in place and in table order.
///
/// Run on every poll and by `tcpwatch list` over tables of tens of thousands
/// of rows: one allocation of 4 bytes a slot, sized up front (positions of
/// kept rows, found by the connection's key). The index's hash is keyed
/// ([`hash`]): remote addresses and ports are chosen by whoever connects,
/// or spoofs SYNs.
fn dedup(rows: &mut Vec<Row>) {
    let mut index: HashTable<u32> = HashTable::with_capacity(rows.len());
    let keys = hash::keyed();
    let hash_of = |conn: &Connection| pair_hash(&keys, conn.initiator, conn.acceptor);
    let mut kept = 0;
    for i in 0..rows.len() {
        let row = rows[i];
        let hashed = hash_of(&row.conn);
        match index.find(hashed, |&at| {
            same_endpoints(&rows[at as usize].conn, &row.conn)
        }) {
            Some(&at) if row.conn.direction == Direction::Inbound => rows[at as usize] = row,
            Some(_) => {}
            None => {
                let at = u32::try_from(kept).expect("fewer than 2^32 sockets");
                index.insert_unique(hashed, at, |&at| hash_of(&rows[at as usize].conn));
                rows[kept] = row;
                kept += 1;
            }
        }
    }
    rows.truncate(kept);
}

impl Row {
    fn of(socket: &Socket, listeners: &Listeners) -> Self {
        Row {
            conn: classify(socket, listeners),
            state: socket.state,
        }
    }
}

/// Whether two connections have the same two endpoints, in either order.
fn same_endpoints(a: &Connection, b: &Connection) -> bool {
    (a.initiator == b.initiator && a.acceptor == b.acceptor)
        || (a.initiator == b.acceptor && a.acceptor == b.initiator)
}

/// A hash of a connection's two endpoints, the same in either order: the
/// endpoints packed into as few words as they fit in (two for IPv4), hashed
/// in one call, cost a fraction of hashing them field by field. Equal pairs
/// hash equal; unequal pairs that pack alike (differing only in IPv6 flow
/// labels) are told apart by [`same_endpoints`].
fn pair_hash(keys: &hash::Keyed, a: SocketAddr, b: SocketAddr) -> u64 {
    match (a, b) {
        (SocketAddr::V4(a), SocketAddr::V4(b)) => {
            let word = |e: SocketAddrV4| u64::from(e.ip().to_bits()) << 16 | u64::from(e.port());
            let (a, b) = (word(a), word(b));
            hash::hash_of(keys, &(a.min(b), a.max(b)))
        }
        _ => {
            let (a, b) = (endpoint_words(a), endpoint_words(b));
            hash::hash_of(keys, &(a.min(b), a.max(b)))
        }
    }
}

fn endpoint_words(addr: SocketAddr) -> [u64; 3] {
    match addr {
        SocketAddr::V4(v4) => [
            u64::from(v4.ip().to_bits()),
            0,
            u64::from(v4.port()) | 4 << 16,
        ],
        SocketAddr::V6(v6) => {
            let ip = v6.ip().to_bits();
            [
                (ip >> 64) as u64,
                ip as u64,
                u64::from(v6.port()) | 6 << 16 | u64::from(v6.scope_id()) << 32,
            ]
        }
    }
}

/// A row is a connection when it is not a listener and has a peer.
pub fn is_connection(socket: &Socket) -> bool {
    socket.state != TcpState::Listen
        && socket.remote.port() != 0
        && !socket.remote.ip().is_unspecified()
}

/// Inbound when the local end is a listening endpoint; the initiator is then
/// the remote end.
pub fn classify(socket: &Socket, listeners: &Listeners) -> Connection {
    if listeners.accepts(socket.local) {
        Connection {
            initiator: socket.remote,
            acceptor: socket.local,
            direction: Direction::Inbound,
        }
    } else {
        Connection {
            initiator: socket.local,
            acceptor: socket.remote,
            direction: Direction::Outbound,
        }
    }
}

/// The listening endpoints of a socket table.
pub struct Listeners {
    /// A bit per port some listener has: most rows of a table are ruled out
    /// here, without hashing (an outbound connection's local port is
    /// rarely one that listens).
    ports: Box<[u64; 1024]>,
    exact: Set<SocketAddr>,
    /// Ports of `0.0.0.0` listeners: any local IPv4 address.
    any_v4: Set<u16>,
    /// Ports of `::` listeners: any local address, since a dual-stack
    /// listener also accepts IPv4 (unmapped to plain IPv4 by the sources).
    any: Set<u16>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            ports: Box::new([0; 1024]),
            exact: Set::with_hasher(hash::keyed()),
            any_v4: Set::with_hasher(hash::keyed()),
            any: Set::with_hasher(hash::keyed()),
        }
    }
}

impl Listeners {
    pub fn of(sockets: &[Socket]) -> Self {
        let mut listeners = Listeners::default();
        for s in sockets.iter().filter(|s| s.state == TcpState::Listen) {
            let port = s.local.port();
            listeners.ports[usize::from(port / 64)] |= 1 << (port % 64);
            match s.local.ip() {
                ip if !ip.is_unspecified() => {
                    listeners.exact.insert(s.local);
                }
                std::net::IpAddr::V4(_) => {
                    listeners.any_v4.insert(s.local.port());
                }
                std::net::IpAddr::V6(_) => {
                    listeners.any.insert(s.local.port());
                }
            }
        }
        listeners
    }

    pub fn accepts(&self, local: SocketAddr) -> bool {
        let port = local.port();
        if self.ports[usize::from(port / 64)] & (1 << (port % 64)) == 0 {
            return false;
        }
        self.exact.contains(&local)
            || self.any.contains(&local.port())
            || (local.is_ipv4() && self.any_v4.contains(&local.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(local: &str, remote: &str, state: TcpState) -> Socket {
        Socket {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
            inode: 1,
        }
    }

    fn listen(local: &str) -> Socket {
        let any = if local.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        sock(local, any, TcpState::Listen)
    }

    fn est(local: &str, remote: &str) -> Socket {
        sock(local, remote, TcpState::Established)
    }

    fn lines(conns: &[Connection]) -> Vec<String> {
        conns
            .iter()
            .map(|c| format!("{} -> {} {}", c.initiator, c.acceptor, c.direction.as_str()))
            .collect()
    }

    #[test]
    fn listeners_are_not_connections_and_decide_direction() {
        let mut table = ConnectionTable::new(true);
        let got = table.observe(&[
            listen("0.0.0.0:80"),
            est("10.0.0.5:80", "192.0.2.56:5973"),
            est("10.0.0.5:40000", "192.0.2.9:443"),
        ]);
        assert_eq!(
            lines(&got),
            [
                "192.0.2.56:5973 -> 10.0.0.5:80 inbound",
                "10.0.0.5:40000 -> 192.0.2.9:443 outbound"
            ]
        );
    }

    #[test]
    fn dual_stack_listener_makes_v4_clients_inbound() {
        let mut table = ConnectionTable::new(true);
        let got = table.observe(&[listen("[::]:8080"), est("10.0.0.5:8080", "10.0.0.7:5555")]);
        assert_eq!(lines(&got), ["10.0.0.7:5555 -> 10.0.0.5:8080 inbound"]);
    }

    #[test]
    fn v4_wildcard_does_not_cover_v6() {
        let listeners = Listeners::of(&[listen("0.0.0.0:80")]);
        assert!(listeners.accepts("10.1.1.1:80".parse().unwrap()));
        assert!(!listeners.accepts("[2001:db8::1]:80".parse().unwrap()));
        let exact = Listeners::of(&[listen("127.0.0.1:53")]);
        assert!(!exact.accepts("10.1.1.1:53".parse().unwrap()));
    }

    #[test]
    fn reported_once_across_polls_and_state_changes() {
        let mut table = ConnectionTable::new(false);
        assert!(table.observe(&[listen("0.0.0.0:80")]).is_empty());
        let open = [listen("0.0.0.0:80"), est("10.0.0.5:80", "10.0.0.7:1000")];
        assert_eq!(table.observe(&open).len(), 1);
        assert!(table.observe(&open).is_empty());
        let closing = [
            listen("0.0.0.0:80"),
            sock("10.0.0.5:80", "10.0.0.7:1000", TcpState::TimeWait),
        ];
        assert!(table.observe(&closing).is_empty());
    }

    #[test]
    fn existing_connections_are_not_reported_by_default() {
        let mut table = ConnectionTable::new(false);
        let open = [est("10.0.0.5:40000", "10.0.0.7:22")];
        assert!(table.observe(&open).is_empty());
        assert!(table.observe(&open).is_empty());
        let more = [
            est("10.0.0.5:40000", "10.0.0.7:22"),
            est("10.0.0.5:40001", "10.0.0.7:22"),
        ];
        assert_eq!(
            lines(&table.observe(&more)),
            ["10.0.0.5:40001 -> 10.0.0.7:22 outbound"]
        );
    }

    #[test]
    fn one_missed_poll_does_not_report_again_but_a_real_gap_does() {
        let mut table = ConnectionTable::new(true);
        let open = [est("10.0.0.5:40000", "10.0.0.7:22")];
        assert_eq!(table.observe(&open).len(), 1);
        assert!(table.observe(&[]).is_empty());
        assert!(
            table.observe(&open).is_empty(),
            "a torn read must not re-report"
        );
        assert!(table.observe(&[]).is_empty());
        assert!(table.observe(&[]).is_empty());
        assert_eq!(
            table.observe(&open).len(),
            1,
            "a reused tuple is a new connection"
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn both_ends_of_a_local_connection_print_once_as_inbound() {
        let mut table = ConnectionTable::new(true);
        let got = table.observe(&[
            est("127.0.0.1:45000", "127.0.0.1:80"),
            listen("127.0.0.1:80"),
            est("127.0.0.1:80", "127.0.0.1:45000"),
        ]);
        assert_eq!(lines(&got), ["127.0.0.1:45000 -> 127.0.0.1:80 inbound"]);
    }

    #[test]
    fn both_ends_of_a_local_connection_stay_reported_once() {
        let mut table = ConnectionTable::new(false);
        table.observe(&[]);
        let open = [
            listen("127.0.0.1:41693"),
            est("127.0.0.1:41693", "127.0.0.1:43702"),
            est("127.0.0.1:43702", "127.0.0.1:41693"),
        ];
        assert_eq!(
            lines(&table.observe(&open)),
            ["127.0.0.1:43702 -> 127.0.0.1:41693 inbound"]
        );
        assert!(table.observe(&open).is_empty());
        assert!(
            table.observe(&open[1..]).is_empty(),
            "listener gone, the ends still known"
        );
    }

    #[test]
    fn a_full_table_forgets_the_least_recently_seen_and_counts() {
        let mut table = ConnectionTable::with_capacity(true, 8);
        let conn = |n: u16| est(&format!("10.0.0.5:{}", 40000 + n), "10.0.0.7:22");
        let first: Vec<Socket> = (0..8).map(conn).collect();
        assert_eq!(table.observe(&first).len(), 8);
        // Seen again in table order 7, 6, .., 0: connection 7 is now the
        // least recently seen, then one new row needs a slot.
        let mut second: Vec<Socket> = first.iter().rev().copied().collect();
        second.push(conn(8));
        assert_eq!(
            lines(&table.observe(&second)),
            ["10.0.0.5:40008 -> 10.0.0.7:22 outbound"]
        );
        assert_eq!((table.len(), table.evicted()), (8, 1));
        // The evicted one is reported again (evicting connection 8, now the
        // least recently seen); the others are not.
        let third: Vec<Socket> = (0..8).map(conn).collect();
        assert_eq!(
            lines(&table.observe(&third)),
            ["10.0.0.5:40007 -> 10.0.0.7:22 outbound"]
        );
        assert!(table.len() <= 8);
    }

    #[test]
    fn the_cap_holds_for_a_table_larger_than_it() {
        let mut table = ConnectionTable::with_capacity(false, 64);
        let rows: Vec<Socket> = (0..1000u16)
            .map(|n| est(&format!("10.0.0.5:{}", 1000 + n), "10.0.0.7:22"))
            .collect();
        table.observe(&rows);
        assert!(table.len() <= 64, "{}", table.len());
        assert_eq!(table.evicted(), 1000 - table.len() as u64);
    }

    #[test]
    fn restored_connections_are_not_reported_again_and_others_are() {
        let old = est("10.0.0.5:80", "10.0.0.7:1000");
        let gone = est("10.0.0.5:80", "10.0.0.7:1001");
        let new = est("10.0.0.5:80", "10.0.0.7:1002");
        let mut table = ConnectionTable::new(false);
        table.track_changes();
        table.restore([pair(old.remote, old.local), pair(gone.local, gone.remote)]);
        let open = [listen("0.0.0.0:80"), old, new];
        assert_eq!(
            lines(&table.observe(&open)),
            ["10.0.0.7:1002 -> 10.0.0.5:80 inbound"]
        );
        assert_eq!(table.take_changes(), Changes::default());
        assert!(table.observe(&open).is_empty());
        assert_eq!(
            table.take_changes().forgotten,
            [pair(gone.local, gone.remote)],
            "a stored connection not open any more is forgotten after the grace"
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn changes_list_the_silent_first_table_and_the_forgotten() {
        let a = est("10.0.0.5:40000", "10.0.0.7:22");
        let b = est("10.0.0.5:40001", "10.0.0.7:22");
        let mut table = ConnectionTable::new(false);
        table.track_changes();
        assert!(table.observe(&[a]).is_empty());
        let first = table.take_changes();
        assert_eq!(first.silent, [pair(a.local, a.remote)]);
        assert_eq!(table.observe(&[b]).len(), 1);
        assert_eq!(
            table.take_changes(),
            Changes::default(),
            "b is stored once printed"
        );
        table.observe(&[b]);
        assert_eq!(table.take_changes().forgotten, [pair(a.local, a.remote)]);
        let mut untracked = ConnectionTable::new(false);
        untracked.observe(&[a]);
        assert_eq!(untracked.take_changes(), Changes::default());
    }

    #[test]
    fn unconnected_sockets_are_ignored() {
        let mut table = ConnectionTable::new(true);
        assert!(table
            .observe(&[sock("0.0.0.0:5000", "0.0.0.0:0", TcpState::Close)])
            .is_empty());
    }

    /// Skipping a table equal to the last one changes nothing: the same
    /// connections reported, the same changes for the state file, the same
    /// connections remembered, through absences, grace, evictions and a
    /// restored state, over random sequences of tables that repeat.
    #[test]
    fn skipping_an_unchanged_table_changes_nothing() {
        let conns: Vec<Socket> = (0..12)
            .map(|i| {
                est(
                    &format!("10.0.0.5:{}", 80 + i % 3),
                    &format!("10.0.0.{}:{}", 7 + i, 1000 + i),
                )
            })
            .chain([listen("0.0.0.0:80")])
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let capacity = [4, 8, 1000][round % 3];
            let mut tables = [true, false].map(|skips| {
                let mut t = ConnectionTable::with_capacity(round % 2 == 0, capacity);
                t.skips = skips;
                t.track_changes();
                if round % 5 == 0 {
                    t.restore([pair(conns[0].local, conns[0].remote)]);
                }
                t
            });
            let mut table: Vec<Socket> = Vec::new();
            for _ in 0..30 {
                // Mostly the same table again; else one row in or out.
                if next() % 3 == 0 {
                    let row = conns[(next() % conns.len() as u64) as usize];
                    match table.iter().position(|s| *s == row) {
                        Some(at) => {
                            table.remove(at);
                        }
                        None => table.push(row),
                    }
                }
                let [a, b] = &mut tables;
                assert_eq!(
                    lines(&a.observe(&table)),
                    lines(&b.observe(&table)),
                    "round {round}"
                );
                assert_eq!(a.take_changes(), b.take_changes(), "round {round}");
                assert_eq!(a.len(), b.len());
                assert_eq!(a.evicted(), b.evicted());
            }
            assert!(tables[1].last.is_empty());
        }
        // And the skip is taken: an idle table is compared, not observed.
        let mut t = ConnectionTable::new(false);
        let idle = [listen("0.0.0.0:80"), est("10.0.0.5:80", "10.0.0.7:1000")];
        t.observe(&idle);
        let poll = t.poll;
        assert!(t.observe(&idle).is_empty());
        assert_eq!(t.poll, poll, "skipped");
    }
}
