//! The values of the scan settings: a rule (`--scan-rule 10/1h`) and an
//! IPv6 prefix length (`--ipv6-prefix 64`), each parsed the same way from
//! its flag and from the config file, with a one-line error.

use crate::event::Rule;
use crate::setting::{Toml, Value};
use crate::text::printable;
use std::time::Duration;

/// The most ports a rule may count: a protocol has 65,536, and a rule over
/// more than there are could never trip.
pub const MAX_RULE_PORTS: usize = 65_535;

/// Parses `N/DURATION` (`10/1h`, `4/5m`): more than N distinct ports within
/// DURATION. N is at least 1 (a rule of 0 ports would report every
/// connection) and at most [`MAX_RULE_PORTS`]; DURATION is positive.
pub fn parse_rule(text: &str) -> Result<Rule, String> {
    let shown = printable(text);
    let Some((n, window)) = text.split_once('/') else {
        return Err(format!("'{shown}' is not N/DURATION (e.g. 10/1h)"));
    };
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{shown}': '{}' is not a whole number of ports",
            printable(n)
        ));
    }
    let ports = match n.parse::<usize>() {
        Ok(0) => return Err(format!("'{shown}': the number of ports must be at least 1")),
        Ok(p) if p <= MAX_RULE_PORTS => p,
        _ => {
            return Err(format!(
                "'{shown}': the number of ports must be at most {MAX_RULE_PORTS}"
            ))
        }
    };
    let window = crate::duration::parse_positive(window).map_err(|e| format!("'{shown}': {e}"))?;
    Ok(Rule { ports, window })
}

/// A rule as the flag takes it: `10/1h`.
pub fn show_rule(rule: &Rule) -> String {
    format!("{}/{}", rule.ports, crate::duration::format(rule.window))
}

impl Value for Rule {
    fn parse(text: &str) -> Result<Self, String> {
        parse_rule(text)
    }
    fn show(&self) -> String {
        show_rule(self)
    }
}

/// The length of the IPv6 prefix a source is counted (and blocked) by:
/// 32 to 128, where 128 is one address. Shorter than /32 would lump whole
/// providers together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLen(pub u8);

/// The shortest prefix `--ipv6-prefix` takes.
pub const MIN_IPV6_PREFIX: u8 = 32;

impl Value for PrefixLen {
    const TOML: Toml = Toml::Integer;
    fn parse(text: &str) -> Result<Self, String> {
        match text.parse::<u8>() {
            Ok(len) if (MIN_IPV6_PREFIX..=128).contains(&len) => Ok(PrefixLen(len)),
            _ => Err(format!(
                "'{}' is not a prefix length from {MIN_IPV6_PREFIX} to 128",
                printable(text)
            )),
        }
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

/// Every rule in force, the main one (`--scan-ports`/`--scan-window`)
/// first, then the `--scan-rule`s in the order given: a source is reported
/// by the first that trips, and when several trip on the same probe, by the
/// first of this list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    list: Vec<Rule>,
    /// The longest window: how long ports are kept and an episode lasts.
    longest: Duration,
    /// The most ports a rule counts: a source keeps at most one more than
    /// this per protocol.
    most: usize,
}

impl Rules {
    /// The main rule and the extra ones.
    pub fn new(main: Rule, extra: &[Rule]) -> Self {
        let mut list = Vec::with_capacity(1 + extra.len());
        list.push(main);
        for rule in extra {
            if !list.contains(rule) {
                list.push(*rule);
            }
        }
        let longest = list.iter().map(|r| r.window).max().unwrap_or_default();
        let most = list.iter().map(|r| r.ports).max().unwrap_or_default();
        Rules {
            list,
            longest,
            most,
        }
    }

    /// Only the main rule.
    pub fn one(main: Rule) -> Self {
        Rules::new(main, &[])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.list.iter()
    }

    pub fn longest(&self) -> Duration {
        self.longest
    }

    pub fn most_ports(&self) -> usize {
        self.most
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(ports: usize, secs: u64) -> Rule {
        Rule {
            ports,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn rules_parse_and_show_as_the_flag_takes_them() {
        assert_eq!(parse_rule("10/1h"), Ok(rule(10, 3600)));
        assert_eq!(parse_rule("4/5m"), Ok(rule(4, 300)));
        assert_eq!(parse_rule("3/60s"), Ok(rule(3, 60)));
        assert_eq!(show_rule(&rule(10, 3600)), "10/1h");
        assert_eq!(show_rule(&rule(3, 60)), "3/1m");
        for r in [rule(1, 1), rule(65_535, 86_400), rule(7, 90)] {
            assert_eq!(parse_rule(&show_rule(&r)), Ok(r));
            // The form events print (`10/3600s`) parses too.
            assert_eq!(parse_rule(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn bad_rules_are_one_line_naming_what_is_wrong() {
        let cases = [
            ("10", "'10' is not N/DURATION (e.g. 10/1h)"),
            ("", "'' is not N/DURATION (e.g. 10/1h)"),
            ("x/1h", "'x/1h': 'x' is not a whole number of ports"),
            ("+3/1h", "'+3/1h': '+3' is not a whole number of ports"),
            ("/1h", "'/1h': '' is not a whole number of ports"),
            ("0/1h", "'0/1h': the number of ports must be at least 1"),
            (
                "65536/1h",
                "'65536/1h': the number of ports must be at most 65535",
            ),
            (
                "99999999999999999999999/1h",
                "'99999999999999999999999/1h': the number of ports must be at most 65535",
            ),
            ("10/0s", "'10/0s': '0s' must be greater than zero"),
            (
                "10/1h/2",
                "'10/1h/2': '1h/2': unknown unit 'h/2' (use ms, s, m or h)",
            ),
            (
                "3/\n",
                "'3/\\n': '\\n' does not start with a number (e.g. 10s)",
            ),
        ];
        for (text, want) in cases {
            let err = parse_rule(text).unwrap_err();
            assert_eq!(err, want, "{text:?}");
            assert!(!err.chars().any(char::is_control));
        }
    }

    #[test]
    fn prefix_lengths_from_32_to_128() {
        assert_eq!(PrefixLen::parse("64"), Ok(PrefixLen(64)));
        assert_eq!(PrefixLen::parse("128"), Ok(PrefixLen(128)));
        assert_eq!(PrefixLen::parse("32"), Ok(PrefixLen(32)));
        for bad in ["31", "129", "0", "-1", "/64", "", "x"] {
            let err = PrefixLen::parse(bad).unwrap_err();
            assert!(
                err.contains("is not a prefix length from 32 to 128"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_main_rule_comes_first_and_bounds_are_over_all() {
        let rules = Rules::new(rule(3, 60), &[rule(10, 3600), rule(3, 60), rule(20, 10)]);
        let list: Vec<Rule> = rules.iter().copied().collect();
        assert_eq!(
            list,
            [rule(3, 60), rule(10, 3600), rule(20, 10)],
            "duplicate dropped"
        );
        assert_eq!(rules.longest(), Duration::from_secs(3600));
        assert_eq!(rules.most_ports(), 20);
    }
}
