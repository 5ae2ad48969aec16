//! prime_serverd as a real process: simulation output, serving, and SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_prime_serverd");

fn start(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
        let n = s.read(&mut buf).unwrap();
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

#[test]
fn serves_then_drains_and_exits_zero_on_sigterm() {
    let (mut child, addr) = start(&[
        "--protocol",
        "netstring",
        "127.0.0.1:0",
        "2",
        "1",
        "/health",
    ]);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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
    std::thread::sleep(Duration::from_millis(200));
    // Draining: the open connection is still served, the health check says so, and no new
    // connection is accepted.
    assert_eq!(ask(&mut s, b"7:/health,"), "DRAINING");
    assert_eq!(
        ask(&mut s, b"1:7,"),
        r#"{"possible_prime":7,"is_prime":true}"#
    );
    assert!(TcpStream::connect(&addr).is_err());
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "{took:?}"
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
    let t = Instant::now();
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(3));
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}
