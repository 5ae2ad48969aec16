#!/usr/bin/env python3
"""What CURVE costs (issue 11): the two-stage prime demo as a multi-process deployment over tcp on
127.0.0.1 (prime_proxyd x2, prime_workerd x2, prime_httpd, all `--config` from a topology made
here), once plain and once with `[security]` (the same ports, keys fresh from prime_keygen), under
wrk in interleaved rounds (plain, curve, plain, curve, ...).

    bench/curve.sh [--rounds 5] [--duration 10] [--warmup 2] [--connections 64] [--workers 2]
                   [--settle 30] [--max-others 0.1] [--keep]

Each round starts a fresh deployment per mode (daemons that bind first, each once it has bound, so
that no zmq connect waits for libzmq's 100 ms retry) and measures the time from starting its
daemons to the first 200 (the connect cost: with CURVE every zmq connection makes its handshake
then), checks three answers with curl, warms up on the cheap request, then runs wrk (-t2,
keep-alive) for --duration on the cheap request (`possible_prime=7`, the one that matters) and on
the seed's (`possible_prime=32416190071`), reading meanwhile the CPU time each daemon spent per
cheap request (from /proc). Reports medians per mode, the ratio curve / plain and the median of
the per-round ratios; writes the tables to bench/out/curve.md (with --save also to
bench/results/curve.md, which BENCHMARKS.md quotes).

This machine is shared: before each run the script waits (at most --settle seconds) for a second
in which the machine kept less than 10% of its cores busy, and it reports, per run, the share of
the cores that anything else took during the cheap run; a round in which that share passed
--max-others in either mode is done again (at most --rounds times) and left out of the medians.

Fails (exit 1) if any wrk run saw a non-2xx answer or a socket error, an answer was wrong, a
daemon died, or the logs say a mode was not what it claims (a plain tcp bind in the curve mode,
none in the plain one, or a refused peer). Traffic goes to 127.0.0.1 only; every run is bounded
in time; every process started here is stopped at the end, also on Ctrl-C or an error (and dies
with this script even on SIGKILL, where setpriv can arrange it). Daemon logs stay in a temporary
directory on failure or with --keep.
"""

import argparse
import http.client
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib

from http_load import CHEAP, SEED, fmt_us, free_port, threads, wrk
from multihost import DIE_WITH_US

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The release binaries, where cargo put them (benchlib.build, in main).
BIN = None
MODES = ("plain", "curve")
ROLES = ("front", "parse-proxy", "parse-workers", "test-proxy", "test-workers")
# Started in this order, each waiting until its log says it has bound (a bind logged with the
# line given), so that no zmq connect comes before its bind: libzmq would retry it only after
# its 100 ms reconnect interval, and that wait, not CURVE, would be measured.
# (name in the tables, daemon, its arguments after --config, the log line of its binds)
DAEMONS = (
    ("parse proxy", "prime_proxyd", ["--stage", "parse"], "proxy bound"),
    ("test proxy", "prime_proxyd", ["--stage", "test"], "proxy bound"),
    ("front", "prime_httpd", [], "front listening"),
    ("parse workers", "prime_workerd", ["--stage", "parse"], None),
    ("test workers", "prime_workerd", ["--stage", "test"], None),
)
ANSWERS = ((7, True), (32416190071, True), (1000, False))
START_LIMIT = 30.0


class Failed(Exception):
    """The run cannot be trusted: a wrong answer, a dead daemon, a mode that is not what it says."""


def topology(path, ports, workers, secure):
    """The two-stage prime demo over tcp on 127.0.0.1; `secure` adds `[security]` and the keys of
    every role (in `keys/` beside the file). Both modes use the same ports."""
    key = lambda line: line if secure else ""
    ep = lambda name: f"tcp://127.0.0.1:{ports[name]}"
    text = f"""drain_seconds = 0
{key('[security]')}
{key('keys = "keys"')}
[[server]]
listen = "127.0.0.1:{ports['http']}"
loopback = "{ep('loopback')}"
interrupt = "{ep('interrupt')}"
{key('key = "front"')}
[[stage]]
name = "parse"
work = "prime_parse"
upstream = "{ep('parse_in')}"
downstream = "{ep('parse_out')}"
workers = {workers}
{key('proxy_key = "parse-proxy"')}
{key('worker_key = "parse-workers"')}
[[stage]]
name = "test"
work = "prime_test"
upstream = "{ep('test_in')}"
downstream = "{ep('test_out')}"
workers = {workers}
{key('proxy_key = "test-proxy"')}
{key('worker_key = "test-workers"')}
"""
    with open(path, "w") as f:
        f.write(text)


class Deployment:
    """The five daemons of one mode, each binder started once the ones before it have bound;
    `stop` ends them (SIGTERM, then SIGKILL after 5 s)."""

    def __init__(self, config, logdir, tag):
        self.procs = {}
        self.logs = []
        self.started = time.monotonic()
        try:
            for name, daemon, args, bound in DAEMONS:
                self.start(config, logdir, tag, name, daemon, args, bound)
        except BaseException:
            self.stop()
            raise

    def start(self, config, logdir, tag, name, daemon, args, bound):
        log = os.path.join(logdir, f"{tag}-{name.replace(' ', '-')}.log")
        self.logs.append(log)
        with open(log, "w") as out:
            # setpriv execs the daemon: the pid is the daemon's.
            self.procs[name] = subprocess.Popen(
                DIE_WITH_US + [os.path.join(BIN, daemon), "--config", config] + args,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        while bound:
            with open(log, errors="replace") as f:
                if bound in f.read():
                    break
            if self.dead():
                raise Failed(f"died while starting: {', '.join(self.dead())}")
            if time.monotonic() > self.started + START_LIMIT:
                raise Failed(f"{name}: no '{bound}' within {START_LIMIT:.0f} s")
            time.sleep(0.001)

    def dead(self):
        return [f"{name} (exit {p.returncode})" for name, p in self.procs.items() if p.poll() is not None]

    def first_answer(self, port):
        """Seconds from starting the daemons to the first 200 on the cheap request, and its body."""
        until = self.started + START_LIMIT
        while time.monotonic() < until:
            if self.dead():
                raise Failed(f"died while starting: {', '.join(self.dead())}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", CHEAP)
                r = c.getresponse()
                body = r.read()
                c.close()
                if r.status == 200:
                    return time.monotonic() - self.started, body.decode()
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.002)
        raise Failed(f"no 200 within {START_LIMIT:.0f} s of starting the daemons")

    def cpu(self):
        """CPU seconds each daemon has used so far (all its threads)."""
        return {name: sum(v[0] for v in threads(p.pid).values()) for name, p in self.procs.items()}

    def stop(self):
        benchlib.stop_all(self.procs.values())

    def log_text(self):
        text = ""
        for log in self.logs:
            with open(log, errors="replace") as f:
                text += f.read()
        return text


def machine_busy():
    """CPU seconds the machine has been busy, all cores (from /proc/stat; steal counts as busy:
    the cores were not ours)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu():
    """CPU seconds of this script and its waited-for children (wrk, once it has exited)."""
    return sum(r.ru_utime + r.ru_stime for r in
               (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def settle(within, quiet=0.10):
    """Waits, at most `within` seconds, for a second in which the machine (nothing of ours is
    running) kept less than `quiet` of its cores busy."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        busy = machine_busy()
        time.sleep(1)
        if (machine_busy() - busy) / os.cpu_count() < quiet:
            break


def check_answers(port):
    """One curl per number, against the answer it must get."""
    for n, prime in ANSWERS:
        want = f'{{"possible_prime":{n},"is_prime":{"true" if prime else "false"}}}'
        r = subprocess.run(
            ["curl", "-s", "--max-time", "10", "-w", "\n%{http_code}",
             f"http://127.0.0.1:{port}/is_prime?possible_prime={n}"],
            capture_output=True, text=True)
        body, _, status = r.stdout.rpartition("\n")
        if r.returncode != 0 or status != "200" or body.strip() != want:
            raise Failed(f"curl {n}: exit {r.returncode}, {status} {body!r}, want 200 {want}")


def check_wrk(r, what, problems):
    if r["non2xx"] or r["errors"]:
        problems.append(f"{what}: {r['non2xx']} non-2xx, socket errors: {r['errors'] or 'none'}")


def one_round(mode, config, port, a, logdir, i, problems):
    if a.settle:
        settle(a.settle)
    dep = Deployment(config, logdir, f"{i}-{mode}")
    try:
        connect, body = dep.first_answer(port)
        if body.strip() != '{"possible_prime":7,"is_prime":true}':
            raise Failed(f"{mode}: the first answer was {body!r}")
        check_answers(port)
        check_wrk(wrk(port, CHEAP, a.connections, a.warmup), f"round {i} {mode} warm-up", problems)
        before, busy, own, t = dep.cpu(), machine_busy(), own_cpu(), time.monotonic()
        cheap = wrk(port, CHEAP, a.connections, a.duration)
        after, busy, own, t = dep.cpu(), machine_busy() - busy, own_cpu() - own, time.monotonic() - t
        check_wrk(cheap, f"round {i} {mode} cheap", problems)
        n = max(cheap["count"], 1)
        cheap["cpu"] = {name: (after[name] - before[name]) * 1e6 / n for name in after}
        # What the rest of the machine took meanwhile (other processes, a hypervisor's steal):
        # on a shared machine, the noise.
        others = busy - own - sum(after.values()) + sum(before.values())
        cheap["others"] = max(0.0, others) / (t * os.cpu_count())
        cheap["cpu"]["wrk"] = own * 1e6 / n
        seed = wrk(port, SEED, a.connections, a.duration)
        check_wrk(seed, f"round {i} {mode} seed", problems)
        if dep.dead():
            raise Failed(f"round {i} {mode}: died under load: {', '.join(dep.dead())}")
    finally:
        dep.stop()
    logs = dep.log_text()
    # Each mode must be what it says: plain binds tcp without keys (and says so loudly), curve
    # never does; nobody may be refused in either.
    if mode == "curve" and "WITHOUT CURVE" in logs:
        raise Failed(f"round {i} curve: a socket was bound without CURVE")
    if mode == "plain" and "WITHOUT CURVE" not in logs:
        raise Failed(f"round {i} plain: no plain tcp bind reported; is it plain?")
    if "refused peers" in logs:
        raise Failed(f"round {i} {mode}: peers were refused")
    return {"connect": connect, "cheap": cheap, "seed": seed}


def med(runs, key):
    return statistics.median(key(r) for r in runs)


def report(a, rounds, problems):
    """The tables, from the quiet rounds (from every round if fewer than 3 were quiet, and it says
    so)."""
    quiet = [r for r in rounds if r["quiet"]]
    kept = quiet if len(quiet) >= min(3, a.rounds) else rounds
    runs = {mode: [r[mode] for r in kept] for mode in MODES}
    cmd = (f"bench/curve.sh --rounds {a.rounds} --duration {a.duration} --warmup {a.warmup} "
           f"--connections {a.connections} --workers {a.workers} --settle {a.settle:g} "
           f"--max-others {a.max_others:g}")
    lines = [
        f"`{cmd}`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, wrk -t2 -c{a.connections} "
        f"(keep-alive) and every daemon on the same cores, tcp on 127.0.0.1. The prime demo as five "
        f"processes (prime_httpd; prime_proxyd and prime_workerd with {a.workers} workers for each of "
        f"the stages parse and test), plain and with `[security]` (CURVE on every zmq socket), in "
        f"interleaved rounds (plain, curve) of {a.duration} s per request after a {a.warmup} s warm-up, "
        f"each run on fresh daemons started after waiting (at most {a.settle:g} s) for a second in which "
        f"the machine kept less than 10% of its cores busy. A round in which other processes took more "
        f"than {a.max_others:.0%} of the cores during a cheap run was done again (at most {a.rounds} "
        f"more rounds). Medians of {len(kept)} rounds"
        + (f" ({len(rounds) - len(kept)} noisy rounds left out)." if kept is quiet else
           f": **only {len(quiet)} of the {len(rounds)} rounds were quiet, so all are used**."),
        "",
        "| mode | cheap req/s | cheap p50 | cheap p99 | seed req/s | seed p50 | seed p99 | first 200 after start |",
        "|---|---|---|---|---|---|---|---|",
    ]
    m = {mode: {
        "cheap": med(runs[mode], lambda r: r["cheap"]["rps"]),
        "cheap p50": med(runs[mode], lambda r: r["cheap"]["p50"]),
        "cheap p99": med(runs[mode], lambda r: r["cheap"]["p99"]),
        "seed": med(runs[mode], lambda r: r["seed"]["rps"]),
        "seed p50": med(runs[mode], lambda r: r["seed"]["p50"]),
        "seed p99": med(runs[mode], lambda r: r["seed"]["p99"]),
        "connect": med(runs[mode], lambda r: r["connect"] * 1e6),
    } for mode in MODES}
    for mode in MODES:
        x = m[mode]
        lines.append(f"| {mode} | {x['cheap']:,.0f} | {fmt_us(x['cheap p50'])} | {fmt_us(x['cheap p99'])} | "
                     f"{x['seed']:,.0f} | {fmt_us(x['seed p50'])} | {fmt_us(x['seed p99'])} | "
                     f"{fmt_us(x['connect'])} |")
    p, c = m["plain"], m["curve"]
    ratio = lambda k: f"**{c[k] / p[k]:.3f}**" if k == "cheap" else f"{c[k] / p[k]:.3f}"
    lines.append("| **curve / plain** | " + " | ".join(
        ratio(k) for k in ("cheap", "cheap p50", "cheap p99", "seed", "seed p50", "seed p99", "connect")) + " |")
    later = c["connect"] - p["connect"]
    # Each curve run against the plain run just before it: neighbours share the machine's mood.
    paired = statistics.median(r["curve"]["cheap"]["rps"] / r["plain"]["cheap"]["rps"] for r in kept)
    lines += [
        "",
        f"Cheap requests: curve / plain **{c['cheap'] / p['cheap']:.3f}** (medians), "
        f"**{paired:.3f}** (median of the rounds' own ratios); CURVE costs "
        f"**{1 - c['cheap'] / p['cheap']:.1%}** of their throughput by the first (target: at most 15%). "
        f"With CURVE the first 200 came {fmt_us(abs(later))} {'later' if later >= 0 else 'earlier'}.",
        "",
        "Every round ('others': the share of all cores taken during the cheap run by anything but the "
        "daemons, wrk and this script, hypervisor steal included; req/s):",
        "",
        "| round | cheap plain | cheap curve | ratio | seed plain | seed curve | first 200 plain / curve "
        "| others plain / curve | used |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        pr, cr = r["plain"], r["curve"]
        lines.append(
            f"| {r['round']} | {pr['cheap']['rps']:,.0f} | {cr['cheap']['rps']:,.0f} | "
            f"{cr['cheap']['rps'] / pr['cheap']['rps']:.3f} | {pr['seed']['rps']:,.0f} | {cr['seed']['rps']:,.0f} | "
            f"{fmt_us(pr['connect'] * 1e6)} / {fmt_us(cr['connect'] * 1e6)} | "
            f"{pr['cheap']['others']:.0%} / {cr['cheap']['others']:.0%} | {'yes' if r in kept else 'no: noisy'} |")
    names = [name for name, _, _, _ in DAEMONS] + ["wrk"]
    lines += [
        "",
        "CPU time per cheap request by process (µs, from /proc and getrusage around each cheap run; "
        "medians; 'wrk' includes this script's own few µs):",
        "",
        "| mode | " + " | ".join(names) + " | all |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    cpu = {mode: {name: med(runs[mode], lambda r: r["cheap"]["cpu"][name]) for name in names} for mode in MODES}
    total = {mode: med(runs[mode], lambda r: sum(r["cheap"]["cpu"].values())) for mode in MODES}
    for mode in MODES:
        lines.append(f"| {mode} | " + " | ".join(f"{cpu[mode][n]:.1f}" for n in names) + f" | {total[mode]:.1f} |")
    lines.append("| curve − plain | " + " | ".join(f"{cpu['curve'][n] - cpu['plain'][n]:+.1f}" for n in names)
                 + f" | {total['curve'] - total['plain']:+.1f} |")
    lines += [
        "",
        f"When the cores are saturated, req/s is about the CPU there is over the CPU a request takes: by "
        f"the CPU per request above, plain / curve = {total['plain']:.1f} / {total['curve']:.1f} = "
        f"**{total['plain'] / total['curve']:.3f}** (less sensitive to other processes than req/s, though "
        f"they make every request dearer too).",
    ]
    lines += ["", "Checks: three answers right by curl per deployment; wrk saw "
              + ("no non-2xx answer and no socket error in any run." if not problems else
                 "PROBLEMS: " + "; ".join(problems))]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of cheap load before measuring")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="workers per stage (one process each)")
    ap.add_argument("--settle", type=float, default=30,
                    help="before each run, wait up to this many seconds for a quiet second (others "
                         "using < 10%% of the cores); 0: don't wait")
    ap.add_argument("--max-others", type=float, default=0.10,
                    help="a round in which other processes took more than this share of the cores "
                         "during a cheap run is done again (at most --rounds times)")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' logs and the topologies")
    benchlib.add_save_flag(ap)
    a = ap.parse_args()
    for tool in ("wrk", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} missing: run bench/curve.sh, which installs it")
    global BIN
    BIN = benchlib.build("--bins")

    # SIGTERM/SIGHUP unwind like Ctrl-C through the `finally`s, which stop the daemons.
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda signum, _: sys.exit(128 + signum))
    d = tempfile.mkdtemp(prefix="prime-curve-")
    keep = True  # until the run has gone through: the logs say what went wrong
    try:
        subprocess.run([os.path.join(BIN, "prime_keygen"), "--dir", os.path.join(d, "keys"), *ROLES],
                       check=True, stdout=subprocess.DEVNULL)
        ports = {name: free_port() for name in
                 ("http", "loopback", "interrupt", "parse_in", "parse_out", "test_in", "test_out")}
        configs = {mode: os.path.join(d, f"{mode}.toml") for mode in MODES}
        for mode in MODES:
            topology(configs[mode], ports, a.workers, mode == "curve")
        rounds = []
        problems = []
        while sum(r["quiet"] for r in rounds) < a.rounds and len(rounds) < 2 * a.rounds:
            i = len(rounds) + 1
            r = {"round": i}
            for mode in MODES:
                run = r[mode] = one_round(mode, configs[mode], ports["http"], a, d, i, problems)
                print(f"round {i} {mode}: cheap {run['cheap']['rps']:,.0f} req/s (p99 {fmt_us(run['cheap']['p99'])}), "
                      f"seed {run['seed']['rps']:,.0f} req/s, first 200 after {fmt_us(run['connect'] * 1e6)}, "
                      f"others took {run['cheap']['others']:.0%} of the cores", file=sys.stderr)
            r["quiet"] = max(r[mode]["cheap"]["others"] for mode in MODES) <= a.max_others
            if not r["quiet"]:
                print(f"round {i}: noisy, not counted", file=sys.stderr)
            rounds.append(r)
        text = report(a, rounds, problems)
        print(text)
        benchlib.write("curve.md", text, a.save)
        if problems:
            sys.exit(1)
        keep = a.keep
    except Failed as e:
        sys.exit(f"FAILED: {e}")
    finally:
        if keep:
            print(f"daemon logs and topologies kept in {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
