#!/usr/bin/env bash
# What the pcap source's in-kernel filter costs ordinary traffic, now that
# it passes stealth probes, TCP fragments, IPv6 extension headers and ICMP
# port unreachables besides SYNs, against the SYN-only filter of earlier
# versions (both printed by examples/pcap_filter.rs), in the same run:
#
#   1. live: B floods A (two throwaway namespaces joined by a veth) with
#      ordinary packets, hping3 --flood for FLOOD_SECS each: TCP segments
#      with ACK (established-like traffic; A answers RSTs either way) and
#      UDP to an open port of A (DNS/QUIC-like, no ICMP answer); A captures
#      with tcpdump -w /dev/null under the old filter, the new one, or not at
#      all. CPU per packet = busy jiffies of the whole machine (/proc/stat,
#      user+nice+system+irq+softirq) / packets sent; the no-capture round is
#      the floor, and the filter's cost is what a capture adds to it. Rounds
#      alternate old/new/none, ROUNDS times; medians.
#   2. interpreted: the same programs run by libpcap's BPF interpreter
#      over ordinary frames in userspace (examples/pcap_filter_cost.rs):
#      ns per packet, free of the machine's other load.
#
# Needs root, hping3, tcpdump. Usage: scripts/bench-pcap-filter.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
FIGURE=scripts/bench-figure
FLOOD_SECS=${FLOOD_SECS:-3}
ROUNDS=${ROUNDS:-3}
lab_need root hping3 tcpdump python3
cargo build --release --locked -q --example pcap_filter --example pcap_filter_cost
NEW=$(target/release/examples/pcap_filter)
OLD=$(target/release/examples/pcap_filter --syn-only)
SNAPLEN=$(target/release/examples/pcap_filter --snaplen)
BUFFER_KIB=$(target/release/examples/pcap_filter --buffer-kib)

# "FRAME NEW_NS OLD_NS" per kind of ordinary frame.
INTERP=$(target/release/examples/pcap_filter_cost)
echo "interpreted (libpcap's BPF interpreter, ns per packet): frame, new filter, SYN-only filter"
echo "$INTERP"

lab_init
WORK=$LAB_WORK
lab_pair a b eth0 10.248.0
# An open UDP port on A, so UDP floods get no ICMP answer (a sink that
# reads and drops; what it cannot read the socket drops).
lab_bg a python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 5353))
while True:
    s.recv(2048)
"

busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

# round KIND FILTER: one flood of KIND (tcp|udp) with a capture under
# FILTER ("none": no capture); prints "JIFFIES PACKETS".
round() {
  local kind=$1 filter=$2 dump="" before after sent
  if [ "$filter" != none ]; then
    lab_bg a tcpdump -i eth0 -p -n -s "$SNAPLEN" -B "$BUFFER_KIB" --immediate-mode -w /dev/null \
      "$filter" 2>"$WORK/tcpdump"
    dump=$LAB_PID
    lab_expect "$WORK/tcpdump" "listening on"
  fi
  local flags=(-A -p 8080)
  [ "$kind" = udp ] && flags=(-2 -p 5353 -d 40)
  before=$(busy)
  lab_exec b timeout -s INT "$FLOOD_SECS" hping3 --flood "${flags[@]}" 10.248.0.1 \
    >"$WORK/hping" 2>&1 || true
  after=$(busy)
  sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$WORK/hping")
  [ -n "$dump" ] && lab_stop "$dump" INT
  echo "$((after - before)) ${sent:-0}"
}

declare -A per
for kind in tcp udp; do
  for _ in $(seq "$ROUNDS"); do
    for name in old new none; do
      case $name in old) f=$OLD ;; new) f=$NEW ;; none) f=none ;; esac
      read -r jiffies packets < <(round "$kind" "$f")
      ns=$(python3 -c "print(f'{1e9 * $jiffies / $(getconf CLK_TCK) / max($packets, 1):.1f}')")
      echo "live $kind $name: $packets packets, $jiffies jiffies, $ns ns/packet"
      per[$kind-$name]="${per[$kind-$name]:-} $ns"
    done
  done
done

median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "$@"; }
for kind in tcp udp; do
  # shellcheck disable=SC2086
  old=$(median ${per[$kind-old]}) new=$(median ${per[$kind-new]}) none=$(median ${per[$kind-none]})
  echo "live $kind: medians: old $old, new $new, no capture $none ns/packet (machine CPU)"
  "$FIGURE" "pcap filter, live $kind (ACK/UDP flood): machine CPU per packet" "$new" ns \
    "SYN-only filter, same run" "$old" "ratio <= 1.1"
done
while read -r name new old; do
  "$FIGURE" "pcap filter, interpreted, $name: per packet" "$new" ns \
    "SYN-only filter, same run" "$old"
done <<<"$INTERP"
