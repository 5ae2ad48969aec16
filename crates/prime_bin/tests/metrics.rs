//! Metrics of a running deployment: real daemons (prime_proxyd, prime_workerd, prime_httpd) over
//! ipc, each with a metrics listener, scraped over HTTP. Every scrape is checked against the
//! exposition format ([`common::exposition`]), and the numbers must move as the requests do:
//! counted at the front, queued while the worker is stopped, redelivered when it is killed,
//! 503 and 504 by their reason.

mod common;
use common::exposition::{scrape, value};
use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

/// One echo stage (`echo`: its proxy, one worker process of one thread) behind some fronts,
/// every socket over ipc in a directory of its own, every process with a metrics listener.
struct Deployment {
    dir: PathBuf,
    config: String,
    /// (name, metrics address) of each front.
    fronts: Vec<(String, String)>,
    proxy_metrics: String,
    worker_metrics: String,
    /// The processes, in the order to stop them (fronts first).
    procs: Vec<Proc>,
    /// The fronts' client addresses.
    addrs: Vec<SocketAddr>,
}

/// What a [`Deployment`] is made of.
struct Spec<'a> {
    tag: &'a str,
    /// (name, extra lines) of each front.
    fronts: &'a [(&'a str, &'a str)],
    timeout_seconds: u64,
    stage_extra: &'a str,
}

impl Spec<'_> {
    fn echo(tag: &str) -> Spec<'_> {
        Spec {
            tag,
            fronts: &[("front", "")],
            timeout_seconds: 60,
            stage_extra: "",
        }
    }
}

/// The tests of this file, one at a time. Run in parallel they failed now and then (a client of
/// `the_queue_grows…` got its connection closed without an answer after 0.5–1.7 s, every daemon
/// alive; not understood yet, see the session-4 note on issue 12): until that is explained, they
/// do not share the machine with each other.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn metrics_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

impl Deployment {
    /// Writes the topology (heartbeats 200 ms × 3, so a dead worker is noticed fast), starts
    /// the proxy, the worker process and the fronts, and waits until the worker is idle at its
    /// proxy and every metrics listener answers.
    fn start(spec: Spec<'_>) -> Deployment {
        let dir = temp_dir(spec.tag);
        let d = dir.display();
        let mut text =
            String::from("drain_seconds = 1\n[heartbeat]\ninterval_ms = 200\nliveness = 3\n");
        let mut fronts = Vec::new();
        for (i, (name, extra)) in spec.fronts.iter().enumerate() {
            let m = metrics_addr();
            text += &format!(
                "[[server]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nloopback = \"ipc://{d}/lb{i}\"\ninterrupt = \"ipc://{d}/int{i}\"\ntimeout_seconds = {}\nmetrics_listen = \"{m}\"\n{extra}\n",
                spec.timeout_seconds,
            );
            fronts.push((name.to_string(), m));
        }
        let (proxy_metrics, worker_metrics) = (metrics_addr(), metrics_addr());
        text += &format!(
            "[[stage]]\nname = \"echo\"\nwork = \"echo\"\nupstream = \"ipc://{d}/in\"\ndownstream = \"ipc://{d}/out\"\nworkers = 1\nproxy_metrics_listen = \"{proxy_metrics}\"\nworkers_metrics_listen = \"{worker_metrics}\"\n{}\n",
            spec.stage_extra
        );
        let path = dir.join("echo.toml");
        std::fs::write(&path, text).unwrap();
        let config = path.to_str().unwrap().to_string();
        // The fronts before the worker, so that its interrupt subscriptions are connected
        // by the time it is idle at its proxy (an interrupt published before that is lost).
        let mut procs = vec![Proc::start(
            "prime_proxyd",
            &["--config", &config, "--stage", "echo"],
        )];
        let mut addrs = Vec::new();
        for (name, _) in &fronts {
            let mut p = Proc::start("prime_httpd", &["--config", &config, "--server", name]);
            addrs.push(p.listening());
            procs.insert(0, p);
        }
        procs.push(Proc::start(
            "prime_workerd",
            &["--config", &config, "--stage", "echo"],
        ));
        let dep = Deployment {
            dir,
            config,
            fronts,
            proxy_metrics,
            worker_metrics,
            procs,
            addrs,
        };
        for addr in dep.metrics_addrs() {
            wait_until(&format!("no metrics at {addr}"), || {
                prime_bin::scrape::fetch(&addr, LIMIT).is_ok()
            });
        }
        dep.wait_idle(1);
        dep
    }

    fn metrics_addrs(&self) -> Vec<String> {
        let mut all: Vec<String> = self.fronts.iter().map(|f| f.1.clone()).collect();
        all.push(self.proxy_metrics.clone());
        all.push(self.worker_metrics.clone());
        all
    }

    fn front_metrics(&self, name: &str) -> &str {
        &self.fronts.iter().find(|f| f.0 == name).unwrap().1
    }

    /// A front counter (`prime_server_front_NAME`) of front `front`.
    fn front(&self, front: &str, name: &str) -> f64 {
        value(
            self.front_metrics(front),
            &format!("prime_server_front_{name}"),
            &[("front", front)],
        )
    }

    /// A proxy counter or gauge (`prime_server_proxy_NAME`) of the stage.
    fn proxy(&self, name: &str) -> f64 {
        value(
            &self.proxy_metrics,
            &format!("prime_server_proxy_{name}"),
            &[("stage", "echo")],
        )
    }

    /// A worker counter (`prime_server_worker_NAME`) of the first worker process.
    fn worker(&self, name: &str) -> f64 {
        value(
            &self.worker_metrics,
            &format!("prime_server_worker_{name}"),
            &[("stage", "echo")],
        )
    }

    /// Waits until the proxy counts `n` idle workers.
    fn wait_idle(&self, n: usize) {
        wait_until(&format!("the proxy never had {n} idle workers"), || {
            self.proxy("idle") == n as f64
        });
    }

    /// The worker process.
    fn worker_proc(&self) -> &Proc {
        self.procs
            .iter()
            .find(|p| p.name == "prime_workerd")
            .unwrap()
    }

    /// Stops every process (SIGCONT first, in case a test left one stopped), fronts first.
    fn stop(mut self) {
        for p in std::mem::take(&mut self.procs) {
            p.signal("-CONT");
            p.stop();
        }
    }
}

impl Drop for Deployment {
    /// Whatever is still running is killed ([`Proc`]'s drop), and the directory removed, even
    /// when the test failed.
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `path` on a connection of its own and returns the connection, without waiting.
fn send(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(get(path).as_bytes()).unwrap();
    s
}

#[test]
fn every_daemon_serves_checked_metrics_and_counts_each_request() {
    let _serial = serial();
    let d = Deployment::start(Spec::echo("m-count"));
    for addr in d.metrics_addrs() {
        let e = scrape(&addr);
        assert_eq!(e.sum("prime_server_build_info", &[]), Some(1.0), "{addr}");
        assert!(e.sum("process_open_fds", &[]).unwrap() > 0.0, "{addr}");
        // Only /metrics is served.
        let other = prime_bin::scrape::fetch_path(&addr, "/", LIMIT);
        assert!(
            matches!(other, Err(prime_bin::scrape::FetchError::Status(404))),
            "{other:?}"
        );
    }
    // Four cheap requests and one that works 100 ms.
    assert_echoes(d.addrs[0], 4, "count");
    let mut s = connect(d.addrs[0]);
    assert_eq!(http(&mut s, &get("/slow?sleep=100")).unwrap().0, 200);

    let front = scrape(d.front_metrics("front"));
    let f = |name: &str| {
        front
            .sum(&format!("prime_server_front_{name}"), &[("front", "front")])
            .unwrap()
    };
    assert_eq!((f("submitted_total"), f("replied_total")), (5.0, 5.0));
    for zero in [
        "timeouts_total",
        "overloaded_total",
        "cancelled_total",
        "late_total",
    ] {
        assert_eq!(f(zero), 0.0, "{zero}");
    }
    let h = front
        .histogram("prime_server_front_request_seconds", &[("front", "front")])
        .unwrap();
    assert_eq!(h.count, 5.0);
    assert!(h.sum >= 0.1, "{h:?}");

    // The worker says Ready after its reply: wait until the proxy has it idle again.
    d.wait_idle(1);
    let proxy = scrape(&d.proxy_metrics);
    let p = |name: &str| {
        proxy
            .sum(&format!("prime_server_proxy_{name}"), &[("stage", "echo")])
            .unwrap()
    };
    assert_eq!((p("received_total"), p("dispatched_total")), (5.0, 5.0));
    assert_eq!((p("queued"), p("idle")), (0.0, 1.0));
    for zero in [
        "rejected_total",
        "redelivered_total",
        "expired_total",
        "abandoned_total",
    ] {
        assert_eq!(p(zero), 0.0, "{zero}");
    }

    let worker = scrape(&d.worker_metrics);
    let w = |name: &str| {
        worker
            .sum(&format!("prime_server_worker_{name}"), &[("stage", "echo")])
            .unwrap()
    };
    assert_eq!((w("jobs_total"), w("replied_total")), (5.0, 5.0));
    assert_eq!((w("forwarded_total"), w("failed_total")), (0.0, 0.0));
    let jobs = worker
        .histogram("prime_server_worker_job_seconds", &[("stage", "echo")])
        .unwrap();
    assert_eq!(jobs.count, 5.0);
    // The slow job is over 100 ms: not in the 0.1 s bucket.
    let within =
        |h: &prime_bin::scrape::Histogram, le: f64| h.buckets.iter().find(|b| b.0 == le).unwrap().1;
    assert!(within(&jobs, 0.1) <= 4.0, "{jobs:?}");
    assert!(jobs.sum >= 0.1, "{jobs:?}");
    let waits = worker
        .histogram("prime_server_worker_wait_seconds", &[("stage", "echo")])
        .unwrap();
    assert_eq!(waits.count, 5.0);
    d.stop();
}

#[test]
fn the_queue_grows_while_the_worker_is_stopped_and_passed_deadlines_count_504() {
    let _serial = serial();
    let d = Deployment::start(Spec {
        timeout_seconds: 3,
        ..Spec::echo("m-queue")
    });
    d.worker_proc().signal("-STOP");
    // The first goes to the stopped worker (the proxy has it idle), the others wait.
    let waiting: Vec<TcpStream> = (0..3)
        .map(|k| send(d.addrs[0], &format!("/q{k}")))
        .collect();
    wait_until("the proxy never queued the jobs", || {
        d.proxy("queued") >= 2.0
    });
    assert_eq!(d.proxy("idle"), 0.0);
    // The deadline (3 s) passes with the worker still stopped: each is answered 504.
    for mut s in waiting {
        let (status, _, body) = read_answer(&mut s).expect("no answer");
        assert_eq!(status, 504, "{body}");
    }
    assert_eq!(d.front("front", "timeouts_total"), 3.0);
    assert_eq!(d.front("front", "replied_total"), 0.0);
    // The stopped worker went silent: the proxy dropped it.
    assert!(d.proxy("expired_total") >= 1.0);
    d.worker_proc().signal("-CONT");
    // It comes back, drains what was queued (past their deadline) and serves again.
    wait_until("the queue never emptied", || {
        let mut s = connect(d.addrs[0]);
        http(&mut s, &get("/after")).is_some_and(|r| r.0 == 200) && d.proxy("queued") == 0.0
    });
    assert!(d.front("front", "replied_total") >= 1.0);
    d.stop();
}

#[test]
fn a_killed_workers_job_is_counted_redelivered() {
    let _serial = serial();
    let mut d = Deployment::start(Spec::echo("m-redeliver"));
    // Long enough for a second worker process to start while the first holds it.
    let mut slow = send(d.addrs[0], "/slow?sleep=3000");
    wait_until("the worker never took the job", || {
        d.worker("jobs_total") == 1.0
    });
    // A second worker process, its metrics on a flag of its own; idle while the first works.
    let second_metrics = metrics_addr();
    let second = Proc::start(
        "prime_workerd",
        &[
            "--config",
            &d.config,
            "--stage",
            "echo",
            "--metrics-listen",
            &second_metrics,
        ],
    );
    d.wait_idle(1);
    let i = d
        .procs
        .iter()
        .position(|p| p.name == "prime_workerd")
        .unwrap();
    let first = d.procs.remove(i);
    let first_pid = first.child.id();
    drop(first); // SIGKILL, with the job in its hands
    let (status, head, body) = read_answer(&mut slow).expect("no answer");
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("x-attempt: 2"), "{head}");
    assert!(!head.contains(&format!("x-worker: {first_pid}/")), "{head}");
    assert_eq!(d.proxy("redelivered_total"), 1.0);
    assert_eq!(d.proxy("expired_total"), 1.0);
    assert_eq!(d.proxy("dispatched_total"), 2.0);
    assert_eq!(d.proxy("abandoned_total"), 0.0);
    let e = scrape(&second_metrics);
    let jobs = e
        .histogram("prime_server_worker_job_seconds", &[("stage", "echo")])
        .unwrap();
    assert_eq!(jobs.count, 1.0);
    assert!(jobs.sum >= 3.0, "{jobs:?}");
    assert_eq!(d.front("front", "replied_total"), 1.0);
    second.stop();
    d.stop();
}

#[test]
fn refusals_are_counted_by_reason_and_gone_clients_as_cancelled() {
    let _serial = serial();
    // `tight` takes one request at a time; the stage queues one job.
    let d = Deployment::start(Spec {
        fronts: &[("tight", "max_in_flight = 1"), ("wide", "")],
        stage_extra: "queue_limit = 1",
        ..Spec::echo("m-refuse")
    });
    let (tight, wide) = (d.addrs[0], d.addrs[1]);
    // tight: one in flight (the worker has it), the next refused by the in-flight limit.
    let a = send(tight, "/a?sleep=60000");
    wait_until("the worker never took /a", || d.worker("jobs_total") == 1.0);
    let (status, _, body) = http(&mut connect(tight), &get("/b")).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(d.front("tight", "in_flight_refused_total"), 1.0);
    assert_eq!(d.front("tight", "overloaded_total"), 1.0);
    assert_eq!(d.front("tight", "queue_full_total"), 0.0);
    // wide: one queued (the worker is busy), the next refused by the full queue.
    let c = send(wide, "/c?sleep=60000");
    wait_until("/c was never queued", || d.proxy("queued") == 1.0);
    let (status, _, body) = http(&mut connect(wide), &get("/d")).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(d.proxy("rejected_total"), 1.0);
    assert_eq!(d.front("wide", "queue_full_total"), 1.0);
    assert_eq!(d.front("wide", "overloaded_total"), 1.0);
    assert_eq!(d.front("wide", "in_flight_refused_total"), 0.0);
    // Both clients go away: counted, and the worker is interrupted and free again.
    drop((a, c));
    wait_until("the gone clients were not counted", || {
        d.front("tight", "cancelled_total") == 1.0 && d.front("wide", "cancelled_total") == 1.0
    });
    wait_until("the worker was never free again", || {
        d.proxy("idle") == 1.0 && d.proxy("queued") == 0.0
    });
    assert!(d.worker("failed_total") + d.worker("skipped_total") >= 1.0);
    assert_eq!(d.front("wide", "timeouts_total"), 0.0);
    d.stop();
}

/// The prime demo (stages `parse` and `test`) as separate processes over ipc, every process
/// with a metrics listener named in the topology; `test` has a second worker process whose
/// listener only `--metrics-listen` names. Returns the deployment's processes (front first),
/// the front's address, the topology, and every metrics listener (that second one last).
fn prime_deployment(dir: &std::path::Path) -> (Vec<Proc>, SocketAddr, String, Vec<String>) {
    let d = dir.display();
    let mut listeners = vec![metrics_addr()];
    let mut text = format!(
        "drain_seconds = 1\n[heartbeat]\ninterval_ms = 200\nliveness = 3\n[[server]]\nname = \"web\"\nlisten = \"127.0.0.1:{}\"\nloopback = \"ipc://{d}/lb\"\ninterrupt = \"ipc://{d}/int\"\nmetrics_listen = \"{}\"\n",
        free_port(),
        listeners[0]
    );
    for (stage, work) in [("parse", "prime_parse"), ("test", "prime_test")] {
        let (proxy, workers) = (metrics_addr(), metrics_addr());
        text += &format!(
            "[[stage]]\nname = \"{stage}\"\nwork = \"{work}\"\nupstream = \"ipc://{d}/{stage}_in\"\ndownstream = \"ipc://{d}/{stage}_out\"\nworkers = 1\nproxy_metrics_listen = \"{proxy}\"\nworkers_metrics_listen = \"{workers}\"\n",
        );
        listeners.extend([proxy, workers]);
    }
    let path = dir.join("prime.toml");
    std::fs::write(&path, text).unwrap();
    let c = path.to_str().unwrap().to_string();
    let second = metrics_addr();
    let mut front = Proc::start("prime_httpd", &["--config", &c]);
    let addr = front.listening();
    let procs = vec![
        front,
        Proc::start("prime_proxyd", &["--config", &c, "--stage", "parse"]),
        Proc::start("prime_proxyd", &["--config", &c, "--stage", "test"]),
        Proc::start("prime_workerd", &["--config", &c, "--stage", "parse"]),
        Proc::start("prime_workerd", &["--config", &c, "--stage", "test"]),
        Proc::start(
            "prime_workerd",
            &[
                "--config",
                &c,
                "--stage",
                "test",
                "--metrics-listen",
                &second,
            ],
        ),
    ];
    listeners.push(second);
    (procs, addr, c, listeners)
}

#[test]
fn prime_top_once_prints_a_row_per_front_stage_and_process_with_numbers() {
    let _serial = serial();
    let dir = temp_dir("m-top");
    let (procs, addr, config, listeners) = prime_deployment(&dir);
    for l in &listeners {
        wait_until(&format!("no metrics at {l}"), || {
            prime_bin::scrape::fetch(l, LIMIT).is_ok()
        });
    }
    let second = listeners.last().unwrap().clone();
    wait_until("the demo never answered", || {
        let mut s = connect(addr);
        http(&mut s, &get("/is_prime?possible_prime=7")).is_some_and(|r| r.0 == 200)
    });
    // Load while prime_top looks: one client, one request after another.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut s = connect(addr);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, _, _) =
                    http(&mut s, &get("/is_prime?possible_prime=1000003")).unwrap();
                assert_eq!(status, 200);
            }
        })
    };
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = Command::new(bin("prime_top"))
        .args([
            "--config",
            &config,
            "--scrape",
            &second,
            "--scrape",
            &nobody,
            "--once",
            "--interval",
            "0.5",
        ])
        .output()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    load.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: no escape codes.
    assert!(!text.contains('\x1b'), "{text}");
    let row = |first: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no {first} row in\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let rate = |cell: &str| {
        cell.parse::<f64>()
            .unwrap_or_else(|_| panic!("{cell:?} in\n{text}"))
    };
    // FRONT REQ/S OK/S P50 P99 …
    let web = row("web");
    assert!(rate(&web[1]) > 0.0 && rate(&web[2]) > 0.0, "{text}");
    assert!(web[3].ends_with('s') && web[4].ends_with('s'), "{text}");
    // STAGE JOBS/S QUEUED IDLE BUSY JOB-P50 JOB-P99 …: test's row adds both worker processes.
    for stage in ["parse", "test"] {
        let r = row(stage);
        assert!(rate(&r[1]) > 0.0, "{stage}: {text}");
        for level in &r[2..5] {
            rate(level);
        }
        assert!(
            r[5].ends_with('s') && r[6].ends_with('s'),
            "{stage}: {text}"
        );
    }
    for what in [
        "front web",
        "proxy parse",
        "proxy test",
        "workers parse",
        "workers test",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in\n{text}"));
        assert!(line.ends_with(" up"), "{line}");
    }
    let extra = text.lines().find(|l| l.contains(&second)).unwrap();
    assert!(
        extra.starts_with("workers test") && extra.ends_with(" up"),
        "{extra}"
    );
    let dead = text.lines().find(|l| l.contains(&nobody)).unwrap();
    assert!(dead.contains("unreachable"), "{dead}");
    for p in procs {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Every family a deployment exposes: one `prime_serverd --config` running a whole topology
/// (a front, the proxies and workers of two stages: one registry), scraped after a request.
fn every_family() -> prime_bin::scrape::Exposition {
    let dir = temp_dir("m-all");
    let d = dir.display();
    let metrics = metrics_addr();
    let mut text = format!(
        "drain_seconds = 1\n[[server]]\nlisten = \"127.0.0.1:{}\"\nloopback = \"ipc://{d}/lb\"\ninterrupt = \"ipc://{d}/int\"\nmetrics_listen = \"{metrics}\"\n",
        free_port()
    );
    for (stage, work) in [("parse", "prime_parse"), ("test", "prime_test")] {
        text += &format!(
            "[[stage]]\nname = \"{stage}\"\nwork = \"{work}\"\nupstream = \"ipc://{d}/{stage}_in\"\ndownstream = \"ipc://{d}/{stage}_out\"\nworkers = 1\n"
        );
    }
    let path = dir.join("all.toml");
    std::fs::write(&path, text).unwrap();
    let mut p = Proc::start("prime_serverd", &["--config", path.to_str().unwrap()]);
    let addr = p.listening();
    let mut s = connect(addr);
    assert_eq!(
        http(&mut s, &get("/is_prime?possible_prime=7")).unwrap().0,
        200
    );
    let e = scrape(&metrics);
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
    e
}

/// The metric names in a PromQL expression: ours and the process collector's.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("prime_server_") || w.starts_with("process_"))
        .collect()
}

fn repo_file(path: &str) -> String {
    let p = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_a_deployment_exposes() {
    let _serial = serial();
    let text = repo_file("examples/grafana/prime_server.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is not JSON");
    for key in ["title", "uid", "schemaVersion", "panels", "templating"] {
        assert!(dash.get(key).is_some(), "no {key}");
    }
    let exposed = every_family();
    let known = |name: &str| {
        exposed.family(name).is_some() || exposed.samples.iter().any(|s| s.name == name)
    };
    let mut exprs: Vec<String> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for p in dash["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: id twice");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            if expr.contains("histogram_quantile") {
                assert!(expr.contains("_bucket") && expr.contains(" le)"), "{expr}");
            }
            exprs.push(expr.to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    let mut used = std::collections::HashSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            assert!(known(name), "{name} (in {expr}) is not exposed");
            used.insert(name.to_string());
        }
    }
    // The panels an operator scaling a stage needs.
    for needed in [
        "prime_server_front_submitted_total",
        "prime_server_front_request_seconds_bucket",
        "prime_server_proxy_queued",
        "prime_server_proxy_idle",
        "prime_server_worker_job_seconds_bucket",
        "prime_server_proxy_redelivered_total",
        "prime_server_proxy_expired_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn prometheus_yml_scrapes_every_metrics_listener_of_the_one_host_example() {
    let _serial = serial();
    let dir = format!("{}/../../examples", env!("CARGO_MANIFEST_DIR"));
    let t = prime_server::topology::Topology::load(&format!("{dir}/one-host-ipc.toml")).unwrap();
    let mut listeners: Vec<String> = prime_bin::top::targets(&t)
        .into_iter()
        .map(|t| t.addr)
        .collect();
    assert_eq!(listeners.len(), 5, "{listeners:?}");
    let yml = repo_file("examples/prometheus.yml");
    let mut scraped: Vec<String> = yml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split('"').skip(1).step_by(2))
        .filter(|w| w.starts_with("127.0.0.1:"))
        .map(str::to_string)
        .collect();
    listeners.sort();
    scraped.sort();
    assert_eq!(scraped, listeners);
}

#[test]
fn the_readme_lists_every_metric() {
    let _serial = serial();
    let readme = repo_file("README.md");
    let start = readme
        .find("\n## Observability")
        .expect("no Observability section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    for f in every_family().families {
        assert!(
            section.contains(&format!("`{}`", f.name)),
            "README's Observability section does not list `{}` ({})",
            f.name,
            f.help.unwrap_or_default()
        );
    }
}
