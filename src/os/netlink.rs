//! A raw netlink socket: the one place the netlink users (the sock_diag
//! source, the XDP attachment queries over rtnetlink) make the syscalls.

use anyhow::Context;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub struct NetlinkSocket {
    fd: OwnedFd,
    buffer: Vec<u8>,
    /// Names the socket in errors: `sock_diag`, `rtnetlink`.
    what: &'static str,
}

impl NetlinkSocket {
    /// Opens a socket of netlink `protocol`, receiving datagrams of up to
    /// `buffer` bytes (a smaller buffer truncates them).
    pub fn open(protocol: libc::c_int, buffer: usize, what: &'static str) -> anyhow::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("{what} socket"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(NetlinkSocket {
            fd,
            buffer: vec![0; buffer],
            what,
        })
    }

    /// Sends one request to the kernel.
    pub fn send(&self, message: &[u8]) -> anyhow::Result<()> {
        // SAFETY: the buffer is valid for its length; the kernel is the
        // default destination of an unbound netlink socket.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("{} send", self.what));
        }
        Ok(())
    }

    /// Receives the next datagram (retrying an interrupted call).
    pub fn recv(&mut self) -> anyhow::Result<&[u8]> {
        loop {
            // SAFETY: receives into our own buffer, bounded by its length.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    0,
                )
            };
            if got >= 0 {
                return Ok(&self.buffer[..got as usize]);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("{} recv", self.what));
            }
        }
    }
}
