#!/usr/bin/env bash
# Blocking benchmark: how fast the nftables backend blocks a batch of 10,000
# scanners, and the detection-to-kernel latency of one block (median of 20),
# each next to the same nft script applied by the `nft` binary (the anchor).
# Runs inside a throwaway network namespace, which has its own netfilter
# state: the host's firewall is never touched. Needs root and nft.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh

lab_need root nft
cargo build --release --locked --example bench_block
lab_init
lab_host bench
export FIGURE="$PWD/scripts/bench-figure"
echo "== nftables blocking (nft $(nft --version | awk '{print $2}'), namespace $(lab_ns bench))"
lab_exec bench target/release/examples/bench_block
