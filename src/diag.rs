//! Diagnostics: every line the agent writes on stderr goes through here.
//! stdout carries events only.
//!
//! Three kinds of line, each with its fixed prefix:
//! - [`note`]: `tcpwatch: …`, a fact for the operator (readiness, recovery);
//! - [`warn`]: `tcpwatch: warning: …`, something is wrong and the agent goes
//!   on;
//! - [`error`]: `tcpwatch: error: …`, the one line before a non-zero exit.
//!
//! A fault that lasts (a firewall failing, a file unreadable) is said once
//! when it begins and once when it ends: [`Fault`] holds that state. Error
//! chains are folded onto the line with [`crate::text::chain`].
//!
//! Tests can [`capture`] the lines instead of printing them.

use std::fmt::Display;
use std::io::Write;
use std::sync::Mutex;

/// Lines captured instead of printed, while a [`Capture`] lives.
static CAPTURED: Mutex<Option<Vec<String>>> = Mutex::new(None);

fn emit(line: String) {
    let mut captured = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lines) = captured.as_mut() {
        lines.push(line);
        return;
    }
    drop(captured);
    // One write per line, so lines of concurrent tasks never interleave.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// `TCPWATCH_HOPS=1` (benchmarks only): the block stage says, for each
/// scan it blocks, how long each hop of the userspace path took, from the
/// read of the threshold probe to the firewall's commit: `tcpwatch: hops:
/// ...`. The stages note their moments here; off, each costs one load.
pub mod hops {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    static ON: OnceLock<bool> = OnceLock::new();
    static DETECTED: Mutex<Option<HashMap<IpAddr, Instant>>> = Mutex::new(None);
    static COMMIT_NS: AtomicU64 = AtomicU64::new(0);

    pub fn on() -> bool {
        *ON.get_or_init(|| std::env::var_os("TCPWATCH_HOPS").is_some_and(|v| v == "1"))
    }

    /// The detector reported `scanner` now.
    pub fn detected(scanner: IpAddr) {
        let mut map = DETECTED.lock().unwrap_or_else(|e| e.into_inner());
        let map = map.get_or_insert_with(HashMap::new);
        if map.len() > 1024 {
            map.clear();
        }
        map.insert(scanner, Instant::now());
    }

    /// When the detector reported `scanner`, once.
    pub fn take_detected(scanner: IpAddr) -> Option<Instant> {
        let mut map = DETECTED.lock().unwrap_or_else(|e| e.into_inner());
        map.as_mut()?.remove(&scanner)
    }

    /// The last firewall commit took `took`.
    pub fn committed(took: Duration) {
        COMMIT_NS.store(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How long the last firewall commit took.
    pub fn last_commit() -> Duration {
        Duration::from_nanos(COMMIT_NS.load(Ordering::Relaxed))
    }

    static ALLOW_NS: AtomicU64 = AtomicU64::new(0);

    /// The last re-read of the allowlist (the host's addresses and
    /// gateways) took `took`.
    pub fn allow_read(took: Duration) {
        ALLOW_NS.store(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How long the last re-read of the allowlist took.
    pub fn last_allow_read() -> Duration {
        Duration::from_nanos(ALLOW_NS.load(Ordering::Relaxed))
    }
}

/// `tcpwatch: MESSAGE`.
pub fn note(message: impl Display) {
    emit(format!("tcpwatch: {message}"));
}

/// `tcpwatch: warning: MESSAGE`.
pub fn warn(message: impl Display) {
    emit(format!("tcpwatch: warning: {message}"));
}

/// `tcpwatch: error: MESSAGE`.
pub fn error(message: impl Display) {
    emit(format!("tcpwatch: error: {message}"));
}

/// A fault that is said once when it begins and once when it ends, however
/// many times it is seen in between.
#[derive(Debug, Default)]
pub struct Fault {
    failing: bool,
}

impl Fault {
    /// Another failure: the first of a run is warned with `message()`;
    /// returns whether it was the first.
    pub fn fail(&mut self, message: impl FnOnce() -> String) -> bool {
        if self.failing {
            return false;
        }
        self.failing = true;
        warn(message());
        true
    }

    /// A success: after failures, says `message()` once; returns whether it
    /// ended a fault.
    pub fn recover(&mut self, message: impl FnOnce() -> String) -> bool {
        if !self.failing {
            return false;
        }
        self.failing = false;
        note(message());
        true
    }

    /// A success that ends a fault without a line (the fault is one the
    /// operator needs no news of the end of).
    pub fn clear(&mut self) {
        self.failing = false;
    }

    pub fn failing(&self) -> bool {
        self.failing
    }
}

/// [`Fault`] for a fault shared by several threads (one file written from
/// several tasks): said once whoever sees it first.
#[derive(Debug, Default)]
pub struct SharedFault {
    failing: std::sync::atomic::AtomicBool,
}

impl SharedFault {
    /// See [`Fault::fail`].
    pub fn fail(&self, message: impl FnOnce() -> String) -> bool {
        use std::sync::atomic::Ordering;
        if self.failing.swap(true, Ordering::Relaxed) {
            return false;
        }
        warn(message());
        true
    }

    /// See [`Fault::recover`].
    pub fn recover(&self, message: impl FnOnce() -> String) -> bool {
        use std::sync::atomic::Ordering;
        if !self.failing.swap(false, Ordering::Relaxed) {
            return false;
        }
        note(message());
        true
    }
}

/// While it lives, lines are collected instead of printed (for tests: the
/// capture is process-wide, so tests that capture take [`Capture::start`]'s
/// lock and run one at a time).
pub struct Capture {
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Starts capturing.
pub fn capture() -> Capture {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    *CAPTURED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    Capture { _serial: serial }
}

impl Capture {
    /// The lines said so far.
    pub fn lines(&self) -> Vec<String> {
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        *CAPTURED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_prefix_and_a_fault_is_said_once_each_way() {
        let capture = capture();
        note("watching: procfs every 10s");
        warn("cannot list gateways: boom");
        error("bad");
        let mut fault = Fault::default();
        assert!(fault.fail(|| "firewall fails".into()));
        assert!(!fault.fail(|| "firewall fails again".into()));
        assert!(fault.recover(|| "firewall works again".into()));
        assert!(!fault.recover(|| "twice".into()));
        assert_eq!(
            capture.lines(),
            [
                "tcpwatch: watching: procfs every 10s",
                "tcpwatch: warning: cannot list gateways: boom",
                "tcpwatch: error: bad",
                "tcpwatch: warning: firewall fails",
                "tcpwatch: firewall works again",
            ]
        );
    }
}
