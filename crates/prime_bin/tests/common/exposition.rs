//! Checking the daemons' metrics: every scrape is parsed strictly
//! ([`prime_bin::scrape::parse`]: the text format 0.0.4 as Prometheus reads it), linted (HELP
//! and TYPE on every family, counters in `_total`, our `prime_server_` prefix) and, when
//! `promtool` is on the PATH, checked by `promtool check metrics` too (skipped otherwise: the
//! tests install nothing).

use prime_bin::scrape::{self, Exposition};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The prefixes a family of ours may have: ours, and the process collector's.
pub const PREFIXES: &[&str] = &["prime_server_", "process_"];

/// Parses and lints `text` (and runs promtool on it when there is one); panics with the text
/// on any problem.
#[track_caller]
pub fn check(text: &str) -> Exposition {
    let e = scrape::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    e.lint(PREFIXES).unwrap_or_else(|e| panic!("{e}\n{text}"));
    promtool(text);
    e
}

/// `promtool check metrics` on `text`, if promtool is on the PATH.
#[track_caller]
pub fn promtool(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /metrics` from `addr`, answered 200 in the text format, checked as [`check`] does.
#[track_caller]
pub fn scrape(addr: &str) -> Exposition {
    let got = scrape::fetch(addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert_eq!(
        got.content_type.as_deref(),
        Some(prime_server::metrics::CONTENT_TYPE),
        "{addr}"
    );
    check(&got.body)
}

/// The value of the one sample called `name` with labels `labels` in a scrape of `addr`
/// (several: their sum); panics if there is none.
#[track_caller]
pub fn value(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let e = scrape(addr);
    e.sum(name, labels)
        .unwrap_or_else(|| panic!("{addr}: no {name} {labels:?}"))
}
