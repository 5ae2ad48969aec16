//! The count of requests in flight at one server, its limit, and a signal for when it drops to
//! zero (a draining daemon exits then, without polling the count).

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Requests submitted and not yet answered. `submit` enters; whoever answers leaves.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Counts one more request, unless `limit` are in flight already.
    pub(crate) fn try_enter(&self, limit: usize) -> bool {
        if self.count.fetch_add(1, Ordering::AcqRel) >= limit {
            self.leave();
            return false;
        }
        true
    }

    /// One request was answered.
    pub(crate) fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Requests in flight now.
    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Completes once nothing is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            // Registered before the count is read, so a drop to zero in between is not missed.
            let notified = self.idle.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_limit_counts_what_is_in_flight() {
        let f = InFlight::default();
        assert!(f.try_enter(2));
        assert!(f.try_enter(2));
        assert!(!f.try_enter(2), "a third is over the limit");
        assert_eq!(f.get(), 2, "a refused request is not counted");
        f.leave();
        assert!(f.try_enter(2));
    }

    #[tokio::test]
    async fn idle_completes_when_the_last_request_leaves() {
        let f = Arc::new(InFlight::default());
        f.idle().await; // nothing in flight: at once
        assert!(f.try_enter(10) && f.try_enter(10));
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.idle().await }
        });
        tokio::task::yield_now().await;
        f.leave();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one is still in flight");
        f.leave();
        waiter.await.unwrap();
    }
}
