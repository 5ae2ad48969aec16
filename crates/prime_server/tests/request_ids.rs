//! Request ids end to end and the access log, read in the log lines this process writes: a work
//! function's lines carry its request's id (in memory and over zmq), and the HTTP front writes
//! exactly one access line per request, whether answered, refused before its body, or abandoned
//! by its client.
//!
//! A test binary of its own: it installs a global subscriber that captures every line.

use prime_server::http_job::{Request, Response};
use prime_server::pipeline::{Pipeline, Transport};
use prime_server::protocol::{self, http::HttpConfig};
use prime_server::{Outcome, WorkError};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

mod common;
use common::{connect, wait_until, Front};

/// Every line logged by this process (the global subscriber's output, text without colours).
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        // The daemons' default level plus the job span (debug level: off by default).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,prime_server::job=debug",
            ))
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines that contain every one of `needles`.
fn lines_with(needles: &[&str]) -> Vec<String> {
    let log = captured().lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// The value of field `key` in a text log line (`key=value`, values without spaces).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// One request on a fresh connection; the raw answer, read to its end (the front closes after
/// it: `Connection: close`).
fn ask(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = connect(addr);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Two stages that log a line each; the second answers with the trace id it saw.
fn traced_front(transport: Transport) -> Front {
    captured();
    let mut p = Pipeline::new(&format!("reqid-{}", prime_server::server::random_id()));
    p.transport(transport);
    p.timeout = Some(Duration::from_secs(60));
    p.stage(1, |job, _| {
        tracing::info!(seen = %job.trace_id(), "stage one works");
        Ok(Outcome::Forward(job.frames.clone()))
    });
    p.stage(1, |job, _| {
        tracing::info!("stage two works");
        let resp = Response::new(200).header("x-job-trace-id", job.trace_id());
        Ok(Outcome::Reply(resp.encode()))
    });
    let config = HttpConfig::default();
    Front::start(p.start().unwrap(), move |listener, server, shutdown| {
        protocol::http::serve(listener, server, config, shutdown)
    })
}

fn a_work_functions_log_lines_carry_its_request_id(transport: Transport, id: &str) {
    let f = traced_front(transport);
    let answer = ask(
        f.addr,
        &format!("GET /t HTTP/1.1\r\nHost: x\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(header(&answer, "x-request-id"), Some(id), "{answer}");
    assert_eq!(header(&answer, "x-job-trace-id"), Some(id), "{answer}");
    let span = format!("job{{request_id={id}}}");
    for what in ["stage one works", "stage two works"] {
        let lines = lines_with(&[&span, what]);
        assert_eq!(lines.len(), 1, "{what} with {span}: {lines:?}");
    }
    assert_eq!(
        field(&lines_with(&[&span, "stage one works"])[0], "seen"),
        Some(id)
    );
}

#[test]
fn a_work_functions_log_lines_carry_its_request_id_in_memory() {
    a_work_functions_log_lines_carry_its_request_id(Transport::Memory, "mem-trace-1");
}

#[test]
fn a_work_functions_log_lines_carry_its_request_id_over_zmq() {
    a_work_functions_log_lines_carry_its_request_id(Transport::Inproc, "zmq-trace-1");
}

/// A front with the access log on: `?loop=1` works until interrupted; bodies over 1 KiB are
/// refused.
fn logged_front() -> Front {
    captured();
    let mut p = Pipeline::new(&format!("access-{}", prime_server::server::random_id()));
    p.transport(Transport::Memory);
    p.timeout = Some(Duration::from_secs(60));
    p.stage(1, |job, interrupt| {
        let req = Request::decode(&job.frames).map_err(|e| WorkError::Failed {
            status: 400,
            reason: e.to_string(),
        })?;
        while req.query_value("loop").is_some() {
            interrupt.check()?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Outcome::Reply(Response::new(200).body("hello").encode()))
    });
    let config = HttpConfig {
        access_log: true,
        max_body: 1024,
        health_path: Some("/health".into()),
        ..HttpConfig::default()
    };
    Front::start(p.start().unwrap(), move |listener, server, shutdown| {
        protocol::http::serve(listener, server, config, shutdown)
    })
}

/// The one access line of the request known as `id`, once it is written.
fn access_line(id: &str) -> String {
    let needle = format!("request_id={id} ");
    wait_until(&format!("an access line for {id}"), || {
        !lines_with(&[" access: ", &needle]).is_empty()
    });
    let lines = lines_with(&[" access: ", &needle]);
    assert_eq!(lines.len(), 1, "one line for {id}: {lines:?}");
    lines[0].clone()
}

#[test]
fn the_access_log_has_exactly_one_line_per_request_that_entered() {
    let f = logged_front();
    let server = f.running().server.clone();
    // Answered: every field.
    let answer = ask(
        f.addr,
        "GET /a/b?c=d&e=f HTTP/1.1\r\nHost: x\r\nUser-Agent: ua-test/1.0\r\nX-Request-Id: acc-ok\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let line = access_line("acc-ok");
    assert_eq!(field(&line, "method"), Some("GET"), "{line}");
    assert_eq!(field(&line, "path"), Some("/a/b?c=d&e=f"), "{line}");
    assert_eq!(field(&line, "status"), Some("200"), "{line}");
    assert_eq!(field(&line, "bytes"), Some("5"), "{line}");
    assert_eq!(field(&line, "user_agent"), Some("ua-test/1.0"), "{line}");
    assert!(field(&line, "us").unwrap().parse::<u64>().is_ok(), "{line}");
    assert!(
        field(&line, "peer").unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(
        field(&line, "id").unwrap().parse::<u64>().unwrap() > 0,
        "{line}"
    );

    // Refused before its body was read: its real id, and the trace id made from it.
    let answer = ask(
        f.addr,
        "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let made = header(&answer, "x-request-id")
        .expect("an x-request-id")
        .to_string();
    let line = access_line(&made);
    assert_eq!(field(&line, "status"), Some("413"), "{line}");
    assert_eq!(field(&line, "user_agent"), Some("-"), "{line}");
    let number: u64 = field(&line, "id").unwrap().parse().unwrap();
    assert!(number > 0, "{line}");
    assert_eq!(made, server.trace_id_for(number).as_str());

    // Answered by the front itself: the health path, a request without Host.
    let answer = ask(
        f.addr,
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: acc-health\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(field(&access_line("acc-health"), "status"), Some("200"));
    let answer = ask(f.addr, "GET / HTTP/1.1\r\nX-Request-Id: acc-nohost\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(field(&access_line("acc-nohost"), "status"), Some("400"));

    // Abandoned by its client while the work runs: one line, 499, with the time it ran.
    let jobs = || {
        f.running().worker_stats[0]
            .iter()
            .map(|w| w.snapshot().jobs)
            .sum::<u64>()
    };
    let before = jobs();
    let mut s = connect(f.addr);
    s.write_all(b"GET /l?loop=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: acc-gone\r\n\r\n")
        .unwrap();
    wait_until("the job never started", || jobs() > before);
    std::thread::sleep(Duration::from_millis(20));
    drop(s);
    let line = access_line("acc-gone");
    assert_eq!(field(&line, "status"), Some("499"), "{line}");
    assert_eq!(field(&line, "bytes"), Some("0"), "{line}");
    assert!(
        field(&line, "us").unwrap().parse::<u64>().unwrap() >= 20_000,
        "{line}"
    );
    assert_eq!(field(&line, "path"), Some("/l?loop=1"), "{line}");
    wait_until("the work was not interrupted", || {
        f.running().worker_stats[0]
            .iter()
            .map(|w| w.snapshot().failed)
            .sum::<u64>()
            > 0
    });
    // Still one line for it, and one for each of the others.
    assert_eq!(lines_with(&[" access: ", "request_id=acc-gone "]).len(), 1);
    for id in ["acc-ok", "acc-health", "acc-nohost", &made] {
        assert_eq!(
            lines_with(&[" access: ", &format!("request_id={id} ")]).len(),
            1,
            "{id}"
        );
    }
}
