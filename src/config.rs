//! The agent's settings: command-line flags over a TOML file over defaults.
//!
//! The file takes the same keys as the long flags (`interval = "5s"`,
//! `scan-ports = 3`, `allow = ["10.0.0.0/8"]`); unknown keys are errors, so a
//! typo never silently runs the agent with a default.

pub use crate::block::limit::Rate;
pub use crate::detect::Limits;
use crate::duration;
use crate::sink::Format;
use anyhow::Context;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Procfs,
    Netlink,
    Pcap,
    Xdp,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Procfs => "procfs",
            SourceKind::Netlink => "netlink",
            SourceKind::Pcap => "pcap",
            SourceKind::Xdp => "xdp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    None,
    Nftables,
    Iptables,
    Xdp,
}

/// Where metrics are served, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Listen::Off);
        }
        text.parse().map(Listen::At).map_err(|_| {
            format!(
                "'{}' is not ADDR:PORT or 'off' (e.g. 127.0.0.1:9472)",
                printable(text)
            )
        })
    }
}

/// `--state`: a path, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePath {
    Off,
    At(PathBuf),
}

impl std::str::FromStr for StatePath {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(StatePath::Off),
            "" => Err("empty path (use a path or 'off')".to_string()),
            path => Ok(StatePath::At(PathBuf::from(path))),
        }
    }
}

pub const DEFAULT_STATE: &str = "/var/lib/tcpwatch/state";

/// The settings of `tcpwatch run`, resolved.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub source: SourceKind,
    pub interval: Duration,
    pub interfaces: Vec<String>,
    pub scan_ports: usize,
    pub scan_window: Duration,
    pub block: BlockKind,
    pub block_ttl: Duration,
    /// `--max-blocks-per-minute`: new blocks in any sliding minute, at most.
    pub max_blocks_per_minute: Rate,
    /// Entries per family in the XDP blocklist maps (`--block xdp`).
    pub xdp_map_size: u32,
    pub allow: Vec<IpNet>,
    pub dry_run: bool,
    pub metrics_addr: Listen,
    pub format: Format,
    pub state: StatePath,
    pub report_existing: bool,
    /// `--max-connections`, `--max-scan-sources`.
    pub limits: Limits,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            source: SourceKind::Procfs,
            interval: Duration::from_secs(10),
            interfaces: Vec::new(),
            scan_ports: 3,
            scan_window: Duration::from_secs(60),
            block: BlockKind::Nftables,
            block_ttl: Duration::from_secs(3600),
            max_blocks_per_minute: Rate::default(),
            xdp_map_size: crate::block::xdp::DEFAULT_MAP_SIZE,
            allow: Vec::new(),
            dry_run: false,
            metrics_addr: Listen::At(SocketAddr::from(([127, 0, 0, 1], 9472))),
            format: Format::Text,
            state: StatePath::At(PathBuf::from(DEFAULT_STATE)),
            report_existing: false,
            limits: Limits::default(),
        }
    }
}

/// A key that takes a number or a word (`max-blocks-per-minute = 60` or
/// `= "off"`); checked by the flag's own parser.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NumberOrText {
    Number(i64),
    Text(String),
}

impl NumberOrText {
    fn parse<T: std::str::FromStr<Err = String>>(&self) -> Result<T, String> {
        match self {
            NumberOrText::Number(n) => n.to_string().parse(),
            NumberOrText::Text(t) => t.parse(),
        }
    }
}

/// The config file: every key optional, the same names as the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub source: Option<SourceKind>,
    pub interval: Option<String>,
    pub interface: Option<Vec<String>>,
    pub scan_ports: Option<usize>,
    pub scan_window: Option<String>,
    pub block: Option<BlockKind>,
    pub block_ttl: Option<String>,
    pub max_blocks_per_minute: Option<NumberOrText>,
    pub xdp_map_size: Option<u32>,
    pub allow: Option<Vec<String>>,
    pub dry_run: Option<bool>,
    pub metrics_addr: Option<String>,
    pub format: Option<Format>,
    pub state: Option<String>,
    pub report_existing: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_scan_sources: Option<usize>,
}

impl FileConfig {
    /// Reads and checks a config file; errors are one line naming the file
    /// and line.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}:{}", path.display(), e))
    }

    /// Parses TOML text; an error reads `LINE: reason`.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            format!(
                "{line}: {}",
                printable(&e.message().trim().replace('\n', " "))
            )
        })
    }

    /// Applies the file's values over `config`; a bad value names its key.
    pub fn apply(self, config: &mut RunConfig) -> Result<(), String> {
        let dur = |key: &str, text: &str| {
            duration::parse_positive(text).map_err(|e| format!("{key}: {e}"))
        };
        if let Some(v) = self.source {
            config.source = v;
        }
        if let Some(v) = self.interval {
            config.interval = dur("interval", &v)?;
        }
        if let Some(v) = self.interface {
            config.interfaces = v;
        }
        if let Some(v) = self.scan_ports {
            config.scan_ports = v;
        }
        if let Some(v) = self.scan_window {
            config.scan_window = dur("scan-window", &v)?;
        }
        if let Some(v) = self.block {
            config.block = v;
        }
        if let Some(v) = self.block_ttl {
            config.block_ttl = dur("block-ttl", &v)?;
        }
        if let Some(v) = self.max_blocks_per_minute {
            config.max_blocks_per_minute = v
                .parse()
                .map_err(|e| format!("max-blocks-per-minute: {e}"))?;
        }
        if let Some(v) = self.xdp_map_size {
            config.xdp_map_size =
                parse_map_size(&v.to_string()).map_err(|e| format!("xdp-map-size: {e}"))?;
        }
        if let Some(v) = self.allow {
            config.allow = v
                .iter()
                .map(|a| parse_allow(a).map_err(|e| format!("allow: {e}")))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = self.dry_run {
            config.dry_run = v;
        }
        if let Some(v) = self.metrics_addr {
            config.metrics_addr = v.parse().map_err(|e| format!("metrics-addr: {e}"))?;
        }
        if let Some(v) = self.format {
            config.format = v;
        }
        if let Some(v) = self.state {
            config.state = v.parse().map_err(|e| format!("state: {e}"))?;
        }
        if let Some(v) = self.report_existing {
            config.report_existing = v;
        }
        if let Some(v) = self.max_connections {
            config.limits.connections = capacity(v).map_err(|e| format!("max-connections: {e}"))?;
        }
        if let Some(v) = self.max_scan_sources {
            config.limits.scan_sources =
                capacity(v).map_err(|e| format!("max-scan-sources: {e}"))?;
        }
        Ok(())
    }
}

/// A table size: at least 1 (a table that holds nothing detects nothing).
pub fn capacity(n: usize) -> Result<usize, String> {
    if n == 0 {
        return Err("must be at least 1".to_string());
    }
    Ok(n)
}

/// `--max-connections` and `--max-scan-sources` on the command line.
pub fn parse_capacity(text: &str) -> Result<usize, String> {
    let n = text
        .parse::<usize>()
        .map_err(|_| format!("'{}' is not a whole number", printable(text)))?;
    capacity(n)
}

/// The largest `--xdp-map-size`: 16 Mi entries per family (an IPv6 entry
/// costs ~100 bytes of kernel memory, preallocated).
pub const MAX_XDP_MAP_SIZE: u32 = 1 << 24;

/// `--xdp-map-size`: entries per family, 1 ..= 16777216.
pub fn parse_map_size(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_XDP_MAP_SIZE).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{}' is not a map size (a whole number from 1 to {MAX_XDP_MAP_SIZE})",
            printable(text)
        )),
    }
}

/// `--allow` takes an address or a CIDR block.
pub fn parse_allow(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{}' is not an IP address or CIDR block", printable(text)))
}

/// Outside text (a value, a key) as it goes into a one-line error: control
/// characters escaped (`\n`, `\u{1b}`), so a newline or a terminal escape
/// sequence in a config value cannot break the line or the terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_match_the_flags() {
        let file = FileConfig::parse(
            "source = \"procfs\"\ninterval = \"5s\"\nscan-ports = 5\nscan-window = \"2m\"\nallow = [\"10.0.0.0/8\", \"192.0.2.1\"]\nmetrics-addr = \"off\"\nstate = \"off\"\nformat = \"json\"\nreport-existing = true\n",
        )
        .unwrap();
        let mut config = RunConfig::default();
        file.apply(&mut config).unwrap();
        assert_eq!(config.interval, Duration::from_secs(5));
        assert_eq!(config.scan_ports, 5);
        assert_eq!(config.scan_window, Duration::from_secs(120));
        assert_eq!(config.allow.len(), 2);
        assert_eq!(config.metrics_addr, Listen::Off);
        assert_eq!(config.state, StatePath::Off);
        assert_eq!(config.format, Format::Json);
        assert!(config.report_existing);
    }

    #[test]
    fn table_caps_have_defaults_keys_and_a_floor() {
        let mut config = RunConfig::default();
        assert_eq!(config.limits.connections, 262_144);
        assert_eq!(config.limits.scan_sources, 65_536);
        FileConfig::parse("max-connections = 1000\nmax-scan-sources = 50\n")
            .unwrap()
            .apply(&mut config)
            .unwrap();
        assert_eq!(
            (config.limits.connections, config.limits.scan_sources),
            (1000, 50)
        );
        let zero = FileConfig::parse("max-scan-sources = 0\n").unwrap();
        let err = zero.apply(&mut config).unwrap_err();
        assert!(err.starts_with("max-scan-sources: "), "{err}");
        assert!(parse_capacity("0").is_err());
        assert!(parse_capacity("-1").is_err());
        assert_eq!(parse_capacity("4096"), Ok(4096));
    }

    #[test]
    fn max_blocks_per_minute_takes_a_number_or_off_from_the_file() {
        let mut config = RunConfig::default();
        assert_eq!(config.max_blocks_per_minute, Rate(Some(60)));
        for (text, want) in [
            ("max-blocks-per-minute = 5\n", Rate(Some(5))),
            ("max-blocks-per-minute = \"off\"\n", Rate(None)),
            ("max-blocks-per-minute = \"7\"\n", Rate(Some(7))),
        ] {
            FileConfig::parse(text).unwrap().apply(&mut config).unwrap();
            assert_eq!(config.max_blocks_per_minute, want, "{text}");
        }
        for bad in ["0", "-2", "\"never\""] {
            let err = FileConfig::parse(&format!("max-blocks-per-minute = {bad}\n"))
                .unwrap()
                .apply(&mut config)
                .unwrap_err();
            assert!(err.starts_with("max-blocks-per-minute: "), "{err}");
        }
        assert!(FileConfig::parse("max-blocks-per-minute = 1.5\n").is_err());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = FileConfig::parse("interval = \"5s\"\nscan-prots = 5\n").unwrap_err();
        assert!(err.starts_with("2: "), "{err}");
        assert!(err.contains("scan-prots"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn control_characters_in_the_file_are_escaped_in_errors() {
        // Found by the config_toml fuzz target: TOML escapes put any
        // character in a key or value, and errors echo them.
        let err = FileConfig::parse("\"scan\\u001b[2K\" = 1\n").unwrap_err();
        assert!(err.contains("scan\\u{1b}[2K"), "{err}");
        let file = FileConfig::parse("scan-window = \"60\\t\\r\\n\"\n").unwrap();
        let err = file.apply(&mut RunConfig::default()).unwrap_err();
        assert!(err.starts_with("scan-window: '60\\t\\r\\n'"), "{err}");
        for bad in ["allow = [\"\\u0007\"]", "metrics-addr = \"\\n\""] {
            let err = FileConfig::parse(bad)
                .unwrap()
                .apply(&mut RunConfig::default());
            assert!(!err.unwrap_err().chars().any(char::is_control), "{bad}");
        }
    }

    #[test]
    fn bad_value_names_its_key() {
        let file = FileConfig::parse("interval = \"soon\"\n").unwrap();
        let err = file.apply(&mut RunConfig::default()).unwrap_err();
        assert!(err.starts_with("interval: "), "{err}");
    }

    #[test]
    fn xdp_map_size_is_bounded_and_read_from_the_file() {
        assert_eq!(parse_map_size("1"), Ok(1));
        assert_eq!(parse_map_size("16777216"), Ok(MAX_XDP_MAP_SIZE));
        for bad in ["0", "16777217", "-3", "x", ""] {
            assert!(parse_map_size(bad).is_err(), "{bad}");
        }
        let mut config = RunConfig::default();
        assert_eq!(config.xdp_map_size, 131_072);
        FileConfig::parse("xdp-map-size = 4096")
            .unwrap()
            .apply(&mut config)
            .unwrap();
        assert_eq!(config.xdp_map_size, 4096);
        let err = FileConfig::parse("xdp-map-size = 0")
            .unwrap()
            .apply(&mut config)
            .unwrap_err();
        assert!(err.starts_with("xdp-map-size: "), "{err}");
    }

    #[test]
    fn allow_takes_addresses_and_blocks() {
        assert_eq!(
            parse_allow("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            parse_allow("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(parse_allow("example.com").is_err());
    }
}
