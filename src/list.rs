//! `tcpwatch list`: the current connections, once, like `ss -tan` without
//! the listeners.

use crate::config::SourceKind;
use crate::detect::connections::{classify, is_connection, Listeners};
use crate::sink::Format;
use crate::source;
use std::collections::BTreeMap;
use std::io::Write;

pub fn run(source: SourceKind, format: Format) -> anyhow::Result<()> {
    let sockets = source::socket_table(source.name())?.snapshot()?;
    let listeners = Listeners::of(&sockets);
    // Keyed by (acceptor, initiator): sorted output, and one row for both
    // ends of a local connection.
    let mut rows = BTreeMap::new();
    for socket in sockets.iter().filter(|s| is_connection(s)) {
        let conn = classify(socket, &listeners);
        rows.entry((conn.acceptor, conn.initiator))
            .or_insert((conn, socket.state));
    }
    let mut out = std::io::stdout().lock();
    for (conn, state) in rows.values() {
        let line = match format {
            Format::Text => format!(
                "{:<11} {:<8} {} -> {}",
                state.name(),
                conn.direction.as_str(),
                conn.initiator,
                conn.acceptor
            ),
            Format::Json => serde_json::json!({
                "src": conn.initiator.to_string(),
                "dst": conn.acceptor.to_string(),
                "direction": conn.direction.as_str(),
                "state": state.name(),
            })
            .to_string(),
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}
