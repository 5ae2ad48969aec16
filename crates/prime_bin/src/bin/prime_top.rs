//! prime_top: a live per-stage view of a running deployment, from its processes' metrics.
//!
//! `prime_top --config FILE` scrapes every metrics listener the topology names (each front's
//! `metrics_listen`, each stage's `proxy_metrics_listen` and `workers_metrics_listen`), plus
//! any `--scrape ADDR` (a second worker process, an all-in-one `prime_serverd`), every
//! `--interval` seconds, and shows per front: requests/s, p50/p99, 503/s, 504/s, client-gone/s;
//! per stage: jobs/s, queue depth, idle and busy workers, job p50/p99, redelivered, expired,
//! rejected and abandoned jobs per second; per process: up or why not, memory, descriptors.
//! `--once` takes two scrapes an interval apart, prints the table and exits (1 if no process
//! answered). See `prime_bin::top` for how each number is computed.

use anyhow::Context as _;
use clap::Parser;
use prime_bin::top::{self, Target};
use prime_server::topology::Topology;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A live per-stage view of a prime_server deployment: scrapes every process's \
             Prometheus metrics and shows rates, latencies, queue depths and idle workers"
)]
struct Args {
    /// A topology file: its metrics listeners are scraped.
    #[arg(long)]
    config: Option<String>,
    /// Also scrape http://ADDR/metrics (repeatable), e.g. a second worker process's
    /// --metrics-listen.
    #[arg(long, value_name = "ADDR")]
    scrape: Vec<String>,
    /// Seconds between refreshes (and between --once's two scrapes).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    interval: f64,
    /// Seconds one scrape may take before its process is shown unreachable.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    timeout: f64,
    /// Print one table (from two scrapes --interval apart) and exit.
    #[arg(long)]
    once: bool,
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag}: expected a number of seconds above 0, got {v}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let interval = seconds("--interval", args.interval)?;
    let timeout = seconds("--timeout", args.timeout)?;
    let (mut targets, fronts, stages) = match &args.config {
        Some(path) => {
            let t = Topology::load(path)?;
            (
                top::targets(&t),
                t.servers.iter().map(|s| s.name.clone()).collect(),
                t.stages.iter().map(|s| s.name.clone()).collect(),
            )
        }
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    for addr in &args.scrape {
        if !targets.iter().any(|t| t.addr == *addr) {
            targets.push(Target {
                what: None,
                addr: addr.clone(),
            });
        }
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "nothing to scrape: give --config FILE whose servers and stages have metrics_listen, \
         proxy_metrics_listen or workers_metrics_listen keys, or --scrape ADDR"
    );
    let tty = std::io::stdout().is_terminal();
    let mut prev = top::scrape_all(&targets, timeout);
    let mut next = Instant::now() + interval;
    if !args.once {
        show(
            &top::view(&targets, None, &prev, &fronts, &stages),
            tty,
            true,
        )?;
    }
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += interval;
        let cur = top::scrape_all(&targets, timeout);
        show(
            &top::view(&targets, Some(&prev), &cur, &fronts, &stages),
            tty,
            args.once,
        )?;
        if args.once {
            let answered = cur.iter().any(|s| s.result.is_ok());
            std::process::exit(if answered { 0 } else { 1 });
        }
        prev = cur;
        // A refresh that took longer than the interval does not make the next ones bunch up.
        next = next.max(Instant::now());
    }
}

/// Prints the table: on a terminal, in place of the last one; else after it (`first`: there is
/// none).
fn show(v: &top::View, tty: bool, first: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if tty {
        // Cursor home, clear the screen.
        out.write_all(b"\x1b[H\x1b[2J")?;
    } else if !first {
        out.write_all(b"\n")?;
    }
    out.write_all(top::render(v).as_bytes())?;
    out.flush()?;
    Ok(())
}
