#!/usr/bin/env bash
# Scan-to-block time of a FIN scan, beside a SYN scan in the same run (the
# anchor): how long after the probe that makes the scanner one the host
# stops answering it, and how many of its probes it still answers.
#
# Two throwaway namespaces joined by a veth pair: "finbench-rx" runs the
# agent, "finbench-tx" scans it with `nmap -sS` (the anchor) and `nmap -sF`,
# `-p 1-1000 --max-retries 0`, at LAN speed. Nothing listens in rx, so every
# port is closed and rx answers every probe it lets through with a RST (a
# SYN and a FIN alike): a probe that gets no answer was dropped. tcpdump on
# tx's eth0 records both directions with one clock. The threshold probe is
# the probe to the 4th distinct port (the default rule: more than 3 ports
# in 60 s). Per round and scan:
#   to first drop: from the threshold probe to the first probe, at or after
#                  it, that got no answer (ms; 0 when the threshold probe
#                  itself is dropped);
#   answered:      probes sent at or after the threshold probe that rx
#                  answered.
# Medians of $ROUNDS rounds, SYN and FIN alternating, for
#   --source xdp --block xdp          (the program decides SYN scans in the
#                                      kernel; a FIN scan is decided by
#                                      userspace, which then fills the
#                                      program's blocklist),
#   --source xdp --block xdp --xdp-decide off (SYN only: userspace decides,
#                                      as it does for FIN),
#   --source pcap --block nftables,
#   --source xdp --block nftables.
# Targets (those of the SYN scan, scripts/bench-answered.sh and
# scripts/bench-xdp-block.sh): answered after the threshold <= 2 with
# --block xdp, <= 20 with --block nftables; to first drop < 10 ms with
# --block xdp.
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
RX=finbench-rx
TX=finbench-tx
lab_pair "$RX" "$TX" eth0 10.249.13
RX_IP=10.249.13.1
TX_IP=10.249.13.2

# measure SCAN SOURCE BLOCK [FLAGS...]: one scan (syn or fin) of rx by tx;
# prints "MS ANSWERED".
measure() {
  local scan=$1 source=$2 block=$3
  shift 3
  : >"$work/out"
  : >"$work/err"
  lab_bg "$RX" "$BIN" run --source "$source" --interface eth0 --block "$block" "$@" \
    --block-ttl 1h --state off --metrics-addr off >"$work/out" 2>"$work/err"
  local agent=$LAB_PID
  lab_expect "$work/err" "tcpwatch: watching"
  lab_bg "$TX" tcpdump -i eth0 -n -tt -l -U tcp >"$work/dump" 2>/dev/null
  local dump=$LAB_PID
  sleep 0.5
  local flag=-sS
  [ "$scan" = fin ] && flag=-sF
  lab_exec "$TX" nmap -n -Pn "$flag" -p 1-1000 --max-retries 0 --max-rtt-timeout 50ms "$RX_IP" \
    >/dev/null 2>&1 || true
  lab_wait_for "$work/out" "Blocked $TX_IP" || {
    echo "tx was not blocked ($scan scan, --source $source --block $block $*): $(cat "$work/out" "$work/err")" >&2
    exit 1
  }
  sleep 0.3
  lab_stop "$dump"
  lab_stop "$agent"
  python3 - "$work/dump" "$TX_IP" "$scan" <<'EOF'
import re, sys
path, scanner, scan = sys.argv[1:]
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
    sys.exit(f"the {scan} scan was not captured")
threshold = sorted(sent.values())[3]
after = sorted((t, port) for port, t in sent.items() if t >= threshold)
dropped = [t for t, port in after if port not in answered]
if not dropped:
    sys.exit(f"{scan} scan: no probe was dropped")
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

echo "== scan-to-block of FIN and SYN scans (nmap -p 1-1000 --max-retries 0, median of $ROUNDS, namespaces $(lab_ns "$RX")/$(lab_ns "$TX"))"
results=$work/results
: >"$results"
for round in $(seq "$ROUNDS"); do
  for config in "${CONFIGS[@]}"; do
    name=${config%%|*}
    read -r -a agent_args <<<"${config#*|}"
    scans=(syn fin)
    # A FIN scan is decided by userspace whatever --xdp-decide says.
    [ "$name" = xdp/xdp-decide-off ] && scans=(syn)
    for scan in "${scans[@]}"; do
      line=$(measure "$scan" "${agent_args[@]}")
      echo "$name $scan $line" >>"$results"
      echo "round $round  $name  $scan: $line (ms to first drop, probes answered after the threshold)"
    done
  done
done

python3 - "$FIGURE" "$results" <<'EOF'
import statistics, subprocess, sys
figure, path = sys.argv[1:]
runs = {}
for line in open(path):
    name, scan, ms, answered = line.split()
    runs.setdefault((name, scan), []).append((float(ms), int(answered)))
median = {k: (statistics.median(v[0] for v in rs), statistics.median(v[1] for v in rs))
          for k, rs in runs.items()}

def verdict(value, limit, strict=False):
    if limit is None:
        return ""
    ok = value < limit if strict else value <= limit
    return f" ({'<' if strict else '<='} {limit:g}: {'ok' if ok else 'OVER'})"

# name -> (label, time target (< ms), answered target (<= probes))
configs = {
    "xdp/xdp": ("--source xdp --block xdp", 10, 2),
    "xdp/xdp-decide-off": ("--source xdp --block xdp --xdp-decide off", None, None),
    "pcap/nftables": ("--source pcap --block nftables", None, 20),
    "xdp/nftables": ("--source xdp --block nftables", None, 20),
}
print()
print(f"{'configuration':<44} {'scan':<4} {'to first drop':>16} {'answered':>12}   runs (ms, answered)")
for name, (label, t_ms, t_n) in configs.items():
    for scan in ("syn", "fin"):
        if (name, scan) not in median:
            continue
        ms, n = median[name, scan]
        print(f"{label:<44} {scan:<4} {ms:>10.2f} ms{verdict(ms, t_ms, True):<4} {n:>5g}{verdict(n, t_n)}   "
              f"{sorted(runs[name, scan])}")

def record(*args):
    subprocess.run([figure, *map(str, args)], check=True)

for name, (label, t_ms, t_n) in configs.items():
    if (name, "fin") not in median:
        continue
    fin, syn = median[name, "fin"], median[name, "syn"]
    record(f"FIN scan, {label}: threshold probe to first drop", f"{fin[0]:.2f}", "ms",
           "SYN scan, same run", f"{syn[0]:.2f}", f"value < {t_ms}" if t_ms is not None else "-")
    record(f"FIN scan, {label}: probes answered after the threshold", f"{fin[1]:g}", "probes",
           "SYN scan, same run", f"{syn[1]:g}", f"value <= {t_n}" if t_n is not None else "-")
# SYN decided in userspace: how a FIN scan under --block xdp compares with a
# SYN scan decided the same way.
syn = median["xdp/xdp-decide-off", "syn"]
record("SYN scan, --source xdp --block xdp --xdp-decide off: threshold probe to first drop",
       f"{syn[0]:.2f}", "ms")
record("SYN scan, --source xdp --block xdp --xdp-decide off: probes answered after the threshold",
       f"{syn[1]:g}", "probes")
EOF
