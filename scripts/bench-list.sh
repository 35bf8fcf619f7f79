#!/usr/bin/env bash
# `tcpwatch list --source netlink` and `--source procfs` against `ss -tan`, on a
# throwaway network namespace holding N loopback connections (2N sockets):
# whole-process wall and CPU time, medians of RUNS, side by side and as ratios.
# Needs root. Usage: scripts/bench-list.sh [BIN] [CONNECTIONS] [RUNS]
set -euo pipefail
BIN=$(realpath "${1:-target/release/tcpwatch}")
N=${2:-10000}
RUNS=${3:-20}
FIGURE=$(realpath "$(dirname "$0")/bench-figure")
# shellcheck source=lib/lab.sh
. "$(dirname "$0")/lib/lab.sh"

lab_need root python3 ss
[ -x "$BIN" ] || lab_die "no binary at $BIN (cargo build --release)"
lab_init
lab_host list
NS=$(lab_ns list)

lab_hold_connections list "$N"
have=$LAB_HELD
echo "bench-list: $have established sockets in $NS"

lab_exec list python3 - "$RUNS" "$BIN" "$FIGURE" "$have" <<'PY'
# Wall time, and CPU time (user + sys of the child, from wait4): on a busy
# machine the wall time is mostly waiting for a core, the CPU time is not.
import os, statistics, subprocess, sys, time
runs, binary, figure, sockets = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
commands = {
    "tcpwatch list --source netlink": [binary, "list", "--source", "netlink"],
    "tcpwatch list --source procfs": [binary, "list", "--source", "procfs"],
    "ss -tan": ["ss", "-tan"],
}
# Round-robin, so a burst of load elsewhere hits the anchor (ss) as much as
# the figures it anchors.
walls, cpus = {name: [] for name in commands}, {name: [] for name in commands}
for _ in range(runs):
    for name, argv in commands.items():
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        walls[name].append(time.perf_counter() - start)
        cpus[name].append(usage.ru_utime + usage.ru_stime)
        assert status == 0, f"{name} failed"
wall, cpu = {}, {}
for name in commands:
    wall[name], cpu[name] = statistics.median(walls[name]), statistics.median(cpus[name])
    print(f"{name:<32} wall {wall[name] * 1000:7.1f} ms   cpu {cpu[name] * 1000:7.1f} ms   (medians of {runs})")
for name in list(commands)[:2]:
    print(f"ratio {name:<26} / ss -tan: wall {wall[name] / wall['ss -tan']:.2f}, cpu {cpu[name] / cpu['ss -tan']:.2f}")
    target = ["ratio <= 0.5"] if "netlink" in name else []
    for kind, times in (("CPU", cpu), ("wall", wall)):
        subprocess.run([figure, f"{name.removeprefix('tcpwatch ')}, {sockets} sockets: {kind}",
                        f"{times[name] * 1000:.1f}", "ms", f"ss -tan {kind}",
                        f"{times['ss -tan'] * 1000:.1f}", *(target if kind == "CPU" else [])],
                       check=True)
PY
