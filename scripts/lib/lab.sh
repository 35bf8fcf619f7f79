# shellcheck shell=bash
# A lab of network namespaces for the benchmark, soak and fuzz-seed scripts:
# hosts in their own namespaces, joined by veth pairs or plugged into a
# bridge, with private addresses only (IPv4 in 10.0.0.0/8, IPv6 in
# fd00::/8), commands run in them, background processes, and one clean-up
# that runs however the script ends (normal exit, error under `set -e`,
# Ctrl-C, SIGTERM, SIGHUP).
#
#   set -euo pipefail
#   . "$(dirname "$0")/lib/lab.sh"        # from scripts/; fuzz/seeds: ../../scripts/lib
#   lab_need root tcpdump                  # or exit 1, naming what is missing
#   lab_init                               # names, $LAB_WORK, the clean-up trap
#   lab_pair a b eth0 10.250.0 fd00:250::  # a: .1 and ::1, b: .2 and ::2
#   lab_bg a tcpdump -i eth0 ... >"$LAB_WORK/dump"; dump=$LAB_PID
#   lab_exec b curl -s 10.250.0.1:8080
#
# Names. A lab is `twsh-PID-TAG` (PID: the script's, TAG: its name without
# `.sh`); host H is the namespace `twsh-PID-TAG-H` (`lab_ns H`). Two runs,
# even of the same script, never share a namespace. A lab whose script was
# killed before it could clean up (SIGKILL) is removed by the next lab made
# on the machine: its PID no longer runs.
#
# Links. Interfaces inside hosts have fixed names (eth0, veth0, br0, pN):
# each namespace has its own. A veth is created inside one namespace with its
# peer moved straight into the other, so nothing ever appears in the root
# namespace. The veths keep the kernel's defaults (one queue each way, MTU
# 1500), which native (driver-mode) XDP on veth accepts.
#
# Processes. `lab_bg` starts a command in a host, `lab_spawn` one in the
# root namespace (a shell function too); both leave its pid in LAB_PID. At
# the end, every background process of the script (with its children) and
# every process inside the lab's namespaces is killed (SIGKILL), then the
# namespaces are deleted and $LAB_WORK removed (kept with LAB_KEEP=1, and
# its path printed).
#
# Signals. Ctrl-C reaches every process in the foreground, so the script
# ends at once (exit 130); a SIGTERM or SIGHUP sent to the script alone
# takes effect when its current foreground command ends (bash runs traps
# between commands), then the same clean-up runs (exit 143, 129).
#
# Everything that needs no root (lab_init, lab_spawn, the work directory)
# also works in a script that makes no namespace.

LAB_TAG=$(basename "$0" .sh)
LAB_PREFIX=twsh
LAB_NAME=
LAB_WORK=
LAB_OWNER=
LAB_PID=
LAB_HOSTS=()
LAB_PIDS=()
LAB_PORTS=0

lab_die() {
  echo "$LAB_TAG: $*" >&2
  exit 1
}

# lab_need [root] TOOL...: exits 1 naming whatever is missing.
lab_need() {
  local missing=() what root=
  for what in "$@"; do
    if [ "$what" = root ]; then
      [ "$(id -u)" -eq 0 ] || root=1
    elif ! command -v "$what" >/dev/null; then
      missing+=("$what")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    lab_die "needs ${root:+root and }${missing[*]} (scripts/install-deps.sh installs them)"
  elif [ -n "$root" ]; then
    lab_die "needs root (network namespaces)"
  fi
}

# lab_init: the lab's name, its work directory $LAB_WORK and the clean-up
# trap. Call it once, in the script's own shell (not in a subshell).
lab_init() {
  LAB_NAME=$LAB_PREFIX-$$-$LAB_TAG
  LAB_OWNER=$BASHPID
  trap _lab_cleanup EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
  LAB_WORK=$(mktemp -d "${TMPDIR:-/tmp}/tw-$LAB_TAG.XXXXXX")
}

# lab_ns HOST: the namespace of HOST.
lab_ns() {
  echo "$LAB_NAME-$1"
}

# lab_host HOST...: a namespace per HOST with its loopback up.
lab_host() {
  [ -n "$LAB_NAME" ] || lab_die "lab_init first"
  if [ ${#LAB_HOSTS[@]} -eq 0 ]; then
    lab_need root ip
    _lab_reap_stale
  fi
  local host ns
  for host in "$@"; do
    ns=$(lab_ns "$host")
    # Recorded first: the clean-up deletes it even if what follows fails.
    LAB_HOSTS+=("$ns")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
}

# lab_link A B [IF]: a veth pair between hosts A and B, named IF (eth0) on
# both sides, up.
lab_link() {
  local a b if=${3:-eth0}
  a=$(lab_ns "$1")
  b=$(lab_ns "$2")
  ip -n "$a" link add "$if" type veth peer name "$if" netns "$b"
  ip -n "$a" link set "$if" up
  ip -n "$b" link set "$if" up
}

# lab_bridge HUB: a host HUB holding the bridge br0, up.
lab_bridge() {
  lab_host "$1"
  ip -n "$(lab_ns "$1")" link add br0 type bridge
  ip -n "$(lab_ns "$1")" link set br0 up
}

# lab_plug HUB HOST [IF]: a veth from a new port pN of HUB's bridge to IF
# (eth0) of HOST, up.
lab_plug() {
  local hub host if=${3:-eth0} port
  hub=$(lab_ns "$1")
  host=$(lab_ns "$2")
  LAB_PORTS=$((LAB_PORTS + 1))
  port=p$LAB_PORTS
  ip -n "$hub" link add "$port" type veth peer name "$if" netns "$host"
  ip -n "$hub" link set "$port" master br0 up
  ip -n "$host" link set "$if" up
}

# lab_addr HOST IF ADDRESS/LENGTH...: adds the addresses to IF of HOST. Only
# private ones: IPv4 in 10.0.0.0/8, IPv6 in fd00::/8 (without duplicate
# address detection, so they are usable at once instead of after ~1 s).
lab_addr() {
  local ns if=$2 address
  ns=$(lab_ns "$1")
  shift 2
  for address in "$@"; do
    case "$address" in
      10.*) ip -n "$ns" addr add "$address" dev "$if" ;;
      fd*:*) ip -n "$ns" addr add "$address" dev "$if" nodad ;;
      *) lab_die "lab_addr: $address is not in 10.0.0.0/8 or fd00::/8" ;;
    esac
  done
}

# lab_pair A B IF V4NET [V6NET]: hosts A and B joined by a veth named IF;
# A gets V4NET.1/24 (and V6NET1/64), B V4NET.2/24 (and V6NET2/64).
# Example: lab_pair a b veth0 10.99.1 fd00:99:1::
lab_pair() {
  local a=$1 b=$2 if=$3 v4=$4 v6=${5:-}
  lab_host "$a" "$b"
  lab_link "$a" "$b" "$if"
  lab_addr "$a" "$if" "$v4.1/24" ${v6:+"${v6}1/64"}
  lab_addr "$b" "$if" "$v4.2/24" ${v6:+"${v6}2/64"}
}

# lab_exec HOST COMMAND...: runs COMMAND in HOST.
lab_exec() {
  local ns
  ns=$(lab_ns "$1")
  shift
  ip netns exec "$ns" "$@"
}

# lab_bg HOST COMMAND...: starts COMMAND in HOST in the background; LAB_PID
# is its pid (`ip netns exec` execs it, so the pid is COMMAND's own). Its
# stdin is /dev/null, as for any background command of a script (give a
# Python program with -c, not as a here-document); redirect its output on
# the call: lab_bg a tcpdump ... >"$LAB_WORK/dump" 2>&1
lab_bg() {
  local ns
  ns=$(lab_ns "$1")
  shift
  ip netns exec "$ns" "$@" </dev/null &
  LAB_PID=$!
  LAB_PIDS+=("$LAB_PID")
}

# lab_spawn COMMAND...: starts COMMAND (a program or a shell function) in
# the root namespace in the background, stdin /dev/null; LAB_PID is its
# pid. Killed, with its children, at the end.
lab_spawn() {
  "$@" </dev/null &
  LAB_PID=$!
  LAB_PIDS+=("$LAB_PID")
}

# lab_stop PID [SIGNAL]: sends SIGNAL (TERM) to PID and waits for it; its
# exit status is not an error.
lab_stop() {
  kill -"${2:-TERM}" "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# lab_hold_connections NAME N: N loopback connections held open in NAME's
# namespace (2N established sockets): one process accepts and holds, another
# connects and holds, so each stays under the open-files limit on its own.
# Waits up to 2 minutes for them; LAB_HELD is how many sockets it saw.
lab_hold_connections() {
  lab_bg "$1" python3 -c '
import resource, socket, sys, time, os
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
server = socket.create_server(("127.0.0.1", 7000), backlog=4096)
if os.fork() == 0:
    held = [socket.create_connection(("127.0.0.1", 7000)) for _ in range(n)]
    time.sleep(100000)
held = [server.accept()[0] for _ in range(n)]
time.sleep(100000)' "$2"
  LAB_HELD=0
  for _ in $(seq 240); do
    LAB_HELD=$(lab_exec "$1" ss -Htn state established | wc -l)
    [ "$LAB_HELD" -ge $(($2 * 2)) ] && return 0
    sleep 0.5
  done
  lab_die "only $LAB_HELD of $(($2 * 2)) sockets established"
}

# lab_wait_for FILE TEXT [SECONDS]: whether TEXT (fixed text) shows up in
# FILE within SECONDS (10).
lab_wait_for() {
  local tries=$((${3:-10} * 10))
  while [ "$tries" -gt 0 ]; do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    tries=$((tries - 1))
    sleep 0.1
  done
  return 1
}

# lab_expect FILE TEXT [SECONDS]: lab_wait_for, or exit 1 showing FILE.
lab_expect() {
  lab_wait_for "$@" && return 0
  echo "$LAB_TAG: no '$2' in $1 within ${3:-10} s:" >&2
  cat "$1" >&2 2>/dev/null || true
  exit 1
}

# lab_wait_listen HOST PORT [SECONDS]: until something in HOST listens on
# TCP PORT (10 s at most), or exit 1.
lab_wait_listen() {
  local tries=$((${3:-10} * 10))
  while [ "$tries" -gt 0 ]; do
    lab_exec "$1" ss -Hltn "sport = :$2" | grep -q . && return 0
    tries=$((tries - 1))
    sleep 0.1
  done
  lab_die "nothing listens on port $2 in $(lab_ns "$1")"
}

# --- clean-up ------------------------------------------------------------------

# _lab_tree PID: PID and all its descendants, parents first.
_lab_tree() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" 2>/dev/null); do _lab_tree "$child"; done
}

# _lab_kill_ns NS...: kills every process inside the namespaces (again, for
# what forked meanwhile), then deletes them.
_lab_kill_ns() {
  local ns pids round
  for round in 1 2 3 4 5; do
    pids=$(for ns in "$@"; do ip netns pids "$ns" 2>/dev/null; done)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $pids 2>/dev/null
    [ "$round" -eq 5 ] || sleep 0.1
  done
  for ns in "$@"; do ip netns del "$ns" 2>/dev/null; done
}

# Labs of scripts that no longer run (killed with SIGKILL mid-run).
_lab_reap_stale() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in
      "$LAB_PREFIX"-*) ;;
      *) continue ;;
    esac
    pid=${ns#"$LAB_PREFIX"-}
    pid=${pid%%-*}
    if ! [[ "$pid" =~ ^[0-9]+$ ]] || [ "$pid" = $$ ]; then continue; fi
    # Gone, or a zombie not yet reaped.
    if [ ! -d "/proc/$pid" ] || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
      (_lab_kill_ns "$ns") || true
    fi
  done
}

_lab_cleanup() {
  local status=$? pids=() pid
  # A subshell that exits is not the script ending.
  [ "$BASHPID" = "$LAB_OWNER" ] || return "$status"
  trap - EXIT HUP INT TERM
  set +e
  for pid in "${LAB_PIDS[@]}" $(jobs -p); do
    mapfile -t -O "${#pids[@]}" pids < <(_lab_tree "$pid")
  done
  [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null
  # Reaps them now: the shell would otherwise print a "Killed" notice for
  # each at its next command.
  wait 2>/dev/null
  [ ${#LAB_HOSTS[@]} -eq 0 ] || _lab_kill_ns "${LAB_HOSTS[@]}"
  if [ -n "$LAB_WORK" ]; then
    if [ "${LAB_KEEP:-0}" = 1 ]; then
      echo "$LAB_TAG: work directory kept: $LAB_WORK" >&2
    else
      rm -rf "$LAB_WORK"
    fi
  fi
  return "$status"
}
