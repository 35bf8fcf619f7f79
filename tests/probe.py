#!/usr/bin/env python3
"""Probes and ordinary UDP traffic for the pcap source's end-to-end tests
(python3 standard library only; the raw commands need root).

    probe.py syn6 IFACE DST_MAC SRC DST PORT:HEADERS...
        Sends one TCP SYN per PORT from SRC to DST (IPv6) as an Ethernet
        frame on IFACE (an AF_PACKET socket, so no kernel stack gets in the
        way), with the extension headers HEADERS names in order, separated
        by `+`: `hbh` (hop-by-hop), `dst` (destination options), `rt` (a
        routing header with no segment left), `frag` (an atomic fragment
        header), `split` (the SYN in two fragments, the flags in the second),
        `none`. Source port 40000 + PORT; prints the source port of each.

    probe.py rotate IFACE DST_MAC PREFIX DST PORT...
        One SYN per PORT from a new address of the /64 PREFIX each time
        (PREFIX::1:N for the Nth), as `syn6` sends them; prints
        `ADDRESS PORT` for each.

    probe.py udp-echo PORT...
        Echoes every datagram it receives on the UDP PORTs (IPv4 and IPv6),
        printing `ready` once bound.

    probe.py udp-flow HOST PORT RATE SECONDS SIZE
        Sends SIZE-byte datagrams to HOST:PORT at RATE a second for SECONDS,
        reading the answers as they come (a DNS-like request/response flow
        when SIZE is small, a QUIC-like one when it is about 1200); prints
        `sent N received M` and exits 0.
"""

import os
import select
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_syn(src, dst, sport, dport, seq):
    """A 20-byte TCP SYN with a correct IPv6 pseudo-header checksum."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!IxxxB", len(header), 6)
    check = checksum(pseudo + header)
    return header[:16] + struct.pack("!H", check) + header[18:]


def extension(kind, next_header, rest):
    if kind in ("hbh", "dst"):
        # PadN over the 6 bytes after the next-header and length fields.
        return bytes([next_header, 0, 1, 4, 0, 0, 0, 0]) + rest
    if kind == "rt":
        # Routing type 4 (segment routing), no segment left: skipped.
        return bytes([next_header, 0, 4, 0, 0, 0, 0, 0]) + rest
    if kind == "frag":
        return bytes([next_header, 0, 0, 0]) + struct.pack("!I", 0x5EED) + rest
    raise SystemExit(f"unknown header {kind}")


NUMBER = {"hbh": 0, "dst": 60, "rt": 43, "frag": 44}


def ipv6(src, dst, next_header, payload):
    return struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64) + src + dst + payload


def packets(src, dst, headers, segment):
    """The IPv6 packets carrying `segment` behind `headers`."""
    headers = [h for h in headers if h != "none"]
    if "split" in headers:
        headers.remove("split")
        ident = int.from_bytes(os.urandom(4), "big")
        out = []
        for offset, piece, more in ((0, segment[:8], 1), (8, segment[8:], 0)):
            body = bytes([6, 0]) + struct.pack("!HI", offset | more, ident) + piece
            out.append(chain(src, dst, headers, 44, body))
        return out
    return [chain(src, dst, headers, 6, segment)]


def chain(src, dst, headers, last, body):
    next_header = last
    for kind in reversed(headers):
        body = extension(kind, next_header, body)
        next_header = NUMBER[kind]
    return ipv6(src, dst, next_header, body)


def link(iface, dst_mac):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    with open(f"/sys/class/net/{iface}/address") as f:
        src_mac = bytes.fromhex(f.read().strip().replace(":", ""))
    head = bytes.fromhex(dst_mac.replace(":", "")) + src_mac + struct.pack("!H", 0x86DD)
    return lambda packet: sock.send(head + packet)


def syn6(args):
    iface, dst_mac, src, dst, *specs = args
    send = link(iface, dst_mac)
    src_b, dst_b = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    for spec in specs:
        port, headers = spec.split(":")
        port = int(port)
        sport = 40000 + port
        segment = tcp_syn(src_b, dst_b, sport, port, 1000 + port)
        for packet in packets(src_b, dst_b, headers.split("+"), segment):
            send(packet)
        print(sport, flush=True)
        time.sleep(0.02)


def rotate(args):
    iface, dst_mac, prefix, dst, *ports = args
    send = link(iface, dst_mac)
    net = socket.inet_pton(socket.AF_INET6, prefix)[:8]
    dst_b = socket.inet_pton(socket.AF_INET6, dst)
    for n, port in enumerate(ports, start=1):
        src_b = net + struct.pack("!HHHH", 0, 0, 1, n)
        port = int(port)
        send(ipv6(src_b, dst_b, 6, tcp_syn(src_b, dst_b, 40000, port, n)))
        print(socket.inet_ntop(socket.AF_INET6, src_b), port, flush=True)
        time.sleep(0.02)


def udp_echo(args):
    socks = []
    for port in map(int, args):
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address, port))
            socks.append(sock)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for sock in ready:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)


def udp_flow(args):
    host, port, rate, seconds, size = args
    port, rate, seconds, size = int(port), float(rate), float(seconds), int(size)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setblocking(False)
    payload = os.urandom(size)
    sent = received = 0
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) * rate) + 1
        while sent < due:
            try:
                sock.send(payload)
                sent += 1
            except BlockingIOError:
                break
        received += drain(sock)
        time.sleep(0.0005)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and received < sent:
        received += drain(sock)
        time.sleep(0.01)
    print(f"sent {sent} received {received}", flush=True)


def drain(sock):
    n = 0
    while True:
        try:
            sock.recv(65535)
            n += 1
        except (BlockingIOError, ConnectionRefusedError):
            return n


COMMANDS = {"syn6": syn6, "rotate": rotate, "udp-echo": udp_echo, "udp-flow": udp_flow}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit(__doc__)
    COMMANDS[sys.argv[1]](sys.argv[2:])
