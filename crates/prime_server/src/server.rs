//! The server core: the request table, ids, deadlines, interrupts and the loopback, independent of
//! the client protocol.
//!
//! The zmq sockets of the server are owned by one **pump**, which never blocks the async runtime;
//! client-facing tasks hand requests to it over a [`Bridge`] and get answers back by a oneshot per
//! request. The pump
//! - gives each request an id and a deadline and sends it to the first stage's proxy (DEALER);
//! - takes replies from the loopback (a ROUTER, bound, whose routing id names this server, so
//!   several servers can share one set of workers);
//! - answers 504 when a deadline passes and 503 when a proxy rejects a job;
//! - publishes an interrupt (PUB, bound) when a request times out or its client goes away, so
//!   workers stop working on it;
//! - answers every request still open with 503 when the process stops.
//!
//! So every request submitted gets exactly one [`Answer`]: the first of reply, timeout, reject or
//! shutdown wins and later ones are dropped (and counted).

use crate::memory::{MemJob, StageQueue};
use crate::shutdown::{Shutdown, POLL_INTERVAL};
use crate::transport::{
    self, Context, Frames, Kind as SocketKind, Sent, Socket, SocketEvents, Watch,
};
use crate::wire::{self, Header, Kind};
use crate::worker::SharedCancels;
use crate::Error;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How to build a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The first stage's proxy, its upstream endpoint (connected).
    pub proxy: String,
    /// Where workers send replies (bound).
    pub loopback: String,
    /// Where workers listen for interrupts (bound).
    pub interrupt: String,
    /// This server's id; workers address replies with it. Must be unique among the servers that
    /// share workers.
    pub server_id: u64,
    /// The deadline given to requests that bring none of their own; `None` = no deadline.
    pub timeout: Option<Duration>,
    /// The most requests in flight at once; more are answered 503 at once.
    pub max_in_flight: usize,
    /// How requests cross from client-facing tasks to the pump.
    pub bridge: Bridge,
}

/// How requests cross from the client-facing tasks to the pump that owns the zmq sockets.
/// `BENCHMARKS.md` compares them; the default is the fastest measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bridge {
    /// The pump is a task on the tokio runtime that calls [`Server::start`] (or, outside a
    /// runtime, on a runtime thread of its own); it waits on the sockets' zmq event descriptors
    /// in the reactor, so a request on a current-thread runtime crosses no thread at all until it
    /// leaves for the first proxy.
    #[default]
    Task,
    /// The pump is a thread of its own: requests cross by a channel, and a socketpair that its
    /// `zmq_poll` watches wakes it.
    Channel,
    /// The pump is a thread of its own: requests cross by a zmq inproc PUSH/PULL pair.
    Inproc,
}

impl ServerConfig {
    /// A config with a fresh random server id, a 60 s timeout and 10,000 requests in flight.
    pub fn new(
        proxy: impl Into<String>,
        loopback: impl Into<String>,
        interrupt: impl Into<String>,
    ) -> Self {
        ServerConfig {
            proxy: proxy.into(),
            loopback: loopback.into(),
            interrupt: interrupt.into(),
            server_id: random_id(),
            timeout: Some(Duration::from_secs(60)),
            max_in_flight: 10_000,
            bridge: Bridge::default(),
        }
    }
}

/// A server id that is unlikely to collide: time, pid and a counter, mixed.
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(wire::now_us());
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.finish().max(1)
}

/// A failure answered in place of a reply. `status` follows HTTP's codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 500 worker failed, 503 overloaded or shutting down, 504 deadline passed, or what the work
    /// function chose.
    pub status: u16,
    /// A short text for the client.
    pub reason: String,
}

impl Failure {
    /// A failure with the given status and reason.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Failure {
            status,
            reason: reason.into(),
        }
    }
}

/// The one answer every request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A worker's reply: the protocol-specific response bytes.
    Reply(Vec<u8>),
    /// Something went wrong; see [`Failure::status`].
    Failed(Failure),
}

impl Answer {
    /// What a worker sent: status 0 with a reply body, or a failure status with its reason.
    pub(crate) fn from_worker(status: u16, body: Vec<u8>) -> Answer {
        if status == 0 {
            Answer::Reply(body)
        } else {
            Answer::Failed(Failure::new(
                status,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    }
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

pub(crate) enum Command {
    Submit {
        header: Header,
        deadline: Option<Instant>,
        frames: Frames,
        tx: oneshot::Sender<Answer>,
    },
    Cancel(u64),
}

/// The submitting side of the bridge.
enum Sender {
    Channel {
        commands: mpsc::Sender<Command>,
        doorbell: UnixStream,
        rung: Arc<AtomicBool>,
    },
    Inproc {
        push: Mutex<Socket>,
        registry: Arc<Mutex<Registry>>,
    },
    Task {
        commands: tokio::sync::mpsc::UnboundedSender<Command>,
    },
    /// No pump: requests go straight into the first in-memory stage's queue, carrying their
    /// answer channel; cancels and deadlines are the waiting side's (see [`Pending`]).
    Memory {
        first: Arc<StageQueue>,
        cancels: Arc<SharedCancels>,
    },
}

/// Inproc bridge: what cannot cross a zmq socket (the oneshot, the monotonic deadline) waits
/// here for the pump, keyed by request id.
type Registry = HashMap<u64, (oneshot::Sender<Answer>, Option<Instant>)>;

impl Sender {
    fn send(&self, cmd: Command) -> bool {
        match self {
            Sender::Channel {
                commands,
                doorbell,
                rung,
            } => {
                if commands.send(cmd).is_err() {
                    return false;
                }
                // Ring only when the pump may be asleep; it clears `rung` before draining.
                if !rung.swap(true, Ordering::AcqRel) {
                    let _ = (&*doorbell).write(&[1]);
                }
                true
            }
            Sender::Inproc { push, registry } => {
                let Ok(push) = push.lock() else { return false };
                match cmd {
                    Command::Submit {
                        header,
                        deadline,
                        frames,
                        tx,
                    } => {
                        let id = header.request_id;
                        if let Ok(mut r) = registry.lock() {
                            r.insert(id, (tx, deadline));
                        }
                        let head = header.encode();
                        let msg = [&b"S"[..], &head[..]]
                            .into_iter()
                            .chain(frames.iter().map(Vec::as_slice));
                        let ok = matches!(push.send(msg), Ok(Sent::Yes));
                        if !ok {
                            if let Ok(mut r) = registry.lock() {
                                r.remove(&id);
                            }
                        }
                        ok
                    }
                    Command::Cancel(id) => {
                        matches!(push.send([&b"C"[..], &id.to_le_bytes()[..]]), Ok(Sent::Yes))
                    }
                }
            }
            Sender::Task { commands } => commands.send(cmd).is_ok(),
            // Never used: `submit` and `Pending` handle in-memory requests themselves.
            Sender::Memory { .. } => false,
        }
    }
}

struct Shared {
    sender: Sender,
    next_id: AtomicU64,
    in_flight: Arc<AtomicUsize>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    loopback_endpoint: String,
    interrupt_endpoint: String,
}

/// The server core. [`Server::start`] binds its sockets and starts the pump.
pub struct Server;

/// A handle on a running server core: submit requests, read counters, wait for the end.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("server_id", &self.shared.config.server_id)
            .finish()
    }
}

impl Server {
    /// Binds the loopback and interrupt sockets, connects to the first proxy and starts the pump
    /// (see [`Bridge`]). The pump stops when `shutdown` stops, answering what is still open with
    /// 503.
    pub fn start(
        ctx: &Context,
        config: ServerConfig,
        shutdown: Shutdown,
    ) -> Result<ServerHandle, Error> {
        let dealer = ctx.socket(SocketKind::Dealer)?;
        let hwm = i32::try_from(config.max_in_flight).unwrap_or(i32::MAX);
        dealer.set_high_water_marks(hwm, 0)?;
        dealer.connect(&config.proxy)?;
        let loopback = ctx.socket(SocketKind::Router)?;
        loopback.set_routing_id(&wire::server_routing_id(config.server_id))?;
        loopback.bind(&config.loopback)?;
        let publisher = ctx.socket(SocketKind::Pub)?;
        publisher.bind(&config.interrupt)?;
        let stats = Arc::new(ServerStats::default());
        let loopback_endpoint = loopback.last_endpoint()?;
        let interrupt_endpoint = publisher.last_endpoint()?;
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let core = Core {
            dealer,
            loopback,
            publisher,
            table: HashMap::new(),
            timers: BinaryHeap::new(),
            stats: stats.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            server_id: config.server_id,
            done: done_tx,
        };
        let in_flight = core.in_flight.clone();
        let (sender, thread) = match config.bridge {
            Bridge::Channel => {
                let (bell_tx, bell_rx) = UnixStream::pair().map_err(Error::Io)?;
                bell_tx.set_nonblocking(true).map_err(Error::Io)?;
                bell_rx.set_nonblocking(true).map_err(Error::Io)?;
                let (tx, rx) = mpsc::channel();
                let rung = Arc::new(AtomicBool::new(false));
                let inbox = Inbox::Channel {
                    commands: rx,
                    bell: bell_rx,
                    rung: rung.clone(),
                };
                let thread = spawn_pump(core, inbox, shutdown)?;
                let sender = Sender::Channel {
                    commands: tx,
                    doorbell: bell_tx,
                    rung,
                };
                (sender, Some(thread))
            }
            Bridge::Inproc => {
                let endpoint = format!("inproc://prime-server-bridge-{:016x}", config.server_id);
                let pull = ctx.socket(SocketKind::Pull)?;
                pull.bind(&endpoint)?;
                let push = ctx.socket(SocketKind::Push)?;
                push.set_high_water_marks(hwm, 0)?;
                push.connect(&endpoint)?;
                let registry = Arc::new(Mutex::new(HashMap::new()));
                let inbox = Inbox::Inproc {
                    pull,
                    registry: registry.clone(),
                };
                let thread = spawn_pump(core, inbox, shutdown)?;
                let sender = Sender::Inproc {
                    push: Mutex::new(push),
                    registry,
                };
                (sender, Some(thread))
            }
            Bridge::Task => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let task = async move {
                    if let Err(e) = core.run_task(rx, shutdown).await {
                        tracing::error!(error = %e, "server pump failed");
                    }
                };
                let thread = match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        handle.spawn(task);
                        None
                    }
                    Err(_) => {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(Error::Io)?;
                        Some(
                            std::thread::Builder::new()
                                .name("server-pump".into())
                                .spawn(move || rt.block_on(task))
                                .map_err(Error::Io)?,
                        )
                    }
                };
                (Sender::Task { commands: tx }, thread)
            }
        };
        let shared = Arc::new(Shared {
            sender,
            next_id: AtomicU64::new(1),
            // One counter serves both sides: the pump decrements what submit increments.
            in_flight,
            config,
            stats,
            loopback_endpoint,
            interrupt_endpoint,
        });
        Ok(ServerHandle {
            shared,
            thread: Arc::new(Mutex::new(thread)),
            done,
        })
    }
}

impl Server {
    /// The server core of an in-memory pipeline (see `memory`): requests go straight into
    /// `first`, cancels and deadlines are written to `cancels`. When `shutdown` stops, every
    /// queue in `queues` is closed, which answers what it holds 503.
    pub(crate) fn start_in_memory(
        config: ServerConfig,
        first: Arc<StageQueue>,
        queues: Vec<Arc<StageQueue>>,
        cancels: Arc<SharedCancels>,
        shutdown: Shutdown,
        name: &str,
    ) -> Result<ServerHandle, Error> {
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("server-close".into())
            .spawn(move || {
                shutdown.wait_stopped();
                for q in &queues {
                    q.close();
                }
                let _ = done_tx.send(true);
            })
            .map_err(Error::Io)?;
        let shared = Arc::new(Shared {
            sender: Sender::Memory { first, cancels },
            next_id: AtomicU64::new(1),
            in_flight: Arc::new(AtomicUsize::new(0)),
            config,
            stats: Arc::new(ServerStats::default()),
            loopback_endpoint: format!("memory://{name}-loopback"),
            interrupt_endpoint: format!("memory://{name}-interrupt"),
        });
        Ok(ServerHandle {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
            done,
        })
    }
}

impl ServerHandle {
    /// This server's id (the one workers address replies with).
    pub fn server_id(&self) -> u64 {
        self.shared.config.server_id
    }

    /// The loopback endpoint as bound (with the real port for `tcp://…:*`).
    pub fn loopback_endpoint(&self) -> String {
        self.shared.loopback_endpoint.clone()
    }

    /// The interrupt endpoint as bound (with the real port for `tcp://…:*`).
    pub fn interrupt_endpoint(&self) -> String {
        self.shared.interrupt_endpoint.clone()
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Takes a request id for a request the front answers itself (a health check), so ids in
    /// logs stay unique.
    pub fn reserve_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Sends a request into the pipeline. The returned future resolves to its one answer;
    /// dropping it before then cancels the request (workers holding it are interrupted).
    /// `timeout` overrides the configured one.
    pub fn submit(&self, frames: Frames, timeout: Option<Duration>) -> Pending {
        let shared = &self.shared;
        shared.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let ready = |status, reason: &str| Pending {
            state: PendingState::Ready(Some(Answer::Failed(Failure::new(status, reason)))),
            id,
            shared: shared.clone(),
            deadline: None,
        };
        if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= shared.config.max_in_flight {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return ready(503, "too many requests in flight");
        }
        let timeout = timeout.or(shared.config.timeout);
        let now = Instant::now();
        let arrival_us = wire::now_us();
        let mut header = Header::new(Kind::Job);
        header.request_id = id;
        header.server_id = shared.config.server_id;
        header.arrival_us = arrival_us;
        header.deadline_us = timeout.map_or(0, |t| {
            arrival_us.saturating_add(t.as_micros() as u64).max(1)
        });
        let (tx, rx) = oneshot::channel();
        if let Sender::Memory { first, .. } = &shared.sender {
            if let Err((_, refused)) = first.push(MemJob {
                header,
                frames,
                reply: tx,
            }) {
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                return Pending {
                    state: PendingState::Ready(Some(refused.answer())),
                    id,
                    shared: shared.clone(),
                    deadline: None,
                };
            }
            return Pending {
                state: PendingState::Waiting(rx),
                id,
                shared: shared.clone(),
                deadline: timeout.map(|t| Deadline::At(now + t)),
            };
        }
        let cmd = Command::Submit {
            header,
            deadline: timeout.map(|t| now + t),
            frames,
            tx,
        };
        if !shared.sender.send(cmd) {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return ready(503, "the server is shutting down");
        }
        Pending {
            state: PendingState::Waiting(rx),
            id,
            shared: shared.clone(),
            deadline: None,
        }
    }

    /// Completes when the pump has ended (after the shutdown it was started with stops) and
    /// every request it held was answered.
    pub async fn closed(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Waits for the pump to end. Call it from outside the runtime that runs the pump (use
    /// [`ServerHandle::closed`] inside it); it gives up after a few seconds if that runtime is no
    /// longer driven, in which case dropping the runtime ends the pump.
    pub fn join(&self) {
        let thread = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(t) = thread {
            let _ = t.join();
            return;
        }
        let until = Instant::now() + Duration::from_secs(3);
        while !*self.done.borrow() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

enum PendingState {
    Waiting(oneshot::Receiver<Answer>),
    Ready(Option<Answer>),
    Done,
}

/// The answer to a submitted request, to come. Dropping it cancels the request.
pub struct Pending {
    state: PendingState,
    id: u64,
    shared: Arc<Shared>,
    /// In-memory pipelines only (the pump keeps the deadlines otherwise).
    deadline: Option<Deadline>,
}

/// A deadline kept by the waiting side; the timer is made on the first poll, inside the runtime
/// (a request may be submitted outside one).
enum Deadline {
    At(Instant),
    Timer(Pin<Box<tokio::time::Sleep>>),
}

impl Pending {
    /// The request's id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Pending {
    /// In-memory pipelines: the request's deadline, if it has passed (then it is answered 504
    /// here and its workers are told to stop).
    fn expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let timer = match self.deadline.take() {
            None => return false,
            Some(Deadline::At(at)) => Box::pin(tokio::time::sleep_until(at.into())),
            Some(Deadline::Timer(t)) => t,
        };
        let mut timer = timer;
        if timer.as_mut().poll(cx).is_pending() {
            self.deadline = Some(Deadline::Timer(timer));
            return false;
        }
        self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        self.end_in_memory();
        true
    }

    /// In-memory pipelines: the request is over for this side (answered, timed out or
    /// cancelled); with a cancel set, workers still holding it stop.
    fn end_in_memory(&self) {
        if let Sender::Memory { cancels, .. } = &self.shared.sender {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            cancels.insert((self.shared.config.server_id, self.id));
        }
    }
}

impl Future for Pending {
    type Output = Answer;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Answer> {
        let memory = matches!(self.shared.sender, Sender::Memory { .. });
        let answer = match &mut self.state {
            PendingState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(result) => {
                    let answer = result.unwrap_or_else(|_| shutting_down());
                    if memory {
                        // No pump counts it: this side does.
                        if matches!(answer, Answer::Reply(_)) {
                            self.shared.stats.replied.fetch_add(1, Ordering::Relaxed);
                        }
                        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                    answer
                }
                Poll::Pending if memory && self.expired(cx) => deadline_passed(),
                Poll::Pending => return Poll::Pending,
            },
            PendingState::Ready(a) => a
                .take()
                .unwrap_or_else(|| Answer::Failed(Failure::new(500, "answer already taken"))),
            PendingState::Done => Answer::Failed(Failure::new(500, "answer already taken")),
        };
        self.state = PendingState::Done;
        Poll::Ready(answer)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let PendingState::Waiting(_) = self.state {
            if let Sender::Memory { .. } = self.shared.sender {
                self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                self.end_in_memory();
            } else {
                self.shared.sender.send(Command::Cancel(self.id));
            }
        }
    }
}

struct Entry {
    tx: oneshot::Sender<Answer>,
    header: Header,
}

/// The receiving side of a thread bridge.
enum Inbox {
    Channel {
        commands: mpsc::Receiver<Command>,
        bell: UnixStream,
        rung: Arc<AtomicBool>,
    },
    Inproc {
        pull: Socket,
        registry: Arc<Mutex<Registry>>,
    },
}

fn spawn_pump(core: Core, inbox: Inbox, shutdown: Shutdown) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("server-pump".into())
        .spawn(move || {
            if let Err(e) = core.run_thread(inbox, shutdown) {
                tracing::error!(error = %e, "server pump failed");
            }
        })
        .map_err(Error::Io)
}

/// The pump's state and work, whichever bridge drives it.
struct Core {
    dealer: Socket,
    loopback: Socket,
    publisher: Socket,
    table: HashMap<u64, Entry>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    stats: Arc<ServerStats>,
    in_flight: Arc<AtomicUsize>,
    server_id: u64,
    done: tokio::sync::watch::Sender<bool>,
}

impl Core {
    /// The thread driver (channel and inproc bridges): `zmq_poll` over the loopback, the proxy
    /// and the inbox, with the next deadline as timeout.
    fn run_thread(mut self, inbox: Inbox, shutdown: Shutdown) -> Result<(), Error> {
        let result = (|| {
            while !shutdown.is_stopping() {
                let timeout = self.poll_timeout();
                let inbox_watch = match &inbox {
                    Inbox::Channel { bell, .. } => Watch::Fd(bell.as_raw_fd()),
                    Inbox::Inproc { pull, .. } => Watch::Socket(pull),
                };
                let ready = transport::poll(
                    &[
                        Watch::Socket(&self.loopback),
                        Watch::Socket(&self.dealer),
                        inbox_watch,
                    ],
                    timeout,
                )?;
                match &inbox {
                    Inbox::Channel {
                        commands,
                        bell,
                        rung,
                    } => {
                        if ready[2] {
                            let mut buf = [0u8; 64];
                            while matches!((&*bell).read(&mut buf), Ok(n) if n > 0) {}
                        }
                        rung.store(false, Ordering::Release);
                        while let Ok(cmd) = commands.try_recv() {
                            self.command(cmd)?;
                        }
                    }
                    Inbox::Inproc { pull, registry } => {
                        if ready[2] {
                            while let Some(msg) = pull.try_recv()? {
                                self.inproc_command(msg, registry)?;
                            }
                        }
                    }
                }
                if ready[0] {
                    self.drain_loopback()?;
                }
                if ready[1] {
                    self.drain_dealer()?;
                }
                self.expire()?;
            }
            Ok(())
        })();
        // Answer everything still open, whatever ended the loop.
        match inbox {
            Inbox::Channel { commands, .. } => {
                for cmd in commands.try_iter() {
                    self.refuse(cmd);
                }
            }
            Inbox::Inproc { registry, .. } => {
                if let Ok(mut r) = registry.lock() {
                    for (_, (tx, _)) in r.drain() {
                        let _ = tx.send(shutting_down());
                        self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
        self.close();
        result
    }

    /// The task driver: waits on the sockets' zmq event descriptors in tokio's reactor.
    async fn run_task(
        mut self,
        mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
        shutdown: Shutdown,
    ) -> Result<(), Error> {
        let result = async {
            // SAFETY: both live in this block, which ends before `self` (owning the sockets) is
            // dropped.
            let loopback_fd = unsafe { SocketEvents::new(&self.loopback)? };
            let dealer_fd = unsafe { SocketEvents::new(&self.dealer)? };
            // zmq's descriptors signal edges of its command mailbox: a socket is drained to
            // EAGAIN (which re-arms its descriptor) when its descriptor fires, and on every
            // poll interval as a safety net.
            let (mut check_loopback, mut check_dealer) = (true, true);
            loop {
                if check_loopback {
                    self.drain_loopback()?;
                    check_loopback = false;
                }
                if check_dealer {
                    self.drain_dealer()?;
                    check_dealer = false;
                }
                self.expire()?;
                let next = self.timers.peek().map(|Reverse((at, _))| *at);
                let wake = match next {
                    Some(at) => at.min(Instant::now() + POLL_INTERVAL),
                    None => Instant::now() + POLL_INTERVAL,
                };
                tokio::select! {
                    biased;
                    _ = shutdown.stopped() => break,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => {
                            self.command(cmd)?;
                            while let Ok(cmd) = commands.try_recv() {
                                self.command(cmd)?;
                            }
                        }
                        None => break,
                    },
                    r = loopback_fd.wait() => {
                        r?;
                        check_loopback = true;
                    }
                    r = dealer_fd.wait() => {
                        r?;
                        check_dealer = true;
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        check_loopback = true;
                        check_dealer = true;
                    }
                }
            }
            Ok(())
        }
        .await;
        commands.close();
        while let Ok(cmd) = commands.try_recv() {
            self.refuse(cmd);
        }
        self.close();
        result
    }

    fn poll_timeout(&self) -> Duration {
        let mut timeout = POLL_INTERVAL;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            // Round up to whole ms so we never wake a hair early and spin.
            let until = at.saturating_duration_since(Instant::now());
            timeout = timeout.min(until + Duration::from_micros(999));
        }
        timeout
    }

    fn refuse(&mut self, cmd: Command) {
        if let Command::Submit { tx, .. } = cmd {
            let _ = tx.send(shutting_down());
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Answers every open request 503 and tells workers to stop on them.
    fn close(&mut self) {
        let ids: Vec<u64> = self.table.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.finish(id, shutting_down(), true) {
                tracing::warn!(error = %e, "could not publish an interrupt while stopping");
            }
        }
        let _ = self.done.send(true);
    }

    fn inproc_command(&mut self, mut msg: Frames, registry: &Mutex<Registry>) -> Result<(), Error> {
        let tag = msg.first().map(|f| f.as_slice() == b"S");
        match tag {
            Some(true) if msg.len() >= 2 => {
                let payload = msg.split_off(2);
                let header = match Header::decode(&msg[1]) {
                    Ok(h) => h,
                    Err(e) => {
                        self.malformed("bridge", &e.to_string());
                        return Ok(());
                    }
                };
                let entry = registry
                    .lock()
                    .ok()
                    .and_then(|mut r| r.remove(&header.request_id));
                if let Some((tx, deadline)) = entry {
                    self.command(Command::Submit {
                        header,
                        deadline,
                        frames: payload,
                        tx,
                    })?;
                }
            }
            Some(false) if msg.len() == 2 && msg[1].len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&msg[1]);
                self.command(Command::Cancel(u64::from_le_bytes(b)))?;
            }
            _ => self.malformed("bridge", "bad bridge message"),
        }
        Ok(())
    }

    fn command(&mut self, cmd: Command) -> Result<(), Error> {
        match cmd {
            Command::Submit {
                header,
                deadline,
                frames,
                tx,
            } => {
                let id = header.request_id;
                let head = header.encode();
                let sent = self
                    .dealer
                    .send(std::iter::once(&head[..]).chain(frames.iter().map(Vec::as_slice)))?;
                self.table.insert(id, Entry { tx, header });
                if sent == Sent::Unreachable {
                    self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    self.finish(
                        id,
                        Answer::Failed(Failure::new(503, "the first stage is not reachable")),
                        false,
                    )?;
                } else if let Some(at) = deadline {
                    self.timers.push(Reverse((at, id)));
                }
            }
            Command::Cancel(id) => {
                if self.table.contains_key(&id) {
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    self.finish(
                        id,
                        Answer::Failed(Failure::new(499, "client went away")),
                        true,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn drain_loopback(&mut self) -> Result<(), Error> {
        while let Some(mut frames) = self.loopback.try_recv()? {
            if frames.len() < 2 {
                self.malformed("loopback", "no routing envelope");
                continue;
            }
            let rest = frames.split_off(1);
            match wire::decode(rest) {
                Ok((h, mut payload)) if h.kind == Kind::Reply => {
                    if h.server_id != self.server_id {
                        self.malformed("loopback", "reply for another server");
                        continue;
                    }
                    let body = payload.pop().unwrap_or_default();
                    let answer = Answer::from_worker(h.status, body);
                    let ok = h.status == 0;
                    if self.finish(h.request_id, answer, false)? {
                        if ok {
                            self.stats.replied.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        self.stats.late.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok((h, _)) => self.malformed("loopback", &format!("unexpected {:?}", h.kind)),
                Err(e) => self.malformed("loopback", &e.to_string()),
            }
        }
        Ok(())
    }

    fn drain_dealer(&mut self) -> Result<(), Error> {
        while let Some(frames) = self.dealer.try_recv()? {
            match wire::decode(frames) {
                Ok((h, mut payload)) if h.kind == Kind::Reject => {
                    let reason = payload
                        .pop()
                        .map(|r| String::from_utf8_lossy(&r).into_owned())
                        .unwrap_or_else(|| "overloaded".into());
                    let status = if h.status == 0 { 503 } else { h.status };
                    if self.finish(
                        h.request_id,
                        Answer::Failed(Failure::new(status, reason)),
                        false,
                    )? {
                        self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok((h, _)) => self.malformed("proxy", &format!("unexpected {:?}", h.kind)),
                Err(e) => self.malformed("proxy", &e.to_string()),
            }
        }
        Ok(())
    }

    fn malformed(&self, side: &str, why: &str) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(side, why, "server dropped a malformed message");
    }

    fn expire(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.table.contains_key(&id) {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.finish(id, deadline_passed(), true)?;
            }
        }
        Ok(())
    }

    /// Answers request `id` if it is still open; with `interrupt`, tells workers to stop on it.
    /// Returns whether it was open.
    fn finish(&mut self, id: u64, answer: Answer, interrupt: bool) -> Result<bool, Error> {
        let Some(entry) = self.table.remove(&id) else {
            return Ok(false);
        };
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let _ = entry.tx.send(answer);
        if interrupt {
            let h = entry.header.with_kind(Kind::Interrupt);
            self.publisher.send([&h.encode()[..]])?;
        }
        // Keep the timer heap from holding answered requests for the whole timeout under load.
        if self.timers.len() > 2 * self.table.len() + 1024 {
            let table = &self.table;
            self.timers
                .retain(|Reverse((_, id))| table.contains_key(id));
        }
        Ok(true)
    }
}

/// The answer to a request whose deadline passed.
pub(crate) fn deadline_passed() -> Answer {
    Answer::Failed(Failure::new(504, "the request's deadline passed"))
}

pub(crate) fn shutting_down() -> Answer {
    Answer::Failed(Failure::new(503, "the server is shutting down"))
}
