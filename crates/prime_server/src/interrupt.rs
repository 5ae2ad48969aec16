//! The interrupt check: how a work function learns that its request is dead (the client went
//! away, the deadline passed, the server that asked for it is gone) or that the process is
//! stopping, and what stands behind it: for a zmq worker, what the servers' interrupt channels
//! said (cancelled requests, and each server's heartbeats); for in-memory stages, the set their
//! server core writes.

use crate::shutdown::Shutdown;
use crate::stats::WorkerStats;
use crate::transport::Socket;
use crate::wire::{self, Header, Kind};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
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
    /// The server that asked for the work stopped sending heartbeats: nobody is left to answer.
    #[error("the server that asked for it is gone")]
    ServerGone,
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

/// When each server was last heard on its interrupt channel (a heartbeat or an interrupt).
/// A server heard once and then silent for longer than the heartbeat expiry is gone: it died or
/// restarted (a restarted front has a new server id), and no one waits for its requests any
/// more. A server never heard is not judged: a subscription loses what is published before it
/// is joined, so a worker may see a job before the first heartbeat of its server.
pub(crate) struct Servers {
    last_heard: HashMap<u64, Instant>,
    expiry: Duration,
}

impl Servers {
    fn heard(&mut self, server_id: u64, now: Instant) {
        self.last_heard.insert(server_id, now);
        // Long-gone servers are forgotten, so the table holds the servers of the last minutes.
        if self.last_heard.len() > 64 {
            let keep = CANCEL_MEMORY;
            self.last_heard
                .retain(|_, t| now.duration_since(*t) <= keep);
        }
    }

    /// `server_id` was alive at `at` (shown by a job it accepted then): heard then, unless it was
    /// heard later already. A server never heard stays unjudged.
    pub(crate) fn heard_at_least(&mut self, server_id: u64, at: Instant) {
        if let Some(t) = self.last_heard.get_mut(&server_id) {
            *t = (*t).max(at);
        }
    }

    /// Whether `server_id` was heard and then went silent.
    pub(crate) fn gone(&self, server_id: u64, now: Instant) -> bool {
        self.last_heard
            .get(&server_id)
            .is_some_and(|t| now.duration_since(*t) > self.expiry)
    }
}

/// What a zmq worker has learnt from the servers' interrupt channels.
pub(crate) struct Notices {
    pub(crate) cancelled: Cancelled,
    pub(crate) servers: Servers,
}

impl Notices {
    /// Nothing heard yet; servers silent for `expiry` count as gone.
    pub(crate) fn new(expiry: Duration) -> Notices {
        Notices {
            cancelled: Cancelled::default(),
            servers: Servers {
                last_heard: HashMap::new(),
                expiry,
            },
        }
    }

    /// Why a job of `key` (server id, request id) must not be worked, if it must not.
    pub(crate) fn dead(&self, key: &(u64, u64), now: Instant) -> Option<Interrupted> {
        if self.cancelled.contains(key) {
            Some(Interrupted::Cancelled)
        } else if self.servers.gone(key.0, now) {
            Some(Interrupted::ServerGone)
        } else {
            None
        }
    }
}

/// Where a worker learns which requests were cancelled.
pub(crate) enum CancelSource<'a> {
    /// The servers' interrupt channels (SUB sockets), read into the worker's own notices.
    Sockets {
        subs: &'a [Socket],
        notices: &'a RefCell<Notices>,
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
        let dead = match &self.source {
            CancelSource::Sockets { subs, notices } => {
                if look {
                    drain_interrupts(subs, &mut notices.borrow_mut(), self.stats);
                    notices.borrow().dead(&self.key, now)
                } else {
                    notices
                        .borrow()
                        .cancelled
                        .contains(&self.key)
                        .then_some(Interrupted::Cancelled)
                }
            }
            // A lock: taken at the same pace as the sockets are drained.
            CancelSource::Shared(set) => {
                (look && set.contains(&self.key)).then_some(Interrupted::Cancelled)
            }
        };
        match dead {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// Reads everything waiting on the servers' interrupt channels into `notices`: interrupts, and
/// heartbeats that say a server is alive.
pub(crate) fn drain_interrupts(subs: &[Socket], notices: &mut Notices, stats: &WorkerStats) {
    let now = Instant::now();
    for sub in subs {
        while let Ok(Some(frames)) = sub.try_recv() {
            match wire::decode(frames) {
                Ok((h, _)) if h.kind == Kind::Interrupt => {
                    notices.servers.heard(h.server_id, now);
                    notices.cancelled.insert((h.server_id, h.request_id))
                }
                Ok((h, _)) if h.kind == Kind::Heartbeat => notices.servers.heard(h.server_id, now),
                Ok(_) | Err(_) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("worker dropped a malformed interrupt");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_gone_only_after_it_was_heard_and_went_silent() {
        let expiry = Duration::from_secs(3);
        let mut n = Notices::new(expiry);
        let t = Instant::now();
        assert_eq!(
            n.dead(&(7, 1), t + expiry * 10),
            None,
            "never heard: not judged"
        );
        n.servers.heard(7, t);
        assert_eq!(n.dead(&(7, 1), t + expiry), None);
        assert_eq!(
            n.dead(&(7, 1), t + expiry + Duration::from_millis(1)),
            Some(Interrupted::ServerGone)
        );
        n.servers.heard(7, t + expiry * 2);
        assert_eq!(n.dead(&(7, 1), t + expiry * 2), None, "heard again: alive");
        // A job the server accepted recently shows it alive, even before its heartbeats return.
        let later = t + expiry * 4;
        assert!(n.dead(&(7, 2), later).is_some());
        n.servers
            .heard_at_least(7, later - Duration::from_millis(1));
        assert_eq!(n.dead(&(7, 2), later), None);
        n.servers.heard_at_least(7, t);
        assert_eq!(
            n.dead(&(7, 2), later),
            None,
            "an older sign changes nothing"
        );
        n.cancelled.insert((7, 1));
        assert_eq!(
            n.dead(&(7, 1), t + expiry * 2),
            Some(Interrupted::Cancelled)
        );
        assert_eq!(n.dead(&(8, 1), t + expiry * 2), None);
    }
}
