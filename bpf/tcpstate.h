// SPDX-License-Identifier: GPL-2.0
// What bpf/tcpstate.bpf.c shares with userspace: its ring-buffer record and
// the key and value of its listener map. build.rs reads this file and
// generates the Rust `#[repr(C)]` twins of these structs and the
// `TCPSTATE_*` constants from it (src/bpf/tcpstate.rs includes them), so no
// offset is written down twice. The generator (build/record.rs) accepts only
// what it understands: `#define TCPSTATE_<NAME> <integer>` lines and struct
// fields, each `__u8|__u16|__u32|__u64 name;` or `__u8 name[N];`. Fields are
// ordered so that neither compiler inserts padding (the generator checks
// that too).
#ifndef TCPSTATE_H
#define TCPSTATE_H

// What a record reports.
#define TCPSTATE_KIND_OUTBOUND 1	// this host's socket connected out (local = initiator)
#define TCPSTATE_KIND_INBOUND 2		// a listener accepted a connection (remote = initiator)
#define TCPSTATE_KIND_RESET_PROBE 3	// a SYN to a closed port was answered with a reset (remote = initiator)

// Which parts of the owner the record carries.
#define TCPSTATE_OWNER_PID 1		// pid and comm are the owner's
#define TCPSTATE_OWNER_CGROUP 2		// cgroup_id is the socket's cgroup (v2)

struct tcpstate_record {
	__u64 ktime_ns;		// bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the event fired
	__u64 netns;		// inode of the socket's network namespace (0: unknown)
	__u64 cgroup_id;	// cgroup v2 id (the inode of its directory); see owner
	__u32 pid;		// owner's process id (tgid); see owner
	__u32 isn;		// the initiator's initial sequence number (0: reset probes)
	__u16 local_port;	// host byte order
	__u16 remote_port;	// host byte order
	__u8 local_addr[16];	// network byte order; IPv4 in the first 4 bytes
	__u8 remote_addr[16];	// IPv4-mapped IPv6 addresses are left as they are
	__u8 comm[16];		// owner's command name, NUL-padded; see owner
	__u8 kind;		// TCPSTATE_KIND_*
	__u8 family;		// 4 or 6
	__u8 owner;		// TCPSTATE_OWNER_* bits
	__u8 pad[1];
};

// The key of the `listeners` map: a listening socket's namespace and bound
// address (all zeros for a wildcard bind).
struct tcpstate_listener {
	__u64 netns;
	__u8 addr[16];		// network byte order; IPv4 in the first 4 bytes
	__u16 port;		// host byte order
	__u16 family;		// 4 or 6
	__u32 pad;
};

// The owner of a socket, taken in the process that called connect() or
// listen() (or named from /proc for a listener older than the program).
struct tcpstate_owner {
	__u64 cgroup_id;	// bpf_get_current_cgroup_id(); 0: unknown
	__u32 pid;		// tgid; 0: unknown (ambiguous)
	__u32 simultaneous;	// `connecting` only: a simultaneous open, not a child
	__u8 comm[16];
};

#endif
