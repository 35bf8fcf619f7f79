#!/usr/bin/env bash
# Scan-to-block of a FIN scan, beside a SYN scan in the same run (the
# anchor): how long after the probe that makes the scanner one the host
# stops answering it, and how many of its probes it still answers.
#
# Two throwaway namespaces joined by a veth pair: "finbench-rx" runs the
# agent, "finbench-tx" scans it. Nothing listens in rx, so every port is
# closed and rx answers every probe it lets through with a RST (a SYN and a
# FIN alike): a probe that gets no answer was dropped. tcpdump on tx's eth0
# records both directions with one clock. The threshold probe is the probe
# to the 4th distinct port (the default rule: more than 3 ports in 60 s).
# Two scans, each as SYNs (the anchor) and as FINs:
#   paced: hping3 -S / -F -p ++1, one probe every $PACE_US µs to the next
#          port: from the threshold probe to the first probe, at or after
#          it, that got no answer (ms; 0 when the threshold probe itself is
#          dropped). The resolution is the pace.
#   nmap:  nmap -sS / -sF -p 1-1000 --max-retries 0 at LAN speed (as
#          scripts/bench-answered.sh): the probes sent at or after the
#          threshold probe that rx answered. nmap sends its first probes in
#          one burst (a few hundred within 0.5 ms on this host), so this
#          counts mostly what that burst holds beyond the 4th probe.
# Medians of $ROUNDS rounds, SYN and FIN alternating, for
#   --source xdp --block xdp          (the program decides SYN and FIN
#                                      scans alike in the kernel),
#   --source xdp --block xdp --xdp-decide off (SYN only: userspace decides
#                                      and then fills the program's
#                                      blocklist),
#   --source pcap --block nftables,
#   --source xdp --block nftables (both with --nft-decide on, the default:
#                                      the table decides SYN and FIN scans
#                                      alike at the threshold probe).
# Targets (those of the SYN scan, scripts/bench-xdp-block.sh and
# scripts/bench-answered.sh): scan to block < 10 ms with --block xdp;
# nmap probes answered after the threshold <= 2 with --block xdp, <= 20
# with --block nftables.
# Needs root, hping3, nmap, tcpdump, python3 and a binary built with clang.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh
FIGURE=$PWD/scripts/bench-figure

ROUNDS=${ROUNDS:-3}
PACE_US=${PACE_US:-500}
lab_need root hping3 nmap tcpdump python3
cargo build --release --locked --bin tcpwatch >/dev/null
BIN=$PWD/target/release/tcpwatch
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/tcpwatch

lab_init
work=$LAB_WORK
RX=finbench-rx
TX=finbench-tx
lab_pair "$RX" "$TX" eth0 10.249.13
RX_IP=10.249.13.1
TX_IP=10.249.13.2

# measure HOW SCAN SOURCE BLOCK [FLAGS...]: one scan (HOW: paced or nmap;
# SCAN: syn or fin) of rx by tx; prints "MS ANSWERED".
measure() {
  local how=$1 scan=$2 source=$3 block=$4
  shift 4
  : >"$work/out"
  : >"$work/err"
  lab_bg "$RX" "$BIN" run --source "$source" --interface eth0 --block "$block" "$@" \
    --block-ttl 1h --state off --metrics-addr off >"$work/out" 2>"$work/err"
  local agent=$LAB_PID
  lab_expect "$work/err" "tcpwatch: watching"
  lab_bg "$TX" tcpdump -i eth0 -n -tt -l -U tcp >"$work/dump" 2>/dev/null
  local dump=$LAB_PID
  sleep 0.5
  local kind=S
  [ "$scan" = fin ] && kind=F
  if [ "$how" = nmap ]; then
    lab_exec "$TX" nmap -n -Pn "-s$kind" -p 1-1000 --max-retries 0 --max-rtt-timeout 50ms "$RX_IP" \
      >/dev/null 2>&1 || true
  else
    # 100 probes to ports 1..100: the threshold is the 4th.
    lab_exec "$TX" hping3 "-$kind" -p ++1 -i "u$PACE_US" -c 100 "$RX_IP" >/dev/null 2>&1 || true
  fi
  lab_wait_for "$work/out" "Blocked $TX_IP" || {
    echo "tx was not blocked ($how $scan scan, --source $source --block $block $*): $(cat "$work/out" "$work/err")" >&2
    exit 1
  }
  sleep 0.3
  lab_stop "$dump"
  lab_stop "$agent"
  python3 - "$work/dump" "$TX_IP" "$how $scan" <<'EOF'
import re, sys
path, scanner, what = sys.argv[1:]
scan = what.split()[1]
probe = {"syn": "S", "fin": "F"}[scan]
sent = {}         # dport -> time of the scanner's probe
answered = set()  # ports rx answered (RST, or SYN-ACK for an open port)
for line in open(path):
    m = re.match(r"(\d+\.\d+) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\]", line)
    if not m:
        continue
    t, src, sport, dport, flags = float(m[1]), m[2], int(m[3]), int(m[5]), m[6]
    if src == scanner and flags == probe:
        sent.setdefault(dport, t)
    elif src != scanner and ("R" in flags or "S." in flags):
        answered.add(sport)
if len(sent) < 4:
    sys.exit(f"the {what} scan was not captured")
threshold = sorted(sent.values())[3]
after = sorted((t, port) for port, t in sent.items() if t >= threshold)
dropped = [t for t, port in after if port not in answered]
if not dropped:
    sys.exit(f"{what} scan: no probe was dropped")
print(f"{(dropped[0] - threshold) * 1000:.2f} {sum(1 for _, port in after if port in answered)}")
EOF
}

# The configurations: a name, then the agent's source, block and flags.
CONFIGS=(
  "xdp/xdp|xdp xdp"
  "xdp/xdp-decide-off|xdp xdp --xdp-decide off"
  "pcap/nftables|pcap nftables"
  "xdp/nftables|xdp nftables"
)

echo "== scan-to-block of FIN and SYN scans (paced: one probe every $PACE_US µs; nmap -p 1-1000 --max-retries 0), median of $ROUNDS"
echo "   namespaces $(lab_ns "$RX") and $(lab_ns "$TX")"
results=$work/results
: >"$results"
for round in $(seq "$ROUNDS"); do
  for config in "${CONFIGS[@]}"; do
    name=${config%%|*}
    read -r -a agent_args <<<"${config#*|}"
    scans=(syn fin)
    # A FIN scan is decided by userspace whatever --xdp-decide says.
    [ "$name" = xdp/xdp-decide-off ] && scans=(syn)
    for how in paced nmap; do
      for scan in "${scans[@]}"; do
        line=$(measure "$how" "$scan" "${agent_args[@]}")
        echo "$name $how $scan $line" >>"$results"
        read -r ms answered <<<"$line"
        printf 'round %s  %-19s %-5s %s: %6s ms to first drop, %3s probes answered after the threshold\n' \
          "$round" "$name" "$how" "$scan" "$ms" "$answered"
      done
    done
  done
done

python3 - "$FIGURE" "$results" <<'EOF'
import statistics, subprocess, sys
figure, path = sys.argv[1:]
runs = {}
for line in open(path):
    name, how, scan, ms, answered = line.split()
    runs.setdefault((name, how, scan), []).append((float(ms), int(answered)))
# The paced scan gives the time, nmap the count.
ms = {k[::2]: statistics.median(r[0] for r in v) for k, v in runs.items() if k[1] == "paced"}
n = {k[::2]: statistics.median(r[1] for r in v) for k, v in runs.items() if k[1] == "nmap"}

def verdict(value, limit, strict=False):
    if limit is None:
        return ""
    ok = value < limit if strict else value <= limit
    return f" ({'<' if strict else '<='} {limit:g}: {'ok' if ok else 'OVER'})"

# name -> (label, target on the paced time (< ms), on nmap's count (<= probes))
configs = {
    "xdp/xdp": ("--source xdp --block xdp", 10, 2),
    "xdp/xdp-decide-off": ("--source xdp --block xdp --xdp-decide off", None, None),
    "pcap/nftables": ("--source pcap --block nftables", None, 20),
    "xdp/nftables": ("--source xdp --block nftables", None, 20),
}
print()
print(f"{'configuration':<43} {'scan':<4}  {'paced: to first drop':<26} nmap: answered after the threshold")
for name, (label, t_ms, t_n) in configs.items():
    for scan in ("syn", "fin"):
        if (name, scan) not in ms:
            continue
        a = f"{ms[name, scan]:.2f} ms{verdict(ms[name, scan], t_ms, True)}"
        b = f"{n[name, scan]:g}{verdict(n[name, scan], t_n)}"
        print(f"{label:<43} {scan:<4}  {a:<26} {b}")
        print(f"{'':<43} {'':<4}  runs {sorted(r[0] for r in runs[name, 'paced', scan])} ms,"
              f" {sorted(r[1] for r in runs[name, 'nmap', scan])} probes")

def record(*args):
    subprocess.run([figure, *map(str, args)], check=True)

for name, (label, t_ms, t_n) in configs.items():
    if (name, "fin") not in ms:
        continue
    record(f"FIN scan, {label}: threshold probe to first drop (paced)", f"{ms[name, 'fin']:.2f}", "ms",
           "SYN scan, same run", f"{ms[name, 'syn']:.2f}", f"value < {t_ms}" if t_ms is not None else "-")
    record(f"FIN scan, {label}: nmap probes answered after the threshold", f"{n[name, 'fin']:g}", "probes",
           "SYN scan, same run", f"{n[name, 'syn']:g}", f"value <= {t_n}" if t_n is not None else "-")
# A SYN scan decided in userspace, as a FIN scan is under --block xdp.
record("SYN scan, --source xdp --block xdp --xdp-decide off: threshold probe to first drop (paced)",
       f"{ms['xdp/xdp-decide-off', 'syn']:.2f}", "ms")
record("SYN scan, --source xdp --block xdp --xdp-decide off: nmap probes answered after the threshold",
       f"{n['xdp/xdp-decide-off', 'syn']:g}", "probes")
EOF
