//! The XDP program attached to an interface, as rtnetlink reports it, and the
//! legacy (netlink) detach: what `ip link set dev X xdp off` does. Used at
//! start-up to remove a program a previous tcpwatch left behind.
//!
//! The message layouts are built and parsed apart from the socket calls so
//! they are tested on bytes.

use crate::os::netlink::NetlinkSocket;
use anyhow::{bail, Context};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const XDP_ATTACHED_MULTI: u8 = 4;
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;
pub const XDP_FLAGS_HW_MODE: u32 = 8;

/// The program attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub prog_id: u32,
    /// The `XDP_FLAGS_*_MODE` flag a detach must name.
    pub mode_flag: u32,
}

impl Attached {
    pub fn mode_name(&self) -> &'static str {
        match self.mode_flag {
            XDP_FLAGS_SKB_MODE => "generic",
            XDP_FLAGS_HW_MODE => "offload",
            _ => "driver",
        }
    }
}

/// A rtnetlink socket for one request at a time.
struct Rtnl(NetlinkSocket);

impl Rtnl {
    fn open() -> anyhow::Result<Rtnl> {
        NetlinkSocket::open(libc::NETLINK_ROUTE, 32 * 1024, "rtnetlink").map(Rtnl)
    }

    /// Sends one request and returns the first reply datagram.
    fn request(&mut self, message: &[u8]) -> anyhow::Result<&[u8]> {
        self.0.send(message)?;
        self.0.recv()
    }
}

/// The XDP program attached to interface `index`, if any.
pub fn query(index: u32) -> anyhow::Result<Option<Attached>> {
    let mut rtnl = Rtnl::open()?;
    let reply = rtnl.request(&getlink_request(index, 1))?;
    parse_getlink_reply(reply)
}

/// Detaches, through netlink, the program attached to `index` in `mode_flag`.
/// Fails (EBUSY) when a live BPF link owns the attachment.
pub fn detach(index: u32, mode_flag: u32) -> anyhow::Result<()> {
    let mut rtnl = Rtnl::open()?;
    let reply = rtnl.request(&detach_request(index, mode_flag, 2))?;
    match parse_ack(reply)? {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)).context("netlink detach"),
    }
}

fn header(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched at the end
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
}

fn ifinfo(out: &mut Vec<u8>, index: u32) {
    out.push(libc::AF_UNSPEC as u8);
    out.push(0);
    out.extend_from_slice(&0u16.to_ne_bytes()); // type
    out.extend_from_slice(&(index as i32).to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // flags
    out.extend_from_slice(&0u32.to_ne_bytes()); // change
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_ne_bytes());
    out
}

fn getlink_request(index: u32, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    header(&mut out, RTM_GETLINK, NLM_F_REQUEST, seq);
    ifinfo(&mut out, index);
    finish(out)
}

fn detach_request(index: u32, mode_flag: u32, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    header(&mut out, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    ifinfo(&mut out, index);
    let mut nested = Vec::with_capacity(16);
    attr(&mut nested, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    attr(&mut nested, IFLA_XDP_FLAGS, &mode_flag.to_ne_bytes());
    attr(&mut out, IFLA_XDP | NLA_F_NESTED, &nested);
    finish(out)
}

/// The attributes in `bytes`, as (type without flags, value).
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let value = &bytes[4..len];
        let padded = (len + 3) & !3;
        bytes = &bytes[padded.min(bytes.len())..];
        Some((kind, value))
    })
}

fn u32_at(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// Reads an error/ack message: 0 for an ack, else a positive errno.
fn parse_ack(reply: &[u8]) -> anyhow::Result<i32> {
    if reply.len() < NLMSG_HDRLEN + 4 {
        bail!("short netlink reply ({} bytes)", reply.len());
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != NLMSG_ERROR {
        bail!("unexpected netlink reply type {kind}");
    }
    let code = i32::from_ne_bytes(reply[16..20].try_into().expect("4 bytes"));
    Ok(-code)
}

fn parse_getlink_reply(reply: &[u8]) -> anyhow::Result<Option<Attached>> {
    if reply.len() < NLMSG_HDRLEN {
        bail!("short netlink reply ({} bytes)", reply.len());
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind == NLMSG_ERROR {
        let errno = parse_ack(reply)?;
        return Err(std::io::Error::from_raw_os_error(errno)).context("netlink getlink");
    }
    if kind != RTM_NEWLINK {
        bail!("unexpected netlink reply type {kind}");
    }
    let len =
        (u32::from_ne_bytes(reply[..4].try_into().expect("4 bytes")) as usize).min(reply.len());
    let Some(body) = reply.get(NLMSG_HDRLEN + IFINFOMSG_LEN..len) else {
        bail!("short RTM_NEWLINK message");
    };
    let Some((_, xdp)) = attrs(body).find(|(kind, _)| *kind == IFLA_XDP) else {
        return Ok(None);
    };
    let mut attached = 0u8;
    let mut prog_id = None;
    for (kind, value) in attrs(xdp) {
        match kind {
            IFLA_XDP_ATTACHED => attached = value.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => prog_id = u32_at(value),
            _ => {}
        }
    }
    let mode_flag = match attached {
        XDP_ATTACHED_DRV => XDP_FLAGS_DRV_MODE,
        XDP_ATTACHED_SKB => XDP_FLAGS_SKB_MODE,
        XDP_ATTACHED_HW => XDP_FLAGS_HW_MODE,
        XDP_ATTACHED_MULTI => bail!("several XDP programs attached (multi mode)"),
        _ => return Ok(None),
    };
    match prog_id {
        Some(prog_id) => Ok(Some(Attached { prog_id, mode_flag })),
        None => bail!("XDP program attached but its id is not reported"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newlink(xdp: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, RTM_NEWLINK, 0, 1);
        ifinfo(&mut out, 7);
        attr(&mut out, 3, b"veth0\0"); // IFLA_IFNAME
        if let Some(xdp) = xdp {
            attr(&mut out, IFLA_XDP | NLA_F_NESTED, xdp);
        }
        attr(&mut out, 4, &1500u32.to_ne_bytes()); // IFLA_MTU
        finish(out)
    }

    #[test]
    fn getlink_without_xdp_is_none() {
        assert_eq!(parse_getlink_reply(&newlink(None)).unwrap(), None);
        let mut nested = Vec::new();
        attr(&mut nested, IFLA_XDP_ATTACHED, &[0]);
        assert_eq!(parse_getlink_reply(&newlink(Some(&nested))).unwrap(), None);
    }

    #[test]
    fn getlink_reports_program_and_mode() {
        let mut nested = Vec::new();
        attr(&mut nested, IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]);
        attr(&mut nested, IFLA_XDP_PROG_ID, &4242u32.to_ne_bytes());
        attr(&mut nested, 6, &4242u32.to_ne_bytes()); // IFLA_XDP_SKB_PROG_ID
        let got = parse_getlink_reply(&newlink(Some(&nested)))
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            Attached {
                prog_id: 4242,
                mode_flag: XDP_FLAGS_SKB_MODE
            }
        );
        assert_eq!(got.mode_name(), "generic");
    }

    #[test]
    fn getlink_error_and_garbage_are_errors_not_panics() {
        let mut err = Vec::new();
        header(&mut err, NLMSG_ERROR, 0, 1);
        err.extend_from_slice(&(-19i32).to_ne_bytes());
        let err = finish(err);
        assert!(parse_getlink_reply(&err).is_err());
        assert!(parse_getlink_reply(&[1, 2, 3]).is_err());
        let mut truncated = newlink(None);
        truncated.truncate(20);
        assert!(parse_getlink_reply(&truncated).is_err());
        // An attribute claiming more bytes than there are ends the walk.
        let mut lying = newlink(None);
        let at = NLMSG_HDRLEN + IFINFOMSG_LEN;
        lying[at..at + 2].copy_from_slice(&4000u16.to_ne_bytes());
        assert_eq!(parse_getlink_reply(&lying).unwrap(), None);
    }

    #[test]
    fn detach_request_layout() {
        let req = detach_request(9, XDP_FLAGS_DRV_MODE, 5);
        assert_eq!(req.len(), 16 + 16 + 4 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(req[..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(i32::from_ne_bytes(req[20..24].try_into().unwrap()), 9);
        let (kind, nested) = attrs(&req[32..]).next().unwrap();
        assert_eq!(kind, IFLA_XDP);
        let inner: Vec<_> = attrs(nested).collect();
        assert_eq!(inner[0], (IFLA_XDP_FD, &(-1i32).to_ne_bytes()[..]));
        assert_eq!(
            inner[1],
            (IFLA_XDP_FLAGS, &XDP_FLAGS_DRV_MODE.to_ne_bytes()[..])
        );
    }
}
