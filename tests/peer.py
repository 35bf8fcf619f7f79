#!/usr/bin/env python3
"""Traffic helper for the end-to-end tests (python3 standard library only).

    peer.py serve [--v4|--dual|--v6only] PORT...
        Listens on every PORT of the wildcard address, prints `ready` once all
        are listening, then accepts and holds every accepted connection open
        until killed.
          --v4      0.0.0.0 (the default)
          --dual    :: accepting IPv4 too (IPv4 clients show as ::ffff:a.b.c.d)
          --v6only  :: with IPV6_V6ONLY

    peer.py connect [--src-port P] HOST PORT... [--hold SECONDS]
        Opens one connection to HOST per PORT, in order, and prints the local
        `IP PORT` of each as soon as it is connected, so a test knows the exact
        line the agent must print. Then holds them all open for SECONDS (until
        killed when --hold is absent), closes them and exits 0. Any failure is
        one line on stderr and exit 1.
          --src-port P  bind every connection to local port P (SO_REUSEADDR)

    peer.py attempt [--timeout SECONDS] HOST PORT...
        One connection attempt to HOST per PORT, in order: prints the local
        port first, then tries for SECONDS (default 2); refused or timed out is
        fine (the SYN is the attempt). Exits 0 unless a socket cannot be made.

    peer.py short [--gap SECONDS] HOST PORT COUNT
        COUNT connections to HOST:PORT, each closed as soon as it is made,
        SECONDS apart (default 0.01); prints the local `IP PORT` of each.

Output is flushed line by line: the test reads it while the process runs.
"""

import argparse
import signal
import selectors
import socket
import sys
import time

CONNECT_TIMEOUT_SECONDS = 5


def listener(mode, port):
    if mode == "v4":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", port)
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6only = 1 if mode == "v6only" else 0
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        address = ("::", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(args):
    selector = selectors.DefaultSelector()
    for port in args.ports:
        selector.register(listener(args.mode, port), selectors.EVENT_READ)
    print("ready", flush=True)
    # Accepted sockets are kept referenced so they stay open until we die.
    held = []
    while True:
        for key, _ in selector.select():
            try:
                conn, _ = key.fileobj.accept()
            except BlockingIOError:
                continue
            held.append(conn)


def connect_one(host, port, src_port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if src_port is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", src_port))
    sock.settimeout(CONNECT_TIMEOUT_SECONDS)
    sock.connect((host, port))
    local = sock.getsockname()
    print(f"{local[0]} {local[1]}", flush=True)
    return sock


def connect(args):
    held = [connect_one(args.host, port, args.src_port) for port in args.ports]
    if args.hold is None:
        while True:
            signal.pause()
    time.sleep(args.hold)
    for sock in held:
        sock.close()


def attempt(args):
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    for port in args.ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        print(sock.getsockname()[1], flush=True)
        sock.settimeout(args.timeout)
        try:
            sock.connect((args.host, port))
        except OSError:
            pass
        sock.close()


def short(args):
    for _ in range(args.count):
        sock = connect_one(args.host, args.port, None)
        sock.close()
        time.sleep(args.gap)


def parse(argv):
    parser = argparse.ArgumentParser(prog="peer.py")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve")
    modes = serve_cmd.add_mutually_exclusive_group()
    for mode in ("v4", "dual", "v6only"):
        modes.add_argument(f"--{mode}", dest="mode", action="store_const", const=mode)
    serve_cmd.set_defaults(mode="v4")
    serve_cmd.add_argument("ports", metavar="PORT", type=int, nargs="+")

    connect_cmd = commands.add_parser("connect")
    connect_cmd.add_argument("--src-port", type=int)
    connect_cmd.add_argument("--hold", type=float)
    connect_cmd.add_argument("host", metavar="HOST")
    connect_cmd.add_argument("ports", metavar="PORT", type=int, nargs="+")

    attempt_cmd = commands.add_parser("attempt")
    attempt_cmd.add_argument("--timeout", type=float, default=2.0)
    attempt_cmd.add_argument("host", metavar="HOST")
    attempt_cmd.add_argument("ports", metavar="PORT", type=int, nargs="+")

    short_cmd = commands.add_parser("short")
    short_cmd.add_argument("--gap", type=float, default=0.01)
    short_cmd.add_argument("host", metavar="HOST")
    short_cmd.add_argument("port", metavar="PORT", type=int)
    short_cmd.add_argument("count", metavar="COUNT", type=int)
    return parser.parse_args(argv)


def main(argv):
    args = parse(argv)
    try:
        commands = {"serve": serve, "connect": connect, "attempt": attempt, "short": short}
        commands[args.command](args)
    except OSError as e:
        print(f"peer.py {args.command}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
