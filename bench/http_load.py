#!/usr/bin/env python3
"""End-to-end HTTP load on loopback: prime_serverd against a bare hyper "hello", side by side.

Runs wrk (keep-alive; 8/64/256 connections; bounded duration) and ab (-k and without) on the
seed's request, a cheap one and an invalid one, and the hello reference; with `--baseline BIN`,
also another prime_serverd build (e.g. the one before a change) against this one on cheap
requests, in interleaved rounds; prints a markdown table and writes it to bench/out/http.md (with
--save also to bench/results/http.md, which BENCHMARKS.md quotes).
Traffic goes to 127.0.0.1 only and every run is bounded in time.

    bench/http.sh [--duration 10] [--workers 2] [--rounds 3] [--quick]
                  [--baseline PATH [--only-baseline]]
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The release binaries, where cargo put them (benchlib.build, in main).
SERVERD = HELLO = None

CHEAP = "/is_prime?possible_prime=7"
SEED = "/is_prime?possible_prime=32416190071"
INVALID = "/is_prime?possible_prime=abc"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=10):
    until = time.time() + timeout
    while time.time() < until:
        if proc.poll() is not None:
            sys.exit(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


class Server:
    def __init__(self, args):
        self.args = args

    def __enter__(self):
        self.port = free_port()
        cmd = [a.replace("PORT", str(self.port)) for a in self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def to_us(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m:
        return float("nan")
    x = float(m.group(1))
    return {"us": x, "ms": x * 1e3, "s": x * 1e6}[m.group(2)]


def wrk(port, path, conns, duration):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = to_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    mx = to_us(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps, "count": count, "p50": p50, "p99": p99, "max": mx,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1).strip() if errors else "",
    }


def threads(pid):
    """The threads of `pid` by role (front = the main thread, proxies, workers, other):
    role -> [CPU seconds, context switches], summed over the role's threads."""
    out = {}
    for tid, name, cpu, switches in benchlib.tasks(pid):
        role = ("front" if tid == pid else
                "workers" if re.match(r"stage\d+-w", name) else
                "proxies" if name.endswith("-proxy") else "other")
        acc = out.setdefault(role, [0.0, 0])
        acc[0] += cpu
        acc[1] += switches
    return out


def wrk_costed(proc, port, path, conns, duration):
    """wrk, plus what each role of the server's threads spent per request meanwhile (µs of CPU,
    context switches)."""
    before = threads(proc.pid)
    r = wrk(port, path, conns, duration)
    after = threads(proc.pid)
    n = max(r["count"], 1)
    r["cost"] = {role: ((after[role][0] - before.get(role, [0, 0])[0]) * 1e6 / n,
                        (after[role][1] - before.get(role, [0, 0])[1]) / n)
                 for role in after}
    return r


def ab(port, path, keepalive, n=20000, c=8):
    cmd = ["ab", "-q", "-n", str(n), "-c", str(c)] + (["-k"] if keepalive else [])
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    p99 = re.search(r"\s99%\s+(\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "failed": int(failed.group(1)) if failed else -1,
        "p99_ms": int(p99.group(1)) if p99 else -1,
    }


def compute_rate():
    """Single-thread trial divisions of the seed's number per second (same binary, same run)."""
    n = 1000
    out = subprocess.run(
        [SERVERD, "--compute-only", "32416190071,32416190071", "1", "--repeat", str(n)],
        capture_output=True, text=True, check=True,
    ).stdout
    secs = float(re.search(r"([\d.]+) s wall time", out).group(1))
    return n / secs


def fmt_us(x):
    return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs"


def compare_with_baseline(a, workers):
    """This build against `a.baseline` on cheap requests, over both transports, at 8/64/256
    connections: rounds interleaved (baseline, then this build) so noise hits both alike;
    medians and their ratio."""
    builds = (("baseline", a.baseline), ("this build", SERVERD))
    cases = [(t, int(c)) for t, c in (case.split(":") for case in a.cases.split(","))]
    rps = {(b, t, c): [] for b, _ in builds for t, c in cases}
    p99 = {(b, t, c): [] for b, _ in builds for t, c in cases}
    for _ in range(a.rounds):
        for t, c in cases:
            for b, binary in builds:
                cmd = [binary, "127.0.0.1:PORT", str(workers), "0", "--timeout", "60", "--transport", t]
                with Server(cmd) as s:
                    r = wrk(s.port, CHEAP, c, a.duration)
                rps[(b, t, c)].append(r["rps"])
                p99[(b, t, c)].append(r["p99"])
    lines = [
        "",
        f"This build against `{a.baseline}` (cheap request, {workers}/stage, {a.rounds} interleaved "
        f"rounds of {a.duration} s, medians):",
        "",
        "| transport | connections | baseline req/s | this build req/s | ratio | baseline p99 | this build p99 | runs (baseline / this) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, c in cases:
        base, new = statistics.median(rps[("baseline", t, c)]), statistics.median(rps[("this build", t, c)])
        runs = " / ".join(" ".join(f"{x:,.0f}" for x in rps[(b, t, c)]) for b, _ in builds)
        lines.append(
            f"| {t} | {c} | {base:,.0f} | {new:,.0f} | {new / base:.3f} | "
            f"{fmt_us(statistics.median(p99[('baseline', t, c)]))} | "
            f"{fmt_us(statistics.median(p99[('this build', t, c)]))} | {runs} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--workers", default="2,4",
                    help="workers per stage, comma-separated (2 is the C++ figures' set-up; 4 = 2x cores is the default)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the baseline comparison")
    ap.add_argument("--quick", action="store_true", help="2 s runs, 1 comparison round")
    ap.add_argument("--baseline", help="another prime_serverd binary to compare with this build")
    ap.add_argument("--only-baseline", action="store_true", help="run only the baseline comparison")
    ap.add_argument("--cases", default="memory:8,memory:64,memory:256,inproc:8,inproc:64,inproc:256",
                    help="the baseline comparison's cases, TRANSPORT:CONNECTIONS, comma-separated")
    benchlib.add_save_flag(ap)
    a = ap.parse_args()
    if a.quick:
        a.duration, a.rounds = 2, 1
    for tool in ("wrk", "ab"):
        if not shutil.which(tool):
            sys.exit(f"{tool} missing: run bench/http.sh, which installs it")
    global SERVERD, HELLO
    release = benchlib.build("--bins", "--examples")
    SERVERD = os.path.join(release, "prime_serverd")
    HELLO = os.path.join(release, "examples", "hello")
    d = a.duration
    worker_counts = [int(x) for x in a.workers.split(",")]
    if a.only_baseline:
        if not a.baseline:
            sys.exit("--only-baseline needs --baseline")
        lines = [f"`bench/http.sh --only-baseline --baseline {a.baseline} --workers {a.workers} "
                 f"--duration {d} --rounds {a.rounds} --cases {a.cases}`, {time.strftime('%Y-%m-%d')}, "
                 f"{os.cpu_count()} cores, wrk -t2 and the server on the same cores, loopback."]
        lines += compare_with_baseline(a, worker_counts[-1])
        print("\n".join(lines))
        return
    rows = []
    lines = [
        f"`bench/http.sh --duration {d} --workers {a.workers} --rounds {a.rounds}`, {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, wrk -t2 and the server on the same cores, loopback.",
        "",
        "| server | request | connections | req/s | p50 | p99 | max | non-2xx | socket errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    def serverd(w, transport="memory"):
        return [SERVERD, "127.0.0.1:PORT", str(w), "0", "--timeout", "60", "--transport", transport]

    # The default (stages on in-memory queues) at each worker count, and the same service over
    # zmq inproc with proxies (the multi-process code path) at the largest.
    configs = [(f"memory {w}/stage", w, "memory") for w in worker_counts]
    configs.append((f"inproc {worker_counts[-1]}/stage", worker_counts[-1], "inproc"))

    results = {}
    abk = {}
    abn = {}
    # The single-thread compute rate, sampled before every seed run and at the end, so that
    # the seed ratio compares medians taken over the same stretch of this noisy machine.
    rates = []
    for label, w, transport in configs:
        with Server(serverd(w, transport)) as s:
            for name, path in (("cheap", CHEAP), ("seed", SEED), ("invalid", INVALID)):
                for c in (8, 64, 256):
                    if name == "seed":
                        rates.append(compute_rate())
                    r = wrk_costed(s.proc, s.port, path, c, d)
                    results[(label, name, c)] = r
                    lines.append(
                        f"| prime_serverd {label} | {name} `{path}` | {c} | {r['rps']:,.0f} | {fmt_us(r['p50'])} | "
                        f"{fmt_us(r['p99'])} | {fmt_us(r['max'])} | {r['non2xx']} | {r['errors']} |")
            abk[label] = ab(s.port, CHEAP, True)
            abn[label] = ab(s.port, CHEAP, False)
    with Server([HELLO, "127.0.0.1:PORT"]) as s:
        for c in (8, 64, 256):
            r = wrk_costed(s.proc, s.port, "/", c, d)
            results[(0, "hello", c)] = r
            lines.append(
                f"| bare hyper hello | `/` | {c} | {r['rps']:,.0f} | {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | "
                f"{fmt_us(r['max'])} | {r['non2xx']} | {r['errors']} |")
        hello_abk = ab(s.port, "/", True)
    rates.append(compute_rate())
    rate = statistics.median(rates)
    lines += [
        "",
        "| ab -n 20000 -c 8, cheap request | req/s | p99 | failed |",
        "|---|---|---|---|",
    ]
    for label, _, _ in configs:
        lines += [
            f"| prime_serverd {label}, keep-alive (`ab -k`) | {abk[label]['rps']:,.0f} | {abk[label]['p99_ms']} ms | {abk[label]['failed']} |",
            f"| prime_serverd {label}, a connection per request | {abn[label]['rps']:,.0f} | {abn[label]['p99_ms']} ms | {abn[label]['failed']} |",
        ]
    lines += [
        f"| bare hyper hello, keep-alive | {hello_abk['rps']:,.0f} | {hello_abk['p99_ms']} ms | {hello_abk['failed']} |",
        "",
        "Ratios from this run:",
        "",
    ]
    for label, _, _ in configs:
        for c in (8, 64, 256):
            lines.append(f"- {label}: cheap two-stage request / bare hello at {c} connections: "
                         f"**{results[(label, 'cheap', c)]['rps'] / results[(0, 'hello', c)]['rps']:.2f}**")
        for c in (8, 64, 256):
            lines.append(f"- {label}: one-stage request (invalid, answered by stage 1) / bare hello at {c} "
                         f"connections: {results[(label, 'invalid', c)]['rps'] / results[(0, 'hello', c)]['rps']:.2f}")
        seed = statistics.median(results[(label, "seed", c)]["rps"] for c in (8, 64, 256))
        lines.append(f"- {label}: seed request: single-thread compute rate {rate:,.0f}/s in this run (median of "
                     f"{len(rates)} samples: {' '.join(f'{x:,.0f}' for x in rates)}), so 2 cores can do at most "
                     f"{2 * rate:,.0f}/s; served {seed:,.0f} req/s (median over 8/64/256 connections) = "
                     f"**{seed / (2 * rate):.1%}** of that")
        lines.append(f"- {label}: slowest cheap request at 256 connections: {fmt_us(results[(label, 'cheap', 256)]['max'])}")

    lines += [
        "",
        "Where the time goes at 64 connections: CPU time and context switches per request, by the",
        "server's threads (from /proc while wrk ran; wrk itself used the rest of the 2 cores):",
        "",
        "| server | request | front thread | proxies | workers | total CPU/request | switches/request |",
        "|---|---|---|---|---|---|---|",
    ]
    costed = [(f"prime_serverd {label}", name, results[(label, name, 64)])
              for label, _, _ in configs for name in ("cheap", "invalid")]
    costed.append(("bare hyper hello", "hello", results[(0, "hello", 64)]))
    for server, name, r in costed:
        cost = r["cost"]
        cell = lambda role: (f"{cost[role][0]:.1f} µs, {cost[role][1]:.2f} sw" if role in cost else "-")
        lines.append(f"| {server} | {name} | {cell('front')} | {cell('proxies')} | {cell('workers')} | "
                     f"{sum(v[0] for v in cost.values()):.1f} µs | {sum(v[1] for v in cost.values()):.2f} |")

    if a.baseline:
        lines += compare_with_baseline(a, worker_counts[-1])
    text = "\n".join(lines) + "\n"
    print(text)
    benchlib.write("http.md", text, a.save)


if __name__ == "__main__":
    main()
