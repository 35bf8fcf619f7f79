#!/usr/bin/env bash
# The detector's cost per observation (benches/detect.rs): a spoofed-source
# flood (with the default rules, then with a slow rule added) and a
# scan-heavy mix, each against the same run's anchor, a std HashMap
# (SipHash) taking one new (remote, local) pair and dropping its oldest per
# attempt at 65,536 entries. Prints ns per observation and records them
# (scripts/bench-figure). No root, no network.
# Usage: scripts/bench-detect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
log="$target_dir/bench-detect.log"
mkdir -p "$target_dir"

export BENCH_COMMAND="cargo bench --locked --bench detect -- --noplot"
echo "bench-detect: $BENCH_COMMAND (log: $log)" >&2
if ! cargo bench --locked --bench detect -- --noplot >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "bench-detect: cargo bench --bench detect failed" >&2
  exit 1
fi

# The median of one benchmark, in ns.
median() {
  python3 -c 'import json, sys; m = json.load(open(sys.argv[1]))["median"]["point_estimate"]; print(f"{m:.0f}")' \
    "$target_dir/criterion/detect/$1/new/estimates.json"
}

anchor=$(median anchor_hashmap)
anchor_name="std HashMap (SipHash), 65,536 pairs, insert + remove"
printf '%-44s %6s ns\n' "anchor: $anchor_name" "$anchor"
for bench in flood flood_slow_rule scan_mix; do
  value=$(median "$bench")
  case $bench in
    flood) name="detector, spoofed flood: time per attempt"; target="value <= 500" ;;
    flood_slow_rule) name="detector, spoofed flood, rule 10/1h: time per attempt"; target="" ;;
    scan_mix) name="detector, scan-heavy mix: time per observation"; target="" ;;
  esac
  printf '%-44s %6s ns (%.2f x anchor)\n' "$name" "$value" "$(awk -v a="$value" -v b="$anchor" 'BEGIN { printf "%.2f", a / b }')"
  scripts/bench-figure "$name" "$value" ns "$anchor_name" "$anchor" ${target:+"$target"}
done
