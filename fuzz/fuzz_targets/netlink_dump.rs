//! Fuzzes the `NETLINK_SOCK_DIAG` dump parser of the `netlink` source: one
//! datagram as the kernel sends it.
//!
//! Besides "never panics", it checks:
//!
//! - sockets are only appended to what the caller already had;
//! - `Done` only when the datagram holds an `NLMSG_DONE` header;
//! - every socket parsed, written back as an `inet_diag_msg` (AF_INET, or
//!   AF_INET6 with v4-mapped addresses when the families differ), parses
//!   to the same socket, alone and followed by `NLMSG_DONE`;
//! - errors are one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tcpwatch::source::netlink::{parse_dump, Dump};
use tcpwatch::event::{Socket, TcpState};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fuzz_target!(|data: &[u8]| {
    let sentinel = Socket {
        local: SocketAddr::from(([192, 0, 2, 1], 1)),
        remote: SocketAddr::from(([192, 0, 2, 2], 2)),
        state: TcpState::Listen,
        inode: 7,
    };
    let mut out = vec![sentinel];
    match parse_dump(data, &mut out) {
        Ok(dump) => {
            if dump == Dump::Done {
                assert!(has_done(data), "Done without NLMSG_DONE");
            }
        }
        Err(e) => {
            let message = format!("{e:#}");
            assert!(!message.chars().any(char::is_control), "{message:?}");
        }
    }
    assert_eq!(out[0], sentinel, "earlier sockets changed");
    for socket in &out[1..] {
        check_round_trip(socket);
    }
});

/// Walks the headers the way the kernel lays them out (4-byte aligned).
fn has_done(mut buf: &[u8]) -> bool {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if u16::from_ne_bytes(buf[4..6].try_into().unwrap()) == NLMSG_DONE {
            return true;
        }
        if len < 16 {
            return false;
        }
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
    }
    false
}

fn check_round_trip(socket: &Socket) {
    let mut datagram = message(socket);
    let mut out = Vec::new();
    assert_eq!(parse_dump(&datagram, &mut out).unwrap(), Dump::More);
    assert_eq!(out, [*socket], "{datagram:02x?}");
    datagram.extend(header(NLMSG_DONE, &[0; 4]));
    let mut out = Vec::new();
    assert_eq!(parse_dump(&datagram, &mut out).unwrap(), Dump::Done);
    assert_eq!(out, [*socket]);
}

/// `inet_diag_msg` as the kernel writes it.
fn message(socket: &Socket) -> Vec<u8> {
    let v4 = socket.local.is_ipv4() && socket.remote.is_ipv4();
    let state = (0..=u8::MAX)
        .find(|&n| TcpState::from_kernel(n) == Some(socket.state))
        .expect("every state has a kernel number");
    let mut body = vec![if v4 { AF_INET } else { AF_INET6 }, state, 0, 0];
    body.extend_from_slice(&socket.local.port().to_be_bytes());
    body.extend_from_slice(&socket.remote.port().to_be_bytes());
    for ip in [socket.local.ip(), socket.remote.ip()] {
        let mut addr = [0u8; 16];
        match ip {
            IpAddr::V4(ip) if v4 => addr[..4].copy_from_slice(&ip.octets()),
            IpAddr::V4(ip) => addr = ip.to_ipv6_mapped().octets(),
            IpAddr::V6(ip) => addr = ip.octets(),
        }
        body.extend_from_slice(&addr);
    }
    body.extend_from_slice(&[0; 12]); // interface, cookie
    body.extend_from_slice(&[0; 16]); // expires, rqueue, wqueue, uid
    let inode = u32::try_from(socket.inode).expect("a 32-bit inode");
    body.extend_from_slice(&inode.to_ne_bytes());
    header(SOCK_DIAG_BY_FAMILY, &body)
}

fn header(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&[0; 10]);
    msg.extend_from_slice(body);
    msg
}
