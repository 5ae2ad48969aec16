"""Python peers for prime_server's ZeroMQ pipeline, written from docs/PROTOCOL.md.

- :mod:`prime_server.wire`: the header (48 fixed bytes and the trace id), the message kinds and the
  client protocols (protocol v3).
- :mod:`prime_server.http`: the HTTP job and reply encodings the HTTP front uses.
- :class:`prime_server.worker.Worker`: serves one stage of a pipeline.
- :class:`prime_server.client.Client`: asks the front server's zmq-native front.
- :mod:`prime_server.security`: CURVE key files and a worker's keys, for deployments with
  ``[security]``.
"""

from .wire import ClientProtocol, Header, Kind, WireError, PROTOCOL_VERSION
from .worker import Worker, Forward, Reply, Failed, Interrupted
from .client import Client
from .security import Keypair, KeyFileError, WorkerKeys, read_keypair, read_public

__all__ = ["Client", "ClientProtocol", "Header", "Kind", "WireError", "PROTOCOL_VERSION", "Worker", "Forward", "Reply", "Failed", "Interrupted",
           "Keypair", "KeyFileError", "WorkerKeys", "read_keypair", "read_public"]
