#!/usr/bin/env python3
"""A Python worker for the prime demo's second stage (testing primality), interchangeable with
`prime_workerd --work prime_test`.

    python3 examples/python/prime_worker.py --config examples/one-host-ipc.toml --stage test

With a `[security]` section in the topology it uses the stage's keys from the topology's key
folder, as `prime_workerd --config` does.

Stage 1 (Rust or not) forwards the number as one frame of 8 little-endian bytes; the job's header
says how the request came in (docs/PROTOCOL.md §2, byte 7: `job.protocol`), and this stage answers
in kind: an HTTP response frame for HTTP, the bare JSON for netstring and zmq clients
(docs/PROTOCOL.md §3, "The prime demo").
"""

import argparse
import json
import logging
import os
import signal
import threading

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: pip installs tomli with the package
    import tomli as tomllib

from prime_server import Failed, Reply, Worker, WorkerKeys
from prime_server.http import response
from prime_server.wire import ClientProtocol


def is_prime(n, check):
    """Trial division by 2, 3, 4, ... up to the square root, as the reference does."""
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
        if d & 0xFFFF == 0:
            check()
    return True


def work(job):
    if len(job.frames) != 1 or len(job.frames[0]) != 8:
        # Stage 1's fault, not the client's.
        raise Failed(500, "stage 2 expects one frame: the number as 8 little-endian bytes")
    n = int.from_bytes(job.frames[0], "little")
    body = json.dumps({"possible_prime": n, "is_prime": is_prime(n, job.check)}, separators=(",", ":")).encode()
    if job.protocol == ClientProtocol.HTTP:
        return Reply(response(200, body, [("content-type", "application/json"), ("x-worker", "python")]))
    return Reply(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the topology file")
    ap.add_argument("--stage", required=True, help="the stage to serve")
    ap.add_argument("--workers", type=int, default=1, help="worker threads")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open(a.config, "rb") as f:
        t = tomllib.load(f)
    stages = t["stage"]
    i = next(k for k, s in enumerate(stages) if s["name"] == a.stage)
    hb = t.get("heartbeat", {})
    # With [security], the stage's worker key pair and its peers' public keys, as prime_workerd.
    keys = WorkerKeys.from_topology(t, a.stage, os.path.dirname(os.path.abspath(a.config)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = []
    for _ in range(a.workers):
        w = Worker(stages[i]["downstream"],
                   [s["loopback"] for s in t["server"]],
                   [s["interrupt"] for s in t["server"]],
                   work,
                   downstream=stages[i + 1]["upstream"] if i + 1 < len(stages) else None,
                   stage=i + 1,
                   heartbeat_interval=hb.get("interval_ms", 2500) / 1000,
                   liveness=hb.get("liveness", 3),
                   keys=keys)
        th = threading.Thread(target=w.run, args=(stop,))
        th.start()
        threads.append(th)
    print(f"python prime worker serving stage {a.stage} with {a.workers} threads", flush=True)
    while not stop.wait(0.2):
        pass
    for th in threads:
        th.join()


if __name__ == "__main__":
    main()
