//! How the running source fares: set by the sources, read by `/healthz`,
//! `/livez` and the status view. Atomics, so a source task and the HTTP
//! server share it without a lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct SourceHealth {
    running: AtomicBool,
    /// Faults the source is living through now (an unreadable table, an
    /// interface gone): one per table or interface, so one that recovers
    /// does not hide another.
    faults: AtomicUsize,
}

impl SourceHealth {
    /// Marks the source task as running (`true`) or ended (`false`).
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// A fault began (`true`) or ended (`false`). Each caller pairs them: it
    /// reports a fault once when it begins and once when it ends.
    pub fn fault(&self, begins: bool) {
        if begins {
            self.faults.fetch_add(1, Ordering::Relaxed);
        } else {
            // Never below zero, whatever a caller does.
            let _ = self
                .faults
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Readiness: `Ok` while the source runs without a fault.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.running() {
            Err("source not running")
        } else if self.faults.load(Ordering::Relaxed) > 0 {
            Err("source failing")
        } else {
            Ok(())
        }
    }
}

/// Marks the source as running while it lives and as ended when dropped,
/// however its task ends (error, abort).
pub struct Running(Arc<SourceHealth>);

impl Running {
    pub fn new(health: Arc<SourceHealth>) -> Self {
        health.set_running(true);
        Running(health)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.set_running(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_pair_up_and_never_go_below_zero() {
        let h = Arc::new(SourceHealth::default());
        assert_eq!(h.ready(), Err("source not running"));
        {
            let _running = Running::new(h.clone());
            assert_eq!(h.ready(), Ok(()));
            h.fault(true);
            h.fault(true);
            h.fault(false);
            assert_eq!(h.ready(), Err("source failing"));
            h.fault(false);
            h.fault(false);
            assert_eq!(h.ready(), Ok(()));
            h.fault(true);
            h.fault(false);
            assert_eq!(h.ready(), Ok(()), "an extra end did not go below zero");
        }
        assert!(!h.running());
    }
}
