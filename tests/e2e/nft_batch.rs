//! The nftables backend's batches of 10,000, in a lab host: the backend
//! itself (the library), run by this very test binary re-executed inside
//! the host's namespace, so every table it makes lives there.

use crate::lab::*;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;
use tcpwatch::block::backend::Backend;
use tcpwatch::block::nft::Nftables;

/// Set for the run inside the namespace.
const INSIDE: &str = "TCPWATCH_E2E_NFT_BATCH_INSIDE";

/// 10,000 new blocks, then the same 10,000 again right after: both succeed
/// (the second used to fail in libnftables with "cache initialization
/// failed: Protocol error", the refused first try having overrun its
/// netlink socket), every element is still there, and the re-block
/// restarted their timeouts.
#[test]
fn nftables_blocks_ten_thousand_then_the_same_again() {
    let Some(lab) = Lab::needing(&["nft"], 1) else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let out = lab
        .command(
            A,
            exe.to_str().unwrap(),
            &[
                "--exact",
                "nft_batch::inside_a_lab_host",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
        )
        .env(INSIDE, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("test result: ok. 1 passed"), "{text}");
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("nft_batch:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The body of [`nftables_blocks_ten_thousand_then_the_same_again`], run by
/// it inside a lab host; does nothing anywhere else.
#[test]
#[ignore = "run by nftables_blocks_ten_thousand_then_the_same_again inside its lab host"]
fn inside_a_lab_host() {
    if std::env::var_os(INSIDE).is_none() {
        return;
    }
    let ttl = Duration::from_secs(600);
    let mut nft = Nftables::new();
    nft.install(ttl).unwrap();
    let many: Vec<ipnet::IpNet> = (0..10_000u32)
        .map(|n| IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + n)).into())
        .collect();
    nft.block(&many, ttl).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let left = |nft: &mut Nftables| {
        let listed = nft.list().unwrap();
        assert_eq!(listed.len(), 10_000);
        listed.iter().filter_map(|e| e.remaining).max().unwrap()
    };
    let before = left(&mut nft);
    assert!(before <= Duration::from_secs(598), "{before:?} left");
    nft.block(&many, ttl).unwrap();
    let after = left(&mut nft);
    assert!(
        after >= Duration::from_secs(599),
        "{after:?} left after the re-block"
    );
    println!("nft_batch: 10,000 blocked, then again: {before:?} left before, {after:?} after");
    nft.remove().unwrap();
}
