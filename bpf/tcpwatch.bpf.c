// SPDX-License-Identifier: GPL-2.0
// tcpwatch XDP program: reports TCP connection attempts to userspace and
// drops the packets of blocked addresses.
//
// Blocklist (when `check_blocked` is set at load time): every IPv4/IPv6
// packet's source is looked up in blocked4/blocked6 (LRU hashes, key the
// address in network order, value the expiry in bpf_ktime_get_boot_ns()
// nanoseconds: the boot clock, so a suspend does not extend a block). A
// present, unexpired entry drops the packet (XDP_DROP) and counts it per
// family in `dropped`; an expired entry drops nothing (userspace sweeps it).
//
// Reporting (when `report_syns` is set at load time):
// For every packet on the interface it is attached to, the program reports
//   - a SYN without ACK (ECE/CWR allowed): an inbound connection attempt;
//   - a SYN+ACK: the answer to an outbound connection of this host.
// Reports go through a ring buffer; a full ring buffer is counted in a per-CPU
// array so userspace can report the loss. Every packet not dropped by the
// blocklist is passed (XDP_PASS). Parsing lives in parse(), shared by both.
//
// Parsed: Ethernet with zero, one or two VLAN tags (802.1Q / 802.1AD), IPv4
// with options (IHL honoured; fragments with a non-zero offset skipped, they
// hold no TCP header), IPv6 fixed header followed directly by TCP. IPv6
// extension headers are NOT walked: a SYN behind a hop-by-hop, routing or
// fragment header is not reported.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#define IP_OFFSET_MASK 0x1fff

// Event kinds, as userspace reads them (src/source/xdp.rs).
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

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

// Index 0: reports dropped because the ring buffer was full.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

// Index 0: IPv4 packets dropped; index 1: IPv6 packets dropped.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

// Blocked addresses -> expiry (boot-clock ns). Sizes are set at load time
// (--xdp-map-size); the LRU evicts the least recently used entry when full.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, __u64);
} blocked4 SEC(".maps");

struct addr6 {
	__u8 b[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct addr6);
	__type(value, __u64);
} blocked6 SEC(".maps");

// Set by the loader before the program is loaded (read-only afterwards).
volatile const __u8 report_syns = 1;
volatile const __u8 check_blocked = 0;

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

// The TCP flags byte is the 14th byte of the header.
#define TCP_FLAGS_OFFSET 13
#define F_SYN 0x02
#define F_ACK 0x10
// Every flag but ECE and CWR (ECN negotiation rides on the SYN).
#define F_NOT_ECN 0x3f

#define PARSED_NONE 0	// not IPv4/IPv6 (or truncated before the addresses)
#define PARSED_IP 1	// ev->family and addresses set; not a SYN/SYN+ACK
#define PARSED_SYN 2	// *ev is a complete report

// Fills *ev from the packet as far as it goes: addresses for any IPv4/IPv6
// packet, the rest for a TCP SYN or SYN+ACK. Every access is checked
// against data_end.
static __always_inline int parse(struct xdp_md *ctx, struct event *ev)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cursor;
	__u16 proto;
	struct tcphdr *tcp;
	__u8 flags;

	if ((void *)(eth + 1) > data_end)
		return PARSED_NONE;
	proto = eth->h_proto;
	cursor = eth + 1;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vlan = cursor;
		if ((void *)(vlan + 1) > data_end)
			return PARSED_NONE;
		proto = vlan->proto;
		cursor = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cursor;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end)
			return PARSED_NONE;
		ev->family = 4;
		__builtin_memcpy(ev->saddr, &ip->saddr, 4);
		__builtin_memcpy(ev->daddr, &ip->daddr, 4);
		if (ip->protocol != IPPROTO_TCP)
			return PARSED_IP;
		if (ip->frag_off & bpf_htons(IP_OFFSET_MASK))
			return PARSED_IP;
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return PARSED_IP;
		tcp = cursor + ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;

		if ((void *)(ip6 + 1) > data_end)
			return PARSED_NONE;
		ev->family = 6;
		__builtin_memcpy(ev->saddr, &ip6->saddr, 16);
		__builtin_memcpy(ev->daddr, &ip6->daddr, 16);
		// Extension headers are not walked: only TCP directly after the
		// fixed header is seen.
		if (ip6->nexthdr != IPPROTO_TCP)
			return PARSED_IP;
		tcp = (void *)(ip6 + 1);
	} else {
		return PARSED_NONE;
	}

	if ((void *)(tcp + 1) > data_end)
		return PARSED_IP;
	flags = ((__u8 *)tcp)[TCP_FLAGS_OFFSET];
	if ((flags & F_NOT_ECN) == F_SYN)
		ev->kind = TCPW_SYN;
	else if ((flags & F_NOT_ECN) == (F_SYN | F_ACK))
		ev->kind = TCPW_SYNACK;
	else
		return PARSED_IP;
	ev->flags = flags;
	ev->sport = tcp->source;
	ev->dport = tcp->dest;
	ev->seq = tcp->seq;
	return PARSED_SYN;
}

// Whether the source of a parsed packet is blocked now; counts the drop.
static __always_inline int blocked(const struct event *ev)
{
	__u64 *expiry;
	__u32 index;

	if (ev->family == 4) {
		__u32 key;

		__builtin_memcpy(&key, ev->saddr, 4);
		expiry = bpf_map_lookup_elem(&blocked4, &key);
		index = 0;
	} else {
		struct addr6 key;

		__builtin_memcpy(key.b, ev->saddr, 16);
		expiry = bpf_map_lookup_elem(&blocked6, &key);
		index = 1;
	}
	if (!expiry || *expiry <= bpf_ktime_get_boot_ns())
		return 0;
	__u64 *count = bpf_map_lookup_elem(&dropped, &index);
	if (count)
		*count += 1;
	return 1;
}

static __always_inline void report(const struct event *ev)
{
	struct event *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);

	if (!out) {
		__u32 zero = 0;
		__u64 *count = bpf_map_lookup_elem(&lost, &zero);
		if (count)
			*count += 1;
		return;
	}
	__builtin_memcpy(out, ev, sizeof(*out));
	bpf_ringbuf_submit(out, 0);
}

SEC("xdp")
int tcpwatch(struct xdp_md *ctx)
{
	struct event ev = {};
	int parsed = parse(ctx, &ev);

	if (parsed == PARSED_NONE)
		return XDP_PASS;
	if (check_blocked && blocked(&ev))
		return XDP_DROP;
	if (report_syns && parsed == PARSED_SYN)
		report(&ev);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
