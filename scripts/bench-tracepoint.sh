#!/usr/bin/env bash
# Figures of `--source tracepoint`, measured in network namespaces of this
# machine (nothing leaves them: they have no other interface, no default
# route). The agent runs in host `a` and watches only the lab's namespaces
# (`--netns`), so other traffic on the machine stays out of its lines:
#   1. connect-to-line latency: B opens N connections to A, one every 5 ms;
#      for each, the time from just before connect() to the agent printing
#      A's inbound line (p50, p99, max), and how many were missed;
#   2. agent CPU beside the packet sources: the same paced load (RATE
#      connections a second for LOAD_SECONDS from B to A, `examples/storm.rs`)
#      watched by `--source xdp`, `pcap` and `tracepoint` in turn: the
#      agent's CPU time (user+sys) per run and per 10,000 connections;
#   3. a storm: STORM_HOSTS namespaces each running a loopback storm (as
#      many connections as two client threads make, for 3 s) at once, the
#      fastest this machine goes: connections made against lines printed +
#      ring-buffer losses counted (tcpwatch_events_lost_total), and the
#      agent's CPU time.
# Needs root, python3, curl, and a release build with clang.
# Usage: scripts/bench-tracepoint.sh [N_CONNECTIONS]   (default 500)
#   RATE (2000), LOAD_SECONDS (10), STORM_HOSTS (8) in the environment.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
export FIGURE=$PWD/scripts/bench-figure
N=${1:-500}
RATE=${RATE:-2000}
LOAD_SECONDS=${LOAD_SECONDS:-10}
STORM_HOSTS=${STORM_HOSTS:-8}
BIN=${BIN:-target/release/tcpwatch}
lab_need root python3 curl ip
[ -x "$BIN" ] || cargo build --release --locked
cargo build --release --locked -q --example storm
STORM=$(realpath target/release/examples/storm)
BIN=$(realpath "$BIN")

lab_init
WORK=$LAB_WORK
lab_pair a b eth0 10.251.0
netns() { echo "/var/run/netns/$(lab_ns "$1")"; }
COMMON=(run --block none --state off --format text)

# --- 1. latency --------------------------------------------------------------
# The server holds each connection a while so the client closes first.
lab_bg a python3 -c '
import collections, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096)
held = collections.deque(maxlen=500)
while True: held.append(s.accept()[0])'
SERVER=$LAB_PID
lab_wait_listen a 8080

lab_exec b python3 scripts/lib/latency.py "$N" "$(lab_ns a)" "$BIN" 10.251.0.2 10.251.0.1 \
  tracepoint "watching: tracepoint" 30 "value < 1" \
  "${COMMON[@]}" --metrics-addr off --source tracepoint --netns "$(netns a)"
lab_stop "$SERVER"

# --- 2. CPU beside xdp and pcap ----------------------------------------------
# cpu_seconds PID: user+sys CPU time of PID so far.
TICK=$(getconf CLK_TCK)
cpu_seconds() {
  awk -v tick="$TICK" '{printf "%.2f", ($14 + $15) / tick}' "/proc/$1/stat"
}
lab_bg a "$STORM" serve 8081
SERVER=$LAB_PID
lab_wait_listen a 8081
declare -A CPU
for source in xdp pcap tracepoint; do
  case $source in
    tracepoint) extra=(--netns "$(netns a)") ;;
    *) extra=(--interface eth0) ;;
  esac
  lab_bg a "$BIN" "${COMMON[@]}" --metrics-addr off --source "$source" "${extra[@]}" \
    >"$WORK/cpu-$source.out" 2>"$WORK/cpu-$source.err"
  AGENT=$LAB_PID
  lab_expect "$WORK/cpu-$source.err" "watching: $source" 30
  IDLE=$(cpu_seconds "$AGENT")
  MADE=$(lab_exec b "$STORM" connect 10.251.0.1:8081 "$RATE" "$LOAD_SECONDS")
  sleep 2
  USED=$(python3 -c "print(f'{$(cpu_seconds "$AGENT") - $IDLE:.2f}')")
  lab_stop "$AGENT"
  LINES=$(grep -c "New connection: 10.251.0.2:[0-9]* -> 10.251.0.1:8081" "$WORK/cpu-$source.out" || true)
  PER=$(python3 -c "print(f'{$USED * 10000 / max($MADE, 1):.3f}')")
  CPU[$source]=$PER
  echo "cpu, $source: $MADE connections at $RATE/s, $LINES lines; agent CPU $USED s ($PER s per 10,000)"
  if [ "$source" = tracepoint ]; then
    # Compared with xdp under the same load, in the same run.
    "$FIGURE" "$source: agent CPU per 10,000 connections ($RATE/s)" "$PER" s \
      "xdp, the same load" "${CPU[xdp]}"
  else
    "$FIGURE" "$source: agent CPU per 10,000 connections ($RATE/s)" "$PER" s
  fi
done
lab_stop "$SERVER"

# --- 3. storm across namespaces ------------------------------------------------
HOSTS=()
for i in $(seq 1 "$STORM_HOSTS"); do
  lab_host "s$i"
  HOSTS+=(--netns "$(netns "s$i")")
done
METRICS=127.0.0.1:9479
lab_bg a "$BIN" "${COMMON[@]}" --metrics-addr "$METRICS" --source tracepoint "${HOSTS[@]}" \
  >"$WORK/storm.out" 2>"$WORK/storm.err"
AGENT=$LAB_PID
lab_expect "$WORK/storm.err" "watching: tracepoint" 30
IDLE=$(cpu_seconds "$AGENT")
STARTED=$(date +%s.%N)
PIDS=()
for i in $(seq 1 "$STORM_HOSTS"); do
  lab_exec "s$i" "$STORM" loopback 7000 3 2 >"$WORK/storm-$i" &
  PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid"; done
TOOK=$(python3 -c "print(f'{$(date +%s.%N) - $STARTED:.1f}')")
# Until the lines stop coming.
last=-1
while :; do
  sleep 1.5
  now=$(wc -l <"$WORK/storm.out")
  [ "$now" -eq "$last" ] && break
  last=$now
done
LOST=$(lab_exec a curl -sf "http://$METRICS/metrics" |
  awk '/^tcpwatch_events_lost_total\{source="tracepoint"\}/{print $2}')
USED=$(python3 -c "print(f'{$(cpu_seconds "$AGENT") - $IDLE:.2f}')")
lab_stop "$AGENT"
read -r MADE OVERFLOWS < <(cat "$WORK"/storm-* | awk '{m += $1; o += $2} END {print m, o}')
LINES=$(grep -c "New connection: 127.0.0.1:" "$WORK/storm.out" || true)
echo "storm: $MADE connections in $TOOK s across $STORM_HOSTS namespaces" \
  "($(python3 -c "print(round($MADE / $TOOK))")/s), $OVERFLOWS accept-queue overflows;" \
  "accounted $((LINES + ${LOST:-0})) = $LINES lines + ${LOST:-?} ring-buffer losses; agent CPU $USED s"
"$FIGURE" "tracepoint storm ($STORM_HOSTS namespaces): connections accounted (lines + losses)" \
  "$((LINES + ${LOST:-0}))" connections "connections made - accept-queue overflows" \
  "$((MADE - OVERFLOWS))" "ratio >= 1"
"$FIGURE" "tracepoint storm: connections a second" "$(python3 -c "print(round($MADE / $TOOK))")" "/s"
"$FIGURE" "tracepoint storm: agent CPU time" "$USED" s
