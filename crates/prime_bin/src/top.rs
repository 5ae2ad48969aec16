//! `prime_top`'s view: scrape every process of a deployment, and turn two scrapes an interval
//! apart into one table per front, per stage and per process.
//!
//! Rates are counter differences over the time between a process's two scrapes (a counter that
//! went down is a restarted process: its new value counts from zero, as in Prometheus); p50/p99
//! come from the histogram buckets' differences, so they are the last interval's, not the
//! process lifetime's. A stage's "busy" is the job seconds its workers did per second: the
//! average number of workers busy over the interval (a job is counted when it ends, so a long
//! job lands at once). Every number is summed over the processes that expose it: two worker
//! processes of a stage make one row.

use crate::scrape::{self, Exposition, Histogram};
use prime_server::topology::Topology;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A process to scrape: what it is and where its metrics are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What the topology says it is (`front NAME`, `proxy STAGE`, `workers STAGE`), or `None`
    /// for an address given by hand (it is then described by what it exposes).
    pub what: Option<String>,
    /// `host:port` of its metrics listener.
    pub addr: String,
}

/// The metrics listeners a topology names: each front's `metrics_listen`, each stage's
/// `proxy_metrics_listen` and `workers_metrics_listen`.
pub fn targets(t: &Topology) -> Vec<Target> {
    let mut out = Vec::new();
    for s in &t.servers {
        if let Some(a) = &s.metrics_listen {
            out.push(Target {
                what: Some(format!("front {}", s.name)),
                addr: a.clone(),
            });
        }
    }
    for s in &t.stages {
        if let Some(a) = &s.proxy_metrics_listen {
            out.push(Target {
                what: Some(format!("proxy {}", s.name)),
                addr: a.clone(),
            });
        }
        if let Some(a) = &s.workers_metrics_listen {
            out.push(Target {
                what: Some(format!("workers {}", s.name)),
                addr: a.clone(),
            });
        }
    }
    out
}

/// One scrape of one target: when, and what it gave (or why not).
#[derive(Debug, Clone)]
pub struct Scrape {
    /// When the answer came.
    pub at: Instant,
    /// The metrics, or why there are none.
    pub result: Result<Exposition, String>,
}

/// Scrapes every target at once (a thread each), each within `timeout`; in `targets`' order.
pub fn scrape_all(targets: &[Target], timeout: Duration) -> Vec<Scrape> {
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(move || scrape_one(&t.addr, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Scrape {
                    at: Instant::now(),
                    result: Err("scraper panicked".into()),
                })
            })
            .collect()
    })
}

/// One target's scrape.
pub fn scrape_one(addr: &str, timeout: Duration) -> Scrape {
    let result = scrape::fetch(addr, timeout)
        .map_err(|e| format!("unreachable: {e}"))
        .and_then(|got| scrape::parse(&got.body).map_err(|e| format!("bad metrics: {e}")));
    Scrape {
        at: Instant::now(),
        result,
    }
}

/// One front's row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrontRow {
    /// The front's name (its `front` label).
    pub name: String,
    /// Requests submitted per second.
    pub requests: Option<f64>,
    /// Replies delivered per second.
    pub replied: Option<f64>,
    /// Request duration, median and 99th percentile, over the interval (seconds).
    pub p50: Option<f64>,
    /// See `p50`.
    pub p99: Option<f64>,
    /// 503s per second (overloaded: in-flight limit, queue full, unreachable stage, draining;
    /// orphaned).
    pub unavailable: Option<f64>,
    /// 504s per second.
    pub timeouts: Option<f64>,
    /// Requests whose client went away, per second.
    pub gone: Option<f64>,
    /// Client connections open.
    pub connections: Option<f64>,
    /// Requests in flight (when the front exposes `prime_server_front_in_flight`).
    pub in_flight: Option<f64>,
    /// What is missing (a process of the row that did not answer).
    pub note: String,
}

/// One stage's row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageRow {
    /// The stage's name (its `stage` label).
    pub name: String,
    /// Jobs handed to workers per second (a redelivered job counts again).
    pub jobs: Option<f64>,
    /// Jobs waiting for a worker.
    pub queued: Option<f64>,
    /// Idle workers.
    pub idle: Option<f64>,
    /// Workers busy, on average over the interval (job seconds per second).
    pub busy: Option<f64>,
    /// Job duration in the workers, median and 99th percentile, over the interval (seconds).
    pub p50: Option<f64>,
    /// See `p50`.
    pub p99: Option<f64>,
    /// Jobs handed on after their worker died, per second.
    pub redelivered: Option<f64>,
    /// Workers dropped (silent or unreachable), per second.
    pub expired: Option<f64>,
    /// Jobs refused with a full queue, per second.
    pub rejected: Option<f64>,
    /// Jobs answered 500 after every worker that had them died, per second.
    pub abandoned: Option<f64>,
    /// What is missing (a process of the row that did not answer).
    pub note: String,
}

/// One process's row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessRow {
    /// What it is.
    pub what: String,
    /// Its metrics address.
    pub addr: String,
    /// `up`, or why not.
    pub status: String,
    /// Resident memory, bytes.
    pub rss: Option<f64>,
    /// Open file descriptors.
    pub fds: Option<f64>,
}

/// The whole table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The interval the rates cover (the longest of the processes'), `None` on a first scrape.
    pub interval: Option<Duration>,
    /// One row per front.
    pub fronts: Vec<FrontRow>,
    /// One row per stage.
    pub stages: Vec<StageRow>,
    /// One row per process.
    pub processes: Vec<ProcessRow>,
}

/// The samples of one target: this scrape, and the one before when both answered.
struct Pair<'a> {
    cur: &'a Exposition,
    prev: Option<(&'a Exposition, f64)>,
}

impl Pair<'_> {
    /// The growth of a counter per second; `None` without an earlier scrape or the counter.
    fn rate(&self, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
        let (prev, dt) = self.prev?;
        let now = self.cur.sum(name, matching)?;
        let before = prev.sum(name, matching).unwrap_or(0.0);
        let grown = if now < before { now } else { now - before };
        Some(grown / dt)
    }

    /// A histogram's observations since the earlier scrape.
    fn histogram_since(&self, name: &str, matching: &[(&str, &str)]) -> Option<Histogram> {
        let (prev, _) = self.prev?;
        let now = self.cur.histogram(name, matching)?;
        Some(match prev.histogram(name, matching) {
            Some(before) => now.since(&before),
            None => now,
        })
    }
}

/// Adds `b` into `a`, `None` being nothing.
fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Adds histogram `b` into `a` (bucket by bucket, same bounds; other bounds are skipped).
fn add_histogram(a: Option<Histogram>, b: Option<Histogram>) -> Option<Histogram> {
    match (a, b) {
        (Some(mut x), Some(y)) => {
            for (bx, by) in x.buckets.iter_mut().zip(&y.buckets) {
                if bx.0 == by.0 {
                    bx.1 += by.1;
                }
            }
            x.sum += y.sum;
            x.count += y.count;
            Some(x)
        }
        (x, None) => x,
        (None, y) => y,
    }
}

/// What a scrape shows its process to be: `front a`, `proxy parse`, `workers parse, test`…
pub fn describe(e: &Exposition) -> String {
    let mut parts = Vec::new();
    for (role, family, label) in [
        ("front", "prime_server_front_submitted_total", "front"),
        ("proxy", "prime_server_proxy_received_total", "stage"),
        ("workers", "prime_server_worker_jobs_total", "stage"),
    ] {
        let names = e.label_values(family, label);
        if !names.is_empty() {
            parts.push(format!("{role} {}", names.join(",")));
        }
    }
    if parts.is_empty() {
        "(no prime_server metrics)".into()
    } else {
        parts.join(" + ")
    }
}

/// For each scrape, the earlier one of the same process, if any: an all-in-one `prime_serverd`
/// with several fronts serves one registry on each front's `metrics_listen`. Two scrapes are of
/// one process when they show the same fronts and the same start time (two processes never run
/// the same front); worker processes of one stage are told apart, as they must add up.
fn same_process(cur: &[Scrape]) -> Vec<Option<usize>> {
    let key = |s: &Scrape| {
        let e = s.result.as_ref().ok()?;
        let mut fronts = e.label_values("prime_server_front_submitted_total", "front");
        fronts.sort();
        let start = e.sum("process_start_time_seconds", &[]);
        (!fronts.is_empty()).then(|| (fronts, start.map(f64::to_bits)))
    };
    let keys: Vec<_> = cur.iter().map(key).collect();
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let k = k.as_ref()?;
            keys[..i].iter().position(|o| o.as_ref() == Some(k))
        })
        .collect()
}

/// Builds the table from each target's scrape now (`cur`) and the one before (`prev`, same
/// order), listing the topology's fronts and stages first (`fronts`, `stages`), then any others
/// the scrapes show.
pub fn view(
    targets: &[Target],
    prev: Option<&[Scrape]>,
    cur: &[Scrape],
    fronts: &[String],
    stages: &[String],
) -> View {
    let mut pairs = Vec::new();
    let mut interval: Option<Duration> = None;
    let same = same_process(cur);
    for (i, c) in cur.iter().enumerate() {
        let Ok(e) = &c.result else { continue };
        if same[i].is_some() {
            continue;
        }
        let before = prev
            .and_then(|p| p.get(i))
            .and_then(|p| p.result.as_ref().ok().map(|pe| (pe, p.at)));
        let prev = before.and_then(|(pe, at)| {
            let dt = c.at.checked_duration_since(at)?;
            interval = Some(interval.map_or(dt, |i| i.max(dt)));
            (dt.as_secs_f64() > 0.0).then_some((pe, dt.as_secs_f64()))
        });
        pairs.push(Pair { cur: e, prev });
    }
    let down = |what: &str| -> bool {
        targets
            .iter()
            .zip(cur)
            .any(|(t, c)| t.what.as_deref() == Some(what) && c.result.is_err())
    };
    let mut front_names: Vec<String> = fronts.to_vec();
    let mut stage_names: Vec<String> = stages.to_vec();
    for p in &pairs {
        for n in p
            .cur
            .label_values("prime_server_front_submitted_total", "front")
        {
            if !front_names.contains(&n) {
                front_names.push(n);
            }
        }
        for family in [
            "prime_server_proxy_received_total",
            "prime_server_worker_jobs_total",
        ] {
            for n in p.cur.label_values(family, "stage") {
                if !stage_names.contains(&n) {
                    stage_names.push(n);
                }
            }
        }
    }
    let sum_rate = |name: &str, m: &[(&str, &str)]| {
        pairs.iter().fold(None, |acc, p| add(acc, p.rate(name, m)))
    };
    let sum_gauge = |name: &str, m: &[(&str, &str)]| {
        pairs
            .iter()
            .fold(None, |acc, p| add(acc, p.cur.sum(name, m)))
    };
    let sum_histogram = |name: &str, m: &[(&str, &str)]| {
        pairs.iter().fold(None, |acc, p| {
            add_histogram(acc, p.histogram_since(name, m))
        })
    };
    let fronts = front_names
        .iter()
        .map(|name| {
            let m = [("front", name.as_str())];
            let f = |c: &str| sum_rate(&format!("prime_server_front_{c}_total"), &m);
            let h = sum_histogram("prime_server_front_request_seconds", &m);
            FrontRow {
                name: name.clone(),
                requests: f("submitted"),
                replied: f("replied"),
                p50: h.as_ref().and_then(|h| h.quantile(0.5)),
                p99: h.as_ref().and_then(|h| h.quantile(0.99)),
                unavailable: add(f("overloaded"), f("orphaned")),
                timeouts: f("timeouts"),
                gone: f("cancelled"),
                connections: sum_gauge("prime_server_front_connections", &m),
                in_flight: sum_gauge("prime_server_front_in_flight", &m),
                note: if down(&format!("front {name}")) {
                    "front unreachable".into()
                } else {
                    String::new()
                },
            }
        })
        .collect();
    let stages = stage_names
        .iter()
        .map(|name| {
            let m = [("stage", name.as_str())];
            let p = |c: &str| sum_rate(&format!("prime_server_proxy_{c}_total"), &m);
            let h = sum_histogram("prime_server_worker_job_seconds", &m);
            let busy = pairs.iter().fold(None, |acc, p| {
                add(acc, p.rate("prime_server_worker_job_seconds_sum", &m))
            });
            let mut note = Vec::new();
            for part in ["proxy", "workers"] {
                if down(&format!("{part} {name}")) {
                    note.push(format!("{part} unreachable"));
                }
            }
            StageRow {
                name: name.clone(),
                jobs: p("dispatched"),
                queued: sum_gauge("prime_server_proxy_queued", &m),
                idle: sum_gauge("prime_server_proxy_idle", &m),
                busy,
                p50: h.as_ref().and_then(|h| h.quantile(0.5)),
                p99: h.as_ref().and_then(|h| h.quantile(0.99)),
                redelivered: p("redelivered"),
                expired: p("expired"),
                rejected: p("rejected"),
                abandoned: p("abandoned"),
                note: note.join(", "),
            }
        })
        .collect();
    let processes = targets
        .iter()
        .zip(cur)
        .enumerate()
        .map(|(i, (t, c))| {
            let (status, e) = match (&c.result, same[i]) {
                (Ok(e), None) => ("up".to_string(), Some(e)),
                (Ok(e), Some(j)) => (
                    format!("up (the process of {}, counted once)", targets[j].addr),
                    Some(e),
                ),
                (Err(why), _) => (why.clone(), None),
            };
            ProcessRow {
                what: t
                    .what
                    .clone()
                    .or_else(|| e.map(describe))
                    .unwrap_or_else(|| "?".into()),
                addr: t.addr.clone(),
                status,
                rss: e.and_then(|e| e.sum("process_resident_memory_bytes", &[])),
                fds: e.and_then(|e| e.sum("process_open_fds", &[])),
            }
        })
        .collect();
    View {
        interval,
        fronts,
        stages,
        processes,
    }
}

/// A rate, a count or a level: `-` when unknown.
fn number(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v == v.trunc() && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// A duration in seconds, in the unit that reads best.
fn duration(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Bytes in MiB.
fn mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |b| format!("{:.1}M", b / (1024.0 * 1024.0)))
}

/// Lays out rows under a header: the first column left-aligned, the others right-aligned, the
/// last (a note) left-aligned with no padding.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            if i == 0 {
                l += c;
                l += &" ".repeat(pad);
            } else if i == cols - 1 {
                l += "  ";
                l += c;
            } else {
                l += "  ";
                l += &" ".repeat(pad);
                l += c;
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(
        out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(out, r);
    }
}

/// The table as text.
pub fn render(v: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "prime_top  {}  {}",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        match v.interval {
            Some(i) => format!("rates over the last {:.1} s", i.as_secs_f64()),
            None => "first scrape: rates and percentiles after the next one".into(),
        }
    );
    out.push('\n');
    let fronts: Vec<Vec<String>> = v
        .fronts
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                number(f.requests),
                number(f.replied),
                duration(f.p50),
                duration(f.p99),
                number(f.unavailable),
                number(f.timeouts),
                number(f.gone),
                number(f.connections),
                number(f.in_flight),
                f.note.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "FRONT",
            "REQ/S",
            "OK/S",
            "P50",
            "P99",
            "503/S",
            "504/S",
            "GONE/S",
            "CONNS",
            "IN FLIGHT",
            "",
        ],
        &fronts,
    );
    out.push('\n');
    let stages: Vec<Vec<String>> = v
        .stages
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                number(s.jobs),
                number(s.queued),
                number(s.idle),
                number(s.busy),
                duration(s.p50),
                duration(s.p99),
                number(s.redelivered),
                number(s.expired),
                number(s.rejected),
                number(s.abandoned),
                s.note.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "STAGE",
            "JOBS/S",
            "QUEUED",
            "IDLE",
            "BUSY",
            "JOB P50",
            "JOB P99",
            "REDELIVERED/S",
            "EXPIRED/S",
            "REJECTED/S",
            "ABANDONED/S",
            "",
        ],
        &stages,
    );
    out.push('\n');
    let processes: Vec<Vec<String>> = v
        .processes
        .iter()
        .map(|p| {
            vec![
                p.what.clone(),
                p.addr.clone(),
                mib(p.rss),
                number(p.fds),
                p.status.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        &["PROCESS", "METRICS", "RSS", "FDS", "STATUS"],
        &processes,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(submitted: u64, replied: u64, fast: u64, slow: u64) -> String {
        let n = fast + slow;
        format!(
            "# HELP prime_server_front_submitted_total S.\n# TYPE prime_server_front_submitted_total counter\n\
             prime_server_front_submitted_total{{front=\"web\"}} {submitted}\n\
             # HELP prime_server_front_replied_total R.\n# TYPE prime_server_front_replied_total counter\n\
             prime_server_front_replied_total{{front=\"web\"}} {replied}\n\
             # HELP prime_server_front_timeouts_total T.\n# TYPE prime_server_front_timeouts_total counter\n\
             prime_server_front_timeouts_total{{front=\"web\"}} 0\n\
             # HELP prime_server_front_connections C.\n# TYPE prime_server_front_connections gauge\n\
             prime_server_front_connections{{front=\"web\"}} 3\n\
             # HELP prime_server_front_request_seconds D.\n# TYPE prime_server_front_request_seconds histogram\n\
             prime_server_front_request_seconds_bucket{{front=\"web\",le=\"0.001\"}} {fast}\n\
             prime_server_front_request_seconds_bucket{{front=\"web\",le=\"0.1\"}} {n}\n\
             prime_server_front_request_seconds_bucket{{front=\"web\",le=\"+Inf\"}} {n}\n\
             prime_server_front_request_seconds_sum{{front=\"web\"}} 1\n\
             prime_server_front_request_seconds_count{{front=\"web\"}} {n}\n"
        )
    }

    fn stage(dispatched: u64, queued: u64, job_seconds: f64, jobs: u64) -> String {
        format!(
            "# HELP prime_server_proxy_received_total R.\n# TYPE prime_server_proxy_received_total counter\n\
             prime_server_proxy_received_total{{stage=\"parse\"}} {dispatched}\n\
             # HELP prime_server_proxy_dispatched_total D.\n# TYPE prime_server_proxy_dispatched_total counter\n\
             prime_server_proxy_dispatched_total{{stage=\"parse\"}} {dispatched}\n\
             # HELP prime_server_proxy_queued Q.\n# TYPE prime_server_proxy_queued gauge\n\
             prime_server_proxy_queued{{stage=\"parse\"}} {queued}\n\
             # HELP prime_server_worker_jobs_total J.\n# TYPE prime_server_worker_jobs_total counter\n\
             prime_server_worker_jobs_total{{stage=\"parse\"}} {jobs}\n\
             # HELP prime_server_worker_job_seconds J.\n# TYPE prime_server_worker_job_seconds histogram\n\
             prime_server_worker_job_seconds_bucket{{stage=\"parse\",le=\"0.01\"}} {jobs}\n\
             prime_server_worker_job_seconds_bucket{{stage=\"parse\",le=\"+Inf\"}} {jobs}\n\
             prime_server_worker_job_seconds_sum{{stage=\"parse\"}} {job_seconds}\n\
             prime_server_worker_job_seconds_count{{stage=\"parse\"}} {jobs}\n"
        )
    }

    fn scrape(at: Instant, text: &str) -> Scrape {
        Scrape {
            at,
            result: Ok(scrape::parse(text).unwrap()),
        }
    }

    #[test]
    fn two_scrapes_make_rates_and_the_intervals_percentiles() {
        let targets = vec![
            Target {
                what: Some("front web".into()),
                addr: "127.0.0.1:1".into(),
            },
            Target {
                what: None,
                addr: "127.0.0.1:2".into(),
            },
            Target {
                what: Some("workers test".into()),
                addr: "127.0.0.1:3".into(),
            },
        ];
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let down = || Scrape {
            at: t1,
            result: Err("unreachable: connection refused".into()),
        };
        let prev = vec![
            scrape(t0, &front(100, 90, 90, 0)),
            scrape(t0, &stage(50, 0, 1.0, 50)),
            down(),
        ];
        // 2 s later: 200 more requests, of which 100 slow; 40 more jobs that took 1 s in all.
        let cur = vec![
            scrape(t1, &front(300, 280, 190, 100)),
            scrape(t1, &stage(90, 7, 2.0, 90)),
            down(),
        ];
        let v = view(
            &targets,
            Some(&prev),
            &cur,
            &["web".into()],
            &["parse".into(), "test".into()],
        );
        assert_eq!(v.interval, Some(Duration::from_secs(2)));
        let f = &v.fronts[0];
        assert_eq!((f.requests, f.replied), (Some(100.0), Some(95.0)));
        assert_eq!((f.timeouts, f.unavailable), (Some(0.0), None));
        assert_eq!((f.connections, f.in_flight), (Some(3.0), None));
        // Of the interval's 200: 100 within 1 ms, 100 within 100 ms.
        assert!((f.p50.unwrap() - 0.001).abs() < 1e-9, "{f:?}");
        assert!((f.p99.unwrap() - 0.09802).abs() < 1e-9, "{f:?}");
        let parse = &v.stages[0];
        assert_eq!(parse.name, "parse");
        assert_eq!((parse.jobs, parse.queued), (Some(20.0), Some(7.0)));
        assert_eq!(parse.busy, Some(0.5));
        assert!(parse.p99.unwrap() <= 0.01);
        assert_eq!(parse.note, "");
        let test = &v.stages[1];
        assert_eq!((test.name.as_str(), test.jobs), ("test", None));
        assert_eq!(test.note, "workers unreachable");
        assert_eq!(v.processes[1].what, "proxy parse + workers parse");
        assert_eq!(v.processes[2].status, "unreachable: connection refused");
        let text = render(&v);
        assert!(text.contains("rates over the last 2.0 s"), "{text}");
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} row in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("web"),
            ["web", "100", "95", "1.0ms", "98.0ms", "-", "0", "-", "3", "-"]
        );
        assert_eq!(row("parse")[..5], ["parse", "20", "7", "-", "0.5"]);
        assert_eq!(row("test").last(), Some(&"unreachable"));
        assert!(text.contains("unreachable: connection refused"), "{text}");

        // A first scrape: levels, no rates; a restarted process counts from zero.
        let first = view(&targets, None, &cur, &[], &[]);
        assert_eq!(first.interval, None);
        assert_eq!(first.fronts[0].requests, None);
        assert_eq!(first.stages[0].queued, Some(7.0));
        assert!(render(&first).contains("first scrape"));
        let restarted = vec![
            scrape(t1, &front(10, 10, 10, 0)),
            scrape(t1, &stage(90, 7, 2.0, 90)),
            down(),
        ];
        let v = view(&targets, Some(&prev), &restarted, &[], &[]);
        assert_eq!(v.fronts[0].requests, Some(5.0));
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(number(None), "-");
        assert_eq!(number(Some(3.0)), "3");
        assert_eq!(number(Some(2.26)), "2.3");
        assert_eq!(number(Some(1234.7)), "1235");
        assert_eq!(duration(Some(0.000_25)), "250µs");
        assert_eq!(duration(Some(0.0123)), "12.3ms");
        assert_eq!(duration(Some(2.5)), "2.50s");
    }
}
