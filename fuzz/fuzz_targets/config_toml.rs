//! Fuzzes the config file reader: `FileConfig::parse` (TOML) and
//! `FileConfig::apply` (its values over the defaults), as `--config` runs
//! them.
//!
//! Besides "never panics", it checks:
//!
//! - errors are one line without control characters; a parse error starts
//!   with a line number the text has, an apply error with the name of a
//!   key the file set;
//! - a file that applies sets exactly what it says: each duration is
//!   `duration::parse_positive` of its text, numbers and lists are taken
//!   as they are, unset keys keep their defaults.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpwatch::config::{FileConfig, RunConfig, MAX_XDP_MAP_SIZE};
use tcpwatch::duration;

fuzz_target!(|data: &[u8]| {
    // FileConfig::load reads the file with read_to_string: not UTF-8 is an
    // I/O error before the parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match FileConfig::parse(text) {
        Ok(file) => file,
        Err(e) => {
            check_message(&e);
            let (line, _) = e.split_once(": ").expect("LINE: reason");
            let line: usize = line.parse().expect("a line number");
            assert!(line >= 1 && line <= text.matches('\n').count() + 1, "{e:?}");
            return;
        }
    };
    let mut config = RunConfig::default();
    match FileConfig::parse(text).unwrap().apply(&mut config) {
        Ok(()) => check_applied(&file, &config),
        Err(e) => {
            check_message(&e);
            let (key, _) = e.split_once(": ").expect("KEY: reason");
            assert!(
                was_set(&file, key),
                "error names key {key:?} the file did not set"
            );
        }
    }
});

fn check_message(e: &str) {
    assert!(
        !e.chars().any(char::is_control),
        "control character in {e:?}"
    );
}

fn was_set(file: &FileConfig, key: &str) -> bool {
    match key {
        "interval" => file.interval.is_some(),
        "scan-window" => file.scan_window.is_some(),
        "block-ttl" => file.block_ttl.is_some(),
        "xdp-map-size" => file.xdp_map_size.is_some(),
        "allow" => file.allow.is_some(),
        "metrics-addr" => file.metrics_addr.is_some(),
        "state" => file.state.is_some(),
        "max-connections" => file.max_connections.is_some(),
        "max-scan-sources" => file.max_scan_sources.is_some(),
        "max-blocks-per-minute" => file.max_blocks_per_minute.is_some(),
        _ => false,
    }
}

fn check_applied(file: &FileConfig, config: &RunConfig) {
    let defaults = RunConfig::default();
    let dur = |text: &Option<String>, default| {
        text.as_deref()
            .map_or(default, |t| duration::parse_positive(t).expect("applied"))
    };
    assert_eq!(config.interval, dur(&file.interval, defaults.interval));
    assert_eq!(
        config.scan_window,
        dur(&file.scan_window, defaults.scan_window)
    );
    assert_eq!(config.block_ttl, dur(&file.block_ttl, defaults.block_ttl));
    assert!(!config.interval.is_zero() && !config.scan_window.is_zero());
    assert!(!config.block_ttl.is_zero());
    assert_eq!(config.source, file.source.unwrap_or(defaults.source));
    assert_eq!(config.block, file.block.unwrap_or(defaults.block));
    assert_eq!(
        config.scan_ports,
        file.scan_ports.unwrap_or(defaults.scan_ports)
    );
    assert_eq!(
        config.xdp_map_size,
        file.xdp_map_size.unwrap_or(defaults.xdp_map_size)
    );
    assert!((1..=MAX_XDP_MAP_SIZE).contains(&config.xdp_map_size));
    assert_eq!(
        config.allow.len(),
        file.allow.as_ref().map_or(0, Vec::len),
        "allow entries lost"
    );
    assert_eq!(
        &config.interfaces,
        file.interface.as_ref().unwrap_or(&defaults.interfaces)
    );
    assert_eq!(config.dry_run, file.dry_run.unwrap_or(defaults.dry_run));
    assert_eq!(
        config.report_existing,
        file.report_existing.unwrap_or(defaults.report_existing)
    );
    assert!(config.limits.connections >= 1 && config.limits.scan_sources >= 1);
    assert_eq!(
        config.limits.connections,
        file.max_connections.unwrap_or(defaults.limits.connections)
    );
}
