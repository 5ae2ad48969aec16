"""The Python worker against a fake proxy and a fake server, over inproc."""

import threading
import time

import zmq

from prime_server import Failed, Forward, Reply, Worker, wire
from prime_server.wire import Header, Kind


def recv(sock, timeout=5.0):
    if not sock.poll(timeout * 1000):
        raise AssertionError("nothing received")
    return sock.recv_multipart()


def from_worker(proxy):
    """The next message the worker sends its proxy other than a plain Heartbeat: (ident, Header)."""
    while True:
        frames = recv(proxy)
        h = Header.decode(frames[1])
        if h.kind != Kind.HEARTBEAT:
            return frames[0], h


def setup(work, name, downstream=None):
    ctx = zmq.Context.instance()
    proxy = ctx.socket(zmq.ROUTER)
    proxy.bind(f"inproc://{name}-proxy")
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.IDENTITY, wire.server_routing_id(42))
    server.bind(f"inproc://{name}-loop")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"inproc://{name}-int")
    w = Worker(f"inproc://{name}-proxy", [f"inproc://{name}-loop"], [f"inproc://{name}-int"], work,
               downstream=downstream, heartbeat_interval=0.2)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    return ctx, proxy, server, pub, w, stop, t


def job(request_id, *frames, deadline_us=0, token=wire.NO_TOKEN):
    return (Header(Kind.JOB, attempt=1, request_id=request_id, server_id=42, deadline_us=deadline_us, token=token),
            list(frames))


def test_replies_fails_and_survives_exceptions():
    def work(j):
        if j.frames[0] == b"boom":
            raise RuntimeError("kaboom")
        if j.frames[0] == b"no":
            raise Failed(422, "refused")
        return Reply(b"echo:" + j.frames[0])

    ctx, proxy, server, pub, w, stop, t = setup(work, "t1")
    try:
        ident, ready = recv(proxy)[:2]
        assert Header.decode(ready).kind == Kind.READY
        for rid, payload, status, body in [(1, b"hi", 0, b"echo:hi"), (2, b"no", 422, b"refused"),
                                           (3, b"boom", 500, None)]:
            h, frames = job(rid, payload)
            proxy.send_multipart([ident] + wire.message(h, frames))
            _, head, got = recv(server)
            r = Header.decode(head)
            assert (r.kind, r.request_id, r.status) == (Kind.REPLY, rid, status)
            if body is not None:
                assert got == body
            else:
                assert b"kaboom" in got
            # After every job, Ready again.
            while True:
                ident2, msg = recv(proxy)[:2]
                if Header.decode(msg).kind == Kind.READY:
                    break
            assert ident2 == ident
    finally:
        stop.set()
        t.join()


def test_forwards_and_an_interrupt_stops_long_work():
    started = threading.Event()

    def work(j):
        if j.frames[0] == b"fwd":
            return Forward([b"next"])
        started.set()
        while True:
            j.check()
            time.sleep(0.001)

    ctx, proxy, server, pub, w, stop, t = setup(work, "t2")
    try:
        ident = recv(proxy)[0]
        h, frames = job(7, b"loop")
        proxy.send_multipart([ident] + wire.message(h, frames))
        assert started.wait(5)
        pub.send(h.with_kind(Kind.INTERRUPT).encode())
        deadline = time.time() + 5
        while w.stats["failed"] == 0:
            assert time.time() < deadline, "not interrupted"
            time.sleep(0.01)
        # A forward without a next stage is a 500, not a hang.
        h, frames = job(8, b"fwd")
        proxy.send_multipart([ident] + wire.message(h, frames))
        _, head, body = recv(server)
        assert Header.decode(head).status == 500
    finally:
        stop.set()
        t.join()


def test_the_reply_token_of_the_job_is_echoed_in_replies_forwards_and_relayed_rejects():
    def work(j):
        if j.frames[0] == b"fwd":
            return Forward([b"next"])
        if j.frames[0] == b"boom":
            raise RuntimeError("kaboom")
        return Reply(b"ok")

    ctx = zmq.Context.instance()
    next_proxy = ctx.socket(zmq.ROUTER)
    next_proxy.bind("inproc://t3-next")
    ctx, proxy, server, pub, w, stop, t = setup(work, "t3", downstream="inproc://t3-next")
    try:
        ident = recv(proxy)[0]
        for rid, payload, status in [(1, b"hi", 0), (2, b"boom", 500)]:
            token = bytes([rid, 2, 3, 4, 5, 6])
            h, frames = job(rid, payload, token=token)
            proxy.send_multipart([ident] + wire.message(h, frames))
            _, head, _ = recv(server)
            r = Header.decode(head)
            assert (r.kind, r.request_id, r.status, r.token) == (Kind.REPLY, rid, status, token)
        token = bytes([9, 8, 7, 6, 5, 4])
        h, frames = job(3, b"fwd", token=token)
        proxy.send_multipart([ident] + wire.message(h, frames))
        sender, head, body = recv(next_proxy)
        fwd = Header.decode(head)
        assert (fwd.kind, fwd.request_id, fwd.token, body) == (Kind.JOB, 3, token, b"next")
        # The next stage's proxy refuses it: the worker answers the server 503 with the token.
        next_proxy.send_multipart([sender, fwd.with_kind(Kind.REJECT, status=503).encode(), b"full"])
        _, head, body = recv(server)
        r = Header.decode(head)
        assert (r.kind, r.request_id, r.status, r.token, body) == (Kind.REPLY, 3, 503, token, b"full")
    finally:
        stop.set()
        t.join()
        next_proxy.close()


def test_the_work_function_sees_the_client_protocol_and_a_reply_keeps_it():
    seen = []

    def work(j):
        seen.append(j.protocol)
        return Reply(b"ok")

    ctx, proxy, server, pub, w, stop, t = setup(work, "t4")
    try:
        ident = recv(proxy)[0]
        for rid, protocol in enumerate(wire.ClientProtocol, start=1):
            h, frames = job(rid, b"x")
            h.protocol = protocol
            proxy.send_multipart([ident] + wire.message(h, frames))
            _, head, _ = recv(server)
            assert Header.decode(head).protocol == protocol
        assert seen == list(wire.ClientProtocol)
    finally:
        stop.set()
        t.join()


def test_a_stopping_worker_names_its_last_job_answers_a_job_that_crossed_and_exits_on_the_confirmation():
    """docs/PROTOCOL.md §3, "Leaving": Disconnect naming the job taken last (no Ready after it); a
    job the proxy sent before it read the Disconnect is answered and named in a Disconnect of its
    own; the proxy's header-only Disconnect ends it."""
    ctx, proxy, server, pub, w, stop, t = setup(lambda j: Reply(b"done"), "t5")
    try:
        ident = recv(proxy)[0]
        h, frames = job(11, b"x")
        proxy.send_multipart([ident] + wire.message(h, frames))
        recv(server)
        assert from_worker(proxy)[1].kind == Kind.READY
        stop.set()
        bye = from_worker(proxy)[1]
        assert (bye.kind, bye.server_id, bye.request_id) == (Kind.DISCONNECT, 42, 11)
        # A job that crossed the Disconnect: the worker is stopping, so it is answered 503.
        h, frames = job(12, b"y")
        proxy.send_multipart([ident] + wire.message(h, frames))
        _, head, body = recv(server)
        r = Header.decode(head)
        assert (r.kind, r.request_id, r.status, body) == (Kind.REPLY, 12, 503, b"the worker is shutting down")
        bye = from_worker(proxy)[1]
        assert (bye.kind, bye.request_id) == (Kind.DISCONNECT, 12)
        proxy.send_multipart([ident, Header(Kind.DISCONNECT).encode()])
        t.join(5)
        assert not t.is_alive(), "the worker did not exit on the confirmation"
        assert w.stats["leave_unconfirmed"] == 0
    finally:
        stop.set()
        t.join()
