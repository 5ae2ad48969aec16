//! Rate-limited warnings about dropped messages.
//!
//! A component that drops a malformed message counts it and warns, but a peer that sends
//! garbage in a loop must not turn the log into a flood that costs more than the garbage: each
//! side of a component (a proxy's upstream, a server's loopback, …) writes at most one warning
//! line per [`WARN_INTERVAL`], carrying how many messages it dropped since its last line and the
//! latest reason. The first drop after a quiet interval is reported at once; drops within the
//! interval wait for the next drop after it or for [`DropWarnings::flush`], which the
//! components' loops call as they go round. The components' `malformed` counters still count
//! every message.

use std::time::{Duration, Instant};

/// The shortest time between two warning lines of one side.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The warnings of one component, rate-limited per side. Time comes from the caller, so the
/// rule is tested without a clock.
#[derive(Debug)]
pub(crate) struct DropWarnings {
    component: &'static str,
    interval: Duration,
    sides: Vec<Side>,
}

#[derive(Debug)]
struct Side {
    name: &'static str,
    last_line: Option<Instant>,
    unreported: u64,
    reason: String,
}

impl DropWarnings {
    /// Warnings of `component` (`proxy`, `server`, `worker`), one line per side per
    /// [`WARN_INTERVAL`].
    pub(crate) fn new(component: &'static str) -> DropWarnings {
        DropWarnings::with_interval(component, WARN_INTERVAL)
    }

    fn with_interval(component: &'static str, interval: Duration) -> DropWarnings {
        DropWarnings {
            component,
            interval,
            sides: Vec::new(),
        }
    }

    /// A message from `side` was dropped for `reason` at `now`. Writes a line if the side's
    /// interval has passed; returns the count that line carries.
    pub(crate) fn dropped(
        &mut self,
        side: &'static str,
        reason: impl std::fmt::Display,
        now: Instant,
    ) -> Option<u64> {
        let i = match self.sides.iter().position(|s| s.name == side) {
            Some(i) => i,
            None => {
                self.sides.push(Side {
                    name: side,
                    last_line: None,
                    unreported: 0,
                    reason: String::new(),
                });
                self.sides.len() - 1
            }
        };
        let s = &mut self.sides[i];
        s.unreported += 1;
        s.reason = reason.to_string();
        let due = s
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        due.then(|| self.report(i, now))
    }

    /// Whether some side has drops it has not written a line about yet.
    pub(crate) fn has_unreported(&self) -> bool {
        self.sides.iter().any(|s| s.unreported > 0)
    }

    /// Writes the lines of the sides whose interval has passed with drops not yet reported;
    /// returns how many drops they carry.
    pub(crate) fn flush(&mut self, now: Instant) -> u64 {
        let mut total = 0;
        for i in 0..self.sides.len() {
            let s = &self.sides[i];
            let due = s
                .last_line
                .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
            if s.unreported > 0 && due {
                total += self.report(i, now);
            }
        }
        total
    }

    fn report(&mut self, i: usize, now: Instant) -> u64 {
        let s = &mut self.sides[i];
        let dropped = std::mem::take(&mut s.unreported);
        s.last_line = Some(now);
        tracing::warn!(
            component = self.component,
            side = s.name,
            dropped,
            reason = %s.reason,
            "dropped malformed messages (at most one line per side every {} s)",
            self.interval.as_secs()
        );
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_drop_is_reported_at_once_and_the_rest_once_per_interval_with_their_count() {
        let t0 = Instant::now();
        let mut w = DropWarnings::with_interval("proxy", 10 * S);
        assert_eq!(w.dropped("upstream", "bad magic", t0), Some(1));
        assert!(!w.has_unreported());
        for k in 1..=5 {
            assert_eq!(w.dropped("upstream", "bad magic", t0 + k * S), None);
        }
        assert!(w.has_unreported());
        assert_eq!(w.flush(t0 + 9 * S), 0);
        // The next drop after the interval carries the ones held back, and itself.
        assert_eq!(w.dropped("upstream", "bad magic", t0 + 10 * S), Some(6));
        assert_eq!(w.dropped("upstream", "bad magic", t0 + 19 * S), None);
        assert_eq!(w.dropped("upstream", "bad magic", t0 + 20 * S), Some(2));
    }

    #[test]
    fn a_flush_reports_what_was_held_back_once_the_interval_has_passed() {
        let t0 = Instant::now();
        let mut w = DropWarnings::with_interval("server", 10 * S);
        assert_eq!(w.dropped("loopback", "x", t0), Some(1));
        assert_eq!(w.dropped("loopback", "x", t0 + S), None);
        assert_eq!(w.dropped("loopback", "y", t0 + 2 * S), None);
        assert_eq!(w.flush(t0 + 5 * S), 0);
        assert_eq!(w.flush(t0 + 10 * S), 2);
        assert!(!w.has_unreported());
        assert_eq!(w.flush(t0 + 30 * S), 0);
        // A quiet interval has passed since the flushed line: the next drop is reported at once.
        assert_eq!(w.dropped("loopback", "z", t0 + 21 * S), Some(1));
    }

    #[test]
    fn each_side_has_its_own_interval() {
        let t0 = Instant::now();
        let mut w = DropWarnings::with_interval("proxy", 10 * S);
        assert_eq!(w.dropped("upstream", "a", t0), Some(1));
        assert_eq!(w.dropped("downstream", "b", t0 + S), Some(1));
        assert_eq!(w.dropped("upstream", "a", t0 + 2 * S), None);
        assert_eq!(w.dropped("downstream", "b", t0 + 3 * S), None);
        assert_eq!(w.flush(t0 + 10 * S), 1);
        assert_eq!(w.flush(t0 + 11 * S), 1);
    }
}
