//! Reading Prometheus metrics: a strict parser of the text exposition format (version 0.0.4)
//! and a small blocking scraper.
//!
//! `prime_top` reads the daemons' `/metrics` with it, and the tests check every scrape with it:
//! [`parse`] refuses whatever the format forbids (stricter than `promtool check metrics` 2.42,
//! which lets a series written twice or a family split in two through), and
//! [`Exposition::lint`] adds the naming conventions promtool lints and ours (`prime_server_`
//! prefix). What it returns are the samples, to query by name and labels.
//!
//! ```
//! let text = concat!(
//!     "# HELP prime_server_proxy_queued Jobs waiting.\n",
//!     "# TYPE prime_server_proxy_queued gauge\n",
//!     "prime_server_proxy_queued{stage=\"parse\"} 3\n",
//! );
//! let e = prime_bin::scrape::parse(text).unwrap();
//! e.lint(&["prime_server_"]).unwrap();
//! assert_eq!(e.sum("prime_server_proxy_queued", &[("stage", "parse")]), Some(3.0));
//! ```

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What a metric family is, from its `# TYPE` line (`untyped` without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A count that only grows.
    Counter,
    /// A level that goes up and down.
    Gauge,
    /// Cumulative buckets (`_bucket{le=…}`), `_sum` and `_count`.
    Histogram,
    /// Quantiles (`{quantile=…}`), `_sum` and `_count`.
    Summary,
    /// No `# TYPE` line, or `# TYPE … untyped`.
    Untyped,
}

impl Kind {
    fn parse(word: &str) -> Option<Kind> {
        Some(match word {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }
}

/// One metric family: its name, `# HELP` text and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family's name (a histogram's, without `_bucket`, `_sum` or `_count`).
    pub name: String,
    /// Its `# HELP` text, unescaped.
    pub help: Option<String>,
    /// Its kind.
    pub kind: Kind,
    /// Whether a `# TYPE` line said so (rather than no line at all).
    pub typed: bool,
}

/// One sample line: a series' name, labels (in the order written) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`…_bucket` for a histogram's bucket).
    pub name: String,
    /// Its labels, unescaped.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(name, value)` of `matching` is one of its labels.
    pub fn matches(&self, matching: &[(&str, &str)]) -> bool {
        matching.iter().all(|(n, v)| self.label(n) == Some(v))
    }
}

/// A scrape, parsed: every family and every sample, in the order written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// The families, in the order they first appear.
    pub families: Vec<Family>,
    /// The samples.
    pub samples: Vec<Sample>,
}

/// Why a text is not valid exposition format, or breaks a naming rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The line (from 1) where it was found; 0 when it is about a whole family.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for Error {}

fn error<T>(line: usize, message: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        line,
        message: message.into(),
    })
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The suffixes of a histogram's samples.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];
/// The suffixes of a summary's samples besides its quantiles.
const SUMMARY_SUFFIXES: [&str; 2] = ["_sum", "_count"];

/// A family while parsing.
struct Open {
    family: Family,
    /// Its first line: where an interleaving error points back to.
    first_line: usize,
    has_samples: bool,
}

/// Parses Prometheus's text format, version 0.0.4, strictly: every rule a Prometheus server or
/// `promtool check metrics` enforces (names, label syntax and escapes, float values, `# HELP`
/// and `# TYPE` at most once per family and before its samples, a family's lines together,
/// histogram buckets, no series twice, a newline at the end).
pub fn parse(text: &str) -> Result<Exposition, Error> {
    if !text.is_empty() && !text.ends_with('\n') {
        return error(
            text.lines().count(),
            "the last line does not end with a newline",
        );
    }
    let mut open: Vec<Open> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut current: Option<usize> = None;
    let mut samples: Vec<(usize, usize, Sample)> = Vec::new(); // (line, family, sample)
    for (i, line) in text.split_terminator('\n').enumerate() {
        let n = i + 1;
        if line.contains('\r') {
            return error(n, "a carriage return (lines end with \\n alone)");
        }
        if line.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start_matches([' ', '\t']);
            let (keyword, rest) = split_token(rest);
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a comment
            }
            let (name, rest) = split_token(rest);
            if !is_metric_name(name) {
                return error(n, format!("# {keyword}: invalid metric name {name:?}"));
            }
            let f = match by_name.get(name) {
                Some(&f) if current == Some(f) => f,
                Some(&f) => {
                    return error(
                        n,
                        format!(
                            "# {keyword} {name}: the family's lines are not together (it began \
                             at line {})",
                            open[f].first_line
                        ),
                    )
                }
                None => {
                    let f = open.len();
                    open.push(Open {
                        family: Family {
                            name: name.to_string(),
                            help: None,
                            kind: Kind::Untyped,
                            typed: false,
                        },
                        first_line: n,
                        has_samples: false,
                    });
                    by_name.insert(name.to_string(), f);
                    f
                }
            };
            current = Some(f);
            let o = &mut open[f];
            if o.has_samples {
                return error(n, format!("# {keyword} {name} after its samples"));
            }
            if keyword == "HELP" {
                if o.family.help.is_some() {
                    return error(n, format!("a second # HELP for {name}"));
                }
                o.family.help = Some(unescape_help(rest).map_err(|m| Error {
                    line: n,
                    message: format!("# HELP {name}: {m}"),
                })?);
            } else {
                if o.family.typed {
                    return error(n, format!("a second # TYPE for {name}"));
                }
                let (word, more) = split_token(rest);
                let Some(kind) = Kind::parse(word) else {
                    return error(n, format!("# TYPE {name}: unknown type {word:?}"));
                };
                if !more.trim_matches([' ', '\t']).is_empty() {
                    return error(n, format!("# TYPE {name}: text after the type"));
                }
                o.family.kind = kind;
                o.family.typed = true;
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|m| Error {
            line: n,
            message: m,
        })?;
        // Which family the sample belongs to: the current one if the name is its own or one of
        // its kind's suffixed names; else a new (untyped) family of that exact name.
        let belongs = |o: &Open| {
            let base = &o.family.name;
            match o.family.kind {
                Kind::Histogram => HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|s| sample.name.strip_suffix(s) == Some(base)),
                Kind::Summary => {
                    sample.name == *base
                        || SUMMARY_SUFFIXES
                            .iter()
                            .any(|s| sample.name.strip_suffix(s) == Some(base))
                }
                _ => sample.name == *base,
            }
        };
        let f = match current {
            Some(f) if belongs(&open[f]) => f,
            Some(f)
                if open[f].family.kind == Kind::Histogram && sample.name == open[f].family.name =>
            {
                return error(
                    n,
                    format!(
                        "{}: a histogram's samples are _bucket, _sum and _count",
                        sample.name
                    ),
                );
            }
            _ => {
                let earlier = open
                    .iter()
                    .position(&belongs)
                    .or_else(|| by_name.get(&sample.name).copied());
                if let Some(f) = earlier {
                    return error(
                        n,
                        format!(
                            "{}: the family's lines are not together (it began at line {})",
                            sample.name, open[f].first_line
                        ),
                    );
                }
                let f = open.len();
                open.push(Open {
                    family: Family {
                        name: sample.name.clone(),
                        help: None,
                        kind: Kind::Untyped,
                        typed: false,
                    },
                    first_line: n,
                    has_samples: false,
                });
                by_name.insert(sample.name.clone(), f);
                f
            }
        };
        current = Some(f);
        open[f].has_samples = true;
        samples.push((n, f, sample));
    }
    check_series(&open, &samples)?;
    Ok(Exposition {
        families: open.into_iter().map(|o| o.family).collect(),
        samples: samples.into_iter().map(|(_, _, s)| s).collect(),
    })
}

/// The rules over whole series: no series twice, counters not negative, histograms' and
/// summaries' shapes.
fn check_series(open: &[Open], samples: &[(usize, usize, Sample)]) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for (n, _, s) in samples {
        let mut key: Vec<&(String, String)> = s.labels.iter().collect();
        key.sort();
        if !seen.insert((s.name.as_str(), key)) {
            return error(
                *n,
                format!("{} {:?}: a series written twice", s.name, s.labels),
            );
        }
    }
    for (f, o) in open.iter().enumerate() {
        let name = &o.family.name;
        let own: Vec<&(usize, usize, Sample)> = samples.iter().filter(|s| s.1 == f).collect();
        match o.family.kind {
            Kind::Counter => {
                for (n, _, s) in &own {
                    if s.value.is_nan() || s.value < 0.0 {
                        return error(*n, format!("counter {name} is {}", s.value));
                    }
                }
            }
            Kind::Histogram => check_histogram(name, &own)?,
            Kind::Summary => check_summary(name, &own)?,
            Kind::Gauge | Kind::Untyped => {}
        }
    }
    Ok(())
}

/// The labels of a sample but `skip`, sorted: what names a histogram's or summary's series.
fn series_key(s: &Sample, skip: &str) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = s.labels.iter().filter(|l| l.0 != skip).cloned().collect();
    k.sort();
    k
}

fn check_histogram(name: &str, own: &[&(usize, usize, Sample)]) -> Result<(), Error> {
    #[derive(Default)]
    struct Series {
        buckets: Vec<(usize, f64, f64)>,
        sum: bool,
        count: Option<(usize, f64)>,
        first_line: usize,
    }
    let mut series: Vec<(Vec<(String, String)>, Series)> = Vec::new();
    for (n, _, s) in own {
        let key = series_key(s, "le");
        let i = match series.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                series.push((
                    key,
                    Series {
                        first_line: *n,
                        ..Series::default()
                    },
                ));
                series.len() - 1
            }
        };
        let entry = &mut series[i].1;
        if s.value.is_nan() || s.value < 0.0 {
            return error(*n, format!("{} is {}", s.name, s.value));
        }
        if s.name.ends_with("_bucket") {
            let Some(le) = s.label("le") else {
                return error(*n, format!("{}: a bucket without an le label", s.name));
            };
            let Some(bound) = parse_float(le).filter(|b| !b.is_nan()) else {
                return error(*n, format!("{}: le={le:?} is not a number", s.name));
            };
            if let Some(&(_, last, count)) = entry.buckets.last() {
                if bound.is_nan() || bound <= last {
                    return error(*n, format!("{}: le={le} does not follow le={last}", s.name));
                }
                if s.value < count {
                    return error(
                        *n,
                        format!(
                            "{}: le={le} counts {}, fewer than the bucket before ({count})",
                            s.name, s.value
                        ),
                    );
                }
            }
            entry.buckets.push((*n, bound, s.value));
        } else if s.label("le").is_some() {
            return error(*n, format!("{}: an le label outside a bucket", s.name));
        } else if s.name.ends_with("_sum") {
            entry.sum = true;
        } else {
            entry.count = Some((*n, s.value));
        }
    }
    for (key, s) in &series {
        let what = format!("histogram {name} {key:?} (line {})", s.first_line);
        let Some(&(_, last, inf)) = s.buckets.last() else {
            return error(0, format!("{what}: no buckets"));
        };
        if last != f64::INFINITY {
            return error(0, format!("{what}: the last bucket is not le=\"+Inf\""));
        }
        if !s.sum {
            return error(0, format!("{what}: no _sum"));
        }
        match s.count {
            None => return error(0, format!("{what}: no _count")),
            Some((n, c)) if c != inf => {
                return error(
                    n,
                    format!("{what}: _count {c} is not the +Inf bucket's {inf}"),
                )
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_summary(name: &str, own: &[&(usize, usize, Sample)]) -> Result<(), Error> {
    for (n, _, s) in own {
        if s.name == name {
            let q = s.label("quantile").and_then(parse_float);
            if !q.is_some_and(|q| (0.0..=1.0).contains(&q)) {
                return error(
                    *n,
                    format!("{name}: a quantile label between 0 and 1 is needed"),
                );
            }
        } else if s.label("quantile").is_some() {
            return error(
                *n,
                format!("{}: a quantile label outside a quantile", s.name),
            );
        }
    }
    Ok(())
}

/// The first blank-separated token of `s` and the rest after the blanks that follow it.
fn split_token(s: &str) -> (&str, &str) {
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start_matches([' ', '\t']))
}

/// A `# HELP` text: `\\` and `\n` are its only escapes.
fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => return Err(format!("invalid escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// A value as Prometheus writes and reads it: a float, `NaN`, `+Inf` or `-Inf`.
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        "NaN" => return Some(f64::NAN),
        _ => {}
    }
    // Rust also reads "inf", "infinity" and "nan" in any case; Go reads those too, so they
    // pass, but nothing else that is not digits, sign, point and exponent.
    if !s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
    {
        let lower = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if !matches!(lower.as_str(), "inf" | "infinity" | "nan") {
            return None;
        }
    }
    s.parse().ok()
}

/// One sample line: `name{label="value",…} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name in {line:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "{name}: expected a blank before the value, got {rest:?}"
        ));
    }
    let (value, rest) = split_token(rest.trim_start_matches([' ', '\t']));
    let Some(value) = parse_float(value) else {
        return Err(format!("{name}: invalid value {value:?}"));
    };
    let (timestamp, rest) = split_token(rest);
    if !timestamp.is_empty() && timestamp.parse::<i64>().is_err() {
        return Err(format!("{name}: invalid timestamp {timestamp:?}"));
    }
    if !rest.is_empty() {
        return Err(format!("{name}: text after the timestamp: {rest:?}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The labels after a `{`, up to and including the `}`; returns what follows.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let name = &s[..end];
        if !is_label_name(name) {
            return Err(format!("invalid label name at {s:?}"));
        }
        if name.starts_with("__") {
            return Err(format!("label name {name} is reserved (it starts with __)"));
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice"));
        }
        s = s[end..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("label {name}: expected '='"))?
            .trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: expected '\"'"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "label {name}: invalid escape \\{}",
                            other.map_or(' ', |o| o.1)
                        ))
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        s = s[close + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "label {name}: expected ',' or '}}' after the value"
            ));
        }
    }
}

/// A histogram's buckets (cumulative, by upper bound), sum and count: one series, or several
/// summed ([`Exposition::histogram`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)`, by increasing bound; the last is `+Inf`.
    pub buckets: Vec<(f64, f64)>,
    /// The sum of the observations.
    pub sum: f64,
    /// How many observations.
    pub count: f64,
}

impl Histogram {
    /// The observations since `earlier` (the same histogram scraped before): bucket by bucket
    /// differences; all of `self` when it was reset in between (a counter went down: the process
    /// restarted) or its buckets changed.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let same_bounds = self.buckets.len() == earlier.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .all(|(a, b)| a.0 == b.0);
        let reset = !same_bounds
            || self.count < earlier.count
            || self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .any(|(a, b)| a.1 < b.1);
        if reset {
            return self.clone();
        }
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(a, b)| (a.0, a.1 - b.1))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) as Prometheus's `histogram_quantile` estimates it: linear
    /// within the bucket that holds it; the largest finite bound when it falls in `+Inf`.
    /// `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let i = self.buckets.iter().position(|b| b.1 >= rank)?;
        let (upper, count) = self.buckets[i];
        if upper == f64::INFINITY {
            return Some(if i == 0 { 0.0 } else { self.buckets[i - 1].0 });
        }
        let (lower, below) = if i == 0 {
            (0.0_f64.min(upper), 0.0)
        } else {
            self.buckets[i - 1]
        };
        let within = count - below;
        if within <= 0.0 {
            return Some(upper);
        }
        Some(lower + (upper - lower) * (rank - below) / within)
    }
}

impl Exposition {
    /// The family called `name`.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The samples called `name` whose labels include every one of `matching`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        matching: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(matching))
    }

    /// The sum of the samples [`select`](Exposition::select) finds; `None` when there is none.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
        self.select(name, matching)
            .map(|s| s.value)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    }

    /// The values label `label` takes in the samples called `name`, each once, in order of
    /// appearance.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self.select(name, &[]) {
            if let Some(v) = s.label(label) {
                if !out.iter().any(|o| o == v) {
                    out.push(v.to_string());
                }
            }
        }
        out
    }

    /// Histogram family `name`'s series whose labels include every one of `matching`, summed
    /// bucket by bucket (buckets of the same bound add up); `None` when no series matches.
    pub fn histogram(&self, name: &str, matching: &[(&str, &str)]) -> Option<Histogram> {
        let bucket = format!("{name}_bucket");
        let mut h = Histogram::default();
        let mut any = false;
        for s in self.select(&bucket, matching) {
            let Some(le) = s.label("le").and_then(parse_float) else {
                continue;
            };
            any = true;
            match h.buckets.iter_mut().find(|b| b.0 == le) {
                Some(b) => b.1 += s.value,
                None => h.buckets.push((le, s.value)),
            }
        }
        if !any {
            return None;
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h.sum = self.sum(&format!("{name}_sum"), matching).unwrap_or(0.0);
        h.count = self.sum(&format!("{name}_count"), matching).unwrap_or(0.0);
        Some(h)
    }

    /// The naming rules on top of the format's: every family has `# HELP` and `# TYPE` (not
    /// `untyped`), counters end in `_total`, and every family's name starts with one of
    /// `prefixes` (ours: `prime_server_`; the process collector's: `process_`).
    pub fn lint(&self, prefixes: &[&str]) -> Result<(), Error> {
        for f in &self.families {
            let name = &f.name;
            if f.help.as_deref().is_none_or(str::is_empty) {
                return error(0, format!("{name}: no # HELP text"));
            }
            if !f.typed || f.kind == Kind::Untyped {
                return error(0, format!("{name}: no # TYPE (or untyped)"));
            }
            if f.kind == Kind::Counter && !name.ends_with("_total") {
                return error(0, format!("counter {name} does not end in _total"));
            }
            if f.kind != Kind::Counter && name.ends_with("_total") {
                return error(0, format!("{name} ends in _total but is not a counter"));
            }
            if !prefixes.iter().any(|p| name.starts_with(p)) {
                return error(0, format!("{name} does not start with one of {prefixes:?}"));
            }
        }
        Ok(())
    }
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No address to connect to.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Connecting, sending or reading failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An answer that is not HTTP or too large.
    #[error("bad answer: {0}")]
    Bad(String),
    /// An HTTP status other than 200.
    #[error("HTTP {0}")]
    Status(u16),
}

/// A scraped `/metrics` answer.
#[derive(Debug, Clone)]
pub struct Scraped {
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its body.
    pub body: String,
}

/// The largest answer a scrape reads.
const MAX_ANSWER: usize = 64 << 20;

/// `GET /metrics` from `addr` (`host:port`; an unspecified address such as `0.0.0.0` means
/// this host), on a connection of its own, all of it within `timeout`.
pub fn fetch(addr: &str, timeout: Duration) -> Result<Scraped, FetchError> {
    fetch_path(addr, "/metrics", timeout)
}

/// Like [`fetch`], for any path.
pub fn fetch_path(addr: &str, path: &str, timeout: Duration) -> Result<Scraped, FetchError> {
    let deadline = Instant::now() + timeout;
    let target = resolve(addr)?;
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    s.set_write_timeout(Some(left()?))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain; version=0.0.4\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()?))?;
        let n = match s.read(&mut buf) {
            // A signal to this process is not the end of the answer.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_ANSWER {
            return Err(FetchError::Bad(format!("over {MAX_ANSWER} bytes")));
        }
    }
    parse_answer(&raw)
}

fn resolve(addr: &str) -> Result<SocketAddr, FetchError> {
    let mut a = addr
        .to_socket_addrs()
        .map_err(|_| FetchError::Resolve(addr.to_string()))?
        .next()
        .ok_or_else(|| FetchError::Resolve(addr.to_string()))?;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(a)
}

/// An HTTP/1.1 answer read to the end of its connection: its status, content type and body
/// (by `Content-Length`, chunked, or up to the close).
fn parse_answer(raw: &[u8]) -> Result<Scraped, FetchError> {
    let bad = |m: &str| FetchError::Bad(m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
    let mut content_type = None;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_string()),
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("broken chunked body"))?
    } else if let Some(len) = length {
        rest.get(..len)
            .ok_or_else(|| bad("body shorter than its length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let body = String::from_utf8(body).map_err(|_| bad("body not UTF-8"))?;
    Ok(Scraped { content_type, body })
}

fn dechunk(mut s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = s.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&s[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        s = &s[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(s.get(..size)?);
        s = s.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"# A comment that is neither HELP nor TYPE.
# HELP prime_server_proxy_queued Jobs waiting for a worker now.
# TYPE prime_server_proxy_queued gauge
prime_server_proxy_queued{stage="parse"} 3
prime_server_proxy_queued{stage="test"} 0

# HELP prime_server_front_submitted_total Requests submitted, with a \\ and a\nnewline.
# TYPE prime_server_front_submitted_total counter
prime_server_front_submitted_total{front="a \"b\" \\ c\nd",} 7 1700000000000
# TYPE prime_server_worker_job_seconds histogram
# HELP prime_server_worker_job_seconds How long each job took.
prime_server_worker_job_seconds_bucket{stage="parse",le="0.001"} 1
prime_server_worker_job_seconds_bucket{stage="parse",le="0.01"} 3
prime_server_worker_job_seconds_bucket{stage="parse",le="+Inf"} 4
prime_server_worker_job_seconds_sum{stage="parse"} 2.5e-2
prime_server_worker_job_seconds_count{stage="parse"} 4
prime_server_worker_job_seconds_bucket{stage="test",le="0.001"} 0
prime_server_worker_job_seconds_bucket{stage="test",le="0.01"} 2
prime_server_worker_job_seconds_bucket{stage="test",le="+Inf"} 2
prime_server_worker_job_seconds_sum{stage="test"} 0.008
prime_server_worker_job_seconds_count{stage="test"} 2
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds	22
# HELP prime_server_build_info The build.
# TYPE prime_server_build_info gauge
prime_server_build_info{version="0.1.0"} NaN
"#;

    #[test]
    fn a_good_exposition_parses_with_its_families_and_samples() {
        let e = parse(GOOD).unwrap();
        e.lint(&["prime_server_", "process_"]).unwrap();
        let names: Vec<&str> = e.families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "prime_server_proxy_queued",
                "prime_server_front_submitted_total",
                "prime_server_worker_job_seconds",
                "process_open_fds",
                "prime_server_build_info"
            ]
        );
        let submitted = e.family("prime_server_front_submitted_total").unwrap();
        assert_eq!(submitted.kind, Kind::Counter);
        assert_eq!(
            submitted.help.as_deref(),
            Some("Requests submitted, with a \\ and a\nnewline.")
        );
        let s = e
            .select("prime_server_front_submitted_total", &[])
            .next()
            .unwrap();
        assert_eq!(s.label("front"), Some("a \"b\" \\ c\nd"));
        assert_eq!(s.value, 7.0);
        assert_eq!(e.sum("prime_server_proxy_queued", &[]), Some(3.0));
        assert_eq!(
            e.sum("prime_server_proxy_queued", &[("stage", "test")]),
            Some(0.0)
        );
        assert_eq!(e.sum("prime_server_proxy_queued", &[("stage", "x")]), None);
        assert_eq!(
            e.label_values("prime_server_proxy_queued", "stage"),
            ["parse", "test"]
        );
        assert_eq!(e.sum("process_open_fds", &[]), Some(22.0));
        assert!(e.sum("prime_server_build_info", &[]).unwrap().is_nan());
        let h = e
            .histogram("prime_server_worker_job_seconds", &[("stage", "parse")])
            .unwrap();
        assert_eq!(h.buckets, [(0.001, 1.0), (0.01, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!((h.count, h.sum), (4.0, 0.025));
        let both = e.histogram("prime_server_worker_job_seconds", &[]).unwrap();
        assert_eq!(
            both.buckets,
            [(0.001, 1.0), (0.01, 5.0), (f64::INFINITY, 6.0)]
        );
        assert_eq!(both.count, 6.0);
        assert_eq!(parse("").unwrap(), Exposition::default());
    }

    /// `GOOD` with `from` replaced by `to` (which must be there).
    fn good_but(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replacen(from, to, 1)
    }

    #[track_caller]
    fn refused(text: &str, why: &str) {
        match parse(text) {
            Ok(_) => panic!("accepted, expected {why:?}:\n{text}"),
            Err(e) => assert!(e.to_string().contains(why), "{e} (expected {why:?})"),
        }
    }

    #[test]
    fn format_errors_are_refused_with_their_line() {
        let queued = "prime_server_proxy_queued{stage=\"parse\"} 3";
        let cases: &[(String, &str)] = &[
            (GOOD.trim_end().to_string(), "does not end with a newline"),
            (good_but(queued, &format!("{queued}\r")), "carriage return"),
            (good_but(queued, "9bad{stage=\"parse\"} 3"), "invalid metric name"),
            (good_but(queued, "prime-server 3"), "expected a blank"),
            (good_but(queued, "prime_server_proxy_queued{stage=parse} 3"), "expected '\"'"),
            (good_but(queued, "prime_server_proxy_queued{stage=\"a\\t\"} 3"), "invalid escape"),
            (good_but(queued, "prime_server_proxy_queued{stage=\"a} 3"), "unterminated"),
            (good_but(queued, "prime_server_proxy_queued{1x=\"a\"} 3"), "invalid label name"),
            (good_but(queued, "prime_server_proxy_queued{__x=\"a\"} 3"), "reserved"),
            (good_but(queued, "prime_server_proxy_queued{a=\"1\",a=\"2\"} 3"), "label a twice"),
            (good_but(queued, "prime_server_proxy_queued{a=\"1\" b=\"2\"} 3"), "expected ','"),
            (good_but(queued, "prime_server_proxy_queued{stage=\"parse\"} three"), "invalid value"),
            (good_but(queued, "prime_server_proxy_queued{stage=\"parse\"} 0x10"), "invalid value"),
            (good_but(queued, "prime_server_proxy_queued{stage=\"parse\"}"), "expected a blank"),
            (good_but(queued, &format!("{queued} 1.5")), "invalid timestamp"),
            (good_but(queued, &format!("{queued} 1 2")), "after the timestamp"),
            // The same series twice (labels in another order is the same series).
            (
                good_but(queued, &format!("{queued}\nprime_server_proxy_queued{{stage=\"parse\"}} 4")),
                "written twice",
            ),
            (
                good_but(
                    "prime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"0.001\"} 1",
                    "prime_server_worker_job_seconds_bucket{le=\"0.001\",stage=\"parse\"} 1\nprime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"0.001\"} 1",
                ),
                "written twice",
            ),
            // HELP and TYPE: at most once, before the samples, a known type.
            (
                good_but("# TYPE prime_server_proxy_queued gauge", "# TYPE prime_server_proxy_queued gauge\n# TYPE prime_server_proxy_queued gauge"),
                "a second # TYPE",
            ),
            (
                good_but("# TYPE prime_server_proxy_queued gauge", "# HELP prime_server_proxy_queued again\n# TYPE prime_server_proxy_queued gauge"),
                "a second # HELP",
            ),
            (
                good_but("prime_server_proxy_queued{stage=\"test\"} 0", "prime_server_proxy_queued{stage=\"test\"} 0\n# HELP prime_server_proxy_queued late"),
                "after its samples",
            ),
            (
                good_but("# HELP prime_server_worker_job_seconds How long each job took.\n", "")
                    .replace("prime_server_worker_job_seconds_count{stage=\"test\"} 2", "prime_server_worker_job_seconds_count{stage=\"test\"} 2\n# HELP prime_server_worker_job_seconds late"),
                "after its samples",
            ),
            (good_but("gauge", "gauge extra"), "text after the type"),
            (good_but("gauge", "gouge"), "unknown type"),
            (good_but("# HELP prime_server_proxy_queued", "# HELP 1nope"), "invalid metric name"),
            (good_but("a\\nnewline", "a\\tnewline"), "invalid escape"),
            // A family's lines are together.
            (format!("{GOOD}prime_server_proxy_queued{{stage=\"late\"}} 1\n"), "not together"),
            (format!("{GOOD}# TYPE prime_server_proxy_queued gauge\n"), "not together"),
            (
                format!("{GOOD}prime_server_worker_job_seconds_sum{{stage=\"x\"}} 1\n"),
                "not together",
            ),
            // Counters.
            (good_but("} 7 1700000000000", "} -1"), "counter prime_server_front_submitted_total is -1"),
            // Histograms.
            (
                good_but("prime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"0.01\"} 3", "prime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"0.0001\"} 3"),
                "does not follow",
            ),
            (
                good_but("prime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"0.01\"} 3", "prime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"0.01\"} 0"),
                "fewer than the bucket before",
            ),
            (
                good_but("prime_server_worker_job_seconds_bucket{stage=\"parse\",le=\"+Inf\"} 4\n", ""),
                "not le=\"+Inf\"",
            ),
            (
                good_but("prime_server_worker_job_seconds_count{stage=\"parse\"} 4", "prime_server_worker_job_seconds_count{stage=\"parse\"} 5"),
                "is not the +Inf bucket's",
            ),
            (good_but("prime_server_worker_job_seconds_count{stage=\"parse\"} 4\n", ""), "no _count"),
            (good_but("prime_server_worker_job_seconds_sum{stage=\"parse\"} 2.5e-2\n", ""), "no _sum"),
            (good_but("{stage=\"parse\",le=\"0.001\"}", "{stage=\"parse\"}"), "without an le"),
            (good_but("{stage=\"parse\",le=\"0.001\"}", "{stage=\"parse\",le=\"small\"}"), "not a number"),
            (good_but("_sum{stage=\"parse\"}", "_sum{stage=\"parse\",le=\"1\"}"), "outside a bucket"),
            (
                good_but("prime_server_worker_job_seconds_sum{stage=\"parse\"}", "prime_server_worker_job_seconds{stage=\"parse\"}"),
                "histogram's samples are",
            ),
        ];
        for (text, why) in cases {
            refused(text, why);
        }
        let e = parse(&good_but(queued, "9bad 3")).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
    }

    #[test]
    fn naming_rules_are_linted() {
        let lint = |text: &str| {
            parse(text)
                .unwrap()
                .lint(&["prime_server_"])
                .unwrap_err()
                .to_string()
        };
        assert!(lint("# HELP prime_server_x_total X.\n# TYPE prime_server_x_total gauge\nprime_server_x_total 1\n").contains("not a counter"));
        assert!(lint(
            "# HELP prime_server_x X.\n# TYPE prime_server_x counter\nprime_server_x 1\n"
        )
        .contains("does not end in _total"));
        assert!(lint("# TYPE prime_server_x gauge\nprime_server_x 1\n").contains("no # HELP"));
        assert!(lint("# HELP prime_server_x X.\nprime_server_x 1\n").contains("no # TYPE"));
        assert!(lint("# HELP other_x X.\n# TYPE other_x gauge\nother_x 1\n")
            .contains("does not start with"));
    }

    #[test]
    fn summaries_have_quantiles_between_0_and_1() {
        let good = "# HELP s S.\n# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 3\ns_count 2\n";
        parse(good).unwrap();
        refused(&good.replace("0.5", "2"), "quantile label between 0 and 1");
        refused(
            &good.replace("s_sum 3", "s_sum{quantile=\"0.5\"} 3"),
            "outside a quantile",
        );
    }

    #[test]
    fn quantiles_interpolate_within_buckets_as_prometheus_does() {
        let h = Histogram {
            buckets: vec![
                (0.1, 0.0),
                (0.2, 50.0),
                (0.4, 100.0),
                (f64::INFINITY, 100.0),
            ],
            sum: 20.0,
            count: 100.0,
        };
        assert!((h.quantile(0.5).unwrap() - 0.2).abs() < 1e-9);
        assert!((h.quantile(0.25).unwrap() - 0.15).abs() < 1e-9);
        assert!((h.quantile(0.99).unwrap() - 0.396).abs() < 1e-9);
        let over = Histogram {
            buckets: vec![(0.1, 1.0), (f64::INFINITY, 10.0)],
            sum: 100.0,
            count: 10.0,
        };
        assert_eq!(over.quantile(0.99), Some(0.1));
        assert_eq!(Histogram::default().quantile(0.5), None);
        // Since an earlier scrape: the new observations only; a reset counts from zero.
        let earlier = Histogram {
            buckets: vec![(0.1, 0.0), (0.2, 50.0), (0.4, 60.0), (f64::INFINITY, 60.0)],
            sum: 8.0,
            count: 60.0,
        };
        let d = h.since(&earlier);
        assert_eq!(
            d.buckets,
            [(0.1, 0.0), (0.2, 0.0), (0.4, 40.0), (f64::INFINITY, 40.0)]
        );
        assert_eq!((d.count, d.sum), (40.0, 12.0));
        assert_eq!(earlier.since(&h), earlier);
    }

    #[test]
    fn answers_are_read_by_length_chunked_or_to_the_close() {
        let a = parse_answer(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nabcdef",
        )
        .unwrap();
        assert_eq!(
            (a.content_type.as_deref(), a.body.as_str()),
            (Some("text/plain"), "abc")
        );
        let a = parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(a.body, "abcde");
        let a = parse_answer(b"HTTP/1.0 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(a.body, "to the end");
        assert!(matches!(
            parse_answer(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            Err(FetchError::Status(404))
        ));
        assert!(matches!(
            parse_answer(b"SSH-2.0\r\n\r\n"),
            Err(FetchError::Bad(_))
        ));
    }

    #[test]
    fn an_unreachable_address_fails_fast() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Instant::now();
        let e = fetch(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, FetchError::Io(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            fetch("no port", Duration::from_secs(5)),
            Err(FetchError::Resolve(_))
        ));
    }
}
