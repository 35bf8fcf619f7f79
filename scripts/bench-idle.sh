#!/usr/bin/env bash
# What the agent costs a host when nothing happens: its CPU and memory while
# idle, and the size of its binary.
#
# Two agents, each in a throwaway namespace of its own (scripts/lib/lab.sh),
# run side by side with the default settings apart from what names them:
#   procfs  `tcpwatch run` (procfs every 10 s, the defaults) in a namespace
#           holding N loopback connections (2N sockets, 20,000 by default),
#           held by two Python processes that do nothing after connecting;
#   xdp     `tcpwatch run --source xdp --interface eth0` on a veth whose
#           peer sends nothing;
# and, for comparison (no target), `tcpwatch run --source netlink` beside
# the procfs agent, on the same sockets (its metrics on another port). On
# this machine most of the procfs agent's CPU time is the kernel's: it
# formats each socket as a line of /proc/net/tcp, and walks its whole
# established-hash table once per file (tcp, tcp6), whatever the namespace.
# The procfs figure's anchor is that kernel cost alone, measured in the same
# run after the window: the CPU time of reading /proc/net/tcp and
# /proc/net/tcp6 to their end in the procfs namespace, as `cat` reads them
# (a median of $ANCHOR_READS reads, by a process already running, so no
# process start-up is counted), at one read per 10 s, as a percentage of a
# core. `cat` also pays one more walk of the hash table per file, for the
# read that finds the end, which the agent does not (src/source/procfs.rs):
# an agent doing nothing but read could come in under the anchor.
# Both keep their state file in the lab's work directory (the default path
# is the host's) and serve metrics on their namespace's loopback (the
# default address; nothing scrapes it). After a warm-up of $WARMUP s (start
# and the first polls: the procfs agent reads its first table then), CPU
# time (utime + stime of /proc/PID/stat) and RSS (VmRSS of /proc/PID/status)
# are sampled every 10 s for $IDLE_SECONDS s (300 by default). Figures: CPU
# over the window as a percentage of one core (target <= 0.5 %), the
# highest RSS sampled (target <= 24 MiB), and the binary's size on disk as
# built (release, line tables) and stripped (no target: a record).
#
# Needs root, python3, ss. Usage (all optional):
#   IDLE_SECONDS=300 scripts/bench-idle.sh [BIN] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/tcpwatch}")
N=${2:-10000}
IDLE_SECONDS=${IDLE_SECONDS:-300}
WARMUP=${WARMUP:-25}
ANCHOR_READS=${ANCHOR_READS:-15}
FIGURE=$PWD/scripts/bench-figure
# shellcheck source=lib/lab.sh
. scripts/lib/lab.sh

lab_need root python3 ss ip strip
[ -x "$BIN" ] || lab_die "no binary at $BIN (cargo build --release)"
lab_init
work=$LAB_WORK
lab_host procfs
lab_pair xdp peer eth0 10.253.0 fd00:253::

# The sockets, held open in the procfs agent's namespace.
lab_hold_connections procfs "$N"
have=$LAB_HELD
echo "bench-idle: $have established sockets in $(lab_ns procfs)"

mkdir -p "$work/state-procfs" "$work/state-xdp" "$work/state-netlink"
lab_bg procfs "$BIN" run --state "$work/state-procfs/state" \
  >"$work/procfs.out" 2>"$work/procfs.err"
procfs_agent=$LAB_PID
lab_bg xdp "$BIN" run --source xdp --interface eth0 --state "$work/state-xdp/state" \
  >"$work/xdp.out" 2>"$work/xdp.err"
xdp_agent=$LAB_PID
lab_bg procfs "$BIN" run --source netlink --metrics-addr 127.0.0.1:9473 \
  --state "$work/state-netlink/state" >"$work/netlink.out" 2>"$work/netlink.err"
netlink_agent=$LAB_PID
lab_expect "$work/procfs.err" "tcpwatch: watching" 30
lab_expect "$work/netlink.err" "tcpwatch: watching" 30
lab_expect "$work/xdp.err" "tcpwatch: watching" 30
echo "bench-idle: agents up (procfs pid $procfs_agent, xdp pid $xdp_agent, netlink pid $netlink_agent);" \
  "warm-up ${WARMUP} s, then ${IDLE_SECONDS} s sampled every 10 s"
sleep "$WARMUP"

python3 - "$IDLE_SECONDS" "$procfs_agent" "$xdp_agent" "$netlink_agent" <<'EOF' >"$work/figures"
import os, sys, time
seconds = int(sys.argv[1])
pids = {"procfs": int(sys.argv[2]), "xdp": int(sys.argv[3]), "netlink": int(sys.argv[4])}
hz = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    # Fields after the command name (which may hold spaces): utime, stime
    # are the 14th and 15th of the whole line.
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")

start = time.monotonic()
cpu0 = {k: cpu(p) for k, p in pids.items()}
rss = {k: [rss_kib(p)] for k, p in pids.items()}
while (elapsed := time.monotonic() - start) < seconds:
    time.sleep(min(10, seconds - elapsed))
    for k, p in pids.items():
        rss[k].append(rss_kib(p))
span = time.monotonic() - start
for k, p in pids.items():
    used = cpu(p) - cpu0[k]
    print(f"{k}\t{used / span * 100:.3f}\t{max(rss[k]) / 1024:.1f}\t{rss[k][-1] / 1024:.1f}\t{used:.2f}\t{span:.0f}")
EOF

# The anchor: the kernel's cost of the two files, read to their end as cat
# reads them (64 KiB reads until one returns nothing).
anchor_ms=$(lab_exec procfs python3 - "$ANCHOR_READS" <<'EOF'
import statistics, sys, time
costs = []
for _ in range(int(sys.argv[1])):
    start = time.process_time()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path, "rb", buffering=0) as f:
            while f.read(65536):
                pass
    costs.append(time.process_time() - start)
    time.sleep(0.2)
print(f"{statistics.median(costs) * 1000:.1f}")
EOF
)
anchor_pct=$(python3 -c "print(f'{$anchor_ms / 10000 * 100:.3f}')")
echo "bench-idle: reading /proc/net/tcp and tcp6 to their end (cat): $anchor_ms ms of CPU, $anchor_pct % of a core at one read per 10 s"

for agent in procfs xdp netlink; do
  grep -q . "$work/$agent.out" && echo "bench-idle: note: the $agent agent printed: $(head -n 3 "$work/$agent.out")"
done
kill -0 "$procfs_agent" "$xdp_agent" "$netlink_agent" || lab_die "an agent ended during the run: $(cat "$work"/*.err)"

strip -o "$work/stripped" "$BIN"
built=$(stat -c %s "$BIN")
stripped=$(stat -c %s "$work/stripped")

printf '\n%-8s %12s %14s %14s %10s\n' source "CPU % core" "RSS max MiB" "RSS end MiB" "CPU s"
while IFS=$'\t' read -r source pct rss_max rss_end used span; do
  printf '%-8s %12s %14s %14s %10s   (over %s s)\n' "$source" "$pct" "$rss_max" "$rss_end" "$used" "$span"
  what="idle, $source"
  [ "$source" = procfs ] && what="idle, procfs every 10 s, $have sockets"
  [ "$source" = xdp ] && what="idle, xdp, no traffic"
  target=(- - "value <= 0.5") rss_target=(- - "value <= 24")
  [ "$source" = procfs ] && target=("reading tcp+tcp6 every 10 s (cat)" "$anchor_pct" "value <= 0.5")
  if [ "$source" = netlink ]; then
    what="idle, netlink every 10 s, $have sockets (for comparison)"
    target=() rss_target=()
  fi
  "$FIGURE" "$what: CPU over ${span} s" "$pct" "% of a core" "${target[@]}"
  "$FIGURE" "$what: RSS (highest sample)" "$rss_max" MiB "${rss_target[@]}"
done <"$work/figures"
printf 'binary: %.1f MiB as built (%s), %.1f MiB stripped\n' \
  "$(python3 -c "print($built / 1048576)")" "$BIN" "$(python3 -c "print($stripped / 1048576)")"
"$FIGURE" "binary size, stripped" "$(python3 -c "print(f'{$stripped / 1048576:.1f}')")" MiB \
  "as built (line tables)" "$(python3 -c "print(f'{$built / 1048576:.1f}')")"
