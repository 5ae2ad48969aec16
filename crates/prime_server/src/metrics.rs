//! Prometheus metrics: the components' counters, exposed in Prometheus's text format.
//!
//! The components count with their own atomics ([`crate::stats`]); a scrape reads them, so
//! metrics cost nothing on the request path beyond those counts. A [`Metrics`] is one process's
//! registry: add what the process runs ([`Metrics::front`], [`Metrics::proxy`],
//! [`Metrics::workers`]), then serve [`Metrics::render`] (the HTTP fronts answer a path with it,
//! and [`serve`] runs a listener of its own for the daemons without an HTTP port).
//!
//! Names: `prime_server_<component>_<counter>` with `_total` for counts, `_seconds` histograms,
//! and a `front` or `stage` label. See the README's "Observability" section for the list.

use crate::shutdown::Shutdown;
use crate::stats::{Field, HistogramCounts, StageStats, WorkerStats, BUCKETS_US};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
use std::sync::Arc;

/// The prefix of every metric of ours.
pub const PREFIX: &str = "prime_server";

/// One process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with the process's own metrics (`process_*`: CPU, memory, open descriptors)
    /// and `prime_server_build_info` (version and protocol version, value 1).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                format!("{PREFIX}_build_info"),
                "The build of prime_server this process runs (value 1).",
            ),
            &["version", "protocol_version"],
        )
        .expect("valid metric");
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), &crate::wire::VERSION.to_string()])
            .set(1);
        let _ = registry.register(Box::new(info));
        Metrics { registry }
    }

    /// Adds a front server's counters, labelled `front="NAME"`, and its requests in flight.
    pub fn front(&self, name: &str, server: &crate::server::Server) {
        let server = server.clone();
        self.add(Snapshots::new("front", "front", name, move || {
            let s = server.stats().snapshot();
            let mut fields = s.fields();
            fields.push(Field {
                name: "in_flight",
                help: "Requests in flight now (submitted, not answered yet).",
                gauge: true,
                value: server.in_flight() as u64,
            });
            (fields, s.histograms())
        }));
    }

    /// Adds a stage's balancer counters (its proxy's, or its in-memory queue's), labelled
    /// `stage="NAME"`.
    pub fn proxy(&self, stage: &str, stats: Arc<StageStats>) {
        self.add(Snapshots::new("proxy", "stage", stage, move || {
            let s = stats.snapshot();
            (s.fields(), s.histograms())
        }));
    }

    /// Adds the counters of a stage's workers in this process, summed, labelled `stage="NAME"`.
    pub fn workers(&self, stage: &str, stats: Vec<Arc<WorkerStats>>) {
        self.add(Snapshots::new("worker", "stage", stage, move || {
            let mut sum = crate::stats::WorkerCounts::default();
            for s in &stats {
                sum.add(&s.snapshot());
            }
            (sum.fields(), sum.histograms())
        }));
    }

    /// Adds the counters of a zmq context: `prime_server_zmq_refused_peers_total`, the peers its
    /// CURVE sockets refused (unknown keys, wrong server keys, no CURVE).
    pub fn zmq(&self, ctx: &crate::transport::Context) {
        let ctx = ctx.clone();
        self.add(Snapshots::unlabelled("zmq", move || {
            vec![Field {
                name: "refused_peers",
                help: "Peers refused by this process's CURVE sockets: keys not on the allow-list, \
                       peers expecting another server key, peers without CURVE.",
                gauge: false,
                value: ctx.refused_peers(),
            }]
        }));
    }

    /// Registers any other collector (a front's HTTP metrics, an application's own).
    pub fn register(&self, collector: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "metrics: a collector was not registered");
        }
    }

    fn add(&self, s: Snapshots) {
        self.register(Box::new(s));
    }

    /// Every metric now, in Prometheus's text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What an HTTP request was for, as the metrics tell routes apart (a bounded set: a label per
/// path would grow without end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Anything sent into the pipeline.
    App,
    /// The health path.
    Health,
    /// The metrics path.
    Metrics,
}

const ROUTES: [&str; 3] = ["app", "health", "metrics"];
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// An HTTP front's answers: `prime_server_http_requests_total{front, route, method, code}`
/// (`code` is the status class, `2xx`…). The counters are made when the front starts, so
/// counting one answer is one atomic addition.
pub struct HttpMetrics {
    counters: Vec<prometheus::IntCounter>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpMetrics")
    }
}

impl HttpMetrics {
    /// The counters of front `front`, registered in `metrics`.
    pub fn new(metrics: &Metrics, front: &str) -> Arc<HttpMetrics> {
        let opts = prometheus::Opts::new(
            format!("{PREFIX}_http_requests_total"),
            "HTTP requests answered, by route (app, health, metrics), method and status class.",
        )
        .const_label("front", front);
        let vec = prometheus::IntCounterVec::new(opts, &["route", "method", "code"])
            .expect("valid metric");
        let mut counters = Vec::with_capacity(ROUTES.len() * METHODS.len() * CLASSES.len());
        for route in ROUTES {
            for method in METHODS {
                for class in CLASSES {
                    counters.push(vec.with_label_values(&[route, method, class]));
                }
            }
        }
        metrics.register(Box::new(vec));
        Arc::new(HttpMetrics { counters })
    }

    /// Counts one answer.
    pub fn count(&self, route: Route, method: &http::Method, status: u16) {
        // In METHODS' order; a match on the method's own tag, not a string comparison.
        let m = match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::POST => 2,
            http::Method::PUT => 3,
            http::Method::DELETE => 4,
            http::Method::OPTIONS => 5,
            http::Method::PATCH => 6,
            _ => 7,
        };
        let c = usize::from(status / 100).clamp(1, 5) - 1;
        self.counters[(route as usize * METHODS.len() + m) * CLASSES.len() + c].inc();
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a collector reads at each scrape: its counters and its histograms.
type Reading = (
    Vec<Field>,
    Vec<(&'static str, &'static str, HistogramCounts)>,
);

type Read = dyn Fn() -> Reading + Send + Sync;

/// A collector over a component's counters, read at each scrape.
struct Snapshots {
    component: &'static str,
    /// The one label of every series (`stage="parse"`), if any.
    label: Option<(&'static str, String)>,
    read: Box<Read>,
    descs: Vec<Desc>,
}

impl Snapshots {
    fn new(
        component: &'static str,
        label: &'static str,
        value: &str,
        read: impl Fn() -> Reading + Send + Sync + 'static,
    ) -> Snapshots {
        Snapshots::with_label(component, Some((label, value.to_string())), read)
    }

    fn unlabelled(
        component: &'static str,
        read: impl Fn() -> Vec<Field> + Send + Sync + 'static,
    ) -> Snapshots {
        Snapshots::with_label(component, None, move || (read(), Vec::new()))
    }

    fn with_label(
        component: &'static str,
        label: Option<(&'static str, String)>,
        read: impl Fn() -> Reading + Send + Sync + 'static,
    ) -> Snapshots {
        let (fields, histograms) = read();
        let labels: std::collections::HashMap<String, String> = label
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut descs = Vec::new();
        for f in &fields {
            let name = metric_name(component, f.name, f.gauge);
            descs.extend(Desc::new(name, f.help.into(), vec![], labels.clone()));
        }
        for (name, help, _) in &histograms {
            let name = format!("{PREFIX}_{component}_{name}");
            descs.extend(Desc::new(name, (*help).into(), vec![], labels.clone()));
        }
        Snapshots {
            component,
            label,
            read: Box::new(read),
            descs,
        }
    }

    fn label(&self) -> Vec<proto::LabelPair> {
        self.label
            .iter()
            .map(|(name, value)| {
                let mut l = proto::LabelPair::default();
                l.set_name((*name).into());
                l.set_value(value.clone());
                l
            })
            .collect()
    }
}

/// `prime_server_proxy_received_total`, `prime_server_proxy_queued`.
fn metric_name(component: &str, field: &str, gauge: bool) -> String {
    if gauge {
        format!("{PREFIX}_{component}_{field}")
    } else {
        format!("{PREFIX}_{component}_{field}_total")
    }
}

impl Collector for Snapshots {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (fields, histograms) = (self.read)();
        let mut out = Vec::with_capacity(fields.len() + histograms.len());
        for f in fields {
            let mut m = proto::Metric::from_label(self.label());
            let mut family = MetricFamily::default();
            family.set_name(metric_name(self.component, f.name, f.gauge));
            family.set_help(f.help.into());
            if f.gauge {
                let mut g = proto::Gauge::default();
                g.set_value(f.value as f64);
                m.set_gauge(g);
                family.set_field_type(MetricType::GAUGE);
            } else {
                let mut c = proto::Counter::default();
                c.set_value(f.value as f64);
                m.set_counter(c);
                family.set_field_type(MetricType::COUNTER);
            }
            family.set_metric(vec![m]);
            out.push(family);
        }
        for (name, help, counts) in histograms {
            let mut m = proto::Metric::from_label(self.label());
            m.set_histogram(histogram(&counts));
            let mut family = MetricFamily::default();
            family.set_name(format!("{PREFIX}_{}_{name}", self.component));
            family.set_help(help.into());
            family.set_field_type(MetricType::HISTOGRAM);
            family.set_metric(vec![m]);
            out.push(family);
        }
        out
    }
}

/// A histogram's counts in Prometheus's form: cumulative buckets in seconds.
pub fn histogram(counts: &HistogramCounts) -> proto::Histogram {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(BUCKETS_US.len());
    for (bound, n) in BUCKETS_US.iter().zip(counts.buckets) {
        cumulative += n;
        let mut b = proto::Bucket::default();
        b.set_upper_bound(*bound as f64 / 1e6);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    h.set_bucket(buckets);
    h.set_sample_count(counts.count());
    h.set_sample_sum(counts.sum_us as f64 / 1e6);
    h
}

/// Serves `GET /metrics` (any other path: 404) on `addr` until `shutdown` stops: the listener
/// of the daemons that have no HTTP port of their own (`--metrics-listen`). Runs on the current
/// tokio runtime; returns once bound, with the address it got.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics listening");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.stopped() => return,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            let metrics = metrics.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let metrics = metrics.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    };
                    response
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn the_counters_of_each_component_are_rendered_with_their_label_and_kind() {
        let m = Metrics::new();
        let stage = Arc::new(StageStats::default());
        stage.received.fetch_add(5, Ordering::Relaxed);
        stage.queued.store(3, Ordering::Relaxed);
        m.proxy("parse", stage.clone());
        m.proxy("test", Arc::new(StageStats::default()));
        let w = Arc::new(WorkerStats::default());
        w.job_seconds.observe(std::time::Duration::from_millis(2));
        m.workers("parse", vec![w.clone(), w]);
        let text = m.render();
        assert!(
            text.contains("# TYPE prime_server_proxy_received_total counter"),
            "{text}"
        );
        assert!(
            text.contains("prime_server_proxy_received_total{stage=\"parse\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("prime_server_proxy_received_total{stage=\"test\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE prime_server_proxy_queued gauge"),
            "{text}"
        );
        assert!(
            text.contains("prime_server_proxy_queued{stage=\"parse\"} 3"),
            "{text}"
        );
        assert!(text.contains("# HELP prime_server_proxy_queued Jobs waiting for a worker now."));
        // Two workers' histograms, summed: 2 ms lands in the 2.5 ms bucket.
        assert!(
            text.contains(
                "prime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"0.0025\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("prime_server_worker_job_seconds_count{stage=\"parse\"} 2"));
        assert!(text.contains("prime_server_build_info{"), "{text}");
        m.zmq(&crate::transport::Context::new());
        let text = m.render();
        assert!(
            text.contains("\nprime_server_zmq_refused_peers_total 0\n"),
            "{text}"
        );
        let http = HttpMetrics::new(&m, "front");
        http.count(Route::App, &http::Method::GET, 200);
        http.count(Route::App, &http::Method::GET, 204);
        http.count(
            Route::Health,
            &http::Method::from_bytes(b"BREW").unwrap(),
            503,
        );
        let text = m.render();
        let line = |s: &str| text.lines().any(|l| l == s);
        assert!(
            line(
                r#"prime_server_http_requests_total{code="2xx",front="front",method="GET",route="app"} 2"#
            ),
            "{text}"
        );
        assert!(
            line(
                r#"prime_server_http_requests_total{code="5xx",front="front",method="other",route="health"} 1"#
            ),
            "{text}"
        );
    }
}
