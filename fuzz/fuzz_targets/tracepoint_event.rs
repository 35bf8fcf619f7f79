//! Fuzzes the decoder of the tracepoint program's ring-buffer records
//! (`struct tcpstate_record` of bpf/tcpstate.h).
//!
//! Besides "never panics", it checks:
//!
//! - exactly `RECORD_LEN` bytes are accepted; any other length is the
//!   `Length` error with that length;
//! - a record of the right length is refused exactly when its family byte
//!   is not 4 or 6 (`Family`, checked first) or its kind is not one of the
//!   three kinds (`Kind`), naming the byte;
//! - a decoded record agrees with the bytes: the direction follows the kind,
//!   the initiator is the local end only for an outbound connection, ports
//!   are the record's, owner fields appear only when their owner bit is set
//!   and they are not zero, a zero namespace is absent, an IPv4 record has
//!   IPv4 ends and an IPv6 one IPv4 ends only when both are IPv4-mapped;
//! - a decoded record, written back through the generated struct's offsets,
//!   decodes to the same record;
//! - error messages are one line.
#![no_main]

use core::mem::offset_of;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tcpwatch::event::Direction;
use tcpwatch::bpf::tcpstate::{
    decode, BadRecord, Kind, RawRecord, Record, RECORD_LEN, TCPSTATE_KIND_INBOUND,
    TCPSTATE_KIND_OUTBOUND, TCPSTATE_KIND_RESET_PROBE, TCPSTATE_OWNER_CGROUP, TCPSTATE_OWNER_PID,
};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(record) => {
            assert_eq!(data.len(), RECORD_LEN);
            check_fields(data, &record);
            // A command name that was not UTF-8 comes back with replacement
            // characters; when that made it longer than the field, it
            // cannot be written back.
            if record.comm.as_ref().is_none_or(|c| c.len() <= 16) {
                let encoded = encode(&record, data[offset_of!(RawRecord, kind)]);
                assert_eq!(decode(&encoded).as_ref(), Ok(&record));
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            assert_eq!(e, expected_error(data));
        }
    }
});

fn kinds() -> [u64; 3] {
    [
        TCPSTATE_KIND_OUTBOUND,
        TCPSTATE_KIND_INBOUND,
        TCPSTATE_KIND_RESET_PROBE,
    ]
}

fn expected_error(data: &[u8]) -> BadRecord {
    if data.len() != RECORD_LEN {
        return BadRecord::Length(data.len());
    }
    let family = data[offset_of!(RawRecord, family)];
    let kind = data[offset_of!(RawRecord, kind)];
    if !matches!(family, 4 | 6) {
        return BadRecord::Family(family);
    }
    assert!(
        !kinds().contains(&u64::from(kind)),
        "a valid record was refused: {data:02x?}"
    );
    BadRecord::Kind(kind)
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(data[at..at + 4].try_into().unwrap())
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(data[at..at + 8].try_into().unwrap())
}

fn check_fields(data: &[u8], r: &Record) {
    let kind = u64::from(data[offset_of!(RawRecord, kind)]);
    let (local, remote) = match r.conn.direction {
        Direction::Outbound => (r.conn.initiator, r.conn.acceptor),
        Direction::Inbound => (r.conn.acceptor, r.conn.initiator),
    };
    assert_eq!(
        r.conn.direction == Direction::Outbound,
        kind == TCPSTATE_KIND_OUTBOUND
    );
    assert_eq!(r.kind == Kind::ResetProbe, kind == TCPSTATE_KIND_RESET_PROBE);
    assert_eq!(local.port(), u16_at(data, offset_of!(RawRecord, local_port)));
    assert_eq!(remote.port(), u16_at(data, offset_of!(RawRecord, remote_port)));
    assert_eq!(local.is_ipv4(), remote.is_ipv4());
    let family = data[offset_of!(RawRecord, family)];
    if family == 4 {
        assert!(local.is_ipv4());
    }
    let owner = u64::from(data[offset_of!(RawRecord, owner)]);
    let pid = u32_at(data, offset_of!(RawRecord, pid));
    let cgroup = u64_at(data, offset_of!(RawRecord, cgroup_id));
    let netns = u64_at(data, offset_of!(RawRecord, netns));
    let has_pid = owner & TCPSTATE_OWNER_PID != 0;
    assert_eq!(r.pid, (has_pid && pid != 0).then_some(pid));
    assert_eq!(
        r.cgroup_id,
        (owner & TCPSTATE_OWNER_CGROUP != 0 && cgroup != 0).then_some(cgroup)
    );
    assert_eq!(r.netns, (netns != 0).then_some(netns));
    if !has_pid {
        assert_eq!(r.comm, None);
    }
    if let Some(comm) = &r.comm {
        assert!(!comm.is_empty() && !comm.contains('\0'));
    }
    assert_eq!(r.kernel_ns, u64_at(data, offset_of!(RawRecord, ktime_ns)));
    assert_eq!(r.isn, u32_at(data, offset_of!(RawRecord, isn)));
}

/// `struct tcpstate_record` as the program would write `r`.
fn encode(r: &Record, kind: u8) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
    let (local, remote): (SocketAddr, SocketAddr) = match r.conn.direction {
        Direction::Outbound => (r.conn.initiator, r.conn.acceptor),
        Direction::Inbound => (r.conn.acceptor, r.conn.initiator),
    };
    let family = if local.is_ipv4() { 4u8 } else { 6 };
    put(offset_of!(RawRecord, family), &[family]);
    put(offset_of!(RawRecord, kind), &[kind]);
    for (at, ip) in [
        (offset_of!(RawRecord, local_addr), local.ip()),
        (offset_of!(RawRecord, remote_addr), remote.ip()),
    ] {
        match ip {
            IpAddr::V4(v4) => put(at, &v4.octets()),
            IpAddr::V6(v6) => put(at, &v6.octets()),
        }
    }
    put(offset_of!(RawRecord, local_port), &local.port().to_ne_bytes());
    put(offset_of!(RawRecord, remote_port), &remote.port().to_ne_bytes());
    put(offset_of!(RawRecord, ktime_ns), &r.kernel_ns.to_ne_bytes());
    put(offset_of!(RawRecord, isn), &r.isn.to_ne_bytes());
    put(offset_of!(RawRecord, netns), &r.netns.unwrap_or(0).to_ne_bytes());
    let mut owner = 0u8;
    if let Some(cgroup) = r.cgroup_id {
        owner |= TCPSTATE_OWNER_CGROUP as u8;
        put(offset_of!(RawRecord, cgroup_id), &cgroup.to_ne_bytes());
    }
    if let Some(pid) = r.pid {
        owner |= TCPSTATE_OWNER_PID as u8;
        put(offset_of!(RawRecord, pid), &pid.to_ne_bytes());
    }
    if let Some(comm) = &r.comm {
        owner |= TCPSTATE_OWNER_PID as u8;
        put(offset_of!(RawRecord, comm), comm.as_bytes());
    }
    put(offset_of!(RawRecord, owner), &[owner]);
    out
}
