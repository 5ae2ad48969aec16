//! prime_filed: an all-in-one static file server: a directory root that requests cannot escape,
//! MIME types, directory listings, ETag/Last-Modified with 304, and Range requests. Hidden files
//! and folders answer 404 and are not listed unless `--allow-hidden`.
//!
//! `prime_filed LISTEN [ROOT_DIR] [DRAIN_SECONDS] [HEALTH_PATH]`, as the C++ daemon.

use clap::Parser;
use prime_bin::{daemon, work};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(version, about = "An all-in-one static file server")]
struct Args {
    /// Where clients connect: tcp://*:8002, tcp://127.0.0.1:8002 or HOST:PORT.
    listen: String,
    /// The directory to serve. Requests cannot leave it, and its hidden files and folders answer
    /// 404 and are not listed (see --allow-hidden).
    #[arg(default_value = ".")]
    root_dir: PathBuf,
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    /// A path answered by the server itself (200, or 503 while draining).
    health_path: Option<String>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Named form of DRAIN_SECONDS (also DRAIN,SHUTDOWN).
    #[arg(long = "drain-seconds", value_name = "SECONDS", value_parser = daemon::drain_arg)]
    drain_flag: Option<daemon::DrainArg>,
    /// After the drain: seconds given to what is in flight, accepting nothing new, before the
    /// rest is answered 503 and the process exits (default 1).
    #[arg(long, value_name = "SECONDS")]
    shutdown_seconds: Option<u64>,
    /// Serve and list hidden files and folders: any path segment starting with `.` (such as
    /// `.git/`, `.env` or `a/.secret`, also percent-encoded as `%2e`). Without it they answer
    /// 404, as a missing file would.
    #[arg(long)]
    allow_hidden: bool,
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
        64 * 1024,
        args.max_connections,
        args.metrics_listen.clone(),
        args.workers,
        work::factory(
            "files",
            work::FilesOptions {
                root: Some(args.root_dir.clone()),
                allow_hidden: args.allow_hidden,
            },
        )?,
        daemon::grace(
            Default::default(),
            args.drain_seconds,
            args.shutdown_seconds,
        ),
    )?;
    tracing::info!("prime_filed stopped");
    Ok(())
}
