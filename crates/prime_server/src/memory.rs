//! In-memory stages: the pipeline of one process without proxies or zmq.
//!
//! When every part of a pipeline lives in one process, a stage's workers can take jobs from a
//! shared queue (a mutex and a condition variable) instead of asking a proxy thread for them.
//! The balancing rule is the proxy's: workers pull, a worker takes a job only when it has none,
//! so a job never waits behind another on a busy worker. What changes is the cost: a worker that
//! finishes takes the next waiting job itself, without a round trip through a proxy, so under load
//! workers rarely sleep, where a proxy round trip costs a wake-up (two context switches) per job
//! per stage (see BENCHMARKS.md). A job carries its answer channel, so a worker answers the
//! client straight from any stage; the server core's cancels and deadlines reach workers through
//! a shared set read by [`Interrupt::check`].
//!
//! Used by [`Pipeline`](crate::pipeline::Pipeline) with
//! [`Transport::Memory`](crate::pipeline::Transport::Memory). Heartbeats and redelivery have no
//! part here: a worker cannot die apart from its process (a panicking work function becomes a
//! 500), and a stopping pipeline answers every queued job 503.

use crate::answer::{deadline_passed, shutting_down, Answer, Failure};
use crate::interrupt::{CancelSource, Interrupt, SharedCancels};
use crate::shutdown::{Shutdown, POLL_INTERVAL};
use crate::stats::StageStats;
use crate::stats::{ServerStats, WorkerStats};
use crate::transport::Frames;
use crate::wire::{self, Header};
use crate::work::{perform, Action, Job, WorkFn};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// A job in an in-memory stage's queue: the wire header (ids, deadline), the frames, and where
/// its one answer goes.
pub(crate) struct MemJob {
    pub(crate) header: Header,
    pub(crate) frames: Frames,
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// Why a queue refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It holds `queue_limit` jobs already (a 503 for the client).
    Full,
    /// The pipeline is stopping (a 503 for the client).
    Closed,
}

impl Refused {
    pub(crate) fn answer(self) -> Answer {
        match self {
            Refused::Full => Answer::Failed(Failure::new(503, "the stage's queue is full")),
            Refused::Closed => shutting_down(),
        }
    }
}

struct QueueState {
    jobs: VecDeque<MemJob>,
    /// Workers asleep waiting for a job.
    idle: usize,
    closed: bool,
}

/// One stage's job queue, shared by the stage's workers and whoever feeds it.
pub(crate) struct StageQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    limit: usize,
    stats: Arc<StageStats>,
}

impl StageQueue {
    /// The stage's counters.
    pub(crate) fn stats(&self) -> &StageStats {
        &self.stats
    }

    pub(crate) fn new(limit: usize, stats: Arc<StageStats>) -> Arc<StageQueue> {
        Arc::new(StageQueue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                idle: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            limit: limit.max(1),
            stats,
        })
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a job; a refused one comes back with the reason.
    // The job comes back whole so that its answer channel can answer the refusal; the error is
    // as large as a job (its header carries the trace id inline), and moved only on refusal.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, job: MemJob) -> Result<(), (MemJob, Refused)> {
        let mut s = self.lock();
        if s.closed {
            return Err((job, Refused::Closed));
        }
        // As at a proxy, the limit counts the jobs that wait: not those an idle worker is about
        // to take.
        if s.jobs.len().saturating_sub(s.idle) >= self.limit {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err((job, Refused::Full));
        }
        s.jobs.push_back(job);
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.publish(&s);
        // Wake a worker only if one sleeps: a busy one takes the job when it is done.
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Takes the oldest job, waiting up to `timeout`; `None` on timeout or once closed.
    pub(crate) fn pop(&self, timeout: Duration) -> Option<MemJob> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(job) = s.jobs.pop_front() {
                self.stats.dispatched.fetch_add(1, Ordering::Relaxed);
                self.publish(&s);
                return Some(job);
            }
            s.idle += 1;
            self.publish(&s);
            let (guard, waited) = self
                .ready
                .wait_timeout(s, timeout)
                .unwrap_or_else(PoisonError::into_inner);
            s = guard;
            s.idle -= 1;
            if waited.timed_out() && s.jobs.is_empty() {
                self.publish(&s);
                return None;
            }
        }
    }

    /// Refuses new jobs from now on, answers every queued one 503 and wakes every worker.
    pub(crate) fn close(&self) {
        let jobs: Vec<MemJob> = {
            let mut s = self.lock();
            s.closed = true;
            let jobs = s.jobs.drain(..).collect();
            self.publish(&s);
            jobs
        };
        self.ready.notify_all();
        for job in jobs {
            let _ = job.reply.send(shutting_down());
        }
    }

    fn publish(&self, s: &QueueState) {
        self.stats
            .queued
            .store(s.jobs.len() as u64, Ordering::Relaxed);
        self.stats.idle.store(s.idle as u64, Ordering::Relaxed);
    }
}

/// A worker of an in-memory stage: takes jobs from its stage's queue, runs the work function
/// ([`perform`], as the zmq worker does), and hands the result to the next stage's queue or
/// answers the client.
pub(crate) struct MemWorker {
    pub(crate) stage: u8,
    pub(crate) queue: Arc<StageQueue>,
    pub(crate) next: Option<Arc<StageQueue>>,
    pub(crate) cancels: Arc<SharedCancels>,
    pub(crate) work: WorkFn,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) server_stats: Arc<ServerStats>,
}

impl MemWorker {
    /// Serves jobs until `shutdown` stops, as a batch thread like the zmq pipeline's (see
    /// [`prefer_batch_scheduling`](crate::transport::prefer_batch_scheduling)).
    pub(crate) fn run(mut self, shutdown: Shutdown) {
        let span = tracing::info_span!("worker", stage = self.stage);
        let _entered = span.enter();
        crate::transport::prefer_batch_scheduling();
        let busy = AtomicBool::new(false);
        // Two clock reads a job: its start (which the deadline check needs anyway) ends the
        // wait, its end starts the next.
        let mut waiting_since = wire::now_us();
        while !shutdown.is_stopping() {
            if let Some(job) = self.queue.pop(POLL_INTERVAL) {
                let start = wire::now_us();
                let stats = &self.stats;
                stats
                    .wait_seconds
                    .observe_us(start.saturating_sub(waiting_since));
                self.handle(job, start, &shutdown, &busy);
                waiting_since = wire::now_us();
                let took = waiting_since.saturating_sub(start);
                self.stats.job_seconds.observe_us(took);
            }
        }
    }

    /// Runs `job`, taken at `now_us`.
    fn handle(&mut self, job: MemJob, now_us: u64, shutdown: &Shutdown, busy: &AtomicBool) {
        self.stats.jobs.fetch_add(1, Ordering::Relaxed);
        let MemJob {
            header,
            frames,
            reply,
        } = job;
        let key = (header.server_id, header.request_id);
        // A request that was cancelled or is past its deadline has been answered (or will be,
        // by its deadline timer): skip the work.
        if self.cancels.contains(&key) || header.expired_at(now_us) {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            self.dead(&header, reply);
            return;
        }
        let mut job = Job::new(header, frames);
        let interrupt = Interrupt::new(
            CancelSource::Shared(&self.cancels),
            shutdown,
            &header,
            &self.stats,
        );
        match perform(&mut self.work, &mut job, &interrupt, busy, &self.stats) {
            Action::Forward(frames) => self.forward(header, frames, reply),
            Action::Answer(status, body) => self.answer(reply, status, body),
            Action::Nothing => self.dead(&header, reply),
        }
    }

    fn forward(&mut self, header: Header, frames: Frames, reply: oneshot::Sender<Answer>) {
        let Some(next) = &self.next else {
            let why = b"the last stage forwarded a job: no next stage".to_vec();
            return self.answer(reply, 500, why);
        };
        let mut header = header;
        header.stage = self.stage;
        match next.push(MemJob {
            header,
            frames,
            reply,
        }) {
            Ok(()) => {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err((job, refused)) => {
                if refused == Refused::Full {
                    self.server_stats.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                if job.reply.send(refused.answer()).is_ok() {
                    self.server_stats.overloaded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn answer(&self, reply: oneshot::Sender<Answer>, status: u16, body: Vec<u8>) {
        // Counted before it is sent: whoever receives the answer may read the stats at once.
        self.stats.replied.fetch_add(1, Ordering::Relaxed);
        if reply.send(Answer::from_worker(status, body)).is_err() {
            // Answered already (deadline) or nobody waits any more (client gone).
            self.stats.replied.fetch_sub(1, Ordering::Relaxed);
            self.server_stats.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request that died while queued or worked on. Its waiting side answers a cancel or a
    /// deadline itself; a deadline is also answered here, so that which clock noticed first
    /// does not matter: the first answer wins, and whoever gives it counts the timeout.
    fn dead(&self, header: &Header, reply: oneshot::Sender<Answer>) {
        // The waiting side closes the channel before it answers a deadline itself: then there
        // is nothing to count (counting and taking it back would show two timeouts meanwhile).
        if !header.expired_at(wire::now_us()) || reply.is_closed() {
            return;
        }
        // Counted before it is sent (the receiver may read the stats at once), undone if the
        // waiting side answered first after all.
        self.server_stats.timeouts.fetch_add(1, Ordering::Relaxed);
        if reply.send(deadline_passed()).is_err() {
            self.server_stats.timeouts.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Kind;

    fn job(id: u64) -> (MemJob, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        let mut header = Header::new(Kind::Job);
        header.request_id = id;
        let frames = vec![id.to_le_bytes().to_vec()];
        (
            MemJob {
                header,
                frames,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn jobs_come_out_in_order_and_the_limit_counts_only_waiting_ones() {
        let stats = Arc::new(StageStats::default());
        let q = StageQueue::new(2, stats.clone());
        let mut answers = Vec::new();
        for id in 1..=2 {
            let (j, rx) = job(id);
            assert!(q.push(j).is_ok());
            answers.push(rx);
        }
        let (j, _rx) = job(3);
        let (_, refused) = q.push(j).expect_err("a third job waits beyond the limit");
        assert_eq!(refused, Refused::Full);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 2);
        let got: Vec<u64> = (0..2)
            .map(|_| q.pop(Duration::from_millis(10)).unwrap().header.request_id)
            .collect();
        assert_eq!(got, vec![1, 2]);
        assert!(q.pop(Duration::from_millis(10)).is_none());
        assert_eq!(stats.dispatched.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_job_for_a_sleeping_worker_does_not_count_against_the_limit() {
        let q = StageQueue::new(1, Arc::default());
        let taker = {
            let q = q.clone();
            std::thread::spawn(move || q.pop(Duration::from_secs(5)).map(|j| j.header.request_id))
        };
        while q.lock().idle == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // One worker asleep: the first job is its, the second waits (limit 1), a third is
        // refused.
        let results: Vec<bool> = (1..=3).map(|id| q.push(job(id).0).is_ok()).collect();
        assert_eq!(results, vec![true, true, false]);
        assert_eq!(taker.join().unwrap(), Some(1));
    }

    #[test]
    fn closing_answers_every_queued_job_503_and_refuses_new_ones() {
        let q = StageQueue::new(8, Arc::default());
        let (j, mut rx) = job(1);
        assert!(q.push(j).is_ok());
        q.close();
        assert_eq!(
            rx.try_recv().unwrap(),
            Answer::Failed(Failure::new(503, "the server is shutting down"))
        );
        let (j, _rx) = job(2);
        assert_eq!(q.push(j).err().map(|(_, r)| r), Some(Refused::Closed));
        assert!(q.pop(Duration::from_millis(10)).is_none());
    }
}
