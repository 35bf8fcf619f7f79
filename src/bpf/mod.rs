//! The BPF programs, loaded: the one place the agent holds BPF objects and
//! their maps, and the `unsafe` that registering a ring buffer with the
//! runtime takes. The XDP program ([`xdp`]) reports connection attempts
//! through a ring buffer ([`record`] decodes its records) and drops blocked
//! sources ([`blocklist`]), and can decide to block a scanner at its
//! threshold probe by itself ([`decide`]); the `xdp` source and the `xdp`
//! block backend share one loaded program. The tracepoint program
//! ([`tracepoint`]) reports the connections of every network namespace with
//! their owners ([`tcpstate`] decodes its records).

pub mod blocklist;
pub mod decide;
pub mod ifxdp;
pub mod record;
pub mod tcpstate;
pub mod tracepoint;
pub mod xdp;

use anyhow::Context;
use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// One line for an error of the BPF loader, with what to do when it is a
/// missing privilege.
pub fn error_line(error: &dyn std::error::Error) -> String {
    error_line_needing(error, "CAP_BPF and CAP_NET_ADMIN")
}

/// [`error_line`] for a program that needs `caps` when not run as root.
pub fn error_line_needing(error: &dyn std::error::Error, caps: &str) -> String {
    let mut line = crate::text::one_line(error);
    if line.contains("Operation not permitted") {
        line.push_str(&format!(" (needs root, or {caps})"));
    }
    line
}

/// A ring buffer map, registered with the runtime to be awaited. Must run
/// inside the tokio runtime.
pub fn ring_buffer(map: Map) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let ring = RingBuf::try_from(map).context("ring buffer map")?;
    // SAFETY: the ring buffer owns its map descriptor, which stays open and
    // unchanged until the AsyncFd (which owns the ring buffer) drops.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("ring buffer poll: {e}"))
}

/// Whether a map operation failed because the key is not there.
pub(crate) fn not_found(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::KeyNotFound)
        || matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// The sum over the CPUs of slot `index` of a per-CPU counter array (0 when
/// it cannot be read).
pub fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    match map.get(&index, 0) {
        Ok(per_cpu) => per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn error_chains_become_one_line_without_repeats() {
        let e = Chain(
            "map error: failed to create map `lost`",
            Some(Box::new(Chain(
                "failed to create map `lost`",
                Some(Box::new(Chain(
                    "Operation not permitted (os error 1)",
                    None,
                ))),
            ))),
        );
        assert_eq!(
            error_line(&e),
            "map error: failed to create map `lost`: Operation not permitted (os error 1) (needs root, or CAP_BPF and CAP_NET_ADMIN)"
        );
        let log = Chain("verifier rejected\nline 2\nline 3", None);
        assert_eq!(error_line(&log), "verifier rejected");
    }

    #[test]
    fn a_missing_privilege_says_what_is_needed() {
        let e = std::io::Error::from_raw_os_error(1);
        assert_eq!(
            error_line(&e),
            "Operation not permitted (os error 1) (needs root, or CAP_BPF and CAP_NET_ADMIN)"
        );
    }
}
