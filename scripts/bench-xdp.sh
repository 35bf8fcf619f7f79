#!/usr/bin/env bash
# Figures of `--source xdp`, measured between two network namespaces joined by
# a veth pair (nothing leaves them: they have no other interface, no default
# route):
#   1. connect-to-line latency: B opens N connections to A, one every 5 ms;
#      for each, the time from just before connect() to the agent printing
#      its line (p50, p99, max);
#   2. spoofed SYN floods of A's port 8080 while the agent runs (with
#      metrics on), each $FLOOD_SECS s (5):
#      a. from benches/xdpgen (built here with clang and libbpf) at $RATE
#         (120,000) SYN/s, over IPv4 then IPv6 ($FAMILIES), each SYN from a
#         source address of its own (over IPv6, a /64 of its own), as
#         `hping3 --flood -S --rand-source` would send them if it could: B's
#         veth transmits them as XDP frames (ndo_xdp_xmit) and A's eth0
#         receives them in its native XDP path, no skb built before the
#         agent's program runs, as from a NIC. hping3 reaches only 24,000 to
#         60,000 SYN/s on this 2-core host;
#      b. `hping3 --flood -S --rand-source`, as before (each SYN an skb from
#         a raw socket, through the veth): what hping3 reaches here.
#      For each: the SYNs the program saw (its `reported` map, the records
#      the ring buffer took, plus its `lost` map, records it had no room
#      for) against what was sent (xdpgen's count and B's veth
#      tx_queue_0_xdp_xmit; for hping3, A's rx counter); the share delivered
#      to the detector (lines printed / SYNs the program saw, target >=
#      99 %); ring-buffer losses (tcpwatch_events_lost_total); the agent's
#      CPU from the flood's start to the end of its drain, over the send's
#      length, in cores (target <= 1);
#   3. an xdpgen flood of $OVERFLOW_SECS s (2) while the agent is stopped
#      (SIGSTOP): the ring buffer overflows, and lines + counted losses must
#      still add up; then the agent's CPU time and peak RSS (< 64 MiB).
#   The accounting is asserted for every flood (the script fails otherwise):
#   lines = the program's `reported`; tcpwatch_new_connections_total = lines;
#   tcpwatch_events_lost_total = the program's `lost`; lines + counted
#   losses = the SYNs the program saw = (xdpgen) the frames B's veth sent
#   (hping3: A's rx counter, give or take 20 packets of neighbour discovery).
#   4. what the programs cost per packet of ordinary traffic (an ACK, a
#      DNS-like and a QUIC-like datagram; examples/xdp_cost.rs, the kernel's
#      BPF_PROG_TEST_RUN timing) against the XDP program as it was before it
#      saw stealth probes, fragments and extension headers (commit b66731a,
#      compiled here with the flags of build.rs), in the same run.
# Needs root, hping3, bpftool, ethtool, curl, python3, clang and libbpf-dev
# (scripts/install-deps.sh installs them), kernel >= 5.18 for xdpgen.
# Usage (all optional): RATE=120000 FLOOD_SECS=5 OVERFLOW_SECS=2 FAMILIES="4 6"
#   SECTIONS="latency flood cost" scripts/bench-xdp.sh [N_CONNECTIONS] (500)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
export FIGURE=$PWD/scripts/bench-figure
N=${1:-500}
SECTIONS=${SECTIONS:-latency flood cost}
BIN=${BIN:-target/release/tcpwatch}
lab_need root hping3 bpftool ethtool curl python3 ip
[ -x "$BIN" ] || cargo build --release --locked

lab_init
WORK=$LAB_WORK
lab_pair a b eth0 10.250.0 fd00:250::
ARGS=(run --source xdp --interface eth0 --block none --metrics-addr off --state off)

# want SECTION: whether SECTION (latency, flood, cost) is in $SECTIONS.
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

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

want latency && lab_exec b python3 scripts/lib/latency.py "$N" "$(lab_ns a)" "$BIN" \
  10.250.0.2 10.250.0.1 xdp "watching: xdp on" 15 - "${ARGS[@]}"

# --- 2. flood: xdpgen, then hping3 ----------------------------------------------
if want flood; then
# One agent, with metrics, for the floods.
METRICS_PORT=9478
FLOOD_ARGS=(run --source xdp --interface eth0 --block none --metrics-addr "127.0.0.1:$METRICS_PORT" --state off)
lab_bg a "$BIN" "${FLOOD_ARGS[@]}" >"$WORK/out" 2>"$WORK/err"
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
rx() { lab_exec a cat /sys/class/net/eth0/statistics/rx_packets; }
ethtool_stat() { lab_exec "$1" ethtool -S eth0 | awk -v k="$2:" '$1 == k {print $2}'; }
lines() { grep -c "New connection: " "$WORK/out" || true; }
# metric NAME: the agent's metric (summed over its label sets).
metric() {
  lab_exec a curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk -v m="$1" 'index($0, m) == 1 {n += $NF} END {printf "%d\n", n}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$AGENT/stat"; }
# snapshot: every counter, one line: reported lost lines rx xmit xmit_errors
# xdp_packets metric_new metric_lost cpu_ticks.
snapshot() {
  echo "$(counter "$REPORTED_MAP") $(counter "$LOST_MAP") $(lines) $(rx)" \
    "$(ethtool_stat b tx_queue_0_xdp_xmit) $(ethtool_stat b tx_queue_0_xdp_xmit_errors)" \
    "$(ethtool_stat a rx_queue_0_xdp_packets)" \
    "$(metric 'tcpwatch_new_connections_total') $(metric 'tcpwatch_events_lost_total{source="xdp"}')" \
    "$(cpu_ticks)"
}
# drained: waits (30 s at most) until the agent printed a line per record the
# ring took and its loss metric (copied every second) caught up with the
# program's count.
drained() {
  local reported lost
  for _ in $(seq 300); do
    reported=$(counter "$REPORTED_MAP")
    lost=$(counter "$LOST_MAP")
    if [ "$(lines)" -ge "$((reported - REP_BASE))" ] &&
      [ "$(metric 'tcpwatch_events_lost_total{source="xdp"}')" -ge "$((lost - LOST_BASE))" ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "warning: the agent did not drain within 30 s"
}
REP_BASE=$(counter "$REPORTED_MAP")
LOST_BASE=$(counter "$LOST_MAP")

# The generator: B sends straight into A's native XDP path (A's MAC, no ARP);
# its program is held on a spare veth pair of B's, left down (xdpgen -A).
lab_need clang
target_dir=$(realpath "${CARGO_TARGET_DIR:-target}")
# shellcheck source=lib/xdpgen.sh
. scripts/lib/xdpgen.sh
xdpgen_build "$target_dir"
ip -n "$(lab_ns b)" link add xg0 type veth peer name xg1
A_MAC=$(lab_exec a cat /sys/class/net/eth0/address)
export RATE=${RATE:-120000}
FLOOD_SECS=${FLOOD_SECS:-5}
OVERFLOW_SECS=${OVERFLOW_SECS:-2}
FAMILIES=${FAMILIES:-4 6}
FAILED=()
# xdpgen_flood SECONDS FIRST [FAMILY]: a spoofed SYN flood at $RATE for
# SECONDS over IPv4 (or 6), every frame from a source of its own (frame
# numbers FIRST on; over IPv6 each source in a /64 of its own, off A's
# link); xdpgen's line on stdout.
xdpgen_flood() {
  local src=10.250.0.2 dst=10.250.0.1
  [ "${3:-4}" = 6 ] && src=fd00:250::2 dst=fd00:250::1
  lab_exec b "$XDPGEN" -i eth0 -A xg0 -k syn -R -S "$2" -r "$RATE" -n $((RATE * $1)) \
    -s "$src" -d "$dst" -M "$A_MAC" -P 8080
}
# account NAME SECONDS BEFORE AFTER [GENERATOR_LINE]: prints and records the
# figures of one flood between two snapshots, and checks the accounting.
account() {
  python3 - "$@" <<'PY'
import os, subprocess, sys
name, secs, before, after = sys.argv[1:5]
gen = dict(kv.split("=") for kv in sys.argv[5].split()) if len(sys.argv) > 5 else {}
secs = float(secs)
if gen:
    # The send may take longer than asked when the host cannot keep up.
    secs = max(secs, float(gen["seconds"]))
keys = "reported lost lines rx xmit xerr xdp_packets m_new m_lost cpu".split()
d = {k: int(b) - int(a) for k, a, b in zip(keys, before.split(), after.split())}
hz = os.sysconf("SC_CLK_TCK")
seen = d["reported"] + d["lost"]
share = 100 * d["lines"] / max(seen, 1)
cores = d["cpu"] / hz / secs
rate = seen / secs
fig = os.environ["FIGURE"]
def figure(*args):
    subprocess.run([fig, *map(str, args)], check=True)
if gen:
    print(f"{name}: xdpgen sent {gen['frames']} SYNs in {float(gen['seconds']):.2f} s "
          f"({float(gen['fps']):.0f}/s, {gen['runs']} calls, largest {gen['largest']} frames); "
          f"B's veth xdp_xmit +{d['xmit']} ({d['xerr']} errors); "
          f"A's eth0: XDP program ran on {d['xdp_packets']}, rx_packets +{d['rx']}")
else:
    print(f"{name}: A's eth0 received {d['rx']} packets")
print(f"{name}: the program saw {seen} SYNs (~{rate:.0f}/s): reported {d['reported']} + lost {d['lost']}; "
      f"lines {d['lines']}, tcpwatch_new_connections_total +{d['m_new']}, "
      f"tcpwatch_events_lost_total{{source=\"xdp\"}} +{d['m_lost']}")
print(f"{name}: delivered to the detector {share:.2f} % of the SYNs the program saw; "
      f"agent {cores:.2f} cores (its CPU from the flood's start to the end of its drain / {secs:.2f} s), "
      f"{d['cpu'] / hz / max(seen, 1) * 1e6:.2f} µs of CPU per SYN")
if gen and float(gen["fps"]) < 0.95 * float(os.environ["RATE"]):
    print(f"{name}: note: xdpgen reached {float(gen['fps']):.0f} frames/s, not the {os.environ['RATE']} asked "
          "(the receiving side's softirq work runs on the sender's CPU)")
problems = []
if d["lines"] != d["reported"]:
    problems.append(f"{d['lines']} lines but the program reported {d['reported']}")
if d["m_new"] != d["lines"]:
    problems.append(f"tcpwatch_new_connections_total rose by {d['m_new']}, {d['lines']} lines")
if d["m_lost"] != d["lost"]:
    problems.append(f"tcpwatch_events_lost_total rose by {d['m_lost']}, the program lost {d['lost']}")
if d["lines"] + d["m_lost"] != seen:
    problems.append(f"lines + counted losses = {d['lines'] + d['m_lost']}, not the {seen} seen")
if gen:
    if d["xmit"] != int(gen["frames"]) or d["xerr"]:
        problems.append(f"B's veth sent {d['xmit']} XDP frames ({d['xerr']} errors), not {gen['frames']}")
    if seen != d["xmit"]:
        problems.append(f"the program saw {seen} SYNs, B sent {d['xmit']}")
else:
    # hping3: a few packets that are not SYNs (neighbour discovery) may arrive too.
    if not 0 <= d["rx"] - seen <= 20:
        problems.append(f"A received {d['rx']}, the program saw {seen}")
for p in problems:
    print(f"{name}: ACCOUNTING FAILED: {p}")
label = os.environ["LABEL"]
if name == "overflow":
    figure(f"xdp overflow (agent stopped, {label}): SYNs accounted (lines + counted ring losses)",
           d["lines"] + d["m_lost"], "SYNs", "SYNs the program saw", seen)
else:
    figure(f"xdp flood ({label}, ~{rate:.0f} SYN/s): SYNs delivered to the detector", d["lines"], "SYNs",
           "SYNs the program saw (reported + lost)", seen, "ratio >= 0.99")
    if gen:
        figure(f"xdp flood ({label}): SYNs the program saw", seen, "SYNs",
               "frames B's veth sent as XDP frames (xdp_xmit)", d["xmit"])
    figure(f"xdp flood ({label}): ring-buffer losses (tcpwatch_events_lost_total)", d["m_lost"], "SYNs")
    figure(f"xdp flood ({label}): agent CPU while flooded", f"{cores:.2f}", "cores", "-", "-", "value <= 1")
sys.exit(1 if problems else 0)
PY
}

echo "flood: load average $(cut -d' ' -f1-3 /proc/loadavg)"
# 2a. xdpgen at $RATE, over each of $FAMILIES (frame numbers apart: no
# source of one flood is another's).
first=0
for fam in $FAMILIES; do
  before=$(snapshot)
  gen=$(xdpgen_flood "$FLOOD_SECS" "$first" "$fam")
  drained
  after=$(snapshot)
  LABEL="xdpgen IPv$fam ${RATE}/s" account "xdpgen IPv$fam" "$FLOOD_SECS" "$before" "$after" "$gen" ||
    FAILED+=("xdpgen IPv$fam")
  first=$((first + 500000000))
done

# 2b. hping3 --flood, as before (what hping3 reaches on this host: a process
# sending through a raw socket, each packet an skb).
before=$(snapshot)
lab_exec b timeout -s INT "$FLOOD_SECS" hping3 --flood -S --rand-source -p 8080 10.250.0.1 \
  >"$WORK/hping" 2>&1 || true
drained
after=$(snapshot)
SENT=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$WORK/hping")
echo "hping3: sent ${SENT:-?} SYNs in $FLOOD_SECS s"
LABEL="hping3" account hping3 "$FLOOD_SECS" "$before" "$after" || FAILED+=(hping3)

# --- 3. overflow: the agent stopped (SIGSTOP) for an xdpgen flood ------------
before=$(snapshot)
kill -STOP "$AGENT"
gen=$(xdpgen_flood "$OVERFLOW_SECS" 2000000000)
kill -CONT "$AGENT"
drained
after=$(snapshot)
LABEL="xdpgen ${RATE}/s" account overflow "$OVERFLOW_SECS" "$before" "$after" "$gen" || FAILED+=(overflow)

read -r UT ST < <(awk '{print $14, $15}' "/proc/$AGENT/stat")
HWM=$(awk '/VmHWM/{print $2, $3}' "/proc/$AGENT/status")
lab_stop "$AGENT"
CPU=$(python3 -c "print(f'{($UT + $ST) / $(getconf CLK_TCK):.2f}')")
echo "floods: agent CPU $CPU s (user+sys, whole run), peak RSS $HWM; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$FIGURE" "xdp floods: agent CPU time (all floods)" "$CPU" s
"$FIGURE" "xdp flood: peak RSS" "$(awk '{printf "%.1f", $1 / 1024}' <<<"$HWM")" MiB - - "value < 64"
[ ${#FAILED[@]} -eq 0 ] || lab_die "the accounting does not balance: ${FAILED[*]}"
fi

# --- 4. cost per packet of ordinary traffic, against the program before ------
want cost || exit 0
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
