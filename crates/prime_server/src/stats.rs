//! Counters of the components, readable while they run.

use std::sync::atomic::AtomicU64;

/// Counters of one worker, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs taken in.
    pub jobs: AtomicU64,
    /// Jobs that arrived while this worker had not said Ready: would mean the proxy handed a job
    /// to a busy worker. Always 0 with a correct proxy.
    pub jobs_while_busy: AtomicU64,
    /// Jobs answered through the loopback.
    pub replied: AtomicU64,
    /// Jobs forwarded to the next stage.
    pub forwarded: AtomicU64,
    /// Work functions that failed, panicked or were interrupted.
    pub failed: AtomicU64,
    /// Jobs skipped because they were already cancelled or past their deadline on arrival.
    pub skipped: AtomicU64,
    /// Messages that were not valid protocol messages, dropped.
    pub malformed: AtomicU64,
    /// Replies that could not reach their server.
    pub undeliverable: AtomicU64,
}

/// Counters of the server core, readable while it runs.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests submitted.
    pub submitted: AtomicU64,
    /// Replies delivered.
    pub replied: AtomicU64,
    /// Requests answered 504.
    pub timeouts: AtomicU64,
    /// Requests answered 503 (proxy queue full, in-flight limit, unreachable stage, shutdown).
    pub overloaded: AtomicU64,
    /// Requests whose client went away before the answer.
    pub cancelled: AtomicU64,
    /// Replies that came after the request was answered or cancelled, dropped.
    pub late: AtomicU64,
    /// Messages that were not valid protocol messages, dropped.
    pub malformed: AtomicU64,
}
