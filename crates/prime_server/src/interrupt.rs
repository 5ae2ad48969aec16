//! The interrupt check: how a work function learns that its request is dead (the client went
//! away, the deadline passed) or that the process is stopping, and the sets of cancelled
//! requests behind it: read from the servers' interrupt channels by a zmq worker, or written
//! straight by the server core of in-memory stages.

use crate::shutdown::Shutdown;
use crate::stats::WorkerStats;
use crate::transport::Socket;
use crate::wire::{self, Header, Kind};
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

/// How long to keep remembering a cancelled request.
const CANCEL_MEMORY: Duration = Duration::from_secs(600);
/// The most cancelled requests remembered at once.
const CANCEL_CAPACITY: usize = 65_536;
/// How often the interrupt check looks at the interrupt sockets (it checks the deadline and the
/// shutdown flag on every call).
const INTERRUPT_DRAIN_EVERY: Duration = Duration::from_millis(1);

#[derive(Default)]
pub(crate) struct Cancelled {
    set: HashSet<(u64, u64)>,
    order: VecDeque<(Instant, (u64, u64))>,
}

impl Cancelled {
    pub(crate) fn contains(&self, key: &(u64, u64)) -> bool {
        self.set.contains(key)
    }

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

/// Reads every interrupt waiting on the servers' interrupt channels into `cancelled`.
pub(crate) fn drain_interrupts(subs: &[Socket], cancelled: &mut Cancelled, stats: &WorkerStats) {
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
