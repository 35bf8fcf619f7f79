//! `tcpwatch list`: the current connections, once, like `ss -tan` without
//! the listeners.

use crate::detect::connections::distinct;
use crate::sink::Format;
use crate::source::{self, SourceKind};
use std::io::Write;

pub fn run(source: SourceKind, format: Format) -> anyhow::Result<()> {
    let sockets = source::socket_table(source)?.snapshot()?;
    let mut rows = distinct(&sockets);
    rows.sort_by_key(|(conn, _)| (conn.acceptor, conn.initiator));
    // One write per buffer, not per row: stdout is line-buffered.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (conn, socket) in &rows {
        let line = match format {
            Format::Text => format!(
                "{:<11} {:<8} {} -> {}",
                socket.state.name(),
                conn.direction.as_str(),
                conn.initiator,
                conn.acceptor
            ),
            Format::Json => serde_json::json!({
                "src": conn.initiator.to_string(),
                "dst": conn.acceptor.to_string(),
                "direction": conn.direction.as_str(),
                "state": socket.state.name(),
            })
            .to_string(),
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
