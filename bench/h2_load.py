#!/usr/bin/env python3
"""HTTP/1.1, h2c and HTTP/2 over TLS side by side on prime_serverd's cheap request, and the TLS
handshake rate with a new connection per request.

Two prime_serverd (release, in-memory stages, --workers per stage) run at once, one in cleartext
and one with --tls-cert/--tls-key (a self-signed ECDSA P-256 certificate made by openssl for the
run); each case is run once per round, rounds interleaved, and the table has the medians:

- h1 cleartext and h1 over TLS: wrk -t2, 100 keep-alive connections;
- h2c (prior knowledge) and h2 over TLS (ALPN): h2load, one connection carrying 100 streams;
- new connections: wrk -t2 -c8 with `Connection: close`, so each request opens a connection
  (cleartext: TCP only; TLS: a full TLS 1.3 handshake each, as wrk resumes no session).

Also the server's CPU time per request (utime + stime from /proc around the run). Traffic goes to
127.0.0.1 only; every run is bounded in time. Writes bench/out/h2.md (--save: also
bench/results/h2.md).

    bench/h2.sh [--duration 10] [--rounds 3] [--workers 2] [--save]
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib

CHEAP = "/is_prime?possible_prime=7"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_us(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m:
        return float("nan")
    x = float(m.group(1))
    return {"us": x, "ms": x * 1e3, "s": x * 1e6}[m.group(2)]


class Server:
    """A prime_serverd on a free port, stopped (SIGTERM) on exit."""

    def __init__(self, binary, workers, tls=None):
        self.port = free_port()
        cmd = [binary, f"127.0.0.1:{self.port}", str(workers), "0"]
        if tls:
            cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.time() + 10
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"prime_serverd exited early with {self.proc.returncode}: {cmd}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.time() > until:
                    sys.exit(f"nothing listening on {self.port}")
                time.sleep(0.05)

    def cpu_s(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wrk(url, conns, duration, close=False):
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "count": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50": to_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99": to_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "bad": int(non2xx.group(1)) if non2xx else 0,
        # Connection: close makes wrk count the server's closes as read errors: only others count.
        "errors": errors.group(1).strip() if errors and not close else "",
    }


def h2load(url, conns, streams, duration):
    out = subprocess.run(
        ["h2load", f"-c{conns}", f"-m{streams}", "-D", str(duration), "--warm-up-time", "1", url],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return {
        "rps": float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1)),
        "count": int(done.group(3)),
        "mean": to_us(mean.group(1)) if mean else float("nan"),
        "bad": int(done.group(3)) - int(codes.group(1)) if codes else int(done.group(3)),
        "errors": "" if int(done.group(5)) + int(done.group(6)) == 0 else f"{done.group(5)} failed, {done.group(6)} errored",
        "proto": proto.group(1) if proto else "?",
    }


def fmt_us(x):
    return "–" if x != x else (f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    ap.add_argument("--workers", type=int, default=2, help="prime_serverd worker threads per stage")
    benchlib.add_save_flag(ap)
    a = ap.parse_args()
    for tool in ("wrk", "h2load", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (bench/h2.sh installs it)")
    serverd = os.path.join(benchlib.build("--bin", "prime_serverd"), "prime_serverd")
    tmp = tempfile.mkdtemp(prefix="ps-h2-bench-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    plain = Server(serverd, a.workers)
    tls = Server(serverd, a.workers, (cert, key))
    http_url = f"http://127.0.0.1:{plain.port}{CHEAP}"
    https_url = f"https://127.0.0.1:{tls.port}{CHEAP}"
    d = a.duration
    # (name, client as run, server, run)
    cases = [
        ("HTTP/1.1 cleartext", "wrk -t2 -c100", plain, lambda: wrk(http_url, 100, d)),
        ("HTTP/1.1 over TLS", "wrk -t2 -c100", tls, lambda: wrk(https_url, 100, d)),
        ("h2c (prior knowledge)", "h2load -c1 -m100", plain, lambda: h2load(http_url, 1, 100, d)),
        ("HTTP/2 over TLS (ALPN)", "h2load -c1 -m100", tls, lambda: h2load(https_url, 1, 100, d)),
        ("new connection per request, cleartext", "wrk -t2 -c8, Connection: close", plain,
         lambda: wrk(http_url, 8, d, close=True)),
        ("new connection per request, TLS handshake each", "wrk -t2 -c8, Connection: close", tls,
         lambda: wrk(https_url, 8, d, close=True)),
    ]
    results = {c[0]: [] for c in cases}
    try:
        # Warm both servers (and the workers' caches) up.
        wrk(http_url, 8, 1)
        wrk(https_url, 8, 1)
        for r in range(a.rounds):
            for name, client, server, run in cases:
                before = server.cpu_s()
                res = run()
                res["cpu_us"] = (server.cpu_s() - before) * 1e6 / max(res["count"], 1)
                if res["bad"] or res["errors"]:
                    sys.exit(f"{name}: {res['bad']} non-2xx answers, errors: {res['errors']}")
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['rps']:.0f} req/s", file=sys.stderr)
    finally:
        plain.stop()
        tls.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda name, k: statistics.median(x[k] for x in results[name])
    lines = [
        f"`bench/h2.sh --duration {a.duration} --rounds {a.rounds} --workers {a.workers}`: prime_serverd "
        f"(in-memory stages, {a.workers} workers/stage), cheap request `{CHEAP}`, "
        f"{a.rounds} interleaved rounds of {a.duration} s, medians; the load generators share the 2 cores.",
        "",
        "| case | client | req/s | p50 | p99 | mean | server CPU/request | runs (req/s) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, client, _, _ in cases:
        runs = results[name]
        has = lambda k: k in runs[0]
        lines.append(
            f"| {name} | `{client}` | {med(name, 'rps'):,.0f} | "
            f"{fmt_us(med(name, 'p50')) if has('p50') else '–'} | {fmt_us(med(name, 'p99')) if has('p99') else '–'} | "
            f"{fmt_us(med(name, 'mean')) if has('mean') else '–'} | {med(name, 'cpu_us'):.1f} µs | "
            f"{' / '.join(format(x['rps'], ',.0f') for x in runs)} |"
        )
    protos = {name: results[name][0].get("proto") for name, *_ in cases if "proto" in results[name][0]}
    lines += ["", "h2load's negotiated protocol: " + ", ".join(f"{n}: {p}" for n, p in protos.items()), ""]
    text = "\n".join(lines)
    benchlib.write("h2.md", text, a.save)
    print(text)


if __name__ == "__main__":
    main()
