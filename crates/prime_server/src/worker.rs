//! A worker: runs the application's work function on one job at a time.
//!
//! A worker connects a DEALER to its stage's proxy (jobs in, `Ready`/`Heartbeat` out), a DEALER to
//! the next stage's proxy (intermediate results out, `Reject`s back), a ROUTER to every server's
//! loopback (final replies, addressed to the server named in the job header) and a SUB to every
//! server's interrupt channel.
//!
//! The work function returns an [`Outcome`]: [`Outcome::Forward`] sends frames on to the next
//! stage, [`Outcome::Reply`] answers the client through the loopback, from any stage. Long work
//! calls [`Interrupt::check`], which fails once the request was cancelled (client gone, deadline
//! passed) or the process is stopping. A panic in the work function becomes a 500 reply and the
//! worker lives on. An optional cleanup function runs after every job.

use crate::proxy::Heartbeat;
use crate::shutdown::{Shutdown, POLL_INTERVAL};
use crate::transport::{Context, Frames, Kind as SocketKind, Sent, Socket, Waiter};
use crate::wire::{self, Header, Kind};
use crate::Error;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How to connect a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This stage's proxy, its downstream endpoint.
    pub upstream: String,
    /// The next stage's proxy, its upstream endpoint; `None` for the last stage.
    pub downstream: Option<String>,
    /// Every server's loopback endpoint (usually one).
    pub loopbacks: Vec<String>,
    /// Every server's interrupt endpoint (usually one).
    pub interrupts: Vec<String>,
    /// Heartbeat timing; must match the proxy's.
    pub heartbeat: Heartbeat,
    /// The heartbeat blob advertised to the proxy's choose function until a job changes it.
    pub blob: Vec<u8>,
    /// This stage's index (1 = first stage), written into the headers this worker sends.
    pub stage: u8,
    /// Run the worker's thread as a batch thread (see
    /// [`prefer_batch_scheduling`](crate::transport::prefer_batch_scheduling)); on by default.
    pub batch_scheduling: bool,
    /// Leave when the drain starts: tell the proxy (no new jobs), finish the job in hand and any
    /// already on the way, then return, instead of serving until the stop. For worker processes
    /// of a multi-process deployment; off by default (a one-process pipeline serves the front's
    /// drain).
    pub leave_on_drain: bool,
}

/// How long a leaving worker keeps taking jobs that its proxy sent before it learned of the
/// leave.
const LEAVE_GRACE: Duration = Duration::from_millis(500);

impl WorkerConfig {
    /// A worker of stage 1 for a single server, without a next stage.
    pub fn new(
        upstream: impl Into<String>,
        loopback: impl Into<String>,
        interrupt: impl Into<String>,
    ) -> Self {
        WorkerConfig {
            upstream: upstream.into(),
            downstream: None,
            loopbacks: vec![loopback.into()],
            interrupts: vec![interrupt.into()],
            heartbeat: Heartbeat::default(),
            blob: Vec::new(),
            stage: 1,
            batch_scheduling: true,
            leave_on_drain: false,
        }
    }

    /// Sets the next stage's proxy.
    pub fn downstream(mut self, endpoint: impl Into<String>) -> Self {
        self.downstream = Some(endpoint.into());
        self
    }
}

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
    /// Changes the heartbeat blob this worker advertises from now on (for the proxy's choose
    /// function).
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

/// Why the interrupt check stopped the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    /// The server cancelled the request (the client went away or the server timed it out).
    #[error("the request was cancelled")]
    Cancelled,
    /// The request's deadline passed.
    #[error("the request's deadline passed")]
    DeadlinePassed,
    /// The process is stopping.
    #[error("the worker is shutting down")]
    ShuttingDown,
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

/// How long to keep remembering a cancelled request.
const CANCEL_MEMORY: Duration = Duration::from_secs(600);
/// The most cancelled requests remembered at once.
const CANCEL_CAPACITY: usize = 65_536;
/// How often the interrupt check looks at the interrupt sockets (it checks the deadline and the
/// shutdown flag on every call).
const INTERRUPT_DRAIN_EVERY: Duration = Duration::from_millis(1);
/// How long a reply may wait for the server's loopback to become reachable (connection race at
/// start-up) before it is dropped and counted.
const LOOPBACK_PATIENCE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct Cancelled {
    set: HashSet<(u64, u64)>,
    order: VecDeque<(Instant, (u64, u64))>,
}

impl Cancelled {
    fn insert(&mut self, key: (u64, u64)) {
        let now = Instant::now();
        while let Some(&(t, k)) = self.order.front() {
            if now.duration_since(t) > CANCEL_MEMORY || self.order.len() >= CANCEL_CAPACITY {
                self.order.pop_front();
                self.set.remove(&k);
            } else {
                break;
            }
        }
        if self.set.insert(key) {
            self.order.push_back((now, key));
        }
    }
}

/// Where a worker learns which requests were cancelled.
pub(crate) enum CancelSource<'a> {
    /// The servers' interrupt channels (SUB sockets), read into the worker's own set.
    Sockets {
        subs: &'a [Socket],
        cancelled: &'a RefCell<Cancelled>,
    },
    /// The set the server core of an in-memory pipeline writes to.
    Shared(&'a SharedCancels),
}

/// The cancelled requests of an in-memory pipeline, written by the server core (client gone,
/// deadline passed) and read by the workers' interrupt checks.
#[derive(Default)]
pub(crate) struct SharedCancels(std::sync::Mutex<Cancelled>);

impl SharedCancels {
    pub(crate) fn insert(&self, key: (u64, u64)) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key);
    }

    pub(crate) fn contains(&self, key: &(u64, u64)) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set
            .contains(key)
    }
}

/// The interrupt check handed to the work function.
pub struct Interrupt<'a> {
    source: CancelSource<'a>,
    shutdown: &'a Shutdown,
    key: (u64, u64),
    deadline_us: u64,
    last_drain: Cell<Instant>,
    stats: &'a WorkerStats,
}

impl<'a> Interrupt<'a> {
    pub(crate) fn new(
        source: CancelSource<'a>,
        shutdown: &'a Shutdown,
        header: &Header,
        stats: &'a WorkerStats,
    ) -> Self {
        Interrupt {
            source,
            shutdown,
            key: (header.server_id, header.request_id),
            deadline_us: header.deadline_us,
            last_drain: Cell::new(Instant::now()),
            stats,
        }
    }

    /// Fails when the work should stop: the request was cancelled, its deadline passed, or the
    /// process is stopping. Cheap enough to call in an inner loop.
    pub fn check(&self) -> Result<(), Interrupted> {
        if self.shutdown.is_stopping() {
            return Err(Interrupted::ShuttingDown);
        }
        let now = Instant::now();
        let look = now.duration_since(self.last_drain.get()) >= INTERRUPT_DRAIN_EVERY;
        if look {
            self.last_drain.set(now);
            if self.deadline_us != 0 && wire::now_us() >= self.deadline_us {
                return Err(Interrupted::DeadlinePassed);
            }
        }
        let cancelled = match &self.source {
            CancelSource::Sockets { subs, cancelled } => {
                if look {
                    drain_interrupts(subs, &mut cancelled.borrow_mut(), self.stats);
                }
                cancelled.borrow().set.contains(&self.key)
            }
            // A lock: taken at the same pace as the sockets are drained.
            CancelSource::Shared(set) => look && set.contains(&self.key),
        };
        if cancelled {
            return Err(Interrupted::Cancelled);
        }
        Ok(())
    }
}

fn drain_interrupts(subs: &[Socket], cancelled: &mut Cancelled, stats: &WorkerStats) {
    for sub in subs {
        while let Ok(Some(frames)) = sub.try_recv() {
            match wire::decode(frames) {
                Ok((h, _)) if h.kind == Kind::Interrupt => {
                    cancelled.insert((h.server_id, h.request_id))
                }
                Ok(_) | Err(_) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("worker dropped a malformed interrupt");
                }
            }
        }
    }
}

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

/// Runs the work function on a job, catching a panic, and turns what it returned into what the
/// worker must send, counting failures. Shared by the zmq worker and the in-memory one.
pub(crate) fn perform(
    work: &mut WorkFn,
    job: &mut Job,
    interrupt: &Interrupt<'_>,
    busy: &AtomicBool,
    stats: &WorkerStats,
) -> Action {
    busy.store(true, Ordering::Release);
    let result = catch_unwind(AssertUnwindSafe(|| work(job, interrupt)));
    busy.store(false, Ordering::Release);
    let request_id = job.header.request_id;
    match result {
        Ok(Ok(Outcome::Reply(body))) => Action::Answer(0, body),
        Ok(Ok(Outcome::Forward(frames))) => Action::Forward(frames),
        Ok(Err(WorkError::Failed { status, reason })) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            Action::Answer(status, reason.into_bytes())
        }
        Ok(Err(WorkError::Interrupted(why))) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(request_id, %why, "work interrupted");
            match why {
                // The server has answered (or will, at the deadline).
                Interrupted::Cancelled | Interrupted::DeadlinePassed => Action::Nothing,
                Interrupted::ShuttingDown => {
                    Action::Answer(503, b"the worker is shutting down".to_vec())
                }
            }
        }
        Err(panic) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(request_id, panic = %msg, "work function panicked");
            Action::Answer(500, format!("the worker failed: {msg}").into_bytes())
        }
    }
}

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

/// One worker. Build with [`Worker::connect`], then [`Worker::run`] on its own thread.
pub struct Worker {
    ctx: Context,
    id: Vec<u8>,
    /// Set while the work function runs; the heartbeat thread speaks for the worker then.
    busy: Arc<AtomicBool>,
    /// When the proxy was last heard from.
    last_heard: Instant,
    config: WorkerConfig,
    upstream: Socket,
    downstream: Option<Socket>,
    loopback: Socket,
    subs: Vec<Socket>,
    work: WorkFn,
    cleanup: Option<CleanupFn>,
    stats: Arc<WorkerStats>,
    cancelled: RefCell<Cancelled>,
    blob: Vec<u8>,
    ready_sent: bool,
    /// Whether every interrupt that reached the sockets before the latest wait ended has been
    /// read: true after a wait (a signalled interrupt socket is drained before any job), false
    /// once a job starts. A job that starts straight after a wait then skips the drain (a
    /// system call per interrupt socket, per job) without missing what the wait saw.
    interrupts_read: bool,
    last_sent: Instant,
    /// When this worker told its proxy it is leaving.
    left: Option<Instant>,
}

/// Waiter tokens of a worker's sockets.
const UP: u64 = 0;
const DOWN: u64 = 1;
const SUB: u64 = 2;

/// A header-only Heartbeat from the proxy (it is alive), as opposed to a job.
fn is_heartbeat(frames: &Frames) -> bool {
    frames.len() == 1 && matches!(Header::decode(&frames[0]), Ok(h) if h.kind == Kind::Heartbeat)
}

/// The worker's heartbeat thread; stopped and joined by [`HeartbeatThread::stop`].
struct HeartbeatThread {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeartbeatThread {
    fn stop(mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn unique_worker_id() -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = wire::now_us() & 0xffff_ffff;
    format!("w-{}-{nanos:x}-{n}", std::process::id()).into_bytes()
}

impl Worker {
    /// Opens and connects the worker's sockets.
    pub fn connect(ctx: &Context, config: WorkerConfig, work: WorkFn) -> Result<Worker, Error> {
        let id = unique_worker_id();
        let upstream = ctx.socket(SocketKind::Dealer)?;
        upstream.set_routing_id(&id)?;
        upstream.connect(&config.upstream)?;
        let downstream = match &config.downstream {
            Some(ep) => {
                let s = ctx.socket(SocketKind::Dealer)?;
                s.connect(ep)?;
                Some(s)
            }
            None => None,
        };
        let loopback = ctx.socket(SocketKind::Router)?;
        loopback.set_router_mandatory(true)?;
        for ep in &config.loopbacks {
            loopback.connect(ep)?;
        }
        let mut subs = Vec::new();
        for ep in &config.interrupts {
            let s = ctx.socket(SocketKind::Sub)?;
            s.connect(ep)?;
            subs.push(s);
        }
        Ok(Worker {
            ctx: ctx.clone(),
            id,
            busy: Arc::new(AtomicBool::new(false)),
            last_heard: Instant::now(),
            blob: config.blob.clone(),
            config,
            upstream,
            downstream,
            loopback,
            subs,
            work,
            cleanup: None,
            stats: Arc::default(),
            cancelled: RefCell::default(),
            ready_sent: false,
            interrupts_read: false,
            last_sent: Instant::now(),
            left: None,
        })
    }

    /// Sets the function run after every job.
    pub fn with_cleanup(mut self, cleanup: CleanupFn) -> Self {
        self.cleanup = Some(cleanup);
        self
    }

    /// The worker's counters; clone the `Arc` before [`Worker::run`].
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Serves jobs until `shutdown` stops, then tells the proxy it is leaving.
    pub fn run(mut self, shutdown: Shutdown) -> Result<(), Error> {
        if self.config.batch_scheduling {
            crate::transport::prefer_batch_scheduling();
        }
        let mut waiter = Waiter::new()?;
        waiter.watch(&self.upstream, UP)?;
        if let Some(d) = &self.downstream {
            waiter.watch(d, DOWN)?;
        }
        for s in &self.subs {
            waiter.watch(s, SUB)?;
        }
        self.say_ready()?;
        let heartbeats = self.start_heartbeat_thread(&shutdown)?;
        let result = self.serve(&shutdown, &mut waiter);
        heartbeats.stop();
        result
    }

    /// The worker's loop; see [`Worker::run`].
    fn serve(&mut self, shutdown: &Shutdown, waiter: &mut Waiter) -> Result<(), Error> {
        let shutdown = shutdown.clone();
        // Which sockets may hold messages; each is drained to empty before the next wait (see
        // `Waiter`). All of them at first.
        let (mut up, mut down, mut sub) = (true, true, true);
        let mut fired = Vec::new();
        while !shutdown.is_stopping() {
            if self.config.leave_on_drain && shutdown.is_draining() && self.left.is_none() {
                tracing::info!("draining: leaving the proxy after the jobs in hand");
                self.send_up(Kind::Disconnect, None)?;
                self.left = Some(Instant::now());
                up = true;
            }
            if sub {
                drain_interrupts(&self.subs, &mut self.cancelled.borrow_mut(), &self.stats);
                sub = false;
            }
            if down {
                self.handle_rejects()?;
                down = false;
            }
            if up {
                match self.upstream.try_recv()? {
                    Some(frames) => {
                        self.last_heard = Instant::now();
                        if !is_heartbeat(&frames) {
                            self.handle_job(frames, &shutdown)?;
                        }
                        continue;
                    }
                    None => up = false,
                }
            }
            if self.left.is_some_and(|t| t.elapsed() >= LEAVE_GRACE) {
                // Left, and nothing more came: done.
                return Ok(());
            }
            if self.left.is_none() && self.last_sent.elapsed() >= self.config.heartbeat.interval {
                if self.last_heard.elapsed() > self.config.heartbeat.expiry() {
                    // The proxy went quiet (it died, or restarted and forgot us): say Ready,
                    // which registers us with whichever proxy is there now.
                    tracing::warn!("proxy silent: registering again");
                    self.last_heard = Instant::now();
                    self.say_ready()?;
                } else {
                    self.send_up(Kind::Heartbeat, None)?;
                }
            }
            let mut wait = self
                .config
                .heartbeat
                .interval
                .saturating_sub(self.last_sent.elapsed())
                .min(POLL_INTERVAL);
            if let Some(t) = self.left {
                wait = wait.min(LEAVE_GRACE.saturating_sub(t.elapsed()));
            }
            waiter.wait(wait, &mut fired)?;
            self.interrupts_read = true;
            for t in &fired {
                match *t {
                    UP => up = true,
                    DOWN => down = true,
                    _ => sub = true,
                }
            }
            if fired.is_empty() {
                // A quiet interval: look everywhere, as a safety net.
                (up, down, sub) = (true, true, true);
            }
        }
        self.send_up(Kind::Disconnect, None)?;
        Ok(())
    }

    /// Starts the thread that sends heartbeats for this worker while its work function runs
    /// (the worker's own thread is busy then), over a socket of its own.
    fn start_heartbeat_thread(&self, shutdown: &Shutdown) -> Result<HeartbeatThread, Error> {
        let socket = self.ctx.socket(SocketKind::Dealer)?;
        let mut hb_id = self.id.clone();
        hb_id.extend_from_slice(b"#hb");
        socket.set_routing_id(&hb_id)?;
        socket.connect(&self.config.upstream)?;
        let done = Arc::new(AtomicBool::new(false));
        let (busy, id, interval, stage) = (
            self.busy.clone(),
            self.id.clone(),
            self.config.heartbeat.interval,
            self.config.stage,
        );
        let (d, sd) = (done.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("worker-heartbeat".into())
            .spawn(move || {
                let mut h = Header::new(Kind::Heartbeat);
                h.stage = stage;
                h.flags = wire::flags::BUSY;
                let mut last = Instant::now();
                while !d.load(Ordering::Acquire) && !sd.is_stopping() {
                    std::thread::sleep((interval / 4).min(POLL_INTERVAL));
                    if busy.load(Ordering::Acquire) && last.elapsed() >= interval {
                        let _ = socket.send(wire::message(&h, [id.clone()]));
                        last = Instant::now();
                    }
                }
            })
            .map_err(Error::Io)?;
        Ok(HeartbeatThread {
            done,
            thread: Some(thread),
        })
    }

    fn send_up(&mut self, kind: Kind, blob: Option<Vec<u8>>) -> Result<(), Error> {
        let mut h = Header::new(kind);
        h.stage = self.config.stage;
        self.upstream.send(wire::message(&h, blob))?;
        self.last_sent = Instant::now();
        Ok(())
    }

    fn say_ready(&mut self) -> Result<(), Error> {
        if self.left.is_some() {
            return Ok(());
        }
        let blob = self.blob.clone();
        self.send_up(Kind::Ready, Some(blob))?;
        self.ready_sent = true;
        Ok(())
    }

    fn handle_job(&mut self, frames: Frames, shutdown: &Shutdown) -> Result<(), Error> {
        self.stats.jobs.fetch_add(1, Ordering::Relaxed);
        if !self.ready_sent {
            self.stats.jobs_while_busy.fetch_add(1, Ordering::Relaxed);
        }
        self.ready_sent = false;
        match wire::decode(frames) {
            Ok((header, payload)) if header.kind == Kind::Job => {
                self.run_job(header, payload, shutdown)?;
                if let Some(cleanup) = self.cleanup.as_mut() {
                    if catch_unwind(AssertUnwindSafe(cleanup)).is_err() {
                        tracing::error!("cleanup function panicked");
                    }
                }
            }
            Ok((h, _)) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = ?h.kind, "worker dropped an unexpected message");
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "worker dropped a malformed job");
            }
        }
        self.say_ready()
    }

    fn run_job(
        &mut self,
        header: Header,
        payload: Frames,
        shutdown: &Shutdown,
    ) -> Result<(), Error> {
        let key = (header.server_id, header.request_id);
        if !std::mem::replace(&mut self.interrupts_read, false) {
            drain_interrupts(&self.subs, &mut self.cancelled.borrow_mut(), &self.stats);
        }
        // The server answers cancelled and expired requests itself: skip the work, send nothing.
        if self.cancelled.borrow().set.contains(&key) || header.expired_at(wire::now_us()) {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut job = Job::new(header, payload);
        let source = CancelSource::Sockets {
            subs: &self.subs,
            cancelled: &self.cancelled,
        };
        let interrupt = Interrupt::new(source, shutdown, &header, &self.stats);
        let action = perform(
            &mut self.work,
            &mut job,
            &interrupt,
            &self.busy,
            &self.stats,
        );
        if let Some(blob) = job.blob.take() {
            self.blob = blob;
        }
        match action {
            Action::Forward(frames) => self.forward(&header, frames),
            Action::Answer(status, body) => self.reply(&header, status, body),
            Action::Nothing => Ok(()),
        }
    }

    fn forward(&mut self, header: &Header, frames: Frames) -> Result<(), Error> {
        let Some(down) = &self.downstream else {
            return self.reply(
                header,
                500,
                b"the last stage forwarded a job: no next stage".to_vec(),
            );
        };
        let mut h = header.with_kind(Kind::Job);
        h.stage = self.config.stage;
        h.attempt = 0;
        if down.send(wire::message(&h, frames))? == Sent::Unreachable {
            return self.reply(header, 503, b"the next stage is unreachable".to_vec());
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn reply(&mut self, header: &Header, status: u16, body: Vec<u8>) -> Result<(), Error> {
        let mut h = header.with_kind(Kind::Reply);
        h.stage = self.config.stage;
        h.status = status;
        let head = h.encode();
        let to = wire::server_routing_id(header.server_id);
        let started = Instant::now();
        loop {
            match self.loopback.send([&to[..], &head[..], &body[..]])? {
                Sent::Yes => {
                    self.stats.replied.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Sent::Unreachable if started.elapsed() < LOOPBACK_PATIENCE => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Sent::Unreachable => {
                    self.stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        request_id = header.request_id,
                        server_id = header.server_id,
                        "reply dropped: the server's loopback is unreachable"
                    );
                    return Ok(());
                }
            }
        }
    }

    fn handle_rejects(&mut self) -> Result<(), Error> {
        let Some(down) = &self.downstream else {
            return Ok(());
        };
        let mut rejected = Vec::new();
        while let Some(frames) = down.try_recv()? {
            match wire::decode(frames) {
                Ok((h, mut payload)) if h.kind == Kind::Reject => {
                    let reason = payload.pop().unwrap_or_else(|| b"overloaded".to_vec());
                    rejected.push((h, reason));
                }
                _ => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("worker dropped a malformed message from the next stage");
                }
            }
        }
        for (h, reason) in rejected {
            let status = if h.status == 0 { 503 } else { h.status };
            self.reply(&h, status, reason)?;
        }
        Ok(())
    }
}
