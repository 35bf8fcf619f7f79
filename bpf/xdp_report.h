// SPDX-License-Identifier: GPL-2.0
// Reports of the tcpwatch programs: parsed attempts and probes through a
// ring buffer, the count of those the ring had no room for, and the count
// of those it took.
#ifndef TCPWATCH_XDP_REPORT_H
#define TCPWATCH_XDP_REPORT_H

// The size is set at load time (src/bpf/xdp.rs); this is a placeholder.
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

// Index 0: reports the ring buffer took. Read by tests and benchmarks
// (bpftool) to prove what ordinary traffic does not cost.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reported SEC(".maps");

// Never read: it puts `struct event` in the object's BTF, where a test
// compares its layout with the Rust side's (src/bpf/record.rs).
volatile const struct event event_layout;

static __always_inline void count(void *counter)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(counter, &zero);

	if (n)
		*n += 1;
}

// The ring buffer wakes the reader only when it had read everything before
// this record (the kernel's default): under a flood the reader drains
// records in batches and is not woken for each.
static __always_inline void report(const struct event *ev)
{
	struct event *out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);

	if (!out) {
		count(&lost);
		return;
	}
	__builtin_memcpy(out, ev, sizeof(*out));
	bpf_ringbuf_submit(out, 0);
	count(&reported);
}

#endif
