// SPDX-License-Identifier: GPL-2.0
// The egress half of the reports (a TC program on the watched interfaces):
// UDP probes of closed ports, seen through the port unreachable messages
// this host answers them with (ICMP type 3 code 3, ICMPv6 type 1 code 4).
// Such a message quotes the probe's IP header and its first 8 bytes, the
// UDP ports; each becomes a TCPW_UDP report of the probe: src the prober,
// dst this host's address and port.
//
// Cost: an outgoing packet that is not ICMP/ICMPv6 costs one protocol
// check; an ICMP message that is not a port unreachable a few more loads.
// Ordinary UDP traffic (DNS, QUIC) in either direction is never parsed
// further: XDP, on ingress, stops at its protocol byte too.
//
// Not seen: probes of open ports (the service answers, or not, and the
// kernel sends nothing), probes a firewall drops before the socket lookup,
// and the probes past the kernel's ICMP rate limit (docs/sources.md).
#ifndef TCPWATCH_TC_UNREACH_H
#define TCPWATCH_TC_UNREACH_H

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define ICMP_HDR_LEN 8

// The start of the quoted UDP header.
struct udp_ports {
	__be16 source;
	__be16 dest;
};

static __always_inline int same6(const struct in6_addr *a, const struct in6_addr *b)
{
	return a->in6_u.u6_addr32[0] == b->in6_u.u6_addr32[0] &&
	       a->in6_u.u6_addr32[1] == b->in6_u.u6_addr32[1] &&
	       a->in6_u.u6_addr32[2] == b->in6_u.u6_addr32[2] &&
	       a->in6_u.u6_addr32[3] == b->in6_u.u6_addr32[3];
}

// Fills *ev from a port unreachable this host sends; 0 for any other packet.
static __always_inline int unreach(struct __sk_buff *skb, struct event *ev)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct udp_ports ports;
	__u8 icmp[2];		// type, code
	__u32 at;		// offset of the quoted IP header

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		struct iphdr quoted;

		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_ICMP)
			return 0;
		at = sizeof(struct ethhdr) + ip->ihl * 4;
		if (bpf_skb_load_bytes(skb, at, icmp, sizeof(icmp)) ||
		    icmp[0] != ICMP_DEST_UNREACH || icmp[1] != ICMP_PORT_UNREACH)
			return 0;
		at += ICMP_HDR_LEN;
		if (bpf_skb_load_bytes(skb, at, &quoted, sizeof(quoted)) ||
		    quoted.protocol != IPPROTO_UDP || quoted.ihl < 5 ||
		    quoted.saddr != ip->daddr)
			return 0;
		if (bpf_skb_load_bytes(skb, at + quoted.ihl * 4, &ports, sizeof(ports)))
			return 0;
		ev->family = 4;
		__builtin_memcpy(ev->saddr, &quoted.saddr, 4);
		__builtin_memcpy(ev->daddr, &quoted.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		struct ipv6hdr quoted;

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_ICMPV6)
			return 0;
		at = sizeof(struct ethhdr) + sizeof(*ip6);
		if (bpf_skb_load_bytes(skb, at, icmp, sizeof(icmp)) ||
		    icmp[0] != ICMPV6_DEST_UNREACH || icmp[1] != ICMPV6_PORT_UNREACH)
			return 0;
		at += ICMP_HDR_LEN;
		// A probe behind extension headers is not followed here.
		if (bpf_skb_load_bytes(skb, at, &quoted, sizeof(quoted)) ||
		    quoted.nexthdr != IPPROTO_UDP || !same6(&quoted.saddr, &ip6->daddr))
			return 0;
		if (bpf_skb_load_bytes(skb, at + sizeof(quoted), &ports, sizeof(ports)))
			return 0;
		ev->family = 6;
		__builtin_memcpy(ev->saddr, &quoted.saddr, 16);
		__builtin_memcpy(ev->daddr, &quoted.daddr, 16);
	} else {
		return 0;
	}
	ev->kind = TCPW_UDP;
	ev->sport = ports.source;
	ev->dport = ports.dest;
	return 1;
}

#endif
