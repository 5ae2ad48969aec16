//! The server core: the request table, ids, deadlines, interrupts and the loopback, independent of
//! the client protocol.
//!
//! The zmq sockets of the server live on one thread, the **pump**, which never blocks the async
//! runtime: client-facing tasks hand requests to it through a channel and ring a doorbell (a
//! socketpair that the pump's `zmq_poll` watches); answers come back by a oneshot per request.
//! The pump
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

use crate::shutdown::{Shutdown, POLL_INTERVAL};
use crate::transport::{self, Context, Frames, Kind as SocketKind, Sent, Socket, Watch};
use crate::wire::{self, Header, Kind};
use crate::Error;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
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

enum Command {
    Submit {
        header: Header,
        deadline: Option<Instant>,
        frames: Frames,
        tx: oneshot::Sender<Answer>,
    },
    Cancel(u64),
}

struct Shared {
    commands: mpsc::Sender<Command>,
    doorbell: UnixStream,
    rung: AtomicBool,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    loopback_endpoint: String,
    interrupt_endpoint: String,
}

impl Shared {
    fn send(&self, cmd: Command) -> bool {
        if self.commands.send(cmd).is_err() {
            return false;
        }
        // Ring only when the pump may be asleep; it clears `rung` before draining the channel.
        if !self.rung.swap(true, Ordering::AcqRel) {
            let _ = (&self.doorbell).write(&[1]);
        }
        true
    }
}

/// The server core. [`Server::start`] binds its sockets and starts the pump thread.
pub struct Server;

/// A handle on a running server core: submit requests, read counters, wait for the end.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    pump: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("server_id", &self.shared.config.server_id)
            .finish()
    }
}

impl Server {
    /// Binds the loopback and interrupt sockets, connects to the first proxy and starts the pump.
    /// The pump stops when `shutdown` stops, answering what is still open with 503.
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
        let (bell_tx, bell_rx) = UnixStream::pair().map_err(Error::Io)?;
        bell_tx.set_nonblocking(true).map_err(Error::Io)?;
        bell_rx.set_nonblocking(true).map_err(Error::Io)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            commands: tx,
            doorbell: bell_tx,
            rung: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            config,
            stats: Arc::default(),
            loopback_endpoint: loopback.last_endpoint()?,
            interrupt_endpoint: publisher.last_endpoint()?,
        });
        let pump = Pump {
            shared: shared.clone(),
            dealer,
            loopback,
            publisher,
            bell: bell_rx,
            commands: rx,
            table: HashMap::new(),
            timers: BinaryHeap::new(),
            shutdown,
        };
        let handle = std::thread::Builder::new()
            .name("server-pump".into())
            .spawn(move || {
                if let Err(e) = pump.run() {
                    tracing::error!(error = %e, "server pump failed");
                }
            })
            .map_err(Error::Io)?;
        Ok(ServerHandle {
            shared,
            pump: Arc::new(std::sync::Mutex::new(Some(handle))),
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
    /// `timeout` overrides the configured one; `Some(Duration::ZERO)` is answered 504 at once.
    pub fn submit(&self, frames: Frames, timeout: Option<Duration>) -> Pending {
        let shared = &self.shared;
        shared.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let ready = |status, reason: &str| Pending {
            state: PendingState::Ready(Some(Answer::Failed(Failure::new(status, reason)))),
            id,
            shared: shared.clone(),
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
        let cmd = Command::Submit {
            header,
            deadline: timeout.map(|t| now + t),
            frames,
            tx,
        };
        if !shared.send(cmd) {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return ready(503, "the server is shutting down");
        }
        Pending {
            state: PendingState::Waiting(rx),
            id,
            shared: shared.clone(),
        }
    }

    /// Waits for the pump thread to end (after the shutdown it was started with stops).
    pub fn join(&self) {
        let handle = self.pump.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = h.join();
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
}

impl Pending {
    /// The request's id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Future for Pending {
    type Output = Answer;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Answer> {
        let answer = match &mut self.state {
            PendingState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(a)) => a,
                Poll::Ready(Err(_)) => {
                    Answer::Failed(Failure::new(503, "the server is shutting down"))
                }
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
            self.shared.send(Command::Cancel(self.id));
        }
    }
}

struct Entry {
    tx: oneshot::Sender<Answer>,
    header: Header,
}

struct Pump {
    shared: Arc<Shared>,
    dealer: Socket,
    loopback: Socket,
    publisher: Socket,
    bell: UnixStream,
    commands: mpsc::Receiver<Command>,
    table: HashMap<u64, Entry>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    shutdown: Shutdown,
}

impl Pump {
    fn run(mut self) -> Result<(), Error> {
        loop {
            if self.shutdown.is_stopping() {
                break;
            }
            let now = Instant::now();
            let mut timeout = POLL_INTERVAL;
            if let Some(Reverse((at, _))) = self.timers.peek() {
                // Round up to whole ms so we never wake a hair early and spin.
                let until = at.saturating_duration_since(now);
                timeout = timeout.min(until + Duration::from_micros(999));
            }
            let ready = transport::poll(
                &[
                    Watch::Socket(&self.loopback),
                    Watch::Socket(&self.dealer),
                    Watch::Fd(self.bell.as_raw_fd()),
                ],
                timeout,
            )?;
            if ready[2] {
                let mut buf = [0u8; 64];
                while matches!((&self.bell).read(&mut buf), Ok(n) if n > 0) {}
            }
            self.shared.rung.store(false, Ordering::Release);
            self.drain_commands()?;
            if ready[0] {
                self.drain_loopback()?;
            }
            if ready[1] {
                self.drain_dealer()?;
            }
            self.expire()?;
        }
        // Answer everything still open, and tell workers to stop on it.
        for cmd in self.commands.try_iter() {
            if let Command::Submit { tx, .. } = cmd {
                let _ = tx.send(Answer::Failed(Failure::new(
                    503,
                    "the server is shutting down",
                )));
                self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let ids: Vec<u64> = self.table.keys().copied().collect();
        for id in ids {
            self.finish(
                id,
                Answer::Failed(Failure::new(503, "the server is shutting down")),
                true,
            )?;
        }
        Ok(())
    }

    fn drain_commands(&mut self) -> Result<(), Error> {
        while let Ok(cmd) = self.commands.try_recv() {
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
                        self.shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
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
                        self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                        self.finish(
                            id,
                            Answer::Failed(Failure::new(499, "client went away")),
                            true,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn drain_loopback(&mut self) -> Result<(), Error> {
        for _ in 0..4096 {
            let Some(mut frames) = self.loopback.try_recv()? else {
                break;
            };
            if frames.len() < 2 {
                self.malformed("loopback", "no routing envelope");
                continue;
            }
            let rest = frames.split_off(1);
            match wire::decode(rest) {
                Ok((h, mut payload)) if h.kind == Kind::Reply => {
                    if h.server_id != self.shared.config.server_id {
                        self.malformed("loopback", "reply for another server");
                        continue;
                    }
                    let body = payload.pop().unwrap_or_default();
                    let answer = if h.status == 0 {
                        self.shared.stats.replied.fetch_add(1, Ordering::Relaxed);
                        Answer::Reply(body)
                    } else {
                        Answer::Failed(Failure::new(
                            h.status,
                            String::from_utf8_lossy(&body).into_owned(),
                        ))
                    };
                    if !self.finish(h.request_id, answer, false)? {
                        self.shared.stats.late.fetch_add(1, Ordering::Relaxed);
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
                    self.shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    self.finish(
                        h.request_id,
                        Answer::Failed(Failure::new(503, reason)),
                        false,
                    )?;
                }
                Ok((h, _)) => self.malformed("proxy", &format!("unexpected {:?}", h.kind)),
                Err(e) => self.malformed("proxy", &e.to_string()),
            }
        }
        Ok(())
    }

    fn malformed(&self, side: &str, why: &str) {
        self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
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
                self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.finish(
                    id,
                    Answer::Failed(Failure::new(504, "the request's deadline passed")),
                    true,
                )?;
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
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
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
