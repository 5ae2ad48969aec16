//! The demo service: "is this number prime?", in two stages.
//!
//! Stage 1 parses the request (a decimal number; for HTTP, `GET /is_prime?possible_prime=N` or
//! `POST /is_prime` with body `N`) and either answers a malformed one at once through the loopback
//! (the short-circuit) or forwards the number as one frame of 8 little-endian bytes. Stage 2
//! tests it by the same trial division as the C++ reference (divisors 2, 3, 4, … up to the square
//! root), so the work per request matches it, calling the interrupt check as it goes, and answers
//! in the request's client protocol, which both stages read from the job's header
//! ([`Job::protocol`]): an HTTP response frame (200, `content-type: application/json`) for HTTP,
//! the bare JSON body for the others. `docs/PROTOCOL.md` §3 ("The prime demo") describes it for
//! workers in other languages.

use prime_server::client::{BatchClient, BatchReport, HttpClient};
use prime_server::http_job::{Request, Response};
use prime_server::pipeline::{Pipeline, Transport};
use prime_server::protocol::{self, http::HttpConfig};
use prime_server::{ClientProtocol, Interrupt, Job, Outcome, WorkError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How many divisions between two interrupt checks (a power of two).
const CHECK_EVERY: u64 = 1 << 16;

/// Trial division by every integer from 2 up to √n, checking `interrupt` now and then.
pub fn is_prime_interruptible(
    n: u64,
    mut interrupt: impl FnMut() -> Result<(), WorkError>,
) -> Result<bool, WorkError> {
    if n < 2 {
        return Ok(false);
    }
    let mut d: u64 = 2;
    while d.checked_mul(d).is_some_and(|sq| sq <= n) {
        if n.is_multiple_of(d) {
            return Ok(false);
        }
        d += 1;
        if d & (CHECK_EVERY - 1) == 0 {
            interrupt()?;
        }
    }
    Ok(true)
}

/// Trial division without interruption (the single-thread compute baseline).
pub fn is_prime(n: u64) -> bool {
    matches!(is_prime_interruptible(n, || Ok(())), Ok(true))
}

/// The answer body for `n`.
pub fn answer_body(n: u64, prime: bool) -> Vec<u8> {
    format!("{{\"possible_prime\":{n},\"is_prime\":{prime}}}").into_bytes()
}

/// The content type of the demo's answers over HTTP (the JSON of [`answer_body`]).
pub const JSON: &str = "application/json";

/// What a good request looks like, for 400 answers.
pub const USAGE: &str =
    "try GET /is_prime?possible_prime=32416190071 or POST /is_prime with the number as the body";

/// Why a request frame that is not a decimal number is refused (netstring, zmq, direct).
pub const NOT_A_NUMBER: &str = "expected a decimal number from 0 to 18446744073709551615";

/// Why a zmq (or direct) request of another number of frames than one is refused.
pub const NOT_ONE_FRAME: &str =
    "expected one frame: a decimal number from 0 to 18446744073709551615";

fn parse_number(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.trim().parse::<u64>().ok()
}

fn forward(n: u64) -> Result<Outcome, WorkError> {
    Ok(Outcome::Forward(vec![n.to_le_bytes().to_vec()]))
}

/// Stage 1 for netstring and zmq requests (and direct ones): one frame, the number in decimal
/// (surrounding white space allowed). Anything else (another frame count included) is answered
/// 400 here and never reaches stage 2.
pub fn parse_stage_netstring(job: &mut Job, _: &Interrupt<'_>) -> Result<Outcome, WorkError> {
    let refuse = |reason: &str| {
        Err(WorkError::Failed {
            status: 400,
            reason: reason.into(),
        })
    };
    match job.frames.as_slice() {
        [only] => match parse_number(only) {
            Some(n) => forward(n),
            None => refuse(NOT_A_NUMBER),
        },
        _ => refuse(NOT_ONE_FRAME),
    }
}

/// Stage 1 for HTTP requests: `GET /is_prime?possible_prime=N` or `POST /is_prime` with body
/// `N`. A bad request is answered here (400, 404, 405) and never reaches stage 2.
pub fn parse_stage_http(job: &mut Job, _: &Interrupt<'_>) -> Result<Outcome, WorkError> {
    let req = match Request::decode(&job.frames) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Outcome::Reply(
                Response::text(400, format!("{e}\n")).encode(),
            ))
        }
    };
    if req.path != "/is_prime" {
        return Ok(Outcome::Reply(
            Response::text(404, format!("no such path: {}; {USAGE}\n", req.path)).encode(),
        ));
    }
    let n = match req.method.as_str() {
        "GET" | "HEAD" => {
            let mut values = req.query_values("possible_prime");
            match (values.next(), values.next()) {
                (Some(v), None) => parse_number(v.as_bytes()),
                _ => None,
            }
        }
        "POST" => parse_number(&req.body),
        _ => {
            return Ok(Outcome::Reply(
                Response::text(405, format!("method {} not allowed; {USAGE}\n", req.method))
                    .header("allow", "GET, HEAD, POST")
                    .encode(),
            ))
        }
    };
    match n {
        Some(n) => forward(n),
        None => Ok(Outcome::Reply(
            Response::text(
                400,
                format!(
                    "possible_prime must be one number from 0 to 18446744073709551615; {USAGE}\n"
                ),
            )
            .encode(),
        )),
    }
}

/// Stage 1 for every client protocol: the job's header says which ([`Job::protocol`]), so an
/// HTTP-looking payload from a zmq client is a zmq request like any other (and refused 400).
pub fn parse_stage(job: &mut Job, interrupt: &Interrupt<'_>) -> Result<Outcome, WorkError> {
    match job.protocol() {
        ClientProtocol::Http => parse_stage_http(job, interrupt),
        ClientProtocol::Netstring | ClientProtocol::Zmq | ClientProtocol::Direct => {
            parse_stage_netstring(job, interrupt)
        }
    }
}

/// Stage 2: test primality of the one 8-byte little-endian frame stage 1 forwarded and answer
/// in the protocol the request came in (read from the header, as stage 1 did). Another payload
/// is a fault of stage 1, not of the client: 500.
pub fn test_stage(job: &mut Job, interrupt: &Interrupt<'_>) -> Result<Outcome, WorkError> {
    let bytes: [u8; 8] = match job.frames.as_slice() {
        [only] => only.as_slice().try_into().ok(),
        _ => None,
    }
    .ok_or_else(|| WorkError::Failed {
        status: 500,
        reason: "stage 2 expects one frame: the number as 8 little-endian bytes".into(),
    })?;
    let n = u64::from_le_bytes(bytes);
    let prime = is_prime_interruptible(n, || interrupt.check().map_err(WorkError::from))?;
    let body = answer_body(n, prime);
    match job.protocol() {
        ClientProtocol::Http => Ok(Outcome::Reply(
            Response::new(200)
                .header("content-type", JSON)
                .body(body)
                .encode(),
        )),
        ClientProtocol::Netstring | ClientProtocol::Zmq | ClientProtocol::Direct => {
            Ok(Outcome::Reply(body))
        }
    }
}

/// The odd numbers of `[start, end]` the simulation tests (start raised to 3 and made odd).
pub fn odd_numbers(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = start.max(3) | 1;
    (first..=end).step_by(2)
}

/// Tests every odd number of `[start, end]`, `repeat` times over, on `threads` plain threads, no
/// pipeline: the pure compute time simulation mode and the seed benchmark are measured against.
/// Returns (primes, numbers tested), counting every repeat.
pub fn compute(start: u64, end: u64, threads: usize, repeat: usize) -> (u64, u64) {
    // The repeats run inside the threads: timing one number many times must not time a thread
    // start per repeat (tens of µs here, against ~500 µs of work for the seed's number).
    let numbers: Vec<u64> = (0..repeat.max(1))
        .flat_map(|_| odd_numbers(start, end))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let primes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&n) = numbers.get(i) else { break };
                if is_prime(n) {
                    primes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (primes.into_inner(), numbers.len() as u64)
}

/// What simulation mode found.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Numbers found prime.
    pub primes: u64,
    /// Answers that were not a clean prime/not-prime reply.
    pub errors: u64,
    /// The batch client's report.
    pub report: BatchReport,
}

/// Runs the whole two-stage pipeline in one process over `transport`, with the HTTP front on an
/// ephemeral loopback port, and asks it (`GET /is_prime?possible_prime=N`, keep-alive, one
/// request in flight per connection, two connections per worker) about every odd number of
/// `[start, end]`.
pub fn simulate(
    start: u64,
    end: u64,
    workers: usize,
    transport: Transport,
) -> anyhow::Result<Simulation> {
    let mut p = Pipeline::new("prime-simulation");
    p.transport(transport);
    p.timeout = None;
    p.stage(workers, parse_stage).stage(workers, test_stage);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let running = p.start_in(&rt)?;
    let primes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let result = rt.block_on(async {
        let listener = protocol::bind_listener("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let front = tokio::spawn(protocol::http::serve(
            listener,
            running.server.clone(),
            HttpConfig::default(),
            running.shutdown.clone(),
        ));
        let client = BatchClient {
            addr,
            connections: 2 * workers.max(1) + 2,
            depth: 1,
            codec: HttpClient,
        };
        let (p, e) = (primes.clone(), errors.clone());
        let report = client
            .run(
                odd_numbers(start, end).map(|n| {
                    format!("GET /is_prime?possible_prime={n} HTTP/1.1\r\nHost: simulation\r\n\r\n")
                        .into_bytes()
                }),
                move |_req, answer| {
                    if !answer.starts_with(b"200 ") {
                        e.fetch_add(1, Ordering::Relaxed);
                    } else if answer.ends_with(b"\"is_prime\":true}") {
                        p.fetch_add(1, Ordering::Relaxed);
                    } else if !answer.ends_with(b"\"is_prime\":false}") {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await;
        running.shutdown.stop();
        let _ = front.await;
        running.server.closed().await;
        report
    });
    running.stop();
    let report = result?;
    Ok(Simulation {
        primes: primes.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent count: a sieve of Eratosthenes.
    fn sieve_count_odd(start: u64, end: u64) -> u64 {
        let n = end as usize + 1;
        let mut composite = vec![false; n];
        let mut i = 2;
        while i * i < n {
            if !composite[i] {
                let mut j = i * i;
                while j < n {
                    composite[j] = true;
                    j += i;
                }
            }
            i += 1;
        }
        odd_numbers(start, end)
            .filter(|&k| !composite[k as usize])
            .count() as u64
    }

    #[test]
    fn trial_division_matches_a_sieve() {
        for n in 0..5000u64 {
            let sieve = n >= 2 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0);
            assert_eq!(is_prime(n), sieve, "{n}");
        }
        assert!(is_prime(32416190071));
        assert!(!is_prime(u64::MAX));
    }

    #[test]
    fn compute_agrees_with_the_sieve() {
        assert_eq!(compute(1, 30000, 2, 1).0, sieve_count_odd(1, 30000));
        assert_eq!(compute(1, 30000, 2, 3).0, 3 * sieve_count_odd(1, 30000));
    }

    #[test]
    fn simulation_counts_primes_right() {
        for (start, end, workers, transport) in [
            (1, 1000, 1, Transport::Memory),
            (1000, 20000, 3, Transport::Memory),
            (3, 3, 1, Transport::Memory),
            (1000, 20000, 3, Transport::Inproc),
        ] {
            let sim = simulate(start, end, workers, transport).unwrap();
            assert_eq!(sim.errors, 0);
            assert_eq!(sim.primes, sieve_count_odd(start, end), "{start},{end}");
            let n = odd_numbers(start, end).count() as u64;
            assert_eq!((sim.report.sent, sim.report.answered), (n, n));
        }
    }
}
