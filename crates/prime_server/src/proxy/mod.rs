//! The load-balancing proxy in front of one stage's worker pool.
//!
//! **The balancing rule:** workers pull. A worker says [`Kind::Ready`] when it is idle; the proxy
//! keeps idle workers in a FIFO (the one idle longest is first) and hands a job only to an idle
//! worker, which then leaves the FIFO until it says `Ready` again. So a job never waits behind
//! another job on a busy worker. While no worker is idle, jobs wait in the proxy's own queue,
//! bounded by [`ProxyConfig::queue_limit`]; a job that finds the queue full is answered at once
//! with [`Kind::Reject`] to whoever sent it, which turns it into a 503 for the client.
//!
//! **Affinity:** an optional [`ChooseFn`] sees the heartbeat blobs of the idle workers (in FIFO
//! order) and the job's payload frames, and picks the worker; `None` or an index out of range
//! means the FIFO head.
//!
//! **Liveness:** idle workers send [`Kind::Heartbeat`] every heartbeat interval; one silent for
//! `liveness` intervals leaves the idle FIFO. A send to a worker that has gone away fails (the
//! downstream ROUTER is mandatory), so the job goes to the next idle worker instead of being lost.
//!
//! The rule lives in `balance.rs`, a state machine without sockets or clocks, tested on its own;
//! this module is the socket loop that feeds it what arrives and sends what it decides.
//!
//! Sockets: upstream ROUTER (bind; the server or the previous stage's workers connect DEALERs),
//! downstream ROUTER (bind; this stage's workers connect DEALERs).
//!
//! **Who comes and goes** is logged at info and counted in [`StageStats`]: a worker joins when
//! the proxy first hears it (`worker joined`, with its id and where its message came from: a tcp
//! peer's IP address, an ipc peer's process id) and leaves by Disconnect, silence or a send that
//! finds it gone (`worker left`, with the reason; a warning unless it left cleanly). The
//! upstream's connections (fronts, the previous stage's workers) come from libzmq's socket
//! monitor, which knows connections, not ids.
//!
//! **A stage without workers** says so: once the proxy has known no worker for a heartbeat
//! expiry (the time in which any running worker would have been heard), it warns
//! (`no workers`, with how long and how many jobs wait), again every [`NO_WORKERS_WARN_EVERY`]
//! while it lasts, and counts the jobs that arrive meanwhile
//! ([`StageStats`]' `received_without_workers`): they wait for a worker up to their deadline.

mod balance;

use crate::endpoint::Endpoint;
use crate::heartbeat::Heartbeat;
use crate::rate_limit::DropWarnings;
use crate::security::ProxyKeys;
use crate::shutdown::{OnDrain, Shutdown, POLL_INTERVAL};
use crate::stats::StageStats;
use crate::transport::{
    Context, Kind as SocketKind, Origin, PeerAddress, PeerEvent, PeerWatch, Sent, Socket, Waiter,
};
use crate::wire::{self, Header, Kind};
use crate::Error;
use balance::{Action, Balancer, Leave, Membership};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest routing id the proxy takes from a peer: zmq's own limit (libzmq refuses to set a
/// longer one), so only a peer that writes the wire by hand can exceed it. A worker's id is kept
/// for as long as the worker is known, and a job's sender's for as long as the job waits.
pub const MAX_ROUTING_ID: usize = 255;

/// The largest heartbeat blob the proxy keeps for a worker (the blob shown to the choose
/// function), 64 KiB: it is kept for as long as the worker is known, and copied into nothing
/// else.
pub const MAX_BLOB: usize = 64 * 1024;

/// Picks a worker for a job: `(idle workers' heartbeat blobs in FIFO order, job payload frames)
/// -> index into the blobs`.
pub type ChooseFn = Box<dyn FnMut(&[&[u8]], &[Vec<u8>]) -> Option<usize> + Send>;

/// The default byte bound of a proxy's queue: 256 MiB, a few times the default message limit
/// times the number of workers a stage usually has, far below what a busy queue of cheap jobs
/// holds (4,096 jobs of a few KiB).
pub const DEFAULT_QUEUE_LIMIT_BYTES: usize = 256 * 1024 * 1024;

/// How often a proxy without workers repeats its warning.
pub const NO_WORKERS_WARN_EVERY: Duration = Duration::from_secs(60);

/// How to build a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The stage's name, for logs (the proxy's tracing span carries it).
    pub stage: String,
    /// Where the server or the previous stage's workers send jobs (bound).
    pub upstream: Endpoint,
    /// Where this stage's workers connect (bound).
    pub downstream: Endpoint,
    /// The most jobs that wait for an idle worker; beyond it jobs are rejected (503).
    pub queue_limit: usize,
    /// The most bytes of payload the jobs waiting for an idle worker may hold together; a job
    /// that would take the queue beyond it is rejected (503) like one beyond `queue_limit`
    /// (an empty queue takes any job). Bounds the proxy's memory whatever the jobs' sizes.
    pub queue_limit_bytes: usize,
    /// Heartbeat timing; must match the workers'.
    pub heartbeat: Heartbeat,
    /// Run the proxy's thread as a batch thread (see
    /// [`prefer_batch_scheduling`](crate::transport::prefer_batch_scheduling)); on by default.
    pub batch_scheduling: bool,
    /// How many workers may be handed the same job: when a worker dies holding a job, the job
    /// goes to another until this many have had it, then its sender is answered 500.
    pub max_attempts: u8,
    /// With [`OnDrain::FinishAndExit`], return once the drain has started and no job is queued
    /// or held by a worker, instead of serving until the stop (proxy processes of a
    /// multi-process deployment).
    pub on_drain: OnDrain,
    /// CURVE keys: the upstream endpoint admits only the listed senders, the downstream one
    /// only the stage's workers. `None`: plain zmq (for one trusted host).
    pub security: Option<ProxyKeys>,
}

impl ProxyConfig {
    /// A config with the default queue limit (4096 jobs) and heartbeat, for a stage called
    /// `proxy` until [`ProxyConfig::stage`] says otherwise.
    pub fn new(upstream: Endpoint, downstream: Endpoint) -> Self {
        ProxyConfig {
            stage: "proxy".into(),
            upstream,
            downstream,
            queue_limit: 4096,
            queue_limit_bytes: DEFAULT_QUEUE_LIMIT_BYTES,
            heartbeat: Heartbeat::default(),
            batch_scheduling: true,
            on_drain: OnDrain::ServeUntilStop,
            max_attempts: 2,
            security: None,
        }
    }
}

/// One stage's load balancer. Build with [`Proxy::bind`], then [`Proxy::run`] on its own thread.
pub struct Proxy {
    config: ProxyConfig,
    /// Names this run of the proxy in the heartbeats it answers, so a server sees a restart.
    incarnation: u64,
    upstream: Socket,
    downstream: Socket,
    /// The downstream endpoint as bound, for the lines about workers.
    downstream_endpoint: Endpoint,
    stats: Arc<StageStats>,
    balancer: Balancer,
    /// Where each known worker's first message came from, for the line that says it left.
    peers: HashMap<Vec<u8>, PeerAddress>,
    warnings: DropWarnings,
    /// Since when the proxy has known no worker (`None` while it knows one).
    no_workers_since: Option<Instant>,
    /// When it last warned about having none.
    no_workers_warned: Option<Instant>,
    /// The senders that asked lately whether this proxy is alive (fronts, the previous stage's
    /// workers), and when: they are told at once when it leaves or loses its last worker.
    senders: HashMap<Vec<u8>, Instant>,
    /// It ends by itself once drained ([`OnDrain::FinishAndExit`]).
    leaving: bool,
    /// Its senders were told it drains.
    told_leaving: bool,
    /// It stopped serving.
    gone: bool,
    /// Whether it knew a worker when it last looked.
    had_workers: bool,
}

/// The most senders a proxy remembers to tell about its state (beyond, new ones learn it when
/// they next ask).
const MAX_SENDERS: usize = 4096;

impl Proxy {
    /// Binds both sockets. Fails with the endpoint's name if either cannot be bound.
    pub fn bind(ctx: &Context, config: ProxyConfig) -> Result<Proxy, Error> {
        let stats = Arc::<StageStats>::default();
        let upstream = ctx.socket(SocketKind::Router)?;
        upstream.set_router_mandatory(true)?;
        let keys = config.security.as_ref();
        let admit = keys.map(|k| k.upstream(&config.stage));
        let senders = watch_senders(&config.stage, stats.clone());
        upstream.bind_watching(&config.upstream, admit.as_ref(), Some(senders))?;
        // Workers are seen joining and leaving by the protocol, with their ids: their
        // connections (two per worker) would only say it again without them.
        let downstream = ctx.socket(SocketKind::Router)?;
        downstream.set_router_mandatory(true)?;
        let admit = keys.map(|k| k.downstream(&config.stage));
        downstream.bind_admitting(&config.downstream, admit.as_ref())?;
        let downstream_endpoint = downstream.last_endpoint()?;
        let balancer = Balancer::new(&config, stats.clone());
        Ok(Proxy {
            config,
            incarnation: crate::server::random_id(),
            upstream,
            downstream,
            downstream_endpoint,
            stats,
            balancer,
            peers: HashMap::new(),
            warnings: DropWarnings::new("proxy"),
            no_workers_since: Some(Instant::now()),
            no_workers_warned: None,
            senders: HashMap::new(),
            leaving: false,
            told_leaving: false,
            gone: false,
            had_workers: false,
        })
    }

    /// Sets the function that picks a worker for each job (affinity).
    pub fn with_choose(mut self, choose: ChooseFn) -> Self {
        self.balancer.set_choose(choose);
        self
    }

    /// The proxy's counters; clone the `Arc` before [`Proxy::run`].
    pub fn stats(&self) -> Arc<StageStats> {
        self.stats.clone()
    }

    /// The upstream endpoint as bound (with the real port for `tcp://…:*`).
    pub fn upstream_endpoint(&self) -> Result<Endpoint, Error> {
        Ok(self.upstream.last_endpoint()?)
    }

    /// The downstream endpoint as bound (with the real port for `tcp://…:*`).
    pub fn downstream_endpoint(&self) -> Result<Endpoint, Error> {
        Ok(self.downstream.last_endpoint()?)
    }

    /// Runs until `shutdown` stops. Jobs still queued then are rejected, so their senders answer.
    pub fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let span = tracing::info_span!(
            "proxy",
            stage = %self.config.stage,
            upstream = %self.config.upstream
        );
        let _entered = span.enter();
        self.serve(shutdown)
    }

    /// [`Proxy::run`] on a thread of its own called `name`; join it with
    /// [`component::join`](crate::component::join), which reports a panic.
    pub fn spawn(self, name: String, shutdown: Shutdown) -> Result<JoinHandle<()>, Error> {
        crate::component::spawn(name, move || self.run(shutdown))
    }

    fn serve(mut self, shutdown: Shutdown) -> Result<(), Error> {
        const UP: u64 = 0;
        const DOWN: u64 = 1;
        if self.config.batch_scheduling {
            crate::transport::prefer_batch_scheduling();
        }
        const WAKE: u64 = 2;
        let mut waiter = Waiter::new()?;
        waiter.watch(&self.upstream, UP)?;
        waiter.watch(&self.downstream, DOWN)?;
        if let Some(fd) = shutdown.wake_fd() {
            // Each phase of the shutdown wakes the loop at once.
            waiter.watch_fd(fd, WAKE)?;
        }
        self.leaving = self.config.on_drain == OnDrain::FinishAndExit;
        // Which sockets may hold messages; each is drained to empty before the next wait (see
        // `Waiter`). Both at first.
        let (mut up, mut down) = (true, true);
        let mut fired = Vec::new();
        let mut next_expiry = Instant::now() + self.config.heartbeat.interval;
        while !shutdown.is_stopping() {
            // Workers first: their Readys free capacity for the jobs that follow.
            if down {
                down = !self.drain_downstream()?;
            }
            if up {
                up = !self.drain_upstream()?;
            }
            self.dispatch()?;
            let now = Instant::now();
            if now >= next_expiry {
                let actions = self.balancer.tick(now);
                self.perform(actions)?;
                if self.balancer.has_events() {
                    self.report_members(None);
                }
                self.warnings.flush(now);
                self.watch_workers(now);
                next_expiry = Instant::now() + self.config.heartbeat.interval;
            }
            if up || down {
                // A batch limit was hit: go round again before sleeping.
                continue;
            }
            let has_workers = self.balancer.workers() > 0;
            if self.had_workers && !has_workers {
                // The last worker left: the senders that watch this proxy learn it now.
                self.tell_senders()?;
            }
            self.had_workers = has_workers;
            if self.config.on_drain == OnDrain::FinishAndExit
                && shutdown.is_draining()
                && self.balancer.is_drained()
            {
                tracing::info!("drained: no job queued or in a worker's hands");
                break;
            }
            if self.leaving && shutdown.is_draining() && !self.told_leaving {
                // Senders that watch this proxy (a draining front) learn at once.
                self.told_leaving = true;
                self.tell_senders()?;
            }
            let timeout = POLL_INTERVAL.min(next_expiry.saturating_duration_since(Instant::now()));
            waiter.wait(timeout, &mut fired)?;
            for t in &fired {
                match *t {
                    UP => up = true,
                    DOWN => down = true,
                    _ => {}
                }
            }
            if fired.is_empty() {
                // A quiet interval: look at both sockets, as a safety net.
                (up, down) = (true, true);
            }
        }
        let actions = self.balancer.stop();
        self.perform(actions)?;
        self.gone = true;
        self.tell_senders()
    }

    /// This proxy's Heartbeat to a sender: its incarnation, and flags saying whether it has
    /// workers and whether it is leaving.
    fn heartbeat_to_sender(&self) -> Header {
        let mut alive = Header::new(Kind::Heartbeat);
        alive.server_id = self.incarnation;
        if self.balancer.workers() == 0 || self.gone {
            alive.flags |= wire::flags::NO_WORKERS;
        }
        if self.gone || self.told_leaving {
            alive.flags |= wire::flags::LEAVING;
        }
        alive
    }

    /// Sends the proxy's state to every sender heard asking lately (see
    /// [`Proxy::heartbeat_to_sender`]): they need not wait for their next question to learn it
    /// is leaving, or has no worker left.
    fn tell_senders(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let expiry = self.config.heartbeat.expiry();
        self.senders
            .retain(|_, heard| now.saturating_duration_since(*heard) <= expiry);
        let head = self.heartbeat_to_sender().encode();
        for sender in self.senders.keys() {
            self.upstream.send([&sender[..], &head[..]])?;
        }
        Ok(())
    }

    /// Warns when the stage has had no worker for a heartbeat expiry, and again every
    /// [`NO_WORKERS_WARN_EVERY`] while it lasts (called once per heartbeat interval).
    fn watch_workers(&mut self, now: Instant) {
        if self.balancer.workers() > 0 {
            if let (Some(since), Some(_)) = (self.no_workers_since, self.no_workers_warned) {
                let seconds = now.saturating_duration_since(since).as_secs_f64();
                let seconds = format_args!("{seconds:.1}");
                tracing::info!(endpoint = %self.downstream_endpoint, %seconds, "workers again");
            }
            (self.no_workers_since, self.no_workers_warned) = (None, None);
            return;
        }
        let since = *self.no_workers_since.get_or_insert(now);
        let without = now.saturating_duration_since(since);
        let warned_lately = self
            .no_workers_warned
            .is_some_and(|t| now.saturating_duration_since(t) < NO_WORKERS_WARN_EVERY);
        if without < self.config.heartbeat.expiry() || warned_lately {
            return;
        }
        self.no_workers_warned = Some(now);
        tracing::warn!(
            endpoint = %self.downstream_endpoint,
            seconds = %format_args!("{:.1}", without.as_secs_f64()),
            queued = self.stats.queued.load(Ordering::Relaxed),
            received_without_workers = self.stats.received_without_workers.load(Ordering::Relaxed),
            "no workers: jobs wait here for one, up to their deadline (is a worker process of \
             this stage running and connected to this endpoint?)"
        );
    }

    /// Reads what workers sent, at most a batch; returns whether the socket is now empty.
    fn drain_downstream(&mut self) -> Result<bool, Error> {
        // Bounded batches keep one busy side from starving the other.
        for _ in 0..1024 {
            let Some((frames, mut origin)) = self.downstream.try_recv_from()? else {
                return Ok(true);
            };
            self.worker_message(frames)?;
            if self.balancer.has_events() {
                self.report_members(Some(&mut origin));
            }
        }
        Ok(false)
    }

    /// Feeds the balancer one message from a worker.
    fn worker_message(&mut self, frames: crate::transport::Frames) -> Result<(), Error> {
        match wire::decode_routed(frames) {
            Ok((worker, _, _)) if worker.len() > MAX_ROUTING_ID => {
                self.malformed("downstream", "routing id over 255 bytes")
            }
            Ok((worker, h, mut payload)) => match h.kind {
                Kind::Ready => {
                    let blob = payload.pop().unwrap_or_default();
                    if blob.len() > MAX_BLOB {
                        self.malformed("downstream", "Ready blob over 64 KiB");
                        return Ok(());
                    }
                    self.balancer.ready(worker, blob, Instant::now());
                }
                // A worker's heartbeat thread speaks for it, named in the payload.
                Kind::Heartbeat => {
                    let who = payload.pop().unwrap_or(worker);
                    if who.len() > MAX_ROUTING_ID {
                        self.malformed("downstream", "worker id over 255 bytes");
                        return Ok(());
                    }
                    let busy = h.flags & wire::flags::BUSY != 0;
                    self.balancer.heartbeat(who, busy, Instant::now());
                }
                Kind::Disconnect => {
                    let last = (h.server_id, h.request_id);
                    let action = self.balancer.disconnect(&worker, last, Instant::now());
                    self.perform([action])?;
                }
                other => self.malformed("downstream", &format!("unexpected {other:?}")),
            },
            Err(e) => self.malformed("downstream", &e.to_string()),
        }
        Ok(())
    }

    /// Logs the workers that joined and left. `origin` is that of the message being handled,
    /// the only one that can make a worker join: the address a joining worker is logged with,
    /// and again when it leaves. Asked only then, so the many messages of workers already known
    /// cost no look-up.
    fn report_members(&mut self, mut origin: Option<&mut Origin>) {
        for event in self.balancer.take_events() {
            match event {
                Membership::Joined { worker } => {
                    let peer = origin.as_mut().map_or(PeerAddress::Unknown, |o| o.peer());
                    tracing::info!(
                        worker = %String::from_utf8_lossy(&worker),
                        %peer,
                        endpoint = %self.downstream_endpoint,
                        workers = self.balancer.workers(),
                        "worker joined"
                    );
                    self.peers.insert(worker, peer);
                }
                Membership::Left { worker, why } => {
                    let peer = self.peers.remove(&worker).unwrap_or(PeerAddress::Unknown);
                    let worker = String::from_utf8_lossy(&worker);
                    let (workers, reason) = (self.balancer.workers(), why.as_str());
                    let endpoint = &self.downstream_endpoint;
                    // A worker that did not say goodbye died, or its host or network did.
                    if why == Leave::Disconnect {
                        tracing::info!(%worker, %peer, %endpoint, workers, reason, "worker left");
                    } else {
                        tracing::warn!(%worker, %peer, %endpoint, workers, reason, "worker left");
                    }
                }
            }
        }
    }

    /// Reads jobs, at most a batch; returns whether the socket is now empty.
    fn drain_upstream(&mut self) -> Result<bool, Error> {
        for _ in 0..1024 {
            let Some(frames) = self.upstream.try_recv()? else {
                return Ok(true);
            };
            match wire::decode_routed(frames) {
                Ok((sender, _, _)) if sender.len() > MAX_ROUTING_ID => {
                    self.malformed("upstream", "routing id over 255 bytes")
                }
                Ok((sender, header, payload)) if header.kind == Kind::Job => {
                    if self.balancer.workers() == 0 {
                        self.stats
                            .received_without_workers
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let action = self.balancer.job(sender, header, payload);
                    self.perform(action)?;
                    // Dispatch as we go so the queue only holds what no worker can take.
                    self.dispatch()?;
                }
                // A server asking whether its first stage is alive: yes, and which run of it.
                Ok((sender, h, _)) if h.kind == Kind::Heartbeat => {
                    let alive = self.heartbeat_to_sender();
                    self.upstream.send([&sender[..], &alive.encode()[..]])?;
                    if self.senders.len() < MAX_SENDERS || self.senders.contains_key(&sender) {
                        self.senders.insert(sender, Instant::now());
                    }
                }
                Ok((_, h, _)) => self.malformed("upstream", &format!("unexpected {:?}", h.kind)),
                Err(e) => self.malformed("upstream", &e.to_string()),
            }
        }
        Ok(false)
    }

    fn malformed(&mut self, side: &'static str, why: &str) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        self.warnings.dropped(side, why, Instant::now());
    }

    /// Hands queued jobs to idle workers, as the balancer picks them.
    fn dispatch(&mut self) -> Result<(), Error> {
        let downstream = &self.downstream;
        self.balancer.dispatch(Instant::now(), |h| {
            let head = h.header.encode();
            let frames = [h.worker, &head[..]]
                .into_iter()
                .chain(h.payload.iter().map(Vec::as_slice));
            downstream.send(frames)
        })?;
        // A hand-off that found its worker gone.
        if self.balancer.has_events() {
            self.report_members(None);
        }
        Ok(())
    }

    /// Sends what the balancer decided; a heartbeat that finds no worker goes back to it.
    fn perform(&mut self, actions: impl IntoIterator<Item = Action>) -> Result<(), Error> {
        for action in actions {
            match action {
                Action::Answer {
                    sender,
                    header,
                    status,
                    reason,
                } => self.answer(&sender, &header, status, &reason)?,
                Action::Heartbeat { worker } => {
                    let hb = Header::new(Kind::Heartbeat).encode();
                    if self.downstream.send([worker.as_slice(), &hb[..]])? == Sent::Unreachable {
                        let action = self.balancer.unreachable(&worker);
                        self.perform(action)?;
                    }
                }
                // A worker that left may be gone already: nothing to do if it is.
                Action::Acknowledge { worker } => {
                    let ack = Header::new(Kind::Disconnect).encode();
                    self.downstream.send([worker.as_slice(), &ack[..]])?;
                }
            }
        }
        Ok(())
    }

    /// Answers a job to its sender without a worker (a Reject with this status).
    fn answer(
        &self,
        sender: &[u8],
        header: &Header,
        status: u16,
        reason: &str,
    ) -> Result<(), Error> {
        let mut h = header.with_kind(Kind::Reject);
        h.status = status;
        let head = h.encode();
        if self.upstream.send([sender, &head[..], reason.as_bytes()])? == Sent::Unreachable {
            tracing::warn!(
                request_id = header.request_id,
                "could not return a rejected job to its sender"
            );
        }
        Ok(())
    }
}

/// Counts and logs the connections of senders (fronts, the previous stage's workers) to the
/// upstream socket of the proxy of `stage`, as libzmq's monitor reports them (on its thread,
/// outside the proxy's span: the stage is a field).
fn watch_senders(stage: &str, stats: Arc<StageStats>) -> PeerWatch {
    let stage = stage.to_string();
    Arc::new(move |event| match event {
        PeerEvent::Connected { endpoint, peer } => {
            stats.upstream_connected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                %stage,
                %endpoint,
                %peer,
                "sender connected to the proxy's upstream (a front or a worker of the previous \
                 stage: a connection, libzmq does not say whose)"
            );
        }
        PeerEvent::Disconnected {
            endpoint,
            peer,
            lasted,
        } => {
            stats.upstream_disconnected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                %stage,
                %endpoint,
                %peer,
                lasted_ms = lasted.as_millis() as u64,
                "sender disconnected from the proxy's upstream"
            );
        }
    })
}
