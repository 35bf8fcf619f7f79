//! Sinks: where events go. `text` and `json` format them for stdout.

pub mod json;
pub mod text;

use crate::event::Event;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn line(self, event: &Event) -> String {
        match self {
            Format::Text => text::line(event),
            Format::Json => json::line(event),
        }
    }
}

/// Writes one event a line and flushes each, so a pipe sees every event at
/// once (stdout is block-buffered when it is not a terminal).
pub struct LineSink<W: Write> {
    out: W,
    format: Format,
}

impl<W: Write> LineSink<W> {
    pub fn new(out: W, format: Format) -> Self {
        LineSink { out, format }
    }

    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        let mut line = self.format.line(event);
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.out.flush()
    }
}
