#!/usr/bin/env python3
"""Multi-process deployments under load, and where a request's CPU goes in each process (issue 15:
"measure first, per process").

    bench/deploy.sh [--deployments files-ipc,prime-ipc,prime-tcp] [--connections 8,64]
                    [--duration 8] [--warmup 2] [--rounds 2] [--workers 2] [--keep] [--save]

Deployments (every daemon `--config` from a topology made here, sockets in a temporary folder or
on 127.0.0.1):
- files-ipc: one stage over ipc: prime_httpd, prime_proxyd and two prime_workerd processes of
  the `files` work (`--workers` threads each) serving a 100-byte file (the C++ comparison of
  issue 15: its prime_httpd + prime_proxyd + 2 workers serving a small file);
- prime-ipc: the two-stage prime demo (examples/one-host-ipc.toml's shape): prime_httpd, a
  prime_proxyd and a prime_workerd per stage, over ipc, on the cheap request (possible_prime=7);
- prime-tcp: the same over tcp on 127.0.0.1.

Each round starts every deployment afresh (binders first, each once it has bound), checks an
answer, warms up, then runs wrk (-t2, keep-alive) for --duration at each --connections count,
reading meanwhile each process's CPU time and context switches from /proc, split into libzmq's
own threads (its I/O thread and reaper) and the daemon's own threads. Deployments take turns
within a round. Reports medians over the rounds: req/s, p50, p99, and per process µs of CPU and
context switches per request. Writes bench/out/deploy.md (--save: also bench/results/).

Fails (exit 1) on a wrong answer, a non-2xx answer or socket error under load, or a dead daemon.
Traffic goes to 127.0.0.1 only; every run is bounded; every process started here is stopped at
the end (and dies with this script where setpriv can arrange it).
"""

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib

from http_load import CHEAP, fmt_us, free_port, wrk
from multihost import DIE_WITH_US

BIN = None
START_LIMIT = 30.0
FILE_BODY = b"0123456789" * 10
DEPLOYMENTS = ("files-ipc", "prime-ipc", "prime-tcp")


class Failed(Exception):
    """The run cannot be trusted: a wrong answer, an error under load, a dead daemon."""


def topology(kind, folder, port, workers):
    """The topology file of deployment `kind`, its request path and the answer's body; the
    daemons to start: (name, binary, arguments after --config, log line of its bind or None)."""
    if kind.endswith("-tcp"):
        ep = lambda name: f"tcp://127.0.0.1:{free_port()}"
    else:
        ep = lambda name: f"ipc://{folder}/{name}"
    head = f"""drain_seconds = 0
[[server]]
listen = "127.0.0.1:{port}"
loopback = "{ep('loopback')}"
interrupt = "{ep('interrupt')}"
"""
    if kind == "files-ipc":
        root = os.path.join(folder, "www")
        os.makedirs(root)
        with open(os.path.join(root, "small.txt"), "wb") as f:
            f.write(FILE_BODY)
        text = head + f"""[[stage]]
name = "files"
work = "files"
upstream = "{ep('files_in')}"
downstream = "{ep('files_out')}"
workers = {workers}
"""
        daemons = [
            ("proxy", "prime_proxyd", ["--stage", "files"], "proxy bound"),
            ("front", "prime_httpd", [], "front listening"),
            ("workers-1", "prime_workerd", ["--stage", "files", "--root", root], None),
            ("workers-2", "prime_workerd", ["--stage", "files", "--root", root], None),
        ]
        return text, "/small.txt", FILE_BODY.decode(), daemons
    text = head + f"""[[stage]]
name = "parse"
work = "prime_parse"
upstream = "{ep('parse_in')}"
downstream = "{ep('parse_out')}"
workers = {workers}
[[stage]]
name = "test"
work = "prime_test"
upstream = "{ep('test_in')}"
downstream = "{ep('test_out')}"
workers = {workers}
"""
    daemons = [
        ("parse proxy", "prime_proxyd", ["--stage", "parse"], "proxy bound"),
        ("test proxy", "prime_proxyd", ["--stage", "test"], "proxy bound"),
        ("front", "prime_httpd", [], "front listening"),
        ("parse workers", "prime_workerd", ["--stage", "parse"], None),
        ("test workers", "prime_workerd", ["--stage", "test"], None),
    ]
    return text, CHEAP, '{"possible_prime":7,"is_prime":true}', daemons


def cost(pid):
    """(CPU seconds, context switches) of `pid` so far, split: {"zmq": …, "own": …}. The
    daemons name every thread they start (signals, zmq-monitor, the proxy, the workers); the
    unnamed ones other than the main thread (which carry the process's name) are libzmq's
    background threads (its I/O thread and its reaper)."""
    out = {"zmq": [0.0, 0], "own": [0.0, 0]}
    with open(f"/proc/{pid}/comm") as f:
        process = f.read().strip()
    for tid, name, cpu, switches in benchlib.tasks(pid):
        libzmq = name.startswith("ZMQbg") or (name == process and tid != pid)
        acc = out["zmq" if libzmq else "own"]
        acc[0] += cpu
        acc[1] += switches
    return out


class Deployment:
    def __init__(self, kind, logdir, tag, workers):
        self.kind = kind
        self.folder = tempfile.mkdtemp(prefix=f"deploy-{kind}-", dir=logdir)
        self.port = free_port()
        text, self.path, self.body, daemons = topology(kind, self.folder, self.port, workers)
        self.config = os.path.join(self.folder, "topology.toml")
        with open(self.config, "w") as f:
            f.write(text)
        self.procs, self.logs = {}, []
        self.started = time.monotonic()
        try:
            for name, binary, args, bound in daemons:
                self.start(logdir, tag, name, binary, args, bound)
            self.first_answer()
        except BaseException:
            self.stop()
            raise

    def start(self, logdir, tag, name, binary, args, bound):
        log = os.path.join(logdir, f"{tag}-{self.kind}-{name.replace(' ', '-')}.log")
        self.logs.append(log)
        with open(log, "w") as out:
            self.procs[name] = subprocess.Popen(
                DIE_WITH_US + [os.path.join(BIN, binary), "--config", self.config] + args,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        while bound:
            with open(log, errors="replace") as f:
                if bound in f.read():
                    break
            self.check_alive("while starting")
            if time.monotonic() > self.started + START_LIMIT:
                raise Failed(f"{self.kind} {name}: no '{bound}' within {START_LIMIT:.0f} s")
            time.sleep(0.001)

    def check_alive(self, when):
        dead = [f"{n} (exit {p.returncode})" for n, p in self.procs.items() if p.poll() is not None]
        if dead:
            raise Failed(f"{self.kind}: died {when}: {', '.join(dead)}")

    def first_answer(self):
        until = self.started + START_LIMIT
        while time.monotonic() < until:
            self.check_alive("while starting")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", self.path)
                r = c.getresponse()
                body = r.read().decode(errors="replace")
                c.close()
                if r.status == 200:
                    if body.strip() != self.body.strip():
                        raise Failed(f"{self.kind}: answered {body!r}, want {self.body!r}")
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.005)
        raise Failed(f"{self.kind}: no 200 within {START_LIMIT:.0f} s")

    def costs(self):
        return {name: cost(p.pid) for name, p in self.procs.items()}

    def stop(self):
        benchlib.stop_all(self.procs.values())


def measure(dep, conns, a):
    """One wrk run at `conns` connections, with each process's cost per request meanwhile."""
    r = wrk(dep.port, dep.path, conns, a.warmup)
    before = dep.costs()
    r = wrk(dep.port, dep.path, conns, a.duration)
    after = dep.costs()
    dep.check_alive("under load")
    if r["non2xx"] or r["errors"]:
        raise Failed(f"{dep.kind} at {conns}: {r['non2xx']} non-2xx, socket errors: {r['errors']}")
    n = max(r["count"], 1)
    r["per"] = {name: {part: ((after[name][part][0] - before[name][part][0]) * 1e6 / n,
                              (after[name][part][1] - before[name][part][1]) / n)
                       for part in ("own", "zmq")}
                for name in after}
    return r


def report(kinds, conns_list, results, a):
    med = statistics.median
    lines = [f"# Multi-process deployments ({time.strftime('%Y-%m-%d')}, {a.rounds} rounds of "
             f"{a.duration} s, wrk -t2, {a.workers} worker threads per process)", "",
             "| deployment | connections | req/s | p50 | p99 |", "|---|---|---|---|---|"]
    for kind in kinds:
        for c in conns_list:
            runs = results[(kind, c)]
            lines.append(f"| {kind} | {c} | {med(r['rps'] for r in runs):,.0f} | "
                         f"{fmt_us(med(r['p50'] for r in runs))} | {fmt_us(med(r['p99'] for r in runs))} |")
    lines += ["", "Per process, per request (medians): µs of CPU and context switches, the "
              "daemon's own threads and libzmq's (its I/O thread and reaper).", "",
              "| deployment | connections | process | own µs | own switches | zmq µs | zmq switches |",
              "|---|---|---|---|---|---|---|"]
    for kind in kinds:
        for c in conns_list:
            runs = results[(kind, c)]
            for name in runs[0]["per"]:
                v = lambda part, i: med(r["per"][name][part][i] for r in runs)
                lines.append(f"| {kind} | {c} | {name} | {v('own', 0):.1f} | {v('own', 1):.2f} | "
                             f"{v('zmq', 0):.1f} | {v('zmq', 1):.2f} |")
    return "\n".join(lines) + "\n"


def main():
    global BIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    ap.add_argument("--connections", default="8,64")
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the daemons' logs")
    benchlib.add_save_flag(ap)
    a = ap.parse_args()
    kinds = a.deployments.split(",")
    unknown = [k for k in kinds if k not in DEPLOYMENTS]
    if unknown:
        ap.error(f"unknown deployments {unknown}: choose from {','.join(DEPLOYMENTS)}")
    conns_list = [int(c) for c in a.connections.split(",")]
    BIN = benchlib.build("--bins")
    logdir = tempfile.mkdtemp(prefix="prime-deploy-")
    results = {(k, c): [] for k in kinds for c in conns_list}
    ok = False
    try:
        for i in range(a.rounds):
            for kind in kinds:
                dep = Deployment(kind, logdir, f"r{i}", a.workers)
                try:
                    for c in conns_list:
                        r = measure(dep, c, a)
                        results[(kind, c)].append(r)
                        print(f"round {i + 1} {kind} c={c}: {r['rps']:,.0f} req/s, "
                              f"p99 {fmt_us(r['p99'])}", file=sys.stderr)
                finally:
                    dep.stop()
        ok = True
    except Failed as e:
        print(f"FAILED: {e} (logs in {logdir})", file=sys.stderr)
        sys.exit(1)
    finally:
        if ok and not a.keep:
            shutil.rmtree(logdir, ignore_errors=True)
        elif ok:
            print(f"logs in {logdir}", file=sys.stderr)
    benchlib.write("deploy.md", report(kinds, conns_list, results, a), a.save)


if __name__ == "__main__":
    main()
