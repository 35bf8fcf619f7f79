//! The operating system: every system call the agent makes directly, and
//! with them every `unsafe` block outside the BPF loader ([`crate::xdp`]).
//! Each function here is safe to call and does one thing; the stages use
//! these and never `libc`.

pub mod addrs;
pub mod caps;
pub mod fs;
pub mod host;
pub mod iface;
pub mod netlink;
pub mod nftables;
pub mod poll;
pub mod process;
pub mod socket;
