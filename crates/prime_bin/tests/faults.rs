//! Fault tolerance with real processes: workers killed mid-job, all workers gone, a proxy killed
//! and restarted, two front servers sharing one backend. Heartbeats are fast here (200 ms, 3
//! misses) so that dead peers are noticed within a second.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An echo stage: a topology file with `servers` front servers (named s0, s1, …).
fn echo_topology(dir: &Path, servers: usize, timeout_seconds: u64) -> PathBuf {
    let mut text =
        String::from("drain_seconds = 2\n[heartbeat]\ninterval_ms = 200\nliveness = 3\n");
    for i in 0..servers {
        text += &format!(
            "[[server]]\nname = \"s{i}\"\nlisten = \"127.0.0.1:{}\"\nloopback = \"ipc://{d}/lb{i}\"\ninterrupt = \"ipc://{d}/int{i}\"\ntimeout_seconds = {timeout_seconds}\n",
            free_port(),
            d = dir.display()
        );
    }
    text += &format!(
        "[[stage]]\nname = \"echo\"\nwork = \"echo\"\nupstream = \"ipc://{d}/in\"\ndownstream = \"ipc://{d}/out\"\nworkers = 1\n",
        d = dir.display()
    );
    let path = dir.join("echo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn proxy(cfg: &str) -> Proc {
    Proc::start("prime_proxyd", &["--config", cfg, "--stage", "echo"])
}

fn worker(cfg: &str) -> Proc {
    Proc::start("prime_workerd", &["--config", cfg, "--stage", "echo"])
}

fn front(cfg: &str, name: &str) -> (Proc, SocketAddr) {
    let mut p = Proc::start("prime_httpd", &["--config", cfg, "--server", name]);
    let addr = p.listening();
    (p, addr)
}

/// Runs `clients` connections, each sending `per_client` requests `/c{client}-{k}?sleep=MS`
/// one after another; returns (request path, status or None, echoed body) for each.
fn load(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    sleep_ms: u64,
) -> std::thread::JoinHandle<Vec<(String, Option<u16>, String)>> {
    std::thread::spawn(move || {
        let results = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let results = results.clone();
                std::thread::spawn(move || {
                    let mut s = connect(addr);
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    for k in 0..per_client {
                        let path = format!("/c{c}-{k}?sleep={sleep_ms}");
                        let r = http(&mut s, &get(&path));
                        let (status, body) = match r {
                            Some((st, _, b)) => (Some(st), b),
                            None => {
                                s = connect(addr);
                                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                                (None, String::new())
                            }
                        };
                        results.lock().unwrap().push((path, status, body));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        Arc::try_unwrap(results).unwrap().into_inner().unwrap()
    })
}

fn assert_all_echoed(results: &[(String, Option<u16>, String)]) {
    for (path, status, body) in results {
        assert_eq!(*status, Some(200), "{path}: {body}");
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
    let c = cfg.to_str().unwrap();
    let log = dir.join("proxy.log");
    let p = Proc::start_logging(
        "prime_proxyd",
        &["--config", c, "--stage", "echo"],
        std::fs::File::create(&log).unwrap().into(),
    );
    let victim = worker(c);
    let survivor = worker(c);
    let (f, addr) = front(c, "s0");
    let run = load(addr, 4, 15, 50);
    std::thread::sleep(Duration::from_millis(300));
    drop(victim); // SIGKILL: whatever job it held must go to the survivor
    let results = run.join().unwrap();
    assert_eq!(results.len(), 60);
    assert_all_echoed(&results);
    f.stop();
    survivor.stop();
    p.stop();
    // The victim was busy when killed (4 clients, 2 workers, 50 ms jobs): its job was handed on.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("handing it to another"), "{text}");
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
    let run = load(addr, 3, 5, 20);
    std::thread::sleep(Duration::from_millis(150));
    drop(first);
    // Nobody serves for a second; the requests wait at the proxy.
    std::thread::sleep(Duration::from_secs(1));
    let second = worker(c);
    let t = Instant::now();
    let results = run.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
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
             // A request sent while no proxy runs is answered within its deadline (3 s): by the worker,
             // once a new proxy took it, or 504.
    let t = Instant::now();
    let caught = http(&mut s, &get("/during?sleep=10")).unwrap();
    assert!(caught.0 == 504 || caught.0 == 200, "{caught:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let p = proxy(&c);
    // Service resumes within a few seconds: the worker registers with the new proxy by itself.
    let t = Instant::now();
    loop {
        let mut s = connect(addr);
        let r = http(&mut s, &get("/after")).unwrap();
        if r.0 == 200 {
            assert!(r.2.starts_with("GET /after "));
            break;
        }
        assert_eq!(r.0, 504, "{r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "service did not resume"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
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
    let r0 = load(a0, 3, 20, 2);
    let r1 = load(a1, 3, 20, 2);
    let (r0, r1) = (r0.join().unwrap(), r1.join().unwrap());
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
    let stop_at = Instant::now() + Duration::from_secs(4);
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let clients: Vec<_> = (0..120)
        .map(|_| {
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut s = connect(addr);
                while Instant::now() < stop_at {
                    match http(&mut s, &get("/o?sleep=5")) {
                        Some((st, _, _)) => *counts.lock().unwrap().entry(st).or_default() += 1,
                        None => {
                            *counts.lock().unwrap().entry(0).or_default() += 1;
                            s = connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (front_pid, proxy_pid) = (f.child.id(), p.child.id());
    let early = (rss_kb(front_pid), rss_kb(proxy_pid));
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
