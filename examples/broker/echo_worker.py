#!/usr/bin/env python3
"""A Python echo server for the broker demo: answers each job with its payload.

    python3 examples/broker/echo_worker.py [examples/broker/broker.toml]
"""

import logging
import signal
import sys
import threading
import tomllib

from prime_server import Reply, Worker


def main():
    cfg = sys.argv[1] if len(sys.argv) > 1 else "examples/broker/broker.toml"
    with open(cfg, "rb") as f:
        t = tomllib.load(f)
    logging.basicConfig(level=logging.INFO)
    stage = t["stage"][0]
    hb = t.get("heartbeat", {})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    w = Worker(stage["downstream"], [s["loopback"] for s in t["server"]], [s["interrupt"] for s in t["server"]],
               lambda job: Reply(b"".join(job.frames)),
               heartbeat_interval=hb.get("interval_ms", 2500) / 1000, liveness=hb.get("liveness", 3))
    print("python echo worker ready", flush=True)
    w.run(stop)


if __name__ == "__main__":
    main()
