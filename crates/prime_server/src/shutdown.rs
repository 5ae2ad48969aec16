//! Graceful shutdown: a shared flag pair (draining, then stopping) that every loop watches.
//!
//! Components take a [`Shutdown`] as a parameter, so a test can stop them by calling
//! [`Shutdown::stop`] and a daemon can wire it to SIGTERM/SIGINT with
//! [`Shutdown::on_signals`]. Blocking loops poll with a bounded timeout
//! ([`POLL_INTERVAL`]) and so notice within a fraction of a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a blocking loop waits before it looks at the shutdown flag again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Flags {
    draining: AtomicBool,
    stopping: AtomicBool,
    notify: Notify,
    /// Run once by the first [`Shutdown::stop`].
    on_stop: Mutex<Vec<Hook>>,
}

/// What a component does once the drain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDrain {
    /// Go on serving until the stop: a part of a one-process pipeline, whose front decides when
    /// the drain is over.
    #[default]
    ServeUntilStop,
    /// Finish what it holds and end by itself: a process of a multi-process deployment (a
    /// proxy once no job is queued or held, a worker after leaving its proxy, a front once
    /// nothing is in flight).
    FinishAndExit,
}

/// A cloneable handle on the process's (or a test's) shutdown state.
#[derive(Clone, Default)]
pub struct Shutdown {
    flags: Arc<Flags>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("draining", &self.is_draining())
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

impl Shutdown {
    /// A new handle, neither draining nor stopping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters the drain: servers stop taking new work and report not-ready; work in flight goes on.
    pub fn drain(&self) {
        self.flags.draining.store(true, Ordering::SeqCst);
        self.flags.notify.notify_waiters();
    }

    /// Stops everything: loops exit, interrupt checks fail, and what the library registered to
    /// run at the stop (closing in-memory queues) runs, on this thread.
    pub fn stop(&self) {
        self.flags.draining.store(true, Ordering::SeqCst);
        // Set before the hooks are taken: a hook registered from now on runs at once.
        self.flags.stopping.store(true, Ordering::SeqCst);
        self.flags.notify.notify_waiters();
        let hooks = std::mem::take(&mut *self.hooks());
        for hook in hooks {
            hook();
        }
    }

    /// Runs `hook` when [`Shutdown::stop`] is first called (at once if it was already), so a
    /// component whose end is a single action (closing queues) needs no thread to wait for it.
    pub(crate) fn on_stop(&self, hook: impl FnOnce() + Send + 'static) {
        let mut hooks = self.hooks();
        if self.is_stopping() {
            drop(hooks);
            hook();
        } else {
            hooks.push(Box::new(hook));
        }
    }

    fn hooks(&self) -> std::sync::MutexGuard<'_, Vec<Hook>> {
        self.flags
            .on_stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// True once [`Shutdown::drain`] or [`Shutdown::stop`] was called.
    pub fn is_draining(&self) -> bool {
        self.flags.draining.load(Ordering::Relaxed)
    }

    /// True once [`Shutdown::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.flags.stopping.load(Ordering::Relaxed)
    }

    /// Completes when [`Shutdown::drain`] (or stop) is called.
    pub async fn draining(&self) {
        loop {
            let notified = self.flags.notify.notified();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Completes when [`Shutdown::stop`] is called.
    pub async fn stopped(&self) {
        loop {
            let notified = self.flags.notify.notified();
            if self.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    /// Wires SIGTERM and SIGINT to this handle: the first signal starts the drain and, after
    /// `drain`, stops; a second signal stops at once.
    pub fn on_signals(&self, drain: Duration) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut iter = signals.forever();
                if iter.next().is_none() {
                    return;
                }
                tracing::info!(
                    drain_ms = drain.as_millis() as u64,
                    "signal received, draining"
                );
                this.drain();
                let stopper = this.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(drain);
                    stopper.stop();
                });
                if iter.next().is_some() {
                    tracing::info!("second signal, stopping now");
                    this.stop();
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake() {
        let s = Shutdown::new();
        let w = tokio::spawn({
            let s = s.clone();
            async move { s.stopped().await }
        });
        tokio::task::yield_now().await;
        assert!(!s.is_draining());
        s.stop();
        w.await.unwrap();
        assert!(s.is_draining() && s.is_stopping());
    }

    #[test]
    fn stop_hooks_run_once_whenever_they_were_registered() {
        let s = Shutdown::new();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = |runs: &Arc<std::sync::atomic::AtomicUsize>| {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        };
        s.on_stop(count(&runs));
        s.drain();
        assert_eq!(runs.load(Ordering::SeqCst), 0, "a drain is not a stop");
        s.stop();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        s.stop();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "hooks run once");
        s.on_stop(count(&runs));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "registered after the stop: runs at once"
        );
    }
}
