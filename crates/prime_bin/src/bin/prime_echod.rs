//! prime_echod: an all-in-one echo service for smoke tests: a front server, one proxy and N
//! workers that answer each request with what they received.
//!
//! `prime_echod LISTEN [CONCURRENCY] [DRAIN_SECONDS]`, as the C++ daemon.

use clap::Parser;
use prime_bin::{daemon, work};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "An all-in-one echo service: answers each request with the request"
)]
struct Args {
    /// Where clients connect: tcp://*:8002, tcp://127.0.0.1:8002 or HOST:PORT.
    listen: String,
    /// Worker threads.
    #[arg(default_value_t = 1)]
    concurrency: usize,
    /// Seconds to keep serving open connections after SIGTERM/SIGINT.
    #[arg(default_value_t = 28)]
    drain_seconds: u64,
    /// A path answered by the server itself (200, or 503 while draining).
    #[arg(long)]
    health_path: Option<String>,
    /// One access-log line per request.
    #[arg(long)]
    access_log: bool,
    /// Client connections served at once; one beyond is answered 503 and closed (default: the
    /// open-file limit less a reserve for zmq, see README).
    #[arg(long, value_name = "N", value_parser = daemon::max_connections_arg)]
    max_connections: Option<usize>,
    /// Also serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// `text` or `json` log lines.
    #[arg(long, value_parser = daemon::log_format, default_value = "text")]
    log_format: prime_server::topology::LogFormat,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    daemon::init_logging(args.log_format);
    daemon::raise_fd_limit();
    daemon::all_in_one_http(
        &args.listen,
        args.health_path.clone(),
        args.access_log,
        10 * 1024 * 1024,
        args.max_connections,
        args.metrics_listen.clone(),
        args.concurrency,
        work::factory("echo", Default::default())?,
        Duration::from_secs(args.drain_seconds),
    )?;
    tracing::info!("prime_echod stopped");
    Ok(())
}
