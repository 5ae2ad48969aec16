//! Counters of the components, readable while they run.
//!
//! Each component owns its counters and bumps them as it goes; everyone else reads a
//! [`snapshot`](ServerStats::snapshot): plain numbers, so no reader can change a count. Each
//! counter is read on its own (a snapshot is not one atomic picture of all of them), which is
//! what monitoring needs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares a set of counters (atomics the library bumps) and its snapshot type (plain numbers
/// anyone may read), with one doc line per counter shared by both.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $name:ident => $snapshot:ident {
            $( $(#[$field_meta:meta])* $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$field_meta])* pub(crate) $field: AtomicU64, )*
        }

        #[doc = concat!("The counters of a [`", stringify!($name), "`] at one moment.")]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $snapshot {
            $( $(#[$field_meta])* pub $field: u64, )*
        }

        impl $name {
            /// The counters now.
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $field: self.$field.load(Ordering::Relaxed), )*
                }
            }
        }
    };
}

counters! {
    /// Counters of one worker, readable while it runs.
    WorkerStats => WorkerCounts {
        /// Jobs taken in.
        jobs,
        /// Jobs that arrived while this worker had not said Ready: would mean the proxy handed
        /// a job to a busy worker. Always 0 with a correct proxy.
        jobs_while_busy,
        /// Jobs answered through the loopback.
        replied,
        /// Jobs forwarded to the next stage.
        forwarded,
        /// Work functions that failed, panicked or were interrupted.
        failed,
        /// Jobs skipped because they were already cancelled or past their deadline on arrival.
        skipped,
        /// Messages that were not valid protocol messages, dropped.
        malformed,
        /// Replies that could not reach their server.
        undeliverable,
        /// Work function outputs with a frame over the message limit, answered 500 instead.
        oversized,
    }
}

counters! {
    /// Counters of the server core, readable while it runs.
    ServerStats => ServerCounts {
        /// Requests submitted.
        submitted,
        /// Replies delivered.
        replied,
        /// Requests answered 504.
        timeouts,
        /// Requests answered 503 (proxy queue full, in-flight limit, unreachable stage,
        /// shutdown).
        overloaded,
        /// Requests whose client went away before the answer.
        cancelled,
        /// Replies that came after the request was answered or cancelled, dropped.
        late,
        /// Messages that were not valid protocol messages, dropped.
        malformed,
        /// Requests answered 503 because the first stage's proxy died or restarted while they
        /// were open, and they were not answered within the grace that followed.
        orphaned,
        /// Replies whose token does not match the request's: a peer answering for a request it
        /// never held. Dropped (the request stays open for its real answer); not counted
        /// `malformed`.
        forged,
        /// Connections of peers (workers) to the loopback and interrupt sockets, counted once
        /// they have lasted half a second (a peer refused at its handshake is counted as a
        /// refused peer instead).
        peers_connected,
        /// Those connections that closed since.
        peers_disconnected,
    }
}

counters! {
    /// Counters of one stage's balancer, readable while it runs: a proxy's, or the queue of an
    /// in-memory stage (which has no workers to expire or redeliver from).
    StageStats => StageCounts {
        /// Jobs received from upstream.
        received,
        /// Jobs handed to a worker.
        dispatched,
        /// Jobs refused because the queue was full.
        rejected,
        /// Messages that were not valid protocol messages, dropped.
        malformed,
        /// Workers the proxy heard of for the first time (a Ready or a heartbeat from a worker it
        /// did not know, which includes every worker again after the proxy restarts).
        joined,
        /// Workers that left: said Disconnect, went silent or could not be reached. `joined`
        /// less `left` is the number of workers the proxy knows now.
        left,
        /// Workers dropped for silence or because they could not be reached (counted in `left`
        /// too).
        expired,
        /// Jobs handed to another worker after theirs died.
        redelivered,
        /// Jobs answered 500 because every worker that had them died.
        abandoned,
        /// Jobs waiting for a worker now.
        queued,
        /// Idle workers now.
        idle,
        /// Connections of senders (fronts, the previous stage's workers) to the proxy's
        /// upstream socket, counted once they have lasted half a second.
        upstream_connected,
        /// Those connections that closed since.
        upstream_disconnected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_every_counter() {
        let s = StageStats::default();
        s.received.fetch_add(3, Ordering::Relaxed);
        s.idle.store(2, Ordering::Relaxed);
        assert_eq!(
            s.snapshot(),
            StageCounts {
                received: 3,
                idle: 2,
                ..StageCounts::default()
            }
        );
    }
}
