//! The watched interfaces of the real-time sources, polled by name: an
//! interface can go down and come back, or be deleted and re-created under
//! the same name (a veth of a restarted container) with a new index. A
//! capture or an XDP attachment is bound to the old index and would never
//! see the new interface; [`LinkWatch`] tells the source when to reopen or
//! re-attach, and each change is said once.

use crate::health::SourceHealth;
use crate::os::iface::{self, Link};
use crate::{diag, duration};
use std::sync::Arc;
use std::time::Duration;

/// How often the watched interfaces are looked up.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What changed since the last check, each reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The watched interface went down (it still exists).
    Down,
    /// It is up again, the same interface.
    Up,
    /// No interface of that name any more.
    Gone,
    /// A new, up interface carries the name: reopen or re-attach on this
    /// index, then call [`LinkWatch::attached`]. Returned at every check
    /// until then.
    New(u32),
}

/// One watched interface: the index the source is bound to and what was
/// last seen of it.
#[derive(Debug, Clone)]
pub struct LinkWatch {
    index: u32,
    present: bool,
    up: bool,
    retry_warned: bool,
}

impl LinkWatch {
    /// Watching the interface the source was bound to at `index`.
    pub fn new(index: u32) -> Self {
        LinkWatch {
            index,
            present: true,
            up: true,
            retry_warned: false,
        }
    }

    /// Compares what the kernel has now (`lookup`) with what was seen.
    pub fn check(&mut self, now: Option<Link>) -> Option<Change> {
        let Some(link) = now else {
            return self.gone();
        };
        if !self.present || link.index != self.index {
            // Another interface under the name: bind to it once it is up
            // (a capture cannot be opened on a down interface).
            return if link.up {
                Some(Change::New(link.index))
            } else {
                self.gone()
            };
        }
        if link.up == self.up {
            return None;
        }
        self.up = link.up;
        Some(if link.up { Change::Up } else { Change::Down })
    }

    fn gone(&mut self) -> Option<Change> {
        if !self.present {
            return None;
        }
        self.present = false;
        Some(Change::Gone)
    }

    /// The source is bound to the interface at `index` now.
    pub fn attached(&mut self, index: u32) {
        *self = LinkWatch::new(index);
    }

    /// Whether the source can see traffic now (for `/healthz`).
    pub fn healthy(&self) -> bool {
        self.present && self.up
    }

    /// True the first time a reopen or re-attach fails since the last
    /// success: that failure is said once, the retries silently.
    pub fn first_failure(&mut self) -> bool {
        !std::mem::replace(&mut self.retry_warned, true)
    }
}

/// A watched interface of a running source: says each change once on
/// stderr and keeps `/healthz` failing while the interface is down or gone
/// or its capture broken.
pub struct Watched {
    source: &'static str,
    name: String,
    watch: LinkWatch,
    broken: bool,
    faulty: bool,
    health: Arc<SourceHealth>,
}

impl Watched {
    /// `name`, bound now to the interface at `index`.
    pub fn new(source: &'static str, name: &str, index: u32, health: Arc<SourceHealth>) -> Self {
        Watched {
            source,
            name: name.to_string(),
            watch: LinkWatch::new(index),
            broken: false,
            faulty: false,
            health,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Looks the interface up and says what changed; returns what the
    /// kernel has now.
    pub fn check(&mut self) -> Option<Link> {
        let now = iface::lookup(&self.name);
        let (source, name) = (self.source, &self.name);
        match self.watch.check(now) {
            Some(Change::Down) => diag::warn(format_args!(
                "{source} source: interface '{name}' is down; watching resumes when it is up"
            )),
            Some(Change::Up) => diag::note(format_args!(
                "{source} source: interface '{name}' is up again"
            )),
            Some(Change::Gone) => diag::warn(format_args!(
                "{source} source: interface '{name}' is gone; looking for it every {}",
                duration::format(CHECK_EVERY)
            )),
            Some(Change::New(_)) | None => {}
        }
        self.update_health();
        now
    }

    /// Whether `now` is another interface than the one the source is bound
    /// to, up and ready to be bound to.
    pub fn replaced(&self, now: Link) -> bool {
        now.up && (!self.watch.present || now.index != self.watch.index)
    }

    /// The source is bound to `now` again; `how` ends the line that says so.
    pub fn attached(&mut self, now: Link, how: &str) {
        diag::note(format_args!(
            "{} source: interface '{}' is back; {how}",
            self.source, self.name
        ));
        self.watch.attached(now.index);
        self.broken = false;
        self.update_health();
    }

    /// The capture (or attachment) failed while the interface looked fine.
    pub fn broke(&mut self, cause: &anyhow::Error) {
        // A capture on an interface that went away fails too: say that instead.
        self.check();
        if self.watch.healthy() {
            diag::warn(format_args!(
                "{} source: capture on '{}' stopped: {cause:#}; reopening every {}",
                self.source,
                self.name,
                duration::format(CHECK_EVERY)
            ));
        }
        self.broken = true;
        self.update_health();
    }

    /// A reopen or re-attach failed: said once until one succeeds.
    pub fn retry_failed(&mut self, cause: &anyhow::Error) {
        if self.watch.first_failure() {
            diag::warn(format_args!(
                "{} source: cannot watch '{}' again yet: {cause:#}; retrying every {}",
                self.source,
                self.name,
                duration::format(CHECK_EVERY)
            ));
        }
    }

    fn update_health(&mut self) {
        let faulty = self.broken || !self.watch.healthy();
        if faulty != self.faulty {
            self.health.fault(faulty);
            self.faulty = faulty;
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.faulty {
            self.health.fault(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(index: u32) -> Option<Link> {
        Some(Link { index, up: true })
    }

    fn down(index: u32) -> Option<Link> {
        Some(Link { index, up: false })
    }

    #[test]
    fn down_and_up_are_said_once_each() {
        let mut w = LinkWatch::new(5);
        assert_eq!(w.check(up(5)), None);
        assert_eq!(w.check(down(5)), Some(Change::Down));
        assert!(!w.healthy());
        assert_eq!(w.check(down(5)), None);
        assert_eq!(w.check(up(5)), Some(Change::Up));
        assert!(w.healthy());
        assert_eq!(w.check(up(5)), None);
    }

    #[test]
    fn a_recreated_interface_is_new_until_attached() {
        let mut w = LinkWatch::new(5);
        assert_eq!(w.check(None), Some(Change::Gone));
        assert_eq!(w.check(None), None);
        // Re-created but not up yet: still nothing to bind to.
        assert_eq!(w.check(down(9)), None);
        assert_eq!(w.check(up(9)), Some(Change::New(9)));
        // A failed reopen: asked again at the next check, warned once.
        assert!(w.first_failure());
        assert_eq!(w.check(up(9)), Some(Change::New(9)));
        assert!(!w.first_failure());
        w.attached(9);
        assert!(w.healthy());
        assert_eq!(w.check(up(9)), None);
        assert!(w.first_failure(), "a later failure is said again");
    }

    #[test]
    fn a_replacement_seen_without_a_gap_is_new() {
        // Deleted and re-created between two checks.
        let mut w = LinkWatch::new(5);
        assert_eq!(w.check(up(7)), Some(Change::New(7)));
        // Replaced by a down interface: the old one is gone.
        let mut w = LinkWatch::new(5);
        assert_eq!(w.check(down(7)), Some(Change::Gone));
        assert!(!w.healthy());
    }

    #[test]
    fn the_same_index_back_after_a_gap_is_new() {
        let mut w = LinkWatch::new(5);
        assert_eq!(w.check(None), Some(Change::Gone));
        assert_eq!(w.check(up(5)), Some(Change::New(5)));
    }
}
