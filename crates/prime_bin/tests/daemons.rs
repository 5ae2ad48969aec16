//! The daemons as separate real processes, over ipc and over tcp on 127.0.0.1.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn write_topology(dir: &Path, port: u16, scheme: &str, extra: &str) -> PathBuf {
    let head = "drain_seconds = 5\n[heartbeat]\ninterval_ms = 500\nliveness = 3";
    let server = format!("health_path = \"/health\"\n{extra}");
    prime_topology(dir, port, scheme, head, &server, ["", ""], 2).0
}

fn prime_stack(config: &Path) -> (Vec<Proc>, Proc, SocketAddr) {
    let c = config.to_str().unwrap();
    let parts = vec![
        Proc::start("prime_proxyd", &["--config", c, "--stage", "parse"]),
        Proc::start("prime_proxyd", &["--config", c, "--stage", "test"]),
        Proc::start("prime_workerd", &["--config", c, "--stage", "parse"]),
        Proc::start("prime_workerd", &["--config", c, "--stage", "test"]),
    ];
    let mut front = Proc::start("prime_httpd", &["--config", c]);
    let addr = front.listening();
    (parts, front, addr)
}

/// Stops the front first, then the other parts, and removes the test's directory.
fn stop_stack(front: Proc, parts: Vec<Proc>, dir: PathBuf) {
    front.stop();
    for p in parts {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn check_primes(addr: SocketAddr) {
    let mut s = connect(addr);
    let (status, _, body) = http(&mut s, &get("/is_prime?possible_prime=32416190071")).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"possible_prime":32416190071,"is_prime":true}"#)
    );
    let (status, _, body) = http(&mut s, &get("/is_prime?possible_prime=1000")).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"possible_prime":1000,"is_prime":false}"#)
    );
    let (status, _, _) = http(&mut s, &get("/is_prime?possible_prime=nope")).unwrap();
    assert_eq!(status, 400);
    let (status, _, body) = http(&mut s, &get("/health")).unwrap();
    assert_eq!((status, body.as_str()), (200, "OK\n"));
}

#[test]
fn the_prime_demo_runs_as_separate_processes_over_ipc_even_with_stale_socket_files() {
    let dir = temp_dir("ipc");
    let config = write_topology(&dir, free_port(), "ipc", "");
    // Files left behind by a crashed run must not stop a restart.
    for name in [
        "loopback",
        "interrupt",
        "parse_in",
        "parse_out",
        "test_in",
        "test_out",
    ] {
        std::fs::write(dir.join(name), b"stale").unwrap();
    }
    let (parts, front, addr) = prime_stack(&config);
    check_primes(addr);
    stop_stack(front, parts, dir);
}

#[test]
fn the_prime_demo_runs_as_separate_processes_over_tcp() {
    let dir = temp_dir("tcp");
    let config = write_topology(&dir, free_port(), "tcp", "");
    let (parts, front, addr) = prime_stack(&config);
    check_primes(addr);
    stop_stack(front, parts, dir);
}

#[test]
fn the_c_plus_plus_positional_arguments_still_work() {
    let ep = || format!("tcp://127.0.0.1:{}", free_port());
    let (up, down, lb, int) = (ep(), ep(), ep(), ep());
    let proxy = Proc::start("prime_proxyd", &[&up, &down, "1"]);
    let workers = Proc::start(
        "prime_workerd",
        &[&down, "-", &lb, &int, "1", "--work", "echo"],
    );
    let listen = format!("tcp://127.0.0.1:{}", free_port());
    let mut front = Proc::start(
        "prime_httpd",
        &[
            &listen, &up, &lb, &int, "false", "1000", "10", "1", "/health",
        ],
    );
    let addr = front.listening();
    let mut s = connect(addr);
    let (status, head, body) = http(&mut s, &get("/echo?a=1")).unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("GET /echo?a=1 HTTP/1.1\r\n"), "{body}");
    assert!(head.contains("x-worker:"), "{head}");
    // The 5th to 9th arguments: the body limit (1000) and the health path.
    let big = format!(
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n{}",
        "b".repeat(1001)
    );
    assert_eq!(http(&mut s, &big).unwrap().0, 413);
    let mut s = connect(addr);
    assert_eq!(http(&mut s, &get("/health")).unwrap().0, 200);
    front.stop();
    workers.stop();
    proxy.stop();
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = temp_dir("badcfg");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[server]]\nlisten = \"127.0.0.1:1\"\nloopback = \"ipc:///tmp/x\"\ninterrupt = \"ipc:///tmp/y\"\ntimout_seconds = 3\n[[stage]]\nname=\"a\"\nwork=\"echo\"\nupstream=\"ipc:///tmp/a\"\ndownstream=\"ipc:///tmp/b\"\n").unwrap();
    for daemon in ["prime_httpd", "prime_serverd"] {
        let out = Command::new(bin(daemon))
            .args(["--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("timout_seconds"), "{daemon}: {err}");
    }
    let out = Command::new(bin("prime_workerd"))
        .args([
            "tcp://127.0.0.1:1",
            "-",
            "tcp://127.0.0.1:2",
            "tcp://127.0.0.1:3",
            "--work",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown work"));
    for daemon in [
        "prime_httpd",
        "prime_proxyd",
        "prime_workerd",
        "prime_echod",
        "prime_filed",
    ] {
        let out = Command::new(bin(daemon)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{daemon} --help");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An echo stage (one proxy) with the front, over ipc; returns (proxy, front, addr, topology).
fn echo_stack(dir: &Path) -> (Proc, Proc, SocketAddr, PathBuf) {
    let path = dir.join("echo.toml");
    std::fs::write(
        &path,
        format!(
            "drain_seconds = 5\n[heartbeat]\ninterval_ms = 500\n[[server]]\nlisten = \"127.0.0.1:{}\"\nloopback = \"ipc://{d}/lb\"\ninterrupt = \"ipc://{d}/int\"\n[[stage]]\nname = \"echo\"\nwork = \"echo\"\nupstream = \"ipc://{d}/in\"\ndownstream = \"ipc://{d}/out\"\nworkers = 1\n",
            free_port(),
            d = dir.display()
        ),
    )
    .unwrap();
    let c = path.to_str().unwrap().to_string();
    let proxy = Proc::start("prime_proxyd", &["--config", &c, "--stage", "echo"]);
    let mut front = Proc::start("prime_httpd", &["--config", &c]);
    let addr = front.listening();
    (proxy, front, addr, path)
}

fn worker_of(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("x-worker: "))
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_second_worker_process_joining_a_running_stage_takes_a_share() {
    let dir = temp_dir("join");
    let (proxy, front, addr, cfg) = echo_stack(&dir);
    let c = cfg.to_str().unwrap();
    let first = Proc::start("prime_workerd", &["--config", c, "--stage", "echo"]);
    let mut s = connect(addr);
    let (status, head, _) = http(&mut s, &get("/one")).unwrap();
    assert_eq!(status, 200);
    let pid_a = worker_of(&head);
    let second = Proc::start("prime_workerd", &["--config", c, "--stage", "echo"]);
    // Concurrent requests from several connections, until both processes have answered.
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    wait_until("the second worker never served", || {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut s = connect(addr);
                    for _ in 0..10 {
                        let (status, head, _) = http(&mut s, &get("/x?sleep")).unwrap();
                        assert_eq!(status, 200);
                        seen.lock().unwrap().insert(worker_of(&head));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        seen.lock().unwrap().len() >= 2
    });
    assert!(seen.lock().unwrap().contains(&pid_a));
    front.stop();
    first.stop();
    second.stop();
    proxy.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn restarting_a_worker_process_loses_nothing() {
    let dir = temp_dir("restart");
    let (proxy, front, addr, cfg) = echo_stack(&dir);
    let c = cfg.to_str().unwrap().to_string();
    let first = Proc::start("prime_workerd", &["--config", &c, "--stage", "echo"]);
    let done = Arc::new(AtomicBool::new(false));
    // Requests sent, and (request, answer) pairs, one request at a time.
    let sent = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (done, sent, results) = (done.clone(), sent.clone(), results.clone());
        std::thread::spawn(move || {
            let mut s = connect(addr);
            let mut k = 0;
            while !done.load(Ordering::SeqCst) {
                sent.store(k + 1, Ordering::SeqCst);
                let r = http(&mut s, &get(&format!("/r{k}"))).map(|(st, _, body)| (st, body));
                results.lock().unwrap().push((k, r));
                k += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let answered = || results.lock().unwrap().len();
    wait_until("the first worker never served", || answered() >= 10);
    first.stop();
    // No worker now: a request sent now has to wait for the second one.
    let mut lone = connect(addr);
    lone.write_all(get("/while-none").as_bytes()).unwrap();
    let second = Proc::start("prime_workerd", &["--config", &c, "--stage", "echo"]);
    let (status, _, body) = read_answer(&mut lone).expect("no answer to /while-none");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("GET /while-none "), "{body}");
    let waiting = sent.load(Ordering::SeqCst);
    wait_until("the second worker did not take over", || {
        answered() >= waiting + 10
    });
    done.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let results = results.lock().unwrap();
    assert!(results.len() > 20, "{}", results.len());
    for (k, r) in results.iter() {
        match r {
            Some((200, body)) => assert!(body.starts_with(&format!("GET /r{k} ")), "{body}"),
            other => panic!("request {k}: {other:?}"),
        }
    }
    front.stop();
    second.stop();
    proxy.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_to_the_front_under_load_answers_everything_sent_before_it() {
    let dir = temp_dir("drain");
    let config = write_topology(&dir, free_port(), "ipc", "");
    let (parts, mut front, addr) = prime_stack(&config);
    let signalled = Arc::new(Mutex::new(None::<Instant>));
    // (sent after the signal?, status; 0 = connection refused) for every request of every client.
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    // Each client asks until the front refuses its connection (it accepts and serves through
    // the drain, each answer saying `Connection: close`, then stops accepting, finishes what is
    // in flight and exits).
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (signalled, outcomes) = (signalled.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                s.set_read_timeout(Some(LIMIT)).unwrap();
                loop {
                    let sent = Instant::now();
                    let r = http(&mut s, &get("/is_prime?possible_prime=32416190071"));
                    let after = signalled.lock().unwrap().is_some_and(|t| sent >= t);
                    let closing = r
                        .as_ref()
                        .is_none_or(|(_, h, _)| h.contains("connection: close"));
                    outcomes
                        .lock()
                        .unwrap()
                        .push((after, r.map(|(st, _, _)| st)));
                    if closing {
                        // Reconnect, as a client does after `Connection: close`.
                        match TcpStream::connect(addr) {
                            Ok(n) => {
                                s = n;
                                s.set_read_timeout(Some(LIMIT)).unwrap();
                            }
                            Err(_) => {
                                outcomes.lock().unwrap().push((true, Some(0)));
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    wait_until(
        "fewer than 11 requests were answered before the signal",
        || outcomes.lock().unwrap().len() > 10,
    );
    *signalled.lock().unwrap() = Some(Instant::now());
    front.signal("-TERM");
    let status = front.wait_exit(LIMIT);
    assert!(status.success());
    for c in clients {
        c.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap();
    let before: Vec<_> = outcomes.iter().filter(|(after, _)| !after).collect();
    assert!(before.len() > 10, "{}", before.len());
    for (_, r) in &before {
        assert_eq!(
            *r,
            Some(200),
            "a request sent before SIGTERM was not answered: {outcomes:?}"
        );
    }
    for (_, r) in outcomes.iter().filter(|(after, _)| *after) {
        // After the signal: an answer (200 or 503), a refused connection (0), or a close before
        // any answer: on a reused keep-alive connection the server closed as idle, or on a new
        // one whose handshake completed just as the listener closed (TCP resets it, which a
        // client sees like a refusal). Either way no request the server took is lost.
        assert!(
            matches!(r, Some(200) | Some(503) | Some(0) | None),
            "{outcomes:?}"
        );
    }
    for p in parts {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn echod_and_filed_serve_and_stop() {
    let port = free_port();
    let mut echo = Proc::start("prime_echod", &[&format!("127.0.0.1:{port}"), "2", "1"]);
    let addr = echo.listening();
    let mut s = connect(addr);
    let body = "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    let (status, _, got) = http(&mut s, body).unwrap();
    assert_eq!(status, 200);
    assert!(
        got.starts_with("POST /e HTTP/1.1\r\n") && got.ends_with("\r\n\r\nhello"),
        "{got}"
    );
    echo.stop();

    let root = temp_dir("files");
    std::fs::write(root.join("a.txt"), "0123456789").unwrap();
    std::fs::write(root.join("page.html"), "<p>hi</p>").unwrap();
    std::fs::create_dir_all(root.join("sub dir")).unwrap();
    std::fs::write(root.join("sub dir/b.json"), "{}").unwrap();
    let outside = root
        .parent()
        .unwrap()
        .join(format!("ps-secret-{}", std::process::id()));
    std::fs::write(&outside, "secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let port = free_port();
    let mut files = Proc::start(
        "prime_filed",
        &[
            &format!("127.0.0.1:{port}"),
            root.to_str().unwrap(),
            "1",
            "/health",
        ],
    );
    let addr = files.listening();
    let mut s = connect(addr);
    let (status, head, body) = http(&mut s, &get("/a.txt")).unwrap();
    assert_eq!((status, body.as_str()), (200, "0123456789"));
    assert!(head.contains("content-type: text/plain"), "{head}");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_string();
    let (status, _, body) = http(
        &mut s,
        &format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"),
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, head, body) = http(
        &mut s,
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=2-4\r\n\r\n",
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (206, "234"));
    assert!(head.contains("content-range: bytes 2-4/10"), "{head}");
    let (status, _, _) = http(
        &mut s,
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=50-\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, 416);
    let head = head_request(&mut s, "/a.txt");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 10"), "{head}");
    let (status, head, _) = http(&mut s, &get("/page.html")).unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    let (status, _, body) = http(&mut s, &get("/")).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("a.txt") && body.contains("sub%20dir/"),
        "{body}"
    );
    let (status, _, body) = http(&mut s, &get("/sub%20dir/b.json")).unwrap();
    assert_eq!((status, body.as_str()), (200, "{}"));
    let (status, head, _) = http(&mut s, &get("/sub%20dir")).unwrap();
    assert_eq!(status, 301);
    assert!(head.contains("location: /sub%20dir/"), "{head}");
    for escape in [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/escape",
        "/nope",
    ] {
        let (status, _, body) = http(&mut s, &get(escape)).unwrap();
        assert_eq!(status, 404, "{escape}: {body}");
    }
    assert_eq!(http(&mut s, &get("/health")).unwrap().0, 200);
    let (status, _, _) = http(&mut s, "DELETE /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(status, 405);
    files.stop();
    let _ = std::fs::remove_file(outside);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let port = free_port();
    let mut child = Command::new(bin("prime_echod"))
        .args([
            &format!("127.0.0.1:{port}"),
            "1",
            "0",
            "--access-log",
            "--log-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    let mut s = connect(addr);
    assert_eq!(http(&mut s, &get("/j")).unwrap().0, 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let access: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .collect();
    assert_eq!(access.len(), 1, "{err}");
    for l in err.lines() {
        assert!(l.starts_with('{') && l.ends_with('}'), "not JSON: {l}");
    }
    assert!(
        access[0].contains("\"status\":200") && access[0].contains("\"path\":\"/j\""),
        "{}",
        access[0]
    );
}

#[test]
fn named_flags_work_like_the_positional_arguments() {
    let ep = || format!("tcp://127.0.0.1:{}", free_port());
    let (up, down, lb, int) = (ep(), ep(), ep(), ep());
    let proxy = Proc::start(
        "prime_proxyd",
        &[
            "--upstream",
            &up,
            "--downstream",
            &down,
            "--drain-seconds",
            "1",
        ],
    );
    let workers = Proc::start(
        "prime_workerd",
        &[
            "--upstream",
            &down,
            "--downstream",
            "-",
            "--loopback",
            &lb,
            "--interrupt",
            &int,
            "--work",
            "echo",
            "--workers",
            "3",
        ],
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let mut front = Proc::start(
        "prime_httpd",
        &[
            "--listen",
            &listen,
            "--proxy",
            &up,
            "--loopback",
            &lb,
            "--interrupt",
            &int,
            "--health-path",
            "/hc",
            "--max-body",
            "10",
        ],
    );
    let addr = front.listening();
    let mut s = connect(addr);
    assert_eq!(http(&mut s, &get("/hc")).unwrap().0, 200);
    let (status, _, body) = http(&mut s, &get("/named")).unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("GET /named HTTP/1.1"), "{body}");
    let big = "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n01234567890";
    assert_eq!(http(&mut s, big).unwrap().0, 413);
    front.stop();
    workers.stop();
    proxy.stop();
}
