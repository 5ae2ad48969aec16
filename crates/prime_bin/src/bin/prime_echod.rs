//! prime_echod: an all-in-one echo service for smoke tests: a front server, one proxy and N
//! workers that answer each request with what they received.
//!
//! `prime_echod LISTEN [CONCURRENCY] [DRAIN_SECONDS]`, as the C++ daemon.

use clap::Parser;
use prime_bin::{daemon, work};

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
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    /// Named form of DRAIN_SECONDS (also DRAIN,SHUTDOWN).
    #[arg(long = "drain-seconds", value_name = "SECONDS", value_parser = daemon::drain_arg)]
    drain_flag: Option<daemon::DrainArg>,
    /// After the drain: seconds given to what is in flight, accepting nothing new, before the
    /// rest is answered 503 and the process exits (default 1).
    #[arg(long, value_name = "SECONDS")]
    shutdown_seconds: Option<u64>,
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
    let mut args = Args::parse();
    daemon::prefer_flag(&mut args.drain_seconds, args.drain_flag.take());
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
        daemon::grace(
            Default::default(),
            args.drain_seconds,
            args.shutdown_seconds,
        ),
    )?;
    tracing::info!("prime_echod stopped");
    Ok(())
}
