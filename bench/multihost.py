#!/usr/bin/env python3
"""Multi-host for real: the prime demo across three network namespaces ("hosts") joined by veth
links to a bridge, tcp:// between the hosts' own addresses (10.77.0.0/24, which exists only
inside the namespaces made here: no traffic leaves the machine). Requests run throughout, from
inside the front host; each scenario faults one host, ends the fault, and measures how requests
were answered meanwhile and how soon service came back.

    bench/multihost.sh [--scenarios steady,partition:s2,kill:s1] [--fault-seconds 6]
                       [--deadline 5] [--rate 50] [--clients 2] [--steady-seconds 3]

Scenarios: `steady`; `partition:HOST` sets HOST's port on the switch down for --fault-seconds,
then up (HOST: front, s1, s2); `kill:HOST` SIGKILLs every process of HOST (s1 or s2), waits
--fault-seconds, starts them again. Load: an open-loop probe (--rate new requests a second, one
connection each) and --clients closed-loop keep-alive clients. Every answer is checked (a 200
must name its own number and say correctly whether it is prime); anything but a right answer,
503 or 504, and anything slower than the deadline plus 2 s, is a failure. Prints a table, writes
it to bench/out/multihost.md (with --save also to bench/results/multihost.md), exits non-zero on a failure or if service did not come back
within 30 s. Needs root and iproute2's `ip`; removes every namespace and process it made, also
when interrupted.
"""

import argparse
import collections
import ctypes
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The release binaries, where cargo put them (benchlib.build, in main).
BIN = None
IP = {"front": "10.77.0.1", "s1": "10.77.0.2", "s2": "10.77.0.3"}
DAEMONS = {
    "front": [("prime_httpd", None)],
    "s1": [("prime_proxyd", "parse"), ("prime_workerd", "parse")],
    "s2": [("prime_proxyd", "test"), ("prime_workerd", "test")],
}
PREFIX = "pmhb-"
RECOVERY_LIMIT = 30.0
SLACK = 2.0

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
# Daemons die with this script even if it is SIGKILLed (the kill survives both execs).
DIE_WITH_US = ["setpriv", "--pdeathsig", "KILL"] if subprocess.run(
    ["setpriv", "--help"], capture_output=True, text=True).stdout.count("--pdeathsig") else []


def ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def enter(ns):
    """Moves the calling thread into network namespace `ns`."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def is_prime(n):
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


class Net:
    """Three host namespaces and a switch namespace with the bridge; `remove` deletes them (and
    with them every veth and the bridge)."""

    def __init__(self):
        self.prefix = f"{PREFIX}{os.getpid()}-{time.time_ns() & 0xffffff:x}"
        self.made = []
        self.remove_stale()
        sw = self.ns("sw")
        self.add(sw)
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        for host, addr in IP.items():
            ns = self.ns(host)
            self.add(ns)
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p-{host}", "netns", sw)
            ip("-n", sw, "link", "set", f"p-{host}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def remove_stale():
        """Namespaces of earlier runs whose process is gone (killed before it could clean up)."""
        for line in ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            pid = name[len(PREFIX):].split("-")[0] if name.startswith(PREFIX) else ""
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                ip("netns", "del", name, check=False)

    def ns(self, suffix):
        return f"{self.prefix}-{suffix}"

    def add(self, ns):
        ip("netns", "add", ns)
        self.made.append(ns)

    def link(self, host, up):
        ip("-n", self.ns("sw"), "link", "set", f"p-{host}", "up" if up else "down")

    def remove(self):
        for ns in reversed(self.made):
            r = ip("netns", "del", ns, check=False)
            if r.returncode != 0:
                print(f"could not remove {ns}: {r.stderr.strip()}", file=sys.stderr)
        self.made = []


class Deployment:
    def __init__(self, net, deadline, d):
        self.net, self.dir = net, d
        self.cfg = os.path.join(d, "three-hosts.toml")
        f, s1, s2 = IP["front"], IP["s1"], IP["s2"]
        with open(self.cfg, "w") as out:
            out.write(f"""drain_seconds = 1
[heartbeat]
interval_ms = 200
liveness = 3
[[server]]
name = "front"
listen = "{f}:8002"
loopback = "tcp://{f}:5555"
interrupt = "tcp://{f}:5556"
timeout_seconds = {deadline}
[[stage]]
name = "parse"
work = "prime_parse"
upstream = "tcp://{s1}:5557"
downstream = "tcp://{s1}:5558"
workers = 2
[[stage]]
name = "test"
work = "prime_test"
upstream = "tcp://{s2}:5559"
downstream = "tcp://{s2}:5560"
workers = 2
""")
        self.procs = {h: [] for h in DAEMONS}
        for host in ("s2", "s1", "front"):
            self.start(host)

    def start(self, host):
        for daemon, stage in DAEMONS[host]:
            args = DIE_WITH_US + ["ip", "netns", "exec", self.net.ns(host), f"{BIN}/{daemon}", "--config", self.cfg]
            if stage:
                args += ["--stage", stage]
            log = open(os.path.join(self.dir, f"{host}-{daemon}.log"), "a")
            # setpriv and `ip netns exec` exec the daemon: the pid is the daemon's.
            p = subprocess.Popen(args, stdout=subprocess.PIPE if daemon == "prime_httpd" else subprocess.DEVNULL,
                                 stderr=log, text=True)
            p.daemon_name = daemon
            if daemon == "prime_httpd":
                line = p.stdout.readline()
                if "listening" not in line:
                    raise RuntimeError(f"the front did not start: {line!r}")
                threading.Thread(target=p.stdout.read, daemon=True).start()
            self.procs[host].append(p)

    def kill(self, host):
        for p in self.procs[host]:
            p.send_signal(signal.SIGKILL)
        for p in self.procs[host]:
            p.wait()
        self.procs[host] = []

    def crashed(self):
        return [(h, p.daemon_name) for h, ps in self.procs.items() for p in ps if p.poll() is not None]

    def stop(self):
        for ps in self.procs.values():
            for p in ps:
                if p.poll() is None:
                    p.kill()
                p.wait()


class Load:
    """The probe (open loop) and the closed-loop clients, all inside the front host, recording
    (kind, sent, took, outcome) for every request."""

    def __init__(self, ns, rate, clients, deadline):
        self.ns, self.rate, self.deadline = ns, rate, deadline
        self.records, self.lock = [], threading.Lock()
        self.stopping = threading.Event()
        self.next = iter(range(1_000_000_000, 1 << 62))
        # Daemon threads: an interrupted run must not wait for them to exit.
        self.threads = [threading.Thread(target=self.probe, daemon=True)]
        self.threads += [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def number(self):
        with self.lock:
            return next(self.next)

    def ask(self, conn, n):
        """Returns (outcome, conn): outcome 'right', '503 REASON' or '504 REASON', or 'wrong: …'."""
        try:
            if conn is None:
                conn = http.client.HTTPConnection(IP["front"], 8002, timeout=self.deadline + 30)
            conn.request("GET", f"/is_prime?possible_prime={n}")
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException) as e:
            return f"wrong: no answer ({e!r})", None
        if r.status == 200:
            try:
                j = json.loads(body)
                ok = j == {"possible_prime": n, "is_prime": is_prime(n)}
            except ValueError:
                ok = False
            return ("right" if ok else f"wrong: 200 {body[:80]!r}"), conn
        if r.status in (503, 504):
            return f"{r.status} {body.decode(errors='replace').strip()}", conn
        return f"wrong: {r.status} {body[:80]!r}", conn

    def record(self, kind, sent, outcome):
        with self.lock:
            self.records.append((kind, sent, time.time() - sent, outcome))

    def probe(self):
        enter(self.ns)
        running = []
        every = 1.0 / self.rate
        t = time.time()
        while not self.stopping.is_set():
            def one():
                sent = time.time()
                outcome, c = self.ask(None, self.number())
                if c:
                    c.close()
                self.record("probe", sent, outcome)
            # A new thread starts in its creator's network namespace: the front host's.
            th = threading.Thread(target=one, daemon=True)
            th.start()
            running.append(th)
            t += every
            time.sleep(max(0.0, t - time.time()))
        for th in running:
            th.join()

    def client(self):
        enter(self.ns)
        conn = None
        while not self.stopping.is_set():
            sent = time.time()
            outcome, conn = self.ask(conn, self.number())
            self.record("client", sent, outcome)
            if outcome != "right":
                time.sleep(0.05)

    def first_right_probe_after(self, t):
        with self.lock:
            return any(k == "probe" and s >= t and o == "right" for k, s, _, o in self.records)

    def finish(self):
        self.stopping.set()
        for t in self.threads:
            t.join()
        return sorted(self.records, key=lambda r: r[1])


def run_scenario(name, dep, net, a):
    kind, _, host = name.partition(":")
    load = Load(net.ns("front"), a.rate, a.clients, a.deadline)
    time.sleep(a.steady_seconds)
    steady_end = time.time()
    start = end = None
    recovered = True
    if kind in ("partition", "kill"):
        start = time.time()
        if kind == "partition":
            net.link(host, False)
        else:
            dep.kill(host)
        time.sleep(a.fault_seconds)
        if kind == "partition":
            net.link(host, True)
        else:
            dep.start(host)
        end = time.time()
        limit = end + RECOVERY_LIMIT
        while not load.first_right_probe_after(end) and time.time() < limit:
            time.sleep(0.01)
        recovered = load.first_right_probe_after(end)
        time.sleep(2.0)  # keep asking a while after the service came back
    records = load.finish()
    return summarize(name, records, a, steady_end, start, end, recovered, dep.crashed())


def summarize(name, records, a, steady_end, start, end, recovered, crashed):
    t0 = records[0][1] if records else 0
    steady = [r for r in records if r[0] == "client" and r[1] < steady_end]
    throughput = len(steady) / max(1e-9, steady_end - t0)
    wrong = [r for r in records if r[3].startswith("wrong")]
    late = [r for r in records if r[2] > a.deadline + SLACK]
    errors = collections.Counter(r[3] for r in records if r[3] != "right" and not r[3].startswith("wrong"))
    fails = [r for r in records if r[3] != "right"]
    row = {
        "scenario": name,
        "requests": len(records),
        "right": sum(1 for r in records if r[3] == "right"),
        "errors (status reason: count)": "; ".join(f"{e}: {c}" for e, c in sorted(errors.items())) or "none",
        "slowest error (s)": f"{max((r[2] for r in fails), default=0):.2f}",
        "slowest right (s)": f"{max((r[2] for r in records if r[3] == 'right'), default=0):.2f}",
        "wrong / late": f"{len(wrong)} / {len(late)}",
        "steady req/s": f"{throughput:.0f}",
        "first right sent after the end (s)": "–",
        "all right when sent after (s)": "–",
    }
    if end is not None:
        probes = [r for r in records if r[0] == "probe"]
        first = next((r[1] - end for r in probes if r[1] >= end and r[3] == "right"), None)
        last_fail = max((r[1] - end for r in probes if r[3] != "right"), default=None)
        row["first right sent after the end (s)"] = f"{first:+.2f}" if first is not None else "never"
        row["all right when sent after (s)"] = f"{last_fail:+.2f}" if last_fail is not None else "–"
    problems = [f"{len(wrong)} answered wrong"] if wrong else []
    problems += [f"{len(late)} past the deadline"] if late else []
    problems += ["service did not come back"] if not recovered else []
    problems += [f"crashed: {crashed}"] if crashed else []
    for r in (wrong + late)[:10]:
        print(f"  {name}: {r}", file=sys.stderr)
    return row, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="steady,partition:s2,kill:s1")
    ap.add_argument("--fault-seconds", type=float, default=6)
    ap.add_argument("--deadline", type=int, default=5, help="the front's timeout_seconds")
    ap.add_argument("--rate", type=float, default=50, help="probe requests a second")
    ap.add_argument("--clients", type=int, default=2, help="closed-loop keep-alive clients")
    ap.add_argument("--steady-seconds", type=float, default=3)
    benchlib.add_save_flag(ap)
    a = ap.parse_args()
    scenarios = a.scenarios.split(",")
    for s in scenarios:
        kind, _, host = s.partition(":")
        ok = (kind == "steady" and not host) or (kind == "partition" and host in IP) or (
            kind == "kill" and host in ("s1", "s2"))
        if not ok:
            sys.exit(f"unknown scenario {s!r}: steady, partition:front|s1|s2, kill:s1|s2")
    if os.geteuid() != 0 or subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        sys.exit("multihost: needs root and iproute2's `ip` (network namespaces); not run")
    global BIN
    BIN = benchlib.build("--bins")

    # SIGTERM/SIGINT unwind through the `finally` below, which removes what was made.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    d = tempfile.mkdtemp(prefix="prime-multihost-")
    net = dep = None
    rows, problems = [], []
    try:
        net = Net()
        dep = Deployment(net, a.deadline, d)
        for s in scenarios:
            row, p = run_scenario(s, dep, net, a)
            rows.append(row)
            problems += [f"{s}: {x}" for x in p]
            print(f"{s}: {row}", file=sys.stderr)
    finally:
        if dep:
            dep.stop()
        if net:
            net.remove()

    cols = list(rows[0].keys()) if rows else []
    out = [
        f"Three hosts as network namespaces (veths to a bridge, tcp:// on 10.77.0.0/24), the prime demo "
        f"(front / parse / test), heartbeats 200 ms x 3, deadline {a.deadline} s, faults of {a.fault_seconds:g} s; "
        f"load from inside the front host: a probe of {a.rate:g} new connections a second and {a.clients} "
        f"keep-alive clients. {os.cpu_count()} cores, {time.strftime('%Y-%m-%d', time.gmtime())}. "
        f"Times are seconds after the fault's end (heal or restart); 'all right when sent after' is when "
        f"the last probe that was not answered right was sent.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    text = "\n".join(out) + "\n"
    print(text)
    benchlib.write("multihost.md", text, a.save)
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        print(f"daemon logs kept in {d}", file=sys.stderr)
        sys.exit(1)
    subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
