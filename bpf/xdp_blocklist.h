// SPDX-License-Identifier: GPL-2.0
// The blocklist of the XDP program: blocked addresses and prefixes with
// their expiry and drop count, checked for every packet, and the per-family
// count of what was dropped. Userspace: src/bpf/blocklist.rs.
#ifndef TCPWATCH_XDP_BLOCKLIST_H
#define TCPWATCH_XDP_BLOCKLIST_H

// Index 0: IPv4 packets dropped; index 1: IPv6 packets dropped.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

// A block decided by this program (the scan decision, xdp_decide.h) that
// userspace has not confirmed yet; userspace's own blocks have no flag.
#define BLOCK_KERNEL 1

// One block. `packets` is added to atomically by every CPU that drops a
// packet for it; userspace keeps it when it refreshes the block.
struct block {
	__u64 expiry;	// boot-clock ns (bpf_ktime_get_boot_ns)
	__u64 packets;	// packets dropped since the block was applied
	__u64 flags;	// BLOCK_KERNEL
	__u64 since;	// boot-clock ns when it was applied
};

struct addr6 {
	__u8 b[16];
};

// Blocked addresses. Sizes are set at load time (--xdp-map-size); the LRU
// evicts the least recently used entry when full.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct block);
} blocked4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct addr6);
	__type(value, struct block);
} blocked6 SEC(".maps");

// Blocked prefixes (an IPv6 scanner rotating addresses inside its /64, a
// range added by hand): longest-prefix-match tries, filled on demand
// (no preallocation; a full trie refuses new prefixes).
struct lpm4 {
	__u32 len;
	__u8 addr[4];
};

struct lpm6 {
	__u32 len;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4);
	__type(value, struct block);
} blocked_nets4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6);
	__type(value, struct block);
} blocked_nets6 SEC(".maps");

// The block holding the source of a parsed packet, if any: its address
// first (one hash lookup), then the prefixes holding it.
static __always_inline struct block *find_block(const struct event *ev)
{
	struct block *b;

	if (ev->family == 4) {
		struct lpm4 net = { .len = 32 };

		__builtin_memcpy(net.addr, ev->saddr, 4);
		b = bpf_map_lookup_elem(&blocked4, net.addr);
		if (!b)
			b = bpf_map_lookup_elem(&blocked_nets4, &net);
	} else {
		struct lpm6 net = { .len = 128 };

		__builtin_memcpy(net.addr, ev->saddr, 16);
		b = bpf_map_lookup_elem(&blocked6, net.addr);
		if (!b)
			b = bpf_map_lookup_elem(&blocked_nets6, &net);
	}
	return b;
}

// Counts one dropped packet of `family` (4 or 6).
static __always_inline void count_drop(__u8 family)
{
	__u32 index = family == 4 ? 0 : 1;
	__u64 *count = bpf_map_lookup_elem(&dropped, &index);

	if (count)
		*count += 1;
}

// Whether the source of a parsed packet is blocked now; counts the drop,
// per family and on the block itself. An expired block drops nothing
// (userspace sweeps it).
static __always_inline int blocked(const struct event *ev)
{
	struct block *b = find_block(ev);

	if (!b || b->expiry <= bpf_ktime_get_boot_ns())
		return 0;
	__sync_fetch_and_add(&b->packets, 1);
	count_drop(ev->family);
	return 1;
}

#endif
