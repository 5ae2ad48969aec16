//! The server core: request ids, deadlines, the in-flight limit, interrupts and the loopback,
//! independent of the client protocol.
//!
//! [`Server`] is the handle client-facing tasks hold: [`Server::submit`] gives a request an id
//! and a deadline and returns a [`Pending`] future of its one [`Answer`]. Where the request goes
//! depends on how the stages are joined (`Dispatch`):
//! - over zmq, to the **pump** (`server/pump.rs`), a task that owns the server's sockets: a DEALER to
//!   the first stage's proxy, the loopback ROUTER (bound; its routing id names this server, so
//!   several servers can share one set of workers) and the interrupt PUB (bound);
//! - in memory, straight into the first stage's queue, carrying its answer channel (see
//!   `memory.rs`).
//!
//! Either way every request submitted gets exactly one answer: the first of reply, timeout,
//! reject or shutdown wins and later ones are dropped (and counted).

mod in_flight;
mod pending;
pub(crate) mod pump;

pub use pending::Pending;

use crate::answer::Answer;
use crate::answer::Failure;
use crate::endpoint::Endpoint;
use crate::heartbeat::Heartbeat;
use crate::interrupt::SharedCancels;
use crate::memory::{MemJob, StageQueue};
use crate::security::FrontKeys;
use crate::shutdown::Shutdown;
pub use crate::stats::ServerStats;
use crate::transport::{Context, Frames, Kind as SocketKind, PeerEvent, PeerWatch, SocketEvents};
use crate::wire::{self, ClientProtocol, Header, Kind, TraceId};
use crate::Error;
use in_flight::InFlight;
use pump::{Command, Pump};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// How to build a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The first stage's proxy, its upstream endpoint (connected).
    pub proxy: Endpoint,
    /// Where workers send replies (bound).
    pub loopback: Endpoint,
    /// Where workers listen for interrupts (bound).
    pub interrupt: Endpoint,
    /// This server's id; workers address replies with it. Must be unique among the servers that
    /// share workers.
    pub server_id: u64,
    /// The deadline given to requests that bring none of their own; `None` = no deadline.
    pub timeout: Option<Duration>,
    /// The most requests in flight at once; more are answered 503 at once.
    pub max_in_flight: usize,
    /// How often the server says it is alive on its interrupt channel; workers drop the jobs of
    /// a server silent for its expiry. Must match the workers'.
    pub heartbeat: Heartbeat,
    /// CURVE keys: the loopback and interrupt endpoints admit only the listed workers, and the
    /// server proves its key to the first proxy. `None`: plain zmq (for one trusted host).
    pub security: Option<FrontKeys>,
}

impl ServerConfig {
    /// A config with a fresh random server id, a 60 s timeout and 10,000 requests in flight.
    pub fn new(proxy: Endpoint, loopback: Endpoint, interrupt: Endpoint) -> Self {
        let limits = Limits::default();
        ServerConfig {
            proxy,
            loopback,
            interrupt,
            server_id: limits.server_id,
            timeout: limits.timeout,
            max_in_flight: limits.max_in_flight,
            heartbeat: Heartbeat::default(),
            security: None,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            server_id: self.server_id,
            timeout: self.timeout,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// What a server core enforces whichever way its stages are joined.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// This server's id (see [`ServerConfig::server_id`]).
    pub(crate) server_id: u64,
    /// The default deadline.
    pub(crate) timeout: Option<Duration>,
    /// The most requests in flight.
    pub(crate) max_in_flight: usize,
}

impl Default for Limits {
    /// A fresh random server id, a 60 s timeout and 10,000 requests in flight.
    fn default() -> Self {
        Limits {
            server_id: random_id(),
            timeout: Some(Duration::from_secs(60)),
            max_in_flight: 10_000,
        }
    }
}

/// Counts and logs the connections of workers to the front's `socket` (`loopback` or
/// `interrupt`), as libzmq's monitor reports them: connections with their addresses, not worker
/// ids, which libzmq does not give (the proxies log workers by id). Called on the monitor's
/// thread, outside the server's span.
fn watch_workers(socket: &'static str, stats: Arc<ServerStats>) -> PeerWatch {
    Arc::new(move |event| match event {
        PeerEvent::Connected { endpoint, peer } => {
            stats.peers_connected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                socket,
                %endpoint,
                %peer,
                "peer connected (a worker's connection: libzmq does not say which worker)"
            );
        }
        PeerEvent::Disconnected {
            endpoint,
            peer,
            lasted,
        } => {
            stats.peers_disconnected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                socket,
                %endpoint,
                %peer,
                lasted_ms = lasted.as_millis() as u64,
                "peer disconnected (a worker's connection closed)"
            );
        }
    })
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

/// Where submitted requests go.
pub(crate) enum Dispatch {
    /// To the pump, which owns the zmq sockets.
    Pump {
        commands: mpsc::UnboundedSender<Command>,
        /// The loopback endpoint as bound (with the real port for `tcp://…:*`).
        loopback: Endpoint,
        /// The interrupt endpoint as bound.
        interrupt: Endpoint,
    },
    /// Straight into the first in-memory stage's queue, carrying the answer channel; cancels
    /// and deadlines are the waiting side's (see [`Pending`]).
    Memory {
        first: Arc<StageQueue>,
        cancels: Arc<SharedCancels>,
    },
}

pub(crate) struct Shared {
    pub(crate) dispatch: Dispatch,
    next_id: AtomicU64,
    /// One counter for both sides: `submit` enters, whoever answers leaves.
    pub(crate) in_flight: Arc<InFlight>,
    /// Set by the pump while the first stage serves nobody (never for in-memory stages).
    first_stage_down: Arc<std::sync::atomic::AtomicBool>,
    /// The shutdown the server was started with: draining, it refuses new requests while the
    /// first stage serves nobody.
    shutdown: Shutdown,
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<ServerStats>,
    /// What every trace id this server makes begins with ([`TraceId::server_prefix`]).
    trace_prefix: TraceId,
}

/// The server core, running: submit requests, read counters, wait for the end. Cheap to clone;
/// every clone is the same server.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
    /// The pump's own thread, when [`Server::start`] was called outside a tokio runtime.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Closed (its sender dropped) when the pump has ended, or the in-memory stages are closed.
    done: watch::Receiver<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("server_id", &self.shared.limits.server_id)
            .finish()
    }
}

impl Server {
    /// Binds the loopback and interrupt sockets, connects to the first proxy and starts the
    /// pump: as a task on the current tokio runtime, so that a request on a current-thread
    /// runtime crosses no thread until it leaves for the first proxy, or, called outside a
    /// runtime, on a thread of its own. The pump stops when `shutdown` stops, answering what is
    /// still open with 503.
    pub fn start(ctx: &Context, config: ServerConfig, shutdown: Shutdown) -> Result<Server, Error> {
        let dealer = ctx.socket(SocketKind::Dealer)?;
        // Room for every request in flight, and for the few questions to the proxy that may
        // wait beside them while it is not connected (see `Pump::watch_proxy`): a queued
        // question must never take a request's place.
        let hwm = i32::try_from(config.max_in_flight.saturating_add(pump::QUESTIONS_QUEUED))
            .unwrap_or(i32::MAX);
        dealer.set_high_water_marks(hwm, 0)?;
        let keys = config.security.as_ref();
        dealer.connect_presenting(&config.proxy, keys.map(FrontKeys::to_proxy).as_ref())?;
        let stats = Arc::new(ServerStats::default());
        let loopback = ctx.socket(SocketKind::Router)?;
        loopback.set_routing_id(&wire::server_routing_id(config.server_id))?;
        loopback.bind_watching(
            &config.loopback,
            keys.map(FrontKeys::loopback).as_ref(),
            Some(watch_workers("loopback", stats.clone())),
        )?;
        let publisher = ctx.socket(SocketKind::Pub)?;
        publisher.bind_watching(
            &config.interrupt,
            keys.map(FrontKeys::interrupt).as_ref(),
            Some(watch_workers("interrupt", stats.clone())),
        )?;
        let loopback_endpoint = loopback.last_endpoint()?;
        let interrupt_endpoint = publisher.last_endpoint()?;
        let in_flight = Arc::new(InFlight::default());
        let first_stage_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done_tx, done) = watch::channel(());
        let (commands, rx) = mpsc::unbounded_channel();
        // Outside a runtime the pump gets one of its own, on its own thread; its descriptors
        // must be registered with the reactor that will drive them.
        let own_runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => None,
            Err(_) => Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Io {
                        op: "build the pump's runtime",
                        cause: e,
                    })?,
            ),
        };
        let pump = {
            let _entered = own_runtime.as_ref().map(|rt| rt.enter());
            Pump::new(pump::Parts {
                dealer: SocketEvents::new(dealer)?,
                loopback: SocketEvents::new(loopback)?,
                publisher,
                stats: stats.clone(),
                in_flight: in_flight.clone(),
                first_stage_down: first_stage_down.clone(),
                server_id: config.server_id,
                heartbeat: config.heartbeat,
                _done: done_tx,
                proxy_credentials: keys.map(|k| (config.proxy.clone(), k.to_proxy())),
            })?
        };
        let span = tracing::info_span!("pump", server_id = config.server_id);
        let pump_shutdown = shutdown.clone();
        let task = async move {
            if let Err(e) = pump.run(rx, pump_shutdown).await {
                tracing::error!(error = %e, "server pump failed");
            }
        }
        .instrument(span);
        let thread = match own_runtime {
            None => {
                tokio::spawn(task);
                None
            }
            Some(rt) => Some(crate::component::spawn("server-pump".into(), move || {
                rt.block_on(task);
                Ok(())
            })?),
        };
        Ok(Server {
            shared: Arc::new(Shared {
                dispatch: Dispatch::Pump {
                    commands,
                    loopback: loopback_endpoint,
                    interrupt: interrupt_endpoint,
                },
                next_id: AtomicU64::new(1),
                trace_prefix: TraceId::server_prefix(config.server_id),
                in_flight,
                first_stage_down,
                shutdown,
                limits: config.limits(),
                stats,
            }),
            thread: Arc::new(Mutex::new(thread)),
            done,
        })
    }

    /// The server core of in-memory stages (see [`memory`](crate::memory)): requests go
    /// straight into `first`, cancels and deadlines are written to `cancels`. When `shutdown`
    /// stops, every queue in `queues` is closed, which answers what it holds 503.
    pub(crate) fn start_in_memory(
        limits: Limits,
        first: Arc<StageQueue>,
        queues: Vec<Arc<StageQueue>>,
        cancels: Arc<SharedCancels>,
        shutdown: &Shutdown,
    ) -> Server {
        let (done_tx, done) = watch::channel(());
        shutdown.on_stop(move || {
            for q in &queues {
                q.close();
            }
            drop(done_tx);
        });
        Server {
            shared: Arc::new(Shared {
                dispatch: Dispatch::Memory { first, cancels },
                next_id: AtomicU64::new(1),
                trace_prefix: TraceId::server_prefix(limits.server_id),
                in_flight: Arc::default(),
                first_stage_down: Arc::default(),
                shutdown: shutdown.clone(),
                limits,
                stats: Arc::new(ServerStats::default()),
            }),
            thread: Arc::new(Mutex::new(None)),
            done,
        }
    }

    /// This server's id (the one workers address replies with).
    pub fn server_id(&self) -> u64 {
        self.shared.limits.server_id
    }

    /// The loopback endpoint as bound (with the real port for `tcp://…:*`); `None` for
    /// in-memory stages, which have none.
    pub fn loopback_endpoint(&self) -> Option<Endpoint> {
        match &self.shared.dispatch {
            Dispatch::Pump { loopback, .. } => Some(loopback.clone()),
            Dispatch::Memory { .. } => None,
        }
    }

    /// The interrupt endpoint as bound (with the real port for `tcp://…:*`); `None` for
    /// in-memory stages.
    pub fn interrupt_endpoint(&self) -> Option<Endpoint> {
        match &self.shared.dispatch {
            Dispatch::Pump { interrupt, .. } => Some(interrupt.clone()),
            Dispatch::Memory { .. } => None,
        }
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
        self.shared.in_flight.get()
    }

    /// Completes once no request is in flight (at once if none is).
    pub async fn idle(&self) {
        self.shared.in_flight.idle().await
    }

    /// The trace id this server makes for request `id` when its client gave none (see
    /// [`TraceId::from_ids`]): for the requests a front answers itself, with an id from
    /// [`Server::reserve_id`].
    pub fn trace_id_for(&self, id: u64) -> TraceId {
        self.shared.trace_prefix.with_request_id(id)
    }

    /// Sends a request into the pipeline. The returned future resolves to its one answer;
    /// dropping it before then cancels the request (workers holding it are interrupted).
    /// `timeout` overrides the configured one. The job's client protocol is
    /// [`ClientProtocol::Direct`] (the Reply's body comes back as it is), and it carries a trace
    /// id made from the server's and the request's ids ([`Server::trace_id_for`]).
    pub fn submit(&self, frames: Frames, timeout: Option<Duration>) -> Pending {
        self.submit_from(ClientProtocol::Direct, frames, timeout, TraceId::NONE)
    }

    /// [`Server::submit`] for a request that came in by a client `protocol` (a front's), with
    /// the trace id the client knows it by (an HTTP `X-Request-Id`); [`TraceId::NONE`] makes one
    /// ([`Server::trace_id_for`]). The job's header carries both to every worker (see
    /// [`Job::protocol`](crate::Job::protocol) and [`Job::trace_id`](crate::Job::trace_id)),
    /// so the stage that answers knows the form of the answer; the returned [`Pending`] tells
    /// the trace id.
    pub fn submit_from(
        &self,
        protocol: ClientProtocol,
        frames: Frames,
        timeout: Option<Duration>,
        trace_id: TraceId,
    ) -> Pending {
        let shared = &self.shared;
        shared.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let trace_id = if trace_id.is_none() {
            shared.trace_prefix.with_request_id(id)
        } else {
            trace_id
        };
        let overloaded = |answer: Answer| {
            shared.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            Pending::answered(id, trace_id, shared.clone(), answer)
        };
        if !shared.in_flight.try_enter(shared.limits.max_in_flight) {
            shared
                .stats
                .in_flight_refused
                .fetch_add(1, Ordering::Relaxed);
            return overloaded(Answer::Failed(Failure::new(
                503,
                "too many requests in flight",
            )));
        }
        let refuse = |answer: Answer| {
            shared.in_flight.leave();
            overloaded(answer)
        };
        if shared.shutdown.is_draining() && shared.first_stage_down.load(Ordering::Acquire) {
            // Draining, and the pipeline is gone (its proxy left or went silent, or has no
            // worker left): no answer would come before the stop.
            shared
                .stats
                .draining_refused
                .fetch_add(1, Ordering::Relaxed);
            return refuse(Answer::Failed(Failure::new(
                503,
                "the server is shutting down: the first stage has no proxy or worker left",
            )));
        }
        let timeout = timeout.or(shared.limits.timeout);
        let deadline = timeout.map(|t| Instant::now() + t);
        let arrival_us = wire::now_us();
        let mut header = Header::new(Kind::Job);
        header.request_id = id;
        header.server_id = shared.limits.server_id;
        header.arrival_us = arrival_us;
        header.deadline_us = timeout.map_or(0, |t| {
            arrival_us.saturating_add(t.as_micros() as u64).max(1)
        });
        header.trace_id = trace_id;
        header.protocol = protocol;
        let (tx, rx) = oneshot::channel();
        match &shared.dispatch {
            Dispatch::Memory { first, .. } => {
                let job = MemJob {
                    header,
                    frames,
                    reply: tx,
                };
                match first.push(job) {
                    Ok(()) => {
                        Pending::waiting(id, trace_id, shared.clone(), rx, deadline, arrival_us)
                    }
                    Err((_, refused)) => {
                        if refused == crate::memory::Refused::Full {
                            shared.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                        refuse(refused.answer())
                    }
                }
            }
            Dispatch::Pump { commands, .. } => {
                let cmd = Command::Submit {
                    header,
                    deadline,
                    frames,
                    tx,
                };
                if commands.send(cmd).is_err() {
                    return refuse(crate::answer::shutting_down());
                }
                Pending::waiting(id, trace_id, shared.clone(), rx, None, 0)
            }
        }
    }

    /// The answer to a request refused because this front is shutting down: a 503, counted
    /// (`draining_refused`, and `overloaded` as every 503 the front makes).
    pub fn refuse_draining(&self) -> Failure {
        let stats = &self.shared.stats;
        stats.draining_refused.fetch_add(1, Ordering::Relaxed);
        stats.overloaded.fetch_add(1, Ordering::Relaxed);
        Failure::new(503, crate::answer::SHUTTING_DOWN)
    }

    /// Completes when the pump has ended (after the shutdown it was started with stops, every
    /// request it held answered) or, for in-memory stages, once their queues are closed.
    pub async fn closed(&self) {
        let mut done = self.done.clone();
        // Nothing is ever sent: the channel only closes.
        while done.changed().await.is_ok() {}
    }

    /// Waits for the pump's own thread, if [`Server::start`] gave it one. A pump that runs as
    /// a task belongs to its runtime: await [`Server::closed`] inside it, or drop the runtime
    /// (the open requests are then answered 503 by their [`Pending`]).
    pub fn join(&self) {
        let thread = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(t) = thread {
            crate::component::join(t);
        }
    }
}
