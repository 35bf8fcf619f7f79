//! Persistent state (`--state`): what lets a restart leave no gap in the log
//! and no hole in the firewall.
//!
//! One `redb` file holds
//! - `connections`: every connection the agent has accounted for (reported,
//!   or deliberately skipped because it was open before the first start),
//!   keyed by the canonical endpoint pair of the connection table, with the
//!   wall time it was recorded;
//! - `blocks`: every block decided, with its absolute expiry and backend;
//! - `records`: what the agent remembers of each source it blocked (why,
//!   for whom, when, and how often in a row, for a repeat offender's longer
//!   block), until the record lapses;
//! - `meta`: the schema version, and whether a first table was ever stored.
//!
//! A table added later (`records`) leaves the schema version alone: a file
//! without it reads as having none, and an older agent ignores it.
//!
//! Writes are small durable transactions, one per poll or per batch of
//! blocks (redb commits are crash-safe: a `kill -9` loses at most the
//! transaction in flight, never the file). A new file is built under a
//! temporary name and renamed into place, so a crash during creation never
//! leaves a half-made file that the next start would call corrupt.
//!
//! A write that fails (disk full, I/O error) is not lost: the connection
//! changes wait in memory (bounded) and go with the next write, and the
//! database is re-opened first, since redb refuses every write after an I/O
//! error ("previous I/O error") until it is. The owner says the failure
//! once and the recovery once ([`Store::report`]).

use crate::setting::Value;
use ipnet::IpNet;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bumped whenever the tables or their encodings change; a file of another
/// version is refused rather than misread.
/// `--state`: a path, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePath {
    Off,
    At(PathBuf),
}

impl Value for StatePath {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(StatePath::Off),
            "" => Err("empty path (use a path or 'off')".to_string()),
            path => Ok(StatePath::At(PathBuf::from(path))),
        }
    }
    fn show(&self) -> String {
        match self {
            StatePath::Off => "off".to_string(),
            StatePath::At(path) => path.display().to_string(),
        }
    }
}

/// Where the state file is unless `--state` says otherwise.
pub const DEFAULT_STATE: &str = "/var/lib/tcpwatch/state";

crate::settings! {
    /// The persistent state file.
    pub struct Settings {
        /// Persistent state file, or 'off'
        state: StatePath = StatePath::At(PathBuf::from(DEFAULT_STATE)) => "state", "PATH|off", restart;
    }
}

pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Encoded endpoint pair -> wall time recorded (ms since the Unix epoch).
const CONNECTIONS: TableDefinition<&[u8], u64> = TableDefinition::new("connections");
/// Encoded address -> (expiry, ms since the Unix epoch; backend name).
const BLOCKS: TableDefinition<&[u8], (u64, &str)> = TableDefinition::new("blocks");
/// Encoded target -> (repeat, scan TTL ms, TTL ms, applied, lapses (ms
/// since the Unix epoch), reason, origin).
type RecordRow<'a> = (u32, u64, u64, u64, u64, &'a str, &'a str);
const RECORDS: TableDefinition<&[u8], RecordRow<'static>> = TableDefinition::new("records");
/// Reasons and origins longer than this are cut: the file stays small
/// whatever a fleet peer sends.
const MAX_TEXT: usize = 256;

const SCHEMA_KEY: &str = "schema";
const PRIMED_KEY: &str = "primed";

/// A connection's identity: its two endpoints, lower first (see
/// `detect::connections::pair`).
pub type ConnKey = (SocketAddr, SocketAddr);

/// A block as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    /// An address (a /32 or /128) or a prefix.
    pub target: IpNet,
    pub expires: SystemTime,
    pub backend: String,
}

/// A source's record as stored (see `block::record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub target: IpNet,
    pub repeat: u32,
    pub scan_ttl: Duration,
    pub ttl: Duration,
    pub applied: SystemTime,
    pub lapses: SystemTime,
    pub reason: String,
    pub origin: String,
}

/// What went wrong with the state file; its message is one line naming the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: cannot open: {cause}")]
    Open { path: String, cause: String },
    #[error("state file {path}: {cause}; remove {path} or run with --state off")]
    Unusable { path: String, cause: String },
    #[error("state file {path}: {cause}")]
    Io { path: String, cause: String },
}

/// Connection changes kept in memory at most while the file cannot be
/// written; past it, a restart may report the newest ones again.
pub const MAX_UNWRITTEN: usize = 262_144;

pub struct Store {
    /// `None` between a failed write and a successful re-open.
    db: RwLock<Option<Database>>,
    /// A write failed: re-open before the next one.
    broken: AtomicBool,
    /// The last write failed and that was said ([`Store::report`]).
    failing: crate::diag::SharedFault,
    unwritten: Mutex<Unwritten>,
    path: PathBuf,
    created: bool,
}

/// Connection changes not yet in the file. An address pair is in one set at
/// most: the last change wins.
#[derive(Debug, Default)]
pub struct Unwritten {
    added: HashSet<ConnKey>,
    removed: HashSet<ConnKey>,
    /// Changes not kept because the sets were full.
    pub dropped: u64,
}

impl Unwritten {
    pub fn merge(&mut self, added: &[ConnKey], removed: &[ConnKey]) {
        for key in added {
            self.removed.remove(key);
            if self.len() < MAX_UNWRITTEN || self.added.contains(key) {
                self.added.insert(*key);
            } else {
                self.dropped += 1;
            }
        }
        for key in removed {
            if self.added.remove(key) || self.len() < MAX_UNWRITTEN {
                self.removed.insert(*key);
            } else {
                self.dropped += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store {
    /// Opens the state file at `path`, creating it (and only it, not its
    /// directory) when absent. A file of another schema version, a file that
    /// is not a tcpwatch state file, and a corrupt file are errors.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        guarded(path, || Self::open_inner(path))
    }

    /// Reads everything the agent needs at start-up. Every page it touches
    /// is read here, under the panic guard, so a corrupt file is refused now
    /// rather than failing a stage later.
    pub fn load(&self) -> Result<Loaded, StateError> {
        guarded(&self.path, || {
            Ok(Loaded {
                connections: self.connections()?,
                blocks: self.blocks()?,
                records: self.records()?,
                primed: self.primed()?,
            })
        })
    }

    fn open_inner(path: &Path) -> Result<Store, StateError> {
        let shown = path.display().to_string();
        let created = !path.exists();
        if created {
            create_atomically(path).map_err(|cause| StateError::Open {
                path: shown.clone(),
                cause,
            })?;
        }
        let db = open_database(path)?;
        let store = Store {
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            failing: crate::diag::SharedFault::default(),
            unwritten: Mutex::new(Unwritten::default()),
            path: path.to_path_buf(),
            created,
        };
        match store.meta(SCHEMA_KEY)? {
            Some(SCHEMA_VERSION) => Ok(store),
            Some(other) => Err(StateError::Unusable {
                path: shown,
                cause: format!(
                    "schema version {other}, this tcpwatch reads version {SCHEMA_VERSION}"
                ),
            }),
            None => Err(StateError::Unusable {
                path: shown,
                cause: "not a tcpwatch state file (no schema version)".to_string(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Says a failed write once (until one succeeds) and the first success
    /// after failures, for every writer of this file together.
    pub fn report(&self, result: Result<(), StateError>) {
        match result {
            Err(e) => {
                self.failing.fail(|| {
                    format!("{e}; detection goes on and writes are retried (a restart before they succeed may report connections again or lose blocks)")
                });
            }
            Ok(()) => {
                self.failing
                    .recover(|| "state file writable again".to_string());
            }
        }
    }

    /// Whether connection changes wait for a write that failed.
    pub fn has_unwritten(&self) -> bool {
        !self.lock_unwritten().is_empty()
    }

    /// Changes dropped because too many waited.
    pub fn unwritten_dropped(&self) -> u64 {
        self.lock_unwritten().dropped
    }

    fn lock_unwritten(&self) -> std::sync::MutexGuard<'_, Unwritten> {
        self.unwritten.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open database for reading; an error while a re-open is due.
    fn reader(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StateError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(self.io("not open after a failed write"));
        }
        Ok(guard)
    }

    /// Runs `f` in one durable write transaction, re-opening the database
    /// first if the last write failed.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        if self.broken.load(Ordering::Relaxed) || db.is_none() {
            // Closed first: redb refuses to open a file this process has open.
            *db = None;
            *db = Some(guarded(&self.path, || open_database(&self.path))?);
            self.broken.store(false, Ordering::Relaxed);
        }
        let Some(database) = db.as_ref() else {
            return Err(self.io("not open"));
        };
        let result = database
            .begin_write()
            .map_err(|e| self.io(e))
            .and_then(|w| {
                let value = f(&w)?;
                w.commit().map_err(|e| self.io(e))?;
                Ok(value)
            });
        if result.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Whether this start created the file.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether the connections of a first table were ever stored: only then
    /// does the store tell which open connections were accounted for.
    pub fn primed(&self) -> Result<bool, StateError> {
        Ok(self.meta(PRIMED_KEY)?.is_some())
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, StateError> {
        self.read(META, |table| {
            let Some(table) = table else { return Ok(None) };
            let value = table.get(key).map_err(|e| self.unusable(e))?;
            Ok(value.map(|v| v.value()))
        })
    }

    /// Runs `f` on `table` in one read transaction; `None` when the table
    /// was never written.
    fn read<K: redb::Key + 'static, V: redb::Value + 'static, T>(
        &self,
        table: TableDefinition<K, V>,
        f: impl FnOnce(Option<&redb::ReadOnlyTable<K, V>>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let db = self.reader()?;
        let read = db
            .as_ref()
            .expect("checked")
            .begin_read()
            .map_err(|e| self.unusable(e))?;
        match read.open_table(table) {
            Ok(t) => f(Some(&t)),
            Err(redb::TableError::TableDoesNotExist(_)) => f(None),
            Err(e) => Err(self.unusable(e)),
        }
    }

    /// The connections accounted for.
    pub fn connections(&self) -> Result<Vec<ConnKey>, StateError> {
        self.rows(CONNECTIONS, "connection", |key, _| decode_pair(key))
    }

    /// Records connections accounted for and forgets closed ones, with
    /// every change a failed write left, in one durable transaction; marks
    /// the store primed. On failure the changes wait for the next call.
    pub fn update_connections(
        &self,
        added: &[ConnKey],
        removed: &[ConnKey],
        at: SystemTime,
    ) -> Result<(), StateError> {
        let mut unwritten = self.lock_unwritten();
        unwritten.merge(added, removed);
        let stamp = millis(at);
        self.write(|write| {
            let mut table = write.open_table(CONNECTIONS).map_err(|e| self.io(e))?;
            for key in &unwritten.added {
                table
                    .insert(encode_pair(*key).as_slice(), stamp)
                    .map_err(|e| self.io(e))?;
            }
            for key in &unwritten.removed {
                table
                    .remove(encode_pair(*key).as_slice())
                    .map_err(|e| self.io(e))?;
            }
            let mut meta = write.open_table(META).map_err(|e| self.io(e))?;
            meta.insert(PRIMED_KEY, 1).map_err(|e| self.io(e))?;
            Ok(())
        })?;
        unwritten.added.clear();
        unwritten.removed.clear();
        Ok(())
    }

    /// Every stored block, expired or not.
    pub fn blocks(&self) -> Result<Vec<StoredBlock>, StateError> {
        self.rows(BLOCKS, "block", |key, (expires, backend)| {
            Some(StoredBlock {
                target: decode_net(key)?,
                expires: UNIX_EPOCH + Duration::from_millis(expires),
                backend: backend.to_string(),
            })
        })
    }

    /// Every stored record, lapsed or not.
    pub fn records(&self) -> Result<Vec<StoredRecord>, StateError> {
        self.rows(RECORDS, "record", |key, row| {
            let (repeat, scan_ttl, ttl, applied, lapses, reason, origin) = row;
            Some(StoredRecord {
                target: decode_net(key)?,
                repeat,
                scan_ttl: Duration::from_millis(scan_ttl),
                ttl: Duration::from_millis(ttl),
                applied: UNIX_EPOCH + Duration::from_millis(applied),
                lapses: UNIX_EPOCH + Duration::from_millis(lapses),
                reason: reason.to_string(),
                origin: origin.to_string(),
            })
        })
    }

    /// Stores `records` (replacing those of the same targets) and drops
    /// the records lapsed by `now`, in one durable transaction.
    pub fn put_records(&self, records: &[StoredRecord], now: SystemTime) -> Result<(), StateError> {
        self.write(|write| {
            let mut table = write.open_table(RECORDS).map_err(|e| self.io(e))?;
            let now = millis(now);
            table.retain(|_, row| row.4 > now).map_err(|e| self.io(e))?;
            for r in records {
                let row: RecordRow = (
                    r.repeat,
                    millis_of(r.scan_ttl),
                    millis_of(r.ttl),
                    millis(r.applied),
                    millis(r.lapses),
                    cut(&r.reason),
                    cut(&r.origin),
                );
                table
                    .insert(encode_net(r.target).as_slice(), row)
                    .map_err(|e| self.io(e))?;
            }
            Ok(())
        })
    }

    /// Drops the block of `target` (lifted by the operator); its record
    /// stays.
    pub fn forget_block(&self, target: IpNet) -> Result<(), StateError> {
        self.write(|write| {
            let mut table = write.open_table(BLOCKS).map_err(|e| self.io(e))?;
            table
                .remove(encode_net(target).as_slice())
                .map_err(|e| self.io(e))?;
            Ok(())
        })
    }

    /// Every row of `table` (none when it was never written), each decoded
    /// by `decode`; a row it cannot decode makes the file corrupt.
    fn rows<V: redb::Value + 'static, T>(
        &self,
        table: TableDefinition<&'static [u8], V>,
        what: &str,
        decode: impl for<'a> Fn(&'a [u8], V::SelfType<'a>) -> Option<T>,
    ) -> Result<Vec<T>, StateError> {
        self.read(table, |table| {
            let mut out = Vec::new();
            let Some(table) = table else { return Ok(out) };
            for row in table.iter().map_err(|e| self.unusable(e))? {
                let (key, value) = row.map_err(|e| self.unusable(e))?;
                let decoded =
                    decode(key.value(), value.value()).ok_or_else(|| StateError::Unusable {
                        path: self.shown(),
                        cause: format!("a stored {what} does not decode (corrupt)"),
                    })?;
                out.push(decoded);
            }
            Ok(out)
        })
    }

    /// Records blocks of `targets` until `expires` and drops the blocks
    /// expired by `now`, in one durable transaction.
    pub fn put_blocks(
        &self,
        targets: &[IpNet],
        expires: SystemTime,
        backend: &str,
        now: SystemTime,
    ) -> Result<(), StateError> {
        self.write(|write| {
            let mut table = write.open_table(BLOCKS).map_err(|e| self.io(e))?;
            let now = millis(now);
            table
                .retain(|_, (expiry, _)| expiry > now)
                .map_err(|e| self.io(e))?;
            for target in targets {
                table
                    .insert(encode_net(*target).as_slice(), (millis(expires), backend))
                    .map_err(|e| self.io(e))?;
            }
            Ok(())
        })
    }

    /// Keeps the blocks `keep` accepts and that have not expired by `now`;
    /// returns how many were dropped.
    pub fn retain_blocks(
        &self,
        now: SystemTime,
        mut keep: impl FnMut(IpNet) -> bool,
    ) -> Result<usize, StateError> {
        self.write(|write| {
            let mut dropped = 0;
            let mut table = write.open_table(BLOCKS).map_err(|e| self.io(e))?;
            let now = millis(now);
            table
                .retain(|key, (expiry, _)| {
                    // An undecodable key cannot be restored: keep it so the
                    // next start reports the file instead of hiding it.
                    let kept = expiry > now && decode_net(key).is_none_or(&mut keep);
                    dropped += usize::from(!kept);
                    kept
                })
                .map_err(|e| self.io(e))?;
            Ok(dropped)
        })
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn unusable(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Unusable {
            path: self.shown(),
            cause: format!("cannot be read ({})", one_line(&e)),
        }
    }

    fn io(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Io {
            path: self.shown(),
            cause: format!("cannot write: {}", one_line(&e)),
        }
    }
}

/// What a start-up reads from the file.
#[derive(Debug)]
pub struct Loaded {
    pub connections: Vec<ConnKey>,
    pub blocks: Vec<StoredBlock>,
    pub records: Vec<StoredRecord>,
    pub primed: bool,
}

/// Runs a read of the file, turning a panic of the store into the corrupt
/// file error. redb reports most corruption as errors but panics on some
/// (seen with damaged B-tree pages); the agent must still exit with one
/// line, so the panic message is silenced for the duration.
fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|_| {
        Err(StateError::Unusable {
            path: path.display().to_string(),
            cause: "cannot be read (corrupt)".to_string(),
        })
    })
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// Opens the redb file, verifying every page's checksum: a torn or
/// bit-rotted file is refused instead of being half read.
fn open_database(path: &Path) -> Result<Database, StateError> {
    Database::builder()
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| open_error(&path.display().to_string(), e))
}

fn open_error(path: &str, e: redb::DatabaseError) -> StateError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StateError::Open {
            path: path.to_string(),
            cause: "in use by another process (is another tcpwatch running?)".to_string(),
        },
        // redb reports a bad header (wrong magic number) as InvalidData.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() != std::io::ErrorKind::InvalidData =>
        {
            StateError::Open {
                path: path.to_string(),
                cause: io.to_string(),
            }
        }
        other => StateError::Unusable {
            path: path.to_string(),
            cause: format!("cannot be read ({})", one_line(&other)),
        },
    }
}

/// Builds an empty state file under a temporary name, then renames it into
/// place and syncs the directory.
fn create_atomically(path: &Path) -> Result<(), String> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".new-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let built = (|| -> Result<(), String> {
        let db = Database::create(&temp).map_err(|e| one_line(&e))?;
        let write = db.begin_write().map_err(|e| one_line(&e))?;
        {
            let mut meta = write.open_table(META).map_err(|e| one_line(&e))?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                .map_err(|e| one_line(&e))?;
            // Created empty so readers never meet a missing table.
            write.open_table(CONNECTIONS).map_err(|e| one_line(&e))?;
            write.open_table(BLOCKS).map_err(|e| one_line(&e))?;
            write.open_table(RECORDS).map_err(|e| one_line(&e))?;
        }
        write.commit().map_err(|e| one_line(&e))?;
        drop(db);
        std::fs::rename(&temp, path).map_err(|e| e.to_string())?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())
    })();
    if built.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    built
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `text` cut to [`MAX_TEXT`] bytes at a character boundary.
fn cut(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Family byte (4 or 6), then 16 address bytes (IPv4 in the first four).
fn encode_ip(ip: IpAddr) -> [u8; 17] {
    let mut out = [0u8; 17];
    match ip {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&v6.octets());
        }
    }
    out
}

fn decode_ip(bytes: &[u8]) -> Option<IpAddr> {
    let body: [u8; 16] = bytes.get(1..17)?.try_into().ok()?;
    match bytes.first()? {
        4 if body[4..].iter().all(|b| *b == 0) => Some(IpAddr::V4(Ipv4Addr::new(
            body[0], body[1], body[2], body[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(body))),
        _ => None,
    }
}

/// A block's key: an address as [`encode_ip`] writes it (17 bytes, what
/// every version wrote), a prefix with its length after it (18 bytes).
fn encode_net(net: IpNet) -> Vec<u8> {
    let mut out = encode_ip(net.addr()).to_vec();
    if net.prefix_len() != net.max_prefix_len() {
        out.push(net.prefix_len());
    }
    out
}

fn decode_net(bytes: &[u8]) -> Option<IpNet> {
    let addr = decode_ip(bytes.get(..17)?)?;
    match bytes.len() {
        17 => Some(IpNet::from(addr)),
        18 => IpNet::new(addr, bytes[17])
            .ok()
            .filter(|net| net.trunc() == *net),
        _ => None,
    }
}

fn encode_pair((a, b): ConnKey) -> [u8; 38] {
    let mut out = [0u8; 38];
    for (at, end) in [(0, a), (19, b)] {
        out[at..at + 17].copy_from_slice(&encode_ip(end.ip()));
        out[at + 17..at + 19].copy_from_slice(&end.port().to_be_bytes());
    }
    out
}

fn decode_pair(bytes: &[u8]) -> Option<ConnKey> {
    if bytes.len() != 38 {
        return None;
    }
    let end = |at: usize| {
        let ip = decode_ip(&bytes[at..at + 17])?;
        let port = u16::from_be_bytes([bytes[at + 17], bytes[at + 18]]);
        Some(SocketAddr::new(ip, port))
    };
    Some((end(0)?, end(19)?))
}

#[cfg(test)]
mod tests;
