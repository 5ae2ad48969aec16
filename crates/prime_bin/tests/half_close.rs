//! The README's netstring and HTTP/1.0 examples with Debian's `nc`, which shuts down its
//! sending side at the end of its input: the answer is printed (before, the server took the
//! half-close for the client leaving and answered nothing).

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// What `printf INPUT | nc -q1 HOST PORT` prints.
fn through_nc(addr: std::net::SocketAddr, input: &[u8]) -> String {
    let mut child = Command::new(nc())
        .args(["-q1", &addr.ip().to_string(), &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_netstring_example_prints_its_answer_with_nc() {
    let mut p = Proc::start(
        "prime_serverd",
        &["--protocol", "netstring", "127.0.0.1:0", "2"],
    );
    let addr = p.listening();
    assert_eq!(
        through_nc(addr, b"11:32416190071,"),
        r#"46:{"possible_prime":32416190071,"is_prime":true},"#
    );
    p.stop();
}

#[test]
fn an_http_1_0_request_sent_with_nc_is_answered() {
    let mut p = Proc::start("prime_serverd", &["127.0.0.1:0", "2"]);
    let addr = p.listening();
    let out = through_nc(addr, b"GET /is_prime?possible_prime=7 HTTP/1.0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    assert!(
        out.ends_with(r#"{"possible_prime":7,"is_prime":true}"#),
        "{out}"
    );
    p.stop();
}
