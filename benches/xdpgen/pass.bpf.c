// SPDX-License-Identifier: GPL-2.0
// The smallest native XDP program: passes every frame to the stack. Attached
// to the receiving veth end for the `--block nftables` rounds of
// scripts/bench-xdp-drop.sh, so that end receives the generator's frames as
// XDP frames, exactly as in the `--block xdp` rounds, and then builds the
// skb that nftables drops.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdpgen_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
