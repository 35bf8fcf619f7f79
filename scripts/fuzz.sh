#!/usr/bin/env bash
# Fuzzes every parser of outside input: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each cargo-fuzz target of fuzz/fuzz_targets/ (or only the TARGETs
# named) on stable Rust for SECONDS each (default 60) and prints one summary
# line per target (executions, exec/s). Exits non-zero if any target
# crashed (a panic, a broken invariant, a leak or an out-of-memory), naming
# the input that reproduces it; the other targets still run.
#
# Stable needs no environment variable: cargo-fuzz only asks for nightly
# features (-Zsanitizer=...) when a sanitizer is on, hence `-s none`. The
# coverage instrumentation it uses (-Cpasses=sancov-module and the
# -sanitizer-coverage-* LLVM options) is accepted by stable rustc.
# `-a` turns debug assertions (and so overflow checks) on in the fuzzed build.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS] [TARGET...]  (a whole number of seconds, default 60)" >&2
  exit 2
fi
shift || true

cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

all=$(cargo fuzz list)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets <<<"$all"
fi
for target in "${targets[@]}"; do
  if ! grep -qx -- "$target" <<<"$all"; then
    echo "fuzz: no target '$target' (targets: $(tr '\n' ' ' <<<"$all"))" >&2
    exit 2
  fi
done

# One build for all targets, so each run below starts fuzzing at once.
cargo fuzz build -s none -a

# Options of one target: the state file is a redb database, whose smallest
# real file is 72 KiB; the other inputs are short lines, frames and records.
options() {
  case "$1" in
    state_file) echo "-max_len=81920 -timeout=30" ;;
    *) echo "-max_len=4096 -timeout=10" ;;
  esac
}

# Runs one target: libFuzzer's output on stderr, the summary line on stdout;
# returns non-zero on a crash.
fuzz_one() {
  local target=$1
  # New inputs go to a working corpus kept between runs (under fuzz/target,
  # not committed); the committed seeds in corpus/$target are only read.
  local work="target/corpus/$target"
  local log="target/fuzz-$target.log"
  mkdir -p "$work" "corpus/$target"
  local status
  set +e
  # shellcheck disable=SC2046 # options are separate words
  cargo fuzz run -s none -a "$target" "$work" "corpus/$target" \
    -- -max_total_time="$seconds" $(options "$target") 2>&1 |
    tee "$log" |
    grep --line-buffered -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|INITED|RELOAD)[[:space:]]|^".*" # Uses: [0-9]+$|^###### |^INFO: ' >&2
  status=${PIPESTATUS[0]}
  set -e

  local done_line
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
  if [ "$status" -ne 0 ] || [ -z "$done_line" ]; then
    local artifact
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)
    if [ -n "$artifact" ]; then
      # cargo-fuzz names the input by an absolute path, libFuzzer by one
      # relative to fuzz/.
      [[ "$artifact" = /* ]] || artifact="$PWD/$artifact"
      echo "fuzz: $target FAILED (exit $status); input: $artifact"
      echo "fuzz: reproduce with: (cd fuzz && cargo fuzz run -s none -a $target $artifact)"
    else
      echo "fuzz: $target FAILED (exit $status); see fuzz/$log"
    fi
    return 1
  fi

  local runs secs rate
  read -r runs secs < <(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1 \2/' <<<"$done_line")
  if [ "$secs" -gt 0 ]; then
    rate=$((runs / secs))
  else
    rate=$runs
  fi
  echo "fuzz: $target OK: $runs executions in ${secs}s ($rate exec/s)"
}

summary=target/fuzz-summary
: >"$summary"
failed=0
for target in "${targets[@]}"; do
  echo "fuzz: running $target for ${seconds}s"
  fuzz_one "$target" >"target/fuzz-$target.result" || failed=$((failed + 1))
  tee -a "$summary" <"target/fuzz-$target.result"
done

# The summary lines again, together, after libFuzzer's noise.
echo "fuzz: summary"
cat "$summary"
if [ "$failed" -gt 0 ]; then
  echo "fuzz: $failed of ${#targets[@]} targets FAILED"
  exit 1
fi
