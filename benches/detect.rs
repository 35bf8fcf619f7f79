//! The detector's cost per observation, with an anchor from the same run
//! (what `scripts/bench-detect.sh` reports), in CPU time of the benchmark's
//! thread: on a shared host the wall clock mostly measures the other
//! processes (at a load of 12 on 2 cores, 6 times the CPU time). Each
//! benchmark times one
//! observation through `Detector::process_into` with a reused buffer, as a
//! batching caller runs it, on a detector already at its steady state
//! (tables full, evicting):
//!
//! - `flood`: a spoofed-source SYN flood, every attempt from a new source
//!   address to the next port (`hping3 --flood -S --rand-source -p ++1`);
//!   default settings. Target: 500 ns an attempt at most.
//! - `flood_slow_rule`: the same with `--scan-rule 10/1h`, so that no
//!   source is quiet long enough to be swept and every new one evicts.
//! - `scan_mix`: nothing but scanners, 8 probes each in a burst (SYNs,
//!   FIN and UDP probes; half the sources IPv6 addresses rotating inside
//!   their /64), 65,536 of them in turn: a scan reported every 8
//!   observations.
//! - `anchor_hashmap`: the least any detector does for a spoofed attempt,
//!   with the standard library: a `HashMap` (SipHash) of 65,536 (remote,
//!   local) address pairs, one inserted and the oldest removed per attempt.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tcpwatch::clock::Stamp;
use tcpwatch::detect::rules::parse_rule;
use tcpwatch::detect::{Detector, Limits, ScanSettings};
use tcpwatch::event::{Connection, Direction, Observation, ScanKind};

/// The CPU time of the calling thread, as criterion's measurement.
struct CpuTime;

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, started: u64) -> u64 {
        thread_cpu_ns() - started
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanoseconds
    }
}

/// Values stay in ns (what scripts/bench-detect.sh reads).
struct Nanoseconds;

impl ValueFormatter for Nanoseconds {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "ns (CPU)"
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        _throughput: &Throughput,
        _values: &mut [f64],
    ) -> &'static str {
        "ns (CPU)"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

type Bench = Criterion<CpuTime>;

const HOST: [u8; 4] = [10, 0, 0, 1];
/// Observations fed before timing: the tables are full by then.
const WARM: u64 = 300_000;

fn stamp(wall: chrono::DateTime<chrono::Local>, micros: u64) -> Stamp {
    Stamp {
        wall,
        mono: Duration::from_micros(micros),
    }
}

/// The nth attempt of a spoofed flood: a new scrambled source address each
/// time, the next port, 10 µs apart.
fn spoofed(wall: chrono::DateTime<chrono::Local>, n: u64) -> Observation {
    let source = (n as u32).wrapping_mul(2_654_435_761).to_be_bytes();
    Observation::Attempt {
        at: stamp(wall, n * 10),
        conn: Connection {
            initiator: (source, 1024 + (n % 60_000) as u16).into(),
            acceptor: (HOST, (n % 65_535 + 1) as u16).into(),
            direction: Direction::Inbound,
        },
        isn: n as u32,
        owner: None,
    }
}

/// The nth observation of the scan mix: scanner n / 8 in turn among
/// 65,536, its (n % 8)th probe, 200 µs apart (a scanner comes back after
/// 105 s: a new episode).
fn scanning(wall: chrono::DateTime<chrono::Local>, n: u64) -> Observation {
    let scanner = (n / 8) % 65_536;
    let probe = n % 8;
    let at = stamp(wall, n * 200);
    let remote: IpAddr = if scanner.is_multiple_of(2) {
        IpAddr::from((0xc000_0000u32 | scanner as u32).to_be_bytes())
    } else {
        // Its /64, a new address of it for each probe.
        let bits = (0x2001_0db8u128 << 96) | (u128::from(scanner) << 64) | u128::from(n);
        IpAddr::V6(Ipv6Addr::from_bits(bits))
    };
    let port = 20 + probe as u16 + (scanner % 7) as u16 * 100;
    match n % 4 {
        0 | 1 => Observation::Attempt {
            at,
            conn: Connection {
                initiator: SocketAddr::new(remote, 40_000 + probe as u16),
                acceptor: SocketAddr::new(local(remote), port),
                direction: Direction::Inbound,
            },
            isn: n as u32,
            owner: None,
        },
        2 => Observation::Probe {
            at,
            remote,
            local: SocketAddr::new(local(remote), port),
            kind: ScanKind::Fin,
        },
        _ => Observation::Probe {
            at,
            remote,
            local: SocketAddr::new(local(remote), port),
            kind: ScanKind::Udp,
        },
    }
}

fn local(remote: IpAddr) -> IpAddr {
    match remote {
        IpAddr::V4(_) => IpAddr::from(HOST),
        IpAddr::V6(_) => "2001:db8::1".parse().unwrap(),
    }
}

fn bench_detector(
    c: &mut Bench,
    name: &str,
    scan: &ScanSettings,
    next: fn(chrono::DateTime<chrono::Local>, u64) -> Observation,
) {
    let wall = chrono::Local::now();
    let mut detector = Detector::new("pcap", false, scan, &Limits::default());
    let mut events = Vec::new();
    let mut n = 0u64;
    let mut scans = 0usize;
    while n < WARM {
        events.clear();
        detector.process_into(&next(wall, n), &mut events);
        scans += events.len();
        n += 1;
    }
    assert!(scans > 0, "{name}: nothing reported while warming up");
    c.benchmark_group("detect").bench_function(name, |b| {
        b.iter(|| {
            let observation = next(wall, n);
            n += 1;
            events.clear();
            detector.process_into(black_box(&observation), &mut events);
            black_box(events.len())
        })
    });
}

fn bench_flood(c: &mut Bench) {
    bench_detector(c, "flood", &ScanSettings::default(), spoofed);
    let slow = ScanSettings {
        scan_rules: vec![parse_rule("10/1h").unwrap()],
        ..ScanSettings::default()
    };
    bench_detector(c, "flood_slow_rule", &slow, spoofed);
}

fn bench_mix(c: &mut Bench) {
    bench_detector(c, "scan_mix", &ScanSettings::default(), scanning);
}

fn bench_anchor(c: &mut Bench) {
    let capacity = tcpwatch::detect::portscan::DEFAULT_CAPACITY;
    let mut map: HashMap<(IpAddr, IpAddr), u64> = HashMap::new();
    let mut order: VecDeque<(IpAddr, IpAddr)> = VecDeque::with_capacity(capacity);
    let mut n = 0u64;
    let mut step = |n: u64| {
        let source = (n as u32).wrapping_mul(2_654_435_761).to_be_bytes();
        let key = (IpAddr::from(source), IpAddr::from(HOST));
        map.insert(key, n);
        order.push_back(key);
        if order.len() > capacity {
            let old = order.pop_front().unwrap();
            map.remove(&old);
        }
    };
    while n < WARM {
        step(n);
        n += 1;
    }
    c.benchmark_group("detect")
        .bench_function("anchor_hashmap", |b| {
            b.iter(|| {
                step(black_box(n));
                n += 1;
            })
        });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(CpuTime)
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    targets = bench_anchor, bench_flood, bench_mix
}
criterion_main!(benches);
