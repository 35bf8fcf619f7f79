//! `--max-blocks-per-minute`: at most N new blocks in any sliding minute.
//!
//! A SYN's source address can be forged, so a real-time source can be fed
//! "scans" from any address an attacker picks. The cap bounds what such an
//! attacker gets: at most N third-party addresses blocked a minute, and at
//! most about N × (TTL in minutes) entries in the blocklist. Times are the
//! monotonic side of [`crate::clock::Stamp`], so tests drive the window with
//! a manual clock and a wall-clock jump cannot reset it.

use std::collections::VecDeque;
use std::time::Duration;

/// The sliding window of the cap.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The default cap. Real scanners of one host come a few a minute even on
/// an internet-facing address; 60 leaves room for a burst and, at the
/// default TTL of 1 h, bounds the blocklist to about 3,600 addresses.
pub const DEFAULT: u32 = 60;

/// `--max-blocks-per-minute`: a cap, or `off` (no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<u32>);

impl Default for Rate {
    fn default() -> Self {
        Rate(Some(DEFAULT))
    }
}

impl crate::setting::Value for Rate {
    const TOML: crate::setting::Toml = crate::setting::Toml::IntegerOrString;
    fn parse(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Rate(None));
        }
        match text.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Rate(Some(n))),
            // 0 would block nothing: that is `--block none`, said plainly.
            _ => Err(format!(
                "'{}' is not a block limit (a whole number of at least 1, or 'off')",
                crate::text::printable(text)
            )),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "off"),
        }
    }
}

/// What the cap says about one new block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    /// Over the cap; `warn` is true for the first skip of each minute, so
    /// the warning is one stderr line a minute at most.
    Skipped {
        warn: bool,
    },
}

/// The budget of new blocks.
#[derive(Debug)]
pub struct Limit {
    rate: Rate,
    /// Monotonic times of the blocks granted in the last [`WINDOW`], oldest
    /// first; at most `rate` of them.
    granted: VecDeque<Duration>,
    warned_at: Option<Duration>,
    skipped: u64,
}

impl Limit {
    pub fn new(rate: Rate) -> Self {
        Limit {
            rate,
            granted: VecDeque::new(),
            warned_at: None,
            skipped: 0,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// A new cap (SIGHUP); the blocks of the last minute still count.
    pub fn set_rate(&mut self, rate: Rate) {
        self.rate = rate;
    }

    /// Asks for one new block at monotonic time `now`.
    pub fn take(&mut self, now: Duration) -> Verdict {
        let Some(max) = self.rate.0 else {
            return Verdict::Granted;
        };
        while self
            .granted
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= WINDOW)
        {
            self.granted.pop_front();
        }
        if self.granted.len() < max as usize {
            self.granted.push_back(now);
            return Verdict::Granted;
        }
        self.skipped += 1;
        let warn = self
            .warned_at
            .is_none_or(|at| now.saturating_sub(at) >= WINDOW);
        if warn {
            self.warned_at = Some(now);
        }
        Verdict::Skipped { warn }
    }

    /// Blocks skipped since the start.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setting::Value;

    const SKIP: Verdict = Verdict::Skipped { warn: false };
    const WARN: Verdict = Verdict::Skipped { warn: true };

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn rate_parses_numbers_and_off_and_rejects_zero() {
        assert_eq!(Rate::parse("60"), Ok(Rate(Some(60))));
        assert_eq!(Rate::parse("1"), Ok(Rate(Some(1))));
        assert_eq!(Rate::parse("off"), Ok(Rate(None)));
        for bad in ["0", "-1", "", "1.5", "many", "4294967296"] {
            let err = Rate::parse(bad).unwrap_err();
            assert!(err.contains("at least 1, or 'off'"), "{bad}: {err}");
        }
        assert_eq!(Rate::default(), Rate(Some(60)));
        assert_eq!(Rate(None).to_string(), "off");
    }

    #[test]
    fn n_pass_then_skips_until_the_window_slides() {
        let mut l = Limit::new(Rate(Some(3)));
        assert_eq!(l.take(s(0)), Verdict::Granted);
        assert_eq!(l.take(s(10)), Verdict::Granted);
        assert_eq!(l.take(s(20)), Verdict::Granted);
        assert_eq!(l.take(s(21)), WARN);
        assert_eq!(l.take(s(59)), SKIP);
        // 60 s after the first grant, its slot is free again; only one.
        assert_eq!(l.take(s(60)), Verdict::Granted);
        assert_eq!(l.take(s(60)), SKIP);
        assert_eq!(l.take(s(69)), SKIP);
        assert_eq!(l.take(s(70)), Verdict::Granted);
        assert_eq!(l.skipped(), 4);
    }

    #[test]
    fn one_warning_a_minute() {
        let mut l = Limit::new(Rate(Some(1)));
        assert_eq!(l.take(s(0)), Verdict::Granted);
        let mut warnings = Vec::new();
        // A skip every 5 s for three minutes, the budget taken each minute.
        for t in (1..180).step_by(5) {
            match l.take(s(t)) {
                Verdict::Skipped { warn: true } => warnings.push(t),
                Verdict::Skipped { warn: false } => {}
                Verdict::Granted => assert_eq!(t % 60, 1, "granted at {t}"),
            }
        }
        assert_eq!(warnings, [1, 66, 126]);
    }

    #[test]
    fn off_never_skips_and_a_new_rate_applies_at_once() {
        let mut l = Limit::new(Rate(None));
        for t in 0..1000 {
            assert_eq!(l.take(Duration::from_millis(t)), Verdict::Granted);
        }
        let mut l = Limit::new(Rate(Some(2)));
        assert_eq!(l.take(s(0)), Verdict::Granted);
        assert_eq!(l.take(s(0)), Verdict::Granted);
        assert_eq!(l.take(s(1)), WARN);
        l.set_rate(Rate(Some(3)));
        assert_eq!(l.take(s(2)), Verdict::Granted);
    }
}
