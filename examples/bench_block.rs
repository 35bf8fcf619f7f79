//! Blocking benchmark, run by `scripts/bench-block.sh` inside a throwaway
//! network namespace (it creates and removes `inet tcpwatch` there):
//!
//! 1. throughput: one batch of 10,000 scanners through the nftables backend;
//! 2. detection-to-kernel latency: a port-scan event handed to the block
//!    stage until `nft` has committed the element (allowlist refresh
//!    included), median of 20.
//!
//! Each is anchored by the same transaction the agent runs (`nft::create_batch`
//! for new targets, `nft::reblock_batch` for the same batch again) piped to
//! the `nft` binary (`nft -f -`), timed in the same run. Figures go to
//! `scripts/bench-figure` when `FIGURE` names it (scripts/bench-block.sh).
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcpwatch::block::allow::Allowlist;
use tcpwatch::block::backend::Backend;
use tcpwatch::block::blocker::Blocker;
use tcpwatch::block::firewall::Firewall;
use tcpwatch::block::nft::{create_batch, reblock_batch, restarts_in_place, Nftables};
use tcpwatch::clock::{Clock, SystemClock};
use tcpwatch::event::{Event, EventKind, PortScan};
use tcpwatch::os::nftables as libnft;

fn main() -> anyhow::Result<()> {
    let ttl = Duration::from_secs(3600);
    let mut nft = Nftables::new();
    nft.install(ttl)?;
    let path = if libnft::available() {
        "in-process libnftables"
    } else {
        "the nft binary"
    };
    println!("agent path: {path}; anchor: the same script through `nft -f -`");

    let many: Vec<ipnet::IpNet> = (0..10_000u32)
        .map(|n| IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + n)).into())
        .collect();
    let started = Instant::now();
    nft.block(&many, ttl)?;
    let took = started.elapsed();
    let listed = nft.list()?.len();
    anyhow::ensure!(listed == 10_000, "{listed} elements in the sets, not 10000");
    nft.flush()?;
    let anchor = nft_binary(&create_batch(&[(ttl, many.clone())]))?;
    batch_figure("batch of 10000", "nftables batch of 10,000", took, anchor);
    // The same batch again: the idempotent re-block (timeouts restarted).
    nft.block(&many, ttl)?;
    let started = Instant::now();
    nft.block(&many, ttl)?;
    let took = started.elapsed();
    let listed = nft.list()?.len();
    anyhow::ensure!(
        listed == 10_000,
        "{listed} elements after the re-block, not 10000"
    );
    let in_place = restarts_in_place();
    let anchor = nft_binary(&reblock_batch(&[(ttl, many.clone())], &many, in_place))?;
    batch_figure(
        &format!("same batch again (in place: {in_place})"),
        "nftables same batch of 10,000 again",
        took,
        anchor,
    );
    nft.flush()?;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let firewall = Firewall::install(Box::new(Nftables::new()), ttl, clock.clone());
    anyhow::ensure!(firewall.is_some(), "cannot install the nftables backend");
    let mut blocker = Blocker::new(firewall, ttl, Allowlist::of_host(Vec::new()), clock.clone());
    let mut samples = Vec::new();
    for n in 0..20u32 {
        let scan = Event {
            at: clock.now(),
            kind: EventKind::PortScan(PortScan::syn(
                IpAddr::V4(Ipv4Addr::from(0x0a50_0000 + n)),
                "10.0.0.1".parse()?,
                vec![1, 2, 3, 4],
            )),
        };
        let started = Instant::now();
        let out = blocker.handle(vec![scan]);
        samples.push(started.elapsed());
        anyhow::ensure!(out.len() == 2, "scan {n} was not blocked");
    }
    samples.sort();
    let mut anchors = Vec::new();
    for n in 0..20u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + n));
        anchors.push(nft_binary(&create_batch(&[(ttl, vec![ip.into()])]))?);
    }
    anchors.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "detection-to-kernel latency of one block: median {:.1} ms (min {:.1}, max {:.1}, n=20)   \
         (nft -f, one address: median {:.1} ms)",
        ms(samples[10]),
        ms(samples[0]),
        ms(samples[19]),
        ms(anchors[10]),
    );
    figure(&[
        "nftables single block, detection to kernel",
        &format!("{:.2}", ms(samples[10])),
        "ms",
        "nft -f, one address",
        &format!("{:.2}", ms(anchors[10])),
        "value < 100",
    ]);
    nft.remove()?;
    Ok(())
}

/// Wall time of `nft -f -` applying SCRIPT: a process start, the parse and
/// one kernel transaction, which is what the agent does without libnftables.
fn nft_binary(script: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "nft -f - failed: {status}");
    Ok(started.elapsed())
}

/// Hands one figure to `scripts/bench-figure` for the `make bench` summary.
/// Prints a batch of 10,000 that took `took` (`nft -f` of the same
/// script: `anchor`) as `what`, and records it as the figure `name`.
fn batch_figure(what: &str, name: &str, took: Duration, anchor: Duration) {
    let rate = 10_000.0 / took.as_secs_f64();
    let anchor_rate = 10_000.0 / anchor.as_secs_f64();
    println!(
        "{what}: {:.1} ms, {rate:.0} IPs/s   (nft -f: {:.1} ms, {anchor_rate:.0} IPs/s)",
        took.as_secs_f64() * 1e3,
        anchor.as_secs_f64() * 1e3,
    );
    figure(&[
        name,
        &format!("{rate:.0}"),
        "IPs/s",
        "nft -f, same batch",
        &format!("{anchor_rate:.0}"),
        "value >= 10000",
    ]);
}

fn figure(args: &[&str]) {
    let Some(helper) = std::env::var_os("FIGURE") else {
        return;
    };
    match Command::new(helper).args(args).status() {
        Ok(status) if status.success() => {}
        other => eprintln!("bench_block: recording a figure failed: {other:?}"),
    }
}
