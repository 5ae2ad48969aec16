//! One rule for every daemon: a flag given on the command line overrides the topology file's
//! value, and a value the command line does not give stays the file's. Each test runs a daemon
//! with `--config` and flags, and sees the flags' values at work from outside (a 504 at the
//! flag's deadline where the file's is a minute, a 413 where the file takes 10 MiB, a 503 where
//! the file's queue would take the job), and the file's where no flag was given.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;

/// An echo topology in `dir`: one front (`s0`) with a 60 s deadline and `/healthz` as its
/// health path, one echo stage of one worker thread.
fn topology(dir: &Path) -> String {
    echo_topology_in(dir, dir, 1, 60, "health_path = \"/healthz\"")
        .to_str()
        .unwrap()
        .to_string()
}

/// A request that takes a minute of work: a minute is what the file's deadline allows.
const SLOW: &str = "/slow?sleep=60000";

/// The flags `--timeout 1 --max-body 10` are in force on the front at `addr`, and the file's
/// health path (given by no flag) too.
fn assert_timeout_1_and_max_body_10(addr: SocketAddr) {
    let mut s = connect(addr);
    let (status, _, body) = http(&mut s, &get("/healthz")).expect("no answer");
    assert_eq!(
        (status, body.as_str()),
        (200, "OK\n"),
        "the file's health path"
    );
    let post = "POST /echo HTTP/1.1\r\nHost: t\r\ncontent-length: 100\r\n\r\n";
    let post = format!("{post}{}", "x".repeat(100));
    let (status, _, _) = http(&mut connect(addr), &post).expect("no answer to the large body");
    assert_eq!(status, 413, "--max-body 10 (the file takes 10 MiB)");
    let (status, _, body) = http(&mut connect(addr), &get(SLOW))
        .expect("no answer in 30 s: the file's 60 s deadline, not --timeout 1");
    assert_eq!(status, 504, "{body}");
}

#[test]
fn prime_serverd_takes_timeout_and_max_body_from_its_flags_over_the_file() {
    let dir = temp_dir("flags-serverd");
    let cfg = topology(&dir);
    let mut p = Proc::start(
        "prime_serverd",
        &["--config", &cfg, "--timeout", "1", "--max-body", "10"],
    );
    assert_timeout_1_and_max_body_10(p.listening());
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn prime_httpd_takes_timeout_and_max_body_from_its_flags_over_the_file() {
    let dir = temp_dir("flags-httpd");
    let cfg = topology(&dir);
    let parts = [proxy(&cfg), worker(&cfg)];
    let mut front = Proc::start(
        "prime_httpd",
        &["--config", &cfg, "--timeout", "1", "--max-body", "10"],
    );
    let addr = front.listening();
    assert_echoes(addr, 1, "served");
    assert_timeout_1_and_max_body_10(addr);
    front.stop();
    for p in parts {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn prime_echod_takes_its_front_from_the_file_and_timeout_and_max_body_from_its_flags() {
    let dir = temp_dir("flags-echod");
    let cfg = topology(&dir);
    let mut p = Proc::start(
        "prime_echod",
        &["--config", &cfg, "--timeout", "1", "--max-body", "10"],
    );
    let addr = p.listening();
    assert_echoes(addr, 1, "served");
    assert_timeout_1_and_max_body_10(addr);
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn prime_filed_takes_its_front_from_the_file_and_health_path_and_max_body_from_its_flags() {
    let dir = temp_dir("flags-filed");
    let cfg = topology(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello\n").unwrap();
    let mut p = Proc::start(
        "prime_filed",
        &[
            "--config",
            &cfg,
            "--root",
            root.to_str().unwrap(),
            "--health-path",
            "/ready",
            "--max-body",
            "10",
        ],
    );
    let addr = p.listening();
    let mut s = connect(addr);
    let (status, _, body) = http(&mut s, &get("/hello.txt")).unwrap();
    assert_eq!((status, body.as_str()), (200, "hello\n"), "--root");
    let (status, _, body) = http(&mut s, &get("/ready")).unwrap();
    assert_eq!((status, body.as_str()), (200, "OK\n"), "--health-path");
    // The file's health path is no longer one: a file that does not exist.
    let (status, _, _) = http(&mut s, &get("/healthz")).unwrap();
    assert_eq!(status, 404);
    let post = format!(
        "POST /hello.txt HTTP/1.1\r\nHost: t\r\ncontent-length: 100\r\n\r\n{}",
        "x".repeat(100)
    );
    let (status, _, _) = http(&mut connect(addr), &post).unwrap();
    assert_eq!(status, 413, "--max-body 10");
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn prime_proxyd_takes_its_queue_limit_from_its_flag_over_the_file() {
    let dir = temp_dir("flags-proxyd");
    let cfg = topology(&dir);
    let parts = [
        Proc::start(
            "prime_proxyd",
            &["--config", &cfg, "--stage", "echo", "--queue-limit", "1"],
        ),
        worker(&cfg),
    ];
    let (front, addr) = front(&cfg, "s0");
    assert_echoes(addr, 1, "served");
    // Three requests that each take a minute, one worker, a queue of one (the file's: 4096):
    // whatever their order, one is in the worker's hands, one waits, and one is refused at once.
    let (tx, rx) = mpsc::channel();
    for _ in 0..3 {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(http(&mut connect(addr), &get(SLOW)));
        });
    }
    let first = rx
        .recv_timeout(LIMIT)
        .expect("no answer in 30 s: the file's queue of 4096 took all three");
    let (status, _, body) = first.expect("connection closed");
    assert_eq!(status, 503, "{body}");
    drop(front);
    drop(parts);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn prime_workerd_and_prime_proxyd_take_endpoints_from_their_flags_over_the_file() {
    let dir = temp_dir("flags-workerd");
    let cfg = topology(&dir);
    // Neither the proxy nor the workers use the file's `downstream` (`out`): both are told
    // another endpoint, and only the flags together join them.
    let elsewhere = format!("ipc://{}/elsewhere", dir.display());
    let parts = [
        Proc::start(
            "prime_proxyd",
            &[
                "--config",
                &cfg,
                "--stage",
                "echo",
                "--downstream",
                &elsewhere,
            ],
        ),
        Proc::start(
            "prime_workerd",
            &[
                "--config",
                &cfg,
                "--stage",
                "echo",
                "--upstream",
                &elsewhere,
            ],
        ),
    ];
    let (front, addr) = front(&cfg, "s0");
    assert_echoes(addr, 3, "joined-by-flags");
    assert!(!dir.join("out").exists(), "the file's endpoint was bound");
    front.stop();
    for p in parts {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}
