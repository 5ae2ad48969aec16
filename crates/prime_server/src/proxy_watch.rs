//! Watching the proxy one sends jobs to. A sender (a server, for its first stage; a worker, for
//! the next stage) asks the proxy every heartbeat interval whether it is alive; the proxy answers
//! with a Heartbeat naming its incarnation. When a proxy that was heard goes silent for the
//! heartbeat expiry, or answers as another incarnation (it restarted), the jobs in its queue are
//! gone with it: [`ProxyWatch`] says so, with the last moment the old proxy was heard, and the
//! sender acts on what it sent until then (see PROTOCOL.md §3).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The proxy's incarnation.
    id: u64,
    last_heard: Instant,
    /// Whether its silence has been reported already.
    reported: bool,
}

/// What one sender knows of the proxy it sends to.
#[derive(Debug)]
pub(crate) struct ProxyWatch {
    seen: Option<Seen>,
    expiry: Duration,
}

impl ProxyWatch {
    /// A proxy never heard yet; silence longer than `expiry` is death.
    pub(crate) fn new(expiry: Duration) -> ProxyWatch {
        ProxyWatch { seen: None, expiry }
    }

    /// The proxy answered as incarnation `id` at `now`. If it is another incarnation than the
    /// one heard before (and that one's death was not reported yet), returns when the old one
    /// was last heard: jobs sent until then are lost with it.
    pub(crate) fn heard(&mut self, id: u64, now: Instant) -> Option<Instant> {
        let lost_until = match self.seen {
            Some(s) if s.id != id && !s.reported => {
                tracing::warn!(old = s.id, new = id, "the proxy restarted");
                Some(s.last_heard)
            }
            Some(s) if s.id != id => {
                tracing::info!(proxy = id, "the proxy is back");
                None
            }
            _ => None,
        };
        self.seen = Some(Seen {
            id,
            last_heard: now,
            reported: false,
        });
        lost_until
    }

    /// Time passed: if the proxy heard before has been silent for longer than the expiry,
    /// returns (once) when it was last heard: jobs sent until then are lost with it.
    pub(crate) fn silent(&mut self, now: Instant) -> Option<Instant> {
        let s = self.seen.as_mut()?;
        if s.reported || now.saturating_duration_since(s.last_heard) <= self.expiry {
            return None;
        }
        s.reported = true;
        tracing::warn!(proxy = s.id, "the proxy went silent");
        Some(s.last_heard)
    }

    /// How long a job sent to a lost proxy is given to be answered all the same (a worker may
    /// have taken it before the proxy died): as long as the silence that revealed the loss.
    pub(crate) fn grace(&self) -> Duration {
        self.expiry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_restarts_are_reported_once_with_when_the_proxy_was_last_heard() {
        let expiry = Duration::from_secs(3);
        let mut w = ProxyWatch::new(expiry);
        let t = Instant::now();
        assert_eq!(w.silent(t + expiry * 10), None, "never heard: not judged");
        assert_eq!(w.heard(1, t), None);
        assert_eq!(w.silent(t + expiry), None);
        assert_eq!(w.silent(t + expiry * 2), Some(t));
        assert_eq!(w.silent(t + expiry * 3), None, "reported once");
        // It comes back as another incarnation: its death was reported already.
        assert_eq!(w.heard(2, t + expiry * 4), None);
        // A restart faster than the expiry shows as a new incarnation.
        let t5 = t + expiry * 5;
        assert_eq!(w.heard(2, t5), None);
        assert_eq!(w.heard(3, t5 + Duration::from_secs(1)), Some(t5));
        assert_eq!(w.grace(), expiry);
    }
}
