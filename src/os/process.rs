//! Process-wide settings and clocks the standard library does not offer.

/// The detector's tables are rebuilt in batches under a flood. glibc raises
/// its mmap threshold to the size of each large block freed, so later
/// tables come from the heap and their freed copies stay resident. A fixed
/// threshold keeps blocks of 1 MiB and more in their own mappings, returned
/// to the kernel when freed (measured: peak RSS of the detector under a
/// 2M-source flood 44 MB -> 38 MB). Call before any thread is started.
pub fn return_big_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock of `bpf_ktime_get_boot_ns()`,
/// which goes on during a suspend.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no argument and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn boot_clock_moves_forward() {
        let a = boot_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = boot_ns();
        assert!(b > a && b - a >= 2_000_000, "{a} {b}");
    }
}
