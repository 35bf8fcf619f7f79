// SPDX-License-Identifier: GPL-2.0
// Packet parsing of the XDP program: Ethernet (and VLAN tags) to the TCP
// header. One job: fill a `struct event` from the frame, every access
// checked against data_end.
//
// What it reports (`kind`, see tcpwatch.h):
//   - a TCP SYN without ACK (TCPW_SYN) and a SYN+ACK (TCPW_SYNACK);
//   - a TCP segment with none of SYN, ACK, RST (TCPW_STEALTH): never part
//     of a connection, always a probe (nmap -sF, -sN, -sX);
//   - the first fragment of a fragmented TCP packet (IPv4 MF with offset 0,
//     or an IPv6 fragment header with offset 0): when the fragment holds
//     the flags byte it is classified as above; when it is cut before (nmap
//     -f sends 8 bytes of TCP), TCPW_FRAGMENT, with the ports and, when
//     there, the sequence number. Later fragments hold no TCP header.
// Everything else, any segment with ACK (all established traffic) or RST
// above all, is not reported. The TCP header's length is taken from the IP
// header, not the frame, so the padding of a short Ethernet frame is never
// read as TCP.
#ifndef TCPWATCH_XDP_PARSE_H
#define TCPWATCH_XDP_PARSE_H

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

// The IPv6 fragment header (RFC 8200 4.5).
struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;	// offset (13 bits, in 8-byte units), 2 reserved bits, M
	__be32 identification;
};

#define IP_MF 0x2000
#define IP_OFFSET_MASK 0x1fff
#define IP6_MF 0x0001
#define IP6_OFFSET_MASK 0xfff8

// IPv6 extension headers walked before the TCP header at most (hop-by-hop,
// routing, destination options, fragment, authentication, in any order):
// more is no packet a host sends, and the bound keeps the verifier's
// unrolled walk short.
#define IPV6_EXT_MAX 6

// The TCP flags byte is the 14th byte of the header.
#define TCP_FLAGS_OFFSET 13
#define TCP_MIN_LEN 20
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10
// Every flag but ECE and CWR (ECN negotiation rides on the SYN+ACK).
#define F_NOT_ECN 0x3f

#define PARSED_NONE 0	// not IPv4/IPv6 (or truncated before the addresses)
#define PARSED_IP 1	// ev->family and addresses set; nothing to report
#define PARSED_REPORT 2	// *ev is a complete report

// The report a TCP flags byte makes (TCPW_*), or 0: ordinary traffic.
static __always_inline __u8 classify(__u8 flags)
{
	// ACK first: it is set on every segment of an established connection.
	if (flags & F_ACK)
		return (flags & F_NOT_ECN) == (F_SYN | F_ACK) ? TCPW_SYNACK : 0;
	if (flags & F_SYN)
		return TCPW_SYN;
	return flags & F_RST ? 0 : TCPW_STEALTH;
}

// Fills *ev from the packet as far as it goes: addresses for any IPv4/IPv6
// packet, the rest for a TCP packet to report (see above).
static __always_inline int parse(struct xdp_md *ctx, struct event *ev)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cursor;
	__u16 proto;
	void *l4;		// the TCP header
	__u32 l4_len;		// its bytes, as the IP header counts them
	int fragment = 0;	// a first fragment: the TCP header may be cut
	__u8 kind, flags;

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
		__u32 ihl, total;

		if ((void *)(ip + 1) > data_end)
			return PARSED_NONE;
		ev->family = 4;
		__builtin_memcpy(ev->saddr, &ip->saddr, 4);
		__builtin_memcpy(ev->daddr, &ip->daddr, 4);
		if (ip->protocol != IPPROTO_TCP)
			return PARSED_IP;
		if (ip->frag_off & bpf_htons(IP_OFFSET_MASK))
			return PARSED_IP;	// a later fragment: no TCP header
		fragment = !!(ip->frag_off & bpf_htons(IP_MF));
		ihl = ip->ihl * 4;
		total = bpf_ntohs(ip->tot_len);
		if (ihl < sizeof(*ip) || total < ihl)
			return PARSED_IP;
		l4 = cursor + ihl;
		l4_len = total - ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;
		__u8 next;

		if ((void *)(ip6 + 1) > data_end)
			return PARSED_NONE;
		ev->family = 6;
		__builtin_memcpy(ev->saddr, &ip6->saddr, 16);
		__builtin_memcpy(ev->daddr, &ip6->daddr, 16);
		next = ip6->nexthdr;
		l4 = ip6 + 1;
		l4_len = bpf_ntohs(ip6->payload_len);
#pragma unroll
		for (int i = 0; i < IPV6_EXT_MAX; i++) {
			__u32 len;

			if (next == IPPROTO_TCP)
				break;
			if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
			    next == IPPROTO_DSTOPTS || next == IPPROTO_AH) {
				struct ipv6_opt_hdr *opt = l4;

				if ((void *)(opt + 1) > data_end)
					return PARSED_IP;
				// AH counts 4-byte words less 2, the others
				// 8-byte words less 1.
				if (next == IPPROTO_AH)
					len = ((__u32)opt->hdrlen + 2) * 4;
				else
					len = ((__u32)opt->hdrlen + 1) * 8;
				next = opt->nexthdr;
			} else if (next == IPPROTO_FRAGMENT) {
				struct ipv6_frag_hdr *frag = l4;

				if ((void *)(frag + 1) > data_end)
					return PARSED_IP;
				if (frag->frag_off & bpf_htons(IP6_OFFSET_MASK))
					return PARSED_IP;	// a later fragment
				fragment = !!(frag->frag_off & bpf_htons(IP6_MF));
				len = sizeof(*frag);
				next = frag->nexthdr;
			} else {
				return PARSED_IP;
			}
			if (len > l4_len)
				return PARSED_IP;
			l4 += len;
			l4_len -= len;
		}
		if (next != IPPROTO_TCP)
			return PARSED_IP;
	} else {
		return PARSED_NONE;
	}

	// The ports, then the sequence number, then the flags byte: a first
	// fragment may stop anywhere after the ports.
	struct tcphdr *tcp = l4;

	if (!fragment) {
		// The common case, a whole segment: straight to the flags.
		if (l4_len < TCP_MIN_LEN || l4 + TCP_MIN_LEN > data_end)
			return PARSED_IP;	// not a TCP segment
		flags = ((__u8 *)l4)[TCP_FLAGS_OFFSET];
		kind = classify(flags);
		if (!kind)
			return PARSED_IP;
	} else if (l4_len <= TCP_FLAGS_OFFSET) {
		if (l4_len < 4 || l4 + 4 > data_end)
			return PARSED_IP;
		kind = TCPW_FRAGMENT;
		flags = 0;
	} else {
		if (l4 + TCP_FLAGS_OFFSET + 1 > data_end)
			return PARSED_IP;
		flags = ((__u8 *)l4)[TCP_FLAGS_OFFSET];
		kind = classify(flags);
		if (!kind)
			return PARSED_IP;
	}
	ev->kind = kind;
	ev->flags = flags;
	ev->sport = tcp->source;
	ev->dport = tcp->dest;
	if (l4_len >= 8 && l4 + 8 <= data_end)
		ev->seq = tcp->seq;
	return PARSED_REPORT;
}

#endif
