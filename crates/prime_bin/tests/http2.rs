//! HTTP/2 in cleartext (h2c by prior knowledge) on the plain port, beside HTTP/1.1: curl
//! (`--http2-prior-knowledge`) and raw frames (`common::h2`). Workers see the same job whatever
//! the version; the limits, the deadline, the health path and the access log are HTTP/1.1's; a
//! reset stream or a dropped connection interrupts the worker (499 in the access log); a drain
//! ends with GOAWAY while open streams finish.

mod common;
use common::h2::{self, H2};
use common::{
    connect, curl_version, free_port, get, http, need, temp_dir, wait_until, Proc, LIMIT,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

/// The sum of every sample of metric family `name` that the front at `addr` reports (asked over
/// HTTP/1.1 on its client port).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, _, body) = http(&mut connect(addr), &get("/metrics")).expect("no metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The fields of the access-log line (JSON log) of the request known as `id`, once written.
fn access_line(log: &Path, id: &str) -> Value {
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == "access" && l["fields"]["request_id"] == id)
            .collect()
    };
    wait_until(&format!("no access line for {id}"), || !lines().is_empty());
    let all = lines();
    assert_eq!(all.len(), 1, "one line for {id}: {all:?}");
    all[0]["fields"].clone()
}

#[test]
fn h2c_and_http11_share_the_plain_port_and_workers_see_the_same_job() {
    if !need("curl", "curl") {
        return;
    }
    let mut echod = Proc::start(
        "prime_echod",
        &[
            &format!("127.0.0.1:{}", free_port()),
            "--health-path",
            "/health",
        ],
    );
    let addr = echod.listening();
    let base = format!("http://127.0.0.1:{}", addr.port());
    // The same request over each version: the echo (the request as the worker decoded it from
    // its job) is the same, HTTP/1.1 and `host` included; cookie crumbs are joined (RFC 9113).
    for (extra, path) in [
        (&[][..], "/same?x=1&y=%20"),
        (&["-d", "hello"][..], "/post"),
    ] {
        let url = format!("{base}{path}");
        let mut h1_args = vec!["--http1.1", "-H", "X-Test: a", "-H", "Cookie: a=1; b=2"];
        h1_args.extend_from_slice(extra);
        h1_args.push(&url);
        let mut h2_args = vec![
            "--http2-prior-knowledge",
            "-H",
            "X-Test: a",
            "-H",
            "Cookie: a=1",
            "-H",
            "Cookie: b=2",
        ];
        h2_args.extend_from_slice(extra);
        h2_args.push(&url);
        let (s1, v1, echo1) = curl_version(&h1_args);
        let (s2, v2, echo2) = curl_version(&h2_args);
        assert_eq!((s1, v1.as_str(), s2, v2.as_str()), (200, "1.1", 200, "2"));
        assert_eq!(echo1, echo2, "HTTP/1.1 and HTTP/2 jobs differ");
        let method = if extra.is_empty() { "GET" } else { "POST" };
        assert!(
            echo2.starts_with(&format!(
                "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n",
                addr.port()
            )),
            "{echo2}"
        );
        assert!(echo2.contains("\r\ncookie: a=1; b=2\r\n"), "{echo2}");
    }
    // The health path, over HTTP/2 too.
    assert_eq!(
        curl_version(&["--http2-prior-knowledge", &format!("{base}/health")]),
        (200, "2".into(), "OK\n".into())
    );
    // curl --http2 in cleartext asks to upgrade: not offered, it is answered in HTTP/1.1.
    let (status, version, _) = curl_version(&["--http2", &format!("{base}/up")]);
    assert_eq!((status, version.as_str()), (200, "1.1"));
    echod.stop();
}

#[test]
fn a_reset_stream_or_a_dropped_connection_interrupts_the_worker_and_logs_499() {
    let dir = temp_dir("h2-reset");
    let log = dir.join("echod.log");
    let mut echod = Proc::start_logging(
        "prime_echod",
        &[
            &format!("127.0.0.1:{}", free_port()),
            "1",
            "0",
            "--access-log",
            "--log-format",
            "json",
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let addr = echod.listening();
    let mut h = H2::connect(addr);
    h.get(1, "/slow?sleep=60000", &[("x-request-id", "h2-reset")]);
    wait_until("the worker never took the job", || {
        metric(addr, "prime_server_worker_jobs_total") == 1.0
    });
    h.reset(1, h2::CANCEL);
    wait_until("the worker was not interrupted by the reset", || {
        metric(addr, "prime_server_worker_interrupted_total") == 1.0
    });
    let f = access_line(&log, "h2-reset");
    assert_eq!(f["status"], 499, "{f}");
    assert_eq!(f["path"], "/slow?sleep=60000", "{f}");
    // The connection goes on, and the one worker, free again, answers at once (the reset job
    // would have held it for a minute).
    h.get(3, "/after", &[]);
    let a = h.answer(3).expect("the connection closed");
    assert_eq!(a.status, Some(200));
    assert!(
        a.body.starts_with(b"GET /after HTTP/1.1\r\nhost: test\r\n"),
        "{}",
        String::from_utf8_lossy(&a.body)
    );

    // A client whose connection goes away with a stream open is gone too.
    let mut g = H2::connect(addr);
    g.get(1, "/slow?sleep=60000", &[("x-request-id", "h2-gone")]);
    wait_until("the worker never took the second job", || {
        metric(addr, "prime_server_worker_jobs_total") == 3.0
    });
    drop(g);
    wait_until(
        "the worker was not interrupted by the closed connection",
        || metric(addr, "prime_server_worker_interrupted_total") == 2.0,
    );
    assert_eq!(access_line(&log, "h2-gone")["status"], 499);
    drop(h);
    echod.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http2_requests_get_the_same_limits_and_deadlines() {
    let mut echod = Proc::start(
        "prime_echod",
        &[
            &format!("127.0.0.1:{}", free_port()),
            "1",
            "0",
            "--max-body",
            "10",
            "--max-in-flight",
            "1",
            "--timeout",
            "2",
        ],
    );
    let addr = echod.listening();
    let mut h = H2::connect(addr);
    // A body over the limit, declared: 413 before it is sent.
    let block = h2::request_block("POST", "/big", "test", &[("content-length", "100")]);
    h.frame(h2::HEADERS, h2::END_HEADERS, 1, &block);
    assert_eq!(h.answer(1).expect("closed").status, Some(413));
    // One request in flight, the next refused at once; then the first's deadline: 504.
    h.get(3, "/slow?sleep=60000", &[]);
    wait_until("the first request never went in", || {
        metric(addr, "prime_server_front_in_flight") == 1.0
    });
    h.get(5, "/second", &[]);
    assert_eq!(h.answer(5).expect("closed").status, Some(503));
    let late = h.answer(3).expect("closed");
    assert_eq!(
        late.status,
        Some(504),
        "{}",
        String::from_utf8_lossy(&late.body)
    );
    // The client stays connected and reads nothing more, so it never answers the PING of the
    // GOAWAY its connection gets: the daemon still exits after its (zero) drain and its stop.
    echod.stop();
    drop(h);
}

#[test]
fn the_drain_ends_with_goaway_and_open_streams_finish() {
    let mut echod = Proc::start(
        "prime_echod",
        &[&format!("127.0.0.1:{}", free_port()), "2", "1,60"],
    );
    let addr = echod.listening();
    let mut h = H2::connect(addr);
    h.get(1, "/first", &[]);
    assert_eq!(h.answer(1).expect("closed").status, Some(200));
    h.get(3, "/slow?sleep=10000", &[]);
    wait_until("the worker never took the slow job", || {
        metric(addr, "prime_server_worker_jobs_total") == 2.0
    });
    echod.signal("-TERM");
    // At the drain's end (1 s), while the slow stream still works: GOAWAY, no error.
    let goaway = loop {
        let f = h.read_frame().expect("closed without GOAWAY");
        assert!(
            f.stream != 3,
            "the slow stream ended before the GOAWAY: {f:?}"
        );
        if f.kind == h2::GOAWAY {
            break f;
        }
    };
    let (last, code) = goaway.goaway();
    assert_eq!(code, 0, "GOAWAY with an error");
    assert!(last >= 3, "the open stream was refused: last stream {last}");
    // The open stream finishes, then the connection closes and the process exits.
    let a = h.answer(3).expect("closed before the open stream finished");
    assert_eq!(a.status, Some(200));
    assert!(a.body.starts_with(b"GET /slow?sleep=10000 HTTP/1.1\r\n"));
    while let Some(f) = h.read_frame() {
        if f.kind == h2::GOAWAY {
            assert_eq!(f.goaway().1, 0);
            assert!(f.goaway().0 >= 3);
        }
    }
    let status = echod.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn idle_http2_connections_and_silent_ones_are_closed_after_the_header_timeout() {
    let mut echod = Proc::start(
        "prime_echod",
        &[
            &format!("127.0.0.1:{}", free_port()),
            "1",
            "0",
            "--header-timeout",
            "1",
        ],
    );
    let addr = echod.listening();
    // An HTTP/2 connection, served, then idle: GOAWAY (no error), then closed.
    let mut h = H2::connect(addr);
    h.get(1, "/once", &[]);
    assert_eq!(h.answer(1).expect("closed").status, Some(200));
    let mut goaway = None;
    while let Some(f) = h.read_frame() {
        if f.kind == h2::GOAWAY {
            goaway = Some(f.goaway());
        }
    }
    let (last, code) = goaway.expect("closed without GOAWAY");
    assert_eq!(code, 0, "GOAWAY with an error");
    assert!(
        last >= 1,
        "the served stream was refused: last stream {last}"
    );
    // A connection that never sends a byte is closed too (hyper's own header timeout starts
    // only once it knows the version).
    let mut silent = connect(addr);
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut silent, &mut buf).expect("reset instead of closed");
    assert_eq!(n, 0, "the silent connection was sent something");
    drop((h, silent));
    echod.stop();
}
