//! Fault tolerance with real processes: workers killed mid-job, all workers gone, a proxy killed
//! and restarted, two front servers sharing one backend. Heartbeats are fast here (200 ms, 3
//! misses) so that dead peers are noticed within a second.

mod common;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request of a load: its path, and its answer's status (`None`: the connection closed),
/// head and body.
#[derive(Debug, Clone)]
struct Answered {
    path: String,
    status: Option<u16>,
    head: String,
    body: String,
}

impl Answered {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
    }

    /// The pid of the worker process that answered (echo's `x-worker: PID/THREAD`).
    fn worker_pid(&self) -> Option<u32> {
        self.header("x-worker")?.split('/').next()?.parse().ok()
    }

    /// How many workers were handed the job (echo's `x-attempt`).
    fn attempt(&self) -> u8 {
        self.header("x-attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
}

/// `clients` connections, each sending `per_client` requests `/c{client}-{k}?sleep=MS` one after
/// another; the answers can be watched as they come.
struct Load {
    answered: Arc<Mutex<Vec<Answered>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize, per_client: usize, sleep_ms: u64) -> Load {
        let answered = Arc::new(Mutex::new(Vec::new()));
        let all = answered.clone();
        let thread = std::thread::spawn(move || {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let all = all.clone();
                    std::thread::spawn(move || {
                        let mut s = connect(addr);
                        for k in 0..per_client {
                            let path = format!("/c{c}-{k}?sleep={sleep_ms}");
                            let (status, head, body) = match http(&mut s, &get(&path)) {
                                Some((st, h, b)) => (Some(st), h, b),
                                None => {
                                    s = connect(addr);
                                    (None, String::new(), String::new())
                                }
                            };
                            all.lock().unwrap().push(Answered {
                                path,
                                status,
                                head,
                                body,
                            });
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
        Load { answered, thread }
    }

    /// How many requests were answered so far by worker process `pid` (any, if `None`).
    fn answered_by(&self, pid: Option<u32>) -> usize {
        let all = self.answered.lock().unwrap();
        all.iter()
            .filter(|a| pid.is_none() || a.worker_pid() == pid)
            .count()
    }

    /// Waits for every client to be done (each read gives up after LIMIT).
    fn finish(self) -> Vec<Answered> {
        self.thread.join().unwrap();
        Arc::try_unwrap(self.answered)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn assert_all_echoed(results: &[Answered]) {
    for a in results {
        let (path, body) = (&a.path, &a.body);
        assert_eq!(a.status, Some(200), "{path}: {body}");
        assert!(
            body.starts_with(&format!("GET {path} ")),
            "{path} got {body}"
        );
    }
}

#[test]
fn a_worker_killed_mid_load_loses_no_request() {
    let dir = temp_dir("kill-worker");
    let cfg = echo_topology(&dir, 1, 30);
    // A job may be held by each of the three killed workers in turn (when a worker takes a job
    // handed on from the previous one); past `max_attempts` it would be answered 500.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("workers = 1\n", "workers = 1\nmax_attempts = 4\n");
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let mut current = worker(c);
    let (f, addr) = front(c, "s0");
    // Three clients, one worker (one thread) at a time: while it works on one 100 ms request the
    // other two wait in the proxy's queue, so once it has answered one it holds the next. Three
    // times, a worker is killed (SIGKILL) right after its first answer, mid-job, and another
    // starts: the job the dead one held must be handed on.
    let run = Load::start(addr, 3, 10, 100);
    for _ in 0..3 {
        let pid = current.child.id();
        wait_until("the worker never answered", || {
            run.answered_by(Some(pid)) >= 1
        });
        drop(current);
        current = worker(c);
    }
    let results = run.finish();
    assert_eq!(results.len(), 30);
    assert_all_echoed(&results);
    // The answers say so: some came from a second worker handed the job (echo's x-attempt).
    assert!(
        results.iter().any(|a| a.attempt() >= 2),
        "no job was handed on: {results:?}"
    );
    f.stop();
    current.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn with_every_worker_gone_requests_wait_and_a_new_worker_answers_them() {
    let dir = temp_dir("no-workers");
    let cfg = echo_topology(&dir, 1, 30);
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let first = worker(c);
    let (f, addr) = front(c, "s0");
    // 15 requests of 100 ms for one worker thread: most are still to come when it is killed.
    let run = Load::start(addr, 3, 5, 100);
    wait_until("the first worker never answered", || {
        run.answered_by(None) >= 1
    });
    drop(first);
    // Nobody serves for a second: the requests wait at the proxy. (This pause only sets the scene;
    // nothing depends on its length.)
    std::thread::sleep(Duration::from_secs(1));
    let second = worker(c);
    // Answered by the new worker, each before the 30 s deadline (else 504, or no answer at all).
    let results = run.finish();
    assert_eq!(results.len(), 15);
    assert_all_echoed(&results);
    f.stop();
    second.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_killed_and_restarted_proxy_resumes_service_and_strands_no_request() {
    let dir = temp_dir("kill-proxy");
    let cfg = echo_topology(&dir, 1, 3);
    let c = cfg.to_str().unwrap().to_string();
    let p = proxy(&c);
    let w = worker(&c);
    let (f, addr) = front(&c, "s0");
    let mut s = connect(addr);
    assert_eq!(http(&mut s, &get("/before")).unwrap().0, 200);
    drop(p); // SIGKILL
             // A request sent while no proxy runs is not stranded: its deadline (3 s) answers it 504
             // (without that answer the read gives up after LIMIT and there is none).
    let caught = http(&mut s, &get("/during?sleep=10"));
    assert!(
        matches!(caught, Some((504, _, _)) | Some((200, _, _))),
        "{caught:?}"
    );
    let p = proxy(&c);
    // Service resumes: the worker registers with the new proxy by itself.
    wait_until("service did not resume", || {
        let mut s = connect(addr);
        let r = http(&mut s, &get("/after")).unwrap();
        if r.0 != 200 {
            assert_eq!(r.0, 504, "{r:?}");
            return false;
        }
        assert!(r.2.starts_with("GET /after "));
        true
    });
    f.stop();
    w.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn two_front_servers_sharing_one_backend_each_get_their_own_answers() {
    let dir = temp_dir("two-fronts");
    let cfg = echo_topology(&dir, 2, 30);
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let w1 = worker(c);
    let w2 = worker(c);
    let (f0, a0) = front(c, "s0");
    let (f1, a1) = front(c, "s1");
    let r0 = Load::start(a0, 3, 20, 2);
    let r1 = Load::start(a1, 3, 20, 2);
    let (r0, r1) = (r0.finish(), r1.finish());
    assert_eq!((r0.len(), r1.len()), (60, 60));
    assert_all_echoed(&r0);
    assert_all_echoed(&r1);
    f0.stop();
    f1.stop();
    w1.stop();
    w2.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn sustained_overload_gets_only_200_and_503_and_memory_stays_flat() {
    let dir = temp_dir("overload");
    let cfg = echo_topology(&dir, 1, 30);
    // Tight bounds: 30 requests in flight at the front, 10 jobs queued at the proxy; one worker
    // doing 5 ms jobs serves ~200/s, and 120 clients ask for far more.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "timeout_seconds = 30\n",
            "timeout_seconds = 30\nmax_in_flight = 30\n",
        )
        .replace("workers = 1\n", "workers = 1\nqueue_limit = 10\n");
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let w = worker(c);
    let (f, addr) = front(c, "s0");
    let stop = Arc::new(AtomicBool::new(false));
    // Clients that had an answer, and answers by status (0: the connection closed).
    let started = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let clients: Vec<_> = (0..120)
        .map(|_| {
            let (stop, started, counts) = (stop.clone(), started.clone(), counts.clone());
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut first = true;
                while !stop.load(Ordering::SeqCst) {
                    match http(&mut s, &get("/o?sleep=5")) {
                        Some((st, _, _)) => *counts.lock().unwrap().entry(st).or_default() += 1,
                        None => {
                            *counts.lock().unwrap().entry(0).or_default() += 1;
                            s = connect(addr);
                        }
                    }
                    if std::mem::take(&mut first) {
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let served = || counts.lock().unwrap().get(&200).copied().unwrap_or(0);
    // Memory once every client is connected and answered, then again after the overload went on
    // for 600 more served requests (5 ms each for the one worker: at least 3 s, on any machine).
    wait_until("not every client was answered", || {
        started.load(Ordering::SeqCst) == 120
    });
    let (front_pid, proxy_pid) = (f.child.id(), p.child.id());
    let early = (rss_kb(front_pid), rss_kb(proxy_pid));
    let before = served();
    wait_until("the worker stopped serving under the overload", || {
        served() >= before + 600
    });
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let late = (rss_kb(front_pid), rss_kb(proxy_pid));
    let counts = counts.lock().unwrap().clone();
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![200, 503],
        "{counts:?}"
    );
    assert!(counts[&503] > counts[&200], "not overloaded: {counts:?}");
    // Memory: bounded queues keep both processes small and flat under the overload.
    assert!(
        late.0 < 64 * 1024 && late.1 < 64 * 1024,
        "rss {early:?} -> {late:?} kB"
    );
    assert!(
        late.0 < early.0 + 8 * 1024 && late.1 < early.1 + 8 * 1024,
        "rss {early:?} -> {late:?} kB"
    );
    f.stop();
    w.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}
