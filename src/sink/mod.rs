//! Sinks: where events go. `text` and `json` format them for stdout.

pub mod json;
pub mod text;

use crate::event::Event;
use std::io::Write;

/// The `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}
crate::value_enum!(Format);

crate::settings! {
    /// How events are written on stdout.
    pub struct Settings {
        /// Format of the events on stdout
        format: Format = Format::Text => "format", "", restart;
    }
}

impl Format {
    pub fn line(self, event: &Event) -> String {
        match self {
            Format::Text => text::line(event),
            Format::Json => json::line(event),
        }
    }
}

/// Writes one event a line. Lines are gathered and written with one call a
/// batch ([`LineSink::flush`]): under a SYN flood a write per line costs
/// more than making the line. A batch is flushed as soon as it is written,
/// so a pipe sees every event at once (stdout is block-buffered when it is
/// not a terminal).
pub struct LineSink<W: Write> {
    out: W,
    format: Format,
    pending: String,
}

impl<W: Write> LineSink<W> {
    pub fn new(out: W, format: Format) -> Self {
        LineSink {
            out,
            format,
            pending: String::new(),
        }
    }

    /// Adds one event's line to the batch.
    pub fn write(&mut self, event: &Event) {
        self.pending.push_str(&self.format.line(event));
        self.pending.push('\n');
    }

    /// Writes the batch out.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let written = self.out.write_all(self.pending.as_bytes());
        self.pending.clear();
        written?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::event::{Block, EventKind};

    /// Counts the writes it is given.
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn blocked(ip: &str) -> Event {
        Event {
            at: Stamp {
                wall: chrono::Local::now(),
                mono: std::time::Duration::ZERO,
            },
            kind: EventKind::Blocked(Block::here(
                ip.parse().unwrap(),
                std::time::Duration::from_secs(30),
                "nftables",
                "node-a",
            )),
        }
    }

    #[test]
    fn a_batch_is_one_write_of_whole_lines() {
        let mut sink = LineSink::new(Calls(Vec::new()), Format::Text);
        sink.write(&blocked("192.0.2.1"));
        sink.write(&blocked("192.0.2.2"));
        assert!(sink.out.0.is_empty(), "nothing written before the flush");
        sink.flush().unwrap();
        assert_eq!(sink.out.0.len(), 1);
        let text = String::from_utf8(sink.out.0[0].clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with(": Blocked 192.0.2.2 for 30s via nftables"));
        assert!(text.ends_with('\n'));
        sink.flush().unwrap();
        assert_eq!(sink.out.0.len(), 1, "an empty batch writes nothing");
    }
}
