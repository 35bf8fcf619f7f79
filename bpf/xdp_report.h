// SPDX-License-Identifier: GPL-2.0
// Reports of the XDP program: parsed attempts through a ring buffer, and
// the count of those the ring had no room for.
#ifndef TCPWATCH_XDP_REPORT_H
#define TCPWATCH_XDP_REPORT_H

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

#endif
