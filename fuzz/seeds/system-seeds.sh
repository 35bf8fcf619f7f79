#!/usr/bin/env bash
# Regenerates the seeds that come from the system, in throw-away network
# namespaces (nothing outside them is touched):
# - state_file: a state file of a real agent run (procfs source, nftables
#   backend in the namespace) that saw connections and blocked a scanner;
#   plus copies cut short and with flipped bits;
# - netlink_dump: sock_diag dump datagrams of a namespace with IPv4, IPv6
#   and v4-mapped sockets;
# - block_list: `nft -j list set` and `ipset list -output save` of sets
#   holding elements with and without timeouts.
# Needs root, nft, ipset, ncat, python3 and a release build of tcpwatch.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
corpus="$root/fuzz/corpus"
bin="$root/target/release/tcpwatch"
# shellcheck source=../../scripts/lib/lab.sh
. "$root/scripts/lib/lab.sh"
lab_need root nft ipset ncat python3
[ -x "$bin" ] || lab_die "no binary at $bin (cargo build --release)"
lab_init
work=$LAB_WORK
lab_pair a b veth0 10.99.1 fd00:99:1::
inb() { lab_exec b "$@"; }

# Listeners (v4, v6, dual-stack) and open connections to them.
for port in 8001 8002 8003 8004 8005; do
  lab_bg b ncat -lk 10.99.1.2 "$port" >/dev/null 2>&1
done
lab_bg b ncat -lk -6 :: 8006 >/dev/null 2>&1
sleep 1

# state_file: the agent in b sees a scan of 5 ports from a and blocks it.
# It keeps running while every seed below is taken (the lab's clean-up stops
# it), as it did when the committed seeds were made: the state file is a
# running agent's, a's block stays in b's nftables table (so the connections
# a closes stay half-closed in b's dump, and nft_blocked4 shows the agent's
# own element of 10.99.1.1).
lab_bg b "$bin" run --source procfs -i 200ms --scan-ports 3 --block nftables \
  --metrics-addr off --state "$work/state" 2>"$work/agent.log" >"$work/events"
lab_expect "$work/agent.log" watching
# shellcheck disable=SC2016 # expanded by the inner shell
lab_exec a bash -c '
  for port in 8001 8002 8003 8004 8005; do exec {fd}<>/dev/tcp/10.99.1.2/$port; done
  exec {fd}<>/dev/tcp/fd00:99:1::2/8006
  sleep 3' || true
grep -q "Port scan" "$work/events" || { cat "$work/agent.log" "$work/events"; echo "no scan seen" >&2; exit 1; }
mkdir -p "$corpus/state_file"
cp "$work/state" "$corpus/state_file/agent"
python3 - "$work/state" "$corpus/state_file" <<'PY'
import sys, os
data = open(sys.argv[1], 'rb').read()
out = sys.argv[2]
open(os.path.join(out, 'cut_half'), 'wb').write(data[:len(data) // 2])
open(os.path.join(out, 'cut_header'), 'wb').write(data[:64])
for at in (9, 40, len(data) // 3, len(data) - 100):
    flipped = bytearray(data)
    flipped[at] ^= 0x10
    open(os.path.join(out, f'bitflip_{at}'), 'wb').write(bytes(flipped))
PY

# netlink_dump: the raw datagrams of one dump per family.
mkdir -p "$corpus/netlink_dump"
inb python3 - "$corpus/netlink_dump" <<'PY'
import socket, struct, sys, os
out = sys.argv[1]
for family, name in ((socket.AF_INET, 'v4'), (socket.AF_INET6, 'v6')):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
    req = struct.pack('=BBBBI', family, socket.IPPROTO_TCP, 0, 0, 0xffffffff) + bytes(48)
    s.send(struct.pack('=IHHII', 16 + len(req), 20, 0x301, 1, 0) + req)
    n = 0
    while True:
        data = s.recv(65536)
        open(os.path.join(out, f'dump_{name}_{n}'), 'wb').write(data)
        n += 1
        if struct.unpack('=H', data[4:6])[0] == 3 or b'\x03\x00\x02\x00' in data[4:8]:
            break
        done = False
        at = 0
        while at + 16 <= len(data):
            length, kind = struct.unpack('=IH', data[at:at + 6])
            if kind == 3:
                done = True
            at += (length + 3) & ~3
            if length < 16:
                break
        if done:
            break
PY

# block_list: the listings the agent reads back.
mkdir -p "$corpus/block_list"
inb nft -f - <<'NFT'
table inet tcpwatch {
  set blocked4 { type ipv4_addr; flags timeout; }
  set blocked6 { type ipv6_addr; flags timeout; }
}
NFT
inb nft add element inet tcpwatch blocked4 '{ 10.99.1.1 timeout 1h, 192.0.2.7 }'
inb nft add element inet tcpwatch blocked6 '{ fd00:99:1::1 timeout 30s }'
inb nft -j list set inet tcpwatch blocked4 >"$corpus/block_list/nft_blocked4.json"
inb nft -j list set inet tcpwatch blocked6 >"$corpus/block_list/nft_blocked6.json"
inb ipset create tcpwatch4 hash:ip family inet timeout 0
inb ipset add tcpwatch4 10.99.1.1 timeout 3600
inb ipset add tcpwatch4 192.0.2.7
inb ipset create tcpwatch6 hash:ip family inet6 timeout 0
inb ipset add tcpwatch6 fd00:99:1::1 timeout 30
inb ipset list tcpwatch4 -output save >"$corpus/block_list/ipset_tcpwatch4"
inb ipset list tcpwatch6 -output save >"$corpus/block_list/ipset_tcpwatch6"
inb ipset destroy tcpwatch4
inb ipset destroy tcpwatch6
ls -l "$corpus/state_file" "$corpus/netlink_dump" "$corpus/block_list"
