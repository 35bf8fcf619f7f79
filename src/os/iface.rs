//! Network interfaces: looked up by name (index and up/down, from one
//! socket), and listed with their kind. The one place the sources find
//! their interfaces.

use anyhow::Context;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An interface as the kernel has it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub up: bool,
}

/// The interface called `name` now, or `None` when there is none (or it
/// cannot be asked about). Index and flags come from one socket, by name.
pub fn lookup(name: &str) -> Option<Link> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, &byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: both ioctls read the NUL-terminated name in `request` and
    // write one field of its union.
    let index = unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut request) != 0 {
            return None;
        }
        request.ifr_ifru.ifru_ifindex
    };
    // SAFETY: as above.
    let flags = unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return None;
        }
        request.ifr_ifru.ifru_flags
    };
    Some(Link {
        index: u32::try_from(index).ok()?,
        up: i32::from(flags) & libc::IFF_UP != 0,
    })
}

/// The index of the interface called `name`, or an error naming it.
pub fn index(name: &str) -> anyhow::Result<u32> {
    match lookup(name) {
        Some(link) => Ok(link.index),
        None => anyhow::bail!("no such interface '{name}'"),
    }
}

/// Whether the kernel has a network interface called `name`.
pub fn exists(name: &str) -> bool {
    lookup(name).is_some()
}

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const ARPHRD_ETHER: u32 = 1;

/// An interface as `/sys/class/net` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    /// Ethernet framing (`type` 1): what the XDP program parses.
    pub ethernet: bool,
}

fn sys_net(name: &str, file: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/{file}")).ok()?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Every interface of this network namespace, by name.
pub fn list() -> anyhow::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net").context("/sys/class/net")? {
        let name = entry.context("/sys/class/net")?.file_name();
        let Some(name) = name.to_str() else { continue };
        let flags = sys_net(name, "flags").unwrap_or(0);
        out.push(Listed {
            name: name.to_string(),
            up: flags & IFF_UP != 0,
            loopback: flags & IFF_LOOPBACK != 0,
            ethernet: sys_net(name, "type") == Some(ARPHRD_ETHER),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_loopback_and_not_a_missing_name() {
        let lo = lookup("lo").expect("every namespace has lo");
        assert_eq!(lo.index, 1, "lo is the first interface of a namespace");
        assert_eq!(lookup("tcpwatch-none0"), None);
        assert_eq!(lookup(""), None);
        assert_eq!(lookup("a-name-far-too-long-for-linux"), None);
    }

    #[test]
    fn list_has_loopback_as_loopback() {
        let all = list().unwrap();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo is listed");
        assert!(lo.loopback && !lo.ethernet);
        assert_eq!(index("lo").unwrap(), 1);
        assert!(index("tcpwatch-none0").is_err());
    }
}
