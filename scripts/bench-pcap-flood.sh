#!/usr/bin/env bash
# The pcap source under a 5 s `hping3 --flood -S --rand-source`, between two
# throwaway namespaces joined by a veth (nothing leaves them): SYNs sent
# against SYNs accounted for (lines printed + drops the kernel reported,
# tcpwatch_events_lost_total{source="pcap"}), the agent's CPU time and its
# peak RSS.
#
# Anchor, in the same run: `tcpdump -w /dev/null` with the agent's exact
# filter (printed by examples/pcap_filter.rs, not copied) and the agent's
# capture settings (no promiscuous mode, immediate mode, the same snaplen,
# the same kernel buffer), under a second flood of the same length: packets captured
# and dropped by the kernel, CPU time, peak RSS. The two floods run one after
# the other so the agent and tcpdump never compete for a core; shares are
# given of each flood's own count of SYNs sent.
# Needs root, hping3 and tcpdump. Usage: scripts/bench-pcap-flood.sh [BIN]
set -euo pipefail
BIN=$(realpath "${1:-target/release/tcpwatch}")
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
FIGURE=scripts/bench-figure
FLOOD_SECS=5
lab_need root hping3 tcpdump python3 curl
cargo build --release --locked --example pcap_filter -q
FILTER=$(target/release/examples/pcap_filter)
SNAPLEN=$(target/release/examples/pcap_filter --snaplen)
BUFFER_KIB=$(target/release/examples/pcap_filter --buffer-kib)
lab_init
WORK=$LAB_WORK
lab_pair a b eth0 10.249.0

# flood: a FLOOD_SECS flood from B, then 3 s for the capture to drain what
# it holds; prints the SYNs hping3 sent.
flood() {
  lab_exec b timeout -s INT "$FLOOD_SECS" hping3 --flood -S --rand-source -p 8080 \
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
lab_bg a "$BIN" run --source pcap --interface eth0 --block none --state off \
  --metrics-addr 127.0.0.1:9472 >"$WORK/out" 2>"$WORK/err"
AGENT=$LAB_PID
lab_expect "$WORK/err" "tcpwatch: watching"
SENT=$(flood)
LOST=$(lab_exec a curl -s 127.0.0.1:9472/metrics |
  awk '/^tcpwatch_events_lost_total\{source="pcap"\}/{print $2}')
LOST=${LOST:-0}
LINES=$(grep -c "New connection: " "$WORK/out" || true)
read -r CPU RSS < <(usage "$AGENT")
lab_stop "$AGENT"

# --- tcpdump, same filter and capture settings ---------------------------------
# LAB_PID is tcpdump itself (`ip netns exec` execs it).
lab_bg a tcpdump -i eth0 -p -n -s "$SNAPLEN" -B "$BUFFER_KIB" --immediate-mode -w /dev/null \
  "$FILTER" 2>"$WORK/tcpdump"
DUMP=$LAB_PID
lab_expect "$WORK/tcpdump" "listening on"
TD_SENT=$(flood)
read -r TD_CPU TD_RSS < <(usage "$DUMP")
lab_stop "$DUMP" INT
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
  "tcpdump, same filter" "$(share "$TD_CAPTURED" "$TD_SENT")" "ratio >= 0.95"
"$FIGURE" "pcap flood: kernel drops, share of sent" "$(share "$LOST" "$SENT")" % \
  "tcpdump, same filter" "$(share "$TD_DROPPED" "$TD_SENT")"
# Per SYN sent: the two floods differ in size (the agent takes CPU from hping3).
per_syn() { python3 -c "print(f'{1e6 * $1 / max($2, 1):.2f}')"; }
"$FIGURE" "pcap flood: CPU time per SYN sent" "$(per_syn "$CPU" "$SENT")" µs \
  "tcpdump, same filter" "$(per_syn "$TD_CPU" "$TD_SENT")" "ratio <= 2"
"$FIGURE" "pcap flood: peak RSS" "$RSS" MiB "tcpdump, same filter" "$TD_RSS" "value < 64"
