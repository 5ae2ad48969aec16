#!/usr/bin/env python3
"""Soak: drive load at a multi-process echo service (prime_httpd, prime_proxyd, worker processes
over ipc) for a set time while killing and restarting, at random, worker processes (SIGKILL), the
front (prime_httpd: SIGKILL, sometimes SIGTERM) and the proxy (prime_proxyd: SIGKILL). Loopback
only; bounded in time; every process it started is killed at the end, also on Ctrl-C or error.

    bench/soak.sh [--seconds 60] [--kill workers,fronts,proxies] [--kill-every 2.0]
                  [--front-term 0.25] [--workers 3] [--clients 16] [--job-ms 20] [--deadline 5]
                  [--seed N] [--keep]

--kill names what may be killed (default: workers only); every --kill-every seconds one kind of
them is picked at random, and for workers one of the processes. A front is SIGTERMed (drained)
rather than SIGKILLed in a --front-term share of its kills, and restarted once it has exited.

Each request has a path of its own (`/cN-K?sleep=MS`) and the echo work answers with the request
line, so every answer is checked against its own request. The report counts:

- answers by status, and for each status other than 200 which faults its request overlapped (a
  proxy killed and restarting, a front stopping, a worker killed) and the answers' reasons;
- wrong: a 200 whose body is not the echo of its own request, or any other answer carrying an
  echo;
- front-kill connection errors: the connection was reset or closed without an answer, and the
  front it was made to had been signalled (killed or stopped) by then. Not a silent loss: the
  client saw its connection end because the process serving it went away;
- lost: no answer at all on a connection whose front was not signalled, or no answer within the
  read timeout (the deadline plus 10 s), whatever the front did.

It exits 1 if anything was lost or answered wrong, 2 if the harness itself failed (a daemon that
would not start, or a bug of its own), 130 if interrupted. The logs of every process (the front's
with its access log), the script's own events and every request not answered 200 stay in a
temporary directory when the run fails or with --keep.
"""

import argparse
import collections
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The release binaries, where cargo put them (benchlib.build, in main).
BIN = None
KINDS = ("workers", "fronts", "proxies")
HEARTBEAT_MS, LIVENESS = 200, 3


class HarnessError(Exception):
    """The soak itself could not go on (a daemon would not start): not a finding about the
    service."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamp(t):
    """Wall-clock time as the daemons' logs show it (UTC), to the microsecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class Daemons:
    """Every process the soak starts, each incarnation with a log file of its own. Started in
    sessions of their own, so a Ctrl-C in the terminal reaches only the script, which kills them."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.all = []
        self.count = collections.Counter()

    def start(self, role, args):
        n = self.count[role]
        self.count[role] += 1
        base = os.path.join(self.logdir, f"{role}-{n}")
        with open(base + ".log", "wb") as err, open(base + ".out", "wb") as out:
            p = subprocess.Popen([os.path.join(BIN, args[0])] + args[1:], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=err, start_new_session=True)
        p.role, p.n, p.base = role, n, base
        self.all.append(p)
        return p

    def kill_all(self, sig):
        for p in self.all:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    def stop_all(self, within):
        """SIGTERM to every live process, SIGKILL to those still there after `within` seconds;
        the processes that needed it."""
        self.kill_all(signal.SIGTERM)
        until = time.time() + within
        stragglers = []
        for p in self.all:
            try:
                p.wait(timeout=max(0.0, until - time.time()))
            except subprocess.TimeoutExpired:
                stragglers.append(f"{p.role}-{p.n}")
                p.kill()
                p.wait()
        return stragglers


def wait_listening(p, within):
    """Waits for a front to print its listening line (its stdout goes to a file)."""
    until = time.time() + within
    while time.time() < until:
        with open(p.base + ".out", "rb") as f:
            if b"listening on" in f.read():
                return
        if p.poll() is not None:
            raise HarnessError(f"{p.role}-{p.n} exited with {p.returncode} before listening; see {p.base}.log")
        time.sleep(0.01)
    raise HarnessError(f"{p.role}-{p.n} did not listen within {within} s; see {p.base}.log")


class Faults:
    """What the chaos loop did, when: the windows a request's lifetime is compared with."""

    def __init__(self):
        self.lock = threading.Lock()
        # Raised (to odd) *before* the front is signalled and again (to even) once its successor
        # listens. A signalled front may accept connections until it has exited, so clients
        # connect only while it is even, and keep a connection only if it was the same before
        # and after connecting: then the front they reached had not been signalled yet, and if
        # it has changed by the time the connection fails, that front was.
        self.front_gen = 0
        self.front_signal = {}  # incarnation -> "SIGKILL" / "SIGTERM"
        self.proxy = []  # [killed, restarted]
        self.front = []  # [signalled, new front listening]
        self.worker = []  # killed
        self.kills = collections.Counter()
        self.front_down = collections.defaultdict(list)  # signal -> seconds to the new front listening
        self.anomalies = []

    def overlapping(self, t0, t1):
        """The kinds of fault whose window overlaps [t0, t1]. A proxy's window runs on for a
        second after its restart (workers notice it and sign up again)."""
        out = []
        with self.lock:
            if any(a <= t1 and b + 1.0 >= t0 for a, b in self.proxy):
                out.append("proxy kill")
            if any(a <= t1 and b >= t0 for a, b in self.front):
                out.append("front stop")
            if any(t0 - 2.0 <= a <= t1 for a in self.worker):
                out.append("worker kill")
        return ", ".join(out) or "no fault"


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.status = collections.Counter()
        self.reasons = collections.Counter()  # (status, reason, overlapping faults)
        self.attempts = collections.Counter()  # x-attempt of the 200s
        self.wrong = []
        self.lost = []
        self.front_errors = collections.Counter()  # the signal the front got
        self.refused = 0  # connection attempts refused (no front listening): nothing sent
        self.ok_times = []  # when each 200 arrived
        self.slowest_ok = 0.0
        self.log = None


def client(n, a, port, stop, faults, tally):
    timeout = a.deadline + 10
    conn, gen = None, None
    k = 0
    while not stop.is_set():
        if conn is None or conn.sock is None:
            if conn is not None:
                conn.close()
            conn = None
            g = faults.front_gen
            if g % 2:
                time.sleep(0.005)  # a front is being restarted
                continue
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                c.connect()
            except OSError:
                with tally.lock:
                    tally.refused += 1
                time.sleep(0.02)
                continue
            if faults.front_gen != g:
                c.close()  # it may be the front being signalled: do not count on it
                continue
            conn, gen = c, g
        path = f"/c{n}-{k}?sleep={a.job_ms}"
        k += 1
        with tally.lock:
            tally.sent += 1
        t0 = time.time()
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
        except TimeoutError as e:
            t1 = time.time()
            with tally.lock:
                tally.lost.append((path, t0, t1, f"no answer within {timeout} s ({e!r})"))
            conn.close()
            conn = None
            continue
        except (OSError, http.client.HTTPException) as e:
            t1 = time.time()
            conn.close()
            conn = None
            signalled = faults.front_gen != gen
            with tally.lock:
                if signalled:
                    tally.front_errors[faults.front_signal.get(gen, "?")] += 1
                else:
                    tally.lost.append((path, t0, t1, f"connection failed, front not signalled: {e!r}"))
                tally.log.write(f"{stamp(t0)} {stamp(t1)} {path} connection error "
                                f"({'front signalled' if signalled else 'LOST'}): {e!r}\n")
            continue
        t1 = time.time()
        echo = f"GET {path} HTTP/1.1\r\n".encode()
        with tally.lock:
            tally.status[r.status] += 1
            if r.status == 200:
                tally.ok_times.append(t1)
                tally.slowest_ok = max(tally.slowest_ok, t1 - t0)
                tally.attempts[r.getheader("x-attempt", "?")] += 1
                if not body.startswith(echo):
                    tally.wrong.append((path, r.status, body[:120]))
            else:
                if body.startswith(b"GET "):
                    tally.wrong.append((path, r.status, body[:120]))
                reason = body.decode("utf-8", "replace").strip()[:80]
                tally.reasons[(r.status, reason, faults.overlapping(t0, t1))] += 1
                tally.log.write(f"{stamp(t0)} {stamp(t1)} {path} {r.status} {reason!r}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="how long the load runs")
    ap.add_argument("--kill", default="workers",
                    help="what to kill, comma-separated: workers, fronts, proxies (one at random each time)")
    ap.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
    ap.add_argument("--front-term", type=float, default=0.25,
                    help="share of front kills that are a SIGTERM (a drain) rather than a SIGKILL")
    ap.add_argument("--workers", type=int, default=3, help="worker processes")
    ap.add_argument("--clients", type=int, default=16, help="keep-alive clients, one request at a time each")
    ap.add_argument("--job-ms", type=int, default=20, help="work per request")
    ap.add_argument("--deadline", type=int, default=5, help="the front's timeout_seconds")
    ap.add_argument("--seed", type=int, default=None, help="for the choice of kills (default: random)")
    ap.add_argument("--keep", action="store_true", help="keep the logs even when nothing went wrong")
    a = ap.parse_args()
    kinds = [k.strip() for k in a.kill.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        ap.error(f"--kill: a comma-separated list of {', '.join(KINDS)}")
    if a.workers < 1 or a.clients < 1 or a.kill_every <= 0 or a.deadline < 1:
        ap.error("--workers, --clients and --deadline must be at least 1, --kill-every above 0")
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    global BIN
    BIN = benchlib.build("--bins")

    d = tempfile.mkdtemp(prefix="prime-soak-")
    port = free_port()
    cfg = os.path.join(d, "soak.toml")
    with open(cfg, "w") as f:
        f.write(f"""drain_seconds = 5
[heartbeat]
interval_ms = {HEARTBEAT_MS}
liveness = {LIVENESS}
[[server]]
listen = "127.0.0.1:{port}"
loopback = "ipc://{d}/lb"
interrupt = "ipc://{d}/int"
timeout_seconds = {a.deadline}
access_log = true
[[stage]]
name = "echo"
work = "echo"
upstream = "ipc://{d}/in"
downstream = "ipc://{d}/out"
workers = 1
""")
    daemons = Daemons(d)
    faults, tally = Faults(), Tally()
    tally.log = open(os.path.join(d, "requests.log"), "w", buffering=1)
    events = open(os.path.join(d, "events.log"), "w", buffering=1)
    stop = threading.Event()
    stopped_by = []

    def on_signal(signum, _frame):
        stopped_by.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    proxy_args = ["prime_proxyd", "--config", cfg, "--stage", "echo"]
    worker_args = ["prime_workerd", "--config", cfg, "--stage", "echo"]
    front_args = ["prime_httpd", "--config", cfg]

    def event(what):
        events.write(f"{stamp(time.time())} {what}\n")

    rc = 2
    ok_run = False
    try:
        proxy = daemons.start("proxy", proxy_args)
        workers = [daemons.start("worker", worker_args) for _ in range(a.workers)]
        front = daemons.start("front", front_args)
        wait_listening(front, 10)
        until = time.time() + 10
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/warm-up")
                if c.getresponse().status == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.time() > until:
                raise HarnessError("the service did not answer /warm-up within 10 s")
            time.sleep(0.05)
        event(f"started: proxy-0 pid {proxy.pid}, front-0 pid {front.pid}, "
              + ", ".join(f"worker-{w.n} pid {w.pid}" for w in workers))

        start = time.time()
        stop_at = start + a.seconds
        threads = [threading.Thread(target=client, args=(n, a, port, stop, faults, tally), daemon=True)
                   for n in range(a.clients)]
        for t in threads:
            t.start()

        rnd = random.Random(seed)
        next_report = start + 30
        while True:
            pause = min(a.kill_every, stop_at - time.time())
            if pause > 0:
                time.sleep(pause)
            now = time.time()
            if next_report <= now < stop_at:
                next_report += 30
                with tally.lock:
                    print(f"soak: {now - start:.0f} s, sent {tally.sent}, 200: {tally.status[200]}, "
                          f"other answers {sum(tally.status.values()) - tally.status[200]}, "
                          f"lost {len(tally.lost)}, wrong {len(tally.wrong)}, "
                          f"kills {dict(faults.kills)}", file=sys.stderr, flush=True)
            if now >= stop_at:
                break
            kind = rnd.choice(kinds)
            if kind == "workers":
                i = rnd.randrange(len(workers))
                with faults.lock:
                    faults.worker.append(time.time())
                workers[i].send_signal(signal.SIGKILL)
                workers[i].wait()
                old = workers[i]
                workers[i] = daemons.start("worker", worker_args)
                faults.kills["worker SIGKILL"] += 1
                event(f"worker-{old.n} pid {old.pid} SIGKILLed; worker-{workers[i].n} pid {workers[i].pid} started")
            elif kind == "proxies":
                t_kill = time.time()
                proxy.send_signal(signal.SIGKILL)
                proxy.wait()
                time.sleep(rnd.uniform(0, 0.5))  # sometimes the front sends while no proxy runs
                old, proxy = proxy, daemons.start("proxy", proxy_args)
                with faults.lock:
                    faults.proxy.append([t_kill, time.time()])
                faults.kills["proxy SIGKILL"] += 1
                event(f"proxy-{old.n} pid {old.pid} SIGKILLed at {stamp(t_kill)}; "
                      f"proxy-{proxy.n} pid {proxy.pid} started")
            else:
                sig = signal.SIGTERM if rnd.random() < a.front_term else signal.SIGKILL
                window = [time.time(), float("inf")]
                with faults.lock:
                    faults.front.append(window)
                    faults.front_signal[faults.front_gen] = sig.name
                    faults.front_gen += 1
                front.send_signal(sig)
                bound = a.deadline + 10
                try:
                    front.wait(timeout=bound)
                except subprocess.TimeoutExpired:
                    faults.anomalies.append(f"front-{front.n} did not exit within {bound} s of {sig.name}; SIGKILLed")
                    front.kill()
                    front.wait()
                if sig == signal.SIGTERM and front.returncode != 0:
                    faults.anomalies.append(f"front-{front.n} exited {front.returncode} after SIGTERM")
                old, front = front, daemons.start("front", front_args)
                wait_listening(front, 10)
                window[1] = time.time()
                with faults.lock:
                    faults.front_gen += 1
                faults.front_down[sig.name].append(window[1] - window[0])
                faults.kills[f"front {sig.name}"] += 1
                event(f"front-{old.n} pid {old.pid} {sig.name} at {stamp(window[0])}, exited {old.returncode}; "
                      f"front-{front.n} pid {front.pid} listening after {window[1] - window[0]:.3f} s")

        stop.set()
        for t in threads:
            t.join(timeout=a.deadline + 15)
        hung = sum(t.is_alive() for t in threads)
        if hung:
            faults.anomalies.append(f"{hung} clients still waiting at the end (their requests counted as sent, not lost)")
        elapsed = time.time() - start
        stragglers = daemons.stop_all(10)
        if stragglers:
            faults.anomalies.append("did not exit within 10 s of the final SIGTERM: " + ", ".join(stragglers))
        rc = report(a, kinds, seed, elapsed, faults, tally, d)
        ok_run = rc == 0
    except HarnessError as e:
        print(f"soak: {e}", file=sys.stderr)
    except Exception:  # a bug of the harness: still stop every process
        traceback.print_exc()
    except KeyboardInterrupt:
        print(f"soak: interrupted ({', '.join(stopped_by) or 'SIGINT'}); stopping every process", file=sys.stderr)
        rc = 130
    finally:
        stop.set()
        daemons.kill_all(signal.SIGKILL)
        for p in daemons.all:
            p.wait()
        events.close()
        if ok_run and not a.keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"soak: logs in {d}", file=sys.stderr)
    sys.exit(rc)


def report(a, kinds, seed, elapsed, faults, tally, d):
    with tally.lock:
        lines = []
        say = lines.append
        answered = sum(tally.status.values())
        say(f"soak: load for {a.seconds:.0f} s (the last answers {elapsed - a.seconds:.1f} s later), killing {','.join(kinds)} every {a.kill_every} s (seed {seed}); "
            f"{a.clients} clients, {a.workers} worker processes, {a.job_ms} ms jobs, "
            f"deadline {a.deadline} s, heartbeats {HEARTBEAT_MS} ms x {LIVENESS}")
        say("kills: " + (", ".join(f"{k} {v}" for k, v in sorted(faults.kills.items())) or "none"))
        for sig, fd in sorted(faults.front_down.items()):
            fd = sorted(fd)
            say(f"front restarts after a {sig}: the new front listened {fd[0]:.3f}-{fd[-1]:.3f} s after "
                f"the signal (median {fd[len(fd) // 2]:.3f} s)"
                + (" (a SIGTERMed front exits once nothing is in flight; the new one starts then)"
                   if sig == "SIGTERM" else ""))
        say(f"sent {tally.sent}, answered {answered}: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(tally.status.items())))
        others = sorted(tally.reasons.items(), key=lambda kv: (kv[0][0], -kv[1]))
        for (status, reason, during), n in others:
            say(f"  {status} x {n}, during {during}: {reason}")
        if tally.status[504]:
            during = sum(n for (status, _, f), n in tally.reasons.items() if status == 504 and "proxy kill" in f)
            say(f"504s of requests in flight while a proxy was killed or restarting (jobs it held wait for "
                f"their deadline): {during} of {tally.status[504]}")
        if tally.attempts:
            say("200s by x-attempt (workers the proxy handed the job to): "
                + ", ".join(f"{k}: {v}" for k, v in sorted(tally.attempts.items())))
        gaps = [b - a_ for a_, b in zip(sorted(tally.ok_times), sorted(tally.ok_times)[1:])]
        if gaps:
            say(f"slowest 200: {tally.slowest_ok:.2f} s; longest time without a 200: {max(gaps):.2f} s")
        fe = sum(tally.front_errors.values())
        say(f"front-kill connection errors: {fe}"
            + (" (" + ", ".join(f"{v} from a {k}" for k, v in sorted(tally.front_errors.items())) + ")" if fe else "")
            + (f"; connection attempts refused: {tally.refused}" if tally.refused else ""))
        unaccounted = tally.sent - answered - fe - len(tally.lost)
        if unaccounted:
            faults.anomalies.append(f"{unaccounted} requests neither answered, nor failed, nor lost")
        say(f"lost {len(tally.lost)}")
        for path, t0, t1, why in tally.lost[:20]:
            say(f"  {path} sent {stamp(t0)}, gave up {stamp(t1)}: {why}")
        say(f"wrong {len(tally.wrong)}")
        for path, status, body in tally.wrong[:20]:
            say(f"  {path}: {status} {body!r}")
        for x in faults.anomalies:
            say(f"note: {x}")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(d, "report.txt"), "w") as f:
        f.write(text + "\n")
    return 1 if tally.lost or tally.wrong else 0


if __name__ == "__main__":
    main()
