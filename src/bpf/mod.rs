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

/// For the tests that hold the generated Rust records to the layout the C
/// compiler gave the programs, read from the objects' BTF with bpftool.
#[cfg(test)]
pub(crate) mod btf {
    /// `bpftool btf dump file OBJECT format raw` of a compiled program;
    /// `None` when there is nothing to compare with: clang was missing (an
    /// empty object), or bpftool is (a skip note; a failure under
    /// `CI=true`).
    pub fn dump(object: &[u8]) -> Option<String> {
        if object.is_empty() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("program.bpf.o");
        std::fs::write(&path, object).unwrap();
        let dump = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file"])
            .arg(&path)
            .args(["format", "raw"])
            .output();
        let Some(dump) = dump.ok().filter(|o| o.status.success()) else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("bpftool is needed to check the record layout (CI=true)");
            }
            println!("SKIPPED: bpftool missing, record layout not cross-checked");
            return None;
        };
        Some(String::from_utf8_lossy(&dump.stdout).into_owned())
    }

    /// The members of `struct STRUCTURE` as a raw BTF dump prints them:
    /// (name, byte offset).
    pub fn members(raw_dump: &str, structure: &str) -> Option<Vec<(String, usize)>> {
        let mut lines = raw_dump.lines();
        lines.find(|l| l.contains(&format!("STRUCT '{structure}'")))?;
        let mut members = Vec::new();
        for line in lines {
            let Some(rest) = line.trim().strip_prefix('\'') else {
                break;
            };
            let (name, rest) = rest.split_once('\'')?;
            let bits: usize = rest
                .split("bits_offset=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            members.push((name.to_string(), bits / 8));
        }
        Some(members)
    }

    /// Asserts that `struct STRUCTURE` in `raw_dump` has exactly `fields`
    /// (a generated record's `FIELDS`: name, byte offset), in order.
    pub fn assert_layout(raw_dump: &str, structure: &str, fields: &[(&str, usize)]) {
        let members = members(raw_dump, structure)
            .unwrap_or_else(|| panic!("struct {structure} in the program's BTF"));
        let ours: Vec<(String, usize)> = fields.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(members, ours, "{structure}");
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
