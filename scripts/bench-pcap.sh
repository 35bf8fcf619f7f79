#!/usr/bin/env bash
# pcap source vs polling: in two throwaway network namespaces (10.250.0.0/24),
#   1. how many of N short-lived connections (client connects, server accepts
#      and closes at once) `--source procfs --interval 1s` and `--source pcap`
#      report;
#   2. connect-to-line latency of pcap: from just before the client's
#      connect() to the moment the agent's line is read from its stdout
#      (both on CLOCK_REALTIME of this machine), p50/p99/max.
# Needs root. Usage: scripts/bench-pcap.sh [BIN] [N]   (default release, 200)
set -euo pipefail

BIN=${1:-target/release/tcpwatch}
N=${2:-200}
SRV=twbench-srv CLI=twbench-cli
A=10.250.0.1 B=10.250.0.2 PORT=8080

[ "$(id -u)" -eq 0 ] || { echo "bench-pcap: needs root (network namespaces)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench-pcap: no binary at $BIN (cargo build --release)" >&2; exit 1; }
BIN=$(realpath "$BIN")

cleanup() {
  for ns in $SRV $CLI; do
    for pid in $(ip netns pids $ns 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del $ns 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup
ip netns add $SRV
ip netns add $CLI
ip -n $SRV link add eth0 type veth peer name eth0 netns $CLI
for ns in $SRV $CLI; do ip -n $ns link set lo up; ip -n $ns link set eth0 up; done
ip -n $SRV addr add $A/24 dev eth0
ip -n $CLI addr add $B/24 dev eth0

# Accepts and closes at once: the server side is gone before the next poll.
ip netns exec $SRV python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', $PORT)); s.listen(512)
while True:
    c, _ = s.accept(); c.close()
" &
disown
sleep 0.3

# Runs the agent with the given flags in the server namespace while the
# client makes N connections 10 ms apart; prints a JSON summary.
measure() {
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  ip netns exec $SRV python3 -u -c '
import subprocess, sys, time
agent = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
for line in agent.stdout:
    print(f"{time.time():.6f} {line}", end="", flush=True)
' "$BIN" run "$@" --block none --metrics-addr off --state off >"$dir/lines" 2>"$dir/stderr" &
  local agent=$!
  sleep 1.5
  ip netns exec $CLI python3 -c "
import socket, time
for _ in range($N):
    s = socket.socket()
    t = time.time()
    s.connect(('$A', $PORT))
    print(f'{t:.6f} {s.getsockname()[1]}', flush=True)
    s.close()
    time.sleep(0.01)
" >"$dir/client"
  sleep 2.5
  pkill -TERM -P "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  python3 - "$name" "$dir/client" "$dir/lines" "$B" <<'EOF'
import json, sys
name, client, lines, b = sys.argv[1:]
started = {}
for row in open(client):
    t, port = row.split()
    started[int(port)] = float(t)
seen = {}
for row in open(lines):
    t, rest = row.split(" ", 1)
    marker = f"New connection: {b}:"
    if marker in rest:
        port = int(rest.split(marker)[1].split(" ")[0])
        seen.setdefault(port, []).append(float(t))
reported = [p for p in started if p in seen]
dups = sum(len(seen[p]) - 1 for p in reported)
lat = sorted((seen[p][0] - started[p]) * 1000 for p in reported)
pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None
print(json.dumps({"source": name, "connections": len(started), "reported": len(reported),
                  "missed": len(started) - len(reported), "duplicates": dups,
                  "latency_ms_p50": pick(0.5), "latency_ms_p99": pick(0.99),
                  "latency_ms_max": round(lat[-1], 2) if lat else None}))
EOF
  rm -rf "$dir"
}

measure procfs --source procfs --interval 1s
measure pcap --source pcap --interface eth0
