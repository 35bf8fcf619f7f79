// SPDX-License-Identifier: GPL-2.0
// The scan decision in the kernel: the probe that makes its source a
// scanner (more than N distinct local ports within the window, the rule
// userspace detects with) is dropped and its source blocked at once, before
// userspace has even read it. Userspace still reads that probe (it is
// reported before it is dropped), prints the scan and confirms the block
// with its own TTL, or lifts it (allowlist, cap, a different decision);
// it owns the configuration (decide_config), the allowlist (allow4/allow6)
// and every block's life after the first moment. Userspace:
// src/bpf/decide.rs.
//
// Per (source, local address) pair, the pair userspace counts, an LRU hash
// keeps the most recently touched distinct ports with their times (at
// least N+1 of them): enough to tell exactly whether more than N were
// touched within the window. The source of an IPv6 probe is its prefix (--ipv6-prefix), so a
// scanner rotating addresses inside its /64 is one source; the block names
// the prefix when more than one of its addresses took part and the prefix
// holds no address never to be blocked, else the address.
//
// Concurrency: each port slot is one 64-bit word (port << 48 | time in
// 1.024 us units), replaced with compare-and-swap, so probes of one source
// handled at once on several CPUs never overwrite each other's ports;
// `decided` is set with compare-and-swap, so one CPU only blocks per
// episode. The blocks-per-minute cap is a ring of the last decisions' times
// under a spin lock.
#ifndef TCPWATCH_XDP_DECIDE_H
#define TCPWATCH_XDP_DECIDE_H

// Ports kept per source: --scan-ports up to DECIDE_SLOTS - 1 is decided in
// the kernel (userspace turns the decision off above that).
#define DECIDE_SLOTS 16
// The cap's ring: caps above this are enforced as this many a minute.
#define CAP_RING 1024
#define MINUTE_NS 60000000000ULL
#define SLOT_TIME_MASK ((1ULL << 48) - 1)

// Written by userspace (one element); `ports` 0 turns the decision off.
struct decide_config {
	__u64 window;	// ns
	__u64 ttl;	// ns: how long a block the kernel decides lasts unless userspace says otherwise
	__u32 ports;	// N: more than N distinct ports within the window is a scan
	__u32 cap;	// decisions in any sliding minute at most; 0: no cap
	__u32 prefix6;	// --ipv6-prefix
	__u32 pad;
	__u8 mask6[16];	// the netmask of prefix6
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decide_config);
} decide_config SEC(".maps");

// Never blocked (loopback, the host's addresses, its gateways, --allow),
// kept in sync by userspace. ALLOW_HOLDS marks a prefix (at --ipv6-prefix)
// that holds such an address: its scanners are blocked one address at a
// time, never the prefix whole.
#define ALLOW_ALL 1
#define ALLOW_HOLDS 2

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4);
	__type(value, __u32);
} allow4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6);
	__type(value, __u32);
} allow6 SEC(".maps");

struct track_key {
	__u8 family;
	__u8 pad[3];
	__u8 src[16];	// the address, or for IPv6 its prefix
	__u8 dst[16];	// the local address
};

struct track {
	__u64 slot[DECIDE_SLOTS];	// port << 48 | time >> 10; 0: empty
	__u64 last;			// the last probe (boot ns): the episode goes on while < window ago
	__u64 decided;			// when this episode was decided; 0: not yet
	__u64 multi;			// another address of the prefix took part in this episode
	__u8 first[16];			// the first address of the episode
};

// Sized at load time (the detector's --max-scan-sources).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct track_key);
	__type(value, struct track);
} tracks SEC(".maps");

// A zeroed `struct track` to insert new sources from (too large for the
// stack); never written.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct track);
} track_zero SEC(".maps");

struct cap_ring {
	struct bpf_spin_lock lock;
	__u32 head;
	__u64 at[CAP_RING];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cap_ring);
} decide_cap SEC(".maps");

// Counters (per CPU): what the decision did.
#define DECIDED 0	// sources blocked by the kernel
#define DECIDE_CAPPED 1	// decisions refused by the cap
#define DECIDE_CONTENDED 2	// probes not counted: their slot kept changing under them
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} decide_stats SEC(".maps");

static __always_inline void decide_count(__u32 index)
{
	__u64 *count = bpf_map_lookup_elem(&decide_stats, &index);

	if (count)
		*count += 1;
}

// ALLOW_ALL, ALLOW_HOLDS, or 0 for a source that may be blocked.
static __always_inline __u32 allowed(const struct event *ev)
{
	__u32 *verdict;

	if (ev->family == 4) {
		struct lpm4 key = { .len = 32 };

		__builtin_memcpy(key.addr, ev->saddr, 4);
		verdict = bpf_map_lookup_elem(&allow4, &key);
	} else {
		struct lpm6 key = { .len = 128 };

		__builtin_memcpy(key.addr, ev->saddr, 16);
		verdict = bpf_map_lookup_elem(&allow6, &key);
	}
	return verdict ? *verdict : 0;
}

// The state of one touch() across its bpf_loop callbacks.
struct touch_ctx {
	struct track *t;
	__u64 tq;	// now, in slot time units
	__u64 wq;	// the window, in slot time units
	__u64 fresh;	// the slot value to write
	__u64 oldest;	// the age of the victim for a new port (0: empty or stale)
	__u32 port;
	__u32 live;	// slots touched within the window
	__u32 found;	// the port has a slot
	__u32 result;	// what touch() returns, once done
	__u32 done;
};

// Pass 1, per slot: counts the live slots, finds the port's, and the age of
// the victim for a new port: an empty or stale slot (age 0), else the least
// recently touched.
static long touch_scan(__u32 i, struct touch_ctx *c)
{
	if (i >= DECIDE_SLOTS)
		return 1;
	__u64 v = *(volatile __u64 *)&c->t->slot[i];
	__u64 at = v & SLOT_TIME_MASK;
	int alive = v != 0 && at + c->wq > c->tq;
	__u64 age = alive ? at : 0;

	c->live += alive;
	if (alive && (v >> 48) == c->port)
		c->found = 1;
	if (age < c->oldest)
		c->oldest = age;
	return 0;
}

// Pass 2, per slot: writes the port's time into its slot, or into the
// victim's. A slot that changed since pass 1 is judged as it is now; a
// victim taken meanwhile ends the pass undone (touch() looks again).
static long touch_swap(__u32 i, struct touch_ctx *c)
{
	if (i >= DECIDE_SLOTS)
		return 1;
	__u64 *slot = &c->t->slot[i];
	__u64 v = *(volatile __u64 *)slot;
	__u64 at = v & SLOT_TIME_MASK;
	int alive = v != 0 && at + c->wq > c->tq;

	if (c->found) {
		if (!alive || (v >> 48) != c->port)
			return 0;
		// A lost race only leaves the port a slightly older time.
		__sync_val_compare_and_swap(slot, v, c->fresh);
		c->result = c->live;
		c->done = 1;
		return 1;
	}
	if ((alive ? at : 0) != c->oldest)
		return 0;
	if (__sync_val_compare_and_swap(slot, v, c->fresh) == v) {
		c->result = c->oldest ? c->live : c->live + 1;
		c->done = 1;
	}
	return 1;
}

// Records `port` touched at `now`; returns the distinct ports touched
// within the window, that one included (0 when the slots kept changing
// under it). Every slot is kept, whatever N: more than N + 1 ports only
// makes the count exact beyond N + 1. The slots are walked with bpf_loop:
// the verifier checks each callback once instead of every iteration.
static __always_inline __u32 touch(struct track *t, __u16 port, __u64 now, __u64 window)
{
	struct touch_ctx c = {
		.t = t,
		.tq = (now >> 10) & SLOT_TIME_MASK,
		.wq = window >> 10,
		.port = port,
	};

	c.fresh = ((__u64)port << 48) | c.tq;
#pragma clang loop unroll(disable)
	for (int attempt = 0; attempt < 2; attempt++) {
		c.live = 0;
		c.found = 0;
		c.oldest = ~0ULL;
		bpf_loop(DECIDE_SLOTS, touch_scan, &c, 0);
		bpf_loop(DECIDE_SLOTS, touch_swap, &c, 0);
		if (c.done)
			return c.result;
	}
	decide_count(DECIDE_CONTENDED);
	return 0;
}

// Takes one decision from the cap's budget: at most `cap` in any sliding
// minute.
static __always_inline int cap_take(__u32 cap, __u64 now)
{
	__u32 zero = 0;
	struct cap_ring *ring;
	int granted = 0;

	if (cap == 0)
		return 1;
	if (cap > CAP_RING)
		cap = CAP_RING;
	ring = bpf_map_lookup_elem(&decide_cap, &zero);
	if (!ring)
		return 0;
	bpf_spin_lock(&ring->lock);
	__u32 at = ring->head;
	if (at >= cap)
		at = 0;
	// The oldest of the last `cap` decisions: within the minute, the
	// budget is spent.
	__u64 oldest = ring->at[at & (CAP_RING - 1)];
	if (oldest == 0 || oldest + MINUTE_NS <= now) {
		ring->at[at & (CAP_RING - 1)] = now;
		ring->head = at + 1;
		granted = 1;
	}
	bpf_spin_unlock(&ring->lock);
	return granted;
}

// Blocks the source of `ev` (the prefix when `whole`) until now + ttl,
// flagged as the kernel's, counting the probe that decided it as its
// first drop.
static __always_inline void block_source(const struct event *ev,
					 const struct track_key *key, int whole,
					 __u32 prefix6, __u64 now, __u64 ttl)
{
	struct block b = {
		.expiry = now + ttl,
		.packets = 1,
		.flags = BLOCK_KERNEL,
		.since = now,
	};

	if (ev->family == 4) {
		bpf_map_update_elem(&blocked4, ev->saddr, &b, BPF_ANY);
	} else if (whole) {
		struct lpm6 net = { .len = prefix6 };

		__builtin_memcpy(net.addr, key->src, 16);
		bpf_map_update_elem(&blocked_nets6, &net, &b, BPF_ANY);
	} else {
		bpf_map_update_elem(&blocked6, ev->saddr, &b, BPF_ANY);
	}
	count_drop(ev->family);
}

// Counts an inbound probe (a SYN, FIN, NULL or Xmas) toward its source's scan; returns 1
// when it makes the source a scanner and the source is now blocked (the
// caller drops the probe after reporting it).
static __always_inline int decide(const struct event *ev)
{
	__u32 zero = 0;
	struct decide_config *cfg = bpf_map_lookup_elem(&decide_config, &zero);
	struct track_key key = {};
	struct track *t;
	__u32 allow, count;
	__u64 now;

	if (!cfg || cfg->ports == 0 || cfg->ports >= DECIDE_SLOTS)
		return 0;
	// SYNs and stealth probes (FIN, NULL, Xmas) count alike, as they do
	// in userspace; a SYN+ACK is this host's own connection, and a bare
	// first fragment or a UDP probe is left to userspace.
	if (ev->kind != TCPW_SYN && ev->kind != TCPW_STEALTH)
		return 0;
	allow = allowed(ev);
	if (allow == ALLOW_ALL)
		return 0;

	key.family = ev->family;
	if (ev->family == 4) {
		__builtin_memcpy(key.src, ev->saddr, 4);
		__builtin_memcpy(key.dst, ev->daddr, 4);
	} else {
		for (int i = 0; i < 16; i++)
			key.src[i] = ev->saddr[i] & cfg->mask6[i];
		__builtin_memcpy(key.dst, ev->daddr, 16);
	}

	now = bpf_ktime_get_boot_ns();
	t = bpf_map_lookup_elem(&tracks, &key);
	if (!t) {
		struct track *zero_track = bpf_map_lookup_elem(&track_zero, &zero);

		if (!zero_track)
			return 0;
		// Another CPU may have made it meanwhile: either one is used.
		bpf_map_update_elem(&tracks, &key, zero_track, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&tracks, &key);
		if (!t)
			return 0;
	}
	if (t->last + cfg->window <= now) {
		// Quiet for a whole window: a new episode (the slots' times are
		// all out of the window by now).
		t->decided = 0;
		t->multi = 0;
		__builtin_memcpy(t->first, ev->saddr, 16);
	}
	t->last = now;
	if (ev->family == 6 && !t->multi) {
		for (int i = 0; i < 16; i++) {
			if (t->first[i] != ev->saddr[i]) {
				t->multi = 1;
				break;
			}
		}
	}

	count = touch(t, bpf_ntohs(ev->dport), now, cfg->window);
	if (count <= cfg->ports)
		return 0;
	// One decision per episode, on one CPU.
	if (__sync_val_compare_and_swap(&t->decided, 0, now) != 0)
		return 0;
	if (!cap_take(cfg->cap, now)) {
		decide_count(DECIDE_CAPPED);
		return 0;
	}
	block_source(ev, &key,
		     ev->family == 6 && cfg->prefix6 < 128 && t->multi && allow != ALLOW_HOLDS,
		     cfg->prefix6, now, cfg->ttl);
	decide_count(DECIDED);
	return 1;
}

#endif
