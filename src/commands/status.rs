//! `tcpwatch status [--format text|json]`: asks the running agent over its
//! control socket for its source's health, the last hour's figures, the
//! top scanners and ports, and the blocks in force.

use crate::control::client::ask;
use crate::control::{BlockInfo, Request, Response, Status};
use crate::sink::Format;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

/// Scanners and ports listed at most.
pub const TOP: usize = 10;

pub fn run(control: &Path, format: Format) -> anyhow::Result<()> {
    let status = match ask(control, &Request::Status { top: TOP })? {
        Some(Response::Status(status)) => status,
        Some(Response::Refused { message }) => anyhow::bail!("{message}"),
        Some(other) => anyhow::bail!("unexpected answer from the agent: {other:?}"),
        None => anyhow::bail!("{}", no_agent(control)),
    };
    let text = match format {
        Format::Text => text(&status),
        Format::Json => crate::control::to_line(&status),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// The line said when nothing answers on the socket.
pub fn no_agent(control: &Path) -> String {
    format!(
        "no agent running (nothing answers on {})",
        control.display()
    )
}

/// `2h13m5s`.
fn uptime(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One block as `blocks list` shows it: `192.0.2.56 expires in 3412s via
/// nftables; 1234 packets dropped; port scan 3/60s on ports 80,81,82,83
/// (repeat 2); origin node-a`.
pub fn block_line(block: &BlockInfo) -> String {
    let left = match block.expires_in_seconds {
        Some(secs) => format!("expires in {secs}s"),
        None => "never expires".to_string(),
    };
    let repeat = if block.repeat > 1 {
        format!(" (repeat {})", block.repeat)
    } else {
        String::new()
    };
    format!(
        "{} {left} via {}; {} dropped; {}{repeat}; origin {}",
        block.target,
        block.backend,
        plural(block.packets_dropped, "packet", "packets"),
        block.reason,
        block.origin
    )
}

/// The status as text, one fact a line.
pub fn text(s: &Status) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "tcpwatch {} on {} (pid {}), up {}",
        s.version,
        s.node,
        s.pid,
        uptime(s.uptime_seconds)
    );
    let _ = writeln!(
        out,
        "source: {}, {}, {} lost",
        s.source.name,
        s.source.health,
        plural(s.source.events_lost, "event", "events")
    );
    let b = &s.blocking;
    match &b.backend {
        Some(backend) => {
            let dry = if b.dry_run { " (dry run)" } else { "" };
            let _ = writeln!(
                out,
                "blocking: {backend}{dry}, {} in force, {} pending, {}, {}, {} dropped",
                plural(b.active as u64, "block", "blocks"),
                b.pending,
                plural(b.errors, "error", "errors"),
                plural(b.drift_repaired, "drift repair", "drift repairs"),
                plural(b.packets_dropped, "packet", "packets"),
            );
        }
        None => {
            let _ = writeln!(out, "blocking: off");
        }
    }
    let h = &s.last_hour;
    let _ = writeln!(
        out,
        "last hour: {} inbound and {} outbound, {}, {}",
        plural(h.connections_inbound, "connection", "connections"),
        h.connections_outbound,
        plural(h.port_scans, "port scan", "port scans"),
        plural(h.blocks, "block", "blocks"),
    );
    if s.top_scanners.is_empty() {
        let _ = writeln!(out, "top scanners: none");
    } else {
        let _ = writeln!(out, "top scanners:");
        for scanner in &s.top_scanners {
            let _ = writeln!(
                out,
                "  {} {}",
                scanner.source,
                plural(scanner.scans, "scan", "scans")
            );
        }
    }
    if s.top_ports.is_empty() {
        let _ = writeln!(out, "top ports: none");
    } else {
        let _ = writeln!(out, "top ports:");
        for port in &s.top_ports {
            let _ = writeln!(
                out,
                "  {} {}",
                port.port,
                plural(port.scans, "scan", "scans")
            );
        }
    }
    if s.blocks.is_empty() {
        let _ = writeln!(out, "blocks: none");
    } else {
        let _ = writeln!(out, "blocks:");
        for block in &s.blocks {
            let _ = writeln!(out, "  {}", block_line(block));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BlockingStatus, LastHour, Port, Scanner, SourceStatus};

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            node: "node-a".into(),
            pid: 4242,
            uptime_seconds: 7985,
            source: SourceStatus {
                name: "pcap".into(),
                health: "ok".into(),
                events_lost: 0,
            },
            blocking: BlockingStatus {
                backend: Some("nftables".into()),
                dry_run: false,
                active: 1,
                pending: 0,
                errors: 0,
                drift_repaired: 1,
                packets_dropped: 1234,
            },
            last_hour: LastHour {
                connections_inbound: 1501,
                connections_outbound: 22,
                port_scans: 4,
                blocks: 1,
            },
            top_scanners: vec![Scanner {
                source: "192.0.2.56".into(),
                scans: 2,
            }],
            top_ports: vec![Port { port: 22, scans: 1 }],
            blocks: vec![BlockInfo {
                target: "192.0.2.56".into(),
                backend: "nftables".into(),
                expires_in_seconds: Some(3412),
                ttl_seconds: Some(7200),
                repeat: 2,
                reason: "port scan 3/60s on ports 80,81,82,83".into(),
                origin: "node-a".into(),
                packets_dropped: 1234,
            }],
        }
    }

    #[test]
    fn the_text_view_to_the_byte() {
        assert_eq!(
            text(&status()),
            "tcpwatch 0.1.0 on node-a (pid 4242), up 2h13m5s\n\
             source: pcap, ok, 0 events lost\n\
             blocking: nftables, 1 block in force, 0 pending, 0 errors, 1 drift repair, 1234 packets dropped\n\
             last hour: 1501 connections inbound and 22 outbound, 4 port scans, 1 block\n\
             top scanners:\n  192.0.2.56 2 scans\n\
             top ports:\n  22 1 scan\n\
             blocks:\n  192.0.2.56 expires in 3412s via nftables; 1234 packets dropped; port scan 3/60s on ports 80,81,82,83 (repeat 2); origin node-a\n"
        );
        let mut quiet = status();
        quiet.blocking.backend = None;
        quiet.top_scanners.clear();
        quiet.top_ports.clear();
        quiet.blocks.clear();
        let text = text(&quiet);
        assert!(text.contains("blocking: off\n"));
        assert!(text.ends_with("top scanners: none\ntop ports: none\nblocks: none\n"));
    }

    #[test]
    fn json_is_one_line_that_reads_back() {
        let line = crate::control::to_line(&status());
        assert_eq!(line.lines().count(), 1);
        let back: Status = serde_json::from_str(&line).unwrap();
        assert_eq!(back, status());
    }
}
