//! The demo service: "is this number prime?", in two stages.
//!
//! Stage 1 parses the request (a decimal number) and either answers a malformed one at once
//! through the loopback (the short-circuit) or forwards the number as 8 little-endian bytes.
//! Stage 2 tests it by the same trial division as the C++ reference (divisors 2, 3, 4, … up to
//! the square root), so the work per request matches it, calling the interrupt check as it goes.

use prime_server::client::{BatchClient, BatchReport, NetstringClient};
use prime_server::pipeline::Pipeline;
use prime_server::protocol::{self, netstring::Netstring};
use prime_server::worker::{Interrupt, Job, Outcome, WorkError};
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

/// Stage 1: parse. A bad request is answered here and never reaches stage 2.
pub fn parse_stage(job: &mut Job, _: &Interrupt<'_>) -> Result<Outcome, WorkError> {
    let text = job.frames.first().map(|f| f.as_slice()).unwrap_or_default();
    match std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(n) => Ok(Outcome::Forward(vec![n.to_le_bytes().to_vec()])),
        None => Err(WorkError::Failed {
            status: 400,
            reason: "expected a decimal number from 0 to 18446744073709551615".into(),
        }),
    }
}

/// Stage 2: test primality.
pub fn test_stage(job: &mut Job, interrupt: &Interrupt<'_>) -> Result<Outcome, WorkError> {
    let bytes: [u8; 8] = job
        .frames
        .first()
        .and_then(|f| f.as_slice().try_into().ok())
        .ok_or_else(|| WorkError::Failed {
            status: 500,
            reason: "stage 2 expects an 8-byte number".into(),
        })?;
    let n = u64::from_le_bytes(bytes);
    let prime = is_prime_interruptible(n, || interrupt.check().map_err(WorkError::from))?;
    Ok(Outcome::Reply(answer_body(n, prime)))
}

/// The odd numbers of `[start, end]` the simulation tests (start raised to 3 and made odd).
pub fn odd_numbers(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = start.max(3) | 1;
    (first..=end).step_by(2)
}

/// Tests every odd number of `[start, end]` on `threads` plain threads, no pipeline: the pure
/// compute time simulation mode is measured against. Returns (primes, numbers tested).
pub fn compute(start: u64, end: u64, threads: usize) -> (u64, u64) {
    let numbers: Vec<u64> = odd_numbers(start, end).collect();
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

/// Runs the whole two-stage pipeline in one process over inproc, with a netstring front on an
/// ephemeral loopback port, and asks it about every odd number of `[start, end]`.
pub fn simulate(start: u64, end: u64, workers: usize) -> anyhow::Result<Simulation> {
    let mut p = Pipeline::new("prime-simulation");
    p.timeout = None;
    p.stage(workers, parse_stage).stage(workers, test_stage);
    let running = p.start()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let primes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(protocol::serve(
            listener,
            running.server.clone(),
            Netstring::default(),
            running.shutdown.clone(),
        ));
        let client = BatchClient {
            addr,
            connections: 2,
            depth: 4 * workers.max(1),
            codec: NetstringClient { max_len: 4096 },
        };
        let (p, e) = (primes.clone(), errors.clone());
        client
            .run(
                odd_numbers(start, end).map(|n| n.to_string().into_bytes()),
                move |_req, answer| {
                    if answer.ends_with(b"\"is_prime\":true}") {
                        p.fetch_add(1, Ordering::Relaxed);
                    } else if !answer.ends_with(b"\"is_prime\":false}") {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await
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
        assert_eq!(compute(1, 30000, 2).0, sieve_count_odd(1, 30000));
    }

    #[test]
    fn simulation_counts_primes_right() {
        for (start, end, workers) in [(1, 1000, 1), (1000, 20000, 3), (3, 3, 1)] {
            let sim = simulate(start, end, workers).unwrap();
            assert_eq!(sim.errors, 0);
            assert_eq!(sim.primes, sieve_count_odd(start, end), "{start},{end}");
            let n = odd_numbers(start, end).count() as u64;
            assert_eq!((sim.report.sent, sim.report.answered), (n, n));
        }
    }
}
