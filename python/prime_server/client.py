"""A client of the front server's zmq-native front (docs/PROTOCOL.md §5): requests are
`[empty][id][payload...]`, answers `[empty][id][status][body]`."""

import itertools
import os

import zmq

from . import security


class Client:
    """`Client("tcp://127.0.0.1:8003").request(b"32416190071")` -> (200, b'{"possible_prime":...}').

    A front with `[security]` admits only the clients listed in `security.clients`: give the
    client's key pair (:func:`prime_server.security.read_keypair`) and the front's public key,
    `Client(endpoint, keypair=read_keypair("keys/client.secret"),
    server_key=read_public("keys/front.public"))`.
    """

    def __init__(self, endpoint, context=None, keypair=None, server_key=None):
        if (keypair is None) != (server_key is None):
            raise ValueError("CURVE needs both the client's key pair and the front's public key")
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        security.connect(self.sock, endpoint, keypair, server_key)
        self._ids = itertools.count(1)
        self._prefix = b"%d-" % os.getpid()
        self._early = {}

    def send(self, *frames):
        """Sends a request without waiting; returns its id for `receive`."""
        rid = self._prefix + str(next(self._ids)).encode()
        self.sock.send_multipart([b"", rid] + [bytes(f) for f in frames])
        return rid

    def receive(self, rid, timeout=30.0):
        """Waits for the answer to request `rid`: (status, body). Raises TimeoutError."""
        if rid in self._early:
            return self._early.pop(rid)
        while True:
            if not self.sock.poll(timeout * 1000):
                raise TimeoutError(f"no answer to request {rid!r} in {timeout} s")
            frames = self.sock.recv_multipart()
            if len(frames) != 4 or frames[0] != b"":
                continue  # not an answer of this protocol
            _, got, status, body = frames
            answer = (int(status), body)
            if got == rid:
                return answer
            self._early[got] = answer

    def request(self, *frames, timeout=30.0):
        """Sends one request and waits for its answer: (status, body)."""
        return self.receive(self.send(*frames), timeout)

    def close(self):
        self.sock.close()
