//! A firewall in memory, for the tests of the block stage and the
//! pipeline: it records every call and fails when told to.

use super::backend::{Backend, Entry};
use ipnet::IpNet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Blocks = Vec<(IpNet, Duration)>;

/// Records every call; fails `block` when told to. `gone`: its objects
/// were deleted (listing fails until a repair).
#[derive(Clone, Default)]
pub struct Fake {
    /// The addresses of each `block` call.
    pub calls: Arc<Mutex<Vec<Vec<IpNet>>>>,
    pub ttls: Arc<Mutex<Vec<Duration>>>,
    pub held: Arc<Mutex<std::collections::BTreeSet<IpNet>>>,
    pub repairs: Arc<Mutex<Vec<Blocks>>>,
    /// Every call that changes something, in order: `install`, `block
    /// [..]`, `remove`.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Fails every call but install and remove, always or while set.
    pub fail: bool,
    pub failing: Arc<AtomicBool>,
    /// Its objects were deleted: listing fails until a repair.
    pub gone: Arc<AtomicBool>,
    /// Entries it evicted on its own (an LRU map).
    pub evicted: Arc<AtomicU64>,
    /// Packets each entry dropped, when it counts them.
    pub packets: Arc<Mutex<HashMap<IpNet, u64>>>,
}

impl Fake {
    /// The calls that changed something, in order.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.fail || self.failing.load(Ordering::Relaxed) {
            anyhow::bail!("nft: Operation not permitted");
        }
        Ok(())
    }
}

impl Backend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn install(&mut self, _: Duration) -> anyhow::Result<()> {
        self.log.lock().unwrap().push("install".into());
        Ok(())
    }
    fn block(&mut self, ips: &[IpNet], ttl: Duration) -> anyhow::Result<()> {
        self.log.lock().unwrap().push(format!("block {ips:?}"));
        self.calls.lock().unwrap().push(ips.to_vec());
        self.ttls.lock().unwrap().push(ttl);
        self.check()?;
        self.held.lock().unwrap().extend(ips);
        Ok(())
    }
    fn repair(&mut self, _: Duration, entries: &[(IpNet, Duration)]) -> anyhow::Result<bool> {
        self.check()?;
        self.repairs.lock().unwrap().push(entries.to_vec());
        *self.held.lock().unwrap() = entries.iter().map(|(ip, _)| *ip).collect();
        self.gone.store(false, Ordering::Relaxed);
        Ok(true)
    }
    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()> {
        self.log.lock().unwrap().push(format!("unblock {target}"));
        self.check()?;
        self.held.lock().unwrap().remove(&target);
        Ok(())
    }
    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        self.check()?;
        if self.gone.load(Ordering::Relaxed) {
            anyhow::bail!("nft: No such file or directory");
        }
        let packets = self.packets.lock().unwrap();
        Ok(self
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|ip| Entry {
                packets: packets.get(ip).copied(),
                ..Entry::new(*ip, Some(Duration::from_secs(30)))
            })
            .collect())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.held.lock().unwrap().clear();
        Ok(())
    }
    fn remove(&mut self) -> anyhow::Result<()> {
        self.log.lock().unwrap().push("remove".into());
        Ok(())
    }
    fn present(&mut self) -> bool {
        true
    }
    fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}
