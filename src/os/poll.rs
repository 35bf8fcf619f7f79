//! Waiting for a file descriptor to become readable, for the sources that
//! read on a thread of their own.

use rustix::event::{PollFd, PollFlags, Timespec};
use std::os::fd::AsFd;
use std::time::Duration;

/// Waits until `fd` is readable (or reports an error or a hang-up, which
/// the next read returns), at most `timeout`. `true` when it is, `false`
/// when the time ran out or a signal came first.
pub fn readable(fd: &impl AsFd, timeout: Duration) -> std::io::Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn readable_once_something_waits_and_not_before() {
        let (mut a, b) = UnixStream::pair().unwrap();
        assert!(!readable(&b, Duration::from_millis(5)).unwrap());
        a.write_all(b"x").unwrap();
        assert!(readable(&b, Duration::from_secs(5)).unwrap());
    }
}
