//! Blocking benchmark, run by `scripts/bench-block.sh` inside a throwaway
//! network namespace (it creates and removes `inet tcpwatch` there):
//!
//! 1. throughput: one batch of 10,000 scanners through the nftables backend;
//! 2. detection-to-kernel latency: a port-scan event handed to the block
//!    stage until `nft` has committed the element (allowlist refresh
//!    included), median of 20.
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcpwatch::block::allow::Allowlist;
use tcpwatch::block::{nft::Nftables, Backend, Blocker, Mode};
use tcpwatch::clock::{Clock, SystemClock};
use tcpwatch::event::{Event, EventKind, PortScan};

fn main() -> anyhow::Result<()> {
    let ttl = Duration::from_secs(3600);
    let mut nft = Nftables;
    nft.install(ttl)?;

    let many: Vec<IpAddr> = (0..10_000u32)
        .map(|n| IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + n)))
        .collect();
    let started = Instant::now();
    nft.block(&many, ttl)?;
    let took = started.elapsed();
    let listed = nft.list()?.len();
    anyhow::ensure!(listed == 10_000, "{listed} elements in the sets, not 10000");
    println!(
        "batch of 10000: {:.1} ms, {:.0} IPs/s",
        took.as_secs_f64() * 1e3,
        10_000.0 / took.as_secs_f64()
    );
    // The same batch again: the idempotent re-block (timeouts reset).
    let started = Instant::now();
    nft.block(&many, ttl)?;
    println!(
        "same batch again: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    nft.flush()?;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let mut blocker = Blocker::new(
        Mode::Apply(Box::new(Nftables)),
        ttl,
        Allowlist::of_host(Vec::new()),
        clock.clone(),
    );
    let mut samples = Vec::new();
    for n in 0..20u32 {
        let scan = Event {
            at: clock.now(),
            kind: EventKind::PortScan(PortScan {
                remote: IpAddr::V4(Ipv4Addr::from(0x0a50_0000 + n)),
                local: "10.0.0.1".parse()?,
                ports: vec![1, 2, 3, 4],
            }),
        };
        let started = Instant::now();
        let out = blocker.handle(vec![scan]);
        samples.push(started.elapsed());
        anyhow::ensure!(out.len() == 2, "scan {n} was not blocked");
    }
    samples.sort();
    println!(
        "detection-to-kernel latency of one block: median {:.1} ms (min {:.1}, max {:.1}, n=20)",
        samples[10].as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[19].as_secs_f64() * 1e3
    );
    nft.remove()?;
    Ok(())
}
