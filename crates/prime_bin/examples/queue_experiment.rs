//! An experiment, not part of the product: the prime demo's two stages as in-process thread
//! pools that take jobs from shared in-memory queues (a mutex and a condition variable), with no
//! proxy thread and no zmq, behind the same hyper front as `hello`. Workers still pull: a worker
//! takes a job only when it has none. `bench/http.sh` runs it beside `prime_serverd` and `hello`
//! to measure what such an in-process transport would give; it is the evidence for the team's
//! decision recorded in BENCHMARKS.md (DESIGN.md keeps zmq as the only transport). It has none of
//! the server core's deadlines, interrupts, limits or drain.
//!
//! `cargo run --release --example queue_experiment -- 127.0.0.1:8004 4`

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use tokio::sync::oneshot;

/// A job queue shared by one stage's workers.
struct Queue<T> {
    /// The jobs, and how many workers sleep waiting for one.
    state: Mutex<(VecDeque<T>, usize)>,
    ready: Condvar,
}

impl<T> Queue<T> {
    fn new() -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new((VecDeque::new(), 0)),
            ready: Condvar::new(),
        })
    }

    fn push(&self, job: T) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0.push_back(job);
        // Wake a sleeper only if there is one: a busy worker finds the job when it is done.
        let sleeping = s.1 > 0;
        drop(s);
        if sleeping {
            self.ready.notify_one();
        }
    }

    fn pop(&self) -> T {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = s.0.pop_front() {
                return job;
            }
            s.1 += 1;
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.1 -= 1;
        }
    }
}

type Reply = oneshot::Sender<(StatusCode, Bytes)>;

/// A worker thread, named like prime_serverd's so the bench's per-thread accounting matches.
fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(f).map(drop)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8004".into());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(4);
    let parse: Arc<Queue<(String, Reply)>> = Queue::new();
    let test: Arc<Queue<(u64, Reply)>> = Queue::new();
    for w in 0..workers.max(1) {
        let (from, to) = (parse.clone(), test.clone());
        spawn(format!("stage1-w{w}"), move || {
            prime_server::transport::prefer_batch_scheduling();
            loop {
                let (query, reply) = from.pop();
                match query
                    .strip_prefix("possible_prime=")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    Some(n) => to.push((n, reply)),
                    None => {
                        let usage = Bytes::from(prime_bin::prime::USAGE);
                        let _ = reply.send((StatusCode::BAD_REQUEST, usage));
                    }
                }
            }
        })?;
        let from = test.clone();
        spawn(format!("stage2-w{w}"), move || {
            prime_server::transport::prefer_batch_scheduling();
            loop {
                let (n, reply) = from.pop();
                let body = prime_bin::prime::answer_body(n, prime_bin::prime::is_prime(n));
                let _ = reply.send((StatusCode::OK, Bytes::from(body)));
            }
        })?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = prime_server::protocol::bind_listener(&addr)?;
        println!("queue experiment listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let parse = parse.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let parse = parse.clone();
                    async move {
                        let (tx, rx) = oneshot::channel();
                        parse.push((req.uri().query().unwrap_or("").to_string(), tx));
                        let (status, body) = rx
                            .await
                            .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()));
                        let mut resp = hyper::Response::new(Full::new(body));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
