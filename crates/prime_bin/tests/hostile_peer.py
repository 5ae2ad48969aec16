"""A hostile peer of a prime_server deployment, for tests/hostile.rs.

For a few seconds it tries, with three kinds of bad credentials at once, to
- register as a worker on a stage's proxy (downstream endpoint) and take jobs,
- listen on a front's interrupt endpoint (SUB),
- connect to the front's loopback (ROUTER, as a worker does) and forge replies: for every job it
  is handed, and for request ids 1..N of the server (whose id a spy with a listed key learns from
  the server's heartbeats on the interrupt channel, the worst case of a leaked id).

Credentials: `unknown-key` (a fresh key pair, the right server keys), `no-curve` (plain zmq),
`wrong-server-key` (a listed worker key pair that expects another server key), and
`other-role-key` (the key pair of another stage's workers: the fronts admit it, by design, but
this stage's proxy must not; it forges replies only when spec "other_role_forges" is true:
without a reply token in the header, a listed worker of any stage can answer any request whose
ids it guesses). Without
[security] in the deployment (spec "secure": false) the spy goes plain and `no-curve` is an
ordinary peer: the control case, in which it must get jobs and forge answers.

    python hostile_peer.py SPEC.json

prints what each kind got, one `KIND WHAT COUNT` line each, and `info unknown_key_public KEY`,
`info spy_server_id ID` (or `none`).

Headers come from the Rust side (spec "ready", "heartbeat": hex of the header frames), so the
peer speaks whatever wire version the daemons do; a forged reply is a job's header with kind,
stage, flags and status rewritten (every other byte kept), or the Ready header with the ids.
"""

import json
import struct
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from prime_server.security import Keypair, read_keypair, read_public

JOB, REPLY, HEARTBEAT = 1, 2, 4
FORGED = b"HR" + struct.pack("<HH", 200, 0) + b'{"forged":true}'


def routing_id(server_id):
    return b"ps-%016x" % server_id


def reply_header(template, stage, request_id=None, server_id=None):
    h = bytearray(template)
    h[3] = REPLY
    h[5] = stage
    h[6:8] = b"\0\0"
    h[40:42] = b"\0\0"
    if request_id is not None:
        h[8:16] = struct.pack("<Q", request_id)
        h[16:24] = struct.pack("<Q", server_id)
    return bytes(h)


class Peer:
    """One kind of bad credentials: a would-be worker, a subscriber and a reply forger."""

    def __init__(self, ctx, kind, spec, keys):
        self.kind = kind
        self.got = {"handshakes": 0, "handshake_failures": 0, "from_proxy": 0, "jobs": 0,
                    "interrupt_channel": 0, "forged_sent": 0, "forged_unroutable": 0}
        self.up = ctx.socket(zmq.DEALER)
        self.up.setsockopt(zmq.IDENTITY, b"hostile-" + kind.encode())
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.lb = ctx.socket(zmq.ROUTER)
        self.lb.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.monitors = []
        for sock, ep, server in [(self.up, spec["downstream"], spec["proxy_key"]),
                                 (self.sub, spec["interrupt"], spec["front_key"]),
                                 (self.lb, spec["loopback"], spec["front_key"])]:
            sock.setsockopt(zmq.LINGER, 0)
            self.monitors.append(sock.get_monitor_socket())
            if kind != "no-curve":
                pair = keys[kind]
                sock.curve_secretkey = pair.secret
                sock.curve_publickey = pair.public
                sock.curve_serverkey = keys["stranger"].public if kind == "wrong-server-key" else server
            sock.connect(ep)

    def send_up(self, header):
        try:
            self.up.send(header, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def forge(self, route, header):
        try:
            self.lb.send_multipart([route, header, FORGED], zmq.NOBLOCK)
            self.got["forged_sent"] += 1
        except zmq.ZMQError:  # EHOSTUNREACH: no such peer connected; EAGAIN: none at all
            self.got["forged_unroutable"] += 1

    def poll(self, spec):
        for mon in self.monitors:
            while mon.poll(0):
                event = recv_monitor_message(mon)["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.got["handshakes"] += 1
                elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                               zmq.EVENT_HANDSHAKE_FAILED_AUTH):
                    self.got["handshake_failures"] += 1
        while self.sub.poll(0):
            self.sub.recv_multipart()
            self.got["interrupt_channel"] += 1
        while self.up.poll(0):
            frames = self.up.recv_multipart()
            self.got["from_proxy"] += 1
            if frames and len(frames[0]) >= 24 and frames[0][3] == JOB:
                self.got["jobs"] += 1
                server_id = struct.unpack_from("<Q", frames[0], 16)[0]
                self.forge(routing_id(server_id), reply_header(frames[0], spec["stage"]))
                self.send_up(bytes.fromhex(spec["ready"]))


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    ctx = zmq.Context()
    keys = {"unknown-key": Keypair(*zmq.curve_keypair()), "stranger": Keypair(*zmq.curve_keypair())}
    if spec["secure"]:
        keys["wrong-server-key"] = read_keypair(spec["listed_secret"])
        keys["other-role-key"] = read_keypair(spec["other_role_secret"])
        spec["proxy_key"] = read_public(spec["proxy_public"])
        spec["front_key"] = read_public(spec["front_public"])
    else:  # plain servers: the CURVE kinds fail whatever keys they expect
        keys["wrong-server-key"] = keys["other-role-key"] = Keypair(*zmq.curve_keypair())
        spec["proxy_key"] = spec["front_key"] = keys["stranger"].public
    # The spy: a listed worker key (or plain zmq without [security]) learns the server's id.
    spy = ctx.socket(zmq.SUB)
    spy.setsockopt(zmq.SUBSCRIBE, b"")
    spy.setsockopt(zmq.LINGER, 0)
    if spec["secure"]:
        listed = read_keypair(spec["listed_secret"])
        spy.curve_secretkey, spy.curve_publickey = listed.secret, listed.public
        spy.curve_serverkey = spec["front_key"]
    spy.connect(spec["interrupt"])
    kinds = ["unknown-key", "no-curve", "wrong-server-key", "other-role-key"]
    peers = [Peer(ctx, kind, spec, keys) for kind in kinds]
    ready, heartbeat = bytes.fromhex(spec["ready"]), bytes.fromhex(spec["heartbeat"])
    for p in peers:
        p.send_up(ready)
    server_id = None
    end = time.monotonic() + spec["seconds"]
    last_beat = 0.0
    while time.monotonic() < end:
        for p in peers:
            p.poll(spec)
        while spy.poll(0):
            frames = spy.recv_multipart()
            if len(frames[0]) >= 24 and frames[0][3] == HEARTBEAT:
                server_id = struct.unpack_from("<Q", frames[0], 16)[0]
        if time.monotonic() - last_beat >= 0.1:
            last_beat = time.monotonic()
            for p in peers:
                p.send_up(heartbeat)
                if server_id is not None and (p.kind != "other-role-key" or spec["other_role_forges"]):
                    # Replies to every recent request id of the server, as if its workers.
                    for rid in range(1, spec["request_ids"] + 1):
                        p.forge(routing_id(server_id), reply_header(ready, spec["stage"], rid, server_id))
        time.sleep(0.01)
    for p in peers:
        for what, count in p.got.items():
            print(p.kind, what, count)
    print("info unknown_key_public", keys["unknown-key"].public.decode())
    print("info other_role_key_public", keys["other-role-key"].public.decode())
    print("info spy_server_id", "none" if server_id is None else server_id, flush=True)
    for s in [spy] + [s for p in peers for s in [p.up, p.sub, p.lb] + p.monitors]:
        s.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
