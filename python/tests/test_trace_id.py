"""The request's trace id (docs/PROTOCOL.md §2): the bytes after the fixed 48 of a header, shown to
the work function as ``job.trace_id`` and copied into everything a worker sends about the job."""

import threading

import pytest
import zmq

from prime_server import Forward, Reply, Worker, wire
from prime_server.wire import Header, Kind, WireError


def test_the_trace_id_follows_the_fixed_header_and_with_kind_keeps_it():
    h = Header(Kind.JOB, request_id=9, server_id=42, token=bytes([1, 2, 3, 4, 5, 6]), trace_id=b"abc-123")
    b = h.encode()
    assert len(b) == 48 + 7 and b[48:] == b"abc-123" and b[42:48] == bytes([1, 2, 3, 4, 5, 6])
    got = Header.decode(b)
    assert got == h
    for kind in (Kind.REPLY, Kind.JOB, Kind.REJECT):
        assert Header.decode(got.with_kind(kind).encode()).trace_id == b"abc-123"
    assert Header(Kind.INTERRUPT).encode() == Header(Kind.INTERRUPT).encode()[:48]
    longest = Header(Kind.JOB, trace_id=b"z" * wire.MAX_TRACE_LEN).encode()
    assert len(longest) == wire.MAX_HEADER_LEN == 112
    assert Header.decode(longest).trace_id == b"z" * 64


def test_a_header_frame_over_112_bytes_or_with_an_unprintable_trace_byte_is_malformed():
    b = Header(Kind.JOB, trace_id=b"z" * 64).encode()
    with pytest.raises(WireError, match="113 bytes"):
        Header.decode(b + b"z")
    for bad in (b" ", b"\x7f", b"\x00", b"\xc3\xa9"):
        with pytest.raises(WireError, match="trace id"):
            Header.decode(Header(Kind.JOB).encode() + b"ok" + bad)
    with pytest.raises(WireError):
        Header(Kind.JOB, trace_id=b"has space")


def test_the_work_function_sees_the_trace_id_and_replies_and_forwards_carry_it():
    seen = []

    def work(j):
        seen.append((j.request_id, j.trace_id))
        if j.frames[0] == b"fwd":
            return Forward([b"next"])
        return Reply(b"ok")

    ctx = zmq.Context.instance()
    proxy = ctx.socket(zmq.ROUTER)
    proxy.bind("inproc://tr-proxy")
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.IDENTITY, wire.server_routing_id(42))
    server.bind("inproc://tr-loop")
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://tr-int")
    next_proxy = ctx.socket(zmq.ROUTER)
    next_proxy.bind("inproc://tr-next")
    w = Worker("inproc://tr-proxy", ["inproc://tr-loop"], ["inproc://tr-int"], work,
               downstream="inproc://tr-next", heartbeat_interval=0.2)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    try:
        assert proxy.poll(5000)
        ident = proxy.recv_multipart()[0]
        job = Header(Kind.JOB, attempt=1, request_id=1, server_id=42, trace_id=b"py-trace-1")
        proxy.send_multipart([ident] + wire.message(job, [b"hi"]))
        assert server.poll(5000)
        _, head, body = server.recv_multipart()
        r = Header.decode(head)
        assert (r.kind, r.request_id, r.trace_id, body) == (Kind.REPLY, 1, b"py-trace-1", b"ok")
        job = Header(Kind.JOB, attempt=1, request_id=2, server_id=42, trace_id=b"py-trace-2")
        proxy.send_multipart([ident] + wire.message(job, [b"fwd"]))
        assert next_proxy.poll(5000)
        sender, head, body = next_proxy.recv_multipart()
        fwd = Header.decode(head)
        assert (fwd.kind, fwd.request_id, fwd.trace_id) == (Kind.JOB, 2, b"py-trace-2")
        # A job without one: the work function sees an empty string.
        job = Header(Kind.JOB, attempt=1, request_id=3, server_id=42)
        proxy.send_multipart([ident] + wire.message(job, [b"hi"]))
        assert server.poll(5000)
        server.recv_multipart()
        assert seen == [(1, "py-trace-1"), (2, "py-trace-2"), (3, "")]
    finally:
        stop.set()
        t.join()
        for s in (proxy, server, pub, next_proxy):
            s.close()
