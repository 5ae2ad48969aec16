"""Wire protocol v3 (docs/PROTOCOL.md §2): one header frame per message, 48 little-endian bytes
optionally followed by the request's trace id (up to 64 printable ASCII bytes)."""

import enum
import struct
import time

PROTOCOL_VERSION = 3
MAGIC = b"PS"
HEADER_LEN = 48  # the fixed part of the header frame
MAX_TRACE_LEN = 64
MAX_HEADER_LEN = HEADER_LEN + MAX_TRACE_LEN
# Bits of the flags byte (6), on heartbeats only.
BUSY = 1  # from a worker's heartbeat socket: the worker is in the middle of a job
NO_WORKERS = 2  # from a proxy to a sender: it knows no worker now
LEAVING = 4  # from a proxy to a sender: it is draining or leaving

TOKEN_LEN = 6
NO_TOKEN = bytes(TOKEN_LEN)

# magic, version, kind, attempt, stage, flags, protocol, request_id, server_id, arrival_us,
# deadline_us, status, token (the request's 6-byte reply token)
_LAYOUT = struct.Struct("<2sBBBBBBQQQQH6s")
assert _LAYOUT.size == HEADER_LEN


class Kind(enum.IntEnum):
    JOB = 1
    REPLY = 2
    READY = 3
    HEARTBEAT = 4
    INTERRUPT = 5
    REJECT = 6
    DISCONNECT = 7


class ClientProtocol(enum.IntEnum):
    """Byte 7: how the request came in, so the stage that answers knows the form of its Reply."""
    DIRECT = 0  # no client protocol (a library caller's own job); also on messages about no job
    HTTP = ord("h")  # the HTTP front: the job is [head][body], the Reply an HR frame (http.response)
    NETSTRING = ord("n")  # the netstring front: one frame; the Reply is the response's bytes
    ZMQ = ord("z")  # the zmq front: 1 to 64 frames; the Reply is the body of the client's 200


# How many payload frames each kind carries (inclusive bounds).
_PAYLOAD = {
    Kind.JOB: (0, None),
    Kind.REPLY: (1, 1),
    Kind.READY: (0, 1),
    Kind.HEARTBEAT: (0, 1),
    Kind.INTERRUPT: (0, 0),
    Kind.REJECT: (0, 1),
    Kind.DISCONNECT: (0, 0),
}


class WireError(ValueError):
    """Bytes that are not a v3 message."""


def _check_trace_id(trace_id):
    trace_id = bytes(trace_id)
    if len(trace_id) > MAX_TRACE_LEN or any(b < 0x21 or b > 0x7E for b in trace_id):
        raise WireError(f"a trace id is at most {MAX_TRACE_LEN} printable ASCII bytes, not {trace_id!r}")
    return trace_id


class Header:
    """The header frame. ``token`` is the request's reply token (bytes 42..48): the server draws it
    per request and takes a reply only if it carries it, so a worker copies it from the job it was
    handed into the reply and into the jobs it forwards (``with_kind`` keeps it). ``trace_id`` is
    the request's trace id (bytes), what its client knows it by (HTTP ``X-Request-Id``): empty, or
    1 to 64 printable ASCII bytes after the fixed 48; copied the same way. ``protocol`` is the
    request's :class:`ClientProtocol` (byte 7), copied the same way too."""

    __slots__ = ("kind", "attempt", "stage", "flags", "protocol", "request_id", "server_id", "arrival_us", "deadline_us",
                 "status", "token", "trace_id")

    def __init__(self, kind, attempt=0, stage=0, flags=0, request_id=0, server_id=0, arrival_us=0, deadline_us=0, status=0,
                 token=NO_TOKEN, trace_id=b"", protocol=ClientProtocol.DIRECT):
        self.kind = Kind(kind)
        self.attempt = attempt
        self.stage = stage
        self.flags = flags
        self.protocol = ClientProtocol(protocol)
        self.request_id = request_id
        self.server_id = server_id
        self.arrival_us = arrival_us
        self.deadline_us = deadline_us
        self.status = status
        token = bytes(token)
        if len(token) != TOKEN_LEN:
            raise ValueError(f"a reply token is {TOKEN_LEN} bytes, not {len(token)}")
        self.token = token
        self.trace_id = _check_trace_id(trace_id)

    def encode(self) -> bytes:
        return _LAYOUT.pack(MAGIC, PROTOCOL_VERSION, int(self.kind), self.attempt, self.stage, self.flags,
                            int(self.protocol), self.request_id, self.server_id, self.arrival_us, self.deadline_us, self.status,
                            self.token) + self.trace_id

    @classmethod
    def decode(cls, frame: bytes) -> "Header":
        if len(frame) >= 3 and frame[:2] == MAGIC and frame[2] != PROTOCOL_VERSION:
            raise WireError(f"protocol version {frame[2]} not supported (this side speaks {PROTOCOL_VERSION})")
        if not HEADER_LEN <= len(frame) <= MAX_HEADER_LEN:
            raise WireError(f"header frame is {len(frame)} bytes, expected {HEADER_LEN} to {MAX_HEADER_LEN}")
        magic, version, kind, attempt, stage, flags, protocol, rid, sid, arr, dl, status, token = \
            _LAYOUT.unpack_from(frame)
        if magic != MAGIC:
            raise WireError(f"bad magic {magic!r}")
        try:
            kind = Kind(kind)
        except ValueError:
            raise WireError(f"unknown message kind {kind}") from None
        try:
            protocol = ClientProtocol(protocol)
        except ValueError:
            raise WireError(f"unknown client protocol {protocol}") from None
        return cls(kind, attempt, stage, flags, rid, sid, arr, dl, status, token, _check_trace_id(frame[HEADER_LEN:]),
                   protocol)

    def with_kind(self, kind, status=0) -> "Header":
        """The same request as a message of another kind: flags cleared; the reply token, the
        trace id, the client protocol and the other fields kept."""
        return Header(kind, self.attempt, self.stage, 0, self.request_id, self.server_id, self.arrival_us, self.deadline_us, status,
                      self.token, self.trace_id, self.protocol)

    def expired(self, now_us=None) -> bool:
        if self.deadline_us == 0:
            return False
        return (now_us if now_us is not None else now_micros()) >= self.deadline_us

    def __eq__(self, other):
        return isinstance(other, Header) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self):
        return "Header(" + ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__) + ")"


def decode(frames):
    """A message without routing envelope -> (Header, payload frames); WireError if malformed."""
    if not frames:
        raise WireError("empty message")
    header = Header.decode(bytes(frames[0]))
    payload = [bytes(f) for f in frames[1:]]
    lo, hi = _PAYLOAD[header.kind]
    if len(payload) < lo or (hi is not None and len(payload) > hi):
        raise WireError(f"{header.kind.name} message with {len(payload)} payload frames")
    return header, payload


def message(header: Header, payload=()):
    return [header.encode()] + [bytes(p) for p in payload]


def server_routing_id(server_id: int) -> bytes:
    """The routing id a server's loopback presents: b"ps-" and 16 lower-case hex digits."""
    return b"ps-%016x" % server_id


def now_micros() -> int:
    return time.time_ns() // 1000
