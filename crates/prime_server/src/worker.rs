//! A worker: runs the application's work function on one job at a time.
//!
//! A worker connects a DEALER to its stage's proxy (jobs in, `Ready`/`Heartbeat` out), a DEALER to
//! the next stage's proxy (intermediate results out, `Reject`s back), a ROUTER to every server's
//! loopback (final replies, addressed to the server named in the job header) and a SUB to every
//! server's interrupt channel.
//!
//! The work function returns an [`Outcome`](crate::Outcome):
//! [`Outcome::Forward`](crate::Outcome::Forward) sends frames on to the next stage,
//! [`Outcome::Reply`](crate::Outcome::Reply) answers the client through the loopback, from any stage. Long work
//! calls [`Interrupt::check`], which fails once the request was cancelled (client gone, deadline
//! passed) or the process is stopping. A panic in the work function becomes a 500 reply and the
//! worker lives on. An optional cleanup function runs after every job.
//!
//! **Whether it has a proxy** is in the log: a worker starts waiting for its proxy (a connect
//! succeeds whether or not anything listens), says `connected to the proxy` once it first hears
//! from it (a job or a heartbeat), warns `proxy silent` when it stops hearing it, and while it
//! has none warns `no proxy yet` after a heartbeat expiry, then every [`NO_PROXY_WARN_EVERY`].

use crate::endpoint::Endpoint;
use crate::heartbeat::Heartbeat;
use crate::interrupt::{drain_interrupts, CancelSource, Interrupt, Notices};
use crate::proxy_watch::ProxyWatch;
use crate::rate_limit::DropWarnings;
use crate::security::WorkerKeys;
use crate::shutdown::{OnDrain, Shutdown, POLL_INTERVAL};
use crate::stats::WorkerStats;
use crate::transport::{Context, Frames, Kind as SocketKind, Sent, Socket, Waiter};
use crate::wire::{self, Header, Kind};
use crate::work::{perform, Action, CleanupFn, Job, WorkFn};
use crate::Error;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to connect a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This stage's proxy, its downstream endpoint.
    pub upstream: Endpoint,
    /// The next stage's proxy, its upstream endpoint; `None` for the last stage.
    pub downstream: Option<Endpoint>,
    /// Every server's loopback endpoint (usually one).
    pub loopbacks: Vec<Endpoint>,
    /// Every server's interrupt endpoint (usually one).
    pub interrupts: Vec<Endpoint>,
    /// Heartbeat timing; must match the proxy's.
    pub heartbeat: Heartbeat,
    /// The heartbeat blob advertised to the proxy's choose function until a job changes it; at
    /// most [`MAX_BLOB`](crate::proxy::MAX_BLOB) bytes (a longer one is not sent).
    pub blob: Vec<u8>,
    /// This stage's index (1 = first stage), written into the headers this worker sends.
    pub stage: u8,
    /// Run the worker's thread as a batch thread (see
    /// [`prefer_batch_scheduling`](crate::transport::prefer_batch_scheduling)); on by default.
    pub batch_scheduling: bool,
    /// With [`OnDrain::FinishAndExit`], leave when the drain starts: tell the proxy (no new
    /// jobs), finish the job in hand and any already on the way, then return, instead of serving
    /// until the stop (worker processes of a multi-process deployment; a one-process pipeline
    /// serves the front's drain).
    pub on_drain: OnDrain,
    /// CURVE keys: the worker proves its stage's key to each proxy and server and checks
    /// theirs. `None`: plain zmq (for one trusted host).
    pub security: Option<WorkerKeys>,
}

/// How long a leaving worker keeps taking jobs that its proxy sent before it learned of the
/// leave.
const LEAVE_GRACE: Duration = Duration::from_millis(500);

impl WorkerConfig {
    /// A worker of stage 1 for a single server, without a next stage.
    pub fn new(upstream: Endpoint, loopback: Endpoint, interrupt: Endpoint) -> Self {
        WorkerConfig {
            upstream,
            downstream: None,
            loopbacks: vec![loopback],
            interrupts: vec![interrupt],
            heartbeat: Heartbeat::default(),
            blob: Vec::new(),
            stage: 1,
            batch_scheduling: true,
            on_drain: OnDrain::ServeUntilStop,
            security: None,
        }
    }

    /// Sets the next stage's proxy.
    pub fn downstream(mut self, endpoint: Endpoint) -> Self {
        self.downstream = Some(endpoint);
        self
    }
}

/// How often a worker that has no proxy repeats its warning.
pub const NO_PROXY_WARN_EVERY: Duration = Duration::from_secs(60);

/// How long a reply may wait for the server's loopback to become reachable (connection race at
/// start-up) before it is dropped and counted.
const LOOPBACK_PATIENCE: Duration = Duration::from_secs(1);
/// The most replies waiting for their server's loopback at once; beyond it the oldest is dropped.
const MAX_UNDELIVERED: usize = 1024;
/// How often waiting replies are tried again.
const RETRY_EVERY: Duration = Duration::from_millis(5);
/// The most forwarded jobs remembered, to be answered 503 should the next stage's proxy die
/// holding them; beyond it the oldest are forgotten (and left to their deadline).
const MAX_FORWARDED: usize = 4096;

/// A reply whose server was not reachable when it was sent: it waits here, tried again on every
/// turn of the worker's loop, while the worker goes on with other jobs (a reply to a server
/// that is gone must cost the worker nothing but this slot).
struct Undelivered {
    to: Vec<u8>,
    head: wire::EncodedHeader,
    body: Vec<u8>,
    since: Instant,
}

/// One worker. Build with [`Worker::connect`], then [`Worker::run`] on its own thread.
pub struct Worker {
    ctx: Context,
    id: Vec<u8>,
    /// Set while the work function runs; the heartbeat thread speaks for the worker then.
    busy: Arc<AtomicBool>,
    /// When the proxy was last heard from.
    last_heard: Instant,
    /// Whether the proxy has been heard since the start, or since it went silent.
    proxy_heard: bool,
    /// Since when the worker has had no proxy (at the start, or since it went silent).
    no_proxy_since: Instant,
    /// When the worker last warned that it has no proxy.
    no_proxy_warned: Option<Instant>,
    config: WorkerConfig,
    upstream: Socket,
    downstream: Option<Socket>,
    loopback: Socket,
    subs: Vec<Socket>,
    work: WorkFn,
    cleanup: Option<CleanupFn>,
    stats: Arc<WorkerStats>,
    notices: RefCell<Notices>,
    blob: Vec<u8>,
    ready_sent: bool,
    /// When the last Ready was sent, until a job comes (the wait it ends is measured).
    ready_at: Option<Instant>,
    /// Whether every interrupt that reached the sockets before the latest wait ended has been
    /// read: true after a wait (a signalled interrupt socket is drained before any job), false
    /// once a job starts. A job that starts straight after a wait then skips the drain (a
    /// system call per interrupt socket, per job) without missing what the wait saw.
    interrupts_read: bool,
    last_sent: Instant,
    /// When this worker told its proxy it is leaving.
    left: Option<Instant>,
    /// Whether the proxy confirmed the leave (no job comes after its confirmation).
    leave_confirmed: bool,
    /// The proxy said it is going (a Disconnect before we left): nothing to tell it at the stop.
    proxy_gone: bool,
    /// The job this worker took last, as (server id, request id): what its Disconnect names.
    last_job: (u64, u64),
    /// Replies waiting for their server's loopback.
    undelivered: std::collections::VecDeque<Undelivered>,
    warnings: DropWarnings,
    /// The next stage's proxy, watched.
    next_proxy: ProxyWatch,
    /// When to ask the next stage's proxy next whether it is alive.
    next_ask: Instant,
    /// Jobs forwarded to the next stage, and when.
    forwarded: VecDeque<(Header, Instant)>,
    /// Jobs the next stage's proxy may have lost, and when to answer them 503 (if the server has
    /// not had their answer by then, it takes this one; otherwise it drops it as late).
    orphans: VecDeque<(Instant, Header)>,
}

/// Waiter tokens of a worker's sockets.
const UP: u64 = 0;
const DOWN: u64 = 1;
const SUB: u64 = 2;
/// The shutdown's wake descriptor: a phase began.
const WAKE: u64 = 3;

/// A header-only message from the proxy of this kind (a Heartbeat: it is alive; a Disconnect:
/// it confirms our leave), as opposed to a job.
fn is_control(frames: &Frames, kind: Kind) -> bool {
    frames.len() == 1 && matches!(Header::decode(&frames[0]), Ok(h) if h.kind == kind)
}

/// The worker's heartbeat thread; stopped and joined by [`HeartbeatThread::stop`].
struct HeartbeatThread {
    /// Dropped to stop the thread at once (it waits on the other end between heartbeats).
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeartbeatThread {
    fn stop(mut self) {
        self.done.take();
        if let Some(t) = self.thread.take() {
            crate::component::join(t);
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
        let keys = config.security.as_ref();
        if let Some(k) = keys {
            if k.fronts.len() != config.loopbacks.len() || k.fronts.len() != config.interrupts.len()
            {
                return Err(Error::Config(format!(
                    "a worker with CURVE keys needs one front key per server: {} keys for {} \
                     loopback and {} interrupt endpoints",
                    k.fronts.len(),
                    config.loopbacks.len(),
                    config.interrupts.len()
                )));
            }
            if config.downstream.is_some() && k.next_proxy.is_none() {
                return Err(Error::Config(
                    "a worker with CURVE keys and a next stage needs the next proxy's key".into(),
                ));
            }
        }
        let upstream = ctx.socket(SocketKind::Dealer)?;
        upstream.set_routing_id(&id)?;
        let to_proxy = keys.map(|k| k.presenting(k.proxy));
        upstream.connect_presenting(&config.upstream, to_proxy.as_ref())?;
        let downstream = match &config.downstream {
            Some(ep) => {
                let s = ctx.socket(SocketKind::Dealer)?;
                let to_next = keys.and_then(|k| k.next_proxy.map(|p| k.presenting(p)));
                s.connect_presenting(ep, to_next.as_ref())?;
                Some(s)
            }
            None => None,
        };
        let loopback = ctx.socket(SocketKind::Router)?;
        loopback.set_router_mandatory(true)?;
        // A front that restarts comes back with a new server id (a new routing id): the pipe
        // to it must be made anew on each connection to learn it.
        loopback.set_immediate(true)?;
        let to_front = |i: usize| keys.map(|k| k.presenting(k.fronts[i]));
        for (i, ep) in config.loopbacks.iter().enumerate() {
            loopback.connect_presenting(ep, to_front(i).as_ref())?;
        }
        let mut subs = Vec::new();
        for (i, ep) in config.interrupts.iter().enumerate() {
            let s = ctx.socket(SocketKind::Sub)?;
            s.connect_presenting(ep, to_front(i).as_ref())?;
            subs.push(s);
        }
        let notices = RefCell::new(Notices::new(config.heartbeat.expiry()));
        let config_expiry = config.heartbeat.expiry();
        let blob = if config.blob.len() <= crate::proxy::MAX_BLOB {
            config.blob.clone()
        } else {
            tracing::warn!(
                bytes = config.blob.len(),
                "heartbeat blob over 64 KiB not sent: the proxy would refuse it"
            );
            Vec::new()
        };
        Ok(Worker {
            ctx: ctx.clone(),
            id,
            busy: Arc::new(AtomicBool::new(false)),
            last_heard: Instant::now(),
            proxy_heard: false,
            no_proxy_since: Instant::now(),
            no_proxy_warned: None,
            blob,
            config,
            upstream,
            downstream,
            loopback,
            subs,
            work,
            cleanup: None,
            stats: Arc::default(),
            notices,
            ready_sent: false,
            ready_at: None,
            interrupts_read: false,
            last_sent: Instant::now(),
            left: None,
            leave_confirmed: false,
            proxy_gone: false,
            last_job: (0, 0),
            undelivered: std::collections::VecDeque::new(),
            warnings: DropWarnings::new("worker"),
            next_proxy: ProxyWatch::new(config_expiry),
            next_ask: Instant::now(),
            forwarded: VecDeque::new(),
            orphans: VecDeque::new(),
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
        let span = tracing::info_span!(
            "worker",
            stage = self.config.stage,
            id = %String::from_utf8_lossy(&self.id)
        );
        let _entered = span.enter();
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
        // At debug: a pool of workers would say it once per thread (a daemon says it once).
        tracing::debug!(upstream = %self.config.upstream, "waiting for the proxy");
        if let Some(fd) = shutdown.wake_fd() {
            waiter.watch_fd(fd, WAKE)?;
        }
        self.say_ready()?;
        let heartbeats = self.start_heartbeat_thread(&shutdown)?;
        let result = self.serve(&shutdown, &mut waiter);
        heartbeats.stop();
        result
    }

    /// [`Worker::run`] on a thread of its own called `name`; join it with
    /// [`component::join`](crate::component::join), which reports a panic.
    pub fn spawn(
        self,
        name: String,
        shutdown: Shutdown,
    ) -> Result<std::thread::JoinHandle<()>, Error> {
        crate::component::spawn(name, move || self.run(shutdown))
    }

    /// The worker's loop; see [`Worker::run`].
    fn serve(&mut self, shutdown: &Shutdown, waiter: &mut Waiter) -> Result<(), Error> {
        let shutdown = shutdown.clone();
        // Which sockets may hold messages; each is drained to empty before the next wait (see
        // `Waiter`). All of them at first.
        let (mut up, mut down, mut sub) = (true, true, true);
        let mut fired = Vec::new();
        while !shutdown.is_stopping() {
            if self.leaving(&shutdown) && self.left.is_none() {
                tracing::info!("draining: leaving the proxy after the jobs on their way");
                self.leave()?;
                up = true;
            }
            self.retry_undelivered()?;
            self.watch_next_proxy()?;
            if sub {
                drain_interrupts(&self.subs, &mut self.notices.borrow_mut(), &self.stats);
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
                        if !self.proxy_heard {
                            self.proxy_heard = true;
                            self.no_proxy_warned = None;
                            let upstream = &self.config.upstream;
                            tracing::info!(%upstream, "connected to the proxy");
                        }
                        if is_control(&frames, Kind::Disconnect) {
                            // The proxy confirms our leave, or says it is going: either way
                            // it sends nothing more. Heard before we left, it means nothing
                            // (our own leave still waits for the next proxy's confirmation).
                            self.leave_confirmed = self.left.is_some();
                            self.proxy_gone = self.left.is_none();
                        } else if !is_control(&frames, Kind::Heartbeat) {
                            self.handle_job(frames, &shutdown)?;
                        }
                        continue;
                    }
                    None => up = false,
                }
            }
            if let Some(t) = self.left {
                // Every job the proxy sent came before its confirmation, and each was worked
                // in turn: nothing is left. A proxy that never confirms (gone, or one that
                // predates confirmations) is waited for as long as a silent proxy is trusted.
                let unconfirmed_wait = self.config.heartbeat.expiry().max(LEAVE_GRACE);
                if (self.leave_confirmed || t.elapsed() >= unconfirmed_wait)
                    && self.undelivered.is_empty()
                {
                    return Ok(());
                }
            }
            if self.left.is_none() && self.last_sent.elapsed() >= self.config.heartbeat.interval {
                if self.last_heard.elapsed() > self.config.heartbeat.expiry() {
                    // The proxy went quiet (it died, or restarted and forgot us), or was never
                    // heard: say Ready, which registers us with whichever proxy is there now.
                    self.no_proxy();
                    self.last_heard = Instant::now();
                    if let Some(keys) = &self.config.security {
                        // A refused CURVE handshake (our key not admitted yet, the proxy
                        // restarted with another allow-list) is never tried again by libzmq.
                        let creds = keys.presenting(keys.proxy);
                        self.upstream
                            .reconnect(&self.config.upstream, Some(&creds))?;
                    }
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
                let unconfirmed_wait = self.config.heartbeat.expiry().max(LEAVE_GRACE);
                wait = wait.min(unconfirmed_wait.saturating_sub(t.elapsed()));
            }
            if !self.undelivered.is_empty() {
                wait = wait.min(RETRY_EVERY);
            }
            if self.downstream.is_some() {
                wait = wait.min(self.next_ask.saturating_duration_since(Instant::now()));
            }
            if let Some((at, _)) = self.orphans.front() {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            if self.warnings.has_unreported() {
                self.warnings.flush(Instant::now());
            }
            waiter.wait(wait, &mut fired)?;
            self.interrupts_read = true;
            for t in &fired {
                match *t {
                    UP => up = true,
                    DOWN => down = true,
                    SUB => sub = true,
                    _ => {}
                }
            }
            if fired.is_empty() {
                // A quiet interval: look everywhere, as a safety net.
                (up, down, sub) = (true, true, true);
            }
        }
        // Stopping: the proxy is told, unless it heard it already or is gone (a message for it
        // would keep the process waiting on the socket's linger at exit).
        if self.left.is_none() && !self.proxy_gone {
            self.leave()?;
        }
        Ok(())
    }

    /// The proxy has not been heard for a heartbeat expiry: says so once when it went silent,
    /// then (as when it was never heard) every [`NO_PROXY_WARN_EVERY`].
    fn no_proxy(&mut self) {
        let now = Instant::now();
        let upstream = &self.config.upstream;
        if std::mem::replace(&mut self.proxy_heard, false) {
            tracing::warn!(%upstream, "proxy silent: registering again");
            self.no_proxy_since = now;
            self.no_proxy_warned = Some(now);
            return;
        }
        if self
            .no_proxy_warned
            .is_some_and(|t| now.saturating_duration_since(t) < NO_PROXY_WARN_EVERY)
        {
            return;
        }
        self.no_proxy_warned = Some(now);
        let seconds = now
            .saturating_duration_since(self.no_proxy_since)
            .as_secs_f64();
        tracing::warn!(
            %upstream,
            seconds = %format_args!("{seconds:.1}"),
            "no proxy yet: still waiting for it (is the stage's proxy running and bound to this \
             endpoint?)"
        );
    }

    /// Starts the thread that sends heartbeats for this worker while its work function runs
    /// (the worker's own thread is busy then), over a socket of its own.
    fn start_heartbeat_thread(&self, shutdown: &Shutdown) -> Result<HeartbeatThread, Error> {
        let socket = self.ctx.socket(SocketKind::Dealer)?;
        let mut hb_id = self.id.clone();
        hb_id.extend_from_slice(b"#hb");
        socket.set_routing_id(&hb_id)?;
        let keys = self.config.security.as_ref();
        let to_proxy = keys.map(|k| k.presenting(k.proxy));
        socket.connect_presenting(&self.config.upstream, to_proxy.as_ref())?;
        let (done, stopped) = std::sync::mpsc::channel::<()>();
        let (busy, id, interval, stage) = (
            self.busy.clone(),
            self.id.clone(),
            self.config.heartbeat.interval,
            self.config.stage,
        );
        let sd = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("worker-heartbeat".into())
            .spawn(move || {
                let mut h = Header::new(Kind::Heartbeat);
                h.stage = stage;
                h.flags = wire::flags::BUSY;
                let mut last = Instant::now();
                // Until the worker drops `done` (it stops with the worker's loop).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout((interval / 4).min(POLL_INTERVAL))
                {
                    if sd.is_stopping() {
                        break;
                    }
                    if busy.load(Ordering::Acquire) && last.elapsed() >= interval {
                        let _ = socket.send(wire::message(&h, [id.clone()]));
                        last = Instant::now();
                    }
                }
            })
            .map_err(|cause| Error::Io {
                op: "start the heartbeat thread",
                cause,
            })?;
        Ok(HeartbeatThread {
            done: Some(done),
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
        self.ready_at = Some(self.last_sent);
        Ok(())
    }

    /// Whether this worker leaves its proxy now: its process is draining and it is to finish and
    /// exit then.
    fn leaving(&self, shutdown: &Shutdown) -> bool {
        self.config.on_drain == OnDrain::FinishAndExit && shutdown.is_draining()
    }

    /// Tells the proxy this worker takes no more jobs, naming the job it took last: the proxy
    /// confirms, and a job it handed over that this worker has not read yet comes before the
    /// confirmation (see `Balancer::disconnect`).
    fn leave(&mut self) -> Result<(), Error> {
        self.left.get_or_insert_with(Instant::now);
        if self.proxy_gone {
            // It said it is going: nothing will come, and nobody would read a Disconnect.
            self.leave_confirmed = true;
            return Ok(());
        }
        let mut h = Header::new(Kind::Disconnect);
        h.stage = self.config.stage;
        (h.server_id, h.request_id) = self.last_job;
        self.upstream.send(wire::message(&h, None))?;
        self.last_sent = Instant::now();
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
                self.last_job = (header.server_id, header.request_id);
                self.run_job(header, payload, shutdown)?;
                if let Some(cleanup) = self.cleanup.as_mut() {
                    if catch_unwind(AssertUnwindSafe(cleanup)).is_err() {
                        tracing::error!("cleanup function panicked");
                    }
                }
            }
            Ok((h, _)) => self.malformed("proxy", format_args!("unexpected {:?}", h.kind)),
            Err(e) => self.malformed("proxy", e),
        }
        // A draining worker never asks for more: it says which job it finished instead.
        if self.leaving(shutdown) {
            self.leave()
        } else {
            self.say_ready()
        }
    }

    fn run_job(
        &mut self,
        header: Header,
        payload: Frames,
        shutdown: &Shutdown,
    ) -> Result<(), Error> {
        let key = (header.server_id, header.request_id);
        if !std::mem::replace(&mut self.interrupts_read, false) {
            drain_interrupts(&self.subs, &mut self.notices.borrow_mut(), &self.stats);
        }
        // A job the server accepted less than a heartbeat expiry ago shows it alive then, even if
        // its heartbeats are still on their way (after a partition heals, jobs can arrive
        // before the first heartbeat does).
        // Both clocks are read once per job: this runs for every job.
        let (now, now_us) = (Instant::now(), wire::now_us());
        if let Some(asked) = self.ready_at.take() {
            self.stats
                .wait_seconds
                .observe(now.saturating_duration_since(asked));
        }
        let age = Duration::from_micros(now_us.saturating_sub(header.arrival_us));
        if let Some(shown_alive) = now.checked_sub(age) {
            if age < self.config.heartbeat.expiry() {
                let mut notices = self.notices.borrow_mut();
                notices
                    .servers
                    .heard_at_least(header.server_id, shown_alive);
            }
        }
        // The server answers cancelled and expired requests itself, and a gone server needs no
        // answer: skip the work, send nothing.
        let dead = self.notices.borrow().dead(&key, now).is_some();
        if dead || header.expired_at(now_us) {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut job = Job::new(header, payload);
        let source = CancelSource::Sockets {
            subs: &self.subs,
            notices: &self.notices,
        };
        let interrupt = Interrupt::new(source, shutdown, &header, &self.stats);
        let action = perform(
            &mut self.work,
            &mut job,
            &interrupt,
            &self.busy,
            &self.stats,
        );
        if let Some(blob) = job.take_blob() {
            if blob.len() <= crate::proxy::MAX_BLOB {
                self.blob = blob;
            } else {
                // The proxy would drop every Ready carrying it, and the worker would never be
                // handed a job again.
                tracing::warn!(
                    bytes = blob.len(),
                    "heartbeat blob over 64 KiB ignored: the proxy would refuse it"
                );
            }
        }
        let sent = match action {
            Action::Forward(frames) => self.forward(&header, frames),
            Action::Answer(status, body) => self.reply(&header, status, body),
            Action::Nothing => Ok(()),
        };
        self.stats.job_seconds.observe(now.elapsed());
        sent
    }

    fn forward(&mut self, header: &Header, frames: Frames) -> Result<(), Error> {
        let Some(down) = &self.downstream else {
            return self.reply(
                header,
                500,
                b"the last stage forwarded a job: no next stage".to_vec(),
            );
        };
        if let Some(reason) = self.over_limit(frames.iter().map(Vec::len)) {
            return self.reply(header, 500, reason.into_bytes());
        }
        // The reply token goes on with the job: whichever stage answers needs it.
        let mut h = header.with_kind(Kind::Job);
        h.stage = self.config.stage;
        h.attempt = 0;
        if down.send(wire::message(&h, frames))? == Sent::Unreachable {
            return self.reply(header, 503, b"the next stage is unreachable".to_vec());
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let now_us = wire::now_us();
        while self.forwarded.len() >= MAX_FORWARDED
            || self
                .forwarded
                .front()
                .is_some_and(|(h, _)| h.expired_at(now_us))
        {
            self.forwarded.pop_front();
        }
        self.forwarded.push_back((*header, Instant::now()));
        Ok(())
    }

    /// Asks the next stage's proxy every heartbeat interval whether it is alive (between jobs:
    /// a worker busy with a long job asks when it is done), and answers 503 the forwarded jobs
    /// a dead or restarted one may have lost once their grace has passed (see
    /// `Pump::orphan_sent_before`, the same rule at the server for the first stage).
    fn watch_next_proxy(&mut self) -> Result<(), Error> {
        let Some(down) = &self.downstream else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= self.next_ask {
            let mut h = Header::new(Kind::Heartbeat);
            h.stage = self.config.stage;
            down.send(wire::message(&h, None))?;
            self.next_ask = now + self.config.heartbeat.interval;
            if let Some(alive_at) = self.next_proxy.silent(now) {
                self.orphan_forwarded(alive_at);
            }
        }
        while self.orphans.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, header)) = self.orphans.pop_front() else {
                break;
            };
            if !header.expired_at(wire::now_us()) {
                let why = b"the next stage's proxy went away with the request".to_vec();
                self.reply(&header, 503, why)?;
            }
        }
        Ok(())
    }

    /// The next stage's proxy died or restarted: the jobs forwarded while it was still heard
    /// may be lost with it. Each gets the grace to be answered, then a 503.
    fn orphan_forwarded(&mut self, alive_at: Instant) {
        let at = Instant::now() + self.next_proxy.grace();
        let (lost, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.forwarded)
            .into_iter()
            .partition(|(_, sent)| *sent <= alive_at);
        self.forwarded = kept;
        self.orphans.extend(lost.into_iter().map(|(h, _)| (at, h)));
    }

    fn malformed(&mut self, side: &'static str, why: impl std::fmt::Display) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        self.warnings.dropped(side, why, Instant::now());
    }

    /// Why frames of these sizes cannot be sent, if one is over the message limit. The peers of
    /// a deployment share the limit, and the receiving side would not just drop such a frame but
    /// close the connection it came on, so the request is better answered 500 here.
    fn over_limit(&self, mut sizes: impl Iterator<Item = usize>) -> Option<String> {
        let limit = self.ctx.max_message_bytes();
        let size = sizes.find(|&n| n > limit)?;
        self.stats.oversized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            size,
            limit,
            "the work function's output is over the message limit"
        );
        Some(format!(
            "the work function's output has a {size}-byte frame, over the {limit}-byte message \
             limit"
        ))
    }

    /// Sends a reply to the server named in `header`. A server not reachable now (still
    /// connecting, restarting, or gone) does not hold the worker up: the reply waits in
    /// `undelivered` and is tried again on every turn of the loop, for [`LOOPBACK_PATIENCE`].
    fn reply(&mut self, header: &Header, status: u16, body: Vec<u8>) -> Result<(), Error> {
        let (status, body) = match self.over_limit(std::iter::once(body.len())) {
            Some(reason) => (500, reason.into_bytes()),
            None => (status, body),
        };
        // `header` is the job's (or the Reject of a job this worker forwarded, which a proxy
        // makes from the job's): it carries the reply token the server checks.
        let mut h = header.with_kind(Kind::Reply);
        h.stage = self.config.stage;
        h.status = status;
        let head = h.encode();
        let to = wire::server_routing_id(header.server_id);
        if self.loopback.send([&to[..], &head[..], &body[..]])? == Sent::Yes {
            self.stats.replied.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.undelivered.len() >= MAX_UNDELIVERED {
            self.undelivered.pop_front();
            self.dropped_reply();
        }
        self.undelivered.push_back(Undelivered {
            to,
            head,
            body,
            since: Instant::now(),
        });
        Ok(())
    }

    /// Tries the waiting replies again; drops those whose patience ran out.
    fn retry_undelivered(&mut self) -> Result<(), Error> {
        let mut i = 0;
        while i < self.undelivered.len() {
            let r = &self.undelivered[i];
            if self.loopback.send([&r.to[..], &r.head[..], &r.body[..]])? == Sent::Yes {
                self.stats.replied.fetch_add(1, Ordering::Relaxed);
                self.undelivered.remove(i);
            } else if r.since.elapsed() >= LOOPBACK_PATIENCE {
                self.undelivered.remove(i);
                self.dropped_reply();
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Counts a reply dropped because its server stayed unreachable, and says so in the log, as
    /// often as the rate limit of dropped messages lets it (a flood of replies to a gone server
    /// is one line with a count).
    fn dropped_reply(&mut self) {
        self.stats.undeliverable.fetch_add(1, Ordering::Relaxed);
        let why = "reply dropped: its server's loopback stayed unreachable";
        self.warnings.dropped("loopback", why, Instant::now());
    }

    fn handle_rejects(&mut self) -> Result<(), Error> {
        let Some(down) = &self.downstream else {
            return Ok(());
        };
        let mut rejected = Vec::new();
        let mut heard = Vec::new();
        while let Some(frames) = down.try_recv()? {
            match wire::decode(frames) {
                Ok((h, mut payload)) if h.kind == Kind::Reject => {
                    let reason = payload.pop().unwrap_or_else(|| b"overloaded".to_vec());
                    rejected.push((h, reason));
                }
                Ok((h, _)) if h.kind == Kind::Heartbeat => heard.push(h.server_id),
                Ok((h, _)) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    let why = format_args!("unexpected {:?}", h.kind);
                    self.warnings.dropped("next stage", why, Instant::now());
                }
                Err(e) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.warnings.dropped("next stage", e, Instant::now());
                }
            }
        }
        for (h, reason) in rejected {
            let status = if h.status == 0 { 503 } else { h.status };
            self.reply(&h, status, reason)?;
        }
        for id in heard {
            if let Some(alive_at) = self.next_proxy.heard(id, Instant::now()) {
                self.orphan_forwarded(alive_at);
            }
        }
        Ok(())
    }
}
