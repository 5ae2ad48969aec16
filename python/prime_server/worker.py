"""A worker that serves one stage of a prime_server pipeline (docs/PROTOCOL.md §3)."""

import collections
import logging
import os
import threading
import time
import traceback

import zmq

from . import security, wire
from .wire import Header, Kind, WireError

log = logging.getLogger("prime_server.worker")


class Forward:
    """Send these frames on to the next stage."""

    def __init__(self, frames):
        self.frames = [bytes(f) for f in frames]


class Reply:
    """Answer the client with this response (protocol-specific bytes) through the loopback."""

    def __init__(self, body):
        self.body = bytes(body)


class Failed(Exception):
    """Raised by a work function: the client gets `status` with `reason`."""

    def __init__(self, status, reason):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class Interrupted(Exception):
    """Raised by Job.check(): the request was cancelled, its deadline passed, or we are stopping."""


class Job:
    """One job as the work function sees it. ``request_id`` is the server's number for the request
    (unique per server); ``trace_id`` (str, empty if none) is what its client knows it by, the HTTP
    front's ``X-Request-Id``: put it in your log lines. ``protocol`` (a
    :class:`prime_server.wire.ClientProtocol`) is how the request came in: answer an ``HTTP`` one
    with :func:`prime_server.http.response`, the others with the bytes the client gets."""

    def __init__(self, worker, header, frames):
        self._worker = worker
        self.header = header
        self.frames = frames
        self.request_id = header.request_id
        self.trace_id = header.trace_id.decode("ascii")
        self.protocol = header.protocol
        self.server_id = header.server_id
        self.attempt = header.attempt
        self.heartbeat = None  # set to change the blob this worker advertises

    def check(self):
        """Raises Interrupted when the work should stop. Cheap enough for an inner loop."""
        self._worker._check(self.header)


class Worker:
    """Serves one stage: `Worker(upstream, loopbacks, interrupts, work, downstream=None).run(stop)`.

    `work(job)` returns Forward(frames) or Reply(bytes), or raises Failed(status, reason); any
    other exception becomes a 500 reply and the worker lives on.

    With `keys` (a :class:`prime_server.security.WorkerKeys`), every connection outside the
    process is CURVE: the worker proves its stage's key pair and checks the proxy's, the next
    proxy's and each front's public key (`keys.fronts` in the order of `loopbacks`).
    """

    def __init__(self, upstream, loopbacks, interrupts, work, downstream=None, stage=1,
                 heartbeat_interval=2.5, liveness=3, blob=b"", cleanup=None, context=None,
                 keys=None):
        if keys is not None and not len(keys.fronts) == len(loopbacks) == len(interrupts):
            raise ValueError(f"{len(keys.fronts)} front keys for {len(loopbacks)} loopbacks and "
                             f"{len(interrupts)} interrupt endpoints: give one per front")
        if keys is not None and downstream and keys.next_proxy is None \
                and not downstream.startswith("inproc://"):
            raise ValueError("a worker with a next stage needs the next proxy's key")
        self.keys = keys
        self.ctx = context or zmq.Context.instance()
        self.work = work
        self.cleanup = cleanup
        self.stage = stage
        self.interval = heartbeat_interval
        self.liveness = liveness
        self.blob = blob
        self.upstream_endpoint = upstream
        self.id = ("py-%d-%x-%d" % (os.getpid(), time.time_ns() & 0xFFFFFFFF, id(self) & 0xFFFF)).encode()
        self.up = self.ctx.socket(zmq.DEALER)
        self.up.setsockopt(zmq.IDENTITY, self.id)
        self.up.setsockopt(zmq.LINGER, 200)
        self._connect(self.up, upstream, keys and keys.proxy)
        self.down = None
        if downstream:
            self.down = self.ctx.socket(zmq.DEALER)
            self.down.setsockopt(zmq.LINGER, 200)
            self._connect(self.down, downstream, keys and keys.next_proxy)
        self.loopback = self.ctx.socket(zmq.ROUTER)
        self.loopback.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A front that restarts has a new routing id: each new connection must be a new pipe that
        # learns it (docs/PROTOCOL.md §1).
        self.loopback.setsockopt(zmq.IMMEDIATE, 1)
        self.loopback.setsockopt(zmq.LINGER, 200)
        for i, ep in enumerate(loopbacks):
            self._connect(self.loopback, ep, keys and keys.fronts[i])
        self.subs = []
        for i, ep in enumerate(interrupts):
            s = self.ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.setsockopt(zmq.LINGER, 0)
            self._connect(s, ep, keys and keys.fronts[i])
            self.subs.append(s)
        self.cancelled = collections.OrderedDict()  # (server_id, request_id) -> time
        self.busy = threading.Event()
        self.stopping = threading.Event()
        self.stats = collections.Counter()
        self.last_sent = 0.0
        self.last_heard = time.monotonic()
        self.last_job = (0, 0)  # (server_id, request_id) of the job taken last: what Disconnect names
        self._last_drain = 0.0
        self._stop = None

    def _connect(self, sock, endpoint, server_key):
        """Connects, as a CURVE client checking `server_key` when the worker has keys."""
        security.connect(sock, endpoint, self.keys and self.keys.keypair, server_key)

    # -- sending ---------------------------------------------------------------------------
    def _send_up(self, kind, payload=(), server_id=0, request_id=0):
        h = Header(kind, stage=self.stage, server_id=server_id, request_id=request_id)
        try:
            # Never blocks, as the Rust worker's sends: with no proxy connected (not started yet,
            # or refusing our key) a blocking send would hang the worker, even its stop.
            self.up.send_multipart(wire.message(h, payload), zmq.NOBLOCK)
        except zmq.Again:
            self.stats["unsent"] += 1  # a Ready is said again when the proxy stays quiet
        self.last_sent = time.monotonic()

    def _reply(self, header, status, body):
        # with_kind keeps the job's reply token: the server takes no reply without it.
        h = header.with_kind(Kind.REPLY, status=status)
        h.stage = self.stage
        to = wire.server_routing_id(header.server_id)
        deadline = time.monotonic() + 1.0
        while True:
            try:
                self.loopback.send_multipart([to, h.encode(), bytes(body)], zmq.NOBLOCK)
                self.stats["replied"] += 1
                return
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                    self.stats["undeliverable"] += 1
                    log.warning("reply for request %d dropped: %s", header.request_id, e)
                    return
                time.sleep(0.005)

    # -- interrupts --------------------------------------------------------------------------
    def _drain_interrupts(self):
        for s in self.subs:
            while True:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    h, _ = wire.decode(frames)
                    if h.kind == Kind.INTERRUPT:
                        self.cancelled[(h.server_id, h.request_id)] = time.monotonic()
                except WireError as e:
                    self.stats["malformed"] += 1
                    log.warning("dropped a malformed interrupt: %s", e)
        cutoff = time.monotonic() - 600
        while self.cancelled and (len(self.cancelled) > 65536 or next(iter(self.cancelled.values())) < cutoff):
            self.cancelled.popitem(last=False)

    def _stopping(self):
        return self.stopping.is_set() or (self._stop is not None and self._stop.is_set())

    def _check(self, header):
        if self._stopping():
            raise Interrupted("the worker is shutting down")
        now = time.monotonic()
        if now - self._last_drain >= 0.001:
            self._last_drain = now
            if header.expired():
                raise Interrupted("the request's deadline passed")
            self._drain_interrupts()
        if (header.server_id, header.request_id) in self.cancelled:
            raise Interrupted("the request was cancelled")

    # -- the loop ----------------------------------------------------------------------------
    def _heartbeats(self):
        hb = self.ctx.socket(zmq.DEALER)
        hb.setsockopt(zmq.IDENTITY, self.id + b"#hb")
        hb.setsockopt(zmq.LINGER, 0)
        self._connect(hb, self.upstream_endpoint, self.keys and self.keys.proxy)
        h = Header(Kind.HEARTBEAT, stage=self.stage, flags=wire.BUSY)
        last = 0.0
        try:
            while not self.stopping.wait(min(self.interval / 4, 0.2)):
                if self.busy.is_set() and time.monotonic() - last >= self.interval:
                    try:
                        hb.send_multipart(wire.message(h, [self.id]), zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # no proxy to tell
                    last = time.monotonic()
        finally:
            hb.close()

    def run(self, stop=None):
        """Serves jobs until `stop` (a threading.Event) is set, then tells the proxy it leaves."""
        stop = stop or threading.Event()
        self._stop = stop
        hb = threading.Thread(target=self._heartbeats, name="worker-heartbeat", daemon=True)
        hb.start()
        poller = zmq.Poller()
        poller.register(self.up, zmq.POLLIN)
        if self.down is not None:
            poller.register(self.down, zmq.POLLIN)
        for s in self.subs:
            poller.register(s, zmq.POLLIN)
        self._send_up(Kind.READY, [self.blob])
        try:
            while not stop.is_set():
                wait = max(0.0, min(0.2, self.interval - (time.monotonic() - self.last_sent)))
                ready = dict(poller.poll(wait * 1000))
                if any(s in ready for s in self.subs):
                    self._drain_interrupts()
                if self.down is not None and self.down in ready:
                    self._relay_rejects()
                if self.up in ready:
                    while not stop.is_set():
                        try:
                            frames = self.up.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.last_heard = time.monotonic()
                        self._handle(frames, stop)
                if time.monotonic() - self.last_sent >= self.interval:
                    if time.monotonic() - self.last_heard > self.interval * self.liveness:
                        # The proxy went quiet: say Ready, which registers us with any new one.
                        self.last_heard = time.monotonic()
                        self._send_up(Kind.READY, [self.blob])
                    else:
                        self._send_up(Kind.HEARTBEAT)
        finally:
            self.stopping.set()
            hb.join()
            self._leave()
            for s in [self.up, self.loopback] + self.subs + ([self.down] if self.down is not None else []):
                s.close()

    def _leave(self):
        """Tells the proxy this worker leaves (Disconnect naming the job it took last) and waits
        for its confirmation, at most a heartbeat expiry. A job that crossed the Disconnect (the
        proxy had answered our last Ready with it) arrives before the confirmation: it is answered
        503, since the worker is stopping, and named in a Disconnect of its own (§3)."""
        self._send_up(Kind.DISCONNECT, server_id=self.last_job[0], request_id=self.last_job[1])
        until = time.monotonic() + self.interval * self.liveness
        while True:
            left = until - time.monotonic()
            if left <= 0 or not self.up.poll(left * 1000):
                self.stats["leave_unconfirmed"] += 1
                return
            try:
                header, _ = wire.decode(self.up.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                continue
            except WireError as e:
                self.stats["malformed"] += 1
                log.warning("dropped a malformed message from the proxy: %s", e)
                continue
            if header.kind == Kind.DISCONNECT:
                return  # confirmed: nothing comes after it
            if header.kind == Kind.JOB:
                self.stats["jobs"] += 1
                self.last_job = (header.server_id, header.request_id)
                self._drain_interrupts()
                if (header.server_id, header.request_id) in self.cancelled or header.expired():
                    self.stats["skipped"] += 1
                else:
                    self._reply(header, 503, b"the worker is shutting down")
                self._send_up(Kind.DISCONNECT, server_id=header.server_id, request_id=header.request_id)

    def _relay_rejects(self):
        while True:
            try:
                frames = self.down.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                h, payload = wire.decode(frames)
            except WireError as e:
                self.stats["malformed"] += 1
                log.warning("dropped a malformed message from the next stage: %s", e)
                continue
            if h.kind == Kind.REJECT:
                self._reply(h, h.status or 503, payload[0] if payload else b"overloaded")

    def _handle(self, frames, stop):
        try:
            header, payload = wire.decode(frames)
        except WireError as e:
            self.stats["malformed"] += 1
            log.warning("dropped a malformed job: %s", e)
            self._send_up(Kind.READY, [self.blob])
            return
        if header.kind in (Kind.HEARTBEAT, Kind.DISCONNECT):
            return  # the proxy is alive, or confirms a Disconnect: no job, nothing to answer
        if header.kind != Kind.JOB:
            self.stats["malformed"] += 1
            log.warning("dropped an unexpected %s", header.kind.name)
            self._send_up(Kind.READY, [self.blob])
            return
        self.stats["jobs"] += 1
        self.last_job = (header.server_id, header.request_id)
        self._drain_interrupts()
        if (header.server_id, header.request_id) in self.cancelled or header.expired():
            self.stats["skipped"] += 1
        else:
            self._run_job(header, payload)
        if self.cleanup is not None:
            try:
                self.cleanup()
            except Exception:  # noqa: BLE001 - a failing cleanup must not kill the worker
                log.error("cleanup failed:\n%s", traceback.format_exc())
        if not self._stopping():  # a stopping worker asks for nothing: its Disconnect follows
            self._send_up(Kind.READY, [self.blob])

    def _run_job(self, header, payload):
        job = Job(self, header, payload)
        self.busy.set()
        try:
            outcome = self.work(job)
        except Interrupted as e:
            self.stats["failed"] += 1
            if self._stopping():
                self._reply(header, 503, str(e).encode())
            return
        except Failed as e:
            self.stats["failed"] += 1
            self._reply(header, e.status, e.reason.encode())
            return
        except Exception as e:  # noqa: BLE001 - the work function's failure is the client's 500
            self.stats["failed"] += 1
            log.error("work function failed (request_id=%s):\n%s", job.trace_id, traceback.format_exc())
            self._reply(header, 500, f"the worker failed: {e}".encode())
            return
        finally:
            self.busy.clear()
        if job.heartbeat is not None:
            self.blob = bytes(job.heartbeat)
        if isinstance(outcome, Reply):
            self._reply(header, 0, outcome.body)
        elif isinstance(outcome, Forward):
            if self.down is None:
                self._reply(header, 500, b"the last stage forwarded a job: no next stage")
                return
            h = header.with_kind(Kind.JOB)
            h.stage = self.stage
            h.attempt = 0
            self.down.send_multipart(wire.message(h, outcome.frames))
            self.stats["forwarded"] += 1
        else:
            self._reply(header, 500, b"the work function returned neither Forward nor Reply")
