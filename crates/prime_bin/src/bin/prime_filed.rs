//! prime_filed: an all-in-one static file server: a directory root that requests cannot escape,
//! MIME types, directory listings, ETag/Last-Modified with 304, and Range requests. Hidden files
//! and folders answer 404 and are not listed unless `--allow-hidden`.
//!
//! `prime_filed LISTEN [ROOT_DIR] [DRAIN_SECONDS] [HEALTH_PATH]`, as the C++ daemon, or
//! `prime_filed --config FILE [--server NAME] [--root DIR]`: the front's settings from a topology
//! file's `[[server]]`, overridden by the flags given (see `prime_bin::flags`).

use clap::Parser;
use prime_bin::flags::{self, FrontFlags, GraceFlags};
use prime_bin::{daemon, work};
use prime_server::topology::LogFormat;
use std::path::PathBuf;

/// The largest request body without a topology file: a file server takes small requests.
const MAX_BODY: usize = 64 * 1024;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "An all-in-one static file server",
    after_help = flags::RULE
)]
struct Args {
    /// Where clients connect: tcp://*:8002, tcp://127.0.0.1:8002 or HOST:PORT.
    #[arg(conflicts_with = "config")]
    listen: Option<String>,
    /// The directory to serve (default: the current directory). Requests cannot leave it, and
    /// its hidden files and folders answer 404 and are not listed (see --allow-hidden).
    root_dir: Option<PathBuf>,
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    /// A path answered by the server itself (200, or 503 while draining); --health-path
    /// overrides it.
    health_path: Option<String>,
    #[command(flatten)]
    front: FrontFlags,
    /// Named form of ROOT_DIR.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 2, value_parser = flags::at_least_one)]
    workers: usize,
    #[command(flatten)]
    grace: GraceFlags,
    /// Serve and list hidden files and folders: any path segment starting with `.` (such as
    /// `.git/`, `.env` or `a/.secret`, also percent-encoded as `%2e`). Without it they answer
    /// 404, as a missing file would.
    #[arg(long)]
    allow_hidden: bool,
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
        |s| {
            s.max_body_bytes = MAX_BODY;
            s.health_path = args.health_path.clone();
        },
    )?;
    let root = args
        .root
        .clone()
        .or(args.root_dir.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let files = work::factory(
        "files",
        work::FilesOptions {
            root: Some(root),
            allow_hidden: args.allow_hidden,
        },
    )?;
    let grace = args.grace.grace(grace, args.drain_seconds);
    daemon::run_all_in_one(&section, vec![(args.workers, files)], grace)?;
    tracing::info!("prime_filed stopped");
    Ok(())
}
