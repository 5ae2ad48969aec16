import random

import pytest

from prime_server import http, wire
from prime_server.wire import ClientProtocol, Header, Kind, WireError


def test_header_layout_matches_the_protocol_table():
    h = Header(Kind.JOB, attempt=1, stage=2, flags=0x05, request_id=0x0807060504030201,
               server_id=1, arrival_us=2, deadline_us=3, status=504, protocol=ClientProtocol.NETSTRING)
    b = h.encode()
    assert len(b) == 48
    assert b[0:8] == bytes([0x50, 0x53, 3, 1, 1, 2, 0x05, ord("n")])
    assert b[8:16] == bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert b[16] == 1 and b[24] == 2 and b[32] == 3
    assert b[40:42] == (504).to_bytes(2, "little")
    assert b[42:] == bytes(6)
    assert Header.decode(b) == h


def test_the_reply_token_is_bytes_42_to_48_and_with_kind_keeps_it():
    h = Header(Kind.JOB, request_id=9, server_id=42, token=bytes([1, 2, 3, 4, 5, 0xFF]))
    b = h.encode()
    assert b[42:48] == bytes([1, 2, 3, 4, 5, 0xFF])
    got = Header.decode(b)
    assert got.token == h.token
    reply = got.with_kind(Kind.REPLY, status=503)
    assert Header.decode(reply.encode()).token == h.token
    assert Header(Kind.INTERRUPT).token == wire.NO_TOKEN
    with pytest.raises(ValueError):
        Header(Kind.JOB, token=b"short")


def test_random_headers_round_trip():
    rnd = random.Random(1)
    for _ in range(500):
        h = Header(rnd.choice(list(Kind)), rnd.randrange(256), rnd.randrange(256), rnd.randrange(256),
                   rnd.getrandbits(64), rnd.getrandbits(64), rnd.getrandbits(64), rnd.getrandbits(64),
                   rnd.randrange(65536), rnd.randbytes(6), protocol=rnd.choice(list(ClientProtocol)))
        assert Header.decode(h.encode()) == h


def test_garbage_is_an_error_never_a_crash():
    rnd = random.Random(2)
    for _ in range(2000):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(60)))
        try:
            wire.decode([data])
        except WireError:
            pass


def test_wrong_version_is_named():
    b = bytearray(Header(Kind.JOB).encode())
    b[2] = 1  # a version-1 peer: it knows no reply tokens
    with pytest.raises(WireError, match="version 1 not supported"):
        Header.decode(bytes(b))
    b[2] = 2  # a version-2 peer: it knows no client protocol
    with pytest.raises(WireError, match=r"version 2 not supported \(this side speaks 3\)"):
        Header.decode(bytes(b))


def test_the_client_protocol_is_byte_7_and_with_kind_keeps_it():
    for protocol, byte in [(ClientProtocol.DIRECT, 0), (ClientProtocol.HTTP, ord("h")),
                           (ClientProtocol.NETSTRING, ord("n")), (ClientProtocol.ZMQ, ord("z"))]:
        h = Header(Kind.JOB, flags=wire.BUSY, protocol=protocol)
        b = h.encode()
        assert (b[6], b[7]) == (wire.BUSY, byte)
        got = Header.decode(b)
        assert got.protocol == protocol
        for kind in (Kind.REPLY, Kind.JOB, Kind.REJECT):
            assert Header.decode(got.with_kind(kind).encode()).protocol == protocol
    b = bytearray(Header(Kind.JOB).encode())
    b[7] = ord("x")
    with pytest.raises(WireError, match="unknown client protocol"):
        Header.decode(bytes(b))


def test_payload_frame_counts():
    with pytest.raises(WireError):
        wire.decode(wire.message(Header(Kind.REPLY)))
    wire.decode(wire.message(Header(Kind.REPLY), [b"x"]))
    wire.decode(wire.message(Header(Kind.HEARTBEAT), [b"worker"]))
    with pytest.raises(WireError):
        wire.decode(wire.message(Header(Kind.INTERRUPT), [b"x"]))


def test_http_request_head_and_query():
    head = bytearray(b"HQ\x01\x00")
    head += (3).to_bytes(2, "little") + b"GET"
    target = b"/p%20q?x=1%262&y=a+b&x=3"
    head += len(target).to_bytes(4, "little") + target
    head += (1).to_bytes(2, "little") + (4).to_bytes(2, "little") + b"host" + (1).to_bytes(4, "little") + b"h"
    req = http.Request.decode([bytes(head), b"body"])
    assert (req.method, req.path, req.version, req.body) == ("GET", "/p q", "HTTP/1.1", b"body")
    assert req.query == [("x", "1&2"), ("y", "a b"), ("x", "3")]
    assert req.header("Host") == b"h"
    with pytest.raises(WireError):
        http.Request.decode([bytes(head[:-1]), b""])


def test_http_response_encoding():
    b = http.response(200, "hi", [("content-type", "text/plain")])
    assert b[:6] == b"HR" + (200).to_bytes(2, "little") + (1).to_bytes(2, "little")
    assert b.endswith(b"hi")
