//! prime_echod: an all-in-one echo service for smoke tests: a front server, one proxy and N
//! workers that answer each request with what they received.
//!
//! `prime_echod LISTEN [CONCURRENCY] [DRAIN_SECONDS]`, as the C++ daemon, or `prime_echod
//! --config FILE [--server NAME]`: the front's settings from a topology file's `[[server]]`,
//! overridden by the flags given (see `prime_bin::flags`).

use clap::Parser;
use prime_bin::flags::{self, FrontFlags, GraceFlags};
use prime_bin::{daemon, work};
use prime_server::topology::LogFormat;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "An all-in-one echo service: answers each request with the request",
    after_help = flags::RULE
)]
struct Args {
    /// Where clients connect: tcp://*:8002, tcp://127.0.0.1:8002 or HOST:PORT.
    #[arg(conflicts_with = "config")]
    listen: Option<String>,
    /// Worker threads (default 1).
    concurrency: Option<usize>,
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    #[command(flatten)]
    front: FrontFlags,
    #[command(flatten)]
    grace: GraceFlags,
    /// Named form of CONCURRENCY.
    #[arg(long, value_name = "N", value_parser = flags::at_least_one)]
    workers: Option<usize>,
    /// A topology file: the front's settings come from its `[[server]]` (see --server), and the
    /// drain time and log format from its top level; the stages are this daemon's own.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Which [[server]] of the topology file to take (needed when it has several).
    #[arg(long, value_name = "NAME", requires = "config")]
    server: Option<String>,
    /// `text` or `json` log lines [file: `log_format`; default text].
    #[arg(long, value_parser = daemon::log_format)]
    log_format: Option<LogFormat>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (section, grace) = daemon::all_in_one_front(
        args.config.as_deref(),
        args.server.as_deref(),
        args.listen.clone(),
        &args.front,
        args.log_format,
        |_| {},
    )?;
    let workers = args.workers.or(args.concurrency).unwrap_or(1);
    let echo = work::factory("echo", Default::default())?;
    let grace = args.grace.grace(grace, args.drain_seconds);
    daemon::run_all_in_one(&section, vec![(workers, echo)], grace)?;
    tracing::info!("prime_echod stopped");
    Ok(())
}
