//! The `procfs` source: `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! Each row prints addresses as the kernel holds them: a big-endian word
//! written as a host-order hex number (so `0100007F` is 127.0.0.1 on x86),
//! and ports as plain hex. IPv4 clients of dual-stack listeners appear in
//! `tcp6` as `::ffff:a.b.c.d` and are unmapped here.
//!
//! Reading the files is most of a poll's cost, and nearly all of it is the
//! kernel's: it formats every socket as a line (about 2 µs each), and
//! walks its whole established-hash table (hundreds of thousands of
//! buckets, shared by every network namespace) once per file, and once
//! more for the `read(2)` that finds the end of the file: the seq_file
//! cannot resume past its last row, so that read starts the walk over from
//! the first bucket. [`read_lines`] knows the end from a short read instead,
//! which saves that second walk (about 4 ms a file with 20,000 sockets on
//! the reference machine). It parses each read as it comes, in a buffer
//! kept across polls, so a table of any size costs no more memory than its
//! sockets.

use super::table::SocketTable;
use crate::event::{Socket, TcpState};
use anyhow::Context;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Why a line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for LineError {}

/// Parses a whole `/proc/net/tcp` or `/proc/net/tcp6` image.
///
/// The header line is skipped. A last line without its newline was torn by
/// a concurrent change (or a truncated copy) and is dropped even if it
/// parses, since a cut inode still looks like a number; any other bad line
/// is an error naming the line.
pub fn parse_table(text: &str) -> Result<Vec<Socket>, LineError> {
    let mut sockets = Vec::with_capacity(text.len() / 150);
    parse_table_into(text, &mut sockets)?;
    Ok(sockets)
}

/// [`parse_table`], appending to `out` (which keeps what it held); on an
/// error, `out` may hold some of this table's sockets.
pub fn parse_table_into(text: &str, out: &mut Vec<Socket>) -> Result<(), LineError> {
    parse_lines(text, out).map(|_| ())
}

/// [`parse_table_into`], returning the number of lines of `text`.
fn parse_lines(text: &str, out: &mut Vec<Socket>) -> Result<usize, LineError> {
    let complete = text.ends_with('\n');
    let mut count = 0;
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        count = index + 1;
        let torn = !complete && lines.peek().is_none();
        if torn || is_blank_or_header(line) {
            continue;
        }
        match parse_line(line) {
            Ok(socket) => out.push(socket),
            Err(reason) => {
                return Err(LineError {
                    line: index + 1,
                    reason,
                })
            }
        }
    }
    Ok(count)
}

/// Whether a line is blank or the header (`  sl  local_address ...`). A
/// row starts, after its padding, with the digits of its slot: one look at
/// its first non-blank byte tells it from both.
fn is_blank_or_header(line: &str) -> bool {
    match line.trim_start().as_bytes().first() {
        None => true,
        Some(b) if b.is_ascii_digit() => false,
        Some(_) => line.trim().is_empty() || is_header(line),
    }
}

fn is_header(line: &str) -> bool {
    line.trim_start().starts_with("sl ")
}

/// Parses one row: `sl: local remote st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_line(line: &str) -> Result<Socket, String> {
    match parse_kernel_row(line) {
        Some(socket) => Ok(socket),
        None => parse_fields(line),
    }
}

/// Hex digit values (`0-9a-fA-F`), 0xff for any other byte.
const HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// `len` hex digits at `at`, or `None`.
fn hex_at(bytes: &[u8], at: usize, len: usize) -> Option<u32> {
    bytes.get(at..at + len)?.iter().try_fold(0u32, |n, &b| {
        let digit = HEX[usize::from(b)];
        (digit != 0xff).then_some(n << 4 | u32::from(digit))
    })
}

/// The fast path of [`parse_line`]: a row laid out as the kernel prints it
/// (the slot, then the two endpoints and the state each after exactly one
/// space), read at fixed offsets instead of split into fields; `None` for
/// anything else, which [`parse_fields`] then parses or rejects. Whatever
/// it accepts, [`parse_fields`] accepts as the same socket: it reads the
/// same fields with the same rules, and leaves every rejection to it.
fn parse_kernel_row(line: &str) -> Option<Socket> {
    let bytes = line.as_bytes();
    let mut at = bytes.iter().position(|&b| b != b' ')?;
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    at += digits;
    if digits == 0 || bytes.get(at..at + 2)? != b": " {
        return None;
    }
    at += 2;
    let endpoint = |at: &mut usize| -> Option<SocketAddr> {
        let len = match (bytes.get(*at + 8), bytes.get(*at + 32)) {
            (Some(b':'), _) => 8,
            (_, Some(b':')) => 32,
            _ => return None,
        };
        let port = hex_at(bytes, *at + len + 1, 4)? as u16;
        if bytes.get(*at + len + 5) != Some(&b' ') {
            return None;
        }
        let mut octets = [0u8; 16];
        for (i, chunk) in octets[..len / 2].chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&hex_at(bytes, *at + i * 8, 8)?.to_ne_bytes());
        }
        let ip = match len {
            8 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&octets[..4]).ok()?)),
            _ => unmap(Ipv6Addr::from(octets)),
        };
        *at += len + 6;
        Some(SocketAddr::new(ip, port))
    };
    let local = endpoint(&mut at)?;
    let remote = endpoint(&mut at)?;
    let state = TcpState::from_kernel(hex_at(bytes, at, 2)? as u8)?;
    if bytes.get(at + 2) != Some(&b' ') {
        return None;
    }
    // tx/rx queue, timer, retransmits, uid, timeout, then the inode.
    let inode = parse_decimal(line.get(at + 3..)?.split_ascii_whitespace().nth(5)?)?;
    if local.is_ipv4() != remote.is_ipv4() && !is_unspecified(&remote) {
        return None;
    }
    Some(Socket {
        local,
        remote,
        state,
        inode,
    })
}

/// [`parse_line`] field by field: any layout, every error named.
fn parse_fields(line: &str) -> Result<Socket, String> {
    let mut fields = line.split_ascii_whitespace();
    let mut next = |name: &str| fields.next().ok_or_else(|| format!("missing {name} field"));
    let slot = next("slot")?;
    if !slot
        .strip_suffix(':')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("bad slot '{}'", clip(slot)));
    }
    let local = parse_endpoint(next("local address")?)?;
    let remote = parse_endpoint(next("remote address")?)?;
    let state_field = next("state")?;
    let state = hex_exact(state_field, 2)
        .and_then(|n| TcpState::from_kernel(n as u8))
        .ok_or_else(|| format!("bad state '{}'", clip(state_field)))?;
    for name in ["tx/rx queue", "timer", "retransmits", "uid", "timeout"] {
        next(name)?;
    }
    let inode_field = next("inode")?;
    let inode =
        parse_decimal(inode_field).ok_or_else(|| format!("bad inode '{}'", clip(inode_field)))?;
    if local.is_ipv4() != remote.is_ipv4() && !is_unspecified(&remote) {
        return Err("local and remote address families differ".to_string());
    }
    Ok(Socket {
        local,
        remote,
        state,
        inode,
    })
}

/// `ADDR:PORT` with ADDR 8 hex digits (IPv4) or 32 (IPv6), PORT 4.
fn parse_endpoint(field: &str) -> Result<SocketAddr, String> {
    let bad = || format!("bad address '{}'", clip(field));
    let (addr, port) = field.split_once(':').ok_or_else(bad)?;
    let port = hex_exact(port, 4).ok_or_else(bad)? as u16;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr).ok_or_else(bad)?)),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_exact_mut(4).enumerate() {
                // `get`: 32 bytes need not be 32 characters, and slicing
                // inside a multi-byte character would panic.
                let hex = addr.get(i * 8..i * 8 + 8).ok_or_else(bad)?;
                chunk.copy_from_slice(&word(hex).ok_or_else(bad)?);
            }
            unmap(Ipv6Addr::from(octets))
        }
        _ => return Err(bad()),
    };
    Ok(SocketAddr::new(ip, port))
}

/// One 32-bit word as the kernel prints it: the network-order bytes of the
/// address, read as a host-order integer. `to_ne_bytes` undoes that on any
/// endianness.
fn word(hex: &str) -> Option<[u8; 4]> {
    hex_exact(hex, 8).map(|n| n.to_ne_bytes())
}

/// Exactly `len` (at most 8) hex digits, in one pass. No sign: `to_digit`
/// takes only `0-9a-fA-F` (`from_str_radix` would take a leading `+`).
fn hex_exact(text: &str, len: usize) -> Option<u32> {
    debug_assert!(len <= 8, "a u32 holds 8 hex digits");
    if text.len() != len {
        return None;
    }
    text.bytes()
        .try_fold(0u32, |n, b| Some(n << 4 | char::from(b).to_digit(16)?))
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `::ffff:a.b.c.d` is an IPv4 peer of a dual-stack socket: print it as IPv4.
pub fn unmap(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

fn is_unspecified(addr: &SocketAddr) -> bool {
    addr.ip().is_unspecified() && addr.port() == 0
}

/// Keeps error messages one short line whatever the input.
fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(40).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

/// The bytes a seq_file formats for one `read(2)`: a page, 4 KiB or more
/// on every architecture. It formats whole rows into it and stops when the
/// next row does not fit.
const SEQ_PAGE: usize = 4096;
/// More than the longest row of `/proc/net/tcp` or `tcp6` can be: 239 and
/// 288 bytes with every field of the kernel's format at its widest (ten
/// digits of slot, a 16-digit timer, a 20-digit inode, RTO and ATO, ...);
/// rows are about 150 and 180 bytes in practice.
const LONGEST_ROW: usize = 320;
/// Bytes asked for by each `read(2)`: more than a seq_file returns at once,
/// so that only the kernel's page limits a read.
const READ_SIZE: usize = 64 * 1024;

/// Reads `file` to its end, handing `each` every run of complete lines
/// it gets (ending with a newline, in file order); a last line without its
/// newline is torn and dropped, as [`parse_table`] drops it. `buf` is kept
/// by the caller across polls: it holds one read and the start of a line
/// cut by it, whatever the size of the file.
///
/// A read of fewer than [`SEQ_PAGE`] - [`LONGEST_ROW`] bytes is the last:
/// the kernel fills a read with rows until the next one does not fit in its
/// page, so a read with room left for any row had no next row. Without
/// this, the end is found by one more read returning 0, which on
/// `/proc/net/tcp{,6}` costs a whole walk of the kernel's hash table (see
/// the module docs). A regular file (a saved copy) returns a short read only
/// at its end too; a longer last read is followed by the usual read of 0.
pub fn read_lines(
    file: &mut impl Read,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Bytes at the front of `buf`: the start of a line the last read cut.
    let mut carry = 0;
    loop {
        if buf.len() < carry + READ_SIZE {
            buf.resize(carry + READ_SIZE, 0);
        }
        let n = match file.read(&mut buf[carry..carry + READ_SIZE]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let filled = carry + n;
        let lines = buf[..filled]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        if lines > 0 {
            each(&buf[..lines])?;
        }
        buf.copy_within(lines..filled, 0);
        carry = filled - lines;
        if n < SEQ_PAGE - LONGEST_ROW {
            return Ok(());
        }
    }
}

/// The value of `field` on the line of `proto` in a `/proc/net/sockstat`
/// or `sockstat6` image (`TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 311`):
/// `sockstat_field(text, "TCP:", "tw")`. `None` when the line, the field or
/// a number is missing.
pub fn sockstat_field(text: &str, proto: &str, field: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.split_ascii_whitespace().next() == Some(proto))?;
    let mut words = line.split_ascii_whitespace().skip(1);
    while let (Some(name), Some(value)) = (words.next(), words.next()) {
        if name == field {
            return value.parse().ok();
        }
    }
    None
}

/// Whether the namespace holds no row for `/proc/net/tcp6`, as its
/// `sockstat` files count: no IPv6 TCP socket in its hash tables (`TCP6:
/// inuse`: listeners, connections, IPv4-mapped ones included) and no
/// TIME_WAIT socket of either family (`TCP: ... tw`). A request socket
/// needs an IPv6 listener, which `inuse` counts.
///
/// Why: with 20,000 IPv4 sockets and no IPv6 one, reading the empty
/// `tcp6` still walks the kernel's whole established hash table (262,144
/// buckets, twice with the read that finds its end): about 4 to 8 ms a
/// poll, a tenth of an idle agent's CPU, where these two small files cost
/// microseconds. Unreadable or unexpected files: not known empty, read.
fn tcp6_empty(sockstat: &Path, sockstat6: &Path) -> bool {
    let count = |path: &Path, proto: &str, field: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| sockstat_field(&text, proto, field))
    };
    count(sockstat6, "TCP6:", "inuse") == Some(0) && count(sockstat, "TCP:", "tw") == Some(0)
}

/// Reads the two tables under a `/proc`-like root.
pub struct Procfs {
    files: [PathBuf; 2],
    /// `net/sockstat` and `net/sockstat6`: when they count no IPv6 TCP
    /// socket, `tcp6` is not read ([`tcp6_empty`]).
    sockstat: [PathBuf; 2],
    /// The read buffer, kept across polls (see [`read_lines`]).
    buf: Vec<u8>,
    /// Sockets in the last table: the next one's capacity.
    last_len: usize,
}

impl Procfs {
    /// The host's tables (or the current network namespace's).
    pub fn host() -> Self {
        Self::under(Path::new("/proc"))
    }

    pub fn under(root: &Path) -> Self {
        Procfs {
            files: [root.join("net/tcp"), root.join("net/tcp6")],
            sockstat: [root.join("net/sockstat"), root.join("net/sockstat6")],
            buf: Vec::new(),
            last_len: 0,
        }
    }
}

impl SocketTable for Procfs {
    fn name(&self) -> &'static str {
        "procfs"
    }

    fn snapshot(&mut self) -> anyhow::Result<Vec<Socket>> {
        let mut sockets = Vec::with_capacity(self.last_len + self.last_len / 8);
        for file in &self.files {
            if file.ends_with("tcp6") && tcp6_empty(&self.sockstat[0], &self.sockstat[1]) {
                continue;
            }
            let mut opened = match std::fs::File::open(file) {
                Ok(opened) => opened,
                // A kernel without IPv6 has no tcp6.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with("tcp6") => {
                    continue
                }
                Err(e) => return Err(e).with_context(|| format!("{}", file.display())),
            };
            // Lines before the current run, to number a bad line.
            let mut before = 0;
            read_lines(&mut opened, &mut self.buf, |run| {
                let text = std::str::from_utf8(run).map_err(|_| anyhow::anyhow!("not UTF-8"))?;
                before += parse_lines(text, &mut sockets)
                    .map_err(|e| anyhow::anyhow!("line {}: {}", before + e.line, e.reason))?;
                Ok(())
            })
            // `/proc/net/tcp: line 7: bad state '0Z'`, `/proc/net/tcp: <I/O error>`
            .with_context(|| format!("{}", file.display()))?;
        }
        self.last_len = sockets.len();
        Ok(sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20165 1 0000000000000000 100 0 0 10 0
   1: E10FA20A:01BB 3800A8C0:1755 01 00000000:00000000 02:000A7214 00000000  1000        0 31337 2 0000000000000000 20 4 30 10 -1
";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn decodes_the_examples() {
        let sockets = parse_table(TCP).unwrap();
        assert_eq!(sockets.len(), 2);
        assert_eq!(sockets[0].local, addr("127.0.0.1:80"));
        assert_eq!(sockets[0].state, TcpState::Listen);
        assert_eq!(sockets[1].local, addr("10.162.15.225:443"));
        assert_eq!(sockets[1].remote, addr("192.168.0.56:5973"));
        assert_eq!(sockets[1].state, TcpState::Established);
        assert_eq!(sockets[1].inode, 31337);
    }

    #[test]
    fn decodes_ipv6_and_unmaps_v4_mapped() {
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: B80D0120000000000000000001000000:01BB B80D0120000000000000000007000000:9CB0 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 0 10 -1
   1: 0000000000000000FFFF00000500000A:0050 0000000000000000FFFF0000380200C0:1755 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 0 10 -1
";
        let sockets = parse_table(text).unwrap();
        assert_eq!(sockets[0].local, addr("[2001:db8::1]:443"));
        assert_eq!(sockets[0].remote, addr("[2001:db8::7]:40112"));
        assert_eq!(sockets[1].local, addr("10.0.0.5:80"));
        assert_eq!(sockets[1].remote, addr("192.0.2.56:5973"));
    }

    #[test]
    fn torn_last_line_is_skipped() {
        for cut in [1, 30, 100] {
            let torn = &TCP[..TCP.len() - cut];
            assert_eq!(parse_table(torn).unwrap().len(), 1, "cut {cut}");
        }
    }

    #[test]
    fn bad_line_names_its_number() {
        let text = TCP.replace("0100007F:0050", "+100007F:0050");
        let err = parse_table(&text).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("bad address"), "{}", err.reason);
    }

    #[test]
    fn rejects_malformed_fields() {
        let good = "   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20165";
        assert!(parse_line(good).is_ok());
        for (from, to) in [
            ("0100007F:0050", "0100007F:+050"),
            ("0100007F:0050", "0100007F:00050"),
            ("0100007F:0050", "00100007F:0050"),
            ("0100007F:0050", "0100007G:0050"),
            ("0100007F:0050", "0100007F0050"),
            (" 0A ", " 0Z "),
            (" 0A ", " 0D "),
            (" 0A ", " A "),
            ("20165", "x"),
            ("   0:", "   a:"),
        ] {
            let bad = good.replacen(from, to, 1);
            assert!(parse_line(&bad).is_err(), "accepted {bad}");
        }
        assert!(parse_line("   0: 0100007F:0050").is_err());
    }

    /// Found by the fuzzer (fuzz/fuzz_targets/procfs_parse.rs): a 32-byte
    /// address with a multi-byte character across a word boundary panicked
    /// ("byte index 8 is not a char boundary") instead of being rejected.
    #[test]
    fn non_ascii_ipv6_address_is_rejected_not_a_panic() {
        let line = "   2: 0500000A:0016 3802000\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}A:D5A2 01 00000000:00000000 02:000000000000 100 0 0 10 0";
        let err = parse_line(line).unwrap_err();
        assert!(err.starts_with("bad address"), "{err}");
        let line = "0: B80D012\u{e9}00000000000000000100000:01BB 00000000000000000000000000000000:0000 01 0 0 0 0 0 1";
        assert!(parse_line(line).unwrap_err().starts_with("bad address"));
        let table = format!("  sl  local_address\n{line}\n");
        assert_eq!(parse_table(&table).unwrap_err().line, 2);
    }

    /// Returns its chunks one read at a time, as a seq_file returns pages,
    /// and counts the reads; past the chunks, reads return 0. The second
    /// read is interrupted.
    struct Chunks {
        chunks: Vec<Vec<u8>>,
        reads: usize,
    }

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            if self.reads == 2 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            if self.chunks.is_empty() {
                return Ok(0);
            }
            let chunk = self.chunks.remove(0);
            assert!(buf.len() >= chunk.len(), "a read smaller than a page");
            buf[..chunk.len()].copy_from_slice(&chunk);
            Ok(chunk.len())
        }
    }

    /// What `read_lines` hands over, joined.
    fn lines_of(file: &mut impl Read, buf: &mut Vec<u8>) -> Vec<u8> {
        let mut got = Vec::new();
        read_lines(file, buf, |run| {
            assert_eq!(run.last(), Some(&b'\n'), "a run of whole lines");
            got.extend_from_slice(run);
            Ok(())
        })
        .unwrap();
        got
    }

    #[test]
    fn a_short_read_ends_the_table_without_a_read_of_nothing() {
        // Pages of whole 150-byte rows (27 fit in 4096 bytes), then a last
        // short one: 4 reads and one interrupted, none returning 0.
        let page = |fill: u8| {
            let row = [vec![fill; 149], vec![b'\n']].concat();
            row.repeat(27)
        };
        let last = [vec![b'd'; 299], vec![b'\n']].concat();
        let mut file = Chunks {
            chunks: vec![page(b'a'), page(b'b'), page(b'c'), last.clone()],
            reads: 0,
        };
        let mut buf = Vec::new();
        let got = lines_of(&mut file, &mut buf);
        assert_eq!(got, [page(b'a'), page(b'b'), page(b'c'), last].concat());
        assert_eq!(file.reads, 5);
        // A last page that is full is followed by the read of 0.
        let mut file = Chunks {
            chunks: vec![page(b'a'), page(b'b')],
            reads: 0,
        };
        assert_eq!(lines_of(&mut file, &mut buf).len(), 2 * 27 * 150);
        assert_eq!(file.reads, 4);
    }

    #[test]
    fn a_regular_file_is_read_whole_whatever_its_size_and_a_torn_line_dropped() {
        let mut buf = Vec::new();
        for size in [0, 1, 3583, 3584, 4096, 65_535, 65_536, 65_537, 300_000] {
            // Lines of every length up to 200 bytes, the last one torn
            // unless the size ends on a newline.
            let data: Vec<u8> = (0..size)
                .map(|i| {
                    if i % 201 == 200 {
                        b'\n'
                    } else {
                        b'a' + (i % 26) as u8
                    }
                })
                .collect();
            let whole = data
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |at| at + 1);
            let got = lines_of(&mut std::io::Cursor::new(&data), &mut buf);
            assert_eq!(got, &data[..whole], "size {size}");
            // One line longer than a read.
            let long = [vec![b'x'; 200_000], vec![b'\n'], data.clone()].concat();
            let whole = long.iter().rposition(|&b| b == b'\n').unwrap() + 1;
            let got = lines_of(&mut std::io::Cursor::new(&long), &mut buf);
            assert_eq!(got, &long[..whole], "size {size} after a long line");
        }
    }

    #[test]
    fn a_bad_line_is_numbered_across_reads() {
        // Row 3000 (line 3001 with the header) is bad; the rows span
        // several reads of a regular file.
        let row = TCP.lines().nth(1).unwrap();
        let mut text = format!("{}\n", TCP.lines().next().unwrap());
        for i in 1..=4000 {
            let line = if i == 3000 {
                row.replace("0100007F", "0100007G")
            } else {
                row.to_string()
            };
            text.push_str(&line);
            text.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/tcp"), &text).unwrap();
        let err = Procfs::under(dir.path()).snapshot().unwrap_err();
        assert!(
            format!("{err:#}").ends_with("net/tcp: line 3001: bad address '0100007G:0050'"),
            "{err:#}"
        );
        assert_eq!(parse_table(&text).unwrap_err().line, 3001);
        // Good, with no tcp6: every row, as parse_table reads them.
        let good = text.replace("0100007G", "0100007F");
        std::fs::write(dir.path().join("net/tcp"), &good).unwrap();
        let mut procfs = Procfs::under(dir.path());
        assert_eq!(procfs.snapshot().unwrap(), parse_table(&good).unwrap());
        assert_eq!(procfs.snapshot().unwrap().len(), 4000);
    }

    #[test]
    fn sockstat_fields_are_read_by_name() {
        let v4 =
            "sockets: used 8\nTCP: inuse 1 orphan 0 tw 7 alloc 1 mem 311\nUDP: inuse 0 mem 0\n";
        let v6 = "TCP6: inuse 0\nUDP6: inuse 2\n";
        assert_eq!(sockstat_field(v4, "TCP:", "tw"), Some(7));
        assert_eq!(sockstat_field(v4, "TCP:", "inuse"), Some(1));
        assert_eq!(sockstat_field(v6, "TCP6:", "inuse"), Some(0));
        assert_eq!(sockstat_field(v6, "UDP6:", "inuse"), Some(2));
        // Missing line, field or number: unknown, never zero.
        assert_eq!(sockstat_field(v4, "TCP6:", "inuse"), None);
        assert_eq!(sockstat_field(v4, "TCP:", "memory"), None);
        assert_eq!(sockstat_field("TCP: inuse x tw 0\n", "TCP:", "inuse"), None);
        assert_eq!(sockstat_field("TCP: tw\n", "TCP:", "tw"), None);
        assert_eq!(sockstat_field("", "TCP:", "tw"), None);
    }

    #[test]
    fn tcp6_is_read_unless_sockstat_counts_no_ipv6_socket_and_no_time_wait() {
        let v6_row = "   0: B80D0120000000000000000001000000:01BB B80D0120000000000000000007000000:9CB0 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 0 10 -1\n";
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        std::fs::create_dir(&net).unwrap();
        std::fs::write(net.join("tcp"), TCP).unwrap();
        std::fs::write(net.join("tcp6"), format!("  sl  local_address\n{v6_row}")).unwrap();
        let read = |v4: Option<&str>, v6: Option<&str>| {
            for (name, text) in [("sockstat", v4), ("sockstat6", v6)] {
                let _ = std::fs::remove_file(net.join(name));
                if let Some(text) = text {
                    std::fs::write(net.join(name), text).unwrap();
                }
            }
            Procfs::under(dir.path()).snapshot().unwrap().len()
        };
        let quiet = Some("TCP: inuse 2 orphan 0 tw 0 alloc 2 mem 1\n");
        // No IPv6 socket, no TIME_WAIT: tcp6 is not read (its row, here a
        // stale one, is not reported).
        assert_eq!(read(quiet, Some("TCP6: inuse 0\n")), 2);
        // An IPv6 socket, a TIME_WAIT one, or counts that cannot be read:
        // tcp6 is read.
        assert_eq!(read(quiet, Some("TCP6: inuse 1\n")), 3);
        let tw = Some("TCP: inuse 2 orphan 0 tw 1 alloc 2 mem 1\n");
        assert_eq!(read(tw, Some("TCP6: inuse 0\n")), 3);
        assert_eq!(read(quiet, None), 3);
        assert_eq!(read(None, Some("TCP6: inuse 0\n")), 3);
        assert_eq!(read(quiet, Some("TCP6: used 0\n")), 3);
    }

    #[test]
    fn reads_this_hosts_tables_as_a_whole_read_does() {
        // Every row of a table read in pages, and of one read whole, is a
        // socket; the two reads see the sockets made here alike.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let ours = |sockets: Vec<Socket>| -> Vec<_> {
            let mut v: Vec<_> = sockets
                .into_iter()
                .filter(|s| s.local.port() == port || s.remote.port() == port)
                .map(|s| (s.local, s.remote))
                .collect();
            v.sort();
            v
        };
        let mut procfs = Procfs::host();
        let paged = ours(procfs.snapshot().unwrap());
        let whole = ours(parse_table(&std::fs::read_to_string("/proc/net/tcp").unwrap()).unwrap());
        assert_eq!(paged.len(), 3, "{paged:?}");
        assert_eq!(paged, whole);
        // Again, on the kept buffer.
        assert_eq!(ours(procfs.snapshot().unwrap()), paged);
    }

    #[test]
    fn blank_and_header_lines_are_skipped_rows_are_not() {
        for line in [
            "",
            "   ",
            "\t",
            TCP.lines().next().unwrap(),
            "  sl  local_address",
        ] {
            assert!(is_blank_or_header(line), "{line:?}");
        }
        for line in TCP
            .lines()
            .skip(1)
            .chain(["x", "  +0: 0100007F:0050", "sl"])
        {
            assert_eq!(
                is_blank_or_header(line),
                line.trim().is_empty() || is_header(line),
                "{line:?}"
            );
            assert!(!is_blank_or_header(line), "{line:?}");
        }
    }

    /// The fast path never accepts what the field parser rejects or reads
    /// differently: rows as the kernel writes them, and every one-byte
    /// change of them (a digit, a letter out of hex, a space, a tab, a
    /// colon, a multi-byte character, a cut) at every position.
    #[test]
    fn the_fast_path_agrees_with_the_field_parser() {
        let v6 = "   0: B80D0120000000000000000001000000:01BB B80D0120000000000000000007000000:9CB0 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 0 10 -1";
        let mapped = "   1: 0000000000000000FFFF00000500000A:0050 0000000000000000FFFF0000380200C0:1755 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 0 10 -1";
        let any = "  12: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0";
        let rows: Vec<&str> = TCP.lines().skip(1).chain([v6, mapped, any]).collect();
        let mut checked = 0;
        for row in rows {
            let fast = parse_kernel_row(row).expect("a kernel row takes the fast path");
            assert_eq!(Ok(fast), parse_fields(row), "{row}");
            for at in 0..=row.len() {
                for with in ["0", "F", "f", "g", " ", "\t", ":", "é", "+", ""] {
                    let (Some(head), Some(tail)) = (row.get(..at), row.get(at + 1..)) else {
                        continue;
                    };
                    for line in [
                        format!("{head}{with}{tail}"),
                        format!("{head}{with}{}", &row[at..]),
                    ] {
                        if let Some(socket) = parse_kernel_row(&line) {
                            assert_eq!(Ok(socket), parse_fields(&line), "{line:?}");
                            checked += 1;
                        }
                    }
                }
            }
            for cut in 0..row.len() {
                if let Some(socket) = row.get(..cut).and_then(parse_kernel_row) {
                    assert_eq!(Ok(socket), parse_fields(&row[..cut]), "cut at {cut}");
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }
}
