#!/usr/bin/env bash
# The pcap source under a 5 s `hping3 --flood -S --rand-source`, between two
# throwaway namespaces joined by a veth (nothing leaves them): SYNs sent
# against SYNs accounted for (lines printed + drops the kernel reported,
# tcpwatch_events_lost_total{source="pcap"}), the agent's CPU time and its
# peak RSS. Needs root and hping3. Usage: scripts/bench-pcap-flood.sh [BIN]
set -euo pipefail
BIN=$(realpath "${1:-target/release/tcpwatch}")
NA=twpf-a-$$ NB=twpf-b-$$
WORK=$(mktemp -d)
[ "$(id -u)" -eq 0 ] || { echo "bench-pcap-flood: needs root" >&2; exit 1; }
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

ip netns exec "$NA" "$BIN" run --source pcap --interface eth0 --block none --state off \
  --metrics-addr 127.0.0.1:9472 >"$WORK/out" 2>"$WORK/err" &
AGENT=$!
for _ in $(seq 100); do grep -q "tcpwatch: watching" "$WORK/err" && break; sleep 0.1; done
ip netns exec "$NB" timeout -s INT 5 hping3 --flood -S --rand-source -p 8080 10.249.0.1 \
  >"$WORK/hping" 2>&1 || true
sleep 3 # let the agent drain what it holds
LOST=$(ip netns exec "$NA" curl -s 127.0.0.1:9472/metrics |
  awk '/^tcpwatch_events_lost_total\{source="pcap"\}/{print $2}')
LINES=$(grep -c "New connection: " "$WORK/out" || true)
read -r UT ST < <(awk '{print $14, $15}' "/proc/$AGENT/stat")
HWM=$(awk '/VmHWM/{print $2, $3}' "/proc/$AGENT/status")
kill -TERM "$AGENT"; wait "$AGENT" || true
SENT=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$WORK/hping")
TICK=$(getconf CLK_TCK)
echo "pcap flood: hping3 sent ${SENT:-?} SYNs in 5 s"
echo "pcap flood: accounted $((LINES + ${LOST:-0})) = $LINES lines + ${LOST:-0} kernel drops"
echo "pcap flood: agent CPU $(python3 -c "print(f'{($UT + $ST) / $TICK:.2f}')") s (user+sys), peak RSS $HWM"
