//! Restarts and deaths in a multi-process deployment (issue 10), with real processes over ipc:
//! a front restarted with its workers untouched, replies to a server that is gone, the drain
//! race of a leaving worker, and a dead front whose jobs must not hold up another front.
//! Heartbeats are fast here (200 ms, 3 misses), except where a test plays the proxy.

mod common;
use common::*;
use prime_server::transport::{Context, Kind, Socket};
use prime_server::wire::{self, Header};
use prime_server::Endpoint;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Asks `addr` for `path` on a fresh connection; the status and body, or `None` if the
/// connection failed or closed.
fn ask(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(LIMIT)).ok()?;
    http(&mut s, &get(path)).map(|(status, _, body)| (status, body))
}

/// Whether `path` was answered 200 with its own echo (never another request's answer).
fn echoed(addr: SocketAddr, path: &str) -> bool {
    match ask(addr, path) {
        Some((200, body)) => {
            assert!(
                body.starts_with(&format!("GET {path} ")),
                "{path} was answered with another request's echo: {body}"
            );
            true
        }
        _ => false,
    }
}

/// Restarts the front `name` (after `kill`ing it with SIGKILL or SIGTERM) and checks that the
/// service comes back with the workers untouched, answering every request with its own echo.
fn front_restart(signal: &str) {
    let dir = temp_dir(&format!("front-restart{signal}"));
    let cfg = echo_topology(&dir, 1, 30);
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let w = worker(c);
    let (mut f, addr) = front(c, "s0");
    wait_until("the deployment never answered", || echoed(addr, "/before"));
    f.signal(signal);
    f.wait_exit(LIMIT);
    let (f2, addr2) = front(c, "s0");
    let restarted = Instant::now();
    wait_until("service never came back after the front restarted", || {
        echoed(addr2, "/after")
    });
    let back_in = restarted.elapsed();
    // Under load: every answer is the request's own.
    let clients: Vec<_> = (0..3)
        .map(|c| {
            std::thread::spawn(move || {
                (0..20)
                    .filter(|k| echoed(addr2, &format!("/c{c}-{k}")))
                    .count()
            })
        })
        .collect();
    let ok: usize = clients.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        ok, 60,
        "after the restart every request must be answered 200"
    );
    eprintln!("front {signal}: service back {back_in:?} after the new front listened");
    f2.stop();
    w.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_front_killed_and_restarted_serves_again_with_its_workers_untouched() {
    front_restart("-KILL");
}

#[test]
fn a_front_stopped_and_restarted_serves_again_with_its_workers_untouched() {
    front_restart("-TERM");
}

/// A DEALER connected to `endpoint` in a context of the test's own.
fn dealer(ctx: &Context, endpoint: &str) -> Socket {
    let s = ctx.socket(Kind::Dealer).unwrap();
    s.connect(&endpoint.parse::<Endpoint>().unwrap()).unwrap();
    s
}

/// 40 jobs in the name of a server nobody runs reach the one worker thread, then one in the name
/// of a server the test plays (s1 of the topology: the worker connects to its loopback). When
/// each reply with nowhere to go blocked the worker for a second, the last waited 40 s.
#[test]
fn replies_to_a_server_that_does_not_exist_do_not_hold_up_the_worker() {
    let dir = temp_dir("gone-server");
    let cfg = echo_topology(&dir, 2, 30);
    let c = cfg.to_str().unwrap();
    let ctx = Context::new();
    let live_server = 0x5e1f_u64;
    let lb1 = ctx.socket(Kind::Router).unwrap();
    lb1.set_routing_id(&wire::server_routing_id(live_server))
        .unwrap();
    lb1.bind(&format!("ipc://{}/lb1", dir.display()).parse().unwrap())
        .unwrap();
    let p = proxy(c);
    let w = worker(c);
    let (f, addr) = front(c, "s0");
    wait_until("the deployment never answered", || echoed(addr, "/before"));
    // One connection carries them all, so they reach the proxy, and the worker, in order.
    let rogue = dealer(&ctx, &format!("ipc://{}/in", dir.display()));
    let job = |server_id: u64, request_id: u64| {
        let mut h = Header::new(wire::Kind::Job);
        (h.server_id, h.request_id) = (server_id, request_id);
        wire::message(&h, [b"ping".to_vec()])
    };
    for id in 1..=40u64 {
        rogue.send(job(0xdead_beef, id)).unwrap();
    }
    let t = Instant::now();
    rogue.send(job(live_server, 41)).unwrap();
    let reply = recv(&lb1).expect("the reply to the live server never came");
    let took = t.elapsed();
    let (h, _) = wire::decode(reply[1..].to_vec()).unwrap();
    assert_eq!((h.kind, h.request_id), (wire::Kind::Reply, 41));
    assert!(
        took < Duration::from_secs(10),
        "the live server's reply waited {took:?} behind 40 replies to nobody"
    );
    assert!(
        echoed(addr, "/after"),
        "the front's request was not answered"
    );
    f.stop();
    w.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits for a message on `s` (a ROUTER: the sender's id first), up to [`LIMIT`].
fn recv(s: &Socket) -> Option<Vec<Vec<u8>>> {
    let until = Instant::now() + LIMIT;
    while Instant::now() < until {
        if let Some(m) = s.try_recv().unwrap() {
            return Some(m);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// The drain race. A worker's last Ready is answered with a job while its Disconnect is on the
/// way (here a proxy played by the test hands the job over only after the Disconnect arrived,
/// and slowly: 800 ms, longer than the grace a leaving worker used to give). The job is the
/// worker's: it must answer it, then say Disconnect naming it, before it exits.
#[test]
fn a_draining_worker_answers_the_job_handed_to_it_on_its_last_ready() {
    let dir = temp_dir("drain-race");
    let ctx = Context::new();
    let ep =
        |name: &str| -> Endpoint { format!("ipc://{}/{name}", dir.display()).parse().unwrap() };
    let fake_proxy = ctx.socket(Kind::Router).unwrap();
    fake_proxy.bind(&ep("out")).unwrap();
    let server_id = 77u64;
    let loopback = ctx.socket(Kind::Router).unwrap();
    loopback
        .set_routing_id(&wire::server_routing_id(server_id))
        .unwrap();
    loopback.bind(&ep("lb")).unwrap();
    let interrupts = ctx.socket(Kind::Pub).unwrap();
    interrupts.bind(&ep("int")).unwrap();
    let (out, lb, int) = (ep("out"), ep("lb"), ep("int"));
    let mut w = Proc::start(
        "prime_workerd",
        &[
            out.as_str(),
            "-",
            lb.as_str(),
            int.as_str(),
            "--work",
            "echo",
            "--workers",
            "1",
            "--drain-seconds",
            "20",
        ],
    );
    let ready = recv(&fake_proxy).expect("the worker never said Ready");
    let worker_id = ready[0].clone();
    let (h, _) = wire::decode(ready[1..].to_vec()).unwrap();
    assert_eq!(h.kind, wire::Kind::Ready);
    w.signal("-TERM");
    let disconnect = loop {
        let m = recv(&fake_proxy).expect("the draining worker never said Disconnect");
        let (h, _) = wire::decode(m[1..].to_vec()).unwrap();
        if h.kind == wire::Kind::Disconnect {
            break h;
        }
    };
    assert_eq!((disconnect.server_id, disconnect.request_id), (0, 0));
    std::thread::sleep(Duration::from_millis(800));
    // The job the proxy handed over on the Ready, then its confirmation of the leave.
    let mut job = Header::new(wire::Kind::Job);
    (job.server_id, job.request_id, job.attempt) = (server_id, 5, 1);
    let mut frames = vec![worker_id.clone()];
    frames.extend(wire::message(&job, [b"late job".to_vec()]));
    fake_proxy.send(frames).unwrap();
    let ack = Header::new(wire::Kind::Disconnect).encode();
    fake_proxy.send([&worker_id[..], &ack[..]]).unwrap();
    let reply = recv(&loopback).expect("the job handed to the leaving worker was not answered");
    let (h, payload) = wire::decode(reply[1..].to_vec()).unwrap();
    assert_eq!((h.kind, h.request_id, h.status), (wire::Kind::Reply, 5, 0));
    assert_eq!(payload, vec![b"late job".to_vec()]);
    // And it says it is done with that job, so a proxy forgets it instead of handing it on.
    let done = loop {
        let m = recv(&fake_proxy).expect("the worker never said it was done with the job");
        let (h, _) = wire::decode(m[1..].to_vec()).unwrap();
        if h.kind == wire::Kind::Disconnect {
            break h;
        }
    };
    assert_eq!((done.server_id, done.request_id), (server_id, 5));
    fake_proxy.send([&worker_id[..], &ack[..]]).unwrap();
    let status = w.wait_exit(LIMIT);
    assert!(status.success(), "the worker exited with {status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Two fronts share one worker thread. The first sends it ten 3-second jobs and dies: once its
/// heartbeats stop, the worker drops its jobs (the one it works on and those still queued), so
/// the second front's request is not held up behind 30 s of work nobody waits for.
#[test]
fn a_dead_fronts_jobs_do_not_hold_up_another_front() {
    let dir = temp_dir("dead-front");
    let cfg = echo_topology(&dir, 2, 60);
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let w = worker(c);
    let (mut f0, addr0) = front(c, "s0");
    let (f1, addr1) = front(c, "s1");
    wait_until("s0 never answered", || echoed(addr0, "/s0-before"));
    wait_until("s1 never answered", || echoed(addr1, "/s1-before"));
    let _doomed: Vec<_> = (0..10)
        .map(|k| std::thread::spawn(move || ask(addr0, &format!("/slow-{k}?sleep=3000"))))
        .collect();
    // Setting the scene only: the slow requests reach the worker and the proxy's queue.
    std::thread::sleep(Duration::from_millis(500));
    f0.signal("-KILL");
    f0.wait_exit(LIMIT);
    let t = Instant::now();
    assert!(echoed(addr1, "/s1-after"), "s1's request was not answered");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "s1's request waited {took:?} behind the dead front's jobs"
    );
    f1.stop();
    w.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// The first stage's proxy is killed holding queued jobs (one worker thread works one 3 s job,
/// five wait in the proxy's queue). The front notices the proxy's silence within its heartbeat
/// liveness, gives every open request as long again to be answered, then answers it 503 saying
/// why: within seconds, not at the 60 s deadline. A restarted proxy serves again.
#[test]
fn a_killed_proxys_queued_jobs_are_answered_within_seconds_not_at_their_deadline() {
    let dir = temp_dir("dead-proxy");
    let cfg = echo_topology(&dir, 1, 60);
    let c = cfg.to_str().unwrap();
    let mut p = proxy(c);
    let w = worker(c);
    let (f, addr) = front(c, "s0");
    wait_until("the deployment never answered", || echoed(addr, "/before"));
    let waiting: Vec<_> = (0..6)
        .map(|k| {
            std::thread::spawn(move || {
                let path = format!("/held-{k}?sleep=3000");
                (path.clone(), ask(addr, &path))
            })
        })
        .collect();
    // Setting the scene only: the requests reach the worker and the proxy's queue.
    std::thread::sleep(Duration::from_millis(500));
    p.signal("-KILL");
    p.wait_exit(LIMIT);
    let t = Instant::now();
    for h in waiting {
        let (path, answer) = h.join().unwrap();
        match answer {
            Some((200, body)) => assert!(body.starts_with(&format!("GET {path} ")), "{body}"),
            Some((503, body)) => assert!(body.contains("proxy went away"), "{path}: {body}"),
            other => panic!("{path}: {other:?}"),
        }
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the requests the dead proxy held were answered after {took:?}"
    );
    eprintln!("a dead proxy's requests were all answered {took:?} after it died");
    let p2 = proxy(c);
    wait_until("service never resumed after the proxy restarted", || {
        echoed(addr, "/after")
    });
    f.stop();
    w.stop();
    p2.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// A later stage's proxy is killed holding queued jobs: the prime demo's test stage has one
/// worker thread working a large prime (seconds of trial division) and four more waiting in its
/// proxy's queue. The parse stage's worker, which forwarded them, notices the proxy's silence
/// and, one expiry later, answers each 503 through the loopback: within seconds, not at the
/// 60 s deadline. A restarted proxy serves again.
#[test]
fn a_later_stages_killed_proxys_queued_jobs_are_answered_within_seconds() {
    let dir = temp_dir("dead-stage2-proxy");
    let d = dir.display();
    let text = format!(
        "drain_seconds = 2\n[heartbeat]\ninterval_ms = 200\nliveness = 3\n\
         [[server]]\nlisten = \"127.0.0.1:{port}\"\nloopback = \"ipc://{d}/lb\"\n\
         interrupt = \"ipc://{d}/int\"\ntimeout_seconds = 60\n\
         [[stage]]\nname = \"parse\"\nwork = \"prime_parse\"\nupstream = \"ipc://{d}/parse_in\"\n\
         downstream = \"ipc://{d}/parse_out\"\nworkers = 1\n\
         [[stage]]\nname = \"test\"\nwork = \"prime_test\"\nupstream = \"ipc://{d}/test_in\"\n\
         downstream = \"ipc://{d}/test_out\"\nworkers = 1\n",
        port = free_port(),
    );
    let cfg = dir.join("prime.toml");
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let stage = |name: &str, bin: &str| Proc::start(bin, &["--config", c, "--stage", name]);
    let parse_proxy = stage("parse", "prime_proxyd");
    let mut test_proxy = stage("test", "prime_proxyd");
    let parse_worker = stage("parse", "prime_workerd");
    let test_worker = stage("test", "prime_workerd");
    let (f, addr) = front(c, "front");
    let prime = |addr, n: u64| ask(addr, &format!("/is_prime?possible_prime={n}"));
    wait_until("the deployment never answered", || {
        matches!(prime(addr, 7), Some((200, _)))
    });
    // The largest prime below 10^18: about a billion trial divisions.
    let big = 999_999_999_999_999_989u64;
    let waiting: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || prime(addr, big)))
        .collect();
    // Setting the scene only: the jobs reach the test stage's worker and its proxy's queue.
    std::thread::sleep(Duration::from_millis(500));
    test_proxy.signal("-KILL");
    test_proxy.wait_exit(LIMIT);
    let t = Instant::now();
    for h in waiting {
        match h.join().unwrap() {
            Some((200, body)) => assert!(body.contains("\"is_prime\":true"), "{body}"),
            Some((503, body)) => assert!(body.contains("proxy went away"), "{body}"),
            other => panic!("{other:?}"),
        }
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the requests the dead proxy held were answered after {took:?}"
    );
    eprintln!("a dead stage-2 proxy's requests were all answered {took:?} after it died");
    let test_proxy = stage("test", "prime_proxyd");
    wait_until(
        "service never resumed after the proxy restarted",
        || matches!(prime(addr, 7), Some((200, body)) if body.contains("\"is_prime\":true")),
    );
    f.stop();
    for p in [parse_worker, test_worker, parse_proxy, test_proxy] {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}
