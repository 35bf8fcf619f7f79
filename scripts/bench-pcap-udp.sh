#!/usr/bin/env bash
# The pcap source's UDP signal (this host's ICMP port unreachables) against
# the kernel's ICMP rate limit: how long `nmap -sU -T4` of 40 closed ports
# takes to be reported, from nmap's start to the scan line on the agent's
# stdout, for a rule of more than 3 ports (the default) and of more than 10,
# over IPv4 and IPv6, in two throwaway namespaces.
#
# Anchor, in the same run: the same scans with the rate limit off in the
# target's namespace (net.ipv4.icmp_ratelimit=0, net.ipv6.icmp.ratelimit=0),
# where every probe is answered at once. With the default (1000 ms) the
# kernel answers a burst of 6 probes per scanner address, then one a
# second, so a rule of N ports takes at least N - 5 seconds (nmap, seeing
# its probes go unanswered, also slows itself down).
# Needs root and nmap. Usage: scripts/bench-pcap-udp.sh [BIN]
set -euo pipefail
BIN=$(realpath "${1:-target/release/tcpwatch}")
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
FIGURE=scripts/bench-figure
lab_need root nmap python3
lab_init
WORK=$LAB_WORK
lab_pair a b eth0 10.247.0 fd00:247::

now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

# detect RULE RATELIMIT FAMILY: seconds from nmap's start to the scan line
# ("none" when there was none within 60 s).
detect() {
  local rule=$1 ratelimit=$2 target=10.247.0.1 six=()
  [ "$3" = 6 ] && target=fd00:247::1 six=(-6)
  lab_exec a sysctl -qw "net.ipv4.icmp_ratelimit=$ratelimit" "net.ipv6.icmp.ratelimit=$ratelimit"
  lab_bg a "$BIN" run --source pcap --interface eth0 --block none --state off \
    --scan-ports "$rule" >"$WORK/out" 2>"$WORK/err"
  local agent=$LAB_PID
  lab_expect "$WORK/err" "tcpwatch: watching"
  local start took=none
  start=$(now)
  lab_exec b nmap -n -Pn -T4 -sU "${six[@]}" -p 20-59 "$target" >"$WORK/nmap" 2>&1 &
  local nmap=$!
  if lab_wait_for "$WORK/out" "Port scan detected" 60; then
    took=$(python3 -c "print(f'{$(now) - $start:.2f}')")
  fi
  wait "$nmap" || true
  lab_stop "$agent"
  echo "$took"
}

for rule in 3 10; do
  for family in 4 6; do
    slow=$(detect "$rule" 1000 "$family")
    fast=$(detect "$rule" 0 "$family")
    echo "pcap UDP scan, rule > $rule ports, IPv$family: scan line after $slow s" \
      "(ICMP rate limit off: $fast s)"
    "$FIGURE" "pcap UDP scan, more than $rule ports, IPv$family: nmap start to line" \
      "$slow" s "ICMP rate limit off" "$fast"
  done
done
