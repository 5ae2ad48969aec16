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
            $( $(#[doc = $doc:literal])* $field:ident, )*
        }
        $(gauges = [$($gauge:ident),*];)?
        $(histograms { $( $(#[doc = $hdoc:literal])* $hist:ident, )* })?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub(crate) $field: AtomicU64, )*
            $($( $(#[doc = $hdoc])* pub(crate) $hist: Histogram, )*)?
        }

        #[doc = concat!("The counters of a [`", stringify!($name), "`] at one moment.")]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $snapshot {
            $( $(#[doc = $doc])* pub $field: u64, )*
            $($( $(#[doc = $hdoc])* pub $hist: HistogramCounts, )*)?
        }

        impl $name {
            /// The counters now.
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $field: self.$field.load(Ordering::Relaxed), )*
                    $($( $hist: self.$hist.snapshot(), )*)?
                }
            }
        }

        impl $snapshot {
            /// Every counter with its name, its doc line and whether it is a gauge (a level
            /// that goes up and down) rather than a count that only grows: what a metrics
            /// exporter needs.
            pub fn fields(&self) -> Vec<Field> {
                const GAUGES: &[&str] = &[$($(stringify!($gauge)),*)?];
                vec![$(Field {
                    name: stringify!($field),
                    help: concat!($($doc),*).trim_ascii(),
                    gauge: GAUGES.contains(&stringify!($field)),
                    value: self.$field,
                }),*]
            }

            /// Every histogram with its name and doc line.
            pub fn histograms(&self) -> Vec<(&'static str, &'static str, HistogramCounts)> {
                vec![$($( (stringify!($hist), concat!($($hdoc),*).trim_ascii(), self.$hist), )*)?]
            }

            /// Adds `other`'s counts to these (the workers of one pool, summed).
            pub fn add(&mut self, other: &$snapshot) {
                $( self.$field += other.$field; )*
                $($( self.$hist.add(&other.$hist); )*)?
            }
        }
    };
}

/// The upper bounds of a [`Histogram`]'s buckets, in microseconds: 100 µs to 60 s, about three
/// to a decade (what a request or a job may take, cheap or not).
pub const BUCKETS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A distribution of durations in fixed buckets ([`BUCKETS_US`]), counted with atomics: an
/// observation costs three relaxed additions.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last counts those over the largest bound.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A [`Histogram`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistogramCounts {
    /// Observations per bucket of [`BUCKETS_US`] (not cumulative), then those over the largest.
    pub buckets: [u64; BUCKETS_US.len() + 1],
    /// The sum of the observations, in microseconds.
    pub sum_us: u64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Counts one duration given in microseconds (from two [`wire::now_us`](crate::wire::now_us)
    /// readings the caller makes anyway).
    pub fn observe_us(&self, us: u64) {
        // From the smallest bound up: most requests and jobs end in the first buckets.
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

impl HistogramCounts {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds `other`'s observations to these.
    pub fn add(&mut self, other: &HistogramCounts) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }
}

/// One counter of a snapshot, named (see `ServerCounts::fields` and the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's name (`submitted`, `queued`, …).
    pub name: &'static str,
    /// Its doc line.
    pub help: &'static str,
    /// A level that goes up and down, not a count that only grows.
    pub gauge: bool,
    /// Its value.
    pub value: u64,
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
        /// Work functions that failed, panicked or were interrupted (all three).
        failed,
        /// Of `failed`: work functions stopped by an interrupt (client gone, deadline, server
        /// gone, shutdown).
        interrupted,
        /// Of `failed`: work functions that panicked (answered 500).
        panicked,
        /// Jobs skipped because they were already cancelled or past their deadline on arrival.
        skipped,
        /// Messages that were not valid protocol messages, dropped.
        malformed,
        /// Replies that could not reach their server.
        undeliverable,
        /// Work function outputs with a frame over the message limit, answered 500 instead.
        oversized,
    }
    histograms {
        /// How long each job took, from its arrival at the worker to its answer or forward.
        job_seconds,
        /// How long the worker waited for each job, from asking for work to receiving it.
        wait_seconds,
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
        /// Requests answered 503 at once because `max_in_flight` requests were open.
        in_flight_refused,
        /// Requests answered 503 because a stage's queue was full (its proxy refused the job).
        queue_full,
        /// Requests answered 503 at once because the front was shutting down: sent after the
        /// drain time (while what was in flight finished), or during the drain once the first
        /// stage had no proxy or no worker left.
        draining_refused,
        /// Client connections open now.
        connections,
        /// Client connections refused because `max_connections` were open.
        connections_refused,
        /// Connections of peers (workers) to the loopback and interrupt sockets, counted once
        /// they have lasted half a second (a peer refused at its handshake is counted as a
        /// refused peer instead).
        peers_connected,
        /// Those connections that closed since.
        peers_disconnected,
    }
    gauges = [connections];
    histograms {
        /// How long each request took, from its submission to its answer.
        request_seconds,
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
        /// Workers known now, idle or busy (busy = workers − idle).
        workers,
        /// Connections of senders (fronts, the previous stage's workers) to the proxy's
        /// upstream socket, counted once they have lasted half a second.
        upstream_connected,
        /// Those connections that closed since.
        upstream_disconnected,
        /// Jobs received while the proxy knew no worker at all (they wait for one, up to their
        /// deadline).
        received_without_workers,
    }
    gauges = [queued, idle, workers];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_duration_in_the_first_bucket_that_holds_it() {
        use std::time::Duration;
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // on a bound: that bucket
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(3600)); // over the largest bound
        let c = h.snapshot();
        assert_eq!((c.buckets[0], c.buckets[1]), (1, 1));
        assert_eq!(c.buckets[BUCKETS_US.len()], 1);
        assert_eq!(c.count(), 3);
        assert_eq!(c.sum_us, 201 + 3_600_000_000);
        let mut sum = c;
        sum.add(&c);
        assert_eq!(sum.count(), 6);
    }

    #[test]
    fn every_bound_is_in_its_bucket_and_one_more_in_the_next() {
        for (i, &bound) in BUCKETS_US.iter().enumerate() {
            let h = Histogram::default();
            h.observe_us(bound);
            h.observe_us(bound + 1);
            let c = h.snapshot();
            assert_eq!((c.buckets[i], c.buckets[i + 1]), (1, 1), "bound {bound}");
        }
        let h = Histogram::default();
        h.observe_us(0);
        h.observe_us(u64::MAX);
        let c = h.snapshot();
        assert_eq!((c.buckets[0], c.buckets[BUCKETS_US.len()]), (1, 1));
    }

    #[test]
    fn fields_name_every_counter_with_its_doc_line_and_kind() {
        let s = StageStats::default();
        s.queued.store(4, Ordering::Relaxed);
        let fields = s.snapshot().fields();
        let queued = fields.iter().find(|f| f.name == "queued").unwrap();
        assert_eq!((queued.value, queued.gauge), (4, true));
        assert_eq!(queued.help, "Jobs waiting for a worker now.");
        let received = fields.iter().find(|f| f.name == "received").unwrap();
        assert!(!received.gauge);
        let w = WorkerStats::default().snapshot();
        let names: Vec<&str> = w.histograms().iter().map(|h| h.0).collect();
        assert_eq!(names, ["job_seconds", "wait_seconds"]);
    }

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
