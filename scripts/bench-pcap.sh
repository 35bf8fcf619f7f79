#!/usr/bin/env bash
# pcap source vs polling: in two throwaway network namespaces (10.250.0.0/24),
#   1. how many of N short-lived connections (client connects, server accepts
#      and closes at once) `--source procfs --interval 1s` and `--source pcap`
#      report;
#   2. connect-to-line latency of pcap: from just before the client's
#      connect() to the moment the agent's line is read from its stdout
#      (both on CLOCK_REALTIME of this machine), p50/p99/max.
# Anchor: `tcpdump -l` with the agent's exact filter (examples/pcap_filter.rs)
# and capture settings, measured the same way on its own round of N
# connections: the latency of a capture that prints without parsing.
# Needs root and tcpdump. Usage: scripts/bench-pcap.sh [BIN] [N]   (default release, 200)
set -euo pipefail

BIN=${1:-target/release/tcpwatch}
N=${2:-200}
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
FIGURE=$PWD/scripts/bench-figure
A=10.250.0.1 B=10.250.0.2 PORT=8080

lab_need root tcpdump python3
[ -x "$BIN" ] || lab_die "no binary at $BIN (cargo build --release)"
BIN=$(realpath "$BIN")
cargo build --release --locked --example pcap_filter -q
FILTER=$(target/release/examples/pcap_filter)
SNAPLEN=$(target/release/examples/pcap_filter --snaplen)
BUFFER_KIB=$(target/release/examples/pcap_filter --buffer-kib)

lab_init
RESULTS=$LAB_WORK
lab_pair srv cli eth0 10.250.0

# Accepts and closes at once: the server side is gone before the next poll.
lab_bg srv python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', $PORT)); s.listen(512)
while True:
    c, _ = s.accept(); c.close()
"
lab_wait_listen srv "$PORT"

# measure NAME COMMAND...: runs COMMAND (the agent, or tcpdump) in the server
# namespace while the client makes N connections 10 ms apart; prints a JSON
# summary and keeps it in $RESULTS/NAME.json.
measure() {
  local name=$1; shift
  local dir=$LAB_WORK/$name
  mkdir "$dir"
  lab_bg srv python3 -u -c '
import subprocess, sys, time
agent = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
for line in agent.stdout:
    print(f"{time.time():.6f} {line}", end="", flush=True)
' "$@" >"$dir/lines" 2>"$dir/stderr"
  local agent=$LAB_PID
  sleep 1.5
  lab_exec cli python3 -c "
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
  python3 - "$name" "$dir/client" "$dir/lines" "$B" <<'EOF' | tee "$RESULTS/$name.json"
import json, re, sys
name, client, lines, b = sys.argv[1:]
started = {}
for row in open(client):
    t, port = row.split()
    started[int(port)] = float(t)
seen = {}
for row in open(lines):
    t, rest = row.split(" ", 1)
    # The agent's line, or tcpdump's "IP 10.250.0.2.PORT > ...".
    m = re.search(rf"New connection: {re.escape(b)}:(\d+) |IP {re.escape(b)}\.(\d+) > ", rest)
    if m:
        port = int(m[1] or m[2])
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
}

AGENT=("$BIN" run --block none --metrics-addr off --state off)
measure procfs "${AGENT[@]}" --source procfs --interval 1s
measure pcap "${AGENT[@]}" --source pcap --interface eth0
measure tcpdump tcpdump -i eth0 -p -n -l -s "$SNAPLEN" -B "$BUFFER_KIB" --immediate-mode "$FILTER"

python3 - "$FIGURE" "$RESULTS" <<'EOF'
import json, subprocess, sys
figure, results = sys.argv[1:]
r = {name: json.load(open(f"{results}/{name}.json")) for name in ("procfs", "pcap", "tcpdump")}
n = r["pcap"]["connections"]
rows = [
    (f"pcap: short-lived connections missed (of {n})", r["pcap"]["missed"], "connections",
     "procfs --interval 1s", r["procfs"]["missed"]),
    ("pcap: connect-to-line p50", r["pcap"]["latency_ms_p50"], "ms",
     "tcpdump -l, same filter", r["tcpdump"]["latency_ms_p50"]),
    ("pcap: connect-to-line p99", r["pcap"]["latency_ms_p99"], "ms",
     "tcpdump -l, same filter", r["tcpdump"]["latency_ms_p99"], "value < 5"),
]
for row in rows:
    subprocess.run([figure, *map(str, row)], check=True)
EOF
