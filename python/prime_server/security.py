"""CURVE keys for a Python peer of a deployment with ``[security]`` in its topology.

Every zmq endpoint of such a deployment is a CURVE server that admits only listed public keys,
so a Python worker or client must prove a listed key pair and check each server's public key:

    from prime_server import Worker, WorkerKeys

    keys = WorkerKeys.from_files("keys/test-workers.secret", proxy="keys/test-proxy.public",
                                 fronts=["keys/front.public"])
    Worker(downstream, loopbacks, interrupts, work, keys=keys).run()

Key files are the ones ``prime_keygen NAME`` writes: ``NAME.public`` and ``NAME.secret`` (mode
0600), each holding one key as 40 characters of Z85 text after ``#`` comment lines. Keys are
kept as that Z85 text (bytes), which is what pyzmq's ``curve_*key`` options take.
"""

import os
import stat
from collections import namedtuple

import zmq

_Z85 = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file."""


def _key_text(path):
    """The first line of a key file that is neither blank nor a # comment, checked to be a key."""
    with open(path, "rb") as f:
        lines = [line.strip() for line in f.read().splitlines()]
    key = next((line for line in lines if line and not line.startswith(b"#")), b"")
    if len(key) != 40 or not set(key) <= _Z85:
        raise KeyFileError(f"{path}: not a CURVE key: expected 40 characters of Z85 text")
    return key


def _as_key(key):
    return key.encode() if isinstance(key, str) else bytes(key)


def read_public(path):
    """The public key of a ``NAME.public`` file, as Z85 bytes."""
    return _key_text(path)


class Keypair(namedtuple("Keypair", "public secret")):
    """A peer's own key pair, both halves as Z85 bytes."""

    __slots__ = ()

    @classmethod
    def from_secret(cls, secret):
        """The pair of a secret key (Z85 text or bytes): its public key is derived from it."""
        secret = _as_key(secret)
        return cls(zmq.curve_public(secret), secret)

    def __repr__(self):  # the secret half never goes to a log
        return f"Keypair(public={self.public!r}, secret=...)"


def read_keypair(path):
    """The key pair of a ``NAME.secret`` file (its public key derived from the secret).

    Refuses, as the Rust daemons do, a secret file that its group or others may read.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path}: the secret key may be read by others (mode {mode:o}); "
                           f"make it readable by its owner only: chmod 600 {path}")
    return Keypair.from_secret(_key_text(path))


def present(sock, keypair, server_key):
    """Makes `sock`'s next connect a CURVE client proving `keypair` and checking `server_key`.

    libzmq copies a socket's options into each connection as it is made, so one socket may
    connect to several servers with a server key for each: call this before each connect.
    """
    sock.curve_secretkey = keypair.secret
    sock.curve_publickey = keypair.public
    sock.curve_serverkey = server_key


def connect(sock, endpoint, keypair=None, server_key=None):
    """Connects `sock` to `endpoint`, as a CURVE client when given a key pair (not over inproc://,
    which carries no handshake, as in the Rust peers)."""
    if keypair is not None and not endpoint.startswith("inproc://"):
        present(sock, keypair, server_key)
    sock.connect(endpoint)


class WorkerKeys(namedtuple("WorkerKeys", "keypair proxy next_proxy fronts")):
    """A worker's keys, as the Rust ``WorkerKeys``: its stage's key pair, its stage's proxy's
    public key, the next stage's proxy's (``None`` for the last stage), and each front's, in the
    order of the worker's loopback and interrupt endpoints. Public keys are Z85 bytes."""

    __slots__ = ()

    def __new__(cls, keypair, proxy, next_proxy=None, fronts=()):
        return super().__new__(cls, keypair, _as_key(proxy),
                               None if next_proxy is None else _as_key(next_proxy),
                               [_as_key(k) for k in fronts])

    @classmethod
    def from_files(cls, secret, proxy, next_proxy=None, fronts=()):
        """Reads the worker's ``.secret`` file and the ``.public`` files of its peers."""
        return cls(read_keypair(secret), read_public(proxy),
                   None if next_proxy is None else read_public(next_proxy),
                   [read_public(f) for f in fronts])

    @classmethod
    def from_topology(cls, topology, stage, folder="."):
        """The keys of `stage`'s workers from a parsed topology file (a dict, as
        ``tomllib.load`` gives it) whose file is in `folder`; ``None`` without ``[security]``.

        Uses the stage's first ``worker_key`` (a list is a rotation: the first is used), its
        ``proxy_key``, the next stage's ``proxy_key`` and every ``[[server]]``'s first ``key``.
        """
        sec = topology.get("security")
        if sec is None:
            return None
        keys = os.path.join(folder, sec.get("keys", "keys"))

        def path(names, suffix):  # a name, or a list of them whose first is in use
            return os.path.join(keys, names if isinstance(names, str) else names[0]) + suffix

        stages = topology["stage"]
        i = next(k for k, s in enumerate(stages) if s["name"] == stage)
        return cls.from_files(
            path(stages[i]["worker_key"], ".secret"),
            path(stages[i]["proxy_key"], ".public"),
            path(stages[i + 1]["proxy_key"], ".public") if i + 1 < len(stages) else None,
            [path(s["key"], ".public") for s in topology["server"]],
        )
