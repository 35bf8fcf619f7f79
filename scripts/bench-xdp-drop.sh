#!/usr/bin/env bash
# XDP drop cost measured the way a NIC delivers packets: what it costs the
# receiving host to drop a blocked scanner's packets with `--block xdp`
# versus `--block nftables`, when the packets arrive as XDP frames (no skb
# built before XDP runs), as from a NIC driver with native XDP.
#
# Why not the hping3 figure (scripts/bench-xdp-block.sh): a packet sent by
# hping3 through a veth reaches the peer as an skb the kernel has already
# built, so XDP can only save the work after it. Here the frames come from
# benches/xdpgen (BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on a program
# that redirects to the sending veth end): the kernel transmits them with
# ndo_xdp_xmit, and the receiving end runs its native XDP program on the
# bare frame; an skb is built only for a frame the program passes.
#
# Setup: two throwaway namespaces joined by a veth pair ("rx" runs the real
# agent, "tx" scans and sends; scripts/lib/lab.sh makes them and removes
# them, and every process in them, however the run ends); nothing leaves
# them. Each round, for each
# backend (interleaved, so drift on a shared host hits both alike):
#   1. the agent starts in rx: `--source netlink --block B` (a polling
#      source: no per-packet work of its own in either round). For
#      `--block nftables`, a minimal native XDP program that passes
#      everything (benches/xdpgen/pass.bpf.c) is attached to rx's eth0 first,
#      so both backends receive identical XDP frames; for `--block xdp`, the
#      agent attaches its own program (checked: driver mode in both).
#   2. tx scans rx: connects to 4 ports over IPv4 and over IPv6 and holds
#      the connections (rx queues them unaccepted); the agent sees them,
#      detects two scans and blocks both of tx's addresses (the script waits
#      for both "Blocked" lines). The connections stay idle (nothing crosses
#      the block) until the agent has stopped.
#   3. softirq time is sampled idle for $IDLE_SECS s (the baseline rate),
#      then, per family, xdpgen sends $FRAMES frames ($KIND: syn = TCP SYN
#      to port 9000, udp = UDP to port 9000) from tx's blocked address.
# Cost = the softirq column of /proc/stat summed over CPUs (the receive
# path runs in NET_RX softirq, in ksoftirqd or at the generator's
# local_bh_enable), over the send, minus the idle rate times the send's
# duration, in ms per million frames. The sending side's own work is system
# time of the generator and is not counted. Ratio = XDP / nftables medians
# (target <= 0.5).
#
# Proof that every frame was dropped by the intended path, every round:
#   - both: tx's veth transmitted exactly $FRAMES XDP frames (ethtool
#     tx_queue_0_xdp_xmit, no xmit errors) and rx's XDP program ran on them
#     (rx_queue_0_xdp_packets >= $FRAMES);
#   - xdp: rx's XDP drops (rx_queue_0_xdp_drops) and the agent's
#     tcpwatch_xdp_dropped_packets_total{family} both rose by exactly
#     $FRAMES, and rx's IP stack received none of them (InReceives rises
#     by a stray packet of the namespaces' own at most);
#   - nftables: no XDP drop; rx's IP stack received them (InReceives
#     >= $FRAMES, no header/address errors), and a counter in a chain of our
#     own at prerouting priority -299 (just after the agent's raw-priority
#     chain, -300) saw none of them: the agent's chain dropped them all. (The
#     agent's sets carry no counters and the agent's table is not ours to
#     change; a counter before -300 would add work to the measured path.)
#
# Needs root, kernel >= 5.18, clang, libbpf-dev, nft, ethtool,
# curl, python3 (scripts/install-deps.sh installs them). Usage (all optional):
#   FRAMES=5000000 ROUNDS=5 KIND=syn FAMILIES="4 6" scripts/bench-xdp-drop.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
FIGURE=$PWD/scripts/bench-figure

FRAMES=${FRAMES:-5000000}
ROUNDS=${ROUNDS:-5}
KIND=${KIND:-syn}
FAMILIES=${FAMILIES:-4 6}
IDLE_SECS=${IDLE_SECS:-2}
METRICS_PORT=9479

lab_need root clang nft ethtool curl python3 ip
[ -f /usr/include/bpf/libbpf.h ] || lab_die "needs libbpf-dev (scripts/install-deps.sh installs it)"
case "$KIND" in udp | syn) ;; *) lab_die "KIND must be udp or syn" ;; esac
read -r kmajor kminor _ < <(uname -r | tr '.-' '  ')
if [ "$kmajor" -lt 5 ] || { [ "$kmajor" -eq 5 ] && [ "$kminor" -lt 18 ]; }; then
  lab_die "needs kernel >= 5.18 (BPF_F_TEST_XDP_LIVE_FRAMES); this is $(uname -r)"
fi

target_dir=$(realpath "${CARGO_TARGET_DIR:-target}")
cargo build --release --locked --bin tcpwatch >/dev/null
BIN=$target_dir/release/tcpwatch

# The generator and the pass program, built into target/xdpgen.
# shellcheck source=lib/xdpgen.sh
. scripts/lib/xdpgen.sh
xdpgen_build "$target_dir"
PASS_OBJ=$XDPGEN_PASS

# The lab: its clean-up kills the agent, the listeners, the scanner and
# xdpgen, and deleting rx's namespace takes the veth pair, the XDP programs
# attached to it and the agent's nftables table with it.
lab_init
work=$LAB_WORK
agent=""
scanner=""

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
sample_load() { while sleep 5; do cut -d' ' -f1 /proc/loadavg; done >"$work/load"; }
lab_spawn sample_load
load_sampler=$LAB_PID

RX4=10.252.0.1 TX4=10.252.0.2 RX6=fd00:252::1 TX6=fd00:252::2
lab_pair rx tx eth0 10.252.0 fd00:252::
rx=$(lab_ns rx)
tx=$(lab_ns tx)
mac_of() { ip -n "$1" -j link show eth0 | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["address"])'; }
RX_MAC=$(mac_of "$rx")
TX_MAC=$(mac_of "$tx")
# Permanent neighbours both ways: no ARP or neighbour-discovery probe from
# tx's (blocked) addresses lands among the counted drops.
ip -n "$rx" neigh replace $TX4 lladdr "$TX_MAC" dev eth0 nud permanent
ip -n "$rx" neigh replace $TX6 lladdr "$TX_MAC" dev eth0 nud permanent
ip -n "$tx" neigh replace $RX4 lladdr "$RX_MAC" dev eth0 nud permanent
ip -n "$tx" neigh replace $RX6 lladdr "$RX_MAC" dev eth0 nud permanent

# Listeners on the scanned ports (IPv4 and IPv6) that never accept: the
# scanner's connections stay in their queues, where the netlink source sees them.
PORTS=(8001 8002 8003 8004)
lab_bg rx python3 -c '
import socket, sys, time
socks = []
for p in map(int, sys.argv[1:]):
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, p)); s.listen(4096); socks.append(s)
time.sleep(100000)' "${PORTS[@]}"
lab_wait_listen rx "${PORTS[3]}"

# Our counter just after the agent's raw-priority chain (see the header).
lab_exec rx nft -f - <<EOF
table inet xdpgen_probe {
  chain after_raw {
    type filter hook prerouting priority -299; policy accept;
    ip saddr $TX4 counter
    ip6 saddr $TX6 counter
  }
}
EOF

# ---- counters ---------------------------------------------------------------
softirq_per_cpu() { awk '/^cpu[0-9]/{printf "%s ", $8} END {print ""}' /proc/stat; }
ethtool_stat() { ip netns exec "$1" ethtool -S eth0 | awk -v k="$2:" '$1 == k {print $2}'; }
# ip_in FAMILY: rx's IP InReceives, and its header plus address errors.
# shellcheck disable=SC2016 # awk programs
ip_in() {
  if [ "$1" = 4 ]; then
    lab_exec rx awk '/^Ip: [0-9]/ {print $4, $5 + $6}' /proc/net/snmp
  else
    lab_exec rx awk '$1 == "Ip6InReceives" {r = $2} $1 == "Ip6InHdrErrors" || $1 == "Ip6InAddrErrors" {e += $2} END {print r, e}' /proc/net/snmp6
  fi
}
after_raw() {
  local match="ip saddr $TX4"
  [ "$1" = 6 ] && match="ip6 saddr $TX6"
  lab_exec rx nft list chain inet xdpgen_probe after_raw |
    awk -v m="$match" 'index($0, m) {for (i = 1; i <= NF; i++) if ($i == "packets") print $(i + 1)}'
}
# agent_dropped ipv4|ipv6|all: the agent's tcpwatch_xdp_dropped_packets_total.
agent_dropped() {
  local fam=$1
  [ "$fam" = all ] && fam=""
  lab_exec rx curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk -v f="family=\"$fam" '/^tcpwatch_xdp_dropped_packets_total/ && index($0, f) {n += $2} END {print n + 0}'
}
# agent_synced: waits until the agent's metric (copied from the kernel every
# second) has caught up with rx's XDP drops since the agent started.
agent_synced() {
  for _ in $(seq 40); do
    [ "$(agent_dropped all)" -eq $(($(ethtool_stat "$rx" rx_queue_0_xdp_drops) - drops_at_start)) ] && return 0
    sleep 0.1
  done
  lab_die "the agent's tcpwatch_xdp_dropped_packets_total does not match rx's XDP drops"
}
# xdp_attached: "MODE PROGRAM" of rx's eth0 (mode 1 = driver).
xdp_attached() {
  ip -n "$rx" -j -d link show eth0 | python3 -c '
import json, sys
xdp = json.load(sys.stdin)[0].get("xdp", {})
print(xdp.get("mode", 0), xdp.get("prog", {}).get("name", "-"))'
}

# ---- agent ------------------------------------------------------------------
start_agent() {
  local block=$1
  : >"$work/out"
  : >"$work/err"
  lab_bg rx "$BIN" run --source netlink --interval 200ms --block "$block" \
    --interface eth0 --block-ttl 1h --state off --metrics-addr "127.0.0.1:$METRICS_PORT" \
    >"$work/out" 2>"$work/err"
  agent=$LAB_PID
  lab_expect "$work/err" "tcpwatch: watching"
}
stop_agent() {
  lab_stop "$agent"
  agent=""
}
# scan_and_wait: tx connects to the 4 ports of rx over IPv4 and IPv6 and
# holds the connections (nmap -sT resets each at once, too fast for a
# polling source); waits for both blocks. The connections stay idle (no
# packet crosses the block) until end_scan, after the agent has stopped.
scan_and_wait() {
  lab_bg tx python3 -c '
import socket, sys, time
held = [socket.create_connection((a, int(p))) for a in sys.argv[1:3] for p in sys.argv[3:]]
time.sleep(100000)' $RX4 $RX6 "${PORTS[@]}"
  scanner=$LAB_PID
  for _ in $(seq 100); do
    grep -q "Blocked $TX4" "$work/out" && grep -q "Blocked $TX6" "$work/out" && return 0
    sleep 0.1
  done
  lab_die "tx was not blocked: $(cat "$work/out" "$work/err")"
}
end_scan() {
  lab_stop "$scanner" KILL
  scanner=""
}

now() { date +%s.%N; }
softirq_sum() { awk '/^cpu /{print $8}' /proc/stat; }

# measure ROUND BLOCK FAMILY IDLE_RATE: one send; appends a row to $work/rows.
measure() {
  local round=$1 block=$2 fam=$3 idle_rate=$4
  local src=$TX4 dst=$RX4
  [ "$fam" = 6 ] && src=$TX6 dst=$RX6
  local xmit0 xerr0 xpk0 xdr0 in0 err0 raw0 ag0=0 s0 t0
  # The metric first: its HTTP scrapes cross rx's loopback, which IP
  # InReceives would count.
  if [ "$block" = xdp ]; then
    agent_synced
    ag0=$(agent_dropped "ipv$fam")
  fi
  xmit0=$(ethtool_stat "$tx" tx_queue_0_xdp_xmit)
  xerr0=$(ethtool_stat "$tx" tx_queue_0_xdp_xmit_errors)
  xpk0=$(ethtool_stat "$rx" rx_queue_0_xdp_packets)
  xdr0=$(ethtool_stat "$rx" rx_queue_0_xdp_drops)
  read -r in0 err0 < <(ip_in "$fam")
  raw0=$(after_raw "$fam")
  s0=$(softirq_per_cpu)
  t0=$(now)
  local gen
  gen=$(lab_exec tx "$XDPGEN" -i eth0 -n "$FRAMES" -k "$KIND" -s "$src" -d "$dst" \
    -M "$RX_MAC" -P 9000)
  # The receive side may finish in ksoftirqd after xdpgen returns.
  for _ in $(seq 50); do
    [ $(($(ethtool_stat "$rx" rx_queue_0_xdp_packets) - xpk0)) -ge "$FRAMES" ] && break
    sleep 0.02
  done
  local t1 s1
  t1=$(now)
  s1=$(softirq_per_cpu)
  local xmit xerr xpk xdr inr errs raw ag=0
  xmit=$(($(ethtool_stat "$tx" tx_queue_0_xdp_xmit) - xmit0))
  xerr=$(($(ethtool_stat "$tx" tx_queue_0_xdp_xmit_errors) - xerr0))
  xpk=$(($(ethtool_stat "$rx" rx_queue_0_xdp_packets) - xpk0))
  xdr=$(($(ethtool_stat "$rx" rx_queue_0_xdp_drops) - xdr0))
  read -r inr errs < <(ip_in "$fam")
  inr=$((inr - in0))
  errs=$((errs - err0))
  raw=$(($(after_raw "$fam") - raw0))
  if [ "$block" = xdp ]; then
    # The agent copies the kernel's counters into the metric every second.
    agent_synced
    ag=$(($(agent_dropped "ipv$fam") - ag0))
  fi
  python3 - "$round" "$block" "$fam" "$FRAMES" "$idle_rate" "$(getconf CLK_TCK)" \
    "$t0" "$t1" "$s0" "$s1" "$gen" "$xmit" "$xerr" "$xpk" "$xdr" "$inr" "$errs" "$raw" "$ag" \
    >>"$work/rows" <<'EOF'
import sys
(rnd, block, fam, frames, idle_rate, hz, t0, t1, s0, s1, gen,
 xmit, xerr, xpk, xdr, inr, errs, raw, ag) = sys.argv[1:]
frames, hz, idle_rate = int(frames), int(hz), float(idle_rate)
xmit, xerr, xpk, xdr, inr, errs, raw, ag = map(int, (xmit, xerr, xpk, xdr, inr, errs, raw, ag))
per_cpu = [int(b) - int(a) for a, b in zip(s0.split(), s1.split())]
span = float(t1) - float(t0)
gen = dict(kv.split("=") for kv in gen.split())
ticks = sum(per_cpu)
net = max(0.0, ticks - idle_rate * span)
ms_per_m = net * 1000 / hz / (frames / 1e6)
problems = []
if xmit != frames or xerr:
    problems.append(f"tx sent {xmit} XDP frames ({xerr} xmit errors), not {frames}")
if xpk < frames:
    problems.append(f"rx's XDP program ran on {xpk} frames, not {frames}")
if block == "xdp":
    if xdr != frames:
        problems.append(f"rx XDP drops {xdr}, not {frames}")
    if ag != frames:
        problems.append(f"agent's tcpwatch_xdp_dropped_packets_total rose by {ag}, not {frames}")
    if inr > frames // 1000:  # a stray packet of the namespaces' own is fine
        problems.append(f"rx's IP stack received {inr} packets")
    proof = f"agent metric +{ag}, veth xdp_drops +{xdr}, IP InReceives +{inr}"
else:
    if xdr:
        problems.append(f"rx XDP dropped {xdr} frames")
    if inr < frames or errs:
        problems.append(f"rx's IP stack received {inr} ({errs} header/address errors)")
    if raw:
        problems.append(f"{raw} packets got past the agent's raw chain")
    proof = f"veth xdp_drops +{xdr}, IP InReceives +{inr}, past the raw chain {raw}"
status = "ok" if not problems else "FAILED: " + "; ".join(problems)
cpus = "/".join(str(c) for c in per_cpu)
print("\t".join([rnd, block, fam, str(frames), f"{float(gen['seconds']):.3f}", str(ticks),
                 f"{idle_rate * span:.1f}", cpus, f"{ms_per_m:.1f}", proof, status]))
EOF
  tail -n 1 "$work/rows" | awk -F'\t' '{
    printf "round %s  %-8s IPv%s  %s frames  send %6.3f s  softirq %4d ticks (per CPU %s, idle %s)  %7.1f ms/M  %s  %s\n",
      $1, $2, $3, $4, $5, $6, $8, $7, $9, $10, $11 }'
  grep -q "FAILED" <(tail -n 1 "$work/rows") && lab_die "round $round, $block, IPv$fam: frames not dropped by the intended path"
  return 0
}

# idle_rate: softirq ticks per second with nothing sent.
idle_rate() {
  local a b t0 t1
  t0=$(now)
  a=$(softirq_sum)
  sleep "$IDLE_SECS"
  b=$(softirq_sum)
  t1=$(now)
  python3 -c "print(f'{($b - $a) / ($t1 - $t0):.3f}')"
}

round() {
  local r=$1 block=$2
  if [ "$block" = nftables ]; then
    ip -n "$rx" link set dev eth0 xdpdrv obj "$PASS_OBJ" sec xdp
  fi
  drops_at_start=$(ethtool_stat "$rx" rx_queue_0_xdp_drops)
  start_agent "$block"
  local attached
  attached=$(xdp_attached)
  case "$block:$attached" in
    "xdp:1 tcpwatch" | "nftables:1 xdpgen_pass") ;;
    *) lab_die "rx's eth0 XDP (mode, program) is '$attached' for --block $block; want driver mode" ;;
  esac
  scan_and_wait
  local rate
  rate=$(idle_rate)
  for fam in $FAMILIES; do
    measure "$r" "$block" "$fam" "$rate"
  done
  stop_agent
  end_scan
  [ "$block" = nftables ] && ip -n "$rx" link set dev eth0 xdpdrv off
  return 0
}

echo "== XDP drop cost with XDP frames (xdpgen): --block xdp vs --block nftables"
echo "   namespaces $rx/$tx, $(nproc) CPUs, $FRAMES $KIND frames per send, $ROUNDS rounds, load average $load_start"
: >"$work/rows"
for r in $(seq "$ROUNDS"); do
  for block in xdp nftables; do
    round "$r" "$block"
  done
done
lab_stop "$load_sampler"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$work/rows" "$work/load" "$load_start" "$load_end" "$KIND" "$FIGURE" <<'EOF'
import statistics, subprocess, sys
rows_path, load_path, load_start, load_end, kind, figure = sys.argv[1:]
rows = [line.rstrip("\n").split("\t") for line in open(rows_path) if line.strip()]
loads = [float(x) for x in open(load_path).read().split()]
cost, send = {}, {}
for rnd, block, fam, frames, secs, ticks, idle, cpus, ms, proof, status in rows:
    cost.setdefault((fam, block), []).append(float(ms))
    send.setdefault((fam, block), []).append(float(secs) / (int(frames) / 1e6))
print()
print(f"{'family':<7} {'--block':<9} {'softirq ms per M frames: median':>32} {'min':>7} {'max':>7}"
      f" {'send s per M: median':>21} {'rounds':>7}")
for (fam, block), v in sorted(cost.items(), key=lambda kv: (kv[0][0], kv[0][1] != "xdp")):
    w = send[(fam, block)]
    print(f"IPv{fam:<4} {block:<9} {statistics.median(v):>32.1f} {min(v):>7.1f} {max(v):>7.1f}"
          f" {statistics.median(w):>21.3f} {len(v):>7}")
print()
for fam in sorted({f for f, _ in cost}):
    x, n = cost[(fam, "xdp")], cost[(fam, "nftables")]
    ratio = statistics.median(x) / statistics.median(n) if statistics.median(n) else float("inf")
    per_round = [a / b for a, b in zip(x, n) if b]
    spread = f"per round {min(per_round):.2f} to {max(per_round):.2f}" if per_round else ""
    print(f"ratio xdp/nftables IPv{fam}: {ratio:.2f} ({spread}); target <= 0.5: "
          f"{'ok' if ratio <= 0.5 else 'OVER'}")
    subprocess.run([figure, f"xdp drop cost, XDP frames (xdpgen {kind}), IPv{fam}: softirq per million packets",
                    f"{statistics.median(x):.1f}", "ms", "--block nftables",
                    f"{statistics.median(n):.1f}", "ratio <= 0.5"], check=True)
load = (f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"
        if loads else "not sampled")
print(f"load average: {load_start} at the start, {load_end} at the end; 1-min every 5 s: {load}")
if loads and max(loads) > 1.5:
    print("note: a busy host; softirq includes other work there. Re-measure on a quiet host.")
EOF
