//! DURATION values as the command line takes them: `500ms`, `10s`, `5m`, `1h`.

use crate::text::printable;
use std::time::Duration;

/// Parses `<digits><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    // The text goes into the errors: a control character in it (a config
    // value can hold any) must not break the one-line message.
    let shown = printable(text);
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{shown}' has no unit (use ms, s, m or h, e.g. 10s)"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("'{shown}' does not start with a number (e.g. 10s)"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{shown}': number too large"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "'{shown}': unknown unit '{}' (use ms, s, m or h)",
                printable(unit)
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("'{shown}': duration too large"))
}

/// Like [`parse`], but zero is refused: for periods and windows.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse(text)? {
        d if d.is_zero() => Err(format!("'{text}' must be greater than zero")),
        d => Ok(d),
    }
}

/// Formats a duration the way the flags take it, in the largest unit that
/// represents it exactly: 3600 s is `1h`, 90 s is `90s`, 1.5 s is `1500ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "10",
            "s",
            "-1s",
            "+1s",
            "1.5s",
            "10 s",
            "10sec",
            "1d",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        // Found by the duration fuzz target: the text, control characters
        // and all, went into the error.
        let err = parse("52m\u{b}\0h").unwrap_err();
        assert_eq!(
            err,
            "'52m\\u{b}\\u{0}h': unknown unit 'm\\u{b}\\u{0}h' (use ms, s, m or h)"
        );
        assert!(parse_positive("0s").is_err());
    }

    #[test]
    fn formats_in_the_form_the_flag_takes() {
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(300)), "5m");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        for text in ["1h", "30s", "5m", "250ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
