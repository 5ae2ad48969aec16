//! The work contract: what an application writes to be a stage. A work function takes a [`Job`]
//! and an [`Interrupt`] check and returns an [`Outcome`] ([`Outcome::Forward`] to the next stage,
//! [`Outcome::Reply`] to the client from any stage) or a [`WorkError`]. The same contract holds
//! whichever way stages are joined: `perform` runs it for the zmq worker
//! ([`worker`](crate::worker)) and for in-memory stages (`memory.rs`) alike.

use crate::interrupt::{Interrupt, Interrupted};
use crate::stats::WorkerStats;
use crate::transport::Frames;
use crate::wire::{ClientProtocol, Header};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// One job as the work function sees it.
#[derive(Debug)]
pub struct Job {
    header: Header,
    /// The application's frames: the client's request for stage 1, the previous stage's
    /// [`Outcome::Forward`] frames after that.
    pub frames: Frames,
    blob: Option<Vec<u8>>,
}

impl Job {
    pub(crate) fn new(header: Header, frames: Frames) -> Job {
        Job {
            header,
            frames,
            blob: None,
        }
    }

    /// The request's id, unique per server.
    pub fn request_id(&self) -> u64 {
        self.header.request_id
    }
    /// The request's trace id: what its client knows it by (the HTTP front's `X-Request-Id`,
    /// given by the client or made by the server), empty if the request came without one. The
    /// work function runs inside a `job` span whose `request_id` field is this, so its log lines
    /// carry it.
    pub fn trace_id(&self) -> &str {
        self.header.trace_id.as_str()
    }
    /// How the request came in, and so what the stage that answers it must send
    /// ([`ClientProtocol`]): for [`ClientProtocol::Http`] an HTTP response frame
    /// ([`Response::encode`](crate::http_job::Response::encode)), for the others the bytes
    /// the client gets. Every stage sees the protocol the server wrote into the job, whatever
    /// the stages before it forwarded.
    pub fn protocol(&self) -> ClientProtocol {
        self.header.protocol
    }
    /// The server that will answer the client.
    pub fn server_id(&self) -> u64 {
        self.header.server_id
    }
    /// When the server accepted the request.
    pub fn arrival(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(self.header.arrival_us)
    }
    /// When the server gives up on the request, if ever.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.header.deadline()
    }
    /// How many times this job has been handed to a worker of this stage (1 = first).
    pub fn attempt(&self) -> u8 {
        self.header.attempt
    }
    /// The blob the work function set with [`Job::set_heartbeat`], taken.
    pub(crate) fn take_blob(&mut self) -> Option<Vec<u8>> {
        self.blob.take()
    }

    /// Changes the heartbeat blob this worker advertises from now on (for the proxy's choose
    /// function). At most [`MAX_BLOB`](crate::proxy::MAX_BLOB) bytes: a proxy drops a Ready
    /// with a longer one, so a longer blob is ignored (with a warning) and the old one kept.
    pub fn set_heartbeat(&mut self, blob: Vec<u8>) {
        self.blob = Some(blob);
    }
}

/// What the work function decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these frames on to the next stage.
    Forward(Frames),
    /// Answer the client with this (protocol-specific) response, through the loopback.
    Reply(Vec<u8>),
}

/// Why a work function did not produce an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkError {
    /// The interrupt check fired; see [`Interrupted`].
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The work failed: the client gets `status` (a 5xx or 4xx) with `reason`.
    #[error("{status}: {reason}")]
    Failed {
        /// The status the client gets.
        status: u16,
        /// A short text for the client.
        reason: String,
    },
}

/// The application's work function.
pub type WorkFn = Box<dyn FnMut(&mut Job, &Interrupt<'_>) -> Result<Outcome, WorkError> + Send>;
/// Runs after every job, whatever its outcome.
pub type CleanupFn = Box<dyn FnMut() + Send>;

/// What a worker does with a job once its work function has run.
pub(crate) enum Action {
    /// Hand these frames to the next stage.
    Forward(Frames),
    /// Answer the client: status 0 with a reply body, or a failure status with its reason.
    Answer(u16, Vec<u8>),
    /// Send nothing: the request is dead (cancelled, or past its deadline) and the server has
    /// answered it.
    Nothing,
}

/// The target of the `job` span every work function runs in (its field `request_id` is the
/// job's [`Job::trace_id`]). The span is at debug level: `RUST_LOG=info,prime_server::job=debug`
/// turns it on, and every line the work function logs then names the request.
pub const JOB_SPAN_TARGET: &str = "prime_server::job";

/// Runs the work function on a job, catching a panic, and turns what it returned into what the
/// worker must send, counting failures. Shared by the zmq worker and the in-memory one.
pub(crate) fn perform(
    work: &mut WorkFn,
    job: &mut Job,
    interrupt: &Interrupt<'_>,
    busy: &AtomicBool,
    stats: &WorkerStats,
) -> Action {
    // With the span on, every line logged while the job runs (the work function's own
    // included) names the request as its client knows it. Off by default: with a subscriber
    // that formats spans (the daemons'), a span costs 0.3–0.5 µs per job, measured as 7–9% of
    // the cheap requests of the in-memory prime_serverd (BENCHMARKS.md); a disabled one costs a
    // load and a compare.
    let span =
        tracing::debug_span!(target: JOB_SPAN_TARGET, "job", request_id = %job.header.trace_id);
    let _entered = span.enter();
    busy.store(true, Ordering::Release);
    let result = catch_unwind(AssertUnwindSafe(|| work(job, interrupt)));
    busy.store(false, Ordering::Release);
    match result {
        Ok(Ok(Outcome::Reply(body))) => Action::Answer(0, body),
        Ok(Ok(Outcome::Forward(frames))) => Action::Forward(frames),
        Ok(Err(WorkError::Failed { status, reason })) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            Action::Answer(status, reason.into_bytes())
        }
        Ok(Err(WorkError::Interrupted(why))) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            stats.interrupted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%why, "work interrupted");
            match why {
                // The server has answered (or will, at the deadline), or is gone.
                Interrupted::Cancelled | Interrupted::DeadlinePassed | Interrupted::ServerGone => {
                    Action::Nothing
                }
                Interrupted::ShuttingDown => {
                    Action::Answer(503, b"the worker is shutting down".to_vec())
                }
            }
        }
        Err(panic) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            stats.panicked.fetch_add(1, Ordering::Relaxed);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %msg, "work function panicked");
            Action::Answer(500, format!("the worker failed: {msg}").into_bytes())
        }
    }
}
