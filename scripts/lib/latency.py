"""Connect-to-line latency of a real-time source, run on the client's host.

Starts the agent (`ip netns exec NS BINARY ARGS...`), waits for READY on its
stderr, opens N connections from this host to SERVER:8080, one every 5 ms,
and times each from just before connect() to the moment its line is read
from the agent's stdout (both on this machine's monotonic clock). Prints
p50/p99/max and records the figures under LABEL (scripts/bench-figure).

Usage: python3 latency.py N NS BINARY CLIENT SERVER LABEL READY WAIT MISSED ARGS...
  WAIT    seconds to wait for READY
  MISSED  the target on connections missed ("value < 1"), or "-" for none
"""
import os, re, subprocess, sys, threading, time, socket

n, ns, binary, client, server, label, ready_text, wait, missed_target = sys.argv[1:10]
n, wait, args = int(n), float(wait), sys.argv[10:]
agent = subprocess.Popen(["ip", "netns", "exec", ns, binary, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
seen, ready = {}, threading.Event()
def read_out():
    pat = re.compile(rf"New connection: {re.escape(client)}:(\d+) -> {re.escape(server)}:8080$")
    for line in agent.stdout:
        t = time.monotonic()
        m = pat.search(line.rstrip("\n"))
        if m: seen.setdefault(int(m.group(1)), t)
def read_err():
    for line in agent.stderr:
        if ready_text in line: ready.set()
        sys.stderr.write(line)
threading.Thread(target=read_out, daemon=True).start()
threading.Thread(target=read_err, daemon=True).start()
if not ready.wait(wait): sys.exit("agent did not attach")
started, reused = {}, 0
for _ in range(n):
    t0 = time.monotonic()
    s = socket.create_connection((server, 8080))
    port = s.getsockname()[1]
    reused += port in started
    started[port] = t0
    s.close()
    time.sleep(0.005)
time.sleep(1)
if reused: print(f"warning: {reused} source ports reused; their latency is not measured")
agent.terminate(); agent.wait(5)
lat = sorted((seen[p] - t0) * 1000 for p, t0 in started.items() if p in seen)
missing = len(started) - len(lat)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"latency: {len(lat)}/{len(started)} connections printed (missing {missing}); "
      f"p50 {pct(0.50):.2f} ms, p99 {pct(0.99):.2f} ms, max {lat[-1]:.2f} ms")
figure = os.environ["FIGURE"]
missed = [figure, f"{label}: connections missed (of {len(started)})", str(missing), "connections"]
if missed_target != "-":
    missed += ["-", "-", missed_target]
subprocess.run(missed, check=True)
subprocess.run([figure, f"{label}: connect-to-line p50", f"{pct(0.50):.2f}", "ms"], check=True)
subprocess.run([figure, f"{label}: connect-to-line p99", f"{pct(0.99):.2f}", "ms", "-", "-",
                "value < 5"], check=True)
