//! Time, injected. Window logic takes a [`Stamp`] and never reads a clock
//! itself, so tests drive it with a [`ManualClock`] instead of sleeping.

use chrono::{DateTime, Local};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When something was observed: the wall time to print and a monotonic
/// reading for windows (wall clocks jump; windows must not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub wall: DateTime<Local>,
    pub mono: Duration,
}

pub trait Clock: Send + Sync {
    fn now(&self) -> Stamp;
}

/// The real clock: local wall time and the time since the agent started.
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Stamp {
        Stamp {
            wall: Local::now(),
            mono: self.start.elapsed(),
        }
    }
}

/// A clock that moves only when told to; for tests.
pub struct ManualClock {
    now: Mutex<Stamp>,
}

impl ManualClock {
    pub fn new(wall: DateTime<Local>) -> Self {
        ManualClock {
            now: Mutex::new(Stamp {
                wall,
                mono: Duration::ZERO,
            }),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        now.mono += by;
        now.wall += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
    }
}

impl ManualClock {
    /// Moves the wall clock only (an operator or NTP stepping it): the
    /// monotonic reading does not change.
    pub fn jump_wall(&self, by: chrono::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        now.wall += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Stamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}
