//! From what frames show ([`Seen`]) to observations: a SYN is a connection
//! attempt, a FIN/NULL/Xmas segment or a UDP probe (known by the port
//! unreachable this host answered it with) is a probe, and the first
//! fragment of a TCP packet is held until the fragment with its flags
//! comes, so that a fragmented SYN prints its line like a whole one.
//!
//! A first fragment whose flags never come (within [`FRAGMENT_WAIT`], or
//! pushed out of the [`FRAGMENTS`] held at most) still counts towards a
//! scan of its port, as a probe without a line. Pure: time is given.

use super::frame::{FragmentKey, Seen};
use crate::clock::Stamp;
use crate::event::{Connection, Direction, Observation, ScanKind};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long a first fragment waits for the fragment with its flags.
/// Scanners send a packet's fragments back to back.
pub const FRAGMENT_WAIT: Duration = Duration::from_secs(1);

/// First fragments held at most; past that the oldest is counted at once
/// as a probe without flags. Bounded: a flood of first fragments from
/// random sources must not grow the source.
pub const FRAGMENTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Pending {
    at: Stamp,
    src: SocketAddr,
    dst: SocketAddr,
    isn: u32,
    flags_at: u32,
}

/// Which addresses are this host's. Offline (`replay`) every destination
/// is.
pub trait Local {
    fn is_local(&self, ip: IpAddr) -> bool;
}

impl<F: Fn(IpAddr) -> bool> Local for F {
    fn is_local(&self, ip: IpAddr) -> bool {
        self(ip)
    }
}

/// Turns frames into observations; holds first fragments.
#[derive(Debug, Default)]
pub struct Probes {
    pending: HashMap<FragmentKey, Pending>,
    /// The earliest time any pending fragment may expire: nothing to do
    /// before it.
    next_expiry: Option<Duration>,
}

impl Probes {
    pub fn new() -> Self {
        Self::default()
    }

    /// First fragments waiting for their flags.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The observations `seen` (stamped `at`) gives, handed to `out`; first
    /// fragments that waited long enough come out too.
    pub fn frame(
        &mut self,
        at: Stamp,
        seen: Seen,
        local: &impl Local,
        out: &mut impl FnMut(Observation),
    ) {
        self.expire(at.mono, local, out);
        match seen {
            Seen::Tcp {
                src,
                dst,
                isn,
                kind,
            } => observe_tcp(at, src, dst, isn, Some(kind), local, out),
            Seen::FirstFragment {
                key,
                src,
                dst,
                isn,
                flags_at,
            } => {
                if self.pending.len() >= FRAGMENTS && !self.pending.contains_key(&key) {
                    self.evict_oldest(local, out);
                }
                let pending = Pending {
                    at,
                    src,
                    dst,
                    isn,
                    flags_at,
                };
                if let Some(old) = self.pending.insert(key, pending) {
                    // The same packet's first fragment again: a
                    // retransmission, or a new packet reusing the ID.
                    observe_tcp(old.at, old.src, old.dst, old.isn, None, local, out);
                }
                let due = at.mono + FRAGMENT_WAIT;
                self.next_expiry = Some(self.next_expiry.map_or(due, |d| d.min(due)));
            }
            Seen::LaterFragment {
                key,
                offset,
                len,
                bytes,
            } => {
                let Some(first) = self.pending.get(&key) else {
                    return;
                };
                let Some(flags) = Seen::flags_from(offset, len, &bytes, first.flags_at) else {
                    return;
                };
                let first = self.pending.remove(&key).expect("looked up above");
                // Ordinary flags (ACK, RST): a fragmented segment of some
                // connection, nothing to count.
                if let Some(kind) = ScanKind::of_tcp(flags) {
                    observe_tcp(
                        first.at,
                        first.src,
                        first.dst,
                        first.isn,
                        Some(kind),
                        local,
                        out,
                    );
                }
            }
            Seen::UdpProbe { from, src, dst } => {
                // Our own answer to a probe of one of our ports.
                if local.is_local(from) && local.is_local(dst.ip()) {
                    out(Observation::Probe {
                        at,
                        remote: src,
                        local: dst,
                        kind: ScanKind::Udp,
                    });
                }
            }
        }
    }

    /// Counts the first fragments that waited [`FRAGMENT_WAIT`] by `now`
    /// without their flags.
    pub fn expire(&mut self, now: Duration, local: &impl Local, out: &mut impl FnMut(Observation)) {
        if self.next_expiry.is_none_or(|due| now < due) {
            return;
        }
        let mut expired: Vec<(FragmentKey, Pending)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.at.mono + FRAGMENT_WAIT <= now)
            .map(|(k, p)| (*k, *p))
            .collect();
        // Oldest first, and the same order on every run.
        expired.sort_by_key(|(k, p)| order(k, p));
        for (key, p) in expired {
            self.pending.remove(&key);
            observe_tcp(p.at, p.src, p.dst, p.isn, None, local, out);
        }
        self.next_expiry = self
            .pending
            .values()
            .map(|p| p.at.mono + FRAGMENT_WAIT)
            .min();
    }

    /// Counts every first fragment still waiting (the end of a replay).
    pub fn flush(&mut self, local: &impl Local, out: &mut impl FnMut(Observation)) {
        self.expire(Duration::MAX, local, out);
    }

    fn evict_oldest(&mut self, local: &impl Local, out: &mut impl FnMut(Observation)) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(k, p)| order(k, p))
            .map(|(k, _)| *k);
        if let Some(key) = oldest {
            let p = self.pending.remove(&key).expect("found above");
            observe_tcp(p.at, p.src, p.dst, p.isn, None, local, out);
        }
    }
}

/// A total order of pending fragments, oldest first, for output that is
/// the same on every run.
fn order(key: &FragmentKey, p: &Pending) -> (Duration, IpAddr, IpAddr, u32) {
    (p.at.mono, key.src, key.dst, key.id)
}

/// A TCP probe's observation: `kind` `None` when its flags are unknown (a
/// first fragment alone), which counts like a SYN without a line.
fn observe_tcp(
    at: Stamp,
    src: SocketAddr,
    dst: SocketAddr,
    isn: u32,
    kind: Option<ScanKind>,
    local: &impl Local,
    out: &mut impl FnMut(Observation),
) {
    match kind {
        Some(ScanKind::Syn) => {
            let direction = if local.is_local(dst.ip()) {
                Direction::Inbound
            } else if local.is_local(src.ip()) {
                Direction::Outbound
            } else {
                return;
            };
            let conn = Connection {
                initiator: src,
                acceptor: dst,
                direction,
            };
            out(Observation::Attempt {
                at,
                conn,
                isn,
                owner: None,
            });
        }
        // Only probes of this host count.
        _ if !local.is_local(dst.ip()) => {}
        kind => out(Observation::Probe {
            at,
            remote: src.ip(),
            local: dst,
            kind: kind.unwrap_or(ScanKind::Syn),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::craft::*;
    use super::super::frame::{parse, Link};
    use super::*;

    const SCANNER: [u8; 4] = [192, 0, 2, 56];
    const HOST: [u8; 4] = [10, 0, 0, 5];

    fn stamp(ms: u64) -> Stamp {
        Stamp {
            wall: chrono::DateTime::from_timestamp(1_600_000_000, 0)
                .unwrap()
                .with_timezone(&chrono::Local),
            mono: Duration::from_millis(ms),
        }
    }

    fn host(ip: IpAddr) -> bool {
        ip == IpAddr::from(HOST) || ip == "fd00::5".parse::<IpAddr>().unwrap()
    }

    /// What `packets` (raw IP, at the given milliseconds) give, with the
    /// fragments still waiting at the end counted too when `flush`.
    fn run(packets: &[(u64, Vec<u8>)], flush: bool) -> Vec<Observation> {
        let mut probes = Probes::new();
        let mut out = Vec::new();
        for (ms, packet) in packets {
            if let Some(seen) = parse(Link::RawIp, packet) {
                probes.frame(stamp(*ms), seen, &host, &mut |o| out.push(o));
            }
        }
        if flush {
            probes.flush(&host, &mut |o| out.push(o));
        }
        out
    }

    fn described(observations: &[Observation]) -> Vec<String> {
        observations
            .iter()
            .map(|o| match o {
                Observation::Attempt { at, conn, .. } => format!(
                    "{} attempt {} -> {} {:?}",
                    at.mono.as_millis(),
                    conn.initiator,
                    conn.acceptor,
                    conn.direction
                ),
                Observation::Probe {
                    at,
                    remote,
                    local,
                    kind,
                } => format!("{} probe {remote} -> {local} {kind:?}", at.mono.as_millis()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn stealth_probes_of_this_host_count_and_others_do_not() {
        let packets = vec![
            (0, ipv4(SCANNER, HOST, &tcp(40000, 21, FIN, 1))),
            (1, ipv4(SCANNER, HOST, &tcp(40000, 22, 0, 1))),
            (2, ipv4(SCANNER, HOST, &tcp(40000, 23, FIN | PSH | URG, 1))),
            // Our own FIN scan of someone else, and transit traffic.
            (3, ipv4(HOST, SCANNER, &tcp(40000, 24, FIN, 1))),
            (4, ipv4(SCANNER, [10, 0, 0, 9], &tcp(40000, 25, FIN, 1))),
        ];
        assert_eq!(
            described(&run(&packets, true)),
            [
                "0 probe 192.0.2.56 -> 10.0.0.5:21 Fin",
                "1 probe 192.0.2.56 -> 10.0.0.5:22 Null",
                "2 probe 192.0.2.56 -> 10.0.0.5:23 Xmas",
            ]
        );
    }

    #[test]
    fn syns_are_attempts_both_ways() {
        let packets = vec![
            (0, ipv4(SCANNER, HOST, &tcp(40000, 80, SYN, 1))),
            (1, ipv4(HOST, SCANNER, &tcp(50000, 443, SYN, 1))),
            (2, ipv4(SCANNER, [10, 0, 0, 9], &tcp(40000, 80, SYN, 1))),
        ];
        assert_eq!(
            described(&run(&packets, true)),
            [
                "0 attempt 192.0.2.56:40000 -> 10.0.0.5:80 Inbound",
                "1 attempt 10.0.0.5:50000 -> 192.0.2.56:443 Outbound",
            ]
        );
    }

    #[test]
    fn a_fragmented_syn_is_an_attempt_stamped_at_its_first_fragment() {
        let segment = tcp(40000, 22, SYN, 5);
        let pieces = ipv4_fragments(SCANNER, HOST, 7, &segment, 8);
        let packets: Vec<_> = pieces
            .into_iter()
            .enumerate()
            .map(|(i, p)| (10 + i as u64, p))
            .collect();
        assert_eq!(
            described(&run(&packets, false)),
            ["10 attempt 192.0.2.56:40000 -> 10.0.0.5:22 Inbound"]
        );
        // The flags fragment first (reordered): the first fragment waits,
        // then counts without its flags.
        let mut reordered = packets.clone();
        reordered.swap(0, 1);
        assert_eq!(
            described(&run(&reordered, true)),
            ["10 probe 192.0.2.56 -> 10.0.0.5:22 Syn"]
        );
    }

    #[test]
    fn fragmented_stealth_probes_keep_their_kind_and_fragmented_acks_do_not_count() {
        for (flags, want) in [
            (FIN, vec!["0 probe 192.0.2.56 -> 10.0.0.5:22 Fin"]),
            (ACK | PSH, vec![]),
        ] {
            let segment = tcp(40000, 22, flags, 5);
            let packets: Vec<_> = ipv4_fragments(SCANNER, HOST, 7, &segment, 8)
                .into_iter()
                .map(|p| (0, p))
                .collect();
            assert_eq!(described(&run(&packets, true)), want, "{flags:#x}");
        }
    }

    #[test]
    fn a_first_fragment_alone_counts_once_it_has_waited() {
        let segment = tcp(40000, 22, SYN, 5);
        let first = ipv4_fragments(SCANNER, HOST, 7, &segment, 8).remove(0);
        let mut probes = Probes::new();
        let mut out = Vec::new();
        let seen = parse(Link::RawIp, &first).unwrap();
        probes.frame(stamp(0), seen, &host, &mut |o| out.push(o));
        probes.expire(Duration::from_millis(999), &host, &mut |o| out.push(o));
        assert!(out.is_empty());
        assert_eq!(probes.pending(), 1);
        probes.expire(Duration::from_millis(1000), &host, &mut |o| out.push(o));
        assert_eq!(described(&out), ["0 probe 192.0.2.56 -> 10.0.0.5:22 Syn"]);
        assert_eq!(probes.pending(), 0);
    }

    #[test]
    fn first_fragments_held_are_bounded() {
        let mut probes = Probes::new();
        let mut out = Vec::new();
        let segment = tcp(40000, 22, SYN, 5);
        for id in 0..=FRAGMENTS as u16 {
            let first = ipv4_fragments(SCANNER, HOST, id, &segment, 8).remove(0);
            let seen = parse(Link::RawIp, &first).unwrap();
            probes.frame(stamp(0), seen, &host, &mut |o| out.push(o));
        }
        assert_eq!(probes.pending(), FRAGMENTS);
        // The oldest was counted (without its flags) to make room.
        assert_eq!(described(&out), ["0 probe 192.0.2.56 -> 10.0.0.5:22 Syn"]);
    }

    #[test]
    fn ipv6_fragments_and_extension_headers() {
        let segment = tcp(40000, 443, SYN, 5);
        let first = ipv6_fragment_header(6, 0, true, 42, &segment[..8]);
        let later = ipv6_fragment_header(6, 8, false, 42, &segment[8..]);
        let packets = vec![
            (0, ipv6_next("2001:db8::7", "fd00::5", 44, &first)),
            (0, ipv6_next("2001:db8::7", "fd00::5", 44, &later)),
            (
                1,
                ipv6_next(
                    "2001:db8::7",
                    "fd00::5",
                    0,
                    &ipv6_extension(6, &tcp(1, 2, FIN, 0)),
                ),
            ),
        ];
        assert_eq!(
            described(&run(&packets, true)),
            [
                "0 attempt [2001:db8::7]:40000 -> [fd00::5]:443 Inbound",
                "1 probe 2001:db8::7 -> [fd00::5]:2 Fin",
            ]
        );
    }

    #[test]
    fn our_port_unreachables_are_udp_probes_others_are_not() {
        let probe = ipv4_full(SCANNER, HOST, 17, 0, 1, 0, &udp(5000, 161, b""));
        let ours = icmp4_unreachable(HOST, SCANNER, &probe);
        // An answer we received to our own probe of someone else.
        let theirs = icmp4_unreachable(
            SCANNER,
            HOST,
            &ipv4_full(HOST, SCANNER, 17, 0, 1, 0, &udp(5000, 53, b"")),
        );
        let probe6 = ipv6_next("2001:db8::7", "fd00::5", 17, &udp(5000, 500, b""));
        let ours6 = icmp6_unreachable("fd00::5", "2001:db8::7", &probe6);
        let packets = vec![(0, ours), (1, theirs), (2, ours6)];
        assert_eq!(
            described(&run(&packets, true)),
            [
                "0 probe 192.0.2.56 -> 10.0.0.5:161 Udp",
                "2 probe 2001:db8::7 -> [fd00::5]:500 Udp",
            ]
        );
    }
}
