//! The netstring front over real TCP sockets on 127.0.0.1, asserting raw bytes on the wire.

use prime_server::pipeline::Pipeline;
use prime_server::protocol::{
    self,
    netstring::{HealthCheck, Netstring},
};
use prime_server::Outcome;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{connect, wait_until, Front, LIMIT};

/// A front whose requests have the default 60 s deadline: beyond every wait of these tests, so
/// only what a test does can end a request early.
fn front(name: &str, max_len: usize) -> Front {
    front_with(name, max_len, Duration::from_secs(60), 1000)
}

/// A front with a request deadline and a cap on connections.
fn front_with(name: &str, max_len: usize, deadline: Duration, max_connections: usize) -> Front {
    let mut p = Pipeline::new(&format!("{name}-{}", prime_server::server::random_id()));
    p.timeout = Some(deadline);
    // "sleepN:body" sleeps N ms first; "loop" runs until interrupted.
    p.stage(2, |job, interrupt| {
        let body = job.frames.concat();
        if body == b"loop" {
            loop {
                interrupt.check()?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if let Some(rest) = body.strip_prefix(b"sleep") {
            let ms: u64 =
                std::str::from_utf8(&rest[..rest.iter().position(|&b| b == b':').unwrap_or(0)])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(Outcome::Reply(body))
    });
    Front::start(
        p.start().unwrap(),
        move |listener, server, shutdown| async move {
            let proto = Netstring {
                max_len,
                health: Some(Arc::new(HealthCheck {
                    request: "health_check".into(),
                    response: "foo_bar_baz".into(),
                })),
            };
            protocol::serve(listener, server, proto, max_connections, shutdown).await;
        },
    )
}

/// Reads until `want` bytes arrived or the peer closed.
fn read_n(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    out
}

fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn echoes_and_answers_pipelined_requests_in_order() {
    let f = front("order", 1 << 20);
    let mut s = connect(f.addr);
    // The first is slow, the second fast: answers still come in request order.
    s.write_all(b"11:sleep300:ab,5:hello,0:,").unwrap();
    let want = b"11:sleep300:ab,5:hello,0:,";
    assert_eq!(read_n(&mut s, want.len()), want);
}

#[test]
fn a_request_split_at_every_byte_is_understood() {
    let f = front("split", 1 << 20);
    let msg = b"12:abgeschnitte,";
    for cut in 1..msg.len() {
        let mut s = connect(f.addr);
        s.write_all(&msg[..cut]).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        s.write_all(&msg[cut..]).unwrap();
        assert_eq!(read_n(&mut s, msg.len()), msg, "cut at {cut}");
    }
}

#[test]
fn malformed_input_gets_an_error_and_a_close_and_other_connections_go_on() {
    let f = front("malformed", 1 << 20);
    let mut good = connect(f.addr);
    good.write_all(b"3:one,").unwrap();
    assert_eq!(read_n(&mut good, 6), b"3:one,");
    for (input, reason) in [
        (&b"isch_doch_unsinn"[..], "Non-numeric length"),
        (b"5:hello;", "Missing ',' after body"),
        (b"99999999999999999999999999", "Length has too many digits"),
    ] {
        let mut bad = connect(f.addr);
        bad.write_all(input).unwrap();
        let got = String::from_utf8(read_to_close(&mut bad)).unwrap();
        assert!(got.contains(&format!("BAD_REQUEST: {reason}")), "{got}");
    }
    good.write_all(b"3:two,").unwrap();
    assert_eq!(read_n(&mut good, 6), b"3:two,");
}

#[test]
fn beyond_max_connections_a_connection_gets_an_error_503_and_a_closed_one_frees_its_slot() {
    let f = front_with("max-connections", 1 << 20, Duration::from_secs(60), 1);
    let mut held = connect(f.addr);
    held.write_all(b"4:held,").unwrap();
    assert_eq!(read_n(&mut held, 7), b"4:held,");
    let mut over = connect(f.addr);
    over.write_all(b"4:over,").unwrap();
    assert_eq!(
        read_to_close(&mut over),
        b"31:ERROR 503: too many connections,"
    );
    drop(held);
    wait_until("the closed connection's slot never freed", || {
        let mut s = connect(f.addr);
        s.write_all(b"3:new,").unwrap();
        // Refused again while the front has not yet seen the close.
        let got = read_n(&mut s, 6);
        if got.starts_with(b"31:ERROR 503") {
            return false;
        }
        assert_eq!(got, b"3:new,");
        true
    });
}

#[test]
fn a_request_over_the_limit_is_refused_before_its_body_arrives() {
    let f = front("toolarge", 1024);
    let mut s = connect(f.addr);
    s.write_all(b"1034:").unwrap();
    let got = String::from_utf8(read_to_close(&mut s)).unwrap();
    assert_eq!(got, "44:BAD_REQUEST: Request exceeded maximum length,");
    // Exactly at the limit is fine.
    let mut s = connect(f.addr);
    let body = vec![b'x'; 1024];
    s.write_all(b"1024:").unwrap();
    s.write_all(&body).unwrap();
    s.write_all(b",").unwrap();
    assert_eq!(read_n(&mut s, 1030).len(), 1030);
}

#[test]
fn health_checks_are_answered_without_touching_workers() {
    let f = front("health", 1 << 20);
    let mut s = connect(f.addr);
    s.write_all(b"12:health_check,").unwrap();
    assert_eq!(read_n(&mut s, 15), b"11:foo_bar_baz,");
    assert_eq!(f.jobs(), 0);
}

/// A client that is really gone: it resets the connection (a half-close alone is not leaving:
/// see tests/half_close.rs).
#[test]
fn a_client_that_disconnects_interrupts_its_work() {
    let f = front("disconnect", 1 << 20);
    let running = f.running();
    let mut s = connect(f.addr);
    s.write_all(b"4:loop,").unwrap();
    wait_until("the job never started", || f.jobs() > 0);
    common::reset(s);
    // The deadline (60 s) is beyond the wait: only the disconnect can stop the work in time.
    wait_until("the work was not interrupted", || f.failed() > 0);
    assert_eq!(running.server.stats().snapshot().cancelled, 1);
}

#[test]
fn a_request_past_its_deadline_gets_timeout() {
    let deadline = Duration::from_secs(1);
    let f = front_with("timeout", 1 << 20, deadline, 1000);
    let mut s = connect(f.addr);
    let t = Instant::now();
    s.write_all(b"4:loop,").unwrap();
    // The work never ends by itself: only the deadline answers it (the read gives up after LIMIT).
    assert_eq!(read_n(&mut s, 10), b"7:TIMEOUT,");
    let took = t.elapsed();
    assert!(took >= deadline && took < LIMIT, "{took:?}");
}
