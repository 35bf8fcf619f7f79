//! [`Journal`]: where decided blocks are written down before they are
//! applied, so a crash right after applying one cannot lose it (the state
//! file; the pipeline plugs it in). Writing is best effort: a journal that
//! cannot write says so itself and keeps what it could not write.

use ipnet::IpNet;
use std::collections::HashSet;
use std::time::SystemTime;

pub trait Journal: Send + Sync {
    /// Records that `targets` are blocked until `expires` via `backend`.
    fn record(&self, targets: &[IpNet], expires: SystemTime, backend: &'static str);
    /// Keeps only the recorded blocks in `held` (and drops expired ones).
    fn keep_only(&self, held: &HashSet<IpNet>);
}
