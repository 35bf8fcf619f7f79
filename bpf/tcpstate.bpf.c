// SPDX-License-Identifier: GPL-2.0
// tcpwatch tracepoint program: reports every new TCP connection of the host,
// in every network namespace, with the owner the kernel knows.
//
// Three programs, one job each:
//   tcpw_state  sock:inet_sock_set_state
//     CLOSE -> SYN_SENT      connect(): remember the owner (pid, comm) of the
//                            socket. The kernel enters SYN_SENT before it
//                            picks the source port (tcp_v4_connect: "sport may
//                            be zero"), so nothing is reported yet.
//     SYN_SENT -> any        the handshake ended (SYN-ACK, reset, close): report
//                            the outbound connection once, source port known.
//     SYN_RECV -> ESTABLISHED a listener's child socket completed the handshake:
//                            report the inbound connection, its owner being the
//                            listener's (recorded at listen()).
//     -> LISTEN / LISTEN -> CLOSE  record / forget a listener's owner.
//   tcpw_synrtx tcp:tcp_retransmit_skb: a SYN_SENT socket retransmits its SYN
//               (no answer within the initial RTO, 1 s): report the outbound
//               connection now rather than when it gives up.
//   tcpw_reset  tcp:tcp_send_reset: a SYN that found no socket (a closed port)
//               was answered with a reset: report it as a probe.
//
// Each outbound connection is reported exactly once: whichever of tcpw_state
// and tcpw_synrtx deletes the socket from `connecting` first reports it. An
// outbound connection routed over the loopback device has its other end in
// the same network namespace: that end (the listener's child) reports it, so
// a connection inside one namespace is one record, as it is one row pair of
// that namespace's socket table.
//
// With `filter_netns` set, only the namespaces in `netns_filter` are reported.
// Records go through the `events` ring buffer; a full ring buffer is counted
// in `lost`. The record layout is bpf/tcpstate.h, shared with userspace.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "vmlinux_tcpstate.h"
#include "tcpstate.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

// include/net/tcp_states.h
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

// include/uapi/linux/if.h
#define IFF_LOOPBACK 0x8

// The TCP flags byte is the 14th byte of the header.
#define TCP_FLAGS_OFFSET 13
#define F_RST 0x04
#define F_SYN 0x02
#define F_ACK 0x10

// The value of SK_RST_REASON_NO_SOCKET on the running kernel; the loader sets
// it from the tcp_send_reset format file.
volatile const __u32 no_socket_reason = 1;

// 1: report only the network namespaces (inodes) in `netns_filter`.
volatile const __u8 filter_netns = 0;

// Never read: puts the record type into the object's BTF (a ring buffer has
// no value type), where a test compares its layout with the Rust side's.
volatile const struct tcpstate_record tcpstate_record_layout;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

// The network namespaces to report when `filter_netns` is set; the loader
// sizes it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u8);
} netns_filter SEC(".maps");

// Index 0: records dropped because the ring buffer was full.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

// Sockets between CLOSE -> SYN_SENT and the report, by address.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tcpstate_owner);
} connecting SEC(".maps");

// Listening sockets' owners, by namespace and bound address (all zeros for a
// wildcard bind). Userspace adds the listeners that predate the program.

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcpstate_listener);
	__type(value, struct tcpstate_owner);
} listeners SEC(".maps");

static __always_inline __u64 sock_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline __u64 sock_cgroup(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

// Whether the socket's route leaves through the loopback device.
static __always_inline int over_loopback(const struct sock *sk)
{
	return (BPF_CORE_READ(sk, sk_dst_cache, dev, flags) & IFF_LOOPBACK) != 0;
}

static __always_inline void current_owner(struct tcpstate_owner *o)
{
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->simultaneous = 0;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

// The addresses of a tracepoint record with the usual sock fields.
struct tuple {
	__u16 family;	// AF_INET or AF_INET6
	__u16 sport;
	__u16 dport;
	const void *saddr4;
	const void *daddr4;
	const void *saddr6;
	const void *daddr6;
};

#define TUPLE_OF(ctx)                                                  \
	((struct tuple){                                               \
		.family = (ctx)->family,                               \
		.sport = (ctx)->sport,                                 \
		.dport = (ctx)->dport,                                 \
		.saddr4 = (ctx)->saddr,                                \
		.daddr4 = (ctx)->daddr,                                \
		.saddr6 = (ctx)->saddr_v6,                             \
		.daddr6 = (ctx)->daddr_v6,                             \
	})

static __always_inline int watched(__u64 netns)
{
	return !filter_netns || bpf_map_lookup_elem(&netns_filter, &netns) != NULL;
}

// Reserves a record and fills what every kind has; NULL when the namespace
// is not watched, or (counted) when the ring buffer is full.
static __always_inline struct tcpstate_record *reserve(__u8 kind, __u64 netns)
{
	if (!watched(netns))
		return NULL;
	struct tcpstate_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		__u32 zero = 0;
		__u64 *count = bpf_map_lookup_elem(&lost, &zero);
		if (count)
			*count += 1;
		return NULL;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->ktime_ns = bpf_ktime_get_ns();
	r->kind = kind;
	r->netns = netns;
	return r;
}

// Local = the tracepoint's source (the socket's own end).
static __always_inline void set_tuple(struct tcpstate_record *r, const struct tuple *t)
{
	r->local_port = t->sport;
	r->remote_port = t->dport;
	if (t->family == AF_INET6) {
		r->family = 6;
		bpf_probe_read_kernel(r->local_addr, 16, t->saddr6);
		bpf_probe_read_kernel(r->remote_addr, 16, t->daddr6);
	} else {
		r->family = 4;
		bpf_probe_read_kernel(r->local_addr, 4, t->saddr4);
		bpf_probe_read_kernel(r->remote_addr, 4, t->daddr4);
	}
}

static __always_inline void set_owner(struct tcpstate_record *r, const struct tcpstate_owner *o,
				      __u64 sk_cgroup)
{
	if (o && o->pid) {
		r->pid = o->pid;
		__builtin_memcpy(r->comm, o->comm, sizeof(r->comm));
		r->owner |= TCPSTATE_OWNER_PID;
	}
	// The socket's cgroup is the truth; the owner's (taken at connect or
	// listen) stands in when the socket's cannot be read.
	r->cgroup_id = sk_cgroup ? sk_cgroup : (o ? o->cgroup_id : 0);
	if (r->cgroup_id)
		r->owner |= TCPSTATE_OWNER_CGROUP;
}

// Reports the outbound connection of `sk` if it is still waiting in
// `connecting` (this caller removed it: nobody else reports it).
static __always_inline void report_outbound(const struct sock *sk, const struct tuple *t,
					    int simultaneous)
{
	__u64 key = (__u64)sk;
	struct tcpstate_owner *found = bpf_map_lookup_elem(&connecting, &key);
	if (!found)
		return;
	struct tcpstate_owner owner = *found;
	if (owner.simultaneous || bpf_map_delete_elem(&connecting, &key) != 0)
		return;
	if (simultaneous) {
		// SYN_SENT -> SYN_RECV: this socket will reach ESTABLISHED from
		// SYN_RECV like a listener's child; mark it so it is not reported
		// again as inbound.
		struct tcpstate_owner mark = owner;
		mark.simultaneous = 1;
		bpf_map_update_elem(&connecting, &key, &mark, BPF_ANY);
	}
	// No source port: connect() failed before a SYN was sent.
	if (t->sport == 0)
		return;
	// Routed over loopback: the peer is a socket of this namespace, whose
	// listener's child reports the connection (a socket connected to
	// itself has no such child: it is reported here).
	if (!simultaneous && over_loopback(sk))
		return;
	struct tcpstate_record *r = reserve(TCPSTATE_KIND_OUTBOUND, sock_netns(sk));
	if (!r)
		return;
	set_tuple(r, t);
	set_owner(r, &owner, sock_cgroup(sk));
	// write_seq is ISN + 1 once the SYN is queued, and nothing else is
	// queued before the handshake ends.
	r->isn = BPF_CORE_READ((struct tcp_sock *)sk, write_seq) - 1;
	bpf_ringbuf_submit(r, 0);
}

static __always_inline void listener_key_of(struct tcpstate_listener *k, const struct sock *sk,
					    const struct tuple *t)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = sock_netns(sk);
	k->port = t->sport;
	if (t->family == AF_INET6) {
		k->family = 6;
		bpf_probe_read_kernel(k->addr, 16, t->saddr6);
	} else {
		k->family = 4;
		bpf_probe_read_kernel(k->addr, 4, t->saddr4);
	}
}

static __always_inline void listen_started(const struct sock *sk, const struct tuple *t)
{
	struct tcpstate_listener key;
	struct tcpstate_owner owner;
	listener_key_of(&key, sk, t);
	current_owner(&owner);
	// Another process listening on the same address (SO_REUSEPORT): the
	// owner is ambiguous, so it is left unknown rather than guessed.
	struct tcpstate_owner *old = bpf_map_lookup_elem(&listeners, &key);
	if (old && old->pid != owner.pid) {
		owner.pid = 0;
		__builtin_memset(owner.comm, 0, sizeof(owner.comm));
		if (old->cgroup_id != owner.cgroup_id)
			owner.cgroup_id = 0;
	}
	bpf_map_update_elem(&listeners, &key, &owner, BPF_ANY);
}

static __always_inline void listen_stopped(const struct sock *sk, const struct tuple *t)
{
	struct tcpstate_listener key;
	listener_key_of(&key, sk, t);
	bpf_map_delete_elem(&listeners, &key);
}

static __always_inline void report_inbound(const struct sock *sk, const struct tuple *t)
{
	__u64 sk_key = (__u64)sk;
	struct tcpstate_owner *mark = bpf_map_lookup_elem(&connecting, &sk_key);
	if (mark && mark->simultaneous) {
		bpf_map_delete_elem(&connecting, &sk_key);
		return;
	}
	// The listener bound to the child's local address, else the wildcard.
	struct tcpstate_listener key;
	listener_key_of(&key, sk, t);
	struct tcpstate_owner *owner = bpf_map_lookup_elem(&listeners, &key);
	if (!owner) {
		__builtin_memset(key.addr, 0, sizeof(key.addr));
		owner = bpf_map_lookup_elem(&listeners, &key);
	}
	struct tcpstate_record *r = reserve(TCPSTATE_KIND_INBOUND, key.netns);
	if (!r)
		return;
	set_tuple(r, t);
	set_owner(r, owner, sock_cgroup(sk));
	// The child's rcv_nxt is the client's ISN + 1 until data is queued,
	// which happens after this state change.
	r->isn = BPF_CORE_READ((struct tcp_sock *)sk, rcv_nxt) - 1;
	bpf_ringbuf_submit(r, 0);
}

SEC("tracepoint/sock/inet_sock_set_state")
int tcpw_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	const struct sock *sk = ctx->skaddr;
	int old = ctx->oldstate;
	int new = ctx->newstate;
	struct tuple t = TUPLE_OF(ctx);

	if (old == TCP_CLOSE && new == TCP_SYN_SENT) {
		struct tcpstate_owner owner;
		__u64 key = (__u64)sk;
		current_owner(&owner);
		bpf_map_update_elem(&connecting, &key, &owner, BPF_ANY);
	} else if (old == TCP_SYN_SENT) {
		report_outbound(sk, &t, new == TCP_SYN_RECV);
	} else if (old == TCP_SYN_RECV && new == TCP_ESTABLISHED) {
		report_inbound(sk, &t);
	} else if (new == TCP_LISTEN) {
		listen_started(sk, &t);
	} else if (old == TCP_LISTEN && new == TCP_CLOSE) {
		listen_stopped(sk, &t);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcpw_synrtx(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	if (ctx->state != TCP_SYN_SENT)
		return 0;
	struct tuple t = TUPLE_OF(ctx);
	report_outbound(ctx->skaddr, &t, 0);
	return 0;
}

// struct sockaddr_in / sockaddr_in6 as the tracepoint stores them.
#define SA_FAMILY 0
#define SA_PORT 2
#define SA_IN_ADDR 4
#define SA_IN6_ADDR 8

SEC("tracepoint/tcp/tcp_send_reset")
int tcpw_reset(struct trace_event_raw_tcp_send_reset *ctx)
{
	if (ctx->skaddr || ctx->reason != no_socket_reason)
		return 0;
	const struct sk_buff *skb = ctx->skbaddr;
	const unsigned char *th = BPF_CORE_READ(skb, data);
	__u8 flags = 0;
	if (!th || bpf_probe_read_kernel(&flags, 1, th + TCP_FLAGS_OFFSET) != 0)
		return 0;
	if ((flags & (F_SYN | F_ACK | F_RST)) != F_SYN)
		return 0;

	// The tracepoint reverses the segment's addresses: saddr is the reset's
	// source, the closed port of this host; daddr is the prober.
	__u8 local[28] __attribute__((aligned(8)));
	__u8 remote[28] __attribute__((aligned(8)));
	bpf_probe_read_kernel(local, sizeof(local), ctx->saddr);
	bpf_probe_read_kernel(remote, sizeof(remote), ctx->daddr);
	__u16 family = *(__u16 *)&local[SA_FAMILY];
	if (family != AF_INET && family != AF_INET6)
		return 0;

	struct tcpstate_record *r =
		reserve(TCPSTATE_KIND_RESET_PROBE, BPF_CORE_READ(skb, dev, nd_net.net, ns.inum));
	if (!r)
		return 0;
	r->local_port = bpf_ntohs(*(__be16 *)&local[SA_PORT]);
	r->remote_port = bpf_ntohs(*(__be16 *)&remote[SA_PORT]);
	if (family == AF_INET6) {
		r->family = 6;
		__builtin_memcpy(r->local_addr, &local[SA_IN6_ADDR], 16);
		__builtin_memcpy(r->remote_addr, &remote[SA_IN6_ADDR], 16);
	} else {
		r->family = 4;
		__builtin_memcpy(r->local_addr, &local[SA_IN_ADDR], 4);
		__builtin_memcpy(r->remote_addr, &remote[SA_IN_ADDR], 4);
	}
	bpf_ringbuf_submit(r, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
