//! The pump: the one owner of the server core's zmq sockets, a task on the front's tokio
//! runtime that never blocks it.
//!
//! It takes [`Command`]s from the submitting side, sends jobs to the first stage's proxy
//! (DEALER), takes replies from the loopback (ROUTER, bound, whose routing id names this server)
//! and Rejects from the proxy, keeps the table of open requests and a timer heap of their
//! deadlines, and publishes an Interrupt (PUB, bound) for a request whose deadline passed or
//! whose client went away. Each open request is answered exactly once, by whichever of reply,
//! Reject, deadline or shutdown comes first; later replies are counted `late` and dropped.
//!
//! Each job leaves with a reply token drawn here (see [`ReplyToken`]); a reply is taken only if
//! it carries its request's token, so a peer of the loopback that was never handed the job
//! cannot answer it (counted `forged`). Interrupts, which every subscriber reads, carry none.

use super::in_flight::InFlight;
use crate::answer::{deadline_passed, shutting_down, Answer, Failure};
use crate::endpoint::Endpoint;
use crate::heartbeat::Heartbeat;
use crate::proxy_watch::ProxyWatch;
use crate::rate_limit::DropWarnings;
use crate::shutdown::{Shutdown, POLL_INTERVAL};
use crate::stats::ServerStats;
use crate::transport::Credentials;
use crate::transport::{Frames, Sent, Socket, SocketEvents};
use crate::wire::{self, Header, Kind, ReplyToken, TraceId};
use crate::Error;
use rand::rngs::{StdRng, SysRng};
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// Room the server's socket to the first proxy keeps beyond its requests for questions to the
/// proxy that wait there while it is not connected (one per heartbeat expiry at most).
pub(crate) const QUESTIONS_QUEUED: usize = 8;

/// What the submitting side asks of the pump.
pub(crate) enum Command {
    /// Send a new request to the first stage.
    Submit {
        header: Header,
        deadline: Option<Instant>,
        frames: Frames,
        tx: oneshot::Sender<Answer>,
    },
    /// The client went away: answer the request (nobody listens) and interrupt its workers.
    Cancel(u64),
}

/// Whether answering a request also tells the workers that may hold it to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workers {
    /// Publish an Interrupt: the request died while a worker may be working on it.
    Interrupt,
    /// Nothing to tell: the answer came from the pipeline itself.
    LeaveAlone,
}

struct Entry {
    tx: oneshot::Sender<Answer>,
    /// The job's header as sent, its reply token included.
    header: Header,
    /// When it went to the first stage's proxy.
    sent: Instant,
    /// Set when the first stage's proxy this request was sent to died or restarted: its timer
    /// was brought forward, and when it fires the answer says why.
    orphaned: bool,
}

/// The pump's state. Dropping it (its task ends, or its runtime is dropped) drops every open
/// request's oneshot, which its [`Pending`](crate::server::Pending) reads as "shutting down",
/// and closes `_done`, which wakes [`Server::closed`](crate::server::Server::closed).
pub(crate) struct Pump {
    parts: Parts,
    /// The first stage's proxy, watched.
    proxy: ProxyWatch,
    /// When the first proxy was last heard, or its connection last made anew.
    proxy_contact: Instant,
    /// When the question to the first proxy still unanswered was asked.
    asked: Option<Instant>,
    table: HashMap<u64, Entry>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    warnings: DropWarnings,
    /// Draws the reply tokens: a CSPRNG (ChaCha12) seeded from the operating system, so no peer
    /// can predict one from those it has seen.
    tokens: StdRng,
}

/// What a pump is made of: its sockets, what it shares with the submitting side, and its
/// settings.
pub(crate) struct Parts {
    /// To the first stage's proxy.
    pub(crate) dealer: SocketEvents,
    /// Replies from workers.
    pub(crate) loopback: SocketEvents,
    /// Interrupts and heartbeats to workers.
    pub(crate) publisher: Socket,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) in_flight: Arc<InFlight>,
    /// Set while the first stage is known to serve nobody: its proxy went silent, or said it
    /// has no worker or is leaving. A draining server refuses new requests then (see
    /// [`Server::submit`](crate::server::Server::submit)).
    pub(crate) first_stage_down: Arc<AtomicBool>,
    pub(crate) server_id: u64,
    /// How often to say on the interrupt channel that this server is alive, and to ask the
    /// first stage's proxy whether it is.
    pub(crate) heartbeat: Heartbeat,
    /// Closed when the pump is dropped.
    pub(crate) _done: watch::Sender<()>,
    /// With CURVE: the first proxy's endpoint and what the dealer presents to it, to connect
    /// anew when it stays silent (libzmq never retries a refused handshake by itself).
    pub(crate) proxy_credentials: Option<(Endpoint, Credentials)>,
}

impl std::ops::Deref for Pump {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.parts
    }
}

impl Pump {
    /// Fails only if the operating system gives no randomness to seed the reply tokens with.
    pub(crate) fn new(parts: Parts) -> Result<Pump, Error> {
        let tokens = StdRng::try_from_rng(&mut SysRng).map_err(|e| Error::Io {
            op: "seed the reply tokens from the operating system",
            cause: std::io::Error::other(e),
        })?;
        Ok(Pump {
            proxy: ProxyWatch::new(parts.heartbeat.expiry()),
            proxy_contact: Instant::now(),
            asked: None,
            parts,
            table: HashMap::new(),
            timers: BinaryHeap::new(),
            warnings: DropWarnings::new("server"),
            tokens,
        })
    }

    /// A fresh reply token, never [`ReplyToken::NONE`] (which headers anyone may see carry).
    fn draw_token(&mut self) -> ReplyToken {
        loop {
            let mut token = ReplyToken::NONE;
            self.tokens.fill_bytes(&mut token.0);
            if !token.is_none() {
                return token;
            }
        }
    }

    /// Runs until `shutdown` stops or every submitting handle is gone, then answers what is
    /// still open 503 and interrupts its workers.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: Shutdown,
    ) -> Result<(), Error> {
        let result = self.serve(&mut commands, &shutdown).await;
        commands.close();
        while let Ok(cmd) = commands.try_recv() {
            self.refuse(cmd);
        }
        self.close();
        result
    }

    async fn serve(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        shutdown: &Shutdown,
    ) -> Result<(), Error> {
        // zmq's descriptors signal edges of its command mailbox: a socket is drained to EAGAIN
        // (which re-arms its descriptor) when its descriptor fires, and on every poll interval
        // as a safety net.
        let (mut check_loopback, mut check_dealer) = (true, true);
        // At once, then every interval: the first proxy learns of this server from its first
        // question (and can tell it when it leaves), and a draining server needs to know early
        // whether its first stage still serves.
        let mut next_heartbeat = Instant::now();
        let mut asked_on_drain = false;
        loop {
            if !asked_on_drain && shutdown.is_draining() {
                // Draining: whether the first stage still serves decides whether new requests
                // are taken, so ask now rather than at the next heartbeat.
                asked_on_drain = true;
                next_heartbeat = Instant::now();
            }
            if Instant::now() >= next_heartbeat {
                self.say_alive()?;
                self.watch_proxy()?;
                next_heartbeat = Instant::now() + self.heartbeat.interval;
            }
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
            }
            .min(next_heartbeat);
            tokio::select! {
                biased;
                _ = shutdown.stopped() => return Ok(()),
                _ = shutdown.draining(), if !asked_on_drain => {}
                cmd = commands.recv() => match cmd {
                    Some(cmd) => {
                        self.command(cmd)?;
                        while let Ok(cmd) = commands.try_recv() {
                            self.command(cmd)?;
                        }
                    }
                    None => return Ok(()),
                },
                r = self.loopback.wait() => {
                    r?;
                    check_loopback = true;
                }
                r = self.dealer.wait() => {
                    r?;
                    check_dealer = true;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    check_loopback = true;
                    check_dealer = true;
                }
            }
        }
    }

    /// A Heartbeat on the interrupt channel: workers that hear this server and then stop
    /// hearing it (it died, or restarted under a new id) drop its jobs.
    fn say_alive(&self) -> Result<(), Error> {
        let mut h = Header::new(Kind::Heartbeat);
        h.server_id = self.server_id;
        self.publisher.send([&h.encode()[..]])?;
        Ok(())
    }

    /// Asks the first stage's proxy whether it is alive (it answers with a Heartbeat naming its
    /// incarnation), and acts on a proxy that went silent: see [`Pump::orphan_sent_before`].
    fn watch_proxy(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        // A question waits in the socket while no proxy is connected, beside the requests:
        // ask again only once the last one has gone unanswered for the expiry, so that at most
        // `QUESTIONS_QUEUED` wait within a minute of silence (the socket has room for them).
        let waiting = self
            .asked
            .is_some_and(|t| now.saturating_duration_since(t) < self.heartbeat.expiry());
        if !waiting {
            let mut h = Header::new(Kind::Heartbeat);
            h.server_id = self.server_id;
            self.dealer.socket().send([&h.encode()[..]])?;
            self.asked = Some(now);
        }
        if let Some(alive_at) = self.proxy.silent(now) {
            self.first_stage_down.store(true, Ordering::Release);
            self.orphan_sent_before(alive_at);
        }
        if now.saturating_duration_since(self.proxy_contact) > self.heartbeat.expiry() {
            if let Some((endpoint, credentials)) = &self.parts.proxy_credentials {
                // Silent since start or for a while: perhaps our key was refused (not
                // admitted yet, or the proxy restarted with another list). Try again.
                tracing::warn!(%endpoint, "the first proxy is silent: connecting to it anew");
                self.parts
                    .dealer
                    .socket()
                    .reconnect(endpoint, Some(credentials))?;
            }
            self.proxy_contact = now;
        }
        Ok(())
    }

    /// A Heartbeat from the first stage's proxy: alive, which incarnation, and (its flags)
    /// whether it has workers and stays.
    fn proxy_heard(&mut self, id: u64, flags: u8) {
        let serves_nobody = flags & (wire::flags::NO_WORKERS | wire::flags::LEAVING) != 0;
        self.first_stage_down
            .store(serves_nobody, Ordering::Release);
        self.asked = None;
        self.proxy_contact = Instant::now();
        if let Some(alive_at) = self.proxy.heard(id, Instant::now()) {
            self.orphan_sent_before(alive_at);
        }
    }

    /// The first stage's proxy died or restarted, and with it the jobs it held in its queue.
    /// Those are among the open requests sent while it was still heard (`alive_at`); a request
    /// sent later waits in the server's socket for the next proxy, which serves it. Which of the
    /// former were still queued, the server cannot tell (a job a worker had taken is still
    /// worked, and answered). So each of them gets `grace` more to be answered, and if it is not
    /// (or its deadline comes first: 504), is answered 503 saying why, instead of waiting for its
    /// deadline. The grace is the heartbeat expiry.
    fn orphan_sent_before(&mut self, alive_at: Instant) {
        let at = Instant::now() + self.proxy.grace();
        for (id, entry) in self.table.iter_mut() {
            if entry.sent <= alive_at {
                entry.orphaned = true;
                self.timers.push(Reverse((at, *id)));
            }
        }
    }

    fn refuse(&mut self, cmd: Command) {
        if let Command::Submit { tx, .. } = cmd {
            let _ = tx.send(shutting_down());
            self.in_flight.leave();
        }
    }

    /// Answers every open request 503 and tells workers to stop on them.
    fn close(&mut self) {
        let ids: Vec<u64> = self.table.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.finish(id, shutting_down(), Workers::Interrupt) {
                tracing::warn!(error = %e, "could not publish an interrupt while stopping");
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Result<(), Error> {
        match cmd {
            Command::Submit {
                mut header,
                deadline,
                frames,
                tx,
            } => {
                header.token = self.draw_token();
                let id = header.request_id;
                let head = header.encode();
                let sent = self
                    .dealer
                    .socket()
                    .send(std::iter::once(&head[..]).chain(frames.iter().map(Vec::as_slice)))?;
                self.table.insert(
                    id,
                    Entry {
                        tx,
                        header,
                        sent: Instant::now(),
                        orphaned: false,
                    },
                );
                if sent == Sent::Unreachable {
                    self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    self.finish(
                        id,
                        Answer::Failed(Failure::new(503, "the first stage is not reachable")),
                        Workers::LeaveAlone,
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
                        Workers::Interrupt,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn drain_loopback(&mut self) -> Result<(), Error> {
        while let Some(frames) = self.loopback.socket().try_recv()? {
            match wire::decode_routed(frames) {
                Ok((_, h, mut payload)) if h.kind == Kind::Reply => {
                    if h.server_id != self.server_id {
                        self.malformed("loopback", "reply for another server");
                        continue;
                    }
                    let Some(entry) = self.table.get(&h.request_id) else {
                        self.stats.late.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if h.token != entry.header.token {
                        // Dropped, and the request stays open: its real answer may still come.
                        self.stats.forged.fetch_add(1, Ordering::Relaxed);
                        let why = "reply whose token is not its request's: from a peer that \
                                   never held the job";
                        self.warnings.dropped("loopback", why, Instant::now());
                        continue;
                    }
                    let body = payload.pop().unwrap_or_default();
                    let answer = Answer::from_worker(h.status, body);
                    let ok = h.status == 0;
                    // Counted before the answer is handed over: its receiver may read the
                    // stats at once.
                    if ok {
                        self.stats.replied.fetch_add(1, Ordering::Relaxed);
                    }
                    self.finish(h.request_id, answer, Workers::LeaveAlone)?;
                }
                Ok((_, h, _)) => self.malformed("loopback", &format!("unexpected {:?}", h.kind)),
                Err(e) => self.malformed("loopback", &e.to_string()),
            }
        }
        Ok(())
    }

    fn drain_dealer(&mut self) -> Result<(), Error> {
        while let Some(frames) = self.dealer.socket().try_recv()? {
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
                        Workers::LeaveAlone,
                    )? {
                        self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                        if status == 503 {
                            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok((h, _)) if h.kind == Kind::Heartbeat => self.proxy_heard(h.server_id, h.flags),
                Ok((h, _)) => self.malformed("proxy", &format!("unexpected {:?}", h.kind)),
                Err(e) => self.malformed("proxy", &e.to_string()),
            }
        }
        Ok(())
    }

    fn malformed(&mut self, side: &'static str, why: &str) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        self.warnings.dropped(side, why, Instant::now());
    }

    fn expire(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        if self.warnings.has_unreported() {
            self.warnings.flush(now);
        }
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.table.get(&id) else {
                continue;
            };
            let past_deadline = entry.header.expired_at(wire::now_us());
            if entry.orphaned && !past_deadline {
                self.stats.orphaned.fetch_add(1, Ordering::Relaxed);
                let why = "the first stage's proxy went away with the request";
                self.finish(
                    id,
                    Answer::Failed(Failure::new(503, why)),
                    Workers::Interrupt,
                )?;
            } else {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.finish(id, deadline_passed(), Workers::Interrupt)?;
            }
        }
        Ok(())
    }

    /// Answers request `id` if it is still open. Returns whether it was open.
    fn finish(&mut self, id: u64, answer: Answer, workers: Workers) -> Result<bool, Error> {
        let Some(entry) = self.table.remove(&id) else {
            return Ok(false);
        };
        self.in_flight.leave();
        self.stats.request_seconds.observe(entry.sent.elapsed());
        let _ = entry.tx.send(answer);
        if workers == Workers::Interrupt {
            let mut h = entry.header.with_kind(Kind::Interrupt);
            // Every subscriber reads it, not only the workers that hold the job.
            h.token = ReplyToken::NONE;
            h.trace_id = TraceId::NONE;
            // libzmq applies new subscriptions when the publisher next looks at its commands,
            // which a send does only if it has not looked within about a millisecond: a worker
            // that subscribed just after a heartbeat went out would miss this interrupt. Asking
            // for the socket's events makes it look now.
            self.publisher.has_input()?;
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
