#!/usr/bin/env python3
"""Soak: drive load at a multi-process echo service for a set time while killing (SIGKILL) and
restarting random worker processes; print requests sent, answered by status, and lost (no answer
at all), which must be 0. Loopback only; bounded in time; exits non-zero if anything was lost.

    bench/soak.sh [--seconds 60] [--workers 3] [--clients 16] [--kill-every 2.0] [--job-ms 20]
"""

import argparse
import collections
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The release binaries cargo builds: under $CARGO_TARGET_DIR when it is set (relative to the
# repository, where soak.sh runs cargo), else target/.
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=3, help="worker processes")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
    ap.add_argument("--job-ms", type=int, default=20, help="work per request")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "prime_bin", "--bins"], cwd=ROOT, check=True)

    d = tempfile.mkdtemp(prefix="prime-soak-")
    port = free_port()
    cfg = os.path.join(d, "soak.toml")
    with open(cfg, "w") as f:
        f.write(f"""drain_seconds = 5
[heartbeat]
interval_ms = 250
liveness = 3
[[server]]
listen = "127.0.0.1:{port}"
loopback = "ipc://{d}/lb"
interrupt = "ipc://{d}/int"
timeout_seconds = 30
[[stage]]
name = "echo"
work = "echo"
upstream = "ipc://{d}/in"
downstream = "ipc://{d}/out"
workers = 1
""")
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([f"{BIN}/prime_proxyd", "--config", cfg, "--stage", "echo"], **quiet)
    workers = [subprocess.Popen([f"{BIN}/prime_workerd", "--config", cfg, "--stage", "echo"], **quiet)
               for _ in range(a.workers)]
    front = subprocess.Popen([f"{BIN}/prime_httpd", "--config", cfg], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    front.stdout.readline()

    stop_at = time.time() + a.seconds
    lock = threading.Lock()
    status = collections.Counter()
    sent = [0]
    lost = []
    kills = [0]

    def client(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
        k = 0
        while time.time() < stop_at:
            path = f"/c{n}-{k}?sleep={a.job_ms}"
            k += 1
            with lock:
                sent[0] += 1
            for attempt in (1, 2):
                try:
                    c.request("GET", path)
                    r = c.getresponse()
                    body = r.read()
                    with lock:
                        status[r.status] += 1
                    if r.status == 200 and not body.startswith(f"GET {path} ".encode()):
                        with lock:
                            lost.append((path, "wrong body"))
                    break
                except (ConnectionError, http.client.HTTPException, OSError) as e:
                    # A keep-alive connection the server closed as idle: retry once on a new one.
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
                    if attempt == 2:
                        with lock:
                            lost.append((path, repr(e)))

    def killer():
        rnd = random.Random(42)
        while time.time() + a.kill_every < stop_at:
            time.sleep(a.kill_every)
            i = rnd.randrange(len(workers))
            workers[i].send_signal(signal.SIGKILL)
            workers[i].wait()
            workers[i] = subprocess.Popen([f"{BIN}/prime_workerd", "--config", cfg, "--stage", "echo"], **quiet)
            kills[0] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(a.clients)]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for p in [front, proxy] + workers:
        p.send_signal(signal.SIGTERM)
    for p in [front, proxy] + workers:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()

    answered = sum(status.values())
    print(f"soak: {a.seconds:.0f} s, {a.clients} clients, {a.workers} worker processes, "
          f"{kills[0]} SIGKILLed and restarted, {a.job_ms} ms jobs")
    print(f"sent {sent[0]}, answered {answered}: " + ", ".join(f"{k}: {v}" for k, v in sorted(status.items())))
    print(f"lost {len(lost)}")
    for path, why in lost[:10]:
        print(f"  {path}: {why}")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
