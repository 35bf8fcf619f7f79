// SPDX-License-Identifier: GPL-2.0
// Packet parsing of the XDP program: Ethernet (and VLAN tags) to the TCP
// header. One job: fill a `struct event` from the frame, every access
// checked against data_end.
#ifndef TCPWATCH_XDP_PARSE_H
#define TCPWATCH_XDP_PARSE_H

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

#endif
