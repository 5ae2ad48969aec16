//! prime_workerd: a pool of worker threads as its own process.
//!
//! `prime_workerd UPSTREAM_PROXY DOWNSTREAM_PROXY LOOPBACK INTERRUPT [DRAIN_SECONDS] [--work NAME]`
//! (the C++ daemon's arguments; `-` as DOWNSTREAM_PROXY for the last stage; without `--work`,
//! the C++ daemon's work: the files of the current directory) or
//! `prime_workerd --config FILE --stage NAME`, where the flags given override the file's values
//! (see `prime_bin::flags`). On SIGTERM each worker leaves its proxy, finishes
//! the job in hand, and the process exits 0.

use anyhow::{bail, Context as _};
use clap::Parser;
use prime_bin::{daemon, flags, work};
use prime_server::metrics::Metrics;
use prime_server::security::WorkerKeys;
use prime_server::shutdown::{OnDrain, Shutdown};
use prime_server::topology::{HeartbeatConfig, Topology};
use prime_server::transport::Context;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A pool of workers for one stage",
    after_help = flags::RULE
)]
struct Args {
    /// This stage's proxy, its downstream endpoint.
    #[arg(conflicts_with = "config")]
    upstream_proxy: Option<String>,
    /// The next stage's proxy, its upstream endpoint (`-` or `none` for the last stage).
    downstream_proxy: Option<String>,
    /// The server's loopback endpoint.
    loopback: Option<String>,
    /// The server's interrupt endpoint.
    interrupt: Option<String>,
    /// After SIGTERM/SIGINT each worker leaves its proxy and finishes the job in hand: seconds
    /// it may take before it is stopped, or DRAIN,SHUTDOWN (stopped after both). Default 28,1.
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg)]
    drain_seconds: Option<daemon::DrainArg>,
    /// Named form of UPSTREAM_PROXY [file: the stage's `downstream`].
    #[arg(long = "upstream", value_name = "ENDPOINT")]
    upstream_flag: Option<String>,
    /// Named form of DOWNSTREAM_PROXY (`-` for none) [file: the next stage's `upstream`].
    #[arg(long = "downstream", value_name = "ENDPOINT")]
    downstream_flag: Option<String>,
    /// Named form of LOOPBACK; repeat it for several front servers [file: every [[server]]'s
    /// `loopback`].
    #[arg(long = "loopback", value_name = "ENDPOINT")]
    loopback_flag: Vec<String>,
    /// Named form of INTERRUPT; repeat it for several front servers [file: every
    /// [[server]]'s `interrupt`].
    #[arg(long = "interrupt", value_name = "ENDPOINT")]
    interrupt_flag: Vec<String>,
    #[command(flatten)]
    grace: flags::GraceFlags,
    /// A topology file; with --stage, runs that stage's workers.
    #[arg(long, requires = "stage")]
    config: Option<String>,
    /// The stage of the topology file to serve.
    #[arg(long, requires = "config")]
    stage: Option<String>,
    /// What the workers run: prime_parse, prime_test, echo or files [file: the stage's `work`;
    /// default files, serving the current directory, as the C++ prime_workerd].
    #[arg(long, value_name = "NAME")]
    work: Option<String>,
    /// Worker threads [file: the stage's `workers`; default 2].
    #[arg(long, value_name = "N", value_parser = flags::at_least_one)]
    workers: Option<usize>,
    /// The stage's index, from 1, written into the headers, for logs [file: the stage's
    /// place; default 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    stage_index: Option<u8>,
    /// The directory the `files` work serves (default: the current directory).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Let the `files` work serve and list hidden files and folders (any path segment starting
    /// with `.`, such as `.git/` or `.env`); without it they answer 404.
    #[arg(long)]
    allow_hidden: bool,
    /// Heartbeat interval in milliseconds (must match the proxy's) [file: `[heartbeat]
    /// interval_ms`; default 2500].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ms: Option<u64>,
    /// The largest frame any of its zmq sockets takes in; a peer that sends a larger one is
    /// disconnected [file: `max_message_bytes`; default 4 × the largest body + 64 KiB, without
    /// a file 4 × 10 MiB + 64 KiB].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// `text` or `json` log lines [file: `log_format`; default text].
    #[arg(long, value_parser = daemon::log_format)]
    log_format: Option<prime_server::topology::LogFormat>,
    /// CURVE: the workers' secret key file (`prime_keygen NAME` writes NAME.secret); needs
    /// --proxy-key, --front-key per loopback, and --next-proxy-key unless this is the last
    /// stage. With --config, keys come from the topology's [security].
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    curve_secret: Option<PathBuf>,
    /// This stage's proxy's public key file.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    proxy_key: Option<PathBuf>,
    /// The next stage's proxy's public key file.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    next_proxy_key: Option<PathBuf>,
    /// A front server's public key file, in the order of the loopbacks; repeat it per server.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    front_key: Vec<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics [file: the stage's
    /// `workers_metrics_listen`; default none].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

/// The C++ prime_workerd's work: files from its working directory.
const DEFAULT_WORK: &str = "files";

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Named flags and the C++ positional arguments mean the same; a flag wins.
    daemon::prefer_flag(&mut args.upstream_proxy, args.upstream_flag.take());
    daemon::prefer_flag(&mut args.downstream_proxy, args.downstream_flag.take());
    let mut notes = Vec::new();
    let (mut pool, mut metrics_listen, kind, drain, format, limit) = match &args.config {
        Some(path) => {
            let t = Topology::load(path)?;
            let name = args
                .stage
                .as_deref()
                .context("--config needs --stage NAME")?;
            let (i, stage) = t.stage(name)?;
            let pool = daemon::PoolSpec::from_topology(&t, i, OnDrain::FinishAndExit)?;
            let limit = daemon::message_limit(
                args.max_message_bytes,
                t.max_message_bytes(),
                &daemon::max_bodies(&t),
            )?;
            (
                pool,
                stage.workers_metrics_listen.clone(),
                stage.work.clone(),
                t.grace(),
                args.log_format.unwrap_or(t.log_format),
                limit,
            )
        }
        None => {
            let (Some(up), Some(down)) = (&args.upstream_proxy, &args.downstream_proxy) else {
                bail!("give UPSTREAM_PROXY DOWNSTREAM_PROXY LOOPBACK INTERRUPT, or --config FILE --stage NAME (see --help)");
            };
            let mut loopbacks: Vec<String> = args.loopback.iter().cloned().collect();
            loopbacks.extend(args.loopback_flag.iter().cloned());
            let mut interrupts: Vec<String> = args.interrupt.iter().cloned().collect();
            interrupts.extend(args.interrupt_flag.iter().cloned());
            if loopbacks.is_empty() || interrupts.is_empty() {
                bail!("give UPSTREAM_PROXY DOWNSTREAM_PROXY LOOPBACK INTERRUPT (see --help)");
            }
            let has_next = downstream_endpoint(down)?.is_some();
            let pool = daemon::PoolSpec {
                name: "worker".into(),
                upstream: up.parse()?,
                downstream: downstream_endpoint(down)?,
                loopbacks: parse_all(&loopbacks)?,
                interrupts: parse_all(&interrupts)?,
                stage: 1,
                workers: 2,
                heartbeat: HeartbeatConfig::default().heartbeat(),
                on_drain: OnDrain::FinishAndExit,
                security: match &args.curve_secret {
                    None => None,
                    Some(secret) => Some(WorkerKeys {
                        keypair: daemon::read_keypair(secret)?,
                        proxy: daemon::required_public_key(args.proxy_key.as_ref(), "--proxy-key")?,
                        next_proxy: if has_next {
                            Some(daemon::required_public_key(
                                args.next_proxy_key.as_ref(),
                                "--next-proxy-key",
                            )?)
                        } else {
                            None
                        },
                        fronts: daemon::read_public_keys(&args.front_key)?,
                    }),
                },
            };
            if args.work.is_none() {
                let dir = match &args.root {
                    Some(root) => root.display().to_string(),
                    None => std::env::current_dir()
                        .map_or_else(|_| ".".into(), |d| d.display().to_string()),
                };
                notes.push(format!(
                    "no --work: the workers serve the files of {dir} (without --root, the current \
                     directory, as the C++ prime_workerd); --work NAME runs another ({})",
                    work::KINDS.join(", ")
                ));
            }
            let limit = args
                .max_message_bytes
                .unwrap_or(prime_server::transport::DEFAULT_MAX_MESSAGE_BYTES);
            (
                pool,
                None,
                DEFAULT_WORK.to_string(),
                Default::default(),
                args.log_format.unwrap_or_default(),
                limit,
            )
        }
    };
    // The one rule: a flag given overrides the file's value (or the positional argument's).
    let kind = args.work.clone().unwrap_or(kind);
    flags::given(&mut pool.workers, args.workers);
    flags::given(&mut pool.stage, args.stage_index);
    flags::given(&mut metrics_listen, args.metrics_listen.clone().map(Some));
    if let Some(ms) = args.heartbeat_ms {
        pool.heartbeat.interval = Duration::from_millis(ms);
    }
    if args.config.is_some() {
        if let Some(up) = &args.upstream_proxy {
            pool.upstream = up.parse()?;
        }
        if let Some(down) = &args.downstream_proxy {
            pool.downstream = downstream_endpoint(down)?;
        }
        if !args.loopback_flag.is_empty() {
            pool.loopbacks = parse_all(&args.loopback_flag)?;
        }
        if !args.interrupt_flag.is_empty() {
            pool.interrupts = parse_all(&args.interrupt_flag)?;
        }
    }
    daemon::init_logging(format);
    for note in notes {
        tracing::warn!("{note}");
    }
    daemon::raise_fd_limit();
    let files = work::FilesOptions {
        root: args.root.clone(),
        allow_hidden: args.allow_hidden,
    };
    let factory = work::factory(&kind, files)?;
    let ctx = Context::with_max_message_bytes(limit);
    let shutdown = Shutdown::new();
    shutdown.on_signals(args.grace.grace(drain, args.drain_seconds))?;
    let metrics = Metrics::new();
    metrics.zmq(&ctx);
    let threads = daemon::start_workers(&ctx, &pool, &factory, &metrics, &shutdown)?;
    let listener = daemon::metrics_listener(metrics_listen.as_deref(), &metrics, &shutdown)?;
    for t in threads {
        prime_server::component::join(t);
    }
    shutdown.stop();
    if let Some(l) = listener {
        let _ = l.join();
    }
    tracing::info!("prime_workerd stopped");
    Ok(())
}

/// The next stage's proxy from DOWNSTREAM_PROXY: none for the last stage (`-`, `none`, or the
/// C++ daemons' `ipc:///dev/null` and `inproc://dev_null`).
fn downstream_endpoint(down: &str) -> anyhow::Result<Option<prime_server::Endpoint>> {
    Ok(match down {
        "-" | "none" | "ipc:///dev/null" | "inproc://dev_null" => None,
        d => Some(d.parse()?),
    })
}

fn parse_all(endpoints: &[String]) -> anyhow::Result<Vec<prime_server::Endpoint>> {
    Ok(endpoints
        .iter()
        .map(|e| e.parse())
        .collect::<Result<_, _>>()?)
}
