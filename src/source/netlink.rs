//! The `netlink` source: a `NETLINK_SOCK_DIAG` dump, what `ss` uses.
//!
//! The same table as `/proc/net/tcp{,6}`, without formatting it as text in the
//! kernel and parsing it back: about half the cost. The wire format is parsed
//! by [`parse_dump`], apart from the socket calls, so it is tested on bytes.
//!
//! Both families come from one dump: the `TCPDIAG_GETSOCK` request (the
//! older form of `SOCK_DIAG_BY_FAMILY`, still served by every kernel with
//! sock_diag) asks for IPv4 and IPv6 together, so the kernel walks its
//! socket hash tables once instead of once per family. The walk visits
//! every bucket of the established table (hundreds of thousands, shared by
//! all network namespaces) whatever the number of sockets, so this saves
//! about a quarter of the dump's cost. A kernel that refuses the request
//! gets the per-family form.
//!
//! The socket is opened without CAP_NET_ADMIN in effect: with it, the
//! kernel adds each socket's firewall mark to its message (the sender's
//! and the socket opener's privilege both count), which costs the dump
//! about a tenth of its time and is never read here.

use super::procfs::unmap;
use super::table::SocketTable;
use crate::event::{Socket, TcpState};
use crate::os::caps::{self, Cap};
use crate::os::netlink::NetlinkSocket;
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The family-less request: its replies carry this type too.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, the 48-byte
/// `inet_diag_sockid`, then expires, rqueue, wqueue, uid, inode.
const DIAG_MSG_LEN: usize = 72;
/// Dumps arrive in datagrams of about 32 KiB; a smaller buffer truncates them.
const RECV_BUFFER: usize = 64 * 1024;

/// Every state: listeners decide direction, TIME-WAIT rows are connections.
const ALL_STATES: u32 = 0xffff_ffff;

pub struct Netlink {
    socket: NetlinkSocket,
    seq: u32,
    /// Whether the one-walk request is used (until the kernel refuses it).
    one_walk: bool,
    /// Sockets in the last table: the next one's capacity.
    last_len: usize,
}

impl Netlink {
    pub fn open() -> anyhow::Result<Self> {
        let socket = caps::without_effective(Cap::NetAdmin, || {
            NetlinkSocket::open(NETLINK_SOCK_DIAG, RECV_BUFFER, "netlink sock_diag")
        })?;
        Ok(Netlink {
            socket,
            seq: 0,
            one_walk: true,
            last_len: 0,
        })
    }

    /// Sends `request` (built for the next sequence number) and parses the
    /// whole dump into `out`.
    fn dump(&mut self, request: fn(u32) -> Vec<u8>, out: &mut Vec<Socket>) -> anyhow::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&request(self.seq))?;
        while parse_dump(self.socket.recv()?, out)? != Dump::Done {}
        Ok(())
    }
}

impl SocketTable for Netlink {
    fn name(&self) -> &'static str {
        "netlink"
    }

    fn snapshot(&mut self) -> anyhow::Result<Vec<Socket>> {
        let mut sockets = Vec::with_capacity(self.last_len + self.last_len / 8);
        if self.one_walk {
            match self.dump(one_walk_request, &mut sockets) {
                Ok(()) => {
                    self.last_len = sockets.len();
                    return Ok(sockets);
                }
                // Refused (or cut short): the per-family form from now on,
                // on a fresh socket (a dump cut short leaves datagrams queued).
                Err(_) => {
                    sockets.clear();
                    *self = Netlink {
                        one_walk: false,
                        ..Netlink::open()?
                    };
                }
            }
        }
        self.dump(|seq| family_request(libc::AF_INET as u8, seq), &mut sockets)?;
        self.dump(
            |seq| family_request(libc::AF_INET6 as u8, seq),
            &mut sockets,
        )?;
        self.last_len = sockets.len();
        Ok(sockets)
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for every TCP socket of a family.
fn family_request(family: u8, seq: u32) -> Vec<u8> {
    let mut msg = header(SOCK_DIAG_BY_FAMILY, 56, seq);
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&ALL_STATES.to_ne_bytes());
    msg.resize(msg.capacity(), 0); // inet_diag_sockid: all zero, no filter
    msg
}

/// `nlmsghdr` + `inet_diag_req` asking for every TCP socket of both
/// families (the kernel reads its family as unspecified).
fn one_walk_request(seq: u32) -> Vec<u8> {
    let mut msg = header(TCPDIAG_GETSOCK, 60, seq);
    // family, src_len, dst_len, ext; inet_diag_sockid: all zero, no filter
    msg.resize(NLMSG_HDRLEN + 4 + 48, 0);
    msg.extend_from_slice(&ALL_STATES.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // dbs
    msg
}

/// A dump request's `nlmsghdr`, for a body of `body` bytes.
fn header(kind: u16, body: usize, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg
}

#[derive(Debug, PartialEq, Eq)]
pub enum Dump {
    More,
    Done,
}

/// Parses one datagram of a dump into `out`; tells whether the dump ended.
pub fn parse_dump(mut buf: &[u8], out: &mut Vec<Socket>) -> anyhow::Result<Dump> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into()?);
        if len < NLMSG_HDRLEN || len > buf.len() {
            bail!(
                "netlink: message of {len} bytes in a datagram of {}",
                buf.len()
            );
        }
        let body = &buf[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(Dump::Done),
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
                    .unwrap_or(0);
                if errno != 0 {
                    // The kernel sends -errno; a corrupt i32::MIN has no
                    // negation (found by the netlink_dump fuzz target).
                    let err = std::io::Error::from_raw_os_error(errno.saturating_neg());
                    return Err(err).context("netlink sock_diag dump");
                }
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => out.extend(parse_diag_msg(body)),
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    Ok(Dump::More)
}

/// One `inet_diag_msg`; `None` for a short message or an unknown family.
fn parse_diag_msg(body: &[u8]) -> Option<Socket> {
    if body.len() < DIAG_MSG_LEN {
        return None;
    }
    let state = TcpState::from_kernel(body[1])?;
    let sport = u16::from_be_bytes([body[4], body[5]]);
    let dport = u16::from_be_bytes([body[6], body[7]]);
    let src = &body[8..24];
    let dst = &body[24..40];
    let ip = |bytes: &[u8]| -> Option<IpAddr> {
        match body[0] as i32 {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            libc::AF_INET6 => Some(unmap(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))),
            _ => None,
        }
    };
    let inode = u32::from_ne_bytes(body[68..72].try_into().ok()?);
    Some(Socket {
        local: SocketAddr::new(ip(src)?, sport),
        remote: SocketAddr::new(ip(dst)?, dport),
        state,
        inode: u64::from(inode),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `inet_diag_msg` as the kernel writes it, wrapped in its header.
    fn message(family: u8, state: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut body = vec![family, state, 0, 0];
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&dport.to_be_bytes());
        let mut addr = [0u8; 16];
        addr[..src.len()].copy_from_slice(src);
        body.extend_from_slice(&addr);
        let mut addr = [0u8; 16];
        addr[..dst.len()].copy_from_slice(dst);
        body.extend_from_slice(&addr);
        body.extend_from_slice(&[0; 12]); // if, cookie
        body.extend_from_slice(&[0; 16]); // expires, rqueue, wqueue, uid
        body.extend_from_slice(&4242u32.to_ne_bytes());
        header(SOCK_DIAG_BY_FAMILY, &body)
    }

    fn header(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut msg = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(body);
        msg
    }

    #[test]
    fn parses_v4_v6_and_unmaps() {
        let mut datagram = message(2, 1, &[10, 0, 0, 5], 80, &[192, 0, 2, 56], 5973);
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let peer: Ipv6Addr = "2001:db8::7".parse().unwrap();
        datagram.extend(message(10, 1, &v6.octets(), 443, &peer.octets(), 40112));
        let mapped = Ipv4Addr::new(10, 0, 0, 5).to_ipv6_mapped();
        let client = Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped();
        datagram.extend(message(10, 10, &mapped.octets(), 8080, &client.octets(), 0));
        let mut out = Vec::new();
        assert_eq!(parse_dump(&datagram, &mut out).unwrap(), Dump::More);
        let got: Vec<String> = out
            .iter()
            .map(|s| format!("{} {} {}", s.local, s.remote, s.state.name()))
            .collect();
        assert_eq!(
            got,
            [
                "10.0.0.5:80 192.0.2.56:5973 ESTABLISHED",
                "[2001:db8::1]:443 [2001:db8::7]:40112 ESTABLISHED",
                "10.0.0.5:8080 10.0.0.7:0 LISTEN",
            ]
        );
        assert_eq!(out[0].inode, 4242);
    }

    #[test]
    fn done_ends_the_dump_and_errors_are_reported() {
        let mut out = Vec::new();
        assert_eq!(
            parse_dump(&header(NLMSG_DONE, &[0; 4]), &mut out).unwrap(),
            Dump::Done
        );
        let eperm = header(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        assert!(parse_dump(&eperm, &mut out).is_err());
    }

    #[test]
    fn the_most_negative_errno_is_an_error_not_a_panic() {
        let error = header(NLMSG_ERROR, &i32::MIN.to_ne_bytes());
        let err = parse_dump(&error, &mut Vec::new()).unwrap_err();
        assert!(
            format!("{err:#}").contains("netlink sock_diag dump"),
            "{err:#}"
        );
    }

    #[test]
    fn a_lying_length_is_an_error_not_a_panic() {
        let mut bad = message(2, 1, &[10, 0, 0, 5], 80, &[10, 0, 0, 6], 1);
        bad[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(parse_dump(&bad, &mut Vec::new()).is_err());
        let short = header(SOCK_DIAG_BY_FAMILY, &[2, 1, 0]);
        let mut out = Vec::new();
        assert_eq!(parse_dump(&short, &mut out).unwrap(), Dump::More);
        assert!(out.is_empty());
    }

    #[test]
    fn replies_to_the_one_walk_request_are_sockets() {
        let mut datagram = message(2, 1, &[10, 0, 0, 5], 80, &[192, 0, 2, 56], 5973);
        datagram[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
        let mut out = Vec::new();
        assert_eq!(parse_dump(&datagram, &mut out).unwrap(), Dump::More);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let one = one_walk_request(7);
        assert_eq!(one.len(), NLMSG_HDRLEN + 60);
        assert_eq!(u32::from_ne_bytes(one[0..4].try_into().unwrap()), 76);
        assert_eq!(u16::from_ne_bytes(one[4..6].try_into().unwrap()), 18);
        assert_eq!(u32::from_ne_bytes(one[8..12].try_into().unwrap()), 7);
        assert_eq!(one[16], 0, "family unspecified: both");
        assert_eq!(&one[68..72], &ALL_STATES.to_ne_bytes());
        let v6 = family_request(10, 8);
        assert_eq!(v6.len(), NLMSG_HDRLEN + 56);
        assert_eq!(u16::from_ne_bytes(v6[4..6].try_into().unwrap()), 20);
        assert_eq!(&v6[16..18], &[10, 6]);
        assert_eq!(&v6[20..24], &ALL_STATES.to_ne_bytes());
    }

    /// The one-walk dump and the per-family dumps list the same sockets,
    /// IPv6 ones included.
    #[test]
    fn one_walk_lists_what_the_per_family_dumps_list() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _v4 = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        // A host without IPv6 on loopback still checks IPv4.
        let v6 = std::net::TcpListener::bind("[::1]:0").ok();
        let _v6 = v6
            .as_ref()
            .map(|l| std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap());
        let ports: Vec<u16> = [Some(&v4), v6.as_ref()]
            .into_iter()
            .flatten()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let ours = |table: Vec<Socket>| -> std::collections::HashSet<_> {
            table
                .into_iter()
                .filter(|s| ports.contains(&s.local.port()) || ports.contains(&s.remote.port()))
                .map(|s| (s.local, s.remote, s.state))
                .collect()
        };
        let mut one = Netlink::open().unwrap();
        let mut per_family = Netlink {
            one_walk: false,
            ..Netlink::open().unwrap()
        };
        let from_one = ours(one.snapshot().unwrap());
        assert!(one.one_walk, "the kernel refused the one-walk request");
        assert_eq!(from_one, ours(per_family.snapshot().unwrap()));
        assert_eq!(from_one.len(), 3 * ports.len(), "{from_one:?}");
    }

    #[test]
    fn agrees_with_procfs_on_this_host() {
        use crate::source::procfs::Procfs;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let _server = listener.accept().unwrap();
        let mut netlink = Netlink::open().unwrap();
        let ours = |table: Vec<Socket>| -> std::collections::HashSet<_> {
            let port = addr.port();
            table
                .into_iter()
                .filter(|s| s.local.port() == port || s.remote.port() == port)
                .map(|s| (s.local, s.remote, s.state))
                .collect()
        };
        let from_netlink = ours(netlink.snapshot().unwrap());
        let from_procfs = ours(Procfs::host().snapshot().unwrap());
        assert_eq!(
            from_netlink.len(),
            3,
            "listener and both ends: {from_netlink:?}"
        );
        assert_eq!(from_netlink, from_procfs);
    }
}
