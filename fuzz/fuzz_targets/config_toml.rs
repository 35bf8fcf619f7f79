//! Fuzzes the config file reader: `RunSettings::apply_text` (TOML parsed,
//! its keys checked, each value parsed by its setting's type over the
//! defaults), as `--config` runs it.
//!
//! Besides "never panics", it checks:
//!
//! - errors are one line without control characters; a parse error starts
//!   with a line number the text has, a value error with the name of a key
//!   the file set;
//! - a file that applies sets exactly what it says: each duration is
//!   `duration::parse_positive` of its text, numbers and lists are taken
//!   as they are, unset keys keep their defaults;
//! - every scan rule of `scan-rules` is 1 to 65,535 ports over a positive
//!   window and reads back as itself from the form `--help` shows; the
//!   IPv6 prefix length is 32 to 128.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpwatch::block::xdp::MAX_MAP_SIZE;
use tcpwatch::detect::rules::{parse_rule, show_rule, MAX_RULE_PORTS};
use tcpwatch::duration;
use tcpwatch::settings::RunSettings;

fuzz_target!(|data: &[u8]| {
    // The agent reads the file with read_to_string: not UTF-8 is an I/O
    // error before the parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut settings = RunSettings::default();
    match settings.apply_text(text) {
        Ok(()) => {
            let table: toml::Table = toml::from_str(text).expect("it parsed once");
            check_applied(&table, &settings);
        }
        Err(e) => {
            check_message(&e);
            let (head, _) = e.split_once(": ").expect("LINE: reason or KEY: reason");
            match head.parse::<usize>() {
                Ok(line) => {
                    assert!(line >= 1 && line <= text.matches('\n').count() + 1, "{e:?}")
                }
                Err(_) => {
                    let table: toml::Table = toml::from_str(text).expect("a value error");
                    assert!(
                        table.contains_key(head),
                        "error names key {head:?} the file did not set"
                    );
                }
            }
        }
    }
});

fn check_message(e: &str) {
    assert!(
        !e.chars().any(char::is_control),
        "control character in {e:?}"
    );
}

/// The text of a string or integer value.
fn text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_applied(file: &toml::Table, s: &RunSettings) {
    let d = RunSettings::default();
    let dur = |key: &str, default| {
        file.get(key).map_or(default, |v| {
            duration::parse_positive(&text(v)).expect("applied")
        })
    };
    assert_eq!(s.source.interval, dur("interval", d.source.interval));
    assert_eq!(s.scan.scan_window, dur("scan-window", d.scan.scan_window));
    assert_eq!(s.block.block_ttl, dur("block-ttl", d.block.block_ttl));
    assert!(!s.source.interval.is_zero() && !s.scan.scan_window.is_zero());
    assert!(!s.block.block_ttl.is_zero());
    let word = |key: &str, got: String, default: String| {
        assert_eq!(got, file.get(key).map_or(default, text), "{key}");
    };
    word("source", s.source.source.name().into(), d.source.source.name().into());
    word("block", s.block.block.name().into(), d.block.block.name().into());
    let number = |key: &str, got: u64, default: u64| {
        let want = file.get(key).map_or(default, |v| {
            text(v).parse().expect("applied values are numbers")
        });
        assert_eq!(got, want, "{key}");
    };
    number("scan-ports", s.scan.scan_ports as u64, d.scan.scan_ports as u64);
    number(
        "xdp-map-size",
        u64::from(s.block.xdp_map_size.0),
        u64::from(d.block.xdp_map_size.0),
    );
    assert!((1..=MAX_MAP_SIZE).contains(&s.block.xdp_map_size.0));
    let list = |key: &str| file.get(key).and_then(|v| v.as_array()).map(Vec::len);
    assert_eq!(s.block.allow.len(), list("allow").unwrap_or(0), "allow entries lost");
    assert_eq!(s.source.interface.len(), list("interface").unwrap_or(0));
    let switch = |key: &str, got: bool, default: bool| {
        assert_eq!(got, file.get(key).and_then(|v| v.as_bool()).unwrap_or(default), "{key}");
    };
    switch("dry-run", s.block.dry_run, d.block.dry_run);
    switch(
        "report-existing",
        s.source.report_existing,
        d.source.report_existing,
    );
    assert!(s.limits.max_connections.0 >= 1 && s.limits.max_scan_sources.0 >= 1);
    assert_eq!(s.scan.scan_rules.len(), list("scan-rules").unwrap_or(0));
    for rule in &s.scan.scan_rules {
        assert!((1..=MAX_RULE_PORTS).contains(&rule.ports) && !rule.window.is_zero());
        assert_eq!(parse_rule(&show_rule(rule)), Ok(*rule));
    }
    number(
        "ipv6-prefix",
        u64::from(s.scan.ipv6_prefix.0),
        u64::from(d.scan.ipv6_prefix.0),
    );
    assert!((32..=128).contains(&s.scan.ipv6_prefix.0));
    number(
        "max-connections",
        s.limits.max_connections.0 as u64,
        d.limits.max_connections.0 as u64,
    );
}
