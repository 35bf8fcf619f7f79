#!/usr/bin/env bash
# Fuzzes the /proc/net/tcp{,6} parser: scripts/fuzz.sh [SECONDS] (default 60).
#
# Runs the cargo-fuzz target fuzz/fuzz_targets/procfs_parse.rs on stable Rust
# and ends with a one-line summary (executions, exec/s). Exits non-zero on a
# crash (a panic or a broken invariant), naming the input that reproduces it.
#
# Stable needs no environment variable: cargo-fuzz only asks for nightly
# features (-Zsanitizer=...) when a sanitizer is on, hence `-s none`. The
# coverage instrumentation it uses (-Cpasses=sancov-module and the
# -sanitizer-coverage-* LLVM options) is accepted by stable rustc.
# `-a` turns debug assertions (and so overflow checks) on in the fuzzed build.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS]  (a whole number of seconds, default 60)" >&2
  exit 2
fi

target=procfs_parse
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# New inputs go to a working corpus kept between runs (under fuzz/target, not
# committed); the committed seeds in corpus/$target are only read.
work="target/corpus/$target"
mkdir -p "$work"
log="target/fuzz-$target.log"

set +e
cargo fuzz run -s none -a "$target" "$work" "corpus/$target" \
  -- -max_total_time="$seconds" 2>&1 |
  tee "$log" |
  grep --line-buffered -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE)[[:space:]]|^".*" # Uses: [0-9]+$|^###### '
status=${PIPESTATUS[0]}
set -e

done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
if [ "$status" -ne 0 ] || [ -z "$done_line" ]; then
  artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)
  if [ -n "$artifact" ]; then
    echo "fuzz: $target FAILED (exit $status); input: $artifact"
    echo "fuzz: reproduce with: (cd fuzz && cargo fuzz run -s none -a $target $artifact)"
  else
    echo "fuzz: $target FAILED (exit $status); see fuzz/$log"
  fi
  exit 1
fi

read -r runs secs < <(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1 \2/' <<<"$done_line")
if [ "$secs" -gt 0 ]; then
  rate=$((runs / secs))
else
  rate=$runs
fi
echo "fuzz: $target OK: $runs executions in ${secs}s ($rate exec/s)"
