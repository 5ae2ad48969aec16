"""CURVE: key files, and the worker against a fake proxy and a fake server that admit only its key
(over tcp on 127.0.0.1: inproc carries no handshake)."""

import os
import threading
import time

import pytest
import zmq
from zmq.auth.thread import ThreadAuthenticator

from prime_server import (Forward, KeyFileError, Keypair, Reply, Worker, WorkerKeys, read_keypair,
                          read_public, wire)
from prime_server.wire import Header, Kind


def write_pair(folder, name):
    """Writes NAME.public and NAME.secret as prime_keygen does; returns the base path."""
    public, secret = zmq.curve_keypair()
    base = os.path.join(folder, name)
    fd = os.open(base + ".secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"# prime_server CURVE secret key of %s\n\n%s\n" % (name.encode(), secret))
    with open(base + ".public", "wb") as f:
        f.write(b"# prime_server CURVE public key of %s\n%s\n" % (name.encode(), public))
    return base


def test_key_files_read_back_and_an_exposed_secret_is_refused(tmp_path):
    base = write_pair(str(tmp_path), "w")
    pair = read_keypair(base + ".secret")
    assert pair.public == read_public(base + ".public")
    assert pair == Keypair.from_secret(pair.secret.decode())
    assert pair.secret not in repr(pair).encode()
    os.chmod(base + ".secret", 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_keypair(base + ".secret")
    (tmp_path / "bad.public").write_text("# only a comment\n\nnot a key\n")
    with pytest.raises(KeyFileError, match="bad.public"):
        read_public(str(tmp_path / "bad.public"))


def test_keys_come_from_a_topology(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ["front", "front-old", "a-proxy", "a-workers", "b-proxy", "b-workers"]:
        write_pair(str(keys), name)
    topology = {
        "security": {},
        "server": [{"name": "s", "key": ["front", "front-old"]}],
        "stage": [{"name": "a", "proxy_key": "a-proxy", "worker_key": "a-workers"},
                  {"name": "b", "proxy_key": "b-proxy", "worker_key": ["b-workers"]}],
    }
    a = WorkerKeys.from_topology(topology, "a", str(tmp_path))
    assert a.keypair.public == read_public(str(keys / "a-workers.public"))
    assert (a.proxy, a.next_proxy, a.fronts) == (
        read_public(str(keys / "a-proxy.public")), read_public(str(keys / "b-proxy.public")),
        [read_public(str(keys / "front.public"))])
    assert WorkerKeys.from_topology(topology, "b", str(tmp_path)).next_proxy is None
    del topology["security"]
    assert WorkerKeys.from_topology(topology, "a", str(tmp_path)) is None


class Allow:
    """A ZAP credentials provider admitting `keys`; it remembers whom it refused."""

    def __init__(self, *keys):
        self.keys = set(keys)
        self.refused = []

    def callback(self, domain, key):
        if key not in self.keys:
            self.refused.append(key)
        return key in self.keys


def curve_server(ctx, kind, keypair, identity=None):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        s.setsockopt(zmq.IDENTITY, identity)
    s.curve_server = True
    s.curve_secretkey = keypair.secret
    s.curve_publickey = keypair.public
    port = s.bind_to_random_port("tcp://127.0.0.1")
    return s, f"tcp://127.0.0.1:{port}"


def recv(sock, timeout=10.0):
    if not sock.poll(timeout * 1000):
        raise AssertionError("nothing received")
    return sock.recv_multipart()


def test_a_worker_with_keys_serves_over_curve_and_one_with_a_wrong_server_key_gets_nothing():
    ctx = zmq.Context()
    worker_pair, stranger = Keypair(*zmq.curve_keypair()), Keypair(*zmq.curve_keypair())
    proxy_pair, next_pair, front_pair = (Keypair(*zmq.curve_keypair()) for _ in range(3))
    allow = Allow(worker_pair.public)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=allow)
    proxy, proxy_ep = curve_server(ctx, zmq.ROUTER, proxy_pair)
    next_proxy, next_ep = curve_server(ctx, zmq.ROUTER, next_pair)
    server, loop_ep = curve_server(ctx, zmq.ROUTER, front_pair, wire.server_routing_id(42))
    pub, int_ep = curve_server(ctx, zmq.PUB, front_pair)
    started = threading.Event()

    def work(j):
        if j.frames[0] == b"fwd":
            return Forward([b"next"])
        if j.frames[0] == b"hi":
            return Reply(b"over curve")
        started.set()
        while True:
            j.check()
            time.sleep(0.001)

    keys = WorkerKeys(worker_pair, proxy_pair.public, next_pair.public, [front_pair.public])
    worker_ctx = zmq.Context()
    w = Worker(proxy_ep, [loop_ep], [int_ep], work, downstream=next_ep, heartbeat_interval=0.2,
               keys=keys, context=worker_ctx)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    try:
        ident, ready = recv(proxy)[:2]
        assert Header.decode(ready).kind == Kind.READY
        # Forwarded to the next proxy over CURVE with the next proxy's key.
        h = Header(Kind.JOB, attempt=1, request_id=1, server_id=42)
        proxy.send_multipart([ident] + wire.message(h, [b"fwd"]))
        _, head, payload = recv(next_proxy)
        assert (Header.decode(head).request_id, payload) == (1, b"next")
        # Answered through the loopback, over CURVE with the front's key.
        h = Header(Kind.JOB, attempt=1, request_id=2, server_id=42)
        proxy.send_multipart([ident] + wire.message(h, [b"hi"]))
        _, head, body = recv(server)
        assert (Header.decode(head).kind, Header.decode(head).request_id, body) == (
            Kind.REPLY, 2, b"over curve")
        # A long job: busy heartbeats come from the second socket, the interrupt stops the work,
        # and the Interrupted failure is not answered (the server asked for it).
        h = Header(Kind.JOB, attempt=1, request_id=3, server_id=42)
        proxy.send_multipart([ident] + wire.message(h, [b"loop"]))
        assert started.wait(10)
        while True:
            frames = recv(proxy)
            beat = Header.decode(frames[1])
            if beat.kind == Kind.HEARTBEAT and beat.flags & wire.BUSY:
                assert frames[0] == ident + b"#hb" and frames[2] == ident
                break
        deadline = time.time() + 10
        while w.stats["failed"] == 0:
            assert time.time() < deadline, "not interrupted"
            pub.send(h.with_kind(Kind.INTERRUPT).encode())
            time.sleep(0.05)
        assert allow.refused == []

        # A worker with a listed key that expects another proxy key never reaches the proxy,
        # and one with an unlisted key is refused by the ZAP handler.
        for bad in [WorkerKeys(worker_pair, stranger.public, next_pair.public, [front_pair.public]),
                    WorkerKeys(stranger, proxy_pair.public, next_pair.public, [front_pair.public])]:
            other_ctx = zmq.Context()
            other = Worker(proxy_ep, [loop_ep], [int_ep], work, downstream=next_ep,
                           heartbeat_interval=0.2, keys=bad, context=other_ctx)
            other_stop = threading.Event()
            ot = threading.Thread(target=other.run, args=(other_stop,))
            ot.start()
            try:
                deadline = time.time() + 1.0
                while time.time() < deadline:
                    if proxy.poll(100):
                        got = proxy.recv_multipart()
                        assert not got[0].startswith(other.id), got
            finally:
                other_stop.set()
                ot.join()
                other_ctx.term()
        assert stranger.public in allow.refused
    finally:
        stop.set()
        t.join()
        worker_ctx.term()
        auth.stop()
        for s in [proxy, next_proxy, server, pub]:
            s.close()
        ctx.term()
