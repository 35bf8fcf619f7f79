//! Parser and connection-table benchmarks.
//!
//! - `procfs/parse_table tcp 100k`: a synthetic 100,000-row `/proc/net/tcp`
//!   image, written exactly as the kernel writes it (rows padded to 149
//!   columns; established, time-wait and request-socket rows have their
//!   own trailing columns); target: under 20 ms.
//! - `procfs/parse_table tcp6 100k`: the same for `/proc/net/tcp6`, with a
//!   share of IPv4-mapped peers of dual-stack listeners.
//! - `connections/observe 20k steady`: `ConnectionTable::observe` on a
//!   20,000-socket table it has already seen (the steady state of a poll),
//!   its rows in another order each time so that the whole table is
//!   looked up; `observe 20k unchanged`, the same table again, which is
//!   skipped after one comparison.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tcpwatch::detect::connections::ConnectionTable;
use tcpwatch::event::{Socket, TcpState};
use tcpwatch::source::procfs::parse_table;

const HEADER4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const HEADER6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

/// xorshift64*: deterministic, so every run measures the same image.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A busy server: a few listeners, then mostly established inbound
/// connections to 443/80/22, time-wait rows, outbound connections to
/// backends, and some half-open and closing ones.
fn synthetic_sockets(n: usize, v6: bool, seed: u64) -> Vec<Socket> {
    let mut rng = Rng(seed);
    let host: IpAddr = if v6 {
        "2001:db8:0:1::5".parse().unwrap()
    } else {
        "10.0.0.5".parse().unwrap()
    };
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let mut sockets: Vec<Socket> = [22u16, 80, 443, 5432, 9472]
        .iter()
        .map(|&port| Socket {
            local: SocketAddr::new(any, port),
            remote: SocketAddr::new(any, 0),
            state: TcpState::Listen,
            inode: 10_000 + u64::from(port),
        })
        .collect();
    let mut inode = 100_000u64;
    while sockets.len() < n {
        let peer: IpAddr = if v6 && rng.below(4) != 0 {
            let mut octets = [0u8; 16];
            octets[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            octets[8..].copy_from_slice(&rng.next().to_be_bytes());
            Ipv6Addr::from(octets).into()
        } else {
            // IPv4 peers; in tcp6 these are clients of the dual-stack
            // listeners, printed as ::ffff:a.b.c.d and unmapped.
            Ipv4Addr::from((rng.next() as u32) | 0x0100_0000).into()
        };
        let local_ip = if peer.is_ipv4() && v6 {
            "10.0.0.5".parse().unwrap()
        } else {
            host
        };
        let ephemeral = 32_768 + rng.below(28_000) as u16;
        let (local, remote) = if rng.below(10) < 8 {
            let port = [443, 443, 443, 80, 22][rng.below(5) as usize];
            (
                SocketAddr::new(local_ip, port),
                SocketAddr::new(peer, ephemeral),
            )
        } else {
            let port = [5432, 6379, 443][rng.below(3) as usize];
            (
                SocketAddr::new(local_ip, ephemeral),
                SocketAddr::new(peer, port),
            )
        };
        let state = match rng.below(100) {
            0..=64 => TcpState::Established,
            65..=84 => TcpState::TimeWait,
            85..=89 => TcpState::SynRecv,
            90..=93 => TcpState::CloseWait,
            94..=96 => TcpState::FinWait2,
            97 => TcpState::FinWait1,
            98 => TcpState::LastAck,
            _ => TcpState::SynSent,
        };
        let inode = match state {
            TcpState::TimeWait | TcpState::SynRecv => 0,
            _ => {
                inode += 1;
                inode
            }
        };
        sockets.push(Socket {
            local,
            remote,
            state,
            inode,
        });
    }
    sockets
}

fn kernel_state(state: TcpState) -> u8 {
    (1..=12u8)
        .find(|&n| TcpState::from_kernel(n) == Some(state))
        .unwrap()
}

fn endpoint(out: &mut String, addr: SocketAddr, v6: bool) {
    let octets: Vec<u8> = match addr.ip() {
        IpAddr::V4(ip) if !v6 => ip.octets().to_vec(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    for word in octets.chunks_exact(4) {
        let value = u32::from_ne_bytes(word.try_into().unwrap());
        write!(out, "{value:08X}").unwrap();
    }
    write!(out, ":{:04X}", addr.port()).unwrap();
}

/// The table as `tcp4_seq_show`/`tcp6_seq_show` print it (pointers hashed).
fn render(sockets: &[Socket], v6: bool) -> String {
    let mut out = String::with_capacity(sockets.len() * 180);
    if v6 {
        writeln!(out, "{HEADER6}").unwrap();
    } else {
        writeln!(out, "{HEADER4:<149}").unwrap();
    }
    for (slot, s) in sockets.iter().enumerate() {
        let start = out.len();
        write!(out, "{slot:4}: ").unwrap();
        endpoint(&mut out, s.local, v6);
        out.push(' ');
        endpoint(&mut out, s.remote, v6);
        let st = kernel_state(s.state);
        let ptr = 0xffff_8881_0000_0000u64 + slot as u64 * 0x940;
        match s.state {
            TcpState::TimeWait => write!(
                out,
                " {st:02X} 00000000:00000000 03:{:08X} 00000000     0        0 0 3 {ptr:016x}",
                slot % 6000
            ),
            TcpState::SynRecv => write!(
                out,
                " {st:02X} 00000000:00000000 01:{:08X} 00000000     0        0 0 0 {ptr:016x}",
                slot % 200
            ),
            _ => write!(
                out,
                " {st:02X} 00000000:00000000 02:{:08X} 00000000  {:4}        0 {} 2 {ptr:016x} 20 4 30 10 -1",
                slot % 9000,
                if slot % 3 == 0 { 0 } else { 33 },
                s.inode
            ),
        }
        .unwrap();
        if !v6 {
            let width = out.len() - start;
            out.extend(std::iter::repeat_n(' ', 149usize.saturating_sub(width)));
        }
        out.push('\n');
    }
    out
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("procfs");
    for (name, v6, seed) in [("tcp", false, 1), ("tcp6", true, 2)] {
        let sockets = synthetic_sockets(100_000, v6, seed);
        let image = render(&sockets, v6);
        // The benchmark is only worth something if it parses everything.
        assert_eq!(parse_table(&image).unwrap(), sockets);
        group.throughput(Throughput::Bytes(image.len() as u64));
        group.bench_function(format!("parse_table {name} 100k"), |b| {
            b.iter(|| parse_table(black_box(&image)).unwrap())
        });
    }
    group.finish();
}

fn bench_observe(c: &mut Criterion) {
    let mut sockets = synthetic_sockets(10_000, false, 3);
    sockets.extend(synthetic_sockets(10_000, true, 4));
    let mut table = ConnectionTable::new(true);
    assert!(!table.observe(&sockets).is_empty());
    assert!(table.observe(&sockets).is_empty());
    // The same connections in another order: not the same table, so each
    // poll takes the full path, as on a host whose table changes a little
    // between polls.
    let mut rotated = sockets.clone();
    rotated.rotate_left(1);
    let tables = [&sockets, &rotated];
    let mut poll = 0;
    let mut group = c.benchmark_group("connections");
    group.bench_function("observe 20k steady", |b| {
        b.iter(|| {
            poll += 1;
            table.observe(black_box(tables[poll % 2]))
        })
    });
    // The very same table again (an idle host): one comparison.
    table.observe(&sockets);
    group.bench_function("observe 20k unchanged", |b| {
        b.iter(|| table.observe(black_box(&sockets)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench_parse, bench_observe
}
criterion_main!(benches);
