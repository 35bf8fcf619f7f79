//! Fuzzes DURATION values (`500ms`, `10s`, `5m`, `1h`), read from flags and
//! from the config file.
//!
//! Besides "never panics", it checks:
//!
//! - an accepted text is ASCII digits then one of the four units, and
//!   `format` of the result parses back to the same duration;
//! - `parse_positive` is `parse` minus zero;
//! - errors are one line;
//! - every whole number of milliseconds (the input's first 8 bytes) is
//!   formatted into a text that parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tcpwatch::duration::{format, parse, parse_positive};

fuzz_target!(|data: &[u8]| {
    if let Some(bytes) = data.get(..8) {
        let d = Duration::from_millis(u64::from_le_bytes(bytes.try_into().unwrap()));
        assert_eq!(parse(&format(d)), Ok(d), "{d:?} does not round-trip");
    }
    let text = String::from_utf8_lossy(data);
    let parsed = parse(&text);
    match &parsed {
        Ok(d) => {
            let unit = text.trim_start_matches(|c: char| c.is_ascii_digit());
            assert!(unit.len() < text.len(), "no digits in {text:?}");
            assert!(["ms", "s", "m", "h"].contains(&unit), "unit {unit:?}");
            assert_eq!(parse(&format(*d)).as_ref(), Ok(d));
        }
        Err(e) => assert!(!e.chars().any(char::is_control), "{e:?}"),
    }
    match parse_positive(&text) {
        Ok(d) => assert_eq!(parsed, Ok(d)),
        Err(e) => {
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(parsed.is_err() || parsed == Ok(Duration::ZERO));
        }
    }
});
