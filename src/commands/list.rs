//! `tcpwatch list`: the current connections, once, like `ss -tan` without
//! the listeners.
//!
//! A lean path, since it is run by hand and by scripts on hosts holding tens
//! of thousands of sockets: no runtime, one socket table, turned into the
//! distinct connections in its own memory and sorted there, rows formatted
//! by hand into one buffer written out every [`CHUNK`] bytes.

use crate::detect::connections::{distinct_owned, Row};
use crate::event::{Connection, TcpState};
use crate::sink::Format;
use crate::source::{self, SourceKind};
use crate::text::push_socket_addr;
use std::cmp::Ordering;
use std::io::Write;
use std::net::SocketAddrV4;

/// Bytes of rows written at once.
const CHUNK: usize = 64 * 1024;

pub fn run(source: SourceKind, format: Format) -> anyhow::Result<()> {
    let sockets = source::socket_table(source)?.snapshot()?;
    let rows = distinct_owned(sockets);
    let sorted = sorted(&rows);
    let result = write(&rows, &sorted, format, &mut std::io::stdout().lock());
    match result {
        // `list | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

/// Rows by acceptor, then initiator, as `SocketAddr` orders them; two IPv4
/// connections (most of a table) compare as one integer each.
fn order(a: &Connection, b: &Connection) -> Ordering {
    use std::net::SocketAddr::V4;
    match (a.acceptor, a.initiator, b.acceptor, b.initiator) {
        (V4(a_acc), V4(a_init), V4(b_acc), V4(b_init)) => {
            v4_key(a_acc, a_init).cmp(&v4_key(b_acc, b_init))
        }
        _ => a
            .acceptor
            .cmp(&b.acceptor)
            .then_with(|| a.initiator.cmp(&b.initiator)),
    }
}

/// The indices of `rows` in [`order`]. No two rows have the same
/// endpoints: the order is total.
///
/// A connection between two IPv4 endpoints (most of a table) sorts as one
/// 128-bit integer: its 96-bit key (see [`order`]) above its index, so the
/// sort moves 16 bytes a row and compares integers; the other rows sort by
/// [`order`] and the two runs are merged.
fn sorted(rows: &[Row]) -> Vec<u32> {
    use std::net::SocketAddr::V4;
    let index = |i: usize| u32::try_from(i).expect("fewer than 2^32 rows");
    let mut keys = Vec::with_capacity(rows.len());
    let mut rest = Vec::new();
    for (i, Row { conn, .. }) in rows.iter().enumerate() {
        match (conn.acceptor, conn.initiator) {
            (V4(acc), V4(init)) => keys.push(v4_key(acc, init) << 32 | u128::from(index(i))),
            _ => rest.push(index(i)),
        }
    }
    keys.sort_unstable();
    let fast = keys.iter().map(|&k| k as u32);
    if rest.is_empty() {
        return fast.collect();
    }
    let conn = |i: u32| &rows[i as usize].conn;
    rest.sort_unstable_by(|&a, &b| order(conn(a), conn(b)));
    let mut out = Vec::with_capacity(rows.len());
    let (mut fast, mut rest) = (fast.peekable(), rest.into_iter().peekable());
    while let (Some(&a), Some(&b)) = (fast.peek(), rest.peek()) {
        if order(conn(a), conn(b)) == Ordering::Less {
            out.push(a);
            fast.next();
        } else {
            out.push(b);
            rest.next();
        }
    }
    out.extend(fast);
    out.extend(rest);
    out
}

/// (address, port) of each end, side by side: 96 bits that order as the
/// endpoints do.
fn v4_key(acceptor: SocketAddrV4, initiator: SocketAddrV4) -> u128 {
    let end = |e: SocketAddrV4| u128::from(e.ip().to_bits()) << 16 | u128::from(e.port());
    end(acceptor) << 48 | end(initiator)
}

fn write(
    rows: &[Row],
    sorted: &[u32],
    format: Format,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK + 256);
    for &i in sorted {
        let Row { conn, state } = &rows[i as usize];
        row(&mut buf, format, conn, *state);
        if buf.len() >= CHUNK {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()
}

/// Appends one row and its newline. Text: `STATE DIRECTION SRC -> DST`, the
/// state padded to 11 columns and the direction to 8. JSON: one object with
/// its keys in alphabetical order; none of its strings (addresses, state
/// and direction names) has a character JSON escapes.
fn row(buf: &mut Vec<u8>, format: Format, conn: &Connection, state: TcpState) {
    let state = state.name();
    let direction = conn.direction.as_str();
    match format {
        Format::Text => {
            padded(buf, state, 11);
            buf.push(b' ');
            padded(buf, direction, 8);
            buf.push(b' ');
            push_socket_addr(buf, conn.initiator);
            buf.extend_from_slice(b" -> ");
            push_socket_addr(buf, conn.acceptor);
        }
        Format::Json => {
            buf.extend_from_slice(b"{\"direction\":\"");
            buf.extend_from_slice(direction.as_bytes());
            buf.extend_from_slice(b"\",\"dst\":\"");
            push_socket_addr(buf, conn.acceptor);
            buf.extend_from_slice(b"\",\"src\":\"");
            push_socket_addr(buf, conn.initiator);
            buf.extend_from_slice(b"\",\"state\":\"");
            buf.extend_from_slice(state.as_bytes());
            buf.extend_from_slice(b"\"}");
        }
    }
    buf.push(b'\n');
}

/// `text` left-aligned in `width` (at most 16) columns, as `{:<width}`
/// prints it.
fn padded(buf: &mut Vec<u8>, text: &str, width: usize) {
    buf.extend_from_slice(text.as_bytes());
    buf.extend_from_slice(&b"                "[..width.saturating_sub(text.len())]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Direction, Socket};

    /// The rows as the formatting machinery prints them (what `list`
    /// printed before it formatted by hand).
    fn reference(format: Format, conn: &Connection, socket: &Socket) -> String {
        match format {
            Format::Text => format!(
                "{:<11} {:<8} {} -> {}\n",
                socket.state.name(),
                conn.direction.as_str(),
                conn.initiator,
                conn.acceptor
            ),
            Format::Json => {
                serde_json::json!({
                    "src": conn.initiator.to_string(),
                    "dst": conn.acceptor.to_string(),
                    "direction": conn.direction.as_str(),
                    "state": socket.state.name(),
                })
                .to_string()
                    + "\n"
            }
        }
    }

    /// Endpoints whose orders as text, as integers and across families
    /// differ.
    fn ends() -> Vec<std::net::SocketAddr> {
        [
            "10.0.0.5:80",
            "10.0.0.5:443",
            "10.0.0.6:22",
            "9.255.255.255:65535",
            "127.0.0.1:7000",
            "255.255.255.255:1",
            "[::1]:80",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.5]:80",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
    }

    #[test]
    fn rows_are_ordered_as_socket_addresses_order() {
        let ends = ends();
        let conn = |initiator, acceptor| Connection {
            initiator,
            acceptor,
            direction: Direction::Inbound,
        };
        for &a_init in &ends {
            for &a_acc in &ends {
                for &b_init in &ends {
                    for &b_acc in &ends {
                        let (a, b) = (conn(a_init, a_acc), conn(b_init, b_acc));
                        assert_eq!(
                            order(&a, &b),
                            (a_acc, a_init).cmp(&(b_acc, b_init)),
                            "{a:?} {b:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_are_what_the_formatting_machinery_prints() {
        let states = [
            TcpState::Established,
            TcpState::SynSent,
            TcpState::SynRecv,
            TcpState::FinWait1,
            TcpState::FinWait2,
            TcpState::TimeWait,
            TcpState::Close,
            TcpState::CloseWait,
            TcpState::LastAck,
            TcpState::Closing,
        ];
        let pairs = [
            ("10.0.0.5:80", "192.0.2.56:5973"),
            ("127.0.0.1:7000", "127.0.0.1:32770"),
            ("[2001:db8::1]:443", "[2001:db8::7]:40112"),
            ("[::1]:9", "[fe80::1%2]:65535"),
        ];
        for (i, state) in states.into_iter().enumerate() {
            let (local, remote) = pairs[i % pairs.len()];
            let socket = Socket {
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                state,
                inode: 1,
            };
            for direction in [Direction::Inbound, Direction::Outbound] {
                let conn = Connection {
                    initiator: socket.remote,
                    acceptor: socket.local,
                    direction,
                };
                for format in [Format::Text, Format::Json] {
                    let mut buf = Vec::new();
                    row(&mut buf, format, &conn, socket.state);
                    assert_eq!(
                        String::from_utf8(buf).unwrap(),
                        reference(format, &conn, &socket)
                    );
                }
            }
        }
    }

    #[test]
    fn sorted_is_the_order_of_rows_whatever_their_families() {
        let ends = ends();
        let mut all = Vec::new();
        for &initiator in &ends {
            for &acceptor in &ends {
                if initiator != acceptor {
                    all.push(Row {
                        conn: Connection {
                            initiator,
                            acceptor,
                            direction: Direction::Inbound,
                        },
                        state: TcpState::Established,
                    });
                }
            }
        }
        // Tables of every mix: shuffled deterministically, then cut.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in [0, 1, 2, 7, 30, all.len()] {
            for _ in 0..20 {
                for i in (1..all.len()).rev() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    all.swap(i, (seed % (i as u64 + 1)) as usize);
                }
                let rows = &all[..len];
                let mut expected: Vec<u32> = (0..len as u32).collect();
                expected.sort_by(|&a, &b| order(&rows[a as usize].conn, &rows[b as usize].conn));
                assert_eq!(sorted(rows), expected, "{rows:?}");
            }
        }
    }
}
