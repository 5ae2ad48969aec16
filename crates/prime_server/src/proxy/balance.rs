//! The proxy's balancing rule as a state machine, without sockets or clocks.
//!
//! [`Balancer`] owns the worker table, the idle FIFO, the queue of jobs no worker has taken yet,
//! the choose function and the proxy's counters. The socket loop in [`super`] feeds it what
//! arrives (a job, a worker's Ready, Heartbeat or Disconnect, a send that found no worker) and
//! the passing of time (a tick, with the current `Instant` as an argument), and performs what it
//! returns ([`Action`]s: answers to a job's sender, heartbeats to workers). Workers joining and
//! leaving are [`Membership`] events the loop takes with [`Balancer::take_events`] and logs
//! (it knows where a worker's messages come from; the balancer does not). Keeping it free of
//! sockets and of `Instant::now()` is what lets the tests below drive every rule of
//! `docs/PROTOCOL.md` §3 step by step and deterministically.
//!
//! Hand-offs of jobs to workers are the one exception to "events in, actions out": they go
//! through a send function given to [`Balancer::dispatch`], because whether a hand-off reached
//! its worker decides the next one (the same job goes to the next idle worker) and whether it is
//! counted as dispatched.

use super::{ChooseFn, ProxyConfig};
use crate::stats::StageStats;
use crate::transport::{Frames, Sent};
use crate::wire::Header;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a job is answered 503 when its stage's queue is full.
pub(crate) const QUEUE_FULL: &str = "the stage's queue is full";
/// Why a job is answered 503 when the proxy stops with it still queued.
pub(crate) const SHUTTING_DOWN: &str = "the proxy is shutting down";

/// What the socket loop must do for the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Answer a job to its sender without a worker: a Reject carrying `status` and `reason`.
    Answer {
        /// The routing id of whoever sent the job upstream.
        sender: Vec<u8>,
        /// The job's header as the balancer last knew it.
        header: Header,
        /// 503 (queue full, stopping) or 500 (its workers died).
        status: u16,
        /// A short UTF-8 reason for the client.
        reason: Cow<'static, str>,
    },
    /// Tell an idle worker the proxy is alive.
    Heartbeat {
        /// The worker's routing id.
        worker: Vec<u8>,
    },
    /// Confirm a worker's Disconnect (a header-only Disconnect back): no job is sent to it after
    /// this, so once it has read this it has every job it will get.
    Acknowledge {
        /// The worker's routing id.
        worker: Vec<u8>,
    },
}

/// Why a worker left the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leave {
    /// It said Disconnect and its last job is done: a clean leave (its process drains).
    Disconnect,
    /// Nothing heard from it for longer than the heartbeat expiry.
    Silent,
    /// A send to it found no such peer: its connection is gone.
    Unreachable,
}

impl Leave {
    /// The reason as a log field says it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Leave::Disconnect => "disconnect",
            Leave::Silent => "silent",
            Leave::Unreachable => "unreachable",
        }
    }
}

/// A worker joining the stage (the proxy heard it for the first time) or leaving it (the proxy
/// forgot it), for the socket loop to log. Each is counted in [`StageStats`] (`joined`, `left`)
/// as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Membership {
    /// A Ready or a heartbeat from a worker the proxy did not know.
    Joined {
        /// Its id (the routing id of its jobs' socket).
        worker: Vec<u8>,
    },
    /// The proxy forgot a worker.
    Left {
        /// Its id.
        worker: Vec<u8>,
        /// Why.
        why: Leave,
    },
}

/// A job on its way to a worker, lent to the send function of [`Balancer::dispatch`].
#[derive(Debug)]
pub(crate) struct Handoff<'a> {
    /// The routing id of the worker that gets the job.
    pub worker: &'a [u8],
    /// The job's header, `attempt` already counting this hand-off.
    pub header: &'a Header,
    /// The job's payload frames, as received.
    pub payload: &'a [Vec<u8>],
}

/// A job the proxy has taken and not yet seen done.
#[derive(Debug, Clone)]
struct QueuedJob {
    sender: Vec<u8>,
    header: Header,
    payload: Frames,
}

impl QueuedJob {
    /// The bytes its payload holds.
    fn bytes(&self) -> usize {
        self.payload.iter().map(Vec::len).sum()
    }
}

/// The jobs no worker has taken yet, and the bytes they hold: the queue is bounded in both.
#[derive(Debug, Default)]
struct JobQueue {
    jobs: VecDeque<QueuedJob>,
    bytes: usize,
}

impl JobQueue {
    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn push_back(&mut self, job: QueuedJob) {
        self.bytes += job.bytes();
        self.jobs.push_back(job);
    }

    fn push_front(&mut self, job: QueuedJob) {
        self.bytes += job.bytes();
        self.jobs.push_front(job);
    }

    fn pop_front(&mut self) -> Option<QueuedJob> {
        let job = self.jobs.pop_front()?;
        self.bytes -= job.bytes();
        Some(job)
    }

    fn take_all(&mut self) -> VecDeque<QueuedJob> {
        self.bytes = 0;
        std::mem::take(&mut self.jobs)
    }
}

struct WorkerEntry {
    blob: Vec<u8>,
    idle: bool,
    last_seen: Instant,
    /// The job in the worker's hands, kept to hand to another worker if this one dies.
    job: Option<QueuedJob>,
}

/// One stage's balancing rule; see the [module docs](self) and [`super`].
pub(crate) struct Balancer {
    queue_limit: usize,
    queue_limit_bytes: usize,
    expiry: Duration,
    max_attempts: u8,
    choose: Option<ChooseFn>,
    stats: Arc<StageStats>,
    workers: HashMap<Vec<u8>, WorkerEntry>,
    /// Idle workers, the one idle longest first.
    idle: VecDeque<Vec<u8>>,
    queue: JobQueue,
    /// Workers joined and left since the socket loop last took them.
    events: Vec<Membership>,
    /// Workers forgotten on their Disconnect, and when: for a heartbeat expiry, heartbeats that
    /// name them are late ones (see [`Balancer::heartbeat`]).
    departed: HashMap<Vec<u8>, Instant>,
}

impl Balancer {
    /// A balancer with no workers and no jobs, keeping its counts in `stats`.
    pub(crate) fn new(config: &ProxyConfig, stats: Arc<StageStats>) -> Balancer {
        Balancer {
            queue_limit: config.queue_limit,
            queue_limit_bytes: config.queue_limit_bytes,
            expiry: config.heartbeat.expiry(),
            max_attempts: config.max_attempts,
            choose: None,
            stats,
            workers: HashMap::new(),
            idle: VecDeque::new(),
            queue: JobQueue::default(),
            events: Vec::new(),
            departed: HashMap::new(),
        }
    }

    /// Whether workers joined or left since [`Balancer::take_events`].
    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The workers that joined and left since the last call, in order.
    pub(crate) fn take_events(&mut self) -> Vec<Membership> {
        std::mem::take(&mut self.events)
    }

    /// How many workers the balancer knows now.
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Sets the function that picks a worker for each job.
    pub(crate) fn set_choose(&mut self, choose: ChooseFn) {
        self.choose = Some(choose);
    }

    /// Whether no job is queued and no worker holds one (so a draining proxy may leave).
    pub(crate) fn is_drained(&self) -> bool {
        self.queue.is_empty() && self.workers.values().all(|w| w.idle)
    }

    /// A job arrived from `sender`: it joins the queue, or is answered 503 when the queue is full.
    /// It waits there until [`Balancer::dispatch`].
    pub(crate) fn job(
        &mut self,
        sender: Vec<u8>,
        header: Header,
        payload: Frames,
    ) -> Option<Action> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let size: usize = payload.iter().map(Vec::len).sum();
        // An empty queue takes any job (each frame is bounded by the message limit), so one job
        // larger than the byte bound is not refused for ever.
        let over_bytes = !self.queue.is_empty() && self.queue.bytes + size > self.queue_limit_bytes;
        if self.queue.len() >= self.queue_limit || over_bytes {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Some(Action::Answer {
                sender,
                header,
                status: 503,
                reason: Cow::Borrowed(QUEUE_FULL),
            });
        }
        self.queue.push_back(QueuedJob {
            sender,
            header,
            payload,
        });
        None
    }

    /// A worker said Ready: the job it held (if any) is done, and it goes to the back of the idle
    /// FIFO unless it is already in it.
    pub(crate) fn ready(&mut self, worker: Vec<u8>, blob: Vec<u8>, now: Instant) {
        match self.workers.get_mut(&worker) {
            Some(entry) => {
                entry.blob = blob;
                entry.last_seen = now;
                entry.job = None;
                if !entry.idle {
                    entry.idle = true;
                    self.idle.push_back(worker);
                }
            }
            None => {
                self.joined(&worker);
                self.workers.insert(
                    worker.clone(),
                    WorkerEntry {
                        blob,
                        idle: true,
                        last_seen: now,
                        job: None,
                    },
                );
                self.idle.push_back(worker);
            }
        }
    }

    /// A Heartbeat for `worker` (from the worker itself, or with `busy` from its heartbeat
    /// thread while its work function runs). One naming a worker that left by Disconnect less
    /// than a heartbeat expiry ago is ignored: its heartbeat thread's busy heartbeat for the last
    /// job comes over another connection than the Disconnect and may arrive after it, and must
    /// not register as busy a worker that is gone (a draining front would count it as a worker).
    pub(crate) fn heartbeat(&mut self, worker: Vec<u8>, busy: bool, now: Instant) {
        if let Some(&left) = self.departed.get(&worker) {
            if now.saturating_duration_since(left) <= self.expiry {
                return;
            }
            self.departed.remove(&worker);
        }
        match self.workers.get_mut(&worker) {
            Some(entry) => entry.last_seen = now,
            // A worker we don't know (we restarted): an idle one is welcome as if it had said
            // Ready; a busy one will say Ready when its job is done.
            None if !busy => self.ready(worker, Vec::new(), now),
            None => {
                self.joined(&worker);
                self.workers.insert(
                    worker,
                    WorkerEntry {
                        blob: Vec::new(),
                        idle: false,
                        last_seen: now,
                        job: None,
                    },
                );
            }
        }
    }

    /// A worker said Disconnect: it gets no more jobs, and is told so ([`Action::Acknowledge`]).
    /// `last` is the job it took last (request and server id; zeros for none). A worker handles
    /// one job at a time and says Disconnect between jobs, so a job the balancer handed it that
    /// is not `last` was still on its way when it spoke: the worker will read it before the
    /// acknowledgement, work it and say Disconnect again naming it. Until then the worker stays
    /// in the table, not idle, holding that job, so that if it dies instead the job is handed
    /// on as any dead worker's is.
    pub(crate) fn disconnect(&mut self, worker: &[u8], last: (u64, u64), now: Instant) -> Action {
        let on_its_way = self
            .workers
            .get(worker)
            .and_then(|e| e.job.as_ref())
            .is_some_and(|j| (j.header.server_id, j.header.request_id) != last);
        if on_its_way {
            self.idle.retain(|w| w != worker);
            if let Some(entry) = self.workers.get_mut(worker) {
                entry.idle = false;
            }
        } else if self.forget(worker).is_some() {
            self.left(worker, Leave::Disconnect);
            self.departed.insert(worker.to_vec(), now);
        }
        self.publish_gauges();
        Action::Acknowledge {
            worker: worker.to_vec(),
        }
    }

    /// A send to `worker` (a heartbeat) found no such peer: it is dropped as dead. Only idle
    /// workers are sent heartbeats, but should it hold a job, the job is handed on as a dead
    /// worker's is.
    pub(crate) fn unreachable(&mut self, worker: &[u8]) -> Option<Action> {
        let entry = self.forget(worker)?;
        self.left(worker, Leave::Unreachable);
        let action = entry.job.and_then(|job| self.hand_on(job, worker));
        self.publish_gauges();
        action
    }

    /// Time passed: drops workers silent for longer than the heartbeat expiry (a job a dead
    /// worker held goes back to the front of the queue, or is answered 500 once `max_attempts`
    /// workers have had it), then says it is alive to every idle worker, so workers notice a
    /// dead proxy. The socket loop calls it once per heartbeat interval.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut dead: Vec<Vec<u8>> = self
            .workers
            .iter()
            .filter(|(_, e)| now.duration_since(e.last_seen) > self.expiry)
            .map(|(w, _)| w.clone())
            .collect();
        // The table's order is random; an order of our own keeps redelivery reproducible.
        dead.sort_unstable();
        let expiry = self.expiry;
        self.departed
            .retain(|_, left| now.saturating_duration_since(*left) <= expiry);
        let mut actions = Vec::new();
        for w in dead {
            let Some(entry) = self.workers.remove(&w) else {
                continue;
            };
            self.idle.retain(|x| x != &w);
            self.left(&w, Leave::Silent);
            if let Some(job) = entry.job {
                actions.extend(self.hand_on(job, &w));
            }
        }
        actions.extend(
            self.idle
                .iter()
                .map(|w| Action::Heartbeat { worker: w.clone() }),
        );
        self.publish_gauges();
        actions
    }

    /// The proxy stops: every job still queued is answered 503, so its sender answers its client.
    pub(crate) fn stop(&mut self) -> Vec<Action> {
        let mut actions: Vec<Action> = self
            .queue
            .take_all()
            .into_iter()
            .map(|job| Action::Answer {
                sender: job.sender,
                header: job.header,
                status: 503,
                reason: Cow::Borrowed(SHUTTING_DOWN),
            })
            .collect();
        // Every worker is told the proxy is gone: a leaving worker takes it for the
        // confirmation it waits for (and exits now), the others ignore it.
        actions.extend(
            self.workers
                .keys()
                .map(|w| Action::Acknowledge { worker: w.clone() }),
        );
        self.publish_gauges();
        actions
    }

    /// Hands queued jobs to idle workers, in queue order, until one or the other runs out.
    /// `send` delivers one hand-off; when it reports [`Sent::Unreachable`], the worker is dropped
    /// and the same job, its attempt not spent, goes to the next idle worker.
    pub(crate) fn dispatch<E>(
        &mut self,
        now: Instant,
        mut send: impl FnMut(&Handoff<'_>) -> Result<Sent, E>,
    ) -> Result<(), E> {
        while !self.idle.is_empty() {
            let Some(mut job) = self.queue.pop_front() else {
                break;
            };
            let i = self.pick(&job.payload);
            let Some(worker) = self.idle.remove(i) else {
                self.queue.push_front(job);
                break;
            };
            job.header.attempt = job.header.attempt.saturating_add(1);
            // The gauges say the worker is busy before it can be: a job handed over can be done
            // and answered before this loop ends, and whoever reads the gauges then (a test
            // waiting for idle workers, a metrics scrape) must not see it idle still.
            self.publish_gauges();
            let sent = send(&Handoff {
                worker: &worker,
                header: &job.header,
                payload: &job.payload,
            })?;
            match sent {
                Sent::Yes => {
                    if let Some(e) = self.workers.get_mut(&worker) {
                        e.idle = false;
                        // The worker's heartbeats are now what tells us it is alive.
                        e.last_seen = now;
                        e.job = Some(job);
                    }
                    self.stats.dispatched.fetch_add(1, Ordering::Relaxed);
                }
                Sent::Unreachable => {
                    tracing::warn!(worker = %String::from_utf8_lossy(&worker), "worker unreachable, job goes to another");
                    job.header.attempt -= 1;
                    if self.workers.remove(&worker).is_some() {
                        self.left(&worker, Leave::Unreachable);
                    }
                    self.queue.push_front(job);
                }
            }
        }
        self.publish_gauges();
        Ok(())
    }

    /// Copies the queue length and the idle count to the gauges of [`StageStats`].
    pub(crate) fn publish_gauges(&self) {
        self.stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
        self.stats
            .idle
            .store(self.idle.len() as u64, Ordering::Relaxed);
        self.stats
            .workers
            .store(self.workers.len() as u64, Ordering::Relaxed);
    }

    /// A worker the balancer did not know was heard: counted, and an event.
    fn joined(&mut self, worker: &[u8]) {
        self.stats.joined.fetch_add(1, Ordering::Relaxed);
        self.events.push(Membership::Joined {
            worker: worker.to_vec(),
        });
    }

    /// A worker was forgotten: counted (as expired too unless it left cleanly), and an event.
    fn left(&mut self, worker: &[u8], why: Leave) {
        self.stats.left.fetch_add(1, Ordering::Relaxed);
        if why != Leave::Disconnect {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        self.events.push(Membership::Left {
            worker: worker.to_vec(),
            why,
        });
    }

    /// Removes a worker from the table and the idle FIFO; returns what the table held.
    fn forget(&mut self, worker: &[u8]) -> Option<WorkerEntry> {
        let entry = self.workers.remove(worker)?;
        self.idle.retain(|w| w != worker);
        Some(entry)
    }

    /// The job of a worker that is gone: back to the front of the queue for another worker, or,
    /// once `max_attempts` workers have had it, answered 500.
    fn hand_on(&mut self, job: QueuedJob, worker: &[u8]) -> Option<Action> {
        let who = String::from_utf8_lossy(worker);
        if job.header.attempt < self.max_attempts {
            tracing::warn!(worker = %who, request_id = job.header.request_id, attempt = job.header.attempt, "worker died holding a job: handing it to another");
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
            self.queue.push_front(job);
            return None;
        }
        tracing::error!(worker = %who, request_id = job.header.request_id, attempts = job.header.attempt, "worker died holding a job; no attempts left");
        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
        let reason = format!(
            "the request failed: {} workers died while working on it",
            job.header.attempt
        );
        Some(Action::Answer {
            sender: job.sender,
            header: job.header,
            status: 500,
            reason: Cow::Owned(reason),
        })
    }

    /// The index in the idle FIFO of the worker for a job: the choose function's pick, or the
    /// head.
    fn pick(&mut self, payload: &[Vec<u8>]) -> usize {
        let Some(choose) = self.choose.as_mut() else {
            return 0;
        };
        let blobs: Vec<&[u8]> = self
            .idle
            .iter()
            .map(|w| {
                self.workers
                    .get(w)
                    .map(|e| e.blob.as_slice())
                    .unwrap_or(&[])
            })
            .collect();
        match choose(&blobs, payload) {
            Some(i) if i < blobs.len() => i,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::Heartbeat;
    use crate::wire::Kind;
    use std::convert::Infallible;

    const INTERVAL: Duration = Duration::from_millis(100);
    /// Longer than `liveness` (3) intervals of silence.
    const DEAD: Duration = Duration::from_millis(301);

    /// A balancer with a 100 ms heartbeat, liveness 3, and the default queue limit and attempts,
    /// as changed by `tweak`.
    fn ep(text: &str) -> crate::Endpoint {
        text.parse().expect("a valid endpoint")
    }

    fn balancer_with(tweak: impl FnOnce(&mut ProxyConfig)) -> (Balancer, Arc<StageStats>) {
        let mut config = ProxyConfig::new(ep("inproc://up"), ep("inproc://down"));
        config.heartbeat = Heartbeat {
            interval: INTERVAL,
            liveness: 3,
        };
        tweak(&mut config);
        let stats = Arc::<StageStats>::default();
        (Balancer::new(&config, stats.clone()), stats)
    }

    fn balancer() -> (Balancer, Arc<StageStats>) {
        balancer_with(|_| {})
    }

    fn header(request_id: u64) -> Header {
        let mut h = Header::new(Kind::Job);
        h.request_id = request_id;
        h
    }

    /// Job `id` arrives from the sender `client`, its payload the id as text.
    fn arrive(b: &mut Balancer, id: u64) -> Option<Action> {
        b.job(
            b"client".to_vec(),
            header(id),
            vec![id.to_string().into_bytes()],
        )
    }

    fn ready(b: &mut Balancer, worker: &str, at: Instant) {
        b.ready(worker.as_bytes().to_vec(), Vec::new(), at);
    }

    /// One hand-off as the socket loop saw it: worker, request id, attempt.
    type Sent1 = (String, u64, u8);

    /// Dispatches; sends to the workers named in `gone` find no peer. Returns every hand-off
    /// tried, in order.
    fn dispatch_with(b: &mut Balancer, at: Instant, gone: &[&str]) -> Vec<Sent1> {
        let mut tried = Vec::new();
        let result: Result<(), Infallible> = b.dispatch(at, |h| {
            let worker = String::from_utf8_lossy(h.worker).into_owned();
            let sent = if gone.contains(&worker.as_str()) {
                Sent::Unreachable
            } else {
                Sent::Yes
            };
            tried.push((worker, h.header.request_id, h.header.attempt));
            Ok(sent)
        });
        let Ok(()) = result;
        tried
    }

    fn dispatch(b: &mut Balancer, at: Instant) -> Vec<Sent1> {
        dispatch_with(b, at, &[])
    }

    fn sent(worker: &str, request_id: u64, attempt: u8) -> Sent1 {
        (worker.to_string(), request_id, attempt)
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The answers among `actions`: (request id, status, reason).
    fn answers(actions: &[Action]) -> Vec<(u64, u16, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Answer {
                    header,
                    status,
                    reason,
                    ..
                } => Some((header.request_id, *status, reason.to_string())),
                Action::Heartbeat { .. } | Action::Acknowledge { .. } => None,
            })
            .collect()
    }

    fn heartbeats(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Heartbeat { worker } => Some(String::from_utf8_lossy(worker).into_owned()),
                Action::Answer { .. } | Action::Acknowledge { .. } => None,
            })
            .collect()
    }

    /// The workers that joined and left since the last look: (worker, `joined` or the reason).
    fn members(b: &mut Balancer) -> Vec<(String, &'static str)> {
        b.take_events()
            .into_iter()
            .map(|e| match e {
                Membership::Joined { worker } => {
                    (String::from_utf8_lossy(&worker).into_owned(), "joined")
                }
                Membership::Left { worker, why } => {
                    (String::from_utf8_lossy(&worker).into_owned(), why.as_str())
                }
            })
            .collect()
    }

    fn member(worker: &str, what: &'static str) -> (String, &'static str) {
        (worker.to_string(), what)
    }

    #[test]
    fn a_worker_joins_when_first_heard_by_ready_or_heartbeat_and_only_then() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        b.heartbeat(b"w2".to_vec(), false, t);
        b.heartbeat(b"w3".to_vec(), true, t);
        assert_eq!(
            members(&mut b),
            [
                member("w1", "joined"),
                member("w2", "joined"),
                member("w3", "joined")
            ]
        );
        // Known workers join nothing, whatever they say.
        ready(&mut b, "w1", t);
        b.heartbeat(b"w1".to_vec(), false, t);
        b.heartbeat(b"w3".to_vec(), true, t);
        ready(&mut b, "w3", t);
        arrive(&mut b, 1);
        dispatch(&mut b, t);
        ready(&mut b, "w2", t);
        b.tick(t + INTERVAL);
        assert!(!b.has_events());
        assert_eq!(members(&mut b), []);
        assert_eq!((count(&stats.joined), count(&stats.left)), (3, 0));
        assert_eq!(b.workers(), 3);
    }

    #[test]
    fn a_worker_leaves_once_by_disconnect_silence_or_unreachability_and_each_is_counted() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        for w in ["w1", "w2", "w3", "w4"] {
            ready(&mut b, w, t);
        }
        assert_eq!(members(&mut b).len(), 4);
        assert_eq!(b.disconnect(b"w1", (0, 0), Instant::now()), ack("w1"));
        assert_eq!(b.unreachable(b"w2"), None);
        // w3 is heard from; w4 stays silent past the expiry.
        b.heartbeat(b"w3".to_vec(), false, t + DEAD);
        b.tick(t + DEAD);
        assert_eq!(
            members(&mut b),
            [
                member("w1", "disconnect"),
                member("w2", "unreachable"),
                member("w4", "silent")
            ]
        );
        // A hand-off that finds no worker.
        arrive(&mut b, 1);
        assert_eq!(dispatch_with(&mut b, t + DEAD, &["w3"]), [sent("w3", 1, 1)]);
        assert_eq!(members(&mut b), [member("w3", "unreachable")]);
        // Workers already gone, and strangers, leave nothing more.
        b.disconnect(b"w1", (0, 0), Instant::now());
        b.disconnect(b"stranger", (0, 0), Instant::now());
        assert_eq!(b.unreachable(b"w2"), None);
        b.tick(t + 2 * DEAD);
        assert_eq!(members(&mut b), []);
        assert_eq!(
            (
                count(&stats.joined),
                count(&stats.left),
                count(&stats.expired)
            ),
            (4, 4, 3),
            "a clean leave is not expired"
        );
        assert_eq!(b.workers(), 0);
    }

    /// The drain race (see `a_job_on_its_way_when_its_worker_leaves_is_left_to_it`): a worker
    /// whose Disconnect crossed a job stays until it is done with it, or dies.
    #[test]
    fn a_worker_leaving_with_a_job_on_its_way_leaves_once_done_or_dead() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        for (id, w) in [(1, "w1"), (2, "w2")] {
            arrive(&mut b, id);
            ready(&mut b, w, t);
            assert_eq!(dispatch(&mut b, t), [sent(w, id, 1)]);
            assert_eq!(b.disconnect(w.as_bytes(), (0, 0), Instant::now()), ack(w));
        }
        assert_eq!(
            members(&mut b),
            [member("w1", "joined"), member("w2", "joined")]
        );
        assert_eq!(b.disconnect(b"w1", (0, 1), Instant::now()), ack("w1"));
        assert_eq!(members(&mut b), [member("w1", "disconnect")]);
        b.tick(t + DEAD);
        assert_eq!(members(&mut b), [member("w2", "silent")]);
        assert_eq!((count(&stats.joined), count(&stats.left)), (2, 2));
    }

    #[test]
    fn the_worker_idle_longest_gets_the_next_job() {
        let (mut b, _) = balancer();
        let t = Instant::now();
        for w in ["w1", "w2", "w3"] {
            ready(&mut b, w, t);
        }
        for id in 1..=3 {
            assert_eq!(arrive(&mut b, id), None);
        }
        assert_eq!(
            dispatch(&mut b, t),
            [sent("w1", 1, 1), sent("w2", 2, 1), sent("w3", 3, 1)]
        );
        // Done in another order, they queue up again in that order.
        for w in ["w3", "w1", "w2"] {
            ready(&mut b, w, t);
        }
        for id in 4..=6 {
            arrive(&mut b, id);
        }
        assert_eq!(
            dispatch(&mut b, t),
            [sent("w3", 4, 1), sent("w1", 5, 1), sent("w2", 6, 1)]
        );
    }

    #[test]
    fn a_job_goes_only_to_an_idle_worker_and_a_worker_never_holds_two() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        // A second Ready from an idle worker does not give it a second place in the FIFO.
        ready(&mut b, "w1", t);
        // A worker known only from its busy heartbeat is not idle.
        b.heartbeat(b"w2".to_vec(), true, t);
        for id in 1..=3 {
            arrive(&mut b, id);
        }
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        // Heartbeats, busy or not, do not make a worker holding a job idle.
        b.heartbeat(b"w1".to_vec(), false, t);
        b.heartbeat(b"w1".to_vec(), true, t);
        assert_eq!(dispatch(&mut b, t), []);
        assert_eq!(count(&stats.dispatched), 1);
        assert_eq!(count(&stats.queued), 2);
        assert_eq!(count(&stats.idle), 0);
    }

    #[test]
    fn jobs_queue_while_no_worker_is_idle_and_go_out_in_order_as_readys_arrive() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        for id in 1..=3 {
            assert_eq!(arrive(&mut b, id), None);
        }
        assert_eq!(dispatch(&mut b, t), []);
        assert_eq!(count(&stats.queued), 3);
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        ready(&mut b, "w2", t);
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w2", 2, 1), sent("w1", 3, 1)]);
        assert_eq!(count(&stats.received), 3);
        assert_eq!(count(&stats.dispatched), 3);
        assert_eq!(count(&stats.queued), 0);
    }

    #[test]
    fn a_full_queue_answers_503_at_once_and_counts_rejected() {
        let (mut b, stats) = balancer_with(|c| c.queue_limit = 2);
        let t = Instant::now();
        assert_eq!(arrive(&mut b, 1), None);
        assert_eq!(arrive(&mut b, 2), None);
        let refused = arrive(&mut b, 3).into_iter().collect::<Vec<_>>();
        assert_eq!(
            answers(&refused),
            [(3, 503, "the stage's queue is full".to_string())]
        );
        let Some(Action::Answer { sender, .. }) = refused.first() else {
            panic!("no answer");
        };
        assert_eq!(sender, b"client");
        assert_eq!((count(&stats.received), count(&stats.rejected)), (3, 1));
        // The refused job is not queued: the first two are all a worker gets.
        ready(&mut b, "w1", t);
        ready(&mut b, "w2", t);
        ready(&mut b, "w3", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1), sent("w2", 2, 1)]);
    }

    /// A choose function that sends a job to the worker whose blob equals the job's payload.
    fn by_blob() -> ChooseFn {
        Box::new(|blobs, payload| {
            let want = payload.first()?;
            blobs.iter().position(|b| b == want)
        })
    }

    /// Job `id` from `client` with a payload of `bytes` bytes.
    fn arrive_sized(b: &mut Balancer, id: u64, bytes: usize) -> Option<Action> {
        b.job(b"client".to_vec(), header(id), vec![vec![0u8; bytes]])
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too_and_an_empty_queue_takes_any_job() {
        let (mut b, stats) = balancer_with(|c| c.queue_limit_bytes = 10);
        assert_eq!(
            arrive_sized(&mut b, 1, 100),
            None,
            "an empty queue takes any job"
        );
        let full = arrive_sized(&mut b, 2, 1).into_iter().collect::<Vec<_>>();
        assert_eq!(
            answers(&full),
            [(2, 503, "the stage's queue is full".to_string())]
        );
        let t = Instant::now();
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(arrive_sized(&mut b, 3, 6), None);
        assert_eq!(
            arrive_sized(&mut b, 4, 4),
            None,
            "6 + 4 bytes: at the bound"
        );
        let over = arrive_sized(&mut b, 5, 1).into_iter().collect::<Vec<_>>();
        assert_eq!(answers(&over).len(), 1, "one byte over the bound");
        assert_eq!(count(&stats.rejected), 2);
        // What leaves the queue frees its bytes.
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 3, 1)]);
        assert_eq!(arrive_sized(&mut b, 6, 6), None);
    }

    #[test]
    fn the_choose_function_picks_the_worker_by_its_blob() {
        let (mut b, _) = balancer();
        b.set_choose(by_blob());
        let t = Instant::now();
        for (w, blob) in [("w1", "1"), ("w2", "2"), ("w3", "3")] {
            b.ready(w.as_bytes().to_vec(), blob.as_bytes().to_vec(), t);
        }
        // Jobs 3 then 2: payloads "3" and "2".
        arrive(&mut b, 3);
        arrive(&mut b, 2);
        assert_eq!(dispatch(&mut b, t), [sent("w3", 3, 1), sent("w2", 2, 1)]);
        // A Ready brings a fresh blob.
        b.ready(b"w3".to_vec(), b"4".to_vec(), t);
        arrive(&mut b, 4);
        assert_eq!(dispatch(&mut b, t), [sent("w3", 4, 1)]);
    }

    #[test]
    fn a_choice_of_none_or_out_of_range_means_the_fifo_head() {
        let (mut b, _) = balancer();
        let mut picks = [None, Some(7), Some(1)].into_iter();
        b.set_choose(Box::new(move |_, _| picks.next().flatten()));
        let t = Instant::now();
        for w in ["w1", "w2", "w3", "w4"] {
            ready(&mut b, w, t);
        }
        for id in 1..=3 {
            arrive(&mut b, id);
        }
        // None: head w1; 7 of 3: head w2; 1 of [w3, w4]: w4.
        assert_eq!(
            dispatch(&mut b, t),
            [sent("w1", 1, 1), sent("w2", 2, 1), sent("w4", 3, 1)]
        );
    }

    #[test]
    fn heartbeats_keep_a_worker_alive_and_silence_expires_it() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        // Three intervals pass, with a heartbeat every two: alive.
        b.heartbeat(b"w1".to_vec(), false, t + 2 * INTERVAL);
        b.tick(t + 3 * INTERVAL);
        b.heartbeat(b"w1".to_vec(), false, t + 4 * INTERVAL);
        assert_eq!(heartbeats(&b.tick(t + 6 * INTERVAL)), ["w1"]);
        assert_eq!((count(&stats.expired), count(&stats.idle)), (0, 1));
        // Then silence for more than `liveness` intervals.
        assert_eq!(b.tick(t + 4 * INTERVAL + DEAD), []);
        assert_eq!((count(&stats.expired), count(&stats.idle)), (1, 0));
        arrive(&mut b, 1);
        assert_eq!(dispatch(&mut b, t + 8 * INTERVAL), []);
    }

    #[test]
    fn busy_heartbeats_keep_a_worker_holding_a_job_alive() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        arrive(&mut b, 1);
        dispatch(&mut b, t);
        for k in 1..=10 {
            b.heartbeat(b"w1".to_vec(), true, t + k * INTERVAL);
        }
        assert_eq!(b.tick(t + 11 * INTERVAL), []);
        assert_eq!((count(&stats.expired), count(&stats.redelivered)), (0, 0));
    }

    #[test]
    fn a_silent_worker_holding_a_job_sends_it_to_the_front_of_the_queue_with_attempt_plus_one() {
        let (mut b, stats) = balancer_with(|c| c.max_attempts = 3);
        let t = Instant::now();
        ready(&mut b, "w1", t);
        arrive(&mut b, 1);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        arrive(&mut b, 2);
        // w2 stays alive; w1 goes silent holding job 1.
        b.heartbeat(b"w2".to_vec(), true, t + DEAD);
        let actions = b.tick(t + DEAD);
        assert_eq!(answers(&actions), []);
        assert_eq!((count(&stats.expired), count(&stats.redelivered)), (1, 1));
        assert_eq!(count(&stats.queued), 2);
        // Job 1 is ahead of job 2, which arrived before it came back.
        b.ready(b"w2".to_vec(), Vec::new(), t + DEAD);
        ready(&mut b, "w3", t + DEAD);
        assert_eq!(
            dispatch(&mut b, t + DEAD),
            [sent("w2", 1, 2), sent("w3", 2, 1)]
        );
    }

    #[test]
    fn after_max_attempts_deaths_the_sender_is_answered_500_and_it_counts_abandoned() {
        let (mut b, stats) = balancer();
        let t0 = Instant::now();
        ready(&mut b, "w1", t0);
        arrive(&mut b, 7);
        assert_eq!(dispatch(&mut b, t0), [sent("w1", 7, 1)]);
        let t1 = t0 + DEAD;
        ready(&mut b, "w2", t1);
        assert_eq!(answers(&b.tick(t1)), []);
        assert_eq!(dispatch(&mut b, t1), [sent("w2", 7, 2)]);
        let t2 = t1 + DEAD;
        let actions = b.tick(t2);
        assert_eq!(
            answers(&actions),
            [(
                7,
                500,
                "the request failed: 2 workers died while working on it".to_string()
            )]
        );
        let Some(Action::Answer { sender, header, .. }) = actions.first() else {
            panic!("no answer");
        };
        assert_eq!((sender.as_slice(), header.attempt), (&b"client"[..], 2));
        assert_eq!(
            (
                count(&stats.expired),
                count(&stats.redelivered),
                count(&stats.abandoned)
            ),
            (2, 1, 1)
        );
        assert_eq!(count(&stats.queued), 0);
    }

    #[test]
    fn a_busy_heartbeat_from_an_unknown_worker_registers_it_busy() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        b.heartbeat(b"w1".to_vec(), true, t);
        assert!(!b.is_drained());
        arrive(&mut b, 1);
        assert_eq!(dispatch(&mut b, t), []);
        // It says Ready when its job (one we never saw) is done.
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(count(&stats.dispatched), 1);
    }

    /// A worker's busy heartbeat for its last job comes over its heartbeat socket, and can
    /// arrive after the Disconnect it sent over its jobs-in socket once the job was done.
    #[test]
    fn a_heartbeat_that_arrives_after_its_workers_disconnect_does_not_register_it_again() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        arrive(&mut b, 1);
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(b.disconnect(b"w1", (0, 1), t), ack("w1"));
        for busy in [true, false] {
            b.heartbeat(b"w1".to_vec(), busy, t + INTERVAL);
        }
        assert_eq!(b.workers(), 0);
        assert!(b.is_drained());
        assert_eq!((count(&stats.joined), count(&stats.left)), (1, 1));
        // Nothing is left of it at the next tick either: no silent worker to expire.
        b.tick(t + 10 * INTERVAL);
        assert_eq!(count(&stats.expired), 0);
        // Past the expiry the id is a stranger's again, welcome as any.
        b.heartbeat(b"w1".to_vec(), false, t + 20 * INTERVAL);
        assert_eq!(b.workers(), 1);
    }

    #[test]
    fn a_plain_heartbeat_from_an_unknown_worker_registers_it_idle() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        b.heartbeat(b"w1".to_vec(), false, t);
        arrive(&mut b, 1);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(count(&stats.dispatched), 1);
    }

    #[test]
    fn an_unreachable_workers_job_goes_to_the_next_worker_without_spending_an_attempt() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        for w in ["w1", "w2", "w3"] {
            ready(&mut b, w, t);
        }
        arrive(&mut b, 1);
        arrive(&mut b, 2);
        assert_eq!(
            dispatch_with(&mut b, t, &["w1"]),
            [sent("w1", 1, 1), sent("w2", 1, 1), sent("w3", 2, 1)]
        );
        assert_eq!((count(&stats.dispatched), count(&stats.expired)), (2, 1));
        assert_eq!(count(&stats.redelivered), 0);
        // w1 is gone for good: no job, no heartbeat.
        arrive(&mut b, 3);
        assert_eq!(dispatch(&mut b, t), []);
        assert_eq!(heartbeats(&b.tick(t + INTERVAL)), Vec::<String>::new());
    }

    #[test]
    fn a_heartbeat_that_finds_no_worker_drops_it() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        ready(&mut b, "w2", t);
        assert_eq!(heartbeats(&b.tick(t + INTERVAL)), ["w1", "w2"]);
        assert_eq!(b.unreachable(b"w1"), None);
        assert_eq!((count(&stats.expired), count(&stats.idle)), (1, 1));
        assert_eq!(heartbeats(&b.tick(t + 2 * INTERVAL)), ["w2"]);
    }

    #[test]
    fn disconnect_of_an_idle_worker_removes_it() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        ready(&mut b, "w2", t);
        assert_eq!(b.disconnect(b"w1", (0, 0), Instant::now()), ack("w1"));
        arrive(&mut b, 1);
        arrive(&mut b, 2);
        assert_eq!(dispatch(&mut b, t), [sent("w2", 1, 1)]);
        assert_eq!(count(&stats.expired), 0);
        assert_eq!(count(&stats.queued), 1);
    }

    fn ack(worker: &str) -> Action {
        Action::Acknowledge {
            worker: worker.as_bytes().to_vec(),
        }
    }

    /// A worker that finished job 1 and leaves names it: the job is done, the worker forgotten,
    /// and its silence later hands nothing on.
    #[test]
    fn a_disconnect_naming_the_job_a_worker_held_means_it_is_done() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        arrive(&mut b, 1);
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(b.disconnect(b"w1", (0, 1), Instant::now()), ack("w1"));
        assert!(answers(&b.tick(t + 10 * INTERVAL)).is_empty());
        assert_eq!((count(&stats.redelivered), count(&stats.expired)), (0, 0));
    }

    /// The drain race: a worker's last Ready was answered with job 1, and its Disconnect (naming
    /// no job) crossed it. The job is on its way to the worker, which reads it before the
    /// acknowledgement, works it, and says Disconnect again naming it. Meanwhile it is not idle.
    #[test]
    fn a_job_on_its_way_when_its_worker_leaves_is_left_to_it() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        arrive(&mut b, 1);
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(b.disconnect(b"w1", (0, 0), Instant::now()), ack("w1"));
        arrive(&mut b, 2);
        assert!(
            dispatch(&mut b, t).is_empty(),
            "a leaving worker gets no job"
        );
        b.heartbeat(b"w1".to_vec(), true, t + 2 * INTERVAL);
        assert_eq!(b.disconnect(b"w1", (0, 1), Instant::now()), ack("w1"));
        assert!(answers(&b.tick(t + 10 * INTERVAL)).is_empty());
        assert_eq!(count(&stats.redelivered), 0);
        ready(&mut b, "w2", t + 10 * INTERVAL);
        assert_eq!(dispatch(&mut b, t + 10 * INTERVAL), [sent("w2", 2, 1)]);
    }

    /// The same race, but the leaving worker dies before it reads the job: its silence hands
    /// the job on as any dead worker's.
    #[test]
    fn a_job_on_its_way_to_a_worker_that_left_and_died_is_handed_on() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        arrive(&mut b, 1);
        ready(&mut b, "w1", t);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(b.disconnect(b"w1", (0, 0), Instant::now()), ack("w1"));
        let later = t + 4 * INTERVAL;
        b.tick(later);
        assert_eq!((count(&stats.redelivered), count(&stats.expired)), (1, 1));
        ready(&mut b, "w2", later);
        assert_eq!(dispatch(&mut b, later), [sent("w2", 1, 2)]);
    }

    #[test]
    fn a_worker_the_proxy_does_not_know_is_acknowledged_too() {
        let (mut b, _) = balancer();
        assert_eq!(
            b.disconnect(b"stranger", (0, 0), Instant::now()),
            ack("stranger")
        );
    }

    #[test]
    fn a_tick_sends_heartbeats_to_idle_workers_only() {
        let (mut b, _) = balancer();
        let t = Instant::now();
        for w in ["w1", "w2", "w3"] {
            ready(&mut b, w, t);
        }
        b.heartbeat(b"w4".to_vec(), true, t);
        arrive(&mut b, 1);
        assert_eq!(dispatch(&mut b, t), [sent("w1", 1, 1)]);
        assert_eq!(heartbeats(&b.tick(t + INTERVAL)), ["w2", "w3"]);
    }

    #[test]
    fn stopping_answers_everything_queued_503() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        for id in 1..=3 {
            arrive(&mut b, id);
        }
        dispatch(&mut b, t);
        let reason = "the proxy is shutting down".to_string();
        assert_eq!(
            answers(&b.stop()),
            [(2, 503, reason.clone()), (3, 503, reason)]
        );
        assert_eq!(count(&stats.queued), 0);
        // The counters of refusals are for a full queue only.
        assert_eq!(count(&stats.rejected), 0);
    }

    #[test]
    fn ready_from_a_worker_that_held_a_job_means_the_job_is_done() {
        let (mut b, stats) = balancer();
        let t = Instant::now();
        ready(&mut b, "w1", t);
        arrive(&mut b, 1);
        dispatch(&mut b, t);
        assert!(!b.is_drained());
        ready(&mut b, "w1", t);
        assert!(b.is_drained());
        // Its death now costs no job.
        assert_eq!(b.tick(t + DEAD), []);
        assert_eq!(
            (
                count(&stats.expired),
                count(&stats.redelivered),
                count(&stats.abandoned)
            ),
            (1, 0, 0)
        );
        assert_eq!(count(&stats.queued), 0);
    }
}
