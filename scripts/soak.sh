#!/usr/bin/env bash
# Soak test (`make soak`): the agent under a steady load of short connections
# for a long time, with blocking and metrics on, checking that nothing leaks
# and every event is accounted for.
#
# Topology (throwaway namespaces; nothing leaves them, no default routes): a
# "hub" namespace holds a bridge; plugged into it are "srv" (10.251.0.1, the
# agent and an accept-and-close server on ports 8001..), SOAK_CLIENTS client
# hosts (host i has SOAK_ADDRS addresses 10.251.i.1.. and connects only to
# port 8000+i, so no client is ever a scanner) and a scanner host
# (10.251.100.1-8).
#
# Load: each client host opens SOAK_RATE/SOAK_CLIENTS connections a second
# (connect, close), rotating over its addresses (scripts/soak.py client).
# Every SOAK_SCAN_EVERY s the scanner connect-scans 5 closed ports from its
# next address; the agent must print the scan and a `Blocked` line, and a
# probe from that address must then go unanswered (the block is real). Blocks
# last 15 s, so they expire during the run too.
#
# Every 10 s: agent RSS (VmRSS), open fds, CPU ticks and its metrics. At the
# end the agent gets SIGTERM and the accounting is checked (soak.py report):
#   - every client attempt (a connect that sent a SYN) is a `New connection`
#     line or counted in tcpwatch_events_lost_total, and no address has more
#     lines than attempts (a retransmitted SYN prints once: same ISN);
#   - tcpwatch_new_connections_total, _port_scans_total, _blocks_total equal
#     the lines printed; every scan round was detected, blocked and dropped;
#   - fds at the end <= fds after warm-up + 2;
#   - RSS at the end <= RSS after warm-up x 1.10 + SOAK_RSS_SLACK_MIB (4):
#     the tables are bounded and full by then, but the allocator's free lists
#     and per-thread arenas move by a few MiB with the traffic's timing;
#   - agent exit 0, no nftables table or XDP program left behind.
# Warm-up (SOAK_WARMUP, default 150 s): the attempt table fills in 65 s at
# 1,000/s (65,536 entries, 130 s window). A run shorter than twice the
# warm-up cannot show a flat RSS: it is reported, not judged.
#
# Usage: scripts/soak.sh   (root; python3, curl, nft, bpftool; a release build)
#   SOAK_SECONDS=600 SOAK_RATE=1000 SOAK_SOURCE=xdp|pcap (xdp: --block xdp,
#   pcap: --block nftables) SOAK_CLIENTS=4 SOAK_ADDRS=4 SOAK_SCAN_EVERY=30
#   SOAK_KEEP=1 keeps the work directory (agent output, samples) and says where.
# Exit 0 on PASS, 1 on FAIL or error (130 on Ctrl-C). The namespaces come
# from scripts/lib/lab.sh, which removes them however the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh

DURATION=${SOAK_SECONDS:-600}
RATE=${SOAK_RATE:-1000}
SOURCE=${SOAK_SOURCE:-xdp}
CLIENTS=${SOAK_CLIENTS:-4}
ADDRS=${SOAK_ADDRS:-4}
SCAN_EVERY=${SOAK_SCAN_EVERY:-30}
WARMUP=${SOAK_WARMUP:-150}
RSS_SLACK_MIB=${SOAK_RSS_SLACK_MIB:-4}
SAMPLE_EVERY=10
BLOCK_TTL=15s
BIN=$(realpath "${BIN:-target/release/tcpwatch}")
HELPER=$PWD/scripts/soak.py
SRV_IP=10.251.0.1

case "$SOURCE" in
  xdp) BLOCK=xdp ;;
  pcap) BLOCK=nftables ;;
  *) echo "soak: SOAK_SOURCE must be xdp or pcap, not '$SOURCE'" >&2; exit 1 ;;
esac
lab_need root ip python3 curl nft bpftool
[ -x "$BIN" ] || lab_die "no binary at $BIN (make build)"
LAB_KEEP=${SOAK_KEEP:-0}
lab_init
WORK=$LAB_WORK

# --- topology ----------------------------------------------------------------
lab_bridge hub
lab_host srv scan
lab_plug hub srv
lab_plug hub scan
lab_addr srv eth0 "$SRV_IP/16"
for a in $(seq 8); do lab_addr scan eth0 "10.251.100.$a/16"; done
declare -A SRCS
for i in $(seq "$CLIENTS"); do
  lab_host "c$i"
  lab_plug hub "c$i"
  list=
  for a in $(seq "$ADDRS"); do
    lab_addr "c$i" eth0 "10.251.$i.$a/16"
    list+="${list:+,}10.251.$i.$a"
  done
  SRCS[$i]=$list
done

# --- server and agent --------------------------------------------------------
PORTS=$(seq -s ' ' 8001 $((8000 + CLIENTS)))
# shellcheck disable=SC2086 # one argument per port
lab_bg srv python3 "$HELPER" serve $PORTS >"$WORK/serve.out" 2>&1
lab_expect "$WORK/serve.out" ready

lab_bg srv "$BIN" run --source "$SOURCE" --interface eth0 --block "$BLOCK" \
  --block-ttl "$BLOCK_TTL" --metrics-addr 127.0.0.1:9472 --state "$WORK/state" \
  >"$WORK/out" 2>"$WORK/err"
AGENT=$LAB_PID
lab_expect "$WORK/err" "tcpwatch: watching:" 30
PROG=$(lab_exec srv ip -d link show eth0 | sed -n 's/.*prog\/xdp id \([0-9]*\).*/\1/p')
cut -d' ' -f1-3 /proc/loadavg >"$WORK/load.start"
cat >"$WORK/env.json" <<EOF
{"source": "$SOURCE", "block": "$BLOCK", "seconds": $DURATION, "rate": $RATE,
 "clients": $CLIENTS, "warmup": $WARMUP, "rss_slack_mib": $RSS_SLACK_MIB,
 "clk_tck": $(getconf CLK_TCK)}
EOF
echo "soak: $DURATION s, $RATE connections/s from $CLIENTS hosts x $ADDRS addresses, source $SOURCE," \
  "--block $BLOCK, a scan every $SCAN_EVERY s; warm-up $WARMUP s; $(nproc) cores, kernel $(uname -r)," \
  "load $(cat "$WORK/load.start")"

# --- load --------------------------------------------------------------------
CLIENT_RATE=$(python3 -c "print($RATE / $CLIENTS)")
START=$(date +%s)
CLIENT_PIDS=()
for i in $(seq "$CLIENTS"); do
  lab_bg "c$i" python3 "$HELPER" client --rate "$CLIENT_RATE" \
    --seconds "$DURATION" --status "$WORK/client-$i.json" --src "${SRCS[$i]}" "$SRV_IP" $((8000 + i)) \
    2>"$WORK/client-$i.err"
  CLIENT_PIDS+=("$LAB_PID")
done

# appeared SINCE PATTERN: whether PATTERN shows up in the agent's output past
# byte SINCE within 10 s.
appeared() {
  for _ in $(seq 50); do
    tail -c +"$(($1 + 1))" "$WORK/out" | grep -qF "$2" && return 0
    sleep 0.2
  done
  return 1
}

# One scan round per SCAN_EVERY s from the next scanner address, ending
# early enough for its block to expire before the run does.
scans() {
  local round=0 addr since detected blocked probe
  sleep 15
  while [ $(($(date +%s) - START + 20)) -lt "$DURATION" ]; do
    addr=10.251.100.$((round % 8 + 1))
    since=$(stat -c %s "$WORK/out")
    lab_exec scan python3 "$HELPER" scan --src "$addr" "$SRV_IP" 7001 7002 7003 7004 7005
    detected=0 blocked=0
    appeared "$since" "Port scan detected: $addr -> " && detected=1
    appeared "$since" "Blocked $addr for" && blocked=1
    probe=$(lab_exec scan python3 "$HELPER" probe --src "$addr" "$SRV_IP" 8001)
    echo "{\"t\": $(($(date +%s) - START)), \"addr\": \"$addr\", \"detected\": $detected," \
      "\"blocked\": $blocked, \"probe\": \"$probe\"}" >>"$WORK/scans.jsonl"
    round=$((round + 1))
    sleep "$SCAN_EVERY"
  done
}
: >"$WORK/scans.jsonl"
lab_spawn scans
SCANS=$LAB_PID

scrape() { lab_exec srv curl -sf --max-time 5 127.0.0.1:9472/metrics >"$WORK/metrics.now"; }
sample() {
  scrape || echo "soak: warning: metrics scrape failed" >&2
  python3 "$HELPER" sample "$WORK" "$AGENT" "$(($(date +%s) - START))"
}

next=$SAMPLE_EVERY
sample
while [ $(($(date +%s) - START)) -lt "$DURATION" ]; do
  sleep $((START + next - $(date +%s) > 0 ? START + next - $(date +%s) : 0))
  next=$((next + SAMPLE_EVERY))
  kill -0 "$AGENT" 2>/dev/null || { echo "soak: the agent died:" >&2; tail -5 "$WORK/err" >&2; break; }
  sample
done

for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" || echo "soak: a client failed: $(cat "$WORK"/client-*.err)" >&2; done
wait "$SCANS" || true

# Drain: the agent's counters stop moving once it has printed what it holds.
last=
for _ in $(seq 30); do
  scrape || true
  now=$(grep -E '^tcpwatch_(new_connections|events_lost)_total' "$WORK/metrics.now" | md5sum)
  [ "$now" = "$last" ] && break
  last=$now
  sleep 1
done
sample
cp "$WORK/metrics.now" "$WORK/metrics.final"
cut -d' ' -f1-3 /proc/loadavg >"$WORK/load.end"
stat -c %s "$WORK/state" >"$WORK/state_bytes" 2>/dev/null || echo 0 >"$WORK/state_bytes"

# --- shutdown and leftovers ----------------------------------------------------
kill -TERM "$AGENT" 2>/dev/null || true
rc=0
if ! timeout 30 tail --pid="$AGENT" -f /dev/null; then
  echo "soak: the agent did not exit within 30 s of SIGTERM; killing it" >&2
  kill -KILL "$AGENT" 2>/dev/null || true
fi
wait "$AGENT" || rc=$?
echo "$rc" >"$WORK/exit"
: >"$WORK/leftovers.txt"
if lab_exec srv nft list table inet tcpwatch >/dev/null 2>&1; then
  echo "nft table inet tcpwatch still in $(lab_ns srv)" >>"$WORK/leftovers.txt"
fi
if lab_exec srv ip link show eth0 | grep -q xdp; then
  echo "an XDP program still attached to eth0" >>"$WORK/leftovers.txt"
fi
if [ -n "$PROG" ] && bpftool prog show id "$PROG" >/dev/null 2>&1; then
  echo "XDP program id $PROG still loaded" >>"$WORK/leftovers.txt"
fi
wc -l <"$WORK/leftovers.txt" >"$WORK/leftovers"
if [ -s "$WORK/err" ]; then
  echo "soak: agent stderr (last 5 lines):"
  tail -5 "$WORK/err" | sed 's/^/  /'
fi
python3 "$HELPER" report "$WORK"
