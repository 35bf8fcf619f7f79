#!/usr/bin/env bash
# Regenerates the pcap_packet seeds from real captures: SYNs sent between two
# throw-away network namespaces over a veth pair (IPv4 and IPv6), captured by
# tcpdump (snaplen 96, as the agent) as Ethernet, Linux cooked v1 and v2
# frames. Raw-IP seeds are the Ethernet frames without their 14-byte header,
# 802.1Q seeds the Ethernet frames with a tag inserted (this kernel has no
# 8021q module to make tagged frames for real). Needs root, tcpdump, python3.
# Writes fuzz/corpus/pcap_packet/: each seed is one byte naming the link
# (0 Ethernet, 1 raw IP, 2 Linux cooked, 3 Linux cooked v2; see
# fuzz_targets/pcap_packet.rs), then the frame.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/corpus/pcap_packet"
# shellcheck source=../../scripts/lib/lab.sh
. "$(dirname "$0")/../../scripts/lib/lab.sh"
lab_need root tcpdump python3
lab_init
work=$LAB_WORK
lab_pair a b veth0 10.99.1 fd00:99:1::

capture() { # name, tcpdump link options...
  local name=$1
  shift
  lab_bg b tcpdump -U -s 96 -w "$work/$name.pcap" "$@" 'tcp' 2>/dev/null
  local pid=$LAB_PID
  sleep 1.5
  for dst in 10.99.1.2 fd00:99:1::2; do
    lab_exec a timeout 2 bash -c "exec 3<>/dev/tcp/$dst/2222" 2>/dev/null || true
  done
  sleep 1
  lab_stop "$pid"
}
capture ether -i veth0
capture sll -i any -y LINUX_SLL
capture sll2 -i any -y LINUX_SLL2

mkdir -p "$out"
python3 - "$work" "$out" <<'PY'
import struct, sys, os
work, out = sys.argv[1], sys.argv[2]
def frames(path):
    data = open(path, 'rb').read()
    (magic,) = struct.unpack('<I', data[:4])
    e = '<' if magic in (0xa1b2c3d4, 0xa1b23c4d) else '>'
    link = struct.unpack(e + 'I', data[20:24])[0]
    at = 24
    while at + 16 <= len(data):
        _, _, incl, _ = struct.unpack(e + 'IIII', data[at:at + 16])
        yield link, data[at + 16:at + 16 + incl]
        at += 16 + incl
def name(frame, link):
    # The IP version and whether a VLAN tag is in the frame.
    kind = {1: 'ether', 113: 'sll', 276: 'sll2'}[link]
    ether_type = {1: frame[12:14], 113: frame[14:16], 276: frame[0:2]}[link]
    version = 'v6' if ether_type == b'\x86\xdd' else 'v4'
    return f'{kind}_{version}'
seen = set()
for file in ('ether', 'sll', 'sll2'):
    for link, frame in frames(f'{work}/{file}.pcap'):
        n = name(frame, link)
        if n in seen:
            continue
        seen.add(n)
        pick = {1: 0, 113: 2, 276: 3}[link]
        open(os.path.join(out, n), 'wb').write(bytes([pick]) + frame)
        if link == 1:
            version = n.split('_')[1]
            open(os.path.join(out, 'raw_' + version), 'wb').write(bytes([1]) + frame[14:])
            tagged = frame[:12] + b'\x81\x00\x00\x2a' + frame[12:]
            open(os.path.join(out, 'ether_vlan_' + version), 'wb').write(bytes([0]) + tagged)
print(' '.join(sorted(os.listdir(out))))
PY
