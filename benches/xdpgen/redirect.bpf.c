// SPDX-License-Identifier: GPL-2.0
// xdpgen's program: sends every frame it is run on out of one interface.
// xdpgen runs it with BPF_PROG_RUN and BPF_F_TEST_XDP_LIVE_FRAMES, so each
// frame leaves through that interface's ndo_xdp_xmit, as an XDP frame (no
// skb), the way a NIC with native XDP redirects.
//
// With cfg.rand_source (xdpgen -R), it first gives each frame a source
// address of its own, like `hping3 --rand-source`: frame number `counter`
// (cfg.first, then counting up) becomes a 32-bit value through a bijection
// (an odd multiplier and murmur3's finaliser), so no two frames of a run
// share a source (fewer than 2^32 of them), and runs given disjoint ranges
// of frame numbers share none either. IPv4: the whole source address;
// IPv6: bytes 4..7 (so each source is a /64 of its own, as the agent
// groups IPv6 sources by /64) with bytes 8..11 set from the frame number's
// second mix (the rest of the given address is kept). The TCP sequence
// number takes the same value (a new connection, never a retransmission).
// The IPv4 header checksum and the TCP/UDP checksum are updated
// incrementally (RFC 1624) from whatever the frame holds: the kernel may
// hand the program a recycled page that still holds the previous rewrite.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Set by xdpgen before the program is loaded; its layout is xdpgen's
// `struct config`.
volatile const struct {
	__u32 ifindex;
	__u32 rand_source; // 0: send the frame as given
	__u32 first;	   // the first frame number of the run
	__u32 kind;	   // 6: TCP SYN, 17: UDP
} cfg = {};

// The frame number of the next frame (xdpgen may run the program on
// several CPUs at once: taken atomically).
__u32 counter = 0;

static __always_inline __u32 mix(__u32 x)
{
	x *= 0x9e3779b1;
	x ^= x >> 16;
	x *= 0x85ebca6b;
	x ^= x >> 13;
	x *= 0xc2b2ae35;
	x ^= x >> 16;
	return x;
}

// The ones' complement sum of the 16-bit words, in memory order (the sum is
// byte-order independent).
static __always_inline __u32 add32(__u32 sum, __u32 v)
{
	return sum + (v & 0xffff) + (v >> 16);
}

// csum with the 32-bit word old replaced by new (RFC 1624, eqn. 3).
static __always_inline __u32 csum_sum(__u32 sum, __u32 old, __u32 new)
{
	return add32(add32(sum, ~old), new);
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

static __always_inline void rewrite(__u8 *word, __u32 new, __u32 *sum)
{
	__u32 old;

	__builtin_memcpy(&old, word, 4);
	*sum = csum_sum(*sum, old, new);
	__builtin_memcpy(word, &new, 4);
}

SEC("xdp")
int xdpgen_redirect(struct xdp_md *ctx)
{
	if (cfg.rand_source) {
		__u8 *data = (void *)(long)ctx->data;
		__u8 *end = (void *)(long)ctx->data_end;
		__u32 n = cfg.first + __sync_fetch_and_add(&counter, 1);
		__u32 v = mix(n), w = mix(n ^ 0x5bd1e995);

		// The frame xdpgen built: Ethernet, IPv4 without options or IPv6,
		// then the TCP or UDP header.
		if (data + 14 > end)
			return XDP_ABORTED;
		__u16 proto = ((__u16)data[12] << 8) | data[13];
		__u8 *ip = data + 14, *l4;
		__u32 l4sum = 0, ipsum = 0;

		if (proto == ETH_P_IP) {
			l4 = ip + 20;
			if (l4 + 20 > end) // padded to 60 bytes: TCP and UDP alike
				return XDP_ABORTED;
			rewrite(ip + 12, v, &l4sum);
			ipsum = l4sum;
			__u16 c;
			__builtin_memcpy(&c, ip + 10, 2);
			c = csum_fold(ipsum + (~c & 0xffff));
			__builtin_memcpy(ip + 10, &c, 2);
		} else if (proto == ETH_P_IPV6) {
			l4 = ip + 40;
			if (l4 + 8 > end)
				return XDP_ABORTED;
			rewrite(ip + 8 + 4, v, &l4sum);
			rewrite(ip + 8 + 8, w, &l4sum);
		} else {
			return XDP_ABORTED;
		}
		__u8 *check;
		if (cfg.kind == 6) {
			if (l4 + 20 > end)
				return XDP_ABORTED;
			rewrite(l4 + 4, v, &l4sum); // the sequence number
			check = l4 + 16;
		} else {
			check = l4 + 6;
		}
		__u16 c;
		__builtin_memcpy(&c, check, 2);
		if (cfg.kind == 6 || c) { // a UDP checksum of 0 is none
			c = csum_fold(l4sum + (~c & 0xffff));
			if (cfg.kind != 6 && c == 0)
				c = 0xffff;
			__builtin_memcpy(check, &c, 2);
		}
	}
	return bpf_redirect(cfg.ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
