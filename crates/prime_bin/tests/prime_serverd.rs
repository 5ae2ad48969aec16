//! prime_serverd as a real process: simulation output, serving, and SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{wait_until, LIMIT};

const BIN: &str = env!("CARGO_BIN_EXE_prime_serverd");

fn start(args: &[&str]) -> (Child, String) {
    start_with_stderr(args, Stdio::null())
}

fn start_with_stderr(args: &[&str], stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split_whitespace()
        .find(|w| w.contains(':'))
        .unwrap()
        .to_string();
    // Keep draining stdout so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t.elapsed() > within {
            let _ = child.kill();
            panic!("did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ask(s: &mut TcpStream, req: &[u8]) -> String {
    s.write_all(req).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    // Netstring answers: read until the frame's closing comma.
    loop {
        let n = common::read_some(s, &mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
        if let Some(colon) = out.iter().position(|&b| b == b':') {
            let len: usize = std::str::from_utf8(&out[..colon]).unwrap().parse().unwrap();
            if out.len() > colon + len {
                return String::from_utf8(out[colon + 1..colon + 1 + len].to_vec()).unwrap();
            }
        }
    }
}

#[test]
fn simulation_prints_primes_requests_and_time() {
    let out = Command::new(BIN).args(["1,10000", "2"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // 1229 primes below 10,000, minus the even prime 2.
    assert!(text.contains("1228 primes found"), "{text}");
    assert!(text.contains("4999 requests made"), "{text}");
    assert!(text.contains("s wall time"), "{text}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    for args in [&["10,1"][..], &["a,b"], &["1,10", "0"], &["ipc:///tmp/x"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

/// The drain of the SIGTERM tests: what they check while draining has seconds to spare.
const DRAIN_SECONDS: u64 = 5;

#[test]
fn serves_then_drains_and_exits_zero_on_sigterm() {
    let drain = DRAIN_SECONDS.to_string();
    let (mut child, addr) = start(&[
        "--protocol",
        "netstring",
        "127.0.0.1:0",
        "2",
        &drain,
        "/health",
    ]);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    assert_eq!(
        ask(&mut s, b"11:32416190071,"),
        r#"{"possible_prime":32416190071,"is_prime":true}"#
    );
    assert_eq!(
        ask(&mut s, b"2:15,"),
        r#"{"possible_prime":15,"is_prime":false}"#
    );
    assert!(ask(&mut s, b"3:abc,").starts_with("ERROR 400: expected a decimal number"));
    assert_eq!(ask(&mut s, b"7:/health,"), "OK");
    let t = Instant::now();
    signal(&child, "-TERM");
    // Draining: the health check says so, the open connection is still served, and so is a
    // new one (a load balancer probes health on new connections).
    wait_until("the health check never said DRAINING", || {
        match ask(&mut s, b"7:/health,").as_str() {
            "OK" => false,
            "DRAINING" => true,
            other => panic!("health: {other}"),
        }
    });
    assert_eq!(
        ask(&mut s, b"1:7,"),
        r#"{"possible_prime":7,"is_prime":true}"#
    );
    let mut new = TcpStream::connect(&addr).expect("a new connection refused during the drain");
    new.set_read_timeout(Some(LIMIT)).unwrap();
    assert_eq!(ask(&mut new, b"7:/health,"), "DRAINING");
    assert_eq!(
        ask(&mut new, b"1:2,"),
        r#"{"possible_prime":2,"is_prime":true}"#
    );
    assert!(
        t.elapsed() < Duration::from_secs(DRAIN_SECONDS),
        "the checks of the drain ran past it: {:?}",
        t.elapsed()
    );
    // After the drain: no new connection.
    wait_until("still accepting after the drain", || {
        TcpStream::connect(&addr).is_err()
    });
    let status = wait_exit(&mut child, LIMIT);
    assert!(status.success(), "{status:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(DRAIN_SECONDS),
        "stopped before the end of the drain: {took:?}"
    );
}

#[test]
fn ctrl_c_stops_at_once_without_a_drain() {
    let (mut child, addr) = start(&["--protocol", "netstring", "127.0.0.1:0", "1"]);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        ask(&mut s, b"1:2,"),
        r#"{"possible_prime":2,"is_prime":true}"#
    );
    // The client has left: with nothing connected and nothing in flight the default drain
    // (28 s) is not waited out.
    drop(s);
    let t = Instant::now();
    signal(&child, "-INT");
    let status = wait_exit(&mut child, LIMIT);
    assert!(status.success(), "{status:?}");
    // At once: 10 s is far above a prompt exit on a loaded machine and well below the drain.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Sends one HTTP/1.1 request on `s` and reads the answer (status, body).
fn http(s: &mut TcpStream, req: &str) -> (u16, String) {
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = common::read_some(s, &mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + len].to_string());
            }
        }
    }
}

#[test]
fn serves_http_with_an_access_log_and_drains_on_sigterm() {
    // Both ways of joining the stages in one process: in-memory queues (the default) and zmq.
    for transport in ["memory", "inproc"] {
        serves_http_and_drains_over(transport);
    }
}

fn serves_http_and_drains_over(transport: &str) {
    let log =
        std::env::temp_dir().join(format!("ps-access-{}-{transport}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let drain = DRAIN_SECONDS.to_string();
    let (mut child, addr) = start_with_stderr(
        &[
            "127.0.0.1:0",
            "2",
            &drain,
            "/health",
            "--access-log",
            "--transport",
            transport,
        ],
        Stdio::from(file),
    );
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let get = |n: &str| format!("GET /is_prime?possible_prime={n} HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        http(&mut s, &get("32416190071")),
        (
            200,
            r#"{"possible_prime":32416190071,"is_prime":true}"#.to_string()
        )
    );
    let (status, body) = http(&mut s, &get("x"));
    assert_eq!(status, 400);
    assert!(
        body.contains("GET /is_prime?possible_prime=32416190071"),
        "{body}"
    );
    let (status, _) = http(&mut s, "DELETE /is_prime HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 405);
    assert_eq!(
        http(
            &mut s,
            "POST /is_prime HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n15"
        )
        .0,
        200
    );
    assert_eq!(
        http(&mut s, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"),
        (200, "OK\n".into())
    );
    let mut requests = 5;
    let mut s2 = TcpStream::connect(&addr).unwrap();
    s2.set_read_timeout(Some(LIMIT)).unwrap();
    signal(&child, "-TERM");
    // Draining: the health path says 503 (asked until it does), the open connection is served.
    wait_until("the health path never said 503", || {
        requests += 1;
        match http(&mut s, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n").0 {
            200 => false,
            503 => true,
            other => panic!("health: {other}"),
        }
    });
    assert_eq!(http(&mut s2, &get("7")).0, 200);
    requests += 1;
    let status = wait_exit(&mut child, LIMIT);
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    // One access line per request.
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" access: ")).collect();
    assert_eq!(lines.len(), requests, "{text}");
    let first = lines[0];
    for field in [
        "id=",
        "method=GET",
        "path=/is_prime",
        "status=200",
        "bytes=46",
        "us=",
    ] {
        assert!(first.contains(field), "{field} in {first}");
    }
}
