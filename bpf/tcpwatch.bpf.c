// SPDX-License-Identifier: GPL-2.0
// tcpwatch's BPF programs: an XDP program that reports TCP connection
// attempts and probes to userspace and drops the packets of blocked
// addresses, and a TC egress program that reports UDP probes.
//
// Blocklist (when `check_blocked` is set at load time): every IPv4/IPv6
// packet's source is looked up in blocked4/blocked6 (LRU hashes of
// addresses in network order), then in blocked_nets4/blocked_nets6 (LPM
// tries of prefixes); a block holds its expiry in bpf_ktime_get_boot_ns()
// nanoseconds (the boot clock, so a suspend does not extend a block) and
// the packets it dropped. A present, unexpired entry drops the packet
// (XDP_DROP) and counts it on the entry and per family in `dropped`; an
// expired entry drops nothing (userspace sweeps it).
//
// Scan decision (when `decide_scans` is set at load time, with both jobs):
// the SYN that makes its source a scanner is reported, then dropped, and
// its source blocked (xdp_decide.h).
//
// Reporting (when `report_syns` is set at load time): for every packet on
// the interface it is attached to, the XDP program reports
//   - a SYN without ACK: an inbound connection attempt;
//   - a SYN+ACK: the answer to an outbound connection of this host;
//   - a TCP probe with none of SYN, ACK, RST (FIN, NULL, Xmas scans);
//   - the first fragment of a fragmented TCP packet (its flags, when the
//     fragment holds them, say which of the above it is).
// The TC program (tcpwatch_udp, on egress) reports the UDP probes this
// host answers with a port unreachable. Reports go through a ring buffer; a
// full ring buffer is counted in a per-CPU array so userspace can report
// the loss. Every packet not dropped by the blocklist is passed. Parsing
// lives in parse() (xdp_parse.h), shared by both; the blocklist in
// xdp_blocklist.h, the reports in xdp_report.h, the UDP probes in
// tc_unreach.h, the record in tcpwatch.h.
//
// Parsed: Ethernet with zero, one or two VLAN tags (802.1Q / 802.1AD), IPv4
// with options (IHL honoured; fragments with a non-zero offset skipped, they
// hold no TCP header), IPv6 with up to IPV6_EXT_MAX extension headers
// (hop-by-hop, routing, destination options, fragment, authentication)
// before TCP.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#include "tcpwatch.h"

// Set by the loader before the program is loaded (read-only afterwards).
volatile const __u8 report_syns = 1;
volatile const __u8 check_blocked = 0;
// The scan decision in the kernel (xdp_decide.h): with both of the above.
volatile const __u8 decide_scans = 0;

#include "xdp_parse.h"
#include "xdp_blocklist.h"
#include "xdp_decide.h"
#include "xdp_report.h"
#include "tc_unreach.h"

SEC("xdp")
int tcpwatch(struct xdp_md *ctx)
{
	struct event ev = {};
	int parsed = parse(ctx, &ev);

	if (parsed == PARSED_NONE)
		return XDP_PASS;
	if (check_blocked && blocked(&ev))
		return XDP_DROP;
	// The probe that makes its source a scanner is still reported (so
	// userspace prints the scan), then dropped: its source is blocked.
	int drop = decide_scans && parsed == PARSED_REPORT && decide(&ev);
	if (report_syns && parsed == PARSED_REPORT)
		report(&ev);
	return drop ? XDP_DROP : XDP_PASS;
}

// Loaded and attached only when reporting. Returns TC_ACT_UNSPEC: the next
// program on the interface, if any, runs as if this one were not there.
SEC("classifier")
int tcpwatch_udp(struct __sk_buff *skb)
{
	struct event ev = {};

	if (unreach(skb, &ev))
		report(&ev);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
