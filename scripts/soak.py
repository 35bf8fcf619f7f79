#!/usr/bin/env python3
"""Traffic and accounting helper of scripts/soak.sh (standard library only).

    soak.py serve PORT...
        Listens on 0.0.0.0:PORT for every PORT, prints `ready`, then accepts
        every connection and closes it when the client has closed its side,
        so the client always closes first and the TIME-WAIT sockets stay on
        the clients, spread over their many addresses.

    soak.py client --rate R --seconds S --status FILE --src IP,IP,... HOST PORT
        Opens R connections a second to HOST:PORT for S seconds, each from
        the next --src address in turn (an ephemeral port picked at connect),
        and closes each at once. Paced on a schedule: a stall is caught up.
        FILE (JSON, rewritten each second and at the end) holds, per source
        address, the connects that succeeded (`ok`), those that failed after
        sending a SYN (`failed`: timeout, refused, reset) and those that
        failed before (`unsent`), plus `elapsed` seconds.

    soak.py scan --src IP HOST PORT...
        A connect scan from IP: one connect to each PORT (1 s timeout), in
        order. Prints nothing; exit 0.

    soak.py probe --src IP HOST PORT
        One connect from IP (1 s timeout); prints `answered` or `dropped`
        (a timeout: nothing came back).

    soak.py sample WORKDIR PID T
        One progress line of the agent PID at T seconds (see sample()).

    soak.py report WORKDIR
        The end-of-run accounting and verdict (see scripts/soak.sh).
"""

import argparse
import collections
import json
import os
import re
import selectors
import socket
import sys
import time

# Not in Python's socket module before 3.12 (linux/in.h).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
CONNECT_TIMEOUT = 3.0
MIB = 1024 * 1024
# How the client counts a connect's result.
FOLD = {"timeout": "failed", "refused": "failed"}


def serve(args):
    selector = selectors.DefaultSelector()
    for port in args.ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(4096)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, "listener")
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if key.data == "listener":
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ, "conn")
                continue
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()


def connect_from(src, host, port, timeout):
    """'ok', 'timeout', 'refused' (both after a SYN went out) or 'unsent'."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))
        sock.settimeout(timeout)
        sock.connect((host, port))
        return "ok"
    except TimeoutError:
        return "timeout"
    except (ConnectionRefusedError, ConnectionResetError):
        return "refused"
    except OSError:
        return "unsent"
    finally:
        sock.close()


def write_json(path, value):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def client(args):
    counts = {kind: collections.Counter() for kind in ("ok", "failed", "unsent")}
    start = time.monotonic()
    next_status = start + 1
    sent = 0

    def status(now):
        write_json(args.status, {"elapsed": now - start, **counts})

    while True:
        now = time.monotonic()
        if now - start >= args.seconds:
            break
        if now >= next_status:
            status(now)
            next_status += 1
        due = start + sent / args.rate
        if due > now:
            time.sleep(due - now)
        src = args.src[sent % len(args.src)]
        sent += 1
        result = connect_from(src, args.host, args.port, CONNECT_TIMEOUT)
        counts[FOLD.get(result, result)][src] += 1
    status(time.monotonic())


def scan(args):
    for port in args.ports:
        connect_from(args.src, args.host, port, 1.0)


def probe(args):
    # Only a timeout is a drop: an answer or a refusal means packets got back.
    timed_out = connect_from(args.src, args.host, args.port, 1.0) == "timeout"
    print("dropped" if timed_out else "answered")


# ---------------------------------------------------------------------------
# The report


def metric(text, name, labels=None):
    """Sum of the samples of `name` (whose labels contain `labels`)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name and (labels is None or labels in (m.group(2) or "")):
            total += float(m.group(3))
    return int(total)


def read_lines(path, clients):
    """Printed lines by kind, and `New connection` lines per client address."""
    new_line = re.compile(r": New connection: (.+):\d+ -> (.+):\d+$")
    per_client = collections.Counter()
    kinds = collections.Counter()
    blocked = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = new_line.search(line)
            if m:
                kinds["new"] += 1
                if m.group(1) in clients:
                    per_client[m.group(1)] += 1
            elif ": Port scan detected: " in line:
                kinds["scan"] += 1
            elif ": Blocked " in line:
                kinds["blocked"] += 1
                blocked.append(line.split(": Blocked ", 1)[1].split()[0])
            else:
                kinds["other"] += 1
    return kinds, per_client, blocked


def proc_figures(pid):
    """VmRSS (KiB), open fds and user+system CPU ticks of process `pid`."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15; fields[0] is field 3 (state).
    return rss, fds, int(fields[11]) + int(fields[12])


def count_new_lines(work):
    """`New connection` lines so far, reading only what was added since the
    last call (the output grows to tens of MB)."""
    path = os.path.join(work, "linecount.json")
    try:
        seen = json.load(open(path))
    except OSError:
        seen = {"offset": 0, "lines": 0}
    with open(os.path.join(work, "out"), "rb") as f:
        f.seek(seen["offset"])
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    seen["lines"] += complete.count(b": New connection: ")
    seen["offset"] += len(complete)
    write_json(path, seen)
    return seen["lines"]


def clients_ok(work):
    total = 0
    for name in os.listdir(work):
        if name.startswith("client-") and name.endswith(".json"):
            try:
                total += sum(json.load(open(os.path.join(work, name)))["ok"].values())
            except (OSError, ValueError):
                pass
    return total


def sample(args):
    """One progress line, and one JSON line in WORK/samples.jsonl."""
    work, t = args.work, args.t
    try:
        text = open(os.path.join(work, "metrics.now")).read()
    except OSError:
        text = ""
    rss, fds, ticks = proc_figures(args.pid)
    row = {
        "t": t, "made": clients_ok(work), "lines": count_new_lines(work),
        "counted": metric(text, "tcpwatch_new_connections_total"),
        "lost": metric(text, "tcpwatch_events_lost_total"),
        "rss_kib": rss, "fds": fds, "cpu_ticks": ticks,
        "scans": metric(text, "tcpwatch_port_scans_total"),
        "blocks": metric(text, "tcpwatch_blocks_total"),
        "blocked_now": metric(text, "tcpwatch_blocked_ips"),
        "evictions": metric(text, "tcpwatch_evictions_total"),
    }
    path = os.path.join(work, "samples.jsonl")
    previous = None
    if os.path.exists(path):
        previous = json.loads(open(path).read().splitlines()[-1])
    else:
        print(f"{'t/s':>5} {'made/s':>7} {'made':>8} {'lines':>8} {'metric':>8} {'lost':>6} "
              f"{'RSS/MiB':>8} {'fds':>4} {'cpu%':>5} {'scans':>5} {'blocks':>6} "
              f"{'blocked':>7} {'evicted':>8}")
    span = t - previous["t"] if previous else 0
    rate = (row["made"] - previous["made"]) / span if span else 0
    cpu = 100 * (ticks - previous["cpu_ticks"]) / os.sysconf("SC_CLK_TCK") / span if span else 0
    print(f"{t:>5} {rate:>7.0f} {row['made']:>8} {row['lines']:>8} {row['counted']:>8} "
          f"{row['lost']:>6} {rss / 1024:>8.1f} {fds:>4} {cpu:>5.1f} {row['scans']:>5} "
          f"{row['blocks']:>6} {row['blocked_now']:>7} {row['evictions']:>8}", flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def report(args):
    work = args.work
    env = json.load(open(os.path.join(work, "env.json")))
    made = {kind: collections.Counter() for kind in ("ok", "failed", "unsent")}
    elapsed = 0.0
    for name in sorted(os.listdir(work)):
        if name.startswith("client-") and name.endswith(".json"):
            status = json.load(open(os.path.join(work, name)))
            elapsed = max(elapsed, status["elapsed"])
            for kind in made:
                made[kind].update(status[kind])
    clients = set(made["ok"]) | set(made["failed"]) | set(made["unsent"])
    kinds, printed, blocked = read_lines(os.path.join(work, "out"), clients)
    metrics = open(os.path.join(work, "metrics.final")).read()
    samples = [json.loads(line) for line in open(os.path.join(work, "samples.jsonl"))]
    scans = [json.loads(line) for line in open(os.path.join(work, "scans.jsonl"))]

    ok, failed, unsent = (sum(made[k].values()) for k in ("ok", "failed", "unsent"))
    attempts = ok + failed
    lines_clients = sum(printed.values())
    lost = metric(metrics, "tcpwatch_events_lost_total")
    counted_new = metric(metrics, "tcpwatch_new_connections_total")
    counted_scans = metric(metrics, "tcpwatch_port_scans_total")
    counted_blocks = metric(metrics, "tcpwatch_blocks_total")
    # Per address: a line for an address that made fewer attempts is a
    # duplicate, whatever the totals say.
    extra = sum(max(0, printed[ip] - made["ok"][ip] - made["failed"][ip]) for ip in clients)
    unaccounted = max(0, attempts - lines_clients - lost)

    warm = [s for s in samples if s["t"] >= env["warmup"]] or samples
    rss_start, rss_end = warm[0]["rss_kib"], samples[-1]["rss_kib"]
    rss_max = max(s["rss_kib"] for s in samples)
    fd_start, fd_end = warm[0]["fds"], samples[-1]["fds"]
    rss_limit = rss_start * 1.10 + env["rss_slack_mib"] * 1024
    # The tables fill during the warm-up; a shorter run shows their growth.
    judge_rss = env["seconds"] >= 2 * env["warmup"]
    cpu_s = samples[-1]["cpu_ticks"] / env["clk_tck"]

    rounds = len(scans)
    detected = sum(s["detected"] for s in scans)
    dropped = sum(s["probe"] == "dropped" for s in scans)
    scanner_blocked = sum(s["blocked"] for s in scans)

    checks = [
        ("agent exit status 0", env_int(work, "exit") == 0, f"exit {env_int(work, 'exit')}"),
        ("no leftovers (firewall table / XDP program)", env_int(work, "leftovers") == 0,
         read(work, "leftovers.txt") or "none"),
        ("every client attempt printed or counted lost",
         unaccounted == 0, f"{attempts} attempts - {lines_clients} lines - {lost} lost = "
         f"{attempts - lines_clients - lost}"),
        ("no duplicate or invented lines", extra == 0, f"{extra} lines beyond attempts"),
        ("tcpwatch_new_connections_total == New connection lines",
         counted_new == kinds["new"], f"{counted_new} vs {kinds['new']}"),
        ("port scans and blocks: metrics == lines",
         counted_scans == kinds["scan"] and counted_blocks == kinds["blocked"],
         f"scans {counted_scans} vs {kinds['scan']}, blocks {counted_blocks} vs {kinds['blocked']}"),
        ("every scan round detected, blocked and dropped",
         rounds > 0 and detected == scanner_blocked == dropped == rounds,
         f"{rounds} rounds: {detected} detected, {scanner_blocked} blocked, "
         f"{dropped} probes dropped"),
        ("fd count flat", fd_end <= fd_start + 2, f"start {fd_start}, end {fd_end} (slack 2)"),
        ("RSS flat", rss_end <= rss_limit if judge_rss else None,
         f"start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB, "
         f"limit {rss_limit / 1024:.1f} MiB (start x 1.10 + {env['rss_slack_mib']} MiB)"),
    ]

    rate = ok / elapsed if elapsed else 0.0
    print()
    print(f"soak: {env['source']} source, --block {env['block']}, {env['seconds']} s at "
          f"{env['rate']}/s asked, {len(clients)} client addresses on {env['clients']} hosts")
    print(f"soak: achieved {rate:.0f} completed connections/s ({ok} ok, {failed} failed after "
          f"a SYN, {unsent} never sent, over {elapsed:.0f} s)")
    print(f"soak: client lines {lines_clients}, lost (tcpwatch_events_lost_total) {lost}; "
          f"all lines: {kinds['new']} new, {kinds['scan']} scans, {kinds['blocked']} blocked, "
          f"{kinds['other']} other")
    print(f"soak: RSS start {rss_start / 1024:.1f} MiB (at {warm[0]['t']} s), end "
          f"{rss_end / 1024:.1f} MiB, max {rss_max / 1024:.1f} MiB; fds start {fd_start}, "
          f"end {fd_end}")
    print(f"soak: agent CPU {cpu_s:.1f} s user+sys = {100 * cpu_s / max(1, samples[-1]['t']):.1f}% "
          f"of one core; evictions {samples[-1]['evictions']}; state file "
          f"{env_int(work, 'state_bytes') / 1024:.0f} KiB")
    print(f"soak: load average at start {read(work, 'load.start')}, at end {read(work, 'load.end')}")
    failed_checks = 0
    for name, passed, detail in checks:
        failed_checks += passed is False
        verdict = {True: "PASS", False: "FAIL", None: "not judged"}[passed]
        if passed is None:
            detail += f"; the run is shorter than twice the {env['warmup']} s warm-up"
        print(f"  [{verdict}] {name}: {detail}")
    print(f"soak: {'PASS' if failed_checks == 0 else 'FAIL'}")
    return 1 if failed_checks else 0


def read(work, name):
    try:
        return open(os.path.join(work, name)).read().strip()
    except OSError:
        return ""


def env_int(work, name):
    try:
        return int(read(work, name))
    except ValueError:
        return -1


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("client")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--src", type=lambda text: text.split(","), required=True)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p = sub.add_parser("scan")
    p.add_argument("--src", required=True)
    p.add_argument("host")
    p.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("probe")
    p.add_argument("--src", required=True)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p = sub.add_parser("sample")
    p.add_argument("work")
    p.add_argument("pid", type=int)
    p.add_argument("t", type=int)
    p = sub.add_parser("report")
    p.add_argument("work")
    args = parser.parse_args()
    handler = {"serve": serve, "client": client, "scan": scan, "probe": probe,
               "sample": sample, "report": report}[args.command]
    sys.exit(handler(args) or 0)


if __name__ == "__main__":
    main()
