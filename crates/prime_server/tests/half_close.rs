//! Clients that shut down their sending side after their request (as `nc` does at the end of
//! its input) are answered; clients that are really gone (a reset) are still interrupted. Raw
//! sockets on 127.0.0.1: `shutdown(Write)` for the half-close, SO_LINGER 0 for the reset.

use prime_server::http_job::{Request, Response};
use prime_server::pipeline::Pipeline;
use prime_server::protocol::{self, http::HttpConfig, netstring::Netstring};
use prime_server::Outcome;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

mod common;
use common::{connect, reset, wait_until, Front};

/// The work both fronts run: `loop` (the netstring payload, or `?loop=1`) runs until
/// interrupted; `sleepN` / `?sleep=N` sleeps N ms first; anything else is echoed. Requests have
/// a 60 s deadline: only a client can end a `loop` early.
fn pipeline(name: &str) -> Pipeline {
    let mut p = Pipeline::new(&format!("{name}-{}", prime_server::server::random_id()));
    p.timeout = Some(Duration::from_secs(60));
    p.stage(2, |job, interrupt| {
        let body = job.frames.concat();
        let (looping, sleep, reply) = match Request::decode(&job.frames) {
            Ok(req) => (
                req.query_value("loop").is_some(),
                req.query_value("sleep").and_then(|v| v.parse().ok()),
                Response::text(200, format!("{} {}\n", req.method, req.path)).encode(),
            ),
            Err(_) => (
                body == b"loop",
                body.strip_prefix(b"sleep")
                    .and_then(|ms| std::str::from_utf8(ms).ok()?.parse().ok()),
                body.clone(),
            ),
        };
        if looping {
            loop {
                interrupt.check()?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if let Some(ms) = sleep {
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(Outcome::Reply(reply))
    });
    p
}

fn http_front(name: &str) -> Front {
    Front::start(
        pipeline(name).start().unwrap(),
        |listener, server, shutdown| {
            protocol::http::serve(listener, server, HttpConfig::default(), shutdown)
        },
    )
}

fn netstring_front(name: &str) -> Front {
    Front::start(
        pipeline(name).start().unwrap(),
        |listener, server, shutdown| {
            protocol::serve(listener, server, Netstring::default(), 100, shutdown)
        },
    )
}

/// Sends `request`, shuts down the sending side, and reads until the server closes.
fn half_closed(f: &Front, request: &[u8]) -> String {
    let mut s = connect(f.addr);
    s.write_all(request).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn netstring_requests_then_a_half_close_are_all_answered_in_order() {
    let f = netstring_front("ns-half");
    // The README's example, as Debian's nc sends it.
    assert_eq!(half_closed(&f, b"11:32416190071,"), "11:32416190071,");
    // Several, the first slower than the rest: answered in order, then the server closes.
    assert_eq!(
        half_closed(&f, b"8:sleep300,1:a,2:bc,"),
        "8:sleep300,1:a,2:bc,"
    );
    assert_eq!(f.running().server.stats().snapshot().cancelled, 0);
}

#[test]
fn a_netstring_client_that_resets_after_a_half_close_is_interrupted() {
    let f = netstring_front("ns-reset");
    let mut s = connect(f.addr);
    s.write_all(b"4:loop,").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    wait_until("the job never started", || f.jobs() > 0);
    // Half-closed: still waiting for its answer, so the work goes on.
    assert_eq!(f.failed(), 0);
    reset(s);
    // The deadline (60 s) is beyond the wait: only the reset can stop the work in time.
    wait_until("the work was not interrupted", || f.failed() > 0);
    assert_eq!(f.running().server.stats().snapshot().cancelled, 1);
}

#[test]
fn an_http_request_that_says_it_is_the_last_is_answered_after_a_half_close() {
    let f = http_front("http-half");
    for request in [
        // HTTP/1.0 without keep-alive: what `printf 'GET … HTTP/1.0\r\n\r\n' | nc` sends.
        &b"GET /ten?sleep=300 HTTP/1.0\r\n\r\n"[..],
        b"GET /close?sleep=300 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        // With a body, read in full before the end of the input.
        b"POST /body HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let got = half_closed(&f, request);
        let line = String::from_utf8_lossy(request);
        assert!(got.contains(" 200 OK\r\n"), "{line}: {got}");
        let (method, path) = {
            let mut words = line.split(' ');
            (words.next().unwrap(), words.next().unwrap())
        };
        let path = path.split('?').next().unwrap();
        assert!(
            got.ends_with(&format!("{method} {path}\n")),
            "{line}: {got}"
        );
    }
    assert_eq!(f.running().server.stats().snapshot().cancelled, 0);
}

#[test]
fn an_http_client_that_half_closes_a_persistent_connection_has_left() {
    let f = http_front("http-left");
    let mut s = connect(f.addr);
    // HTTP/1.1 keeps the connection: the end of the input means the client went away.
    s.write_all(b"GET /l?loop=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_until("the job never started", || f.jobs() > 0);
    s.shutdown(Shutdown::Write).unwrap();
    wait_until("the work was not interrupted", || f.failed() > 0);
    assert_eq!(f.running().server.stats().snapshot().cancelled, 1);
}

#[test]
fn an_http_client_that_resets_after_its_last_request_is_interrupted() {
    let f = http_front("http-reset");
    let mut s = connect(f.addr);
    s.write_all(b"GET /l?loop=1 HTTP/1.0\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    wait_until("the job never started", || f.jobs() > 0);
    assert_eq!(
        f.failed(),
        0,
        "half-closed after its last request: it waits for the answer"
    );
    reset(s);
    wait_until("the work was not interrupted", || f.failed() > 0);
    assert_eq!(f.running().server.stats().snapshot().cancelled, 1);
}
