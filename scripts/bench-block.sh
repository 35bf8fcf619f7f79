#!/usr/bin/env bash
# Blocking benchmark: how fast the nftables backend blocks a batch of 10,000
# scanners, and the detection-to-kernel latency of one block (median of 20),
# each next to the same nft script applied by the `nft` binary (the anchor).
# Runs inside a throwaway network namespace, which has its own netfilter
# state: the host's firewall is never touched. Needs root and nft.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ] || ! command -v nft >/dev/null; then
  echo "bench-block: needs root and nft (scripts/install-deps.sh)" >&2
  exit 1
fi
cargo build --release --locked --example bench_block
ns="tcpwatch-bench-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip -n "$ns" link set lo up
export FIGURE="$PWD/scripts/bench-figure"
echo "== nftables blocking (nft $(nft --version | awk '{print $2}'), namespace $ns)"
ip netns exec "$ns" target/release/examples/bench_block
