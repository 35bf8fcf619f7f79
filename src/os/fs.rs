//! File-system facts the agent needs: whether this process may write a
//! directory, the BPF file system the XDP pins live on, where a file system
//! type is mounted (tracefs, cgroup2), and mounting one.

use std::ffi::CString;
use std::path::{Path, PathBuf};

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Whether this process may write into `dir` (access(2), which answers for
/// the real user and its capabilities).
pub fn writable(dir: &Path) -> std::io::Result<()> {
    let c = c_path(dir)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The file system type (`f_type` of statfs) of `path`.
fn fs_type(path: &Path) -> Option<i64> {
    let c = c_path(path).ok()?;
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// Whether `path` is on a BPF file system.
pub fn is_bpffs(path: &Path) -> bool {
    fs_type(path) == Some(BPF_FS_MAGIC)
}

/// Whether `path` is on a cgroup2 file system (whose directory inode
/// numbers are the cgroup ids, allocated in increasing order).
pub fn is_cgroup2(path: &Path) -> bool {
    fs_type(path) == Some(CGROUP2_SUPER_MAGIC)
}

/// The mount points of file systems of type `fstype` in this process's
/// mount namespace (`/proc/self/mountinfo`), in mount order; none when it
/// cannot be read.
pub fn mount_points(fstype: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount_points_in(&text, fstype))
        .unwrap_or_default()
}

/// The mount points of type `fstype` in a `/proc/PID/mountinfo` text.
pub fn mount_points_in(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let (before, after) = line.split_once(" - ")?;
            if after.split_whitespace().next()? != fstype {
                return None;
            }
            let mount_point = before.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape_octal(mount_point)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts a file system of type `fstype` (source `source`) on `target` with
/// `options`.
pub fn mount(source: &str, target: &Path, fstype: &str, options: &str) -> std::io::Result<()> {
    let c = |s: &str| {
        CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (src, fstype_c, opts) = (c(source)?, c(fstype)?, c(options)?);
    let target_c = c_path(target)?;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_of_a_type() {
        let hybrid = "\
24 31 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 33 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
42 33 0:39 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
58 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw
";
        assert_eq!(
            mount_points_in(hybrid, "cgroup2"),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(
            mount_points_in(hybrid, "tracefs"),
            [PathBuf::from("/sys/kernel/tracing")]
        );
        let escaped = "35 24 0:30 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            mount_points_in(escaped, "cgroup2"),
            [PathBuf::from("/mnt/my cgroups")]
        );
        assert!(mount_points_in("42 33 0:39 / /x rw - cgroup cgroup rw\n", "cgroup2").is_empty());
        assert!(mount_points_in("garbage\n\n - \n", "cgroup2").is_empty());
    }
}
