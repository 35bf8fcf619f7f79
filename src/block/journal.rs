//! [`Journal`]: where decided blocks are written down before they are
//! applied, so a crash right after applying one cannot lose it (the state
//! file; the pipeline plugs it in), with the [`Record`] of each blocked
//! source (why, and how often in a row). Writing is best effort: a journal
//! that cannot write says so itself and keeps what it could not write.

use super::record::Record;
use ipnet::IpNet;
use std::collections::HashSet;
use std::time::SystemTime;

pub trait Journal: Send + Sync {
    /// Records that `targets` are blocked until `expires` via `backend`.
    fn record(&self, targets: &[IpNet], expires: SystemTime, backend: &'static str);
    /// Keeps only the recorded blocks in `held` (and drops expired ones).
    fn keep_only(&self, held: &HashSet<IpNet>);
    /// Drops the block of `target` (lifted by the operator).
    fn forget(&self, target: IpNet) {
        let _ = target;
    }
    /// Stores the records of these sources (and drops lapsed ones).
    fn note(&self, records: &[(IpNet, Record)]) {
        let _ = records;
    }
}
