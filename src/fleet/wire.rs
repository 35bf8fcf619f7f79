//! What a node writes to Redis and reads back from it: the key names, the
//! ban messages, the (host, port) members of the scan windows, and the
//! checks every one of them passes before the node believes it.
//!
//! Everything read from Redis is outside input (another node's bug, an
//! operator's typo, a hostile writer with the fleet's password): the
//! decoders here never panic, bound what they accept, and say why they
//! refused, so the caller can count it and go on.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use redis::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Longest message (a ban or an unblock) accepted, in bytes.
pub const MAX_MESSAGE: usize = 512;
/// Longest reason text of a ban, in bytes.
pub const MAX_REASON: usize = 128;
/// Longest node name.
pub const MAX_NODE_NAME: usize = 64;
/// Longest (host, port) member of a scan window ("[v6]:port" is at most 47).
pub const MAX_PAIR: usize = 64;
/// The broadest IPv4 block the fleet carries (a /16); broader ones are
/// refused when published and ignored when read.
pub const MIN_PREFIX_V4: u8 = 16;
/// The broadest IPv6 block the fleet carries (a /32).
pub const MIN_PREFIX_V6: u8 = 32;
/// The latest expiry a message may carry (2100-01-01 in Unix milliseconds);
/// the task refuses anything further than its own maximum TTL anyway.
pub const MAX_EXPIRY_MS: u64 = 4_102_444_800_000;

/// Every key tcpwatch uses starts with this (the ACL key pattern is
/// `~tcpwatch:*`).
pub const KEY_PREFIX: &str = "tcpwatch:";

/// The keys of the ban state. They share the hash tag `{bans}`, so they live
/// in one slot of a Redis Cluster and one script can change them together.
pub mod keys {
    use super::*;

    /// A random id written by the first node that finds it missing: when it
    /// changes, Redis lost its data and the nodes publish their bans again.
    pub const EPOCH: &str = "tcpwatch:{bans}:epoch";
    /// Sorted set: member = target, score = expiry (Unix ms).
    pub const INDEX: &str = "tcpwatch:{bans}:index";
    /// Stream of changes (field `m` = one message), capped.
    pub const LOG: &str = "tcpwatch:{bans}:log";

    /// The ban itself: a string holding its message, expiring (PXAT) when
    /// the ban does.
    pub fn ban(target: &IpNet) -> String {
        format!("tcpwatch:{{bans}}:ban:{}", target_text(target))
    }

    /// Sorted set of one source's (host, port) pairs, scored by when they
    /// were last seen (Redis server time, ms). The source is the hash tag,
    /// so a cluster spreads sources over its shards.
    pub fn pairs(source: &IpNet) -> String {
        format!("tcpwatch:{{{}}}:pairs", target_text(source))
    }

    /// Present while one source's fleet scan episode lasts: set when the
    /// source crosses the line, kept while it stays active, gone after a
    /// quiet window.
    pub fn reported(source: &IpNet) -> String {
        format!("tcpwatch:{{{}}}:reported", target_text(source))
    }
}

/// Why something read from Redis was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// A ban as the fleet stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    pub target: IpNet,
    /// Absolute expiry, Unix milliseconds.
    pub expires_ms: u64,
    /// Name of the node that decided it.
    pub origin: String,
    /// Random id of the agent process that decided it (tells a node its own
    /// messages apart from those of an earlier run under the same name).
    pub instance: u64,
    /// Why (printable ASCII, may be empty).
    pub reason: String,
}

/// One message of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Block(BanRecord),
    Unblock {
        target: IpNet,
        origin: String,
        instance: u64,
    },
}

impl Message {
    pub fn target(&self) -> &IpNet {
        match self {
            Message::Block(b) => &b.target,
            Message::Unblock { target, .. } => target,
        }
    }
}

/// `192.0.2.56` for a single address, `2001:db8:1:2::/64` for a prefix.
pub fn target_text(target: &IpNet) -> String {
    if target.prefix_len() == target.max_prefix_len() {
        target.addr().to_string()
    } else {
        target.to_string()
    }
}

/// Reads a target as [`target_text`] writes it, and checks it is one the
/// fleet may carry: canonical (host bits zero, no IPv4-mapped IPv6), not
/// broader than [`MIN_PREFIX_V4`]/[`MIN_PREFIX_V6`], and not an unspecified,
/// loopback or multicast address.
pub fn parse_target(text: &str) -> Result<IpNet, Malformed> {
    if text.is_empty() || text.len() > 50 {
        return Err(Malformed("target of a bad length"));
    }
    let net = if text.contains('/') {
        text.parse::<IpNet>()
            .map_err(|_| Malformed("target is not an address or prefix"))?
    } else {
        let addr = text
            .parse::<IpAddr>()
            .map_err(|_| Malformed("target is not an address or prefix"))?;
        IpNet::from(addr)
    };
    check_target(&net)?;
    if target_text(&net) != text {
        return Err(Malformed("target not in canonical form"));
    }
    Ok(net)
}

/// The checks of [`parse_target`] on a target given by this node's own
/// pipeline.
pub fn check_target(net: &IpNet) -> Result<(), Malformed> {
    if net.trunc() != *net {
        return Err(Malformed("target prefix has host bits set"));
    }
    match net {
        IpNet::V4(n) => {
            if n.prefix_len() < MIN_PREFIX_V4 {
                return Err(Malformed("IPv4 target broader than /16"));
            }
            let a = n.addr();
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
                return Err(Malformed("target is not a unicast address"));
            }
        }
        IpNet::V6(n) => {
            if n.prefix_len() < MIN_PREFIX_V6 {
                return Err(Malformed("IPv6 target broader than /32"));
            }
            let a = n.addr();
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
                return Err(Malformed("target is not a unicast address"));
            }
            if a.to_ipv4_mapped().is_some() {
                return Err(Malformed("IPv4-mapped IPv6 target"));
            }
        }
    }
    Ok(())
}

/// A node name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `-` or `.`.
pub fn check_node_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NODE_NAME {
        return Err("longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with(['-', '.']) {
        return Err("must not start with '-' or '.'");
    }
    Ok(())
}

/// A ban reason as the fleet carries it: control and non-ASCII characters
/// replaced by `?`, cut at [`MAX_REASON`] bytes.
pub fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(MAX_REASON)
        .collect::<String>()
        .trim()
        .to_string()
}

/// `block <target> <expires_ms> <origin> <instance> [reason]` or
/// `unblock <target> <origin> <instance>`; `instance` is 16 lowercase hex
/// digits.
pub fn encode(message: &Message) -> String {
    match message {
        Message::Block(b) => {
            let mut s = format!(
                "block {} {} {} {:016x}",
                target_text(&b.target),
                b.expires_ms,
                b.origin,
                b.instance
            );
            if !b.reason.is_empty() {
                s.push(' ');
                s.push_str(&b.reason);
            }
            s
        }
        Message::Unblock {
            target,
            origin,
            instance,
        } => format!(
            "unblock {} {} {:016x}",
            target_text(target),
            origin,
            instance
        ),
    }
}

/// Reads a message written by [`encode`]; anything else is [`Malformed`].
pub fn decode(bytes: &[u8]) -> Result<Message, Malformed> {
    if bytes.len() > MAX_MESSAGE {
        return Err(Malformed("message too long"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Malformed("message is not UTF-8"))?;
    if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Malformed("message has a non-printable character"));
    }
    let (kind, rest) = text.split_once(' ').ok_or(Malformed("message too short"))?;
    match kind {
        "block" => {
            let mut parts = rest.splitn(5, ' ');
            let target = parse_target(parts.next().unwrap_or(""))?;
            let expires_ms = parse_expiry(parts.next().unwrap_or(""))?;
            let origin = parse_origin(parts.next().unwrap_or(""))?;
            let instance = parse_instance(parts.next().unwrap_or(""))?;
            let reason = match parts.next() {
                None => "",
                Some(r) if r.len() > MAX_REASON => return Err(Malformed("reason too long")),
                Some(r) if r.is_empty() || r != r.trim() => {
                    return Err(Malformed("reason with stray spaces"))
                }
                Some(r) => r,
            };
            Ok(Message::Block(BanRecord {
                target,
                expires_ms,
                origin,
                instance,
                reason: reason.to_string(),
            }))
        }
        "unblock" => {
            let mut parts = rest.split(' ');
            let target = parse_target(parts.next().unwrap_or(""))?;
            let origin = parse_origin(parts.next().unwrap_or(""))?;
            let instance = parse_instance(parts.next().unwrap_or(""))?;
            if parts.next().is_some() {
                return Err(Malformed("unblock message with extra fields"));
            }
            Ok(Message::Unblock {
                target,
                origin,
                instance,
            })
        }
        _ => Err(Malformed("unknown message kind")),
    }
}

fn parse_expiry(text: &str) -> Result<u64, Malformed> {
    if text.is_empty() || text.len() > 13 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("expiry is not a number of milliseconds"));
    }
    if text.starts_with('0') {
        return Err(Malformed("expiry not in canonical form"));
    }
    let ms: u64 = text
        .parse()
        .map_err(|_| Malformed("expiry is not a number of milliseconds"))?;
    if ms > MAX_EXPIRY_MS {
        return Err(Malformed("expiry too far in the future"));
    }
    Ok(ms)
}

fn parse_origin(text: &str) -> Result<String, Malformed> {
    check_node_name(text).map_err(|_| Malformed("origin is not a node name"))?;
    Ok(text.to_string())
}

fn parse_instance(text: &str) -> Result<u64, Malformed> {
    if text.len() != 16 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Malformed("instance is not 16 hex digits"));
    }
    u64::from_str_radix(text, 16).map_err(|_| Malformed("instance is not 16 hex digits"))
}

/// A scan window member: the (host, port) pair as `10.0.0.5:80` or
/// `[2001:db8::1]:443`.
pub fn encode_pair(pair: &SocketAddr) -> String {
    pair.to_string()
}

/// Reads a member written by [`encode_pair`]: canonical, port not 0, no
/// IPv6 scope or flow label.
pub fn decode_pair(bytes: &[u8]) -> Result<SocketAddr, Malformed> {
    if bytes.is_empty() || bytes.len() > MAX_PAIR {
        return Err(Malformed("pair of a bad length"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Malformed("pair is not UTF-8"))?;
    let pair: SocketAddr = text
        .parse()
        .map_err(|_| Malformed("pair is not host:port"))?;
    if pair.port() == 0 {
        return Err(Malformed("pair with port 0"));
    }
    if let SocketAddr::V6(v6) = pair {
        if v6.scope_id() != 0 || v6.flowinfo() != 0 {
            return Err(Malformed("pair with an IPv6 scope"));
        }
    }
    if encode_pair(&pair) != text {
        return Err(Malformed("pair not in canonical form"));
    }
    Ok(pair)
}

/// A fleet scan as the observe script reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSummary {
    /// Distinct hosts in the window.
    pub hosts: usize,
    /// Distinct ports, ascending.
    pub ports: Vec<u16>,
    /// Distinct (host, port) pairs read.
    pub pairs: usize,
}

/// Summarises the members of a crossing source's window; bad members are
/// skipped and counted in the second value.
pub fn summarize_pairs(members: &[Value]) -> (ScanSummary, u64) {
    let mut pairs = BTreeSet::new();
    let mut bad = 0;
    for m in members.iter().take(MAX_REPLY_ITEMS) {
        match value_bytes(m).ok_or(Malformed("pair is not a string")) {
            Ok(b) => match decode_pair(b) {
                Ok(p) => {
                    pairs.insert(p);
                }
                Err(_) => bad += 1,
            },
            Err(_) => bad += 1,
        }
    }
    let hosts: BTreeSet<IpAddr> = pairs.iter().map(|p| p.ip()).collect();
    let ports: BTreeSet<u16> = pairs.iter().map(|p| p.port()).collect();
    (
        ScanSummary {
            hosts: hosts.len(),
            ports: ports.into_iter().collect(),
            pairs: pairs.len(),
        },
        bad,
    )
}

/// Most items read from one reply array; a longer one is cut (and counted
/// as malformed by the callers that care).
pub const MAX_REPLY_ITEMS: usize = 4096;

/// The bytes of a string reply, whatever RESP type carried it.
pub fn value_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// An integer reply (or a string holding one).
pub fn value_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(value_bytes(other)?).ok()?.parse().ok(),
    }
}

/// The items of an array reply (RESP2 array or RESP3 set).
pub fn value_items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// One crossing reported by the observe script: the 1-based index of the
/// source in the call and its window's members.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub index: usize,
    pub members: Vec<Value>,
}

/// Reads the observe script's reply `{errors, {index, member...}, ...}`.
/// Returns the crossings, the number of sources the script could not
/// update, and how many malformed parts were skipped.
pub fn decode_observe_reply(v: &Value, sources: usize) -> (Vec<Crossing>, u64, u64) {
    let Some(items) = value_items(v) else {
        return (Vec::new(), 0, 1);
    };
    let mut malformed = 0;
    let errors = match items.first().and_then(value_int) {
        Some(n) if n >= 0 => n as u64,
        _ => {
            malformed += 1;
            0
        }
    };
    let mut crossings: Vec<Crossing> = Vec::new();
    for item in items.iter().skip(1).take(MAX_REPLY_ITEMS) {
        let Some(parts) = value_items(item) else {
            malformed += 1;
            continue;
        };
        let index = match parts.first().and_then(value_int) {
            Some(i) if i >= 1 && (i as u64) <= sources as u64 => i as usize,
            _ => {
                malformed += 1;
                continue;
            }
        };
        if crossings.iter().any(|c| c.index == index) {
            malformed += 1;
            continue;
        }
        crossings.push(Crossing {
            index,
            members: parts[1..].iter().take(MAX_REPLY_ITEMS).cloned().collect(),
        });
    }
    (crossings, errors, malformed)
}

/// A stream entry id `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub fn parse(bytes: &[u8]) -> Option<StreamId> {
        if bytes.len() > 41 {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let (ms, seq) = text.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of the change log as read: its id and its message, or why the
/// message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub id: StreamId,
    pub message: Result<Message, Malformed>,
}

/// Reads the entries of an `XRANGE` reply, or of one stream of an `XREAD`
/// reply: `[[id, [field, value, ...]], ...]`. An entry whose id cannot be
/// read ends the reply with an error (the reader cannot move past it);
/// an entry whose fields are wrong is returned as malformed.
pub fn decode_entries(v: &Value) -> Result<Vec<LogEntry>, Malformed> {
    let items = match v {
        Value::Nil => return Ok(Vec::new()),
        other => value_items(other).ok_or(Malformed("entries are not an array"))?,
    };
    let mut out = Vec::with_capacity(items.len().min(MAX_REPLY_ITEMS));
    for item in items.iter().take(MAX_REPLY_ITEMS) {
        let parts = value_items(item).ok_or(Malformed("entry is not an array"))?;
        let id = parts
            .first()
            .and_then(value_bytes)
            .and_then(StreamId::parse)
            .ok_or(Malformed("entry id unreadable"))?;
        let message = entry_message(parts.get(1));
        out.push(LogEntry { id, message });
    }
    Ok(out)
}

fn entry_message(fields: Option<&Value>) -> Result<Message, Malformed> {
    let fields = match fields {
        Some(Value::Map(map)) => {
            if map.len() != 1 {
                return Err(Malformed("entry must have one field"));
            }
            let (k, v) = &map[0];
            return field_message(k, v);
        }
        Some(other) => value_items(other).ok_or(Malformed("entry fields are not an array"))?,
        None => return Err(Malformed("entry without fields")),
    };
    if fields.len() != 2 {
        return Err(Malformed("entry must have one field"));
    }
    field_message(&fields[0], &fields[1])
}

fn field_message(k: &Value, v: &Value) -> Result<Message, Malformed> {
    if value_bytes(k) != Some(b"m") {
        return Err(Malformed("entry field is not 'm'"));
    }
    decode(value_bytes(v).ok_or(Malformed("entry value is not a string"))?)
}

/// Reads an `XREAD` reply for the one log stream: `[[key, entries]]` in
/// RESP2, `{key: entries}` in RESP3, nil on time-out.
pub fn decode_xread(v: &Value) -> Result<Vec<LogEntry>, Malformed> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(map) => match map.first() {
            Some((_, entries)) if map.len() == 1 => decode_entries(entries),
            None => Ok(Vec::new()),
            _ => Err(Malformed("XREAD reply with several streams")),
        },
        other => {
            let streams = value_items(other).ok_or(Malformed("XREAD reply is not an array"))?;
            match streams {
                [] => Ok(Vec::new()),
                [one] => {
                    let parts = value_items(one).ok_or(Malformed("XREAD stream not an array"))?;
                    match parts {
                        [_, entries] => decode_entries(entries),
                        _ => Err(Malformed("XREAD stream not [key, entries]")),
                    }
                }
                _ => Err(Malformed("XREAD reply with several streams")),
            }
        }
    }
}

/// What the sync script tells about the ban keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    pub epoch: String,
    /// The last entry ever added to the log.
    pub last: StreamId,
    /// The first entry still in the log when older ones were trimmed.
    pub first_kept: StreamId,
    /// The last entry deleted from the log.
    pub max_deleted: StreamId,
}

impl SyncState {
    /// True when entries after `position` may be gone from the log (or the
    /// log went back), so reading it from there would miss some.
    pub fn gap_after(&self, position: StreamId) -> bool {
        self.last < position || self.max_deleted > position || self.first_kept > position
    }
}

/// Reads the sync script's reply `{epoch, last, first kept, max deleted}`;
/// ids are `0-0` for none.
pub fn decode_sync_reply(v: &Value) -> Result<SyncState, Malformed> {
    let items = value_items(v).ok_or(Malformed("sync reply is not an array"))?;
    let [epoch, last, first_kept, max_deleted] = items else {
        return Err(Malformed("sync reply of a bad length"));
    };
    let epoch = value_bytes(epoch)
        .filter(|e| !e.is_empty() && e.len() <= 32 && e.iter().all(u8::is_ascii_alphanumeric))
        .ok_or(Malformed("epoch unreadable"))?;
    let id = |v: &Value| {
        value_bytes(v)
            .and_then(StreamId::parse)
            .ok_or(Malformed("stream id unreadable"))
    };
    Ok(SyncState {
        epoch: String::from_utf8_lossy(epoch).into_owned(),
        last: id(last)?,
        first_kept: id(first_kept)?,
        max_deleted: id(max_deleted)?,
    })
}

/// Reads a page of the ban index (`ZRANGE ... WITHSCORES`, RESP2 flat
/// `[member, score, ...]` or RESP3 `[[member, score], ...]`): the targets
/// and their expiries. Bad members are skipped and counted.
pub fn decode_index_page(v: &Value) -> (Vec<(IpNet, u64)>, u64) {
    let Some(items) = value_items(v) else {
        return (Vec::new(), 1);
    };
    let mut out = Vec::new();
    let mut bad = 0;
    let mut odd = false;
    let mut push = |member: &Value, score: &Value| {
        let target = value_bytes(member)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| parse_target(t).ok());
        let expiry = match score {
            Value::Double(d) if d.is_finite() && *d >= 1.0 && *d <= MAX_EXPIRY_MS as f64 => {
                Some(*d as u64)
            }
            other => value_bytes(other)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|d| d.is_finite() && *d >= 1.0 && *d <= MAX_EXPIRY_MS as f64)
                .map(|d| d as u64),
        };
        match (target, expiry) {
            (Some(t), Some(e)) => out.push((t, e)),
            _ => bad += 1,
        }
    };
    if items.iter().all(|i| value_items(i).is_some()) && !items.is_empty() {
        for item in items.iter().take(MAX_REPLY_ITEMS) {
            match value_items(item) {
                Some([m, s]) => push(m, s),
                _ => odd = true,
            }
        }
    } else {
        odd = items.len() % 2 != 0;
        for pair in items.chunks_exact(2).take(MAX_REPLY_ITEMS) {
            push(&pair[0], &pair[1]);
        }
    }
    (out, bad + u64::from(odd))
}

/// Reads one ban record (a `GET`/`MGET` item) and checks it is the ban of
/// `target`. `Ok(None)`: the key is gone (expired or lifted meanwhile).
pub fn decode_record(v: &Value, target: &IpNet) -> Result<Option<BanRecord>, Malformed> {
    if matches!(v, Value::Nil) {
        return Ok(None);
    }
    let bytes = value_bytes(v).ok_or(Malformed("ban record is not a string"))?;
    match decode(bytes)? {
        Message::Block(b) if b.target == *target => Ok(Some(b)),
        Message::Block(_) => Err(Malformed("ban record of another target")),
        Message::Unblock { .. } => Err(Malformed("ban record is an unblock")),
    }
}

/// The fleet's key for a source: the address for IPv4, its prefix of
/// `ipv6_prefix` bits for IPv6 (IPv4-mapped IPv6 counts as IPv4).
pub fn source_key(addr: IpAddr, ipv6_prefix: u8) -> IpNet {
    match canonical_ip(addr) {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid length")),
        IpAddr::V6(a) => {
            let len = ipv6_prefix.clamp(MIN_PREFIX_V6, 128);
            IpNet::V6(
                Ipv6Net::new(a, len)
                    .expect("length clamped to 32..=128")
                    .trunc(),
            )
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as plain IPv4; anything else as is.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        },
        v4 => v4,
    }
}

/// Feeds outside bytes to every decoder of this module, as the fuzz target
/// and its regression tests do: as a message, as a pair member, and as a
/// RESP reply read by each reply decoder. Panics if a decoder breaks its
/// own contract (a decoded message or pair that does not write back to the
/// same bytes, a summary larger than its input, an error that is not one
/// printable line); returns how many decoders accepted the input.
pub fn exercise(data: &[u8]) -> usize {
    let mut accepted = 0;
    match decode(data) {
        Ok(m) => {
            assert_eq!(encode(&m).as_bytes(), data, "message does not round-trip");
            accepted += 1;
        }
        Err(e) => assert_one_line(e),
    }
    match decode_pair(data) {
        Ok(p) => {
            assert_eq!(encode_pair(&p).as_bytes(), data, "pair does not round-trip");
            accepted += 1;
        }
        Err(e) => assert_one_line(e),
    }
    let Ok(value) = redis::parse_redis_value(data) else {
        return accepted;
    };
    if let Ok(entries) = decode_xread(&value) {
        assert!(entries.len() <= MAX_REPLY_ITEMS);
        accepted += 1;
    }
    if let Ok(entries) = decode_entries(&value) {
        for e in &entries {
            if let Err(m) = &e.message {
                assert_one_line(*m);
            }
        }
        accepted += 1;
    }
    let (targets, _) = decode_index_page(&value);
    assert!(targets.len() <= MAX_REPLY_ITEMS);
    for (t, exp) in &targets {
        assert!(check_target(t).is_ok() && *exp >= 1 && *exp <= MAX_EXPIRY_MS);
        let _ = decode_record(&value, t);
    }
    let (crossings, _, _) = decode_observe_reply(&value, 8);
    for c in &crossings {
        assert!(c.index >= 1 && c.index <= 8);
        let (summary, bad) = summarize_pairs(&c.members);
        assert!(summary.pairs as u64 + bad <= c.members.len() as u64);
        assert!(summary.hosts <= summary.pairs && summary.ports.len() <= summary.pairs);
        assert!(summary.ports.windows(2).all(|w| w[0] < w[1]));
    }
    if decode_sync_reply(&value).is_ok() {
        accepted += 1;
    }
    accepted
}

fn assert_one_line(e: Malformed) {
    assert!(
        !e.0.is_empty() && !e.0.chars().any(char::is_control),
        "error not one line: {:?}",
        e.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> BanRecord {
        BanRecord {
            target: "192.0.2.56/32".parse().unwrap(),
            expires_ms: 1_714_310_885_000,
            origin: "node-b".into(),
            instance: 0x9f3c_2a1b_0d4e_5f60,
            reason: "port scan".into(),
        }
    }

    #[test]
    fn messages_round_trip() {
        let block = Message::Block(rec());
        let text = encode(&block);
        assert_eq!(
            text,
            "block 192.0.2.56 1714310885000 node-b 9f3c2a1b0d4e5f60 port scan"
        );
        assert_eq!(decode(text.as_bytes()), Ok(block));
        let mut r = rec();
        r.reason.clear();
        r.target = "2001:db8:1:2::/64".parse().unwrap();
        let block = Message::Block(r);
        let text = encode(&block);
        assert_eq!(
            text,
            "block 2001:db8:1:2::/64 1714310885000 node-b 9f3c2a1b0d4e5f60"
        );
        assert_eq!(decode(text.as_bytes()), Ok(block));
        let unblock = Message::Unblock {
            target: "2001:db8::7/128".parse().unwrap(),
            origin: "a".into(),
            instance: 1,
        };
        let text = encode(&unblock);
        assert_eq!(text, "unblock 2001:db8::7 a 0000000000000001");
        assert_eq!(decode(text.as_bytes()), Ok(unblock));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"block",
            b"block 192.0.2.256 1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56/32 1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block 10.0.0.0/8 1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block 10.0.0.1/24 1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block ::/0 1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block 127.0.0.1 1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block ::ffff:192.0.2.1 1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 -1 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 0 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 01714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 99999999999999999999 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 9999999999999 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 +1714310885000 node-b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 1714310885000 node/b 9f3c2a1b0d4e5f60",
            b"block 192.0.2.56 1714310885000 node-b 9F3C2A1B0D4E5F60",
            b"block 192.0.2.56 1714310885000 node-b 9f3c",
            b"block 192.0.2.56 1714310885000 node-b 9f3c2a1b0d4e5f60 ",
            b"block 192.0.2.56 1714310885000 node-b 9f3c2a1b0d4e5f60  x",
            b"block 192.0.2.56 1714310885000 node-b 9f3c2a1b0d4e5f60 \x1b[31m",
            b"block 192.0.2.56 1714310885000 node-b 9f3c2a1b0d4e5f60 \xff",
            b"unblock 192.0.2.56 node-b 9f3c2a1b0d4e5f60 extra",
            b"unblock 192.0.2.56 node-b",
            b"ban 192.0.2.56 node-b 9f3c2a1b0d4e5f60",
        ];
        for b in bad {
            assert!(decode(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        let long = format!(
            "block 192.0.2.56 1714310885000 node-b 9f3c2a1b0d4e5f60 {}",
            "x".repeat(MAX_REASON + 1)
        );
        assert!(decode(long.as_bytes()).is_err());
        assert!(decode(&vec![b'a'; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn pairs() {
        for ok in ["10.0.0.5:80", "[2001:db8::1]:443"] {
            assert_eq!(encode_pair(&decode_pair(ok.as_bytes()).unwrap()), ok);
        }
        for bad in [
            "10.0.0.5:0",
            "10.0.0.5",
            "10.0.0.5:080",
            "[fe80::1%2]:80",
            "[2001:DB8::1]:443",
            "x",
            "",
        ] {
            assert!(decode_pair(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn source_keys() {
        assert_eq!(
            source_key("::ffff:192.0.2.9".parse().unwrap(), 64).to_string(),
            "192.0.2.9/32"
        );
        assert_eq!(
            target_text(&source_key("2001:db8:1:2:3::9".parse().unwrap(), 64)),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            target_text(&source_key("2001:db8:1:2:3::9".parse().unwrap(), 128)),
            "2001:db8:1:2:3::9"
        );
        assert_eq!(
            keys::pairs(&"192.0.2.9/32".parse().unwrap()),
            "tcpwatch:{192.0.2.9}:pairs"
        );
    }

    #[test]
    fn log_gaps() {
        let id = |ms, seq| StreamId { ms, seq };
        let state = |last, first_kept, max_deleted| SyncState {
            epoch: "e".into(),
            last,
            first_kept,
            max_deleted,
        };
        let zero = StreamId::ZERO;
        // Nothing trimmed: never a gap, wherever the node stopped.
        assert!(!state(id(9, 0), zero, zero).gap_after(id(5, 0)));
        assert!(!state(id(9, 0), zero, zero).gap_after(zero));
        // Trimmed before the position: no gap; after it: a gap.
        assert!(!state(id(9, 0), id(4, 0), zero).gap_after(id(5, 0)));
        assert!(state(id(9, 0), id(6, 0), zero).gap_after(id(5, 0)));
        // An entry deleted after the position, or a log that went back.
        assert!(state(id(9, 0), zero, id(7, 1)).gap_after(id(5, 0)));
        assert!(state(id(3, 0), zero, zero).gap_after(id(5, 0)));
    }

    #[test]
    fn node_names() {
        assert!(check_node_name("node-b.example_1").is_ok());
        for bad in ["", "-x", ".x", "a b", "a:b", &"a".repeat(65)] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let xread = Value::Array(vec![Value::Array(vec![
            bulk(keys::LOG),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![bulk("m"), bulk(&encode(&Message::Block(rec())))]),
                ]),
                Value::Array(vec![bulk("6-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
                Value::Array(vec![bulk("7-0"), Value::Int(3)]),
            ]),
        ])]);
        let entries = decode_xread(&xread).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].id, StreamId { ms: 5, seq: 1 });
        assert!(entries[0].message.is_ok());
        assert!(entries[1].message.is_err());
        assert!(entries[2].message.is_err());
        let bad_id = Value::Array(vec![Value::Array(vec![
            bulk(keys::LOG),
            Value::Array(vec![Value::Array(vec![bulk("x-1")])]),
        ])]);
        assert!(decode_xread(&bad_id).is_err());

        let page = Value::Array(vec![
            bulk("192.0.2.56"),
            bulk("1714310885000"),
            bulk("10.0.0.0/8"),
            bulk("1714310885000"),
            bulk("192.0.2.57"),
            bulk("nan"),
        ]);
        let (targets, bad) = decode_index_page(&page);
        assert_eq!(targets.len(), 1);
        assert_eq!(bad, 2);

        let reply = Value::Array(vec![
            Value::Int(0),
            Value::Array(vec![
                Value::Int(2),
                bulk("10.0.0.1:22"),
                bulk("10.0.0.2:22"),
            ]),
            Value::Array(vec![Value::Int(9)]),
        ]);
        let (crossings, errors, malformed) = decode_observe_reply(&reply, 2);
        assert_eq!((crossings.len(), errors, malformed), (1, 0, 1));
        let (summary, bad) = summarize_pairs(&crossings[0].members);
        assert_eq!(summary.hosts, 2);
        assert_eq!(summary.ports, vec![22]);
        assert_eq!(bad, 0);
    }
}
