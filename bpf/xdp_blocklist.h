// SPDX-License-Identifier: GPL-2.0
// The blocklist of the XDP program: blocked addresses with their expiry,
// checked for every packet, and the count of what was dropped.
#ifndef TCPWATCH_XDP_BLOCKLIST_H
#define TCPWATCH_XDP_BLOCKLIST_H

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

#endif
