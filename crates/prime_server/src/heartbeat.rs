//! Heartbeat timing, shared by proxies and workers: both sides must agree on it, so it is
//! neither's to own.

use std::time::Duration;

/// Heartbeat timing shared by proxies and workers.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// How often an idle worker says it is alive.
    pub interval: Duration,
    /// How many intervals of silence make a worker dead.
    pub liveness: u32,
}

impl Default for Heartbeat {
    /// The ZeroMQ Majordomo defaults: 2.5 s, 3 misses.
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_millis(2500),
            liveness: 3,
        }
    }
}

impl Heartbeat {
    /// How long a worker may stay silent before it counts as dead.
    pub fn expiry(&self) -> Duration {
        self.interval * self.liveness.max(1)
    }
}
