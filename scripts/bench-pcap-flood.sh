#!/usr/bin/env bash
# The pcap source under a 5 s `hping3 --flood -S --rand-source`, between two
# throwaway namespaces joined by a veth (nothing leaves them): SYNs sent
# against SYNs accounted for (lines printed + drops the kernel reported,
# tcpwatch_events_lost_total{source="pcap"}), the agent's CPU time and its
# peak RSS.
#
# Anchor, in the same run: `tcpdump -w /dev/null` with the agent's exact
# filter (printed by examples/pcap_filter.rs, not copied) and the agent's
# capture settings (no promiscuous mode, immediate mode, 96-byte snaplen,
# 4 MiB buffer), under a second flood of the same length: packets captured
# and dropped by the kernel, CPU time, peak RSS. The two floods run one after
# the other so the agent and tcpdump never compete for a core; shares are
# given of each flood's own count of SYNs sent.
# Needs root, hping3 and tcpdump. Usage: scripts/bench-pcap-flood.sh [BIN]
set -euo pipefail
BIN=$(realpath "${1:-target/release/tcpwatch}")
cd "$(dirname "$0")/.."
FIGURE=scripts/bench-figure
NA=twpf-a-$$ NB=twpf-b-$$
FLOOD_SECS=5
WORK=$(mktemp -d)
[ "$(id -u)" -eq 0 ] || { echo "bench-pcap-flood: needs root" >&2; exit 1; }
for tool in hping3 tcpdump python3; do
  command -v "$tool" >/dev/null || { echo "bench-pcap-flood: $tool missing" >&2; exit 1; }
done
cargo build --release --locked --example pcap_filter -q
FILTER=$(target/release/examples/pcap_filter)
cleanup() {
  for ns in "$NA" "$NB"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NA"; ip netns add "$NB"
ip -n "$NA" link add eth0 type veth peer name eth0 netns "$NB"
ip -n "$NA" addr add 10.249.0.1/24 dev eth0; ip -n "$NB" addr add 10.249.0.2/24 dev eth0
for ns in "$NA" "$NB"; do ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up; done

# wait_for FILE TEXT: until TEXT appears in FILE (10 s at most).
wait_for() {
  for _ in $(seq 100); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  echo "bench-pcap-flood: no '$2' in $1: $(cat "$1")" >&2
  exit 1
}

# flood: a FLOOD_SECS flood from B, then 3 s for the capture to drain what
# it holds; prints the SYNs hping3 sent.
flood() {
  ip netns exec "$NB" timeout -s INT "$FLOOD_SECS" hping3 --flood -S --rand-source -p 8080 \
    10.249.0.1 >"$WORK/hping" 2>&1 || true
  sleep 3
  sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$WORK/hping"
}

# usage PID: "CPU_SECONDS PEAK_RSS_MIB" of a running process.
usage() {
  local ticks kib
  ticks=$(awk '{print $14 + $15}' "/proc/$1/stat")
  kib=$(awk '/VmHWM/{print $2}' "/proc/$1/status")
  python3 -c "print(f'{$ticks / $(getconf CLK_TCK):.2f} {$kib / 1024:.1f}')"
}

# --- the agent ---------------------------------------------------------------
ip netns exec "$NA" "$BIN" run --source pcap --interface eth0 --block none --state off \
  --metrics-addr 127.0.0.1:9472 >"$WORK/out" 2>"$WORK/err" &
AGENT=$!
wait_for "$WORK/err" "tcpwatch: watching"
SENT=$(flood)
LOST=$(ip netns exec "$NA" curl -s 127.0.0.1:9472/metrics |
  awk '/^tcpwatch_events_lost_total\{source="pcap"\}/{print $2}')
LOST=${LOST:-0}
LINES=$(grep -c "New connection: " "$WORK/out" || true)
read -r CPU RSS < <(usage "$AGENT")
kill -TERM "$AGENT"; wait "$AGENT" || true

# --- tcpdump, same filter and capture settings ---------------------------------
# `ip netns exec` execs tcpdump, so $! is tcpdump itself.
ip netns exec "$NA" tcpdump -i eth0 -p -n -s 96 -B 4096 --immediate-mode -w /dev/null \
  "$FILTER" 2>"$WORK/tcpdump" &
DUMP=$!
wait_for "$WORK/tcpdump" "listening on"
TD_SENT=$(flood)
read -r TD_CPU TD_RSS < <(usage "$DUMP")
kill -INT "$DUMP"; wait "$DUMP" || true
TD_CAPTURED=$(sed -n 's/^\([0-9]*\) packets captured.*/\1/p' "$WORK/tcpdump")
TD_DROPPED=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$WORK/tcpdump")

share() { python3 -c "print(f'{100 * $1 / max($2, 1):.1f}')"; }
echo "pcap flood: hping3 sent ${SENT:-?} SYNs in ${FLOOD_SECS} s (tcpdump's flood: ${TD_SENT:-?})"
echo "pcap flood: accounted $((LINES + LOST)) = $LINES lines + $LOST kernel drops"
echo "pcap flood: agent   captured $(share "$LINES" "$SENT") %, dropped $(share "$LOST" "$SENT") %," \
  "CPU $CPU s (user+sys), peak RSS $RSS MiB"
echo "pcap flood: tcpdump captured $(share "$TD_CAPTURED" "$TD_SENT") %, dropped $(share "$TD_DROPPED" "$TD_SENT") %," \
  "CPU $TD_CPU s (user+sys), peak RSS $TD_RSS MiB   ($TD_CAPTURED captured, $TD_DROPPED dropped)"

"$FIGURE" "pcap flood: SYNs accounted (lines + kernel drops)" "$((LINES + LOST))" SYNs \
  "hping3 sent" "$SENT"
"$FIGURE" "pcap flood: SYNs captured, share of sent" "$(share "$LINES" "$SENT")" % \
  "tcpdump, same filter" "$(share "$TD_CAPTURED" "$TD_SENT")"
"$FIGURE" "pcap flood: kernel drops, share of sent" "$(share "$LOST" "$SENT")" % \
  "tcpdump, same filter" "$(share "$TD_DROPPED" "$TD_SENT")"
# Per SYN sent: the two floods differ in size (the agent takes CPU from hping3).
per_syn() { python3 -c "print(f'{1e6 * $1 / max($2, 1):.2f}')"; }
"$FIGURE" "pcap flood: CPU time per SYN sent" "$(per_syn "$CPU" "$SENT")" µs \
  "tcpdump, same filter" "$(per_syn "$TD_CPU" "$TD_SENT")"
"$FIGURE" "pcap flood: peak RSS" "$RSS" MiB "tcpdump, same filter" "$TD_RSS" "value < 64"
