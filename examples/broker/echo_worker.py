#!/usr/bin/env python3
"""A Python echo server for the broker demo, interchangeable with `prime_workerd --work echo`:
answers a zmq (or netstring) request with its payload, and an HTTP request with 200 and the
request as the worker saw it (request line, headers, blank line, body) in the HTTP reply
encoding (docs/PROTOCOL.md §5), with `x-worker: python/PID`.

    python3 examples/broker/echo_worker.py [examples/broker/broker.toml]
"""

import logging
import os
import signal
import sys
import threading

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: pip installs tomli with the package
    import tomli as tomllib

from prime_server import Failed, Reply, WireError, Worker
from prime_server.http import Request, response
from prime_server.wire import ClientProtocol


def echo(job):
    # The job's header says how the request came in (docs/PROTOCOL.md §2): no guessing.
    if job.protocol != ClientProtocol.HTTP:
        return Reply(b"".join(job.frames))
    try:
        req = Request.decode(job.frames)
    except WireError as e:
        raise Failed(400, str(e)) from None
    text = f"{req.method} {req.target} {req.version}\r\n".encode("latin-1")
    for name, value in req.headers:
        text += name.encode("latin-1") + b": " + value + b"\r\n"
    text += b"\r\n" + req.body
    return Reply(response(200, text, [("content-type", "text/plain; charset=utf-8"),
                                      ("x-worker", f"python/{os.getpid()}")]))


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
               echo, heartbeat_interval=hb.get("interval_ms", 2500) / 1000, liveness=hb.get("liveness", 3))
    print("python echo worker ready", flush=True)
    w.run(stop)


if __name__ == "__main__":
    main()
