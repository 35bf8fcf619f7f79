#!/usr/bin/env bash
# Benchmarks (what `make bench` runs): scripts/bench.sh
#
# Each section runs one benchmark in release mode and prints its figures as it
# goes; each figure is also recorded (scripts/bench-figure) with its anchor,
# target and the command that produced it. At the end a summary, one line per
# figure, with the machine and the load average during the run, is printed
# and written to target/bench/summary.md (BENCHMARKS.md explains each figure).
# Criterion's own output goes to a log under target/. Later issues append
# sections at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
lab_init

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir/bench"
out_dir=$(realpath "$target_dir/bench")
export BENCH_FIGURES="$out_dir/figures.tsv"
: >"$BENCH_FIGURES"
started=$(date '+%Y-%m-%d %H:%M:%S %Z')
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

# The 1-minute load average every 10 s while the benchmarks run: the machine
# may be shared, and a figure means little without it.
load_log="$out_dir/load.txt"
: >"$load_log"
sample_load() { while sleep 10; do cut -d' ' -f1 /proc/loadavg >>"$load_log"; done; }
lab_spawn sample_load
load_sampler=$LAB_PID

# report STAMP [NAME=BUDGET_MS]...: the criterion benchmarks written since
# STAMP was touched, in the order they ran, with their medians.
report() {
  python3 - "$target_dir/criterion" "$@" <<'PY'
import json, os, subprocess, sys

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
    target = []
    if name in budgets:
        budget = float(budgets[name])
        verdict = "ok" if median <= budget * 1e6 else "OVER BUDGET"
        line += f"   (budget {budget:g} ms: {verdict})"
        target = ["-", "-", f"value < {budget:g}"]
    print(line)
    subprocess.run(["scripts/bench-figure", name, f"{median / 1e6:.3f}", "ms", *target], check=True)
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
  export BENCH_COMMAND="cargo bench --locked --bench $bench -- --noplot"
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

# run COMMAND...: runs one benchmark script; its figures name COMMAND.
run() {
  export BENCH_COMMAND="$*"
  "$@"
}

section "procfs parser and connection table (benches/parse.rs)"
# The target (issue 2) is for /proc/net/tcp; tcp6 lines are twice as long
# and have none.
criterion parse \
  "procfs/parse_table tcp 100k=20"

section "detector memory under 2,000,000 spoofed-source attempts (examples/flood_memory.rs)"
memory_command=(cargo run --release --locked -q --example flood_memory 2000000)
export BENCH_COMMAND="${memory_command[*]}"
memory=$("${memory_command[@]}")
echo "$memory"
scripts/bench-figure "detector, 2M spoofed attempts: peak RSS" \
  "$(sed -n 's/.*peak \([0-9]*\) kB.*/\1/p' <<<"$memory" | awk '{printf "%.1f", $1 / 1024}')" \
  MiB - - "value < 64"
scripts/bench-figure "detector, 2M spoofed attempts: time per attempt" \
  "$(sed -n 's/.*(\([0-9]*\) ns each).*/\1/p' <<<"$memory")" ns

section "detector per observation: spoofed flood, scan-heavy mix, against a std HashMap (scripts/bench-detect.sh)"
run scripts/bench-detect.sh

section "nftables blocking: 10,000-address batch, detection-to-kernel latency (scripts/bench-block.sh)"
run scripts/bench-block.sh

section "pcap vs procfs: short-lived connections missed, connect-to-line latency (scripts/bench-pcap.sh)"
cargo build --release --locked -q
run scripts/bench-pcap.sh target/release/tcpwatch 200

section "pcap under a SYN flood, against tcpdump with the same filter (scripts/bench-pcap-flood.sh)"
run scripts/bench-pcap-flood.sh target/release/tcpwatch

section "pcap filter: CPU per packet of ordinary TCP and UDP traffic, against the SYN-only filter (scripts/bench-pcap-filter.sh)"
run scripts/bench-pcap-filter.sh

section "pcap UDP scans: time to the scan line under the kernel's ICMP rate limit (scripts/bench-pcap-udp.sh)"
run scripts/bench-pcap-udp.sh target/release/tcpwatch

section "tcpwatch list (netlink, procfs) vs ss -tan, 20,000 sockets (scripts/bench-list.sh)"
run scripts/bench-list.sh target/release/tcpwatch 10000 20

section "idle: CPU and RSS of procfs every 10 s with 20,000 sockets and of xdp with no traffic, binary size (scripts/bench-idle.sh, IDLE_SECONDS=${IDLE_SECONDS:-300})"
run scripts/bench-idle.sh target/release/tcpwatch 10000

section "xdp source: connect-to-line latency, spoofed SYN floods (xdpgen at 120,000 SYN/s as XDP frames; hping3) delivered and accounted (scripts/bench-xdp.sh)"
run scripts/bench-xdp.sh

section "XDP vs nftables drop cost, frames delivered as XDP frames as by a NIC (scripts/bench-xdp-drop.sh)"
run scripts/bench-xdp-drop.sh

section "XDP vs nftables drop cost with hping3 through veth (skb built before XDP), detection to first drop (scripts/bench-xdp-block.sh)"
run scripts/bench-xdp-block.sh

section "tracepoint source: connect-to-line latency, CPU beside xdp and pcap, a storm across namespaces (scripts/bench-tracepoint.sh)"
run scripts/bench-tracepoint.sh 200

section "probes answered after the threshold probe, xdp (in-kernel decision) vs nftables (scripts/bench-answered.sh)"
run scripts/bench-answered.sh

section "fleet mode: propagation between three agents, one Redis under 1,000 nodes, the agent's CPU with the fleet on and off (scripts/bench-fleet.sh)"
run scripts/bench-fleet.sh

section "scan to block of a FIN scan beside a SYN scan, xdp and nftables (scripts/bench-fin.sh)"
run scripts/bench-fin.sh

section "summary ($out_dir/summary.md)"
lab_stop "$load_sampler"
scripts/bench-summary "$BENCH_FIGURES" "$load_log" "$started" "$load_at_start" |
  tee "$out_dir/summary.md"
