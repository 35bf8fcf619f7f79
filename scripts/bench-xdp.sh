#!/usr/bin/env bash
# Figures of `--source xdp`, measured between two network namespaces joined by
# a veth pair (nothing leaves them: they have no other interface, no default
# route):
#   1. connect-to-line latency: B opens N connections to A, one every 5 ms;
#      for each, the time from just before connect() to the agent printing
#      its line (p50, p99, max);
#   2. a 5 s `hping3 --flood -S --rand-source` from B to A: SYNs sent (hping3's
#      count and A's veth rx counter) against what the program counted in the
#      same run (its `reported` map: records the ring buffer took; its `lost`
#      map: records it had no room for); the share of the program's SYNs the
#      detector got (lines printed / SYNs the program saw, target >= 99 %);
#      the accounting (lines = reported, lines + lost = received); the
#      agent's CPU during the flood, in cores (target <= 1), and peak RSS;
#   3. the same flood for 2 s while the agent is stopped (SIGSTOP): the ring
#      buffer overflows, and lines + counted losses must still add up;
#   4. what the programs cost per packet of ordinary traffic (an ACK, a
#      DNS-like and a QUIC-like datagram; examples/xdp_cost.rs, the kernel's
#      BPF_PROG_TEST_RUN timing) against the XDP program as it was before it
#      saw stealth probes, fragments and extension headers (commit b66731a,
#      compiled here with the flags of build.rs), in the same run.
# Needs root, hping3, bpftool, python3 and a release build with clang.
# Usage: scripts/bench-xdp.sh [N_CONNECTIONS]   (default 500)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
export FIGURE=$PWD/scripts/bench-figure
N=${1:-500}
BIN=${BIN:-target/release/tcpwatch}
lab_need root hping3 bpftool python3 ip
[ -x "$BIN" ] || cargo build --release --locked

lab_init
WORK=$LAB_WORK
lab_pair a b eth0 10.250.0
ARGS=(run --source xdp --interface eth0 --block none --metrics-addr off --state off)

# --- 1. latency --------------------------------------------------------------
# The server holds each connection a while so the client closes first: a
# server closing first lets the client reuse a 4-tuple at once, which the
# agent's retransmission filter takes for a retransmission (docs/detection.md).
lab_bg a python3 -c '
import collections, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096)
held = collections.deque(maxlen=500)
while True: held.append(s.accept()[0])'
lab_wait_listen a 8080

lab_exec b python3 - "$N" "$(lab_ns a)" "$BIN" "${ARGS[@]}" <<'EOF'
import os, subprocess, sys, threading, time, socket, re
n, ns_a, binary, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
agent = subprocess.Popen(["ip", "netns", "exec", ns_a, binary, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
seen, ready = {}, threading.Event()
def read_out():
    pat = re.compile(r"New connection: 10\.250\.0\.2:(\d+) -> 10\.250\.0\.1:8080$")
    for line in agent.stdout:
        t = time.monotonic()
        m = pat.search(line.rstrip("\n"))
        if m: seen.setdefault(int(m.group(1)), t)
def read_err():
    for line in agent.stderr:
        if "watching: xdp on" in line: ready.set()
        sys.stderr.write(line)
threading.Thread(target=read_out, daemon=True).start()
threading.Thread(target=read_err, daemon=True).start()
if not ready.wait(15): sys.exit("agent did not attach")
started, reused = {}, 0
for _ in range(n):
    t0 = time.monotonic()
    s = socket.create_connection(("10.250.0.1", 8080))
    port = s.getsockname()[1]
    reused += port in started
    started[port] = t0
    s.close()
    time.sleep(0.005)
time.sleep(1)
if reused: print(f"warning: {reused} source ports reused; their latency is not measured")
agent.terminate(); agent.wait(5)
lat = sorted((seen[p] - t0) * 1000 for p, t0 in started.items() if p in seen)
missing = len(started) - len(lat)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"latency: {len(lat)}/{len(started)} connections printed (missing {missing}); "
      f"p50 {pct(0.50):.2f} ms, p99 {pct(0.99):.2f} ms, max {lat[-1]:.2f} ms")
figure = os.environ["FIGURE"]
subprocess.run([figure, f"xdp: connections missed (of {len(started)})", str(missing), "connections"],
               check=True)
subprocess.run([figure, "xdp: connect-to-line p50", f"{pct(0.50):.2f}", "ms"], check=True)
subprocess.run([figure, "xdp: connect-to-line p99", f"{pct(0.99):.2f}", "ms", "-", "-", "value < 5"],
               check=True)
EOF

# --- 2. flood ----------------------------------------------------------------
rx() { lab_exec a ip -s link show eth0 | awk '/RX:/{getline; print $2; exit}'; }
lab_bg a "$BIN" "${ARGS[@]}" >"$WORK/out" 2>"$WORK/err"
AGENT=$LAB_PID
lab_expect "$WORK/err" "watching: xdp on"
PROG=$(lab_exec a ip -d link show eth0 | sed -n 's/.*prog\/xdp id \([0-9]*\).*/\1/p')
# map_id NAME: the id of the program's map called NAME.
map_id() {
  bpftool prog show id "$PROG" | sed -n 's/.*map_ids \([0-9,]*\).*/\1/p' | tr , '\n' |
    while read -r id; do
      if bpftool map show id "$id" | grep -q "name $1 "; then echo "$id"; fi
    done
}
LOST_MAP=$(map_id lost)
REPORTED_MAP=$(map_id reported)
# counter ID: a per-CPU counter map's total.
counter() {
  bpftool -j map dump id "$1" | python3 -c '
import json, sys
print(sum(v["value"] for e in json.load(sys.stdin) for v in e["formatted"]["values"]))'
}
lost() { counter "$LOST_MAP"; }
reported() { counter "$REPORTED_MAP"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$AGENT/stat"; }
RX0=$(rx)
REP0=$(reported)
LOST0=$(lost)
LINES0=$(grep -c "New connection: " "$WORK/out" || true)
CPU0=$(cpu_ticks)
lab_exec b timeout -s INT 5 hping3 --flood -S --rand-source -p 8080 10.250.0.1 \
  >"$WORK/hping" 2>&1 || true
sleep 2  # let the agent drain what it holds
CPU1=$(cpu_ticks)
RX1=$(rx)
LOST=$(($(lost) - LOST0))
REPORTED=$(($(reported) - REP0))
LINES=$(($(grep -c "New connection: " "$WORK/out" || true) - LINES0))

# --- 3. overflow: the agent stopped (SIGSTOP) for a 2 s flood -----------------
kill -STOP "$AGENT"
lab_exec b timeout -s INT 2 hping3 --flood -S --rand-source -p 8080 10.250.0.1 \
  >/dev/null 2>&1 || true
kill -CONT "$AGENT"
sleep 3
RX2=$(rx)
LOST2=$(($(lost) - LOST0))
LINES2=$(($(grep -c "New connection: " "$WORK/out" || true) - LINES0))
read -r UT ST < <(awk '{print $14, $15}' "/proc/$AGENT/stat")
HWM=$(awk '/VmHWM/{print $2, $3}' "/proc/$AGENT/status")
lab_stop "$AGENT"
SENT=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$WORK/hping")
TICK=$(getconf CLK_TCK)
echo "flood: hping3 sent ${SENT:-?} SYNs in 5 s; A's eth0 received $((RX1 - RX0)) packets"
echo "flood: accounted $((LINES + LOST)) = $LINES lines + $LOST ring-buffer losses;" \
  "the program reported $REPORTED"
SEEN=$((REPORTED + LOST))
DELIVERED=$(python3 -c "print(f'{100 * $LINES / max($SEEN, 1):.2f}')")
# The agent's CPU from the flood's start to the end of its drain, over the
# flood's 5 s (the drain time is in the ticks, not in the divisor): cores
# busy while SYNs arrive.
CORES=$(python3 -c "print(f'{($CPU1 - $CPU0) / $(getconf CLK_TCK) / 5:.2f}')")
RATE=$(python3 -c "print(round($SEEN / 5))")
echo "flood: ~$RATE SYN/s; the detector got $DELIVERED % of the SYNs the program saw;" \
  "agent $CORES cores (flood + drain CPU / 5 s)"
[ "$LINES" -eq "$REPORTED" ] || echo "warning: $LINES lines but the program reported $REPORTED"
echo "overflow: A's eth0 received $((RX2 - RX1)) packets while the agent was stopped;" \
  "accounted $((LINES2 - LINES + LOST2 - LOST)) = $((LINES2 - LINES)) lines + $((LOST2 - LOST)) losses"
CPU=$(python3 -c "print(f'{($UT + $ST) / $TICK:.2f}')")
echo "flood: agent CPU $CPU s (user+sys, whole run), peak RSS $HWM"
"$FIGURE" "xdp flood: SYNs accounted (lines + ring-buffer losses)" "$((LINES + LOST))" SYNs \
  "packets A's eth0 received" "$((RX1 - RX0))"
"$FIGURE" "xdp flood (~$RATE SYN/s): SYNs delivered to the detector" "$LINES" SYNs \
  "SYNs the program saw (reported + lost)" "$SEEN" "ratio >= 0.99"
"$FIGURE" "xdp flood: agent CPU while flooded" "$CORES" cores - - "value <= 1"
"$FIGURE" "xdp overflow (agent stopped): SYNs accounted" "$((LINES2 - LINES + LOST2 - LOST))" SYNs \
  "packets A's eth0 received" "$((RX2 - RX1))"
"$FIGURE" "xdp flood: agent CPU time (5 s + 2 s floods)" "$CPU" s
"$FIGURE" "xdp flood: peak RSS" "$(awk '{printf "%.1f", $1 / 1024}' <<<"$HWM")" MiB - - "value < 64"

# --- 4. cost per packet of ordinary traffic, against the program before ------
BEFORE=b66731a
cargo build --release --locked -q --example xdp_cost
before_obj=
if git cat-file -e "$BEFORE^{commit}" 2>/dev/null; then
  mkdir -p "$WORK/before"
  git archive "$BEFORE" bpf | tar -x -C "$WORK/before"
  if clang -O2 -g -target bpf -Wall -Werror -I"/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)" \
    -c "$WORK/before/bpf/tcpwatch.bpf.c" -o "$WORK/before.o"; then
    before_obj=$WORK/before.o
  fi
fi
[ -n "$before_obj" ] || echo "warning: the program of $BEFORE could not be built: no anchor"
target/release/examples/xdp_cost 1000000 ${before_obj:+"$before_obj"} >"$WORK/cost"
echo "cost per packet (ns; BPF_PROG_TEST_RUN, median of 5 rounds of 1,000,000):"
column -t -s $'\t' "$WORK/cost" || cat "$WORK/cost"
while IFS=$'\t' read -r prog frame ns before; do
  case "$frame" in
    *"tcp ack"|*"udp 40 B"*|*"quic-like"*)
      if [ "$prog" = xdp ] && [ "$before" != - ]; then
        "$FIGURE" "xdp program, ordinary traffic: $frame" "$ns" ns/packet \
          "the program before probes ($BEFORE)" "$before" "ratio <= 1.15"
      else
        "$FIGURE" "$prog program, ordinary traffic: $frame" "$ns" ns/packet
      fi ;;
  esac
done <"$WORK/cost"
