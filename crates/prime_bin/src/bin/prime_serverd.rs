//! prime_serverd: the "is this number prime?" demo.
//!
//! `prime_serverd START,END [WORKERS]` simulates the whole service in one process and prints how
//! many primes it found among the odd numbers of the range, how many requests it made, and the
//! wall time.

use anyhow::{bail, Context as _};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "The prime_server demo: is this number prime?")]
struct Args {
    /// `START,END`: simulate, testing every odd number of the range in one process.
    target: String,
    /// Worker threads per stage.
    #[arg(default_value_t = 1)]
    workers: usize,
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once(',')
        .with_context(|| format!("expected START,END, got {s:?}"))?;
    let a: u64 = a.trim().parse().with_context(|| format!("bad START {a:?}"))?;
    let b: u64 = b.trim().parse().with_context(|| format!("bad END {b:?}"))?;
    if a >= b {
        bail!("START must be below END, got {a},{b}");
    }
    Ok((a, b))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (start, end) = parse_range(&args.target)?;
    if args.workers == 0 {
        bail!("WORKERS must be at least 1");
    }
    let sim = prime_bin::prime::simulate(start, end, args.workers)?;
    println!("{} primes found", sim.primes);
    println!("{} requests made", sim.report.sent);
    println!("{:.3} s wall time", sim.report.elapsed.as_secs_f64());
    if sim.errors > 0 {
        bail!("{} requests were not answered cleanly", sim.errors);
    }
    Ok(())
}
