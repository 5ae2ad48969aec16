"""The HTTP job and reply encodings (docs/PROTOCOL.md §5): what the HTTP front hands stage 1, and
what a worker answers."""

import struct
from urllib.parse import parse_qsl, unquote

from .wire import WireError


class Request:
    """An HTTP request as a worker sees it."""

    def __init__(self, method, target, version, headers, body):
        self.method = method
        self.target = target
        self.version = version  # "HTTP/1.0" or "HTTP/1.1"
        self.headers = headers  # [(lower-case name, bytes value)] in order
        self.body = body
        raw_path, _, raw_query = target.partition("?")
        self.path = unquote(raw_path)
        # Split first, then decode each key and value; '+' is a space; keep blanks and order.
        self.query = parse_qsl(raw_query, keep_blank_values=True) if "?" in target else []

    def query_value(self, key):
        return next((v for k, v in self.query if k == key), None)

    def query_values(self, key):
        return [v for k, v in self.query if k == key]

    def header(self, name):
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    @classmethod
    def decode(cls, frames):
        if len(frames) != 2:
            raise WireError("an HTTP job has 2 frames (head, body)")
        head, body = bytes(frames[0]), bytes(frames[1])
        try:
            if head[:2] != b"HQ":
                raise WireError("bad HTTP head magic")
            version = {0: "HTTP/1.0", 1: "HTTP/1.1"}[head[2]]
            pos = 4
            (mlen,) = struct.unpack_from("<H", head, pos); pos += 2
            method = head[pos:pos + mlen].decode("latin-1"); pos += mlen
            (tlen,) = struct.unpack_from("<I", head, pos); pos += 4
            target = head[pos:pos + tlen].decode("utf-8", "replace"); pos += tlen
            (count,) = struct.unpack_from("<H", head, pos); pos += 2
            headers = []
            for _ in range(count):
                (n,) = struct.unpack_from("<H", head, pos); pos += 2
                name = head[pos:pos + n].decode("latin-1"); pos += n
                (v,) = struct.unpack_from("<I", head, pos); pos += 4
                headers.append((name, head[pos:pos + v])); pos += v
            if pos != len(head):
                raise WireError("trailing bytes in HTTP head")
        except (struct.error, KeyError, IndexError) as e:
            raise WireError(f"malformed HTTP head: {e}") from None
        return cls(method, target, version, headers, body)


def is_http_job(frames):
    """Whether frames look like an HTTP job: a guess from the content, which a zmq client can fool.
    A worker reads how the request came in from the job's header instead: ``job.protocol ==
    ClientProtocol.HTTP`` (docs/PROTOCOL.md §2)."""
    return len(frames) == 2 and bytes(frames[0][:2]) == b"HQ"


def response(status, body=b"", headers=()):
    """Encodes an HTTP response as a Reply's one frame."""
    if isinstance(body, str):
        body = body.encode()
    out = bytearray(b"HR")
    out += struct.pack("<HH", status, len(headers))
    for name, value in headers:
        name = name.encode("latin-1") if isinstance(name, str) else name
        value = value.encode("latin-1") if isinstance(value, str) else value
        out += struct.pack("<H", len(name)) + name + struct.pack("<I", len(value)) + value
    return bytes(out + body)
