// SPDX-License-Identifier: GPL-2.0
// The ring record of the XDP program (bpf/tcpwatch.bpf.c), as both sides
// read it: the program writes `struct event`, userspace decodes it
// (src/bpf/record.rs).
#ifndef TCPWATCH_H
#define TCPWATCH_H

#include <linux/types.h>

// Event kinds, as userspace reads them (src/bpf/record.rs).
#define TCPW_SYN 1	// SYN without ACK: src is the initiator
#define TCPW_SYNACK 2	// SYN+ACK: dst is the initiator

// One report: 44 bytes, laid out without padding. Addresses are in network
// byte order; an IPv4 address fills the first 4 bytes of its 16. Ports and
// the sequence number are in network byte order too; userspace converts.
// The sequence number (the sender's ISN) tells a retransmitted SYN (same
// ISN) from a new connection that reuses the 4-tuple (new ISN).
struct event {
	__u8 family;	// 4 or 6
	__u8 kind;	// TCPW_SYN or TCPW_SYNACK
	__u8 flags;	// the TCP flags byte (CWR..FIN)
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__u8 saddr[16];
	__u8 daddr[16];
};

#endif
