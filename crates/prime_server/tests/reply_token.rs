//! Replies are bound to what was sent: the server takes a reply only if it carries the reply
//! token of the job it sent, so a peer of its loopback that was never handed a job cannot answer
//! it (PROTOCOL.md §2, "Reply token"). Over tcp, as between hosts.

use prime_server::proxy::{Proxy, ProxyConfig};
use prime_server::server::{Server, ServerConfig};
use prime_server::shutdown::Shutdown;
use prime_server::transport::{Context, Kind as SocketKind, Sent, Socket};
use prime_server::wire::{self, Header, Kind, ReplyToken};
use prime_server::worker::{Worker, WorkerConfig};
use prime_server::{Answer, Endpoint, Heartbeat, Outcome, WorkError};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{wait_until, LIMIT};

fn ep(text: &str) -> Endpoint {
    text.parse().expect("a valid endpoint")
}

/// Any free port on the loopback interface.
fn any_port() -> Endpoint {
    ep("tcp://127.0.0.1:*")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A peer of the server's loopback, connected as a worker's is (a ROUTER with
/// `ZMQ_IMMEDIATE`), that was never handed any job.
fn loopback_peer(ctx: &Context, server: &Server) -> Socket {
    let s = ctx.socket(SocketKind::Router).unwrap();
    s.set_router_mandatory(true).unwrap();
    s.set_immediate(true).unwrap();
    s.connect(&server.loopback_endpoint().unwrap()).unwrap();
    s
}

/// Sends a Reply with header `h` to `h.server_id`'s loopback, waiting for the connection.
fn send_reply(peer: &Socket, h: &Header, body: &[u8]) {
    let to = wire::server_routing_id(h.server_id);
    let head = h.encode();
    let t = Instant::now();
    while peer.send([&to[..], &head[..], body]).unwrap() == Sent::Unreachable {
        assert!(
            t.elapsed() < LIMIT,
            "the server's loopback never became reachable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Receives one message from `s`, waiting at most [`LIMIT`].
fn recv(s: &Socket, what: &str) -> Vec<Vec<u8>> {
    let mut got = None;
    wait_until(&format!("no {what}"), || {
        got = s.try_recv().unwrap();
        got.is_some()
    });
    got.unwrap()
}

#[test]
fn a_reply_with_a_wrong_token_is_dropped_as_forged_and_the_real_answer_wins() {
    let ctx = Context::new();
    let shutdown = Shutdown::new();
    let proxy = Proxy::bind(&ctx, ProxyConfig::new(any_port(), any_port())).unwrap();
    let (upstream, downstream) = (
        proxy.upstream_endpoint().unwrap(),
        proxy.downstream_endpoint().unwrap(),
    );
    let proxy = proxy.spawn("proxy".into(), shutdown.clone()).unwrap();
    let server = Server::start(
        &ctx,
        ServerConfig::new(upstream, any_port(), any_port()),
        shutdown.clone(),
    )
    .unwrap();
    // The real worker holds the job until the forgery has been dealt with.
    let (started_tx, started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let worker = Worker::connect(
        &ctx,
        WorkerConfig::new(
            downstream,
            server.loopback_endpoint().unwrap(),
            server.interrupt_endpoint().unwrap(),
        ),
        Box::new(move |job, _| {
            started_tx.send(job.request_id()).unwrap();
            released
                .recv_timeout(LIMIT)
                .map_err(|_| WorkError::Failed {
                    status: 500,
                    reason: "never released".into(),
                })?;
            Ok(Outcome::Reply(b"the real answer".to_vec()))
        }),
    )
    .unwrap();
    let worker = worker.spawn("worker".into(), shutdown.clone()).unwrap();

    let rt = rt();
    let pending = server.submit(vec![b"question".to_vec()], None);
    let id = pending.id();
    assert_eq!(started.recv_timeout(LIMIT).unwrap(), id);
    // The hostile peer knows the server and the request (ids count up from 1, and interrupts
    // name them) but not the token: it guesses one.
    let hostile = loopback_peer(&ctx, &server);
    let mut forged = Header::new(Kind::Reply);
    forged.server_id = server.server_id();
    forged.request_id = id;
    forged.token = ReplyToken([0x5a; wire::TOKEN_LEN]);
    send_reply(&hostile, &forged, b"a forged answer");
    wait_until("the forged reply was not counted", || {
        server.stats().snapshot().forged >= 1
    });
    assert_eq!(server.in_flight(), 1, "the request is still open");
    release.send(()).unwrap();
    let answer = rt.block_on(common::within("no answer", pending));
    assert_eq!(answer, Answer::Reply(b"the real answer".to_vec()));
    let stats = server.stats().snapshot();
    assert_eq!(
        (stats.forged, stats.replied, stats.late, stats.malformed),
        (1, 1, 0, 0)
    );
    shutdown.stop();
    server.join();
    prime_server::component::join(worker);
    prime_server::component::join(proxy);
}

/// A server whose first stage's proxy is played by the test (a ROUTER bound where the proxy's
/// upstream would be), so the test sees each job exactly as the server sent it.
struct BareServer {
    ctx: Context,
    shutdown: Shutdown,
    server: Server,
    proxy: Socket,
}

impl BareServer {
    fn start() -> BareServer {
        let ctx = Context::new();
        let proxy = ctx.socket(SocketKind::Router).unwrap();
        proxy.bind(&any_port()).unwrap();
        let shutdown = Shutdown::new();
        let mut config = ServerConfig::new(proxy.last_endpoint().unwrap(), any_port(), any_port());
        config.heartbeat = Heartbeat {
            interval: Duration::from_millis(20),
            liveness: 3,
        };
        let server = Server::start(&ctx, config, shutdown.clone()).unwrap();
        BareServer {
            ctx,
            shutdown,
            server,
            proxy,
        }
    }

    /// The next job the server sent, skipping its heartbeats.
    fn job(&self) -> Header {
        loop {
            let frames = recv(&self.proxy, "job");
            let (_, h, _) = wire::decode_routed(frames).unwrap();
            if h.kind == Kind::Job {
                return h;
            }
        }
    }

    fn stop(self) {
        self.shutdown.stop();
        self.server.join();
    }
}

#[test]
fn only_a_reply_carrying_the_token_of_the_job_as_sent_is_taken() {
    let bare = BareServer::start();
    let (server, rt) = (&bare.server, rt());
    let first = server.submit(vec![b"one".to_vec()], None);
    let job = bare.job();
    assert_eq!(job.request_id, first.id());
    assert!(!job.token.is_none(), "a job leaves with a token");
    let second = server.submit(vec![b"two".to_vec()], None);
    let other = bare.job();
    assert_ne!(other.token, job.token, "each request draws its own token");

    let peer = loopback_peer(&bare.ctx, server);
    // No token (what a header copied from a published interrupt carries), another request's
    // token, and the right token with one bit flipped: all forged.
    let mut none = job.with_kind(Kind::Reply);
    none.token = ReplyToken::NONE;
    let mut borrowed = job.with_kind(Kind::Reply);
    borrowed.token = other.token;
    let mut flipped = job.with_kind(Kind::Reply);
    flipped.token.0[5] ^= 0x80;
    for (n, h) in [none, borrowed, flipped].iter().enumerate() {
        send_reply(&peer, h, b"forged");
        wait_until("a forged reply was not counted", || {
            server.stats().snapshot().forged > n as u64
        });
    }
    assert_eq!(server.in_flight(), 2, "both requests are still open");
    // A worker's reply copies the whole header of the job it was handed.
    send_reply(&peer, &job.with_kind(Kind::Reply), b"one answered");
    send_reply(&peer, &other.with_kind(Kind::Reply), b"two answered");
    assert_eq!(
        rt.block_on(common::within("no first answer", first)),
        Answer::Reply(b"one answered".to_vec())
    );
    assert_eq!(
        rt.block_on(common::within("no second answer", second)),
        Answer::Reply(b"two answered".to_vec())
    );
    let stats = server.stats().snapshot();
    assert_eq!((stats.forged, stats.replied, stats.malformed), (3, 2, 0));
    bare.stop();
}

#[test]
fn what_the_server_publishes_carries_no_reply_token() {
    let bare = BareServer::start();
    let server = &bare.server;
    let sub = bare.ctx.socket(SocketKind::Sub).unwrap();
    sub.connect(&server.interrupt_endpoint().unwrap()).unwrap();
    // Once a heartbeat arrives the subscription is in place: nothing published later is missed.
    let (heartbeat, _) = wire::decode(recv(&sub, "server heartbeat")).unwrap();
    assert_eq!(heartbeat.kind, Kind::Heartbeat);
    assert!(heartbeat.token.is_none());
    // A request whose client goes away (the Pending is dropped) is interrupted, and one whose
    // deadline passes.
    let cancelled = server.submit(vec![b"gone".to_vec()], None);
    let cancelled_id = cancelled.id();
    let job = bare.job();
    assert!(!job.token.is_none());
    drop(cancelled);
    let expiring = server.submit(vec![b"slow".to_vec()], Some(Duration::from_millis(50)));
    let expiring_id = expiring.id();
    assert!(!bare.job().token.is_none());
    let mut interrupted = Vec::new();
    while interrupted.len() < 2 {
        let (h, _) = wire::decode(recv(&sub, "interrupt")).unwrap();
        assert!(h.token.is_none(), "{:?} published with a token", h.kind);
        if h.kind == Kind::Interrupt {
            interrupted.push(h.request_id);
        }
    }
    assert_eq!(interrupted, [cancelled_id, expiring_id]);
    assert!(matches!(rt().block_on(expiring), Answer::Failed(f) if f.status == 504));
    bare.stop();
}

/// The sockets around one real worker, played by the test over tcp: its stage's proxy, the next
/// stage's proxy, and a server's loopback and interrupt channel.
struct AroundAWorker {
    proxy: Socket,
    next: Socket,
    loopback: Socket,
    _interrupts: Socket,
    /// The worker's routing id at its proxy.
    id: Vec<u8>,
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<()>,
}

/// The server id of the server the test plays.
const SERVER: u64 = 0x5e4e4;

impl AroundAWorker {
    fn start(heartbeat: Heartbeat) -> AroundAWorker {
        let ctx = Context::new();
        let bound = |kind| {
            let s = ctx.socket(kind).unwrap();
            if kind == SocketKind::Router {
                s.set_router_mandatory(true).unwrap();
            }
            s
        };
        let (proxy, next, loopback) = (
            bound(SocketKind::Router),
            bound(SocketKind::Router),
            bound(SocketKind::Router),
        );
        loopback
            .set_routing_id(&wire::server_routing_id(SERVER))
            .unwrap();
        let interrupts = bound(SocketKind::Pub);
        for s in [&proxy, &next, &loopback, &interrupts] {
            s.bind(&any_port()).unwrap();
        }
        let mut config = WorkerConfig::new(
            proxy.last_endpoint().unwrap(),
            loopback.last_endpoint().unwrap(),
            interrupts.last_endpoint().unwrap(),
        )
        .downstream(next.last_endpoint().unwrap());
        config.heartbeat = heartbeat;
        let work = Box::new(
            |job: &mut prime_server::Job, _: &prime_server::Interrupt<'_>| match job
                .frames
                .concat()
                .as_slice()
            {
                b"reply" => Ok(Outcome::Reply(b"replied".to_vec())),
                b"refuse" => Err(WorkError::Failed {
                    status: 422,
                    reason: "refused".into(),
                }),
                b"panic" => panic!("the work function panics (on purpose)"),
                _ => Ok(Outcome::Forward(vec![b"onwards".to_vec()])),
            },
        );
        let worker = Worker::connect(&ctx, config, work).unwrap();
        let shutdown = Shutdown::new();
        let thread = worker.spawn("worker".into(), shutdown.clone()).unwrap();
        let ready = recv(&proxy, "Ready from the worker");
        let id = ready[0].clone();
        AroundAWorker {
            proxy,
            next,
            loopback,
            _interrupts: interrupts,
            id,
            shutdown,
            thread,
        }
    }

    /// Hands the worker a job from [`SERVER`] whose one frame is `what`.
    fn hand(&self, request_id: u64, token: ReplyToken, what: &[u8]) -> Header {
        let mut h = Header::new(Kind::Job);
        (h.request_id, h.server_id, h.attempt) = (request_id, SERVER, 1);
        h.arrival_us = wire::now_us();
        h.token = token;
        let head = h.encode();
        assert_eq!(
            self.proxy.send([&self.id[..], &head[..], what]).unwrap(),
            Sent::Yes
        );
        h
    }

    /// The next Reply at the server: its header and body.
    fn reply(&self) -> (Header, Vec<u8>) {
        let (_, h, mut body) = wire::decode_routed(recv(&self.loopback, "reply")).unwrap();
        assert_eq!(h.kind, Kind::Reply);
        (h, body.pop().unwrap())
    }

    /// The next job at the next stage's proxy (its sender and header), answering the worker's
    /// heartbeats meanwhile as `incarnation` if there is one.
    fn forwarded(&self, incarnation: Option<u64>) -> (Vec<u8>, Header) {
        loop {
            let (sender, h, _) = wire::decode_routed(recv(&self.next, "forwarded job")).unwrap();
            match (h.kind, incarnation) {
                (Kind::Job, _) => return (sender, h),
                (Kind::Heartbeat, Some(id)) => self.alive(&sender, id),
                _ => {}
            }
        }
    }

    /// Answers a heartbeat of the worker's at the next stage's proxy.
    fn alive(&self, sender: &[u8], incarnation: u64) {
        let mut h = Header::new(Kind::Heartbeat);
        h.server_id = incarnation;
        self.next.send([sender, &h.encode()[..]]).unwrap();
    }

    fn stop(self) {
        self.shutdown.stop();
        prime_server::component::join(self.thread);
    }
}

#[test]
fn a_worker_copies_the_reply_token_into_replies_forwards_and_relayed_rejects() {
    let around = AroundAWorker::start(Heartbeat::default());
    let token = |n: u8| ReplyToken([n, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0]);
    for (n, what, status) in [(1, "reply", 0), (2, "refuse", 422), (3, "panic", 500)] {
        around.hand(n, token(n as u8), what.as_bytes());
        let (h, _) = around.reply();
        assert_eq!(
            (h.request_id, h.status, h.token),
            (n, status, token(n as u8))
        );
    }
    // Forwarded: the next stage gets the token with the job; and when its proxy refuses the job,
    // the worker's 503 to the server carries it too.
    around.hand(4, token(4), b"forward");
    let (sender, job) = around.forwarded(None);
    assert_eq!((job.request_id, job.token), (4, token(4)));
    let mut reject = job.with_kind(Kind::Reject);
    reject.status = 503;
    around
        .next
        .send([&sender[..], &reject.encode()[..], b"queue full"])
        .unwrap();
    let (h, body) = around.reply();
    assert_eq!((h.request_id, h.status, h.token), (4, 503, token(4)));
    assert_eq!(body, b"queue full");
    around.stop();
}

#[test]
fn a_worker_answering_for_a_next_stage_proxy_that_went_away_keeps_the_token() {
    let around = AroundAWorker::start(Heartbeat {
        interval: Duration::from_millis(20),
        liveness: 3,
    });
    let token = ReplyToken([9, 8, 7, 6, 5, 4]);
    around.hand(1, token, b"forward");
    let (_, job) = around.forwarded(Some(1));
    assert_eq!(job.token, token);
    // Heard after the job went to it, then silent: the job is taken as lost with the proxy.
    let (sender, h, _) = loop {
        let m = wire::decode_routed(recv(&around.next, "heartbeat")).unwrap();
        if m.1.kind == Kind::Heartbeat {
            break m;
        }
    };
    assert_eq!(h.kind, Kind::Heartbeat);
    around.alive(&sender, 1);
    let (h, _) = around.reply();
    assert_eq!((h.request_id, h.status, h.token), (1, 503, token));
    around.stop();
}
