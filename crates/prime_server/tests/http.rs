//! The HTTP/1.1 front over real TCP sockets on 127.0.0.1: raw bytes on the wire, and real clients
//! (curl, Python's http.client) where they are installed.

use prime_server::http_job::{Request, Response};
use prime_server::pipeline::Pipeline;
use prime_server::protocol::{self, http::HttpConfig};
use prime_server::Outcome;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{connect, wait_until, Front, LIMIT};

/// Echoes what the worker saw: method, path, query pairs, headers and body, one per line.
/// `?sleep=MS` sleeps first; `?loop=1` runs until interrupted.
fn echo(req: &Request) -> Vec<u8> {
    let mut out = format!("method={}\npath={}\n", req.method, req.path);
    for (k, v) in &req.query {
        out.push_str(&format!("q:{k}={v}\n"));
    }
    for (k, v) in &req.headers {
        out.push_str(&format!("h:{k}={}\n", String::from_utf8_lossy(v)));
    }
    out.push_str("body=");
    let mut out = out.into_bytes();
    out.extend_from_slice(&req.body);
    out
}

/// A front whose requests have a 60 s deadline unless `config` says otherwise: beyond every wait of
/// these tests, so only what a test does can end a request early.
fn front_with(name: &str, config: HttpConfig) -> Front {
    let mut p = Pipeline::new(&format!("{name}-{}", prime_server::server::random_id()));
    p.timeout = Some(Duration::from_secs(60));
    p.stage(2, |job, interrupt| {
        let req = Request::decode(&job.frames).map_err(|e| prime_server::WorkError::Failed {
            status: 400,
            reason: e.to_string(),
        })?;
        if req.query_value("loop").is_some() {
            loop {
                interrupt.check()?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if let Some(ms) = req.query_value("sleep").and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let resp = Response::new(200)
            .header("content-type", "text/plain")
            .header("x-job-id", job.request_id().to_string())
            .header("x-job-trace-id", job.trace_id())
            .body(echo(&req));
        Ok(Outcome::Reply(resp.encode()))
    });
    Front::start(p.start().unwrap(), move |listener, server, shutdown| {
        protocol::http::serve(listener, server, config, shutdown)
    })
}

fn front(name: &str) -> Front {
    front_with(
        name,
        HttpConfig {
            max_body: 1024 * 1024,
            health_path: Some("/health".into()),
            ..HttpConfig::default()
        },
    )
}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads responses off a connection, keeping what it read past the last one.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn new(s: TcpStream) -> Self {
        Reader { s, buf: Vec::new() }
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            // A signal to this process interrupts a blocked read: read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            Err(e) => panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)),
        }
    }

    /// The next response; `head_only` for answers to HEAD.
    fn next(&mut self, head_only: bool) -> Option<Resp> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let len = if head_only || status == 100 { 0 } else { len };
                while self.buf.len() < end + 4 + len {
                    if !self.fill() {
                        return None;
                    }
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Some(Resp { status, head, body });
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// True when the server closed the connection (after what was already read).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn ask(addr: SocketAddr, raw: &[u8]) -> (Resp, Reader) {
    let mut r = Reader::new(connect(addr));
    r.send(raw);
    let resp = r.next(false).expect("a response");
    (resp, r)
}

#[test]
fn a_request_split_at_every_byte_offset_is_understood() {
    let f = front("split");
    let raw = b"POST /echo?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    for cut in 1..raw.len() {
        let mut r = Reader::new(connect(f.addr));
        r.send(&raw[..cut]);
        std::thread::sleep(Duration::from_millis(2));
        r.send(&raw[cut..]);
        let resp = r.next(false).unwrap();
        assert_eq!(resp.status, 200, "cut {cut}");
        assert!(
            resp.text().ends_with("body=hello"),
            "cut {cut}: {}",
            resp.text()
        );
    }
}

#[test]
fn query_is_split_then_decoded_and_any_method_reaches_the_worker() {
    let f = front("query");
    let (resp, _) = ask(
        f.addr,
        b"PATCH /p%20q?x=1%262&y=a+b&x=3&z=%3D HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n",
    );
    let t = resp.text();
    assert_eq!(resp.status, 200);
    for want in [
        "method=PATCH",
        "path=/p q",
        "q:x=1&2",
        "q:y=a b",
        "q:x=3",
        "q:z==",
        "h:x-dup=1",
        "h:x-dup=2",
    ] {
        assert!(t.contains(want), "{want} in {t}");
    }
    assert!(t.find("q:x=1&2").unwrap() < t.find("q:x=3").unwrap());
    let (resp, _) = ask(f.addr, b"GET /is_prime HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        !resp.text().contains("q:"),
        "no phantom query key: {}",
        resp.text()
    );
    // The request's number and trace id are visible to the work function.
    assert!(resp.header("x-job-id").unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(resp.header("x-job-trace-id"), resp.header("x-request-id"));
}

#[test]
fn keep_alive_follows_the_version_and_case_insensitive_tokens() {
    let f = front("keepalive");
    // HTTP/1.1: kept open by default.
    let (_, mut r) = ask(f.addr, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    r.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.next(false).unwrap().status, 200);
    // HTTP/1.1 with Connection: CLOSE (any case): closed after the answer.
    let (resp, mut r) = ask(
        f.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: CLOSE\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert!(r.closed());
    // HTTP/1.0: closed by default.
    let (resp, mut r) = ask(f.addr, b"GET /a HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(r.closed());
    // HTTP/1.0 with Connection: keep-alive: kept open.
    let (resp, mut r) = ask(f.addr, b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_eq!(resp.status, 200);
    r.send(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.next(false).unwrap().status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order_even_when_a_later_one_is_faster() {
    let f = front("pipeline");
    let mut r = Reader::new(connect(f.addr));
    r.send(b"GET /first?sleep=400 HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\nGET /third HTTP/1.1\r\nHost: x\r\n\r\n");
    for want in ["path=/first", "path=/second", "path=/third"] {
        let resp = r.next(false).unwrap();
        assert!(resp.text().contains(want), "{want}: {}", resp.text());
    }
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_are_dechunked() {
    let f = front("chunked");
    let (resp, _) = ask(
        f.addr,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert!(
        resp.text().ends_with("body=hello, world"),
        "{}",
        resp.text()
    );
}

#[test]
fn expect_100_continue_gets_a_100_before_the_body() {
    let f = front("continue");
    let mut r = Reader::new(connect(f.addr));
    r.send(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = r.next(false).unwrap();
    assert_eq!(interim.status, 100);
    r.send(b"body");
    let resp = r.next(false).unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.text().ends_with("body=body"));
}

#[test]
fn head_gets_headers_without_a_body() {
    let f = front("head");
    let mut r = Reader::new(connect(f.addr));
    r.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n");
    let resp = r.next(true).unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    // Nothing follows the head: the next response starts right after it.
    r.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    let next = r.next(false).unwrap();
    assert!(next.text().contains("path=/after"), "{}", next.text());
}

#[test]
fn malformed_framing_is_rejected_with_400_and_a_close() {
    let f = front("malformed");
    let cases: &[(&str, &[u8])] = &[
        ("duplicate content-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("negative content-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        ("overflowing content-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("missing host on 1.1", b"GET / HTTP/1.1\r\n\r\n"),
        ("garbage", b"isch_doch_unsinn\r\n\r\n"),
        ("transfer-encoding on 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ];
    for (what, raw) in cases {
        let (resp, mut r) = ask(f.addr, raw);
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        assert!(r.closed(), "{what}: connection left open");
    }
}

#[test]
fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    // RFC 9112 §6.1: Transfer-Encoding wins and the connection closes after the answer, so the
    // bytes a Content-Length-reading proxy would take for a second request are never served.
    let f = front("smuggle");
    let (resp, mut r) = ask(
        f.addr,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(resp.status == 400 || resp.status == 200, "{resp:?}");
    assert!(!resp.text().contains("smuggled"));
    assert!(r.next(false).is_none(), "a second response was served");
}

#[test]
fn limits_answer_413_and_431_then_close() {
    let f = front_with(
        "limits",
        HttpConfig {
            max_body: 1000,
            max_head: 8192,
            ..HttpConfig::default()
        },
    );
    // Declared too large: refused before the body is sent.
    let (resp, mut r) = ask(
        f.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n",
    );
    assert_eq!(resp.status, 413);
    assert!(!resp.body.is_empty());
    assert!(r.closed());
    // Chunked past the limit.
    let mut raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"190\r\n");
        raw.extend_from_slice(&[b'x'; 400]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let (resp, mut r) = ask(f.addr, &raw);
    assert_eq!(resp.status, 413);
    assert!(r.closed());
    // Exactly at the limit is served.
    let mut raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'y'; 1000]);
    assert_eq!(ask(f.addr, &raw).0.status, 200);
    // Headers over the limit.
    let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    raw.extend_from_slice(&[b'z'; 20_000]);
    raw.extend_from_slice(b"\r\n\r\n");
    let mut r = Reader::new(connect(f.addr));
    let _ = r.s.write_all(&raw);
    let resp = r.next(false).unwrap();
    assert_eq!(resp.status, 431);
    assert!(r.closed());
}

#[test]
fn the_health_path_is_answered_by_the_server() {
    let f = front("health");
    let running = f.running();
    let (resp, _) = ask(f.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((resp.status, resp.text().as_str()), (200, "OK\n"));
    assert_eq!(f.jobs(), 0);
    // While draining: connections already open are still served, each answer saying
    // `Connection: close`, and the health path says 503; new connections are accepted and
    // served too (a load balancer probes health on a new connection).
    let mut r = Reader::new(connect(f.addr));
    let mut r2 = Reader::new(connect(f.addr));
    let mut idle = Reader::new(connect(f.addr));
    r.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.next(false).unwrap().status, 200);
    r2.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r2.next(false).unwrap().status, 200);
    idle.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.next(false).unwrap().status, 200);
    running.shutdown.drain();
    r.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let resp = r.next(false).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after").as_deref(), Some("1"));
    assert!(r.closed());
    r2.send(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n");
    let resp = r2.next(false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert!(r2.closed());
    let (resp, _) = ask(f.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 503, "a new connection during the drain");
    let (resp, _) = ask(f.addr, b"GET /z HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200, "a new connection during the drain");
    assert_eq!(running.server.stats().snapshot().draining_refused, 0);
    // Closing: no new connection; an idle keep-alive connection is closed; a request on a
    // connection opened before (that had sent nothing yet) is refused at once.
    let mut r3 = Reader::new(connect(f.addr));
    wait_until("the new connection was not accepted", || {
        running.server.stats().snapshot().connections == 2
    });
    running.shutdown.close();
    assert!(idle.closed());
    r3.send(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n");
    let resp = r3.next(false).unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.text(), "the server is shutting down\n");
    assert!(r3.closed());
    assert_eq!(running.server.stats().snapshot().draining_refused, 1);
    wait_until("still accepting after the drain", || {
        TcpStream::connect(f.addr).is_err()
    });
}

/// What a connection the front refuses receives before it closes (an error if it was reset).
fn refused(addr: SocketAddr, request_first: bool) -> std::io::Result<String> {
    let mut s = connect(addr);
    if request_first {
        s.write_all(b"GET /over HTTP/1.1\r\nHost: x\r\n\r\n")?;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn beyond_max_connections_a_connection_gets_503_and_a_closed_one_frees_its_slot() {
    let f = front_with(
        "max-connections",
        HttpConfig {
            max_connections: 2,
            ..HttpConfig::default()
        },
    );
    // Two connections, each served once, so each holds its slot.
    let mut held: Vec<Reader> = (0..2)
        .map(|i| {
            let (resp, r) = ask(
                f.addr,
                format!("GET /held-{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            assert_eq!(resp.status, 200);
            r
        })
        .collect();
    // The third is refused, whether its request arrived before the front took it or not: a
    // complete 503 that says to come back and closes, never a reset, and no job.
    let jobs = f.jobs();
    for k in 0..20 {
        let got = refused(f.addr, k % 2 == 1).unwrap();
        assert_eq!(
            got,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: 21\r\n\r\n\
             too many connections\n"
        );
    }
    assert_eq!(f.jobs(), jobs);
    // The held ones go on being served.
    held[0].send(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(held[0].next(false).unwrap().status, 200);
    // One closes: its slot frees (once the front has seen the close) and a new connection is
    // served.
    held.pop();
    wait_until("the closed connection's slot never freed", || {
        let (resp, r) = ask(f.addr, b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n");
        match resp.status {
            200 => {
                held.push(r);
                true
            }
            503 if resp.text() == "too many connections\n" => false,
            _ => panic!("{resp:?}"),
        }
    });
    // With the new one holding the freed slot, the next is refused again.
    assert!(refused(f.addr, true).unwrap().starts_with("HTTP/1.1 503 "));
}

#[test]
fn a_passed_deadline_answers_504_and_interrupts_the_worker() {
    // The front's request deadline (1 s) against the server core's (60 s): a 504 well before the
    // latter, and the worker stopped, can only come from the former.
    let f = front_with(
        "deadline",
        HttpConfig {
            request_timeout: Some(Duration::from_secs(1)),
            ..HttpConfig::default()
        },
    );
    let t = Instant::now();
    let (resp, _) = ask(f.addr, b"GET /l?loop=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 504);
    assert!(t.elapsed() < LIMIT, "{:?}", t.elapsed());
    wait_until("worker not interrupted", || f.failed() > 0);
}

#[test]
fn a_client_that_disconnects_interrupts_its_work() {
    let f = front("disconnect");
    let running = f.running();
    let mut s = connect(f.addr);
    s.write_all(b"GET /l?loop=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_until("the job never started", || f.jobs() > 0);
    drop(s);
    // The deadline (60 s) is beyond the wait: only the disconnect can stop the work in time.
    wait_until("the work was not interrupted", || f.failed() > 0);
    assert_eq!(running.server.stats().snapshot().cancelled, 1);
}

#[test]
fn a_slow_client_is_cut_off_by_the_header_timeout() {
    let f = front_with(
        "slowloris",
        HttpConfig {
            header_timeout: Duration::from_millis(500),
            ..HttpConfig::default()
        },
    );
    // Cut off at the configured 500 ms, not at the default (30 s): half the default tells the two
    // apart with room to spare on a slow machine.
    let bound = HttpConfig::default().header_timeout / 2;
    // The client never finishes its head.
    let mut r = Reader::new(connect(f.addr));
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let t = Instant::now();
    // Either a 408 or a plain close.
    while let Some(resp) = r.next(false) {
        assert_eq!(resp.status, 408);
    }
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());
    // An idle keep-alive connection is closed the same way.
    let (_, mut r) = ask(f.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let t = Instant::now();
    assert!(r.closed());
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

#[test]
fn curl_gets_answers() {
    assert!(
        have("curl"),
        "curl is required for this test (apt-get install curl)"
    );
    let f = front("curl");
    let url = format!("http://{}/c?x=a+b", f.addr);
    let out = Command::new("curl")
        .args(["-s", "-i", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("q:x=a b"), "{text}");
    // A POST big enough that curl uses Expect: 100-continue.
    let body = "b".repeat(2_000_000);
    let path = std::env::temp_dir().join(format!("ps-curl-{}", std::process::id()));
    std::fs::write(&path, &body).unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
        ])
        .arg(format!("@{}", path.display()))
        .arg(&url)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
}

/// What curl got: (status, headers in lower case) of the last response.
fn curl_head(args: &[&str]) -> (u16, Vec<(String, String)>) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let headers = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn x_request_id_is_returned_made_when_absent_replaced_when_invalid_and_reaches_the_worker() {
    assert!(
        have("curl"),
        "curl is required for this test (apt-get install curl)"
    );
    let f = front("request-id");
    let url = format!("http://{}/r?x=1", f.addr);
    // Given: returned as sent, and the worker's job carries it.
    let given = "client-id_1.2:3/~!";
    let (status, h) = curl_head(&["-H", &format!("X-Request-Id: {given}"), &url]);
    assert_eq!(status, 200);
    assert_eq!(header_of(&h, "x-request-id"), Some(given), "{h:?}");
    assert_eq!(header_of(&h, "x-job-trace-id"), Some(given), "{h:?}");
    // Absent: made (the server's id and the request's number, in hex), one per request.
    let made = |h: &[(String, String)]| {
        let id = header_of(h, "x-request-id")
            .expect("an x-request-id")
            .to_string();
        assert_eq!(header_of(h, "x-job-trace-id"), Some(id.as_str()), "{h:?}");
        let number: u64 = header_of(h, "x-job-id").unwrap().parse().unwrap();
        let server = f.running().server.server_id();
        assert_eq!(id, format!("{server:016x}-{number:x}"));
        id
    };
    let (_, h1) = curl_head(&[&url]);
    let (_, h2) = curl_head(&[&url]);
    assert_ne!(made(&h1), made(&h2));
    // Invalid (a space, 65 bytes, non-ASCII, empty): replaced by a made one.
    let long = "x".repeat(65);
    for bad in ["has space", long.as_str(), "caf\u{e9}", ""] {
        let header = format!("X-Request-Id: {bad}");
        let header = if bad.is_empty() {
            "X-Request-Id;".to_string()
        } else {
            header
        };
        let (status, h) = curl_head(&["-H", &header, &url]);
        assert_eq!(status, 200);
        let id = made(&h);
        assert_ne!(id, bad);
    }
    // The longest valid one is kept.
    let longest = "y".repeat(64);
    let (_, h) = curl_head(&["-H", &format!("X-Request-Id: {longest}"), &url]);
    assert_eq!(header_of(&h, "x-request-id"), Some(longest.as_str()));
    // Answers the front makes itself carry it too: the health path, and a 413 (refused before
    // its body is read).
    let health = format!("http://{}/health", f.addr);
    let (status, h) = curl_head(&["-H", "X-Request-Id: health-1", &health]);
    assert_eq!(
        (status, header_of(&h, "x-request-id")),
        (200, Some("health-1"))
    );
    let path = std::env::temp_dir().join(format!("ps-reqid-{}", std::process::id()));
    std::fs::write(&path, "b".repeat(2_000_000)).unwrap();
    let data = format!("@{}", path.display());
    let (status, h) = curl_head(&["-H", "X-Request-Id: big-1", "--data-binary", &data, &url]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        (status, header_of(&h, "x-request-id")),
        (413, Some("big-1"))
    );
}

#[test]
fn python_http_client_gets_answers() {
    assert!(have("python3"), "python3 is required for this test");
    let f = front("python");
    let script = r#"
import http.client, sys
host, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection(host, port, timeout=10)
for i in range(3):
    c.request("POST", "/py?i=%d" % i, body=b"payload", headers={"X-Test": "yes"})
    r = c.getresponse()
    body = r.read().decode()
    assert r.status == 200, r.status
    assert "q:i=%d" % i in body and "h:x-test=yes" in body and body.endswith("body=payload"), body
c.request("GET", "/health")
r = c.getresponse()
assert r.status == 200 and r.read() == b"OK\n"
print("ok")
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &f.addr.ip().to_string(),
            &f.addr.port().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
