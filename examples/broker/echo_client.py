#!/usr/bin/env python3
"""A Python client for the broker demo: sends random strings through the zmq front and checks
that every answer is its own data. A string answered 503 (the front could not take it now, or the
broker died holding it) or 504 (its deadline passed, e.g. while no worker was up) is sent again.
SIGINT or SIGTERM ends it early: it finishes the string in hand and prints its count.

    python3 examples/broker/echo_client.py [tcp://127.0.0.1:8003] [SECONDS]
"""

import os
import signal
import sys
import time

from prime_server import Client

# Seconds to wait for an answer before counting an error: the front answers every request (504 at
# its deadline at the latest), so this is for a front that is gone.
WAIT = 10.0


def main():
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:8003"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    c = Client(endpoint)
    sent = ok = wrong = failed = again = unfinished = 0
    stop_at = time.time() + seconds
    while time.time() < stop_at and not stopping:
        data = os.urandom(8).hex().encode()
        sent += 1
        while True:
            try:
                status, body = c.request(data, timeout=WAIT)
            except TimeoutError:
                print(f"python client: no answer in {WAIT} s", file=sys.stderr, flush=True)
                failed += 1
                break
            if status in (503, 504):
                if stopping:
                    unfinished += 1
                    break
                again += 1
                if status == 503:
                    time.sleep(0.1)
                continue
            if status == 200 and body == data:
                ok += 1
            elif status == 200:
                wrong += 1
            else:
                print(f"python client: {status}: {body!r}", file=sys.stderr, flush=True)
                failed += 1
            break
    stopped = f", stopped before an answer {unfinished}" if unfinished else ""
    print(f"python client: sent {sent}, own data back {ok}, someone else's {wrong}, errors {failed}{stopped} "
          f"(sent again after a 503 or 504: {again})", flush=True)
    sys.exit(0 if wrong == 0 and failed == 0 else 1)


if __name__ == "__main__":
    main()
