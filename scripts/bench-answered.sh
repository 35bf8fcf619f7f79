#!/usr/bin/env bash
# Probes answered after the threshold: how many ports of a LAN-speed SYN
# scan (`nmap -sS -p 1-1000 --max-retries 0`) the host still answers after
# the probe that makes the scanner one (the 4th distinct port with the
# default rule of more than 3 ports in 60 s).
#
# Two throwaway namespaces joined by a veth pair: "rx" runs the agent
# (--source xdp), "tx" scans it. tcpdump on tx's eth0 records both
# directions with one clock. The threshold probe is the SYN to the 4th
# distinct port; a probe sent at or after it counts when rx answered it
# (SYN-ACK or RST). Median of $ROUNDS rounds for:
#   --block xdp (the program decides at the threshold probe; target <= 2),
#   --block xdp --xdp-decide off (userspace decides: the anchor),
#   --block nftables (with --source xdp the table decides at the threshold
#     probe, --nft-decide on by default; target <= 20),
#   --block nftables --nft-decide off (userspace decides: the anchor; with
#     TCPWATCH_HOPS=1 the agent says how long each hop of its path took,
#     printed under the figures).
# Needs root, nmap, tcpdump, python3 and a binary built with clang.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
FIGURE=$PWD/scripts/bench-figure

ROUNDS=${ROUNDS:-3}
lab_need root nmap tcpdump python3
cargo build --release --locked --bin tcpwatch >/dev/null
BIN=$PWD/target/release/tcpwatch
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/tcpwatch

lab_init
work=$LAB_WORK
lab_pair rx tx eth0 10.251.0
RX_IP=10.251.0.1
TX_IP=10.251.0.2

# answered BLOCK [FLAGS...]: prints the probes answered after the threshold.
answered() {
  local block=$1
  shift
  : >"$work/out"
  : >"$work/err"
  lab_bg rx env TCPWATCH_HOPS=1 "$BIN" run --source xdp --interface eth0 --block "$block" "$@" \
    --block-ttl 1h --state off --metrics-addr off >"$work/out" 2>"$work/err"
  local agent=$LAB_PID
  lab_expect "$work/err" "tcpwatch: watching"
  lab_bg tx tcpdump -i eth0 -n -tt -l -U 'tcp and (tcp[tcpflags] & (tcp-syn|tcp-rst) != 0)' \
    >"$work/dump" 2>/dev/null
  local dump=$LAB_PID
  sleep 0.5
  lab_exec tx nmap -n -Pn -sS -p 1-1000 --max-retries 0 --max-rtt-timeout 50ms "$RX_IP" \
    >/dev/null 2>&1 || true
  lab_wait_for "$work/out" "Blocked $TX_IP" || {
    echo "tx was not blocked: $(cat "$work/out" "$work/err")" >&2
    exit 1
  }
  sleep 0.3
  lab_stop "$dump"
  lab_stop "$agent"
  grep -h "tcpwatch: hops: " "$work/err" >>"$work/hops" || true
  python3 - "$work/dump" "$TX_IP" <<'EOF'
import re, sys
scanner = sys.argv[2]
sent = {}         # dport -> time of the scanner's SYN
answered = set()  # ports the host answered
for line in open(sys.argv[1]):
    m = re.match(r"(\d+\.\d+) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\]", line)
    if not m:
        continue
    t, src, sport, dport, flags = float(m[1]), m[2], int(m[3]), int(m[5]), m[6]
    if src == scanner and flags == "S":
        sent.setdefault(dport, t)
    elif src != scanner and ("S." in flags or "R" in flags):
        answered.add(sport)
if len(sent) < 4:
    sys.exit("the scan was not captured")
threshold = sorted(sent.values())[3]
print(sum(1 for port, t in sent.items() if t >= threshold and port in answered))
EOF
}

echo "== probes answered after the threshold probe (nmap -sS -p 1-1000, median of $ROUNDS)"
declare -A samples
: >"$work/hops"
for mode in xdp xdp-userspace nftables nftables-userspace; do
  samples[$mode]=""
  for _ in $(seq "$ROUNDS"); do
    case $mode in
      xdp) n=$(answered xdp) ;;
      xdp-userspace) n=$(answered xdp --xdp-decide off) ;;
      nftables) n=$(answered nftables) ;;
      nftables-userspace) n=$(answered nftables --nft-decide off) ;;
    esac
    samples[$mode]+="$n "
  done
done
python3 - "$FIGURE" "${samples[xdp]}" "${samples[xdp-userspace]}" "${samples[nftables]}" "${samples[nftables-userspace]}" <<'EOF'
import statistics, subprocess, sys
figure = sys.argv[1]
runs = {m: sorted(map(int, a.split())) for m, a in zip(("xdp", "xdp-userspace", "nftables", "nftables-userspace"), sys.argv[2:])}
median = {m: statistics.median(v) for m, v in runs.items()}
targets = {"xdp": 2, "nftables": 20}
for m, v in runs.items():
    t = targets.get(m)
    verdict = f"(target <= {t}): {'ok' if median[m] <= t else 'OVER'}" if t is not None else "(anchor)"
    print(f"{m:<18} median {median[m]:g}  runs {v} {verdict}")
subprocess.run([figure, "--block xdp: probes answered after the threshold", f"{median['xdp']:g}", "probes",
                "--xdp-decide off", f"{median['xdp-userspace']:g}", "value <= 2"], check=True)
subprocess.run([figure, "--block nftables: probes answered after the threshold", f"{median['nftables']:g}", "probes",
                "--nft-decide off", f"{median['nftables-userspace']:g}", "value <= 20"], check=True)
EOF
echo "== the userspace path's hops (TCPWATCH_HOPS=1; the scans userspace blocked)"
sed 's/^tcpwatch: hops: /  /' "$work/hops"
