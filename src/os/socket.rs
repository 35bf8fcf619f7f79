//! The agent's control socket: a Unix stream socket in the file system,
//! readable and writable by its owner only (root passes anyway), and who is
//! at the other end of a connection.

use std::io::{Error, ErrorKind};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds a Unix socket at `path`, mode 0600, creating its directory (mode
/// 0755) when missing. A socket file left by an agent that died is
/// replaced; one that a live process answers on is `AddrInUse`.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    "another process answers on it (is another tcpwatch running?)",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The effective user id of this process (the owner of `/proc/self`).
pub fn own_uid() -> std::io::Result<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid())
}

/// Removes the socket file at `path` if it is still a socket.
pub fn unlink(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_privately_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/tcpwatch.sock");
        let first = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = bind_private(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        drop(first);
        // The file stays behind a closed listener: stale, replaced.
        let _second = bind_private(&path).unwrap();
        unlink(&path);
        assert!(!path.exists());
        std::fs::write(&path, "x").unwrap();
        assert_eq!(
            bind_private(&path).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
    }
}
