//! The `procfs` source: `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! Each row prints addresses as the kernel holds them: a big-endian word
//! written as a host-order hex number (so `0100007F` is 127.0.0.1 on x86),
//! and ports as plain hex. IPv4 clients of dual-stack listeners appear in
//! `tcp6` as `::ffff:a.b.c.d` and are unmapped here.

use super::table::SocketTable;
use crate::event::{Socket, TcpState};
use anyhow::Context;
use std::fmt;
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
    let complete = text.ends_with('\n');
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let torn = !complete && lines.peek().is_none();
        if torn || line.trim().is_empty() || is_header(line) {
            continue;
        }
        match parse_line(line) {
            Ok(socket) => sockets.push(socket),
            Err(reason) => {
                return Err(LineError {
                    line: index + 1,
                    reason,
                })
            }
        }
    }
    Ok(sockets)
}

fn is_header(line: &str) -> bool {
    line.trim_start().starts_with("sl ")
}

/// Parses one row: `sl: local remote st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_line(line: &str) -> Result<Socket, String> {
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

/// Reads the two tables under a `/proc`-like root.
pub struct Procfs {
    files: [PathBuf; 2],
}

impl Procfs {
    /// The host's tables (or the current network namespace's).
    pub fn host() -> Self {
        Self::under(Path::new("/proc"))
    }

    pub fn under(root: &Path) -> Self {
        Procfs {
            files: [root.join("net/tcp"), root.join("net/tcp6")],
        }
    }
}

impl SocketTable for Procfs {
    fn name(&self) -> &'static str {
        "procfs"
    }

    fn snapshot(&mut self) -> anyhow::Result<Vec<Socket>> {
        let mut sockets = Vec::new();
        for file in &self.files {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                // A kernel without IPv6 has no tcp6.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with("tcp6") => {
                    continue
                }
                Err(e) => return Err(e).with_context(|| format!("{}", file.display())),
            };
            let table = parse_table(&text)
                .map_err(|e| anyhow::anyhow!("{}:{}: {}", file.display(), e.line, e.reason))?;
            sockets.extend(table);
        }
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
}
