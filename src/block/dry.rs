//! `--dry-run` as a backend: it decides like the real one and applies
//! nothing. It remembers what it was asked to block and until when, so the
//! block stage treats its blocks like real ones (re-blocking an address is a
//! refresh, the cap counts the same), and says it [`applies`] nothing, so
//! they are neither stored nor counted as blocked addresses.
//!
//! [`applies`]: super::backend::Backend::applies

use super::backend::{Backend, Entry};
use crate::clock::Clock;
use ipnet::IpNet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct DryRun {
    /// The backend a real run would use: what the `Blocked` lines name.
    name: &'static str,
    clock: Arc<dyn Clock>,
    /// Address -> when its block would end (monotonic clock).
    held: HashMap<IpNet, Duration>,
}

impl DryRun {
    pub fn new(name: &'static str, clock: Arc<dyn Clock>) -> Self {
        DryRun {
            name,
            clock,
            held: HashMap::new(),
        }
    }
}

impl Backend for DryRun {
    fn name(&self) -> &'static str {
        self.name
    }
    fn install(&mut self, _ttl: Duration) -> anyhow::Result<()> {
        Ok(())
    }
    fn block(&mut self, targets: &[IpNet], ttl: Duration) -> anyhow::Result<()> {
        let end = self.clock.now().mono + ttl;
        self.held.extend(targets.iter().map(|t| (*t, end)));
        Ok(())
    }
    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()> {
        self.held.remove(&target);
        Ok(())
    }
    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        let now = self.clock.now().mono;
        self.held.retain(|_, end| *end > now);
        Ok(self
            .held
            .iter()
            .map(|(target, end)| Entry::new(*target, Some(*end - now)))
            .collect())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.held.clear();
        Ok(())
    }
    fn remove(&mut self) -> anyhow::Result<()> {
        self.held.clear();
        Ok(())
    }
    fn present(&mut self) -> bool {
        false
    }
    fn applies(&self) -> bool {
        false
    }
}
