#!/usr/bin/env bash
# Benchmarks (what `make bench` runs): scripts/bench.sh
#
# Each section runs one benchmark target in release mode and prints one line
# per benchmark it measured: name, median time of one iteration, and the
# budget when the project has one. Criterion's own output goes to a log under
# target/. Later issues append sections at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"

# report STAMP [NAME=BUDGET_MS]...: the criterion benchmarks written since
# STAMP was touched, in the order they ran, with their medians.
report() {
  python3 - "$target_dir/criterion" "$@" <<'PY'
import json, os, sys

root, stamp, budgets = sys.argv[1], sys.argv[2], dict(a.split("=", 1) for a in sys.argv[3:])
since = os.path.getmtime(stamp)

def human(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns:.1f} ns"

rows = []
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    estimates = os.path.join(dirpath, "estimates.json")
    mtime = os.path.getmtime(estimates)
    if mtime < since:
        continue
    with open(os.path.join(dirpath, "benchmark.json")) as f:
        name = json.load(f)["full_id"]
    with open(estimates) as f:
        median = json.load(f)["median"]["point_estimate"]
    rows.append((mtime, name, median))

if not rows:
    sys.exit("bench: no benchmark results found")
for _, name, median in sorted(rows):
    line = f"{name:<36} median {human(median):>12}"
    if name in budgets:
        budget = float(budgets[name])
        verdict = "ok" if median <= budget * 1e6 else "OVER BUDGET"
        line += f"   (budget {budget:g} ms: {verdict})"
    print(line)
PY
}

# criterion BENCH [NAME=BUDGET_MS]...: runs `cargo bench --bench BENCH` and
# reports its benchmarks.
criterion() {
  local bench="$1"
  shift
  local stamp="$target_dir/bench-$bench.stamp" log="$target_dir/bench-$bench.log"
  touch "$stamp"
  echo "bench: cargo bench --bench $bench (log: $log)" >&2
  if ! cargo bench --locked --bench "$bench" -- --noplot >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "bench: cargo bench --bench $bench failed" >&2
    exit 1
  fi
  report "$stamp" "$@"
}

section() {
  printf '\n== %s ==\n' "$1"
}

section "procfs parser and connection table (benches/parse.rs)"
criterion parse \
  "procfs/parse_table tcp 100k=20" \
  "procfs/parse_table tcp6 100k=20"

section "nftables blocking: 10,000-address batch, detection-to-kernel latency (scripts/bench-block.sh)"
scripts/bench-block.sh

section "pcap vs procfs: short-lived connections missed, connect-to-line latency (scripts/bench-pcap.sh)"
cargo build --release --locked -q
scripts/bench-pcap.sh target/release/tcpwatch 200
scripts/bench-pcap-flood.sh target/release/tcpwatch

section "tcpwatch list (netlink, procfs) vs ss -tan, 20,000 sockets (scripts/bench-list.sh)"
scripts/bench-list.sh target/release/tcpwatch 10000 20

section "xdp source: connect-to-line latency, SYN flood accounting (scripts/bench-xdp.sh)"
scripts/bench-xdp.sh

section "XDP vs nftables drop cost, detection to first drop (scripts/bench-xdp-block.sh)"
scripts/bench-xdp-block.sh
