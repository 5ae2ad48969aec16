//! The butterfly end to end over real zmq sockets: stages, transports, short-circuit, interrupts,
//! deadlines, load balancing, affinity, malformed input and panics.

use prime_server::pipeline::{Pipeline, Running, Transport};
use prime_server::proxy::{Proxy, ProxyConfig};
use prime_server::server::{Server, ServerConfig};
use prime_server::shutdown::Shutdown;
use prime_server::transport::{Context, Kind as SocketKind};
use prime_server::worker::{Worker, WorkerConfig};
use prime_server::{Answer, Endpoint, Failure};
use prime_server::{Interrupted, Outcome, WorkError};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A test's endpoint, which it knows to be valid.
fn ep(text: &str) -> Endpoint {
    text.parse().expect("a valid endpoint")
}

mod common;
use common::{wait_until, within, LIMIT};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        prime_server::server::random_id()
    )
}

/// The two ways of joining stages inside one process: zmq (proxies) and in-memory queues.
const IN_PROCESS: [Transport; 2] = [Transport::Inproc, Transport::Memory];

/// An empty pipeline over `transport`, with a name no other test uses.
fn pipeline_over(name: &str, transport: Transport) -> Pipeline {
    let mut p = Pipeline::new(&unique(name));
    p.transport(transport);
    p
}

/// Each stage appends its number to the single frame; the last one replies.
fn chain(stages: usize, transport: Transport, name: &str) -> Running {
    let mut p = Pipeline::new(&unique(name));
    p.transport(transport);
    for i in 1..=stages {
        let last = i == stages;
        p.stage(2, move |job, _| {
            let mut body = job.frames.concat();
            body.extend_from_slice(format!("/{i}").as_bytes());
            Ok(if last {
                Outcome::Reply(body)
            } else {
                Outcome::Forward(vec![body])
            })
        });
    }
    p.start().unwrap()
}

fn ask(running: &Running, body: &[u8]) -> Answer {
    rt().block_on(running.server.submit(vec![body.to_vec()], None))
}

#[test]
fn a_job_crosses_one_two_and_three_stages_over_every_transport() {
    let dir = std::env::temp_dir().join(unique("ps-ipc"));
    std::fs::create_dir_all(&dir).unwrap();
    let transports = [
        Transport::Memory,
        Transport::Inproc,
        Transport::Ipc(dir.clone()),
        Transport::Tcp("127.0.0.1".into()),
    ];
    for transport in transports {
        for stages in 1..=3 {
            let running = chain(stages, transport.clone(), "chain");
            let want: String = (1..=stages).map(|i| format!("/{i}")).collect();
            for k in 0..20 {
                let body = format!("job{k}");
                assert_eq!(
                    ask(&running, body.as_bytes()),
                    Answer::Reply(format!("{body}{want}").into_bytes()),
                    "{transport:?} with {stages} stages"
                );
            }
            running.stop();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn many_concurrent_requests_all_get_their_own_answer() {
    for transport in IN_PROCESS {
        let running = chain(2, transport.clone(), "concurrent");
        let answers = ask_all(&running, (0..2000).map(|k| format!("{k}")));
        for (k, a) in answers.into_iter().enumerate() {
            assert_eq!(
                a,
                Answer::Reply(format!("{k}/1/2").into_bytes()),
                "{transport:?}"
            );
        }
        assert_eq!(running.server.in_flight(), 0);
        running.stop();
    }
}

/// Waits until `n` workers of stage `stage` (0-based) have registered as idle with their proxy.
fn wait_idle(running: &Running, stage: usize, n: u64) {
    wait_until_idle(&running.stage_stats[stage], n);
}

/// Submits one request per body, all at once, and returns the answers in order.
fn ask_all(running: &Running, bodies: impl IntoIterator<Item = String>) -> Vec<Answer> {
    rt().block_on(async {
        let futs: Vec<_> = bodies
            .into_iter()
            .map(|b| running.server.submit(vec![b.into_bytes()], None))
            .collect();
        futures_join(futs).await
    })
}

async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futs.len());
    for f in futs {
        out.push(f.await);
    }
    out
}

#[test]
fn stage_one_replies_early_and_stage_two_never_sees_the_job() {
    for transport in IN_PROCESS {
        let mut p = pipeline_over("early", transport);
        p.stage(1, |job, _| {
            if job.frames[0] == b"bad" {
                Err(WorkError::Failed {
                    status: 400,
                    reason: "bad input".into(),
                })
            } else if job.frames[0] == b"cached" {
                Ok(Outcome::Reply(b"from cache".to_vec()))
            } else {
                Ok(Outcome::Forward(job.frames.clone()))
            }
        });
        p.stage(1, |_, _| Ok(Outcome::Reply(b"computed".to_vec())));
        let running = p.start().unwrap();
        assert_eq!(
            ask(&running, b"bad"),
            Answer::Failed(Failure::new(400, "bad input"))
        );
        assert_eq!(
            ask(&running, b"cached"),
            Answer::Reply(b"from cache".to_vec())
        );
        assert_eq!(running.worker_stats[1][0].snapshot().jobs, 0);
        assert_eq!(ask(&running, b"other"), Answer::Reply(b"computed".to_vec()));
        assert_eq!(running.worker_stats[1][0].snapshot().jobs, 1);
        running.stop();
    }
}

/// A stage whose work loops on the interrupt check and reports why it stopped.
fn looping_pipeline(
    name: &str,
    timeout: Option<Duration>,
    transport: Transport,
) -> (Running, mpsc::Receiver<&'static str>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let tx = std::sync::Arc::new(tx);
    let mut p = Pipeline::new(&unique(name));
    p.timeout = timeout;
    p.transport(transport);
    p.stage(1, move |_, interrupt| {
        let tx = tx.lock().unwrap().clone();
        tx.send("started").unwrap();
        loop {
            if let Err(why) = interrupt.check() {
                tx.send(match why {
                    Interrupted::Cancelled => "cancelled",
                    Interrupted::DeadlinePassed => "deadline",
                    Interrupted::ShuttingDown => "shutdown",
                    Interrupted::ServerGone => "server gone",
                })
                .unwrap();
                return Err(why.into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    (p.start().unwrap(), rx)
}

#[test]
fn client_going_away_interrupts_a_long_job() {
    for transport in IN_PROCESS {
        let (running, rx) = looping_pipeline("cancel", None, transport.clone());
        let rt = rt();
        let pending = running.server.submit(vec![b"x".to_vec()], None);
        assert_eq!(rx.recv_timeout(LIMIT), Ok("started"));
        drop(pending);
        // No deadline is set, so only the cancel can stop the work.
        assert_eq!(rx.recv_timeout(LIMIT), Ok("cancelled"), "{transport:?}");
        let stats = running.server.stats();
        assert_eq!(stats.snapshot().cancelled, 1);
        // The worker is free again and serves the next request (which we let time out quickly).
        let a = rt.block_on(
            running
                .server
                .submit(vec![b"y".to_vec()], Some(Duration::from_millis(100))),
        );
        assert_eq!(
            a,
            Answer::Failed(Failure::new(504, "the request's deadline passed"))
        );
        running.stop();
    }
}

#[test]
fn a_passed_deadline_answers_504_and_interrupts_the_worker() {
    for transport in IN_PROCESS {
        let (running, rx) = looping_pipeline(
            "deadline",
            Some(Duration::from_millis(300)),
            transport.clone(),
        );
        let started = Instant::now();
        // The work never ends by itself: without the deadline there is no answer at all.
        let answer = rt().block_on(within(
            "no answer: the 300 ms deadline was not enforced",
            running.server.submit(vec![b"x".to_vec()], None),
        ));
        let took = started.elapsed();
        assert_eq!(
            answer,
            Answer::Failed(Failure::new(504, "the request's deadline passed"))
        );
        assert!(
            took >= Duration::from_millis(300),
            "answered early: {took:?}"
        );
        assert_eq!(rx.recv_timeout(LIMIT), Ok("started"));
        let why = rx.recv_timeout(LIMIT).unwrap();
        assert!(why == "cancelled" || why == "deadline", "{why}");
        assert_eq!(running.server.stats().snapshot().timeouts, 1);
        running.stop();
    }
}

#[test]
fn stopping_interrupts_a_long_job_and_every_thread_ends() {
    for transport in IN_PROCESS {
        let (running, rx) = looping_pipeline("stop", None, transport);
        let rt = rt();
        let pending = running.server.submit(vec![b"x".to_vec()], None);
        assert_eq!(rx.recv_timeout(LIMIT), Ok("started"));
        let server = running.server.clone();
        // `stop` joins every thread, so it returns only if the looping job was interrupted.
        let (stopped_tx, stopped_rx) = mpsc::channel();
        std::thread::spawn(move || {
            running.stop();
            let _ = stopped_tx.send(());
        });
        assert!(
            stopped_rx.recv_timeout(LIMIT).is_ok(),
            "stop() did not return: a thread did not end"
        );
        assert_eq!(rx.recv_timeout(LIMIT), Ok("shutdown"));
        let a = rt.block_on(pending);
        assert!(
            matches!(a, Answer::Failed(Failure { status: 503, .. })),
            "{a:?}"
        );
        // A stopped server answers at once.
        let a = rt.block_on(server.submit(vec![b"late".to_vec()], None));
        assert!(
            matches!(a, Answer::Failed(Failure { status: 503, .. })),
            "{a:?}"
        );
    }
}

#[test]
fn the_proxy_never_hands_a_job_to_a_busy_worker() {
    for transport in IN_PROCESS {
        let mut p = pipeline_over("busy", transport);
        // Worker pool of 2 where the work takes 20 ms (slow) or 0 ms depending on the payload; with
        // pull-based balancing both workers serve and neither ever gets a job while busy.
        p.stage(2, |job, _| {
            if job.frames[0].starts_with(b"slow") {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Outcome::Reply(job.frames[0].clone()))
        });
        let running = p.start().unwrap();
        wait_idle(&running, 0, 2);
        let answers = ask_all(
            &running,
            (0..60).map(|k| {
                if k % 3 == 0 {
                    format!("slow{k}")
                } else {
                    format!("fast{k}")
                }
            }),
        );
        assert!(answers.iter().all(|a| matches!(a, Answer::Reply(_))));
        let stats = &running.worker_stats[0];
        let jobs: Vec<u64> = stats.iter().map(|s| s.snapshot().jobs).collect();
        assert_eq!(jobs.iter().sum::<u64>(), 60);
        for s in stats {
            assert_eq!(s.snapshot().jobs_while_busy, 0);
        }
        assert!(jobs.iter().all(|&j| j > 0), "{jobs:?}");
        let proxy = &running.stage_stats[0];
        assert_eq!(proxy.snapshot().dispatched, 60);
        running.stop();
    }
}

/// Holds work functions until the test opens it, so a job stays in a worker's hands exactly as
/// long as a test needs, however fast or slow the machine.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn new() -> std::sync::Arc<Gate> {
        std::sync::Arc::default()
    }

    /// Waits until the gate is open (at most twice [`LIMIT`], so that a failing test still ends).
    fn pass(&self) {
        let open = self.open.lock().unwrap();
        let _ = self
            .opened
            .wait_timeout_while(open, 2 * LIMIT, |open| !*open)
            .unwrap();
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

#[test]
fn a_slow_worker_does_not_hold_up_jobs_behind_it() {
    for transport in IN_PROCESS {
        // One worker is held by a long job until the end; every other job must go to the other
        // worker meanwhile. Queued behind the held one, none would be answered before the gate
        // opens.
        let gate = Gate::new();
        let (started_tx, started_rx) = mpsc::channel();
        let started_tx = std::sync::Arc::new(std::sync::Mutex::new(started_tx));
        let mut p = pipeline_over("hol", transport);
        let g = gate.clone();
        p.stage(2, move |job, _| {
            if job.frames[0] == b"long" {
                let _ = started_tx.lock().unwrap().send(());
                g.pass();
            }
            Ok(Outcome::Reply(job.frames[0].clone()))
        });
        let running = p.start().unwrap();
        wait_idle(&running, 0, 2);
        let rt = rt();
        let long = rt.spawn(running.server.submit(vec![b"long".to_vec()], None));
        started_rx
            .recv_timeout(LIMIT)
            .expect("the long job never started");
        for k in 0..20 {
            let a = rt.block_on(within(
                &format!("job {k} waits behind the busy worker"),
                running
                    .server
                    .submit(vec![format!("{k}").into_bytes()], None),
            ));
            assert_eq!(a, Answer::Reply(format!("{k}").into_bytes()));
        }
        gate.open();
        assert_eq!(rt.block_on(long).unwrap(), Answer::Reply(b"long".to_vec()));
        running.stop();
    }
}

/// A proxy bound at `inproc://NAME-up` and `inproc://NAME-down`, not yet running.
fn inproc_proxy(ctx: &Context, name: &str) -> Proxy {
    Proxy::bind(
        ctx,
        ProxyConfig::new(
            ep(&format!("inproc://{name}-up")),
            ep(&format!("inproc://{name}-down")),
        ),
    )
    .unwrap()
}

/// A proxy and a server core over inproc, assembled by hand (for custom workers and choose
/// functions). The proxy is returned unstarted so a test can configure it.
struct Manual {
    ctx: Context,
    name: String,
    shutdown: Shutdown,
    server: prime_server::Server,
}

impl Manual {
    fn new(tag: &str) -> (Manual, Proxy) {
        let ctx = Context::new();
        let name = unique(tag);
        let shutdown = Shutdown::new();
        let proxy = inproc_proxy(&ctx, &name);
        let server = Server::start(
            &ctx,
            ServerConfig::new(
                ep(&format!("inproc://{name}-up")),
                ep(&format!("inproc://{name}-loop")),
                ep(&format!("inproc://{name}-int")),
            ),
            shutdown.clone(),
        )
        .unwrap();
        (
            Manual {
                ctx,
                name,
                shutdown,
                server,
            },
            proxy,
        )
    }

    fn worker_config(&self) -> WorkerConfig {
        WorkerConfig::new(
            ep(&format!("inproc://{}-down", self.name)),
            ep(&format!("inproc://{}-loop", self.name)),
            ep(&format!("inproc://{}-int", self.name)),
        )
    }
}

#[test]
fn the_choose_function_routes_deterministically() {
    let (m, proxy) = Manual::new("shaping");
    let proxy = proxy.with_choose(Box::new(|blobs, job| {
        // Route by the job's first byte to the worker advertising the same letter.
        let want = job.first().and_then(|f| f.first())?;
        blobs.iter().position(|b| b.first() == Some(want))
    }));
    let Manual {
        ctx,
        shutdown,
        server,
        ..
    } = &m;
    let mut threads = Vec::new();
    for letter in ["A", "B"] {
        let mut cfg = m.worker_config();
        cfg.blob = letter.as_bytes().to_vec();
        let w = Worker::connect(
            ctx,
            cfg,
            Box::new(move |_, _| Ok(Outcome::Reply(letter.as_bytes().to_vec()))),
        )
        .unwrap();
        let sd = shutdown.clone();
        threads.push(std::thread::spawn(move || w.run(sd).unwrap()));
    }
    let stats = proxy.stats();
    let sd = shutdown.clone();
    threads.push(std::thread::spawn(move || proxy.run(sd).unwrap()));
    let rt = rt();
    let (mut a, mut b) = (0, 0);
    for k in 0..400 {
        let want: &[u8] = if k % 4 == 0 { b"B" } else { b"A" };
        // Both workers must be idle so that the choice sees both: at the start, and after each
        // job, since a worker says Ready only after its reply, which may reach us first.
        wait_until(
            &format!("job {k}: the two workers are not both idle"),
            || stats.snapshot().idle >= 2,
        );
        let answer = rt.block_on(server.submit(vec![want.to_vec()], None));
        assert_eq!(
            answer,
            Answer::Reply(want.to_vec()),
            "job {k}: {:?}",
            stats.snapshot()
        );
        if want == b"A" {
            a += 1
        } else {
            b += 1
        }
    }
    assert_eq!((a, b), (300, 100));
    shutdown.stop();
    server.join();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_panicking_work_function_yields_a_500_and_the_worker_lives_on() {
    for transport in IN_PROCESS {
        let mut p = pipeline_over("panic", transport);
        p.stage(1, |job, _| {
            if job.frames[0] == b"boom" {
                panic!("kaboom");
            }
            Ok(Outcome::Reply(b"fine".to_vec()))
        });
        let running = p.start().unwrap();
        match ask(&running, b"boom") {
            Answer::Failed(f) => {
                assert_eq!(f.status, 500);
                assert!(f.reason.contains("kaboom"), "{}", f.reason);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ask(&running, b"ok"), Answer::Reply(b"fine".to_vec()));
        let counts = running.worker_stats[0][0].snapshot();
        assert_eq!(
            (counts.failed, counts.panicked, counts.interrupted),
            (1, 1, 0)
        );
        running.stop();
    }
}

#[test]
fn malformed_frames_are_dropped_counted_and_the_components_keep_serving() {
    let running = chain(1, Transport::Inproc, "malformed");
    let proxy_up = running.stage_endpoints[0].0.clone();
    // Garbage into the proxy's upstream.
    let ctx = running.ctx.as_ref().expect("a zmq pipeline has a context");
    let raw = ctx.socket(SocketKind::Dealer).unwrap();
    raw.connect(&proxy_up).unwrap();
    raw.send([b"garbage".as_slice()]).unwrap();
    raw.send([vec![0u8; 48]]).unwrap();
    // Garbage into the server's loopback.
    let lb = ctx.socket(SocketKind::Dealer).unwrap();
    lb.connect(&running.server.loopback_endpoint().unwrap())
        .unwrap();
    lb.send([b"not a reply".as_slice()]).unwrap();
    lb.send([b"x".as_slice(), b"y".as_slice(), b"z".as_slice()])
        .unwrap();
    wait_until("the malformed messages were not counted", || {
        running.stage_stats[0].snapshot().malformed >= 2
            && running.server.stats().snapshot().malformed >= 2
    });
    assert_eq!(running.stage_stats[0].snapshot().malformed, 2);
    assert_eq!(running.server.stats().snapshot().malformed, 2);
    assert_eq!(ask(&running, b"still"), Answer::Reply(b"still/1".to_vec()));
    running.stop();
}

#[test]
fn a_worker_drops_malformed_jobs_counts_them_and_asks_for_more() {
    let ctx = Context::new();
    let name = unique("fakeproxy");
    let fake = ctx.socket(SocketKind::Router).unwrap();
    fake.bind(&ep(&format!("inproc://{name}"))).unwrap();
    let shutdown = Shutdown::new();
    let w = Worker::connect(
        &ctx,
        WorkerConfig::new(
            ep(&format!("inproc://{name}")),
            ep(&format!("inproc://{name}-lb")),
            ep(&format!("inproc://{name}-int")),
        ),
        Box::new(|_, _| Ok(Outcome::Reply(Vec::new()))),
    )
    .unwrap();
    let stats = w.stats();
    let sd = shutdown.clone();
    let t = std::thread::spawn(move || w.run(sd).unwrap());
    let recv = |what: &str| {
        let mut got = None;
        wait_until(&format!("no {what}"), || {
            got = fake.try_recv().unwrap();
            got.is_some()
        });
        got.unwrap()
    };
    let ready = recv("ready");
    let id = ready[0].clone();
    let (h, _) = prime_server::wire::decode(ready[1..].to_vec()).unwrap();
    assert_eq!(h.kind, prime_server::wire::Kind::Ready);
    fake.send([id.as_slice(), b"\x00garbage"]).unwrap();
    let again = recv("second ready");
    let (h, _) = prime_server::wire::decode(again[1..].to_vec()).unwrap();
    assert_eq!(h.kind, prime_server::wire::Kind::Ready);
    assert_eq!(stats.snapshot().malformed, 1);
    shutdown.stop();
    t.join().unwrap();
}

/// Submits `n` requests at once, each awaited by a task on `rt`; waits until `refused` of them
/// are answered (while the gate holds the others) and returns (those answers, the other tasks).
fn answered_while_held(
    rt: &tokio::runtime::Runtime,
    running: &Running,
    n: usize,
    refused: usize,
) -> (Vec<Answer>, Vec<tokio::task::JoinHandle<Answer>>) {
    let tasks: Vec<_> = (0..n)
        .map(|_| rt.spawn(running.server.submit(vec![b"x".to_vec()], None)))
        .collect();
    rt.block_on(within(
        &format!("fewer than {refused} requests were refused while the others were held"),
        async {
            while tasks.iter().filter(|t| t.is_finished()).count() < refused {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    ));
    let (done, held): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.is_finished());
    let answers = done.into_iter().map(|t| rt.block_on(t).unwrap()).collect();
    (answers, held)
}

#[test]
fn a_full_proxy_queue_is_answered_503_at_once() {
    for transport in IN_PROCESS {
        let gate = Gate::new();
        let g = gate.clone();
        let mut p = pipeline_over("full", transport);
        p.queue_limit = 2;
        p.stage(1, move |_, _| {
            g.pass();
            Ok(Outcome::Reply(b"done".to_vec()))
        });
        let running = p.start().unwrap();
        wait_idle(&running, 0, 1);
        let rt = rt();
        // One in the worker's hands, two queued, three refused: refused while the first is still
        // held, so at once rather than after a wait.
        let (refused, held) = answered_while_held(&rt, &running, 6, 3);
        assert_eq!(refused.len(), 3, "{refused:?}");
        for a in &refused {
            assert!(
                matches!(a, Answer::Failed(Failure { status: 503, .. })),
                "{refused:?}"
            );
        }
        gate.open();
        for t in held {
            assert_eq!(rt.block_on(t).unwrap(), Answer::Reply(b"done".to_vec()));
        }
        running.stop();
    }
}

#[test]
fn the_in_flight_limit_is_answered_503_at_once() {
    for transport in IN_PROCESS {
        let gate = Gate::new();
        let g = gate.clone();
        let mut p = pipeline_over("inflight", transport);
        p.max_in_flight = 3;
        p.stage(1, move |_, _| {
            g.pass();
            Ok(Outcome::Reply(b"done".to_vec()))
        });
        let running = p.start().unwrap();
        let rt = rt();
        // Three in flight, held by the gate; the other two are refused meanwhile.
        let (refused, held) = answered_while_held(&rt, &running, 5, 2);
        assert_eq!(refused.len(), 2, "{refused:?}");
        for a in &refused {
            assert!(
                matches!(a, Answer::Failed(f) if f.status == 503 && f.reason.contains("in flight")),
                "{refused:?}"
            );
        }
        gate.open();
        for t in held {
            assert_eq!(rt.block_on(t).unwrap(), Answer::Reply(b"done".to_vec()));
        }
        running.stop();
    }
}

#[test]
fn the_pump_carries_answers_cancels_and_timeouts() {
    {
        let mut p = Pipeline::new(&unique("pump"));
        p.stage(2, |job, _| Ok(Outcome::Forward(job.frames.clone())));
        p.stage(2, |job, _| Ok(Outcome::Reply(job.frames.concat())));
        let running = p.start().unwrap();
        let answers = ask_all(&running, (0..500).map(|k| format!("{k}")));
        for (k, a) in answers.into_iter().enumerate() {
            assert_eq!(a, Answer::Reply(format!("{k}").into_bytes()));
        }
        running.stop();

        let (running, rx) = looping_pipeline("pump-loop", None, Transport::Inproc);
        let rt = rt();
        let pending = running.server.submit(vec![b"x".to_vec()], None);
        assert_eq!(rx.recv_timeout(LIMIT), Ok("started"));
        drop(pending);
        assert_eq!(rx.recv_timeout(LIMIT), Ok("cancelled"));
        let a = rt.block_on(
            running
                .server
                .submit(vec![b"y".to_vec()], Some(Duration::from_millis(100))),
        );
        assert_eq!(
            a,
            Answer::Failed(Failure::new(504, "the request's deadline passed"))
        );
        assert_eq!(running.server.in_flight(), 0);
        running.stop();
    }
}

#[test]
fn the_cleanup_function_runs_after_every_job_whatever_its_outcome() {
    let (m, proxy) = Manual::new("cleanup");
    let Manual {
        ctx,
        shutdown,
        server,
        ..
    } = &m;
    let cleanups = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = cleanups.clone();
    let worker = Worker::connect(
        ctx,
        m.worker_config(),
        Box::new(|job, _| match job.frames[0].as_slice() {
            b"ok" => Ok(Outcome::Reply(b"ok".to_vec())),
            b"fail" => Err(WorkError::Failed {
                status: 422,
                reason: "no".into(),
            }),
            _ => panic!("boom"),
        }),
    )
    .unwrap()
    .with_cleanup(Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let sd = shutdown.clone();
    let wt = std::thread::spawn(move || worker.run(sd).unwrap());
    let sd = shutdown.clone();
    let pt = std::thread::spawn(move || proxy.run(sd).unwrap());
    let rt = rt();
    assert_eq!(
        rt.block_on(server.submit(vec![b"ok".to_vec()], None)),
        Answer::Reply(b"ok".to_vec())
    );
    assert_eq!(
        rt.block_on(server.submit(vec![b"fail".to_vec()], None)),
        Answer::Failed(Failure::new(422, "no"))
    );
    let a = rt.block_on(server.submit(vec![b"panic".to_vec()], None));
    assert!(
        matches!(a, Answer::Failed(Failure { status: 500, .. })),
        "{a:?}"
    );
    // The reply goes out before the cleanup runs: wait for the last one.
    wait_until("the cleanup did not run after every job", || {
        cleanups.load(Ordering::SeqCst) >= 3
    });
    assert_eq!(cleanups.load(Ordering::SeqCst), 3);
    shutdown.stop();
    server.join();
    wt.join().unwrap();
    pt.join().unwrap();
}

#[test]
fn a_job_whose_workers_die_is_redelivered_then_answered_500() {
    use prime_server::wire::{self, Header, Kind};
    use prime_server::Heartbeat;
    let ctx = Context::new();
    let name = unique("redeliver");
    let mut cfg = ProxyConfig::new(
        ep(&format!("inproc://{name}-up")),
        ep(&format!("inproc://{name}-down")),
    );
    cfg.heartbeat = Heartbeat {
        interval: Duration::from_millis(50),
        liveness: 4,
    };
    cfg.max_attempts = 2;
    let proxy = Proxy::bind(&ctx, cfg).unwrap();
    let stats = proxy.stats();
    let shutdown = Shutdown::new();
    let sd = shutdown.clone();
    let pt = std::thread::spawn(move || proxy.run(sd).unwrap());
    // A fake worker stays alive (heartbeats every few ms) until it is handed a job, then dies
    // holding it (goes silent). Should the test thread stall past the expiry while it waits, its
    // next heartbeat registers it again, so the verdict does not hang on the machine's speed.
    let take_job_then_die = |w: &prime_server::transport::Socket, what: &str| {
        let mut got = None;
        wait_until(&format!("no {what}"), || {
            w.send([&Header::new(Kind::Heartbeat).encode()[..]])
                .unwrap();
            if let Some(f) = w.try_recv().unwrap() {
                let (h, _) = wire::decode(f).unwrap();
                if h.kind == Kind::Job {
                    got = Some(h);
                }
            }
            got.is_some()
        });
        got.unwrap()
    };
    let fake_worker = |id: &str| {
        let w = ctx.socket(SocketKind::Dealer).unwrap();
        w.set_routing_id(id.as_bytes()).unwrap();
        w.connect(&ep(&format!("inproc://{name}-down"))).unwrap();
        w.send([&Header::new(Kind::Ready).encode()[..]]).unwrap();
        w
    };
    let sender = ctx.socket(SocketKind::Dealer).unwrap();
    sender.connect(&ep(&format!("inproc://{name}-up"))).unwrap();
    let w1 = fake_worker("w1");
    wait_until_idle(&stats, 1);
    let mut job = Header::new(Kind::Job);
    job.request_id = 7;
    job.token = wire::ReplyToken([1, 2, 3, 4, 5, 6]);
    sender.send([&job.encode()[..], b"payload"]).unwrap();
    let got = take_job_then_die(&w1, "first dispatch");
    assert_eq!((got.request_id, got.attempt, got.token), (7, 1, job.token));
    // w1 died holding it. w2 arrives and stays alive while idle; the job it gets still carries
    // its reply token, or w2's reply would be dropped as forged.
    let w2 = fake_worker("w2");
    let got = take_job_then_die(&w2, "redelivery");
    assert_eq!((got.request_id, got.attempt, got.token), (7, 2, job.token));
    // w2 dies too: attempts spent, the sender is answered 500.
    let mut answer = None;
    wait_until("no 500 for the sender", || {
        answer = sender.try_recv().unwrap();
        answer.is_some()
    });
    let (answer, _) = wire::decode(answer.unwrap()).unwrap();
    assert_eq!(
        (answer.kind, answer.request_id, answer.status, answer.token),
        (Kind::Reject, 7, 500, job.token)
    );
    assert_eq!(stats.snapshot().redelivered, 1);
    assert_eq!(stats.snapshot().abandoned, 1);
    shutdown.stop();
    pt.join().unwrap();
}

/// Waits until `n` workers have registered as idle with the proxy of these stats.
fn wait_until_idle(stats: &prime_server::stats::StageStats, n: u64) {
    wait_until(&format!("{n} workers never became idle"), || {
        stats.snapshot().idle >= n
    });
}

#[test]
fn a_peer_of_another_protocol_version_is_refused_counted_and_never_registered() {
    use prime_server::wire::{Header, Kind};
    let lone = LoneProxy::start("version");
    let (stats, w) = (&lone.stats, &lone.worker);
    let mut ready = Header::new(Kind::Ready).encode();
    ready[2] = 1; // a version-1 peer, which knows no reply tokens
    w.send([&ready[..]]).unwrap();
    // A version-2 peer, which knows no client protocol (byte 7): its Ready has the same bytes
    // as a version-3 one but for the version.
    let v2 = lone.another_worker();
    ready[2] = 2;
    v2.send([&ready[..]]).unwrap();
    wait_until(
        "the version-1 and version-2 Readys were not counted",
        || stats.snapshot().malformed >= 2,
    );
    // The proxy handles one message at a time, so both are done with. A valid peer registering
    // now must find itself the only idle worker.
    let good = lone.another_worker();
    good.send([&Header::new(Kind::Ready).encode()[..]]).unwrap();
    wait_until_idle(stats, 1);
    assert_eq!(stats.snapshot().idle, 1);
    assert_eq!(stats.snapshot().malformed, 2);
    lone.stop();
}

/// A proxy of its own over inproc, running, and a DEALER connected to its downstream as a
/// worker's would be, for tests that play a worker by hand.
struct LoneProxy {
    ctx: Context,
    name: String,
    stats: std::sync::Arc<prime_server::stats::StageStats>,
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<()>,
    worker: prime_server::transport::Socket,
}

impl LoneProxy {
    fn start(tag: &str) -> LoneProxy {
        let ctx = Context::new();
        let name = unique(tag);
        let proxy = inproc_proxy(&ctx, &name);
        let stats = proxy.stats();
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let thread = std::thread::spawn(move || proxy.run(sd).unwrap());
        let mut lone = LoneProxy {
            worker: ctx.socket(SocketKind::Dealer).unwrap(),
            ctx,
            name,
            stats,
            shutdown,
            thread,
        };
        lone.worker = lone.another_worker();
        lone
    }

    fn another_worker(&self) -> prime_server::transport::Socket {
        let w = self.ctx.socket(SocketKind::Dealer).unwrap();
        w.connect(&ep(&format!("inproc://{}-down", self.name)))
            .unwrap();
        w
    }

    fn stop(self) {
        self.shutdown.stop();
        self.thread.join().unwrap();
    }
}

#[test]
fn a_job_cancelled_while_it_waits_in_the_queue_is_skipped_by_its_worker() {
    for transport in IN_PROCESS {
        // One worker, held by a first job that never calls the interrupt check; a second request
        // waits in the proxy's queue and its client goes away. When the worker is free it must see
        // that interrupt (published while it was busy) and skip the job without running it.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
        let (ran_tx, ran_rx) = mpsc::channel::<Vec<u8>>();
        let ran_tx = std::sync::Arc::new(std::sync::Mutex::new(ran_tx));
        let mut p = pipeline_over("skip", transport);
        p.stage(1, move |job, _| {
            let body = job.frames.concat();
            ran_tx.lock().unwrap().send(body.clone()).unwrap();
            if body == b"hold" {
                release_rx.lock().unwrap().recv_timeout(2 * LIMIT).unwrap();
            }
            Ok(Outcome::Reply(body))
        });
        let running = p.start().unwrap();
        let rt = rt();
        let held = running.server.submit(vec![b"hold".to_vec()], None);
        let held = rt.spawn(held);
        assert_eq!(ran_rx.recv_timeout(LIMIT).unwrap(), b"hold");
        let queued = running.server.submit(vec![b"queued".to_vec()], None);
        let stats = running.server.stats();
        drop(queued);
        // A third request, queued behind the cancelled one. The server core handles its requests
        // and cancels in order, so once this one reached the stage's queue the cancel before it
        // was published: the worker will find it when it is free, however slow the machine.
        let after = rt.spawn(running.server.submit(vec![b"after".to_vec()], None));
        wait_until("the third request never reached the stage's queue", || {
            running.stage_stats[0].snapshot().received >= 3
        });
        assert_eq!(stats.snapshot().cancelled, 1);
        release_tx.send(()).unwrap();
        assert_eq!(rt.block_on(held).unwrap(), Answer::Reply(b"hold".to_vec()));
        // The next request runs normally: the worker skipped the cancelled one and asked for more.
        assert_eq!(
            rt.block_on(within("no answer to the third request", after))
                .unwrap(),
            Answer::Reply(b"after".to_vec())
        );
        assert_eq!(ran_rx.recv_timeout(LIMIT).unwrap(), b"after");
        assert!(ran_rx.try_recv().is_err(), "the cancelled job ran");
        let w = &running.worker_stats[0][0];
        assert_eq!(w.snapshot().skipped, 1);
        assert_eq!(w.snapshot().jobs, 3);
        running.stop();
    }
}

#[test]
fn output_over_the_message_limit_is_answered_500_instead_of_sent() {
    let dir = std::env::temp_dir().join(unique("ps-limit"));
    let mut p = pipeline_over("limit", Transport::Ipc(dir.clone()));
    p.max_message_bytes = 64 * 1024;
    let big = vec![b'x'; 64 * 1024 + 1];
    let fits = vec![b'x'; 64 * 1024];
    let (b, f) = (big.clone(), fits.clone());
    p.stage(1, move |job, _| {
        Ok(match job.frames[0].as_slice() {
            b"forward big" => Outcome::Forward(vec![b"small".to_vec(), b.clone()]),
            b"reply big" => Outcome::Reply(b.clone()),
            b"reply fits" => Outcome::Reply(f.clone()),
            other => Outcome::Forward(vec![other.to_vec()]),
        })
    });
    p.stage(1, |job, _| Ok(Outcome::Reply(job.frames.concat())));
    let running = p.start().unwrap();
    for ask_for in ["forward big", "reply big"] {
        match ask(&running, ask_for.as_bytes()) {
            Answer::Failed(f) => {
                assert_eq!(f.status, 500, "{ask_for}");
                assert!(
                    f.reason.contains("message limit"),
                    "{ask_for}: {}",
                    f.reason
                );
            }
            other => panic!("{ask_for}: {other:?}"),
        }
    }
    assert_eq!(ask(&running, b"reply fits"), Answer::Reply(fits));
    assert_eq!(ask(&running, b"on"), Answer::Reply(b"on".to_vec()));
    assert_eq!(running.worker_stats[0][0].snapshot().oversized, 2);
    running.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_ready_blob_or_worker_id_over_its_bound_is_dropped_counted_and_never_registered() {
    use prime_server::proxy::{MAX_BLOB, MAX_ROUTING_ID};
    use prime_server::wire::{flags, Header, Kind};
    let lone = LoneProxy::start("bounds");
    let (stats, w) = (&lone.stats, &lone.worker);
    let ready = Header::new(Kind::Ready).encode();
    w.send([&ready[..], &vec![0u8; MAX_BLOB + 1][..]]).unwrap();
    let mut busy = Header::new(Kind::Heartbeat);
    busy.flags = flags::BUSY;
    w.send([&busy.encode()[..], &vec![b'w'; MAX_ROUTING_ID + 1][..]])
        .unwrap();
    wait_until("the oversized Ready and heartbeat were not counted", || {
        stats.snapshot().malformed >= 2
    });
    // The proxy handles one message at a time: both are done with, and neither registered a
    // worker. The same Ready with a blob at the bound does.
    assert_eq!(stats.snapshot().idle, 0);
    w.send([&ready[..], &vec![0u8; MAX_BLOB][..]]).unwrap();
    wait_until_idle(stats, 1);
    assert_eq!(stats.snapshot().malformed, 2);
    lone.stop();
}
