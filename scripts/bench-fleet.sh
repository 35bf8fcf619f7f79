#!/usr/bin/env bash
# Fleet mode (docs/fleet.md), measured in network namespaces of this machine
# (a bridge joining the hosts; no other interface, no default route):
#   1. propagation: three agents (`pcap`, `--block nftables`) on hosts a, b,
#      c share one redis-server on host r; host s scans a from a new address
#      ROUNDS times (4 ports, the default rule is more than 3). For each
#      scan, the time from the scanner's element appearing in a's nftables
#      set (a's decision, applied) to the same element in c's set, both
#      seen by `nft monitor` in their namespace and stamped by one clock
#      (p50, p99, max; target p99 <= 100 ms);
#   2. one Redis under a fleet: `examples/fleet_load.rs` playing NODES
#      nodes at RATE new inbound connections a second each (every one from
#      a new address: the worst case) against the lab's redis-server for
#      LOAD_SECONDS: Redis commands/s and CPU, and the fleet size one shard
#      holds at 70% of a core;
#   3. the agent's own cost: one agent on a with the fleet off, then on,
#      under the same CONN_RATE new inbound connections a second for
#      CPU_SECONDS: real connections from one client (`examples/storm.rs`,
#      what the fleet aggregates best), then SYNs each from a new random
#      address (`hping3 --rand-source`, the worst case); the agent's CPU
#      (user+sys) per connection it saw, as % of one core at CONN_RATE.
# Needs root, nft, redis-server, redis-cli, hping3, python3, stdbuf.
# Usage: scripts/bench-fleet.sh   (ROUNDS 20, NODES 1000, RATE 50,
#   LOAD_SECONDS 20, CONN_RATE 1000, CPU_SECONDS 15 in the environment)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
export FIGURE=$PWD/scripts/bench-figure
ROUNDS=${ROUNDS:-20}
NODES=${NODES:-1000}
RATE=${RATE:-50}
LOAD_SECONDS=${LOAD_SECONDS:-20}
CONN_RATE=${CONN_RATE:-1000}
CPU_SECONDS=${CPU_SECONDS:-15}
BIN=${BIN:-target/release/tcpwatch}
lab_need root nft redis-server redis-cli hping3 python3 stdbuf ip
[ -x "$BIN" ] || cargo build --release --locked
cargo build --release --locked -q --example fleet_load --example storm
BIN=$(realpath "$BIN")
LOAD=$(realpath target/release/examples/fleet_load)
STORM=$(realpath target/release/examples/storm)

lab_init
WORK=$LAB_WORK
NET=10.252.0
REDIS_PORT=16379
URL=redis://$NET.10:$REDIS_PORT
lab_bridge hub
lab_host a b c r s
for host in a b c r s; do lab_plug hub "$host"; done
lab_addr a eth0 "$NET.1/24"
lab_addr b eth0 "$NET.2/24"
lab_addr c eth0 "$NET.3/24"
lab_addr r eth0 "$NET.10/24"
lab_addr s eth0 "$NET.20/24"
for i in $(seq 0 $((ROUNDS - 1))); do lab_addr s eth0 "$NET.$((100 + i))/24"; done

# No password: a lab namespace only the agents reach.
lab_bg r redis-server --port "$REDIS_PORT" --bind "$NET.10" --protected-mode no --save "" --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1
REDIS=$LAB_PID
lab_wait_listen r "$REDIS_PORT"
redis() { lab_exec r redis-cli -h "$NET.10" -p "$REDIS_PORT" "$@"; }
echo "redis: $(redis-server --version | cut -d' ' -f1-3) on $URL"

COMMON=(run --source pcap --interface eth0 --state off --control off --metrics-addr off
  --format text)
BLOCKING=(--block nftables --block-ttl 10m --max-blocks-per-minute off)

# --- 1. propagation ----------------------------------------------------------
# monitor HOST: every element added to HOST's nftables sets, `TIME ADDRESS`
# (Unix seconds, this machine's clock), as `nft monitor` reports it.
STAMP='
import re, subprocess, sys, time
nft = subprocess.Popen(["stdbuf", "-oL", "nft", "monitor", "new", "elements"],
                       stdout=subprocess.PIPE, text=True)
pat = re.compile(r"(?:add|create) element inet tcpwatch blocked4 \{ ([0-9.]+)")
for line in nft.stdout:
    t = time.time()
    m = pat.search(line)
    if m:
        print(f"{t:.6f} {m.group(1)}", flush=True)
'
declare -A AGENTS
for host in a b c; do
  lab_bg "$host" python3 -u -c "$STAMP" >"$WORK/elements-$host"
  lab_bg "$host" "$BIN" "${COMMON[@]}" "${BLOCKING[@]}" --fleet "$URL" --node-name "node-$host" \
    >"$WORK/agent-$host.out" 2>"$WORK/agent-$host.err"
  AGENTS[$host]=$LAB_PID
done
for host in a b c; do lab_expect "$WORK/agent-$host.err" "fleet: following " 30; done

lab_exec s python3 - "$NET" "$ROUNDS" <<'EOF'
import socket, sys, time
net, rounds = sys.argv[1], int(sys.argv[2])
for i in range(rounds):
    held = []
    for port in (7001, 7002, 7003, 7004):
        s = socket.socket()
        s.bind((f"{net}.{100 + i}", 0))
        s.setblocking(False)
        s.connect_ex((f"{net}.1", port))
        held.append(s)
        time.sleep(0.02)
    time.sleep(1.0)
    for s in held:
        s.close()
EOF
sleep 2
python3 - "$WORK" "$NET" "$ROUNDS" <<'EOF'
import os, subprocess, sys
work, net, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def seen(host):
    out = {}
    for line in open(f"{work}/elements-{host}"):
        t, ip = line.split()
        out.setdefault(ip, float(t))
    return out
a, b, c = seen("a"), seen("b"), seen("c")
lat, missing = [], 0
for i in range(rounds):
    ip = f"{net}.{100 + i}"
    if ip in a and ip in c:
        lat.append((c[ip] - a[ip]) * 1000)
    else:
        missing += 1
lat.sort()
if not lat:
    sys.exit(f"bench-fleet: no block reached c ({len(a)} on a, {len(b)} on b)")
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
both = sum(1 for i in range(rounds) if f"{net}.{100 + i}" in b)
print(f"propagation a -> c: {len(lat)}/{rounds} blocks (b got {both}); "
      f"p50 {pct(0.50):.2f} ms, p99 {pct(0.99):.2f} ms, max {lat[-1]:.2f} ms")
figure = os.environ["FIGURE"]
subprocess.run([figure, f"fleet: blocks not propagated (of {rounds})", str(missing),
                "blocks", "-", "-", "value < 1"], check=True)
subprocess.run([figure, "fleet: a's block to c's kernel set p50", f"{pct(0.50):.2f}", "ms"], check=True)
subprocess.run([figure, "fleet: a's block to c's kernel set p99", f"{pct(0.99):.2f}", "ms",
                "-", "-", "value <= 100"], check=True)
EOF
for host in a b c; do lab_stop "${AGENTS[$host]}"; done

# --- 2. one Redis under 1,000 nodes ------------------------------------------
redis FLUSHALL >/dev/null
lab_exec r "$LOAD" --nodes "$NODES" --rate "$RATE" --seconds "$LOAD_SECONDS" --model new \
  --url "$URL" >"$WORK/load.out" 2>"$WORK/load.err" || {
  cat "$WORK/load.err" >&2
  exit 1
}
cat "$WORK/load.out"
pick() { sed -n "s/.*$1.*/\\1/p" "$WORK/load.out" | head -n1; }
OPS=$(pick 'Redis \([0-9]*\) commands\/s')
RCPU=$(pick 'Redis CPU \([0-9.]*\)% of one core')
ATTEMPTS=$(pick 'attempts \([0-9]*\)\/s')
HOLDS=$(pick 'holds about \([0-9]*\) nodes')
"$FIGURE" "fleet_load $NODES nodes x $RATE conn/s (new addresses): attempts" "$ATTEMPTS" "/s"
"$FIGURE" "fleet_load $NODES nodes x $RATE conn/s: Redis commands" "$OPS" "/s"
"$FIGURE" "fleet_load $NODES nodes x $RATE conn/s: Redis CPU" "$RCPU" "% of a core"
"$FIGURE" "fleet_load: nodes one Redis shard holds at 70% of a core ($RATE conn/s each)" "$HOLDS" nodes
redis FLUSHALL >/dev/null

# --- 3. the agent's CPU, fleet off and on --------------------------------------
TICK=$(getconf CLK_TCK)
cpu_seconds() {
  awk -v tick="$TICK" '{printf "%.2f", ($14 + $15) / tick}' "/proc/$1/stat"
}
# The paced client closes first and keeps each connection's TIME-WAIT:
# four runs of CONN_RATE x CPU_SECONDS connections within a minute need
# more than the default ephemeral ports (slowing connect()).
lab_exec s sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
lab_bg a "$STORM" serve 8081
SERVER=$LAB_PID
lab_wait_listen a 8081
declare -A CPU
for load in client random; do
  for fleet in off on; do
    extra=()
    [ "$fleet" = on ] && extra=(--fleet "$URL" --node-name node-a)
    lab_bg a "$BIN" "${COMMON[@]}" --block none "${extra[@]}" \
      >"$WORK/cpu-$load-$fleet.out" 2>"$WORK/cpu-$load-$fleet.err"
    AGENT=$LAB_PID
    lab_expect "$WORK/cpu-$load-$fleet.err" "watching: pcap" 30
    [ "$fleet" = on ] && lab_expect "$WORK/cpu-$load-$fleet.err" "fleet: following " 30
    sleep 1
    BEFORE=$(cpu_seconds "$AGENT")
    STARTED=$(date +%s.%N)
    if [ "$load" = client ]; then
      lab_exec s "$STORM" connect "$NET.1:8081" "$CONN_RATE" "$CPU_SECONDS" >/dev/null
    else
      lab_exec s timeout "$CPU_SECONDS" hping3 -q -S -p 8081 -i "u$((1000000 / CONN_RATE))" \
        --rand-source "$NET.1" >/dev/null 2>&1 || true
    fi
    USED=$(cpu_seconds "$AGENT")
    ELAPSED=$(python3 -c "import time; print(time.time() - $STARTED)")
    lab_stop "$AGENT"
    LINES=$(grep -c "New connection: " "$WORK/cpu-$load-$fleet.out" || true)
    # Per connection the agent saw, then at CONN_RATE: a load generator
    # slowed by a busy host makes fewer connections, not cheaper ones.
    PCT=$(python3 -c "print(f'{($USED - $BEFORE) * 100 * $CONN_RATE / max($LINES, 1):.2f}')")
    CPU[$load-$fleet]=$PCT
    echo "cpu, $load, fleet $fleet: $LINES connection lines in $(printf '%.1f' "$ELAPSED") s," \
      "agent CPU $(python3 -c "print(f'{$USED - $BEFORE:.2f}')") s: $PCT% of a core at $CONN_RATE/s"
  done
  case $load in
    client) what="$CONN_RATE conn/s from one client" ;;
    random) what="$CONN_RATE SYN/s each from a new address" ;;
  esac
  "$FIGURE" "fleet: agent CPU, fleet on, $what" "${CPU[$load-on]}" "% of a core" \
    "fleet off, the same load" "${CPU[$load-off]}"
  "$FIGURE" "fleet: agent extra CPU for the fleet, $what" \
    "$(python3 -c "print(f'{${CPU[$load-on]} - ${CPU[$load-off]}:.2f}')")" "% of a core"
done
lab_stop "$SERVER"
lab_stop "$REDIS"
