// SPDX-License-Identifier: GPL-2.0
// xdpgen's program: sends every frame it is run on out of one interface.
// xdpgen runs it with BPF_PROG_RUN and BPF_F_TEST_XDP_LIVE_FRAMES, so each
// frame leaves through that interface's ndo_xdp_xmit, as an XDP frame (no
// skb), the way a NIC with native XDP redirects.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Set by xdpgen before the program is loaded.
volatile const __u32 ifindex = 0;

SEC("xdp")
int xdpgen_redirect(struct xdp_md *ctx)
{
	return bpf_redirect(ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
