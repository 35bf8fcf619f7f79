// SPDX-License-Identifier: GPL-2.0
// The ring record of the tcpwatch programs (bpf/tcpwatch.bpf.c), as both
// sides read it: the programs write `struct event`, userspace decodes it
// (src/bpf/record.rs). build.rs reads this file and generates the Rust
// `#[repr(C)] struct RawRecord` and the `TCPW_*` constants from it, so no
// offset is written down twice. The generator (build/record.rs) accepts only
// what it understands: `#define TCPW_<NAME> <integer>` lines and the fields
// of `struct event`, each `__u8|__u16|__u32|__u64|__be16|__be32|__be64
// name;` or `__u8 name[N];`. Fields are ordered so that neither compiler
// inserts padding (build.rs checks that too).
#ifndef TCPWATCH_H
#define TCPWATCH_H

#include <linux/types.h>

// What a record reports (the `kind` byte).
#define TCPW_SYN 1	// TCP SYN without ACK: src is the initiator (a whole SYN, or the first fragment of one whose flags byte is there)
#define TCPW_SYNACK 2	// TCP SYN+ACK: dst is the initiator (this host's outbound connection)
#define TCPW_STEALTH 3	// TCP with none of SYN, ACK, RST (FIN, NULL, Xmas probes): src probes dst's port; `flags` says which
#define TCPW_FRAGMENT 4	// first fragment of a TCP packet, cut before the flags byte: src probes dst's port
#define TCPW_UDP 5	// UDP probe of a closed port, seen by the port unreachable this host answered: src probes dst's port

// One report: 44 bytes, laid out without padding. Addresses are in network
// byte order; an IPv4 address fills the first 4 bytes of its 16. Ports and
// the sequence number are in network byte order too. The sequence number
// (the sender's ISN; 0 when the packet does not carry it) tells a
// retransmitted SYN (same ISN) from a new connection that reuses the
// 4-tuple (new ISN).
struct event {
	__u8 family;	// 4 or 6
	__u8 kind;	// TCPW_*
	__u8 flags;	// the TCP flags byte (CWR..FIN); 0 for TCPW_FRAGMENT and TCPW_UDP
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__u8 saddr[16];
	__u8 daddr[16];
};

#endif
