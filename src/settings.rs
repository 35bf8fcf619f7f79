//! The settings of `tcpwatch run`: every stage's group together, resolved
//! as defaults, then the `--config` file over them, then the command-line
//! flags over both. The file takes the same keys as the long flags
//! (`interval = "5s"`, `scan-ports = 3`, `allow = ["10.0.0.0/8"]`); unknown
//! keys are errors, so a typo never silently runs the agent with a default.
//!
//! Each group is declared once, beside the code that uses it (see
//! [`crate::setting`]); this module only lists the groups.

use crate::setting::{File, FileError, Flags, Group};
use crate::{block, control, detect, metrics, sink, source, state};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Calls `$apply!(field, Type)` for every group of [`RunSettings`], in the
/// order of `--help`: the one list of groups.
macro_rules! groups {
    ($apply:ident) => {
        $apply!(source, source::Settings);
        $apply!(scan, detect::ScanSettings);
        $apply!(limits, detect::Limits);
        $apply!(block, block::Settings);
        $apply!(sink, sink::Settings);
        $apply!(metrics, metrics::Settings);
        $apply!(state, state::Settings);
        $apply!(control, control::Settings);
    };
}

/// The settings of `tcpwatch run`, resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSettings {
    pub source: source::Settings,
    pub scan: detect::ScanSettings,
    pub limits: detect::Limits,
    pub block: block::Settings,
    pub sink: sink::Settings,
    pub metrics: metrics::Settings,
    pub state: state::Settings,
    pub control: control::Settings,
}

/// The flags of `tcpwatch run`: every group's, and `--config`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunFlags {
    #[command(flatten)]
    source: Flags<source::Settings>,
    #[command(flatten)]
    scan: Flags<detect::ScanSettings>,
    #[command(flatten)]
    limits: Flags<detect::Limits>,
    #[command(flatten)]
    block: Flags<block::Settings>,
    #[command(flatten)]
    sink: Flags<sink::Settings>,
    #[command(flatten)]
    metrics: Flags<metrics::Settings>,
    #[command(flatten)]
    state: Flags<state::Settings>,
    #[command(flatten)]
    control: Flags<control::Settings>,
    /// TOML file with the same keys as the long flags (flags win)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl RunFlags {
    /// Flags over the config file over the defaults. Errors are one line:
    /// `FILE:LINE: reason` for a file that does not parse, `FILE: key:
    /// reason` for a bad value.
    pub fn resolve(&self) -> anyhow::Result<RunSettings> {
        let mut settings = RunSettings::default();
        if let Some(path) = &self.config {
            settings.apply_file(path)?;
        }
        macro_rules! flags {
            ($field:ident, $ty:ty) => {
                self.$field.apply(&mut settings.$field);
            };
        }
        groups!(flags);
        Ok(settings)
    }
}

impl RunSettings {
    /// Every config-file key, in the order of `--help`.
    pub fn keys() -> Vec<&'static str> {
        let mut keys = Vec::new();
        macro_rules! keys {
            ($field:ident, $ty:ty) => {
                keys.extend_from_slice(<$ty as Group>::KEYS);
            };
        }
        groups!(keys);
        keys
    }

    /// Applies the values of a config file's text over these settings: an
    /// error reads `LINE: reason` when the text does not parse, `key:
    /// reason` for a bad value.
    pub fn apply_text(&mut self, text: &str) -> Result<(), String> {
        self.apply_file_text(text).map_err(|e| e.to_string())
    }

    fn apply_file_text(&mut self, text: &str) -> Result<(), FileError> {
        let mut file = File::parse(text, &Self::keys())?;
        macro_rules! file {
            ($field:ident, $ty:ty) => {
                self.$field.apply_file(&mut file)?;
            };
        }
        groups!(file);
        Ok(())
    }

    fn apply_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        self.apply_file_text(&text)
            .map_err(|e| anyhow::anyhow!(e.in_file(path)))
    }

    /// Takes what SIGHUP changes in a running agent from `new` and returns
    /// the names of the settings that differ but need a restart.
    pub fn reload(&mut self, new: &RunSettings) -> Vec<&'static str> {
        let mut fixed = Vec::new();
        macro_rules! reload {
            ($field:ident, $ty:ty) => {
                fixed.extend(self.$field.reload(&new.$field));
            };
        }
        groups!(reload);
        fixed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Listen;
    use crate::setting::Capacity;
    use crate::sink::Format;
    use crate::state::StatePath;
    use std::time::Duration;

    fn file(text: &str) -> Result<RunSettings, String> {
        let mut settings = RunSettings::default();
        settings.apply_text(text)?;
        Ok(settings)
    }

    #[test]
    fn file_keys_match_the_flags() {
        let s = file(
            "source = \"procfs\"\ninterval = \"5s\"\nscan-ports = 5\nscan-window = \"2m\"\nallow = [\"10.0.0.0/8\", \"192.0.2.1\"]\nmetrics-addr = \"off\"\nstate = \"off\"\nformat = \"json\"\nreport-existing = true\n",
        )
        .unwrap();
        assert_eq!(s.source.interval, Duration::from_secs(5));
        assert_eq!(s.scan.scan_ports, 5);
        assert_eq!(s.scan.scan_window, Duration::from_secs(120));
        assert_eq!(s.block.allow.len(), 2);
        assert_eq!(s.metrics.metrics_addr, Listen::Off);
        assert_eq!(s.state.state, StatePath::Off);
        assert_eq!(s.sink.format, Format::Json);
        assert!(s.source.report_existing);
        // Every flag of `run` but --config is a key, and nothing else is;
        // a repeatable flag named in the singular may have its key in the
        // plural (`--scan-rule`, `scan-rules`).
        let command = <RunFlags as clap::Args>::augment_args(clap::Command::new("run"));
        let mut flags: Vec<&str> = command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config")
            .map(|l| if l == "scan-rule" { "scan-rules" } else { l })
            .collect();
        let mut keys = RunSettings::keys();
        flags.sort_unstable();
        keys.sort_unstable();
        assert_eq!(flags, keys);
    }

    #[test]
    fn table_caps_have_defaults_keys_and_a_floor() {
        let s = RunSettings::default();
        assert_eq!(s.limits.max_connections, Capacity(262_144));
        assert_eq!(s.limits.max_scan_sources, Capacity(65_536));
        let s = file("max-connections = 1000\nmax-scan-sources = 50\n").unwrap();
        assert_eq!(
            (s.limits.max_connections, s.limits.max_scan_sources),
            (Capacity(1000), Capacity(50))
        );
        let err = file("max-scan-sources = 0\n").unwrap_err();
        assert!(err.starts_with("max-scan-sources: "), "{err}");
        assert!(<Capacity as crate::setting::Value>::parse("0").is_err());
        assert!(<Capacity as crate::setting::Value>::parse("-1").is_err());
        assert_eq!(
            <Capacity as crate::setting::Value>::parse("4096"),
            Ok(Capacity(4096))
        );
    }

    #[test]
    fn max_blocks_per_minute_takes_a_number_or_off_from_the_file() {
        use crate::block::limit::Rate;
        assert_eq!(
            RunSettings::default().block.max_blocks_per_minute,
            Rate(Some(60))
        );
        for (text, want) in [
            ("max-blocks-per-minute = 5\n", Rate(Some(5))),
            ("max-blocks-per-minute = \"off\"\n", Rate(None)),
            ("max-blocks-per-minute = \"7\"\n", Rate(Some(7))),
        ] {
            assert_eq!(
                file(text).unwrap().block.max_blocks_per_minute,
                want,
                "{text}"
            );
        }
        for bad in ["0", "-2", "\"never\""] {
            let err = file(&format!("max-blocks-per-minute = {bad}\n")).unwrap_err();
            assert!(err.starts_with("max-blocks-per-minute: "), "{err}");
        }
        let err = file("max-blocks-per-minute = 1.5\n").unwrap_err();
        assert!(err.starts_with("1: invalid type"), "{err}");
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = file("interval = \"5s\"\nscan-prots = 5\n").unwrap_err();
        assert!(err.starts_with("2: "), "{err}");
        assert!(err.contains("scan-prots"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn control_characters_in_the_file_are_escaped_in_errors() {
        // Found by the config_toml fuzz target: TOML escapes put any
        // character in a key or value, and errors echo them.
        let err = file("\"scan\\u001b[2K\" = 1\n").unwrap_err();
        assert!(err.contains("scan\\u{1b}[2K"), "{err}");
        let err = file("scan-window = \"60\\t\\r\\n\"\n").unwrap_err();
        assert!(err.starts_with("scan-window: '60\\t\\r\\n'"), "{err}");
        for bad in ["allow = [\"\\u0007\"]", "metrics-addr = \"\\n\""] {
            let err = file(bad).unwrap_err();
            assert!(!err.chars().any(char::is_control), "{bad}");
        }
    }

    #[test]
    fn bad_value_names_its_key_and_a_bad_type_its_line() {
        let err = file("interval = \"soon\"\n").unwrap_err();
        assert!(err.starts_with("interval: "), "{err}");
        let err = file("interval = \"5s\"\nscan-ports = \"three\"\n").unwrap_err();
        assert!(
            err.starts_with("2: invalid type: string \"three\""),
            "{err}"
        );
    }

    #[test]
    fn xdp_map_size_is_bounded_and_read_from_the_file() {
        use crate::block::xdp::{MapSize, MAX_MAP_SIZE};
        use crate::setting::Value;
        assert_eq!(MapSize::parse("1"), Ok(MapSize(1)));
        assert_eq!(MapSize::parse("16777216"), Ok(MapSize(MAX_MAP_SIZE)));
        for bad in ["0", "16777217", "-3", "x", ""] {
            assert!(MapSize::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RunSettings::default().block.xdp_map_size, MapSize(131_072));
        assert_eq!(
            file("xdp-map-size = 4096").unwrap().block.xdp_map_size,
            MapSize(4096)
        );
        let err = file("xdp-map-size = 0").unwrap_err();
        assert!(err.starts_with("xdp-map-size: "), "{err}");
    }

    #[test]
    fn allow_takes_addresses_and_blocks() {
        use crate::setting::Value;
        use ipnet::IpNet;
        assert_eq!(
            IpNet::parse("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            IpNet::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(IpNet::parse("example.com").is_err());
    }

    #[test]
    fn a_reload_changes_the_live_settings_and_names_the_others() {
        let mut running = RunSettings::default();
        let new = file(
            "scan-ports = 9\nblock-ttl = \"5m\"\nallow = [\"10.0.0.0/8\"]\nmax-blocks-per-minute = \"off\"\ninterval = \"1s\"\nformat = \"json\"\nmax-connections = 7\n",
        )
        .unwrap();
        let fixed = running.reload(&new);
        assert_eq!(fixed, ["interval", "max-connections", "format"]);
        assert_eq!(running.scan.scan_ports, 9);
        assert_eq!(running.block.block_ttl, Duration::from_secs(300));
        assert_eq!(running.block.allow.len(), 1);
        assert_eq!(running.block.max_blocks_per_minute.0, None);
        assert_eq!(running.source.interval, Duration::from_secs(10), "kept");
        assert_eq!(running.sink.format, Format::Text, "kept");
    }
}
