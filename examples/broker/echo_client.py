#!/usr/bin/env python3
"""A Python client for the broker demo: sends random strings through the zmq front and checks
that every answer is its own data.

    python3 examples/broker/echo_client.py [tcp://127.0.0.1:8003] [SECONDS]
"""

import os
import sys
import time

from prime_server import Client


def main():
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:8003"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    c = Client(endpoint)
    sent = ok = wrong = failed = 0
    stop_at = time.time() + seconds
    while time.time() < stop_at:
        data = os.urandom(16).hex().encode()
        sent += 1
        try:
            status, body = c.request(data, timeout=30)
        except TimeoutError:
            failed += 1
            continue
        if status == 200 and body == data:
            ok += 1
        elif status == 200:
            wrong += 1
        else:
            failed += 1
    print(f"python client: sent {sent}, own data back {ok}, someone else's {wrong}, errors {failed}", flush=True)
    sys.exit(0 if wrong == 0 and failed == 0 else 1)


if __name__ == "__main__":
    main()
