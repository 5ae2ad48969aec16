//! Graceful shutdown: the phases every loop watches, and the timing SIGTERM/SIGINT gives them.
//!
//! A process goes through three phases, as load balancers expect (DESIGN.md §3, rule 6):
//! 1. **Draining** ([`Shutdown::drain`]): everything goes on as before, new connections
//!    included, but health checks answer 503 (so a balancer moves traffic away) and answers say
//!    `Connection: close`.
//! 2. **Closing** ([`Shutdown::close`]), after the drain time: fronts stop accepting
//!    connections and refuse new requests (503); what is in flight gets the shutdown time to
//!    finish.
//! 3. **Stopping** ([`Shutdown::stop`]): loops exit, interrupt checks fail, and whatever is
//!    still open is answered 503.
//!
//! Components take a [`Shutdown`] as a parameter, so a test can move it through the phases by
//! hand and a daemon can wire it to SIGTERM/SIGINT with [`Shutdown::on_signals`], which also
//! ends each phase early once a process with client fronts is idle: no client connection open
//! and no zmq-front request in flight. Blocking loops wait on [`Shutdown::wake_fd`] beside
//! their sockets, so they see each phase at once; [`POLL_INTERVAL`] bounds their waits anyway.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a blocking loop waits before it looks at the shutdown flag again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long the daemons keep serving after SIGTERM/SIGINT while health checks answer 503
/// (`drain_seconds`): the C++ daemons' default, which with [`DEFAULT_SHUTDOWN`] fits in the
/// 30 s a Kubernetes pod is given to stop by default.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(28);

/// How long the daemons give the requests still in flight after the drain
/// (`shutdown_seconds`): Valhalla's `quiesce(28, 1)`.
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(1);

// The phases, in order; a new handle is in none (0).
const DRAINING: u8 = 1;
const CLOSING: u8 = 2;
const STOPPING: u8 = 3;

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Flags {
    phase: AtomicU8,
    notify: Notify,
    /// Run once by the first [`Shutdown::stop`].
    on_stop: Mutex<Vec<Hook>>,
    /// Written at every phase change, for loops that wait on descriptors.
    wake: OnceLock<Option<OwnedFd>>,
    /// Client fronts serving (accept loops, zmq fronts): with none, no phase ends early.
    fronts: AtomicUsize,
    /// What keeps the process busy: client connections open, zmq-front requests in flight.
    busy: AtomicUsize,
    idle: Notify,
}

/// How long each phase after the first signal lasts at most (see [`Shutdown::on_signals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// The drain: keep accepting and serving, health checks answer 503.
    pub drain: Duration,
    /// Then: accept nothing new, let what is in flight finish.
    pub shutdown: Duration,
}

impl Default for Grace {
    /// [`DEFAULT_DRAIN`], then [`DEFAULT_SHUTDOWN`].
    fn default() -> Self {
        Grace {
            drain: DEFAULT_DRAIN,
            shutdown: DEFAULT_SHUTDOWN,
        }
    }
}

impl From<Duration> for Grace {
    /// A drain of `drain`, and no time after it: what is still in flight then is answered 503.
    fn from(drain: Duration) -> Self {
        Grace {
            drain,
            shutdown: Duration::ZERO,
        }
    }
}

impl Grace {
    /// Parses the C++ daemons' drain argument: `DRAIN` or `DRAIN,SHUTDOWN`, whole seconds.
    /// Returns the drain and, if given, the shutdown time.
    ///
    /// ```
    /// use prime_server::shutdown::Grace;
    /// use std::time::Duration;
    /// assert_eq!(Grace::parse_seconds("10"), Ok((Duration::from_secs(10), None)));
    /// assert_eq!(
    ///     Grace::parse_seconds("10,5"),
    ///     Ok((Duration::from_secs(10), Some(Duration::from_secs(5))))
    /// );
    /// assert!(Grace::parse_seconds("ten").is_err());
    /// ```
    pub fn parse_seconds(s: &str) -> Result<(Duration, Option<Duration>), String> {
        let secs = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| {
                    format!("expected SECONDS or DRAIN,SHUTDOWN (whole seconds), got {s:?}")
                })
        };
        match s.split_once(',') {
            None => Ok((secs(s)?, None)),
            Some((d, sh)) => Ok((secs(d)?, Some(secs(sh)?))),
        }
    }
}

/// What a component does once the drain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDrain {
    /// Go on serving until the stop: a part of a one-process pipeline, whose front decides when
    /// the drain is over.
    #[default]
    ServeUntilStop,
    /// Finish what it holds and end by itself: a process of a multi-process deployment (a
    /// proxy once no job is queued or held, a worker after leaving its proxy).
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
            .field("closing", &self.is_closing())
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

/// Keeps a process busy while it lives (see [`Shutdown::busy`]).
pub(crate) struct Busy {
    flags: Arc<Flags>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.flags.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.flags.idle.notify_waiters();
        }
    }
}

impl Shutdown {
    /// A new handle, in none of the phases.
    pub fn new() -> Self {
        Self::default()
    }

    fn enter(&self, phase: u8) -> bool {
        let before = self.flags.phase.fetch_max(phase, Ordering::SeqCst);
        if before >= phase {
            return false;
        }
        self.flags.notify.notify_waiters();
        if let Some(Some(fd)) = self.flags.wake.get() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte write from a live buffer to the eventfd this handle owns.
            let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
        true
    }

    /// Enters the drain: everything is served as before, but health checks report not-ready.
    pub fn drain(&self) {
        self.enter(DRAINING);
    }

    /// Ends the drain: fronts stop accepting connections and refuse new requests (503); what is
    /// in flight goes on. Implies [`Shutdown::drain`].
    pub fn close(&self) {
        self.enter(CLOSING);
    }

    /// Stops everything: loops exit, interrupt checks fail, and what the library registered to
    /// run at the stop (closing in-memory queues) runs, on this thread.
    pub fn stop(&self) {
        // The phase is set before the hooks are taken: a hook registered from now on runs at
        // once.
        self.enter(STOPPING);
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

    fn phase(&self) -> u8 {
        self.flags.phase.load(Ordering::Relaxed)
    }

    /// True once [`Shutdown::drain`] (or a later phase) was entered.
    pub fn is_draining(&self) -> bool {
        self.phase() >= DRAINING
    }

    /// True once [`Shutdown::close`] (or [`Shutdown::stop`]) was called.
    pub fn is_closing(&self) -> bool {
        self.phase() >= CLOSING
    }

    /// True once [`Shutdown::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.phase() >= STOPPING
    }

    async fn reached(&self, phase: u8) {
        loop {
            let notified = self.flags.notify.notified();
            if self.phase() >= phase {
                return;
            }
            notified.await;
        }
    }

    /// Completes when the drain starts (or a later phase).
    pub async fn draining(&self) {
        self.reached(DRAINING).await
    }

    /// Completes when the closing phase starts (or the stop).
    pub async fn closing(&self) {
        self.reached(CLOSING).await
    }

    /// Completes when [`Shutdown::stop`] is called.
    pub async fn stopped(&self) {
        self.reached(STOPPING).await
    }

    /// An eventfd written at every phase change, for a blocking loop to watch (edge-triggered)
    /// beside its sockets so that it sees the phase at once; `None` if the system gives none
    /// (the loop then sees it within its bounded wait).
    pub fn wake_fd(&self) -> Option<RawFd> {
        let fd = self.flags.wake.get_or_init(|| {
            // SAFETY: plain system call; the descriptor it returns is owned from here on.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        });
        fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// A client front of this process is serving: from now on, [`Shutdown::on_signals`] ends
    /// a phase early once nothing keeps the process [`busy`](Shutdown::busy).
    pub(crate) fn front_started(&self) {
        self.flags.fronts.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks the process busy (a client connection open, a request in flight) until the
    /// guard is dropped.
    pub(crate) fn busy(&self) -> Busy {
        self.flags.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            flags: self.flags.clone(),
        }
    }

    /// Whether the process serves clients and nothing keeps it busy: no client connection is
    /// open and no zmq-front request is in flight.
    pub fn is_idle(&self) -> bool {
        self.flags.fronts.load(Ordering::Acquire) > 0
            && self.flags.busy.load(Ordering::Acquire) == 0
    }

    /// Completes once [`Shutdown::is_idle`]; never for a process without client fronts (its
    /// parts end by themselves, or at the stop).
    pub async fn idle(&self) {
        loop {
            let notified = self.flags.idle.notified();
            if self.is_idle() {
                return;
            }
            if self.flags.fronts.load(Ordering::Acquire) == 0 {
                // Not a front's process (yet): look again now and then, in case one starts.
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            } else {
                notified.await;
            }
        }
    }

    /// Wires SIGTERM and SIGINT to this handle: the first signal starts the drain; after
    /// `grace.drain` the closing phase begins, and after `grace.shutdown` more the stop. A
    /// process with client fronts moves on as soon as it is idle (no client connection open, no
    /// zmq-front request in flight): Ctrl-C on an idle daemon ends it at once. A second signal
    /// stops at once. Accepts a plain [`Duration`] (the drain, no shutdown time) for
    /// compatibility.
    pub fn on_signals(&self, grace: impl Into<Grace>) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let grace = grace.into();
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
                    drain_ms = grace.drain.as_millis() as u64,
                    shutdown_ms = grace.shutdown.as_millis() as u64,
                    idle = this.is_idle(),
                    "signal received, draining (a second signal stops at once)"
                );
                this.drain();
                let timer = this.clone();
                let spawned = std::thread::Builder::new()
                    .name("shutdown-timer".into())
                    .spawn(move || timer.run_phases(grace));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot time the drain: stopping now");
                    this.stop();
                }
                if iter.next().is_some() {
                    tracing::info!("second signal, stopping now");
                    this.stop();
                }
            })?;
        Ok(())
    }

    /// The drain, then the closing phase, each for its time at most (less once idle), then the
    /// stop.
    fn run_phases(&self, grace: Grace) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot time the drain: stopping now");
                self.stop();
                return;
            }
        };
        rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(grace.drain) => {}
                _ = self.idle() => tracing::info!("idle: no client connection, nothing in flight: ending the drain"),
                _ = self.closing() => {}
            }
            if !self.is_closing() {
                tracing::info!(
                    shutdown_ms = grace.shutdown.as_millis() as u64,
                    "drain over: accepting nothing new, finishing what is in flight"
                );
            }
            self.close();
            tokio::select! {
                _ = tokio::time::sleep(grace.shutdown) => {}
                _ = self.idle() => {}
                _ = self.stopped() => {}
            }
        });
        self.stop();
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
        s.close();
        assert_eq!(runs.load(Ordering::SeqCst), 0, "closing is not a stop");
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

    #[test]
    fn phases_only_move_forward_and_imply_the_earlier_ones() {
        let s = Shutdown::new();
        let fd = s.wake_fd().expect("an eventfd");
        s.close();
        assert!(s.is_draining() && s.is_closing() && !s.is_stopping());
        s.drain();
        assert!(s.is_closing(), "a drain after the close changes nothing");
        let mut n = [0u8; 8];
        // SAFETY: an 8-byte read into a live buffer from the eventfd the handle owns.
        let r = unsafe { libc::read(fd, n.as_mut_ptr().cast(), n.len()) };
        assert_eq!(r, 8, "the wake descriptor was written");
        assert_eq!(
            u64::from_ne_bytes(n),
            1,
            "once: the drain came with the close"
        );
    }

    #[tokio::test]
    async fn idle_needs_a_front_and_nothing_busy() {
        let s = Shutdown::new();
        assert!(!s.is_idle(), "no front: never idle");
        s.front_started();
        let busy = s.busy();
        assert!(!s.is_idle());
        let w = tokio::spawn({
            let s = s.clone();
            async move { s.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!w.is_finished());
        drop(busy);
        w.await.unwrap();
        assert!(s.is_idle());
    }
}
