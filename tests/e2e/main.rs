//! End-to-end tests of the agent on real Linux, in one test binary: the
//! release build runs in network namespaces of a [`lab::Lab`], real traffic
//! (tests/peer.py, nmap, hping3) goes between namespaces, and each test
//! checks the exact lines the agent prints and the kernel state it leaves.
//!
//! The harness: [`prereq`] (what a test needs from the machine), [`proc`]
//! (processes with captured output), [`lab`] (the namespaces and their
//! traffic), [`agent`] (the agent, its command line and its lines),
//! [`inspect`] (firewall sets, metrics, process status), [`redis`] (real
//! `redis-server`s and Redis Clusters). Then one module per
//! suite; `sources` is the table of what every source must print, `probes`
//! the table of what the packet sources make of stealth and UDP scans.
//!
//! Needs root and the tools of scripts/install-deps.sh: a test whose
//! prerequisites are missing is skipped with a message, and fails when
//! `CI=true`. Run with `cargo test --release --test e2e -- --test-threads=2`,
//! one suite with `... -- block::`. Most tests share the machine; a few run
//! alone (see [`lab::Turn`]).

/// One `#[test]` per row, each calling `case` with the row's arguments:
/// `test_rows!(case { test_name: arg, ...; ... })`. For cases run once per
/// source, backend or fault. A row may carry attributes (`#[ignore = "..."]`).
macro_rules! test_rows {
    ($case:ident { $($(#[$meta:meta])* $name:ident: $($arg:expr),+;)+ }) => {
        $(
            #[test]
            $(#[$meta])*
            fn $name() {
                $case($($arg),+);
            }
        )+
    };
}

#[path = "../shared/args.rs"]
mod args;
#[path = "../shared/monitoring.rs"]
mod monitoring;

mod agent;
mod inspect;
mod lab;
mod prereq;
mod proc;
mod redis;

// The table of the packet sources' probe tests, before the suites that
// invoke its macro.
#[macro_use]
mod probes;

mod block;
mod container;
mod core;
mod faults_block;
mod faults_source;
mod fleet;
mod fleet_redis;
mod memory;
mod metrics;
mod netlink;
mod nft_batch;
mod nft_decide;
mod operators;
mod pcap;
mod pcap_probes;
mod prefix_block;
mod privilege;
mod prometheus;
mod realtime_block;
mod replay;
mod sources;
mod spoof;
mod state;
mod systemd;
mod tracepoint;
mod xdp;
mod xdp_block;
mod xdp_decide;
mod xdp_parse;
mod xdp_probes;
