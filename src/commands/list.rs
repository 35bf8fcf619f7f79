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
    let mut rows = distinct_owned(sockets);
    // No two rows have the same endpoints: the order is total.
    rows.sort_unstable_by(|a, b| order(&a.conn, &b.conn));
    let result = write(&rows, format, &mut std::io::stdout().lock());
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
            // (address, port) of each end, side by side: 96 bits.
            let key = |acc: SocketAddrV4, init: SocketAddrV4| {
                let end =
                    |e: SocketAddrV4| u128::from(e.ip().to_bits()) << 16 | u128::from(e.port());
                end(acc) << 48 | end(init)
            };
            key(a_acc, a_init).cmp(&key(b_acc, b_init))
        }
        _ => a
            .acceptor
            .cmp(&b.acceptor)
            .then_with(|| a.initiator.cmp(&b.initiator)),
    }
}

fn write(rows: &[Row], format: Format, out: &mut impl Write) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(CHUNK + 256);
    for Row { conn, state } in rows {
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

    #[test]
    fn rows_are_ordered_as_socket_addresses_order() {
        let ends: Vec<std::net::SocketAddr> = [
            "10.0.0.5:80",
            "10.0.0.5:443",
            "10.0.0.6:22",
            "9.255.255.255:65535",
            "127.0.0.1:7000",
            "[::1]:80",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.5]:80",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
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
}
