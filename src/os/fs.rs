//! File-system facts the agent needs: whether this process may write a
//! directory, and the BPF file system the XDP pins live on.

use std::ffi::CString;
use std::path::Path;

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

/// Whether `path` is on a BPF file system.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = c_path(path) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
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
