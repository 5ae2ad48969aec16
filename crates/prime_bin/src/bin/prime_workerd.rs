//! prime_workerd: a pool of worker threads as its own process.
//!
//! `prime_workerd UPSTREAM_PROXY DOWNSTREAM_PROXY LOOPBACK INTERRUPT [DRAIN_SECONDS] --work NAME`
//! (the C++ daemon's arguments; `-` as DOWNSTREAM_PROXY for the last stage) or
//! `prime_workerd --config FILE --stage NAME`. On SIGTERM each worker leaves its proxy, finishes
//! the job in hand, and the process exits 0.

use anyhow::{bail, Context as _};
use clap::Parser;
use prime_bin::{daemon, work};
use prime_server::metrics::Metrics;
use prime_server::security::WorkerKeys;
use prime_server::shutdown::{OnDrain, Shutdown};
use prime_server::topology::{HeartbeatConfig, Topology};
use prime_server::transport::Context;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(version, about = "A pool of workers for one stage")]
struct Args {
    /// This stage's proxy, its downstream endpoint.
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
    /// Named form of UPSTREAM_PROXY.
    #[arg(long = "upstream", value_name = "ENDPOINT")]
    upstream_flag: Option<String>,
    /// Named form of DOWNSTREAM_PROXY.
    #[arg(long = "downstream", value_name = "ENDPOINT")]
    downstream_flag: Option<String>,
    /// Named form of LOOPBACK; repeat it for several front servers.
    #[arg(long = "loopback", value_name = "ENDPOINT")]
    loopback_flag: Vec<String>,
    /// Named form of INTERRUPT; repeat it for several front servers.
    #[arg(long = "interrupt", value_name = "ENDPOINT")]
    interrupt_flag: Vec<String>,
    /// Named form of DRAIN_SECONDS (also DRAIN,SHUTDOWN); with --config, overrides the file's
    /// `drain_seconds`.
    #[arg(long = "drain-seconds", value_name = "SECONDS", value_parser = daemon::drain_arg)]
    drain_flag: Option<daemon::DrainArg>,
    /// Seconds after the drain before the job in hand is stopped (default 1; with --config,
    /// overrides the file's `shutdown_seconds`).
    #[arg(long, value_name = "SECONDS")]
    shutdown_seconds: Option<u64>,
    /// A topology file; with --stage, runs that stage's workers.
    #[arg(long)]
    config: Option<String>,
    /// The stage of the topology file to serve.
    #[arg(long)]
    stage: Option<String>,
    /// What the workers run (prime_parse, prime_test, echo, files); from the file with --config.
    #[arg(long)]
    work: Option<String>,
    /// Worker threads (default: the stage's `workers`, or 2).
    #[arg(long)]
    workers: Option<usize>,
    /// The stage's index, from 1 (written into the headers, for logs).
    #[arg(long, default_value_t = 1)]
    stage_index: u8,
    /// The directory the `files` work serves.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Let the `files` work serve and list hidden files and folders (any path segment starting
    /// with `.`, such as `.git/` or `.env`); without it they answer 404.
    #[arg(long)]
    allow_hidden: bool,
    /// Heartbeat interval in milliseconds (must match the proxy's).
    #[arg(long, default_value_t = 2500)]
    heartbeat_ms: u64,
    /// The largest frame any of its zmq sockets takes in; a peer that sends a larger one is
    /// disconnected (default: the topology's `max_message_bytes`, or 4 × 10 MiB + 64 KiB).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// `text` or `json` log lines.
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
    /// Serve Prometheus metrics at http://ADDR/metrics (default: the stage's
    /// `workers_metrics_listen` with --config, else none).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Named flags and the C++ positional arguments mean the same; a flag wins.
    daemon::prefer_flag(&mut args.upstream_proxy, args.upstream_flag.take());
    daemon::prefer_flag(&mut args.downstream_proxy, args.downstream_flag.take());
    daemon::prefer_flag(&mut args.drain_seconds, args.drain_flag.take());
    let mut loopbacks: Vec<String> = args.loopback.iter().cloned().collect();
    loopbacks.extend(args.loopback_flag.iter().cloned());
    let mut interrupts: Vec<String> = args.interrupt.iter().cloned().collect();
    interrupts.extend(args.interrupt_flag.iter().cloned());
    let mut metrics_listen = args.metrics_listen.clone();
    let (pool, kind, drain, format, limit) = match (&args.config, &args.upstream_proxy) {
        (Some(path), None) => {
            let t = Topology::load(path)?;
            let name = args.stage.as_deref().context("--config needs --stage NAME")?;
            let (i, stage) = t.stage(name)?;
            let mut pool = daemon::PoolSpec::from_topology(&t, i, OnDrain::FinishAndExit)?;
            if let Some(n) = args.workers {
                pool.workers = n;
            }
            let kind = args.work.clone().unwrap_or_else(|| stage.work.clone());
            if metrics_listen.is_none() {
                metrics_listen = stage.workers_metrics_listen.clone();
            }
            let limit = daemon::message_limit(
                args.max_message_bytes,
                t.max_message_bytes(),
                &daemon::max_bodies(&t),
            )?;
            let grace = daemon::grace(t.grace(), args.drain_seconds, args.shutdown_seconds);
            (pool, kind, grace, args.log_format.unwrap_or(t.log_format), limit)
        }
        (None, Some(up)) => {
            let Some(down) = &args.downstream_proxy else {
                bail!("give UPSTREAM_PROXY DOWNSTREAM_PROXY LOOPBACK INTERRUPT (see --help)");
            };
            if loopbacks.is_empty() || interrupts.is_empty() {
                bail!("give UPSTREAM_PROXY DOWNSTREAM_PROXY LOOPBACK INTERRUPT (see --help)");
            }
            let downstream = match down.as_str() {
                "-" | "none" | "ipc:///dev/null" | "inproc://dev_null" => None,
                d => Some(d.parse()?),
            };
            let has_next = downstream.is_some();
            let pool = daemon::PoolSpec {
                name: "worker".into(),
                upstream: up.parse()?,
                downstream,
                loopbacks: parse_all(&loopbacks)?,
                interrupts: parse_all(&interrupts)?,
                stage: args.stage_index,
                workers: args.workers.unwrap_or(2),
                heartbeat: HeartbeatConfig {
                    interval_ms: args.heartbeat_ms,
                    ..HeartbeatConfig::default()
                }
                .heartbeat(),
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
            let kind = args.work.clone().context("--work NAME is needed (prime_parse, prime_test, echo, files)")?;
            let limit = args
                .max_message_bytes
                .unwrap_or(prime_server::transport::DEFAULT_MAX_MESSAGE_BYTES);
            let grace = daemon::grace(Default::default(), args.drain_seconds, args.shutdown_seconds);
            (pool, kind, grace, args.log_format.unwrap_or_default(), limit)
        }
        _ => bail!("give UPSTREAM_PROXY DOWNSTREAM_PROXY LOOPBACK INTERRUPT --work NAME, or --config FILE --stage NAME"),
    };
    daemon::init_logging(format);
    daemon::raise_fd_limit();
    let files = work::FilesOptions {
        root: args.root.clone(),
        allow_hidden: args.allow_hidden,
    };
    let factory = work::factory(&kind, files)?;
    let ctx = Context::with_max_message_bytes(limit);
    let shutdown = Shutdown::new();
    shutdown.on_signals(drain)?;
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

fn parse_all(endpoints: &[String]) -> anyhow::Result<Vec<prime_server::Endpoint>> {
    Ok(endpoints
        .iter()
        .map(|e| e.parse())
        .collect::<Result<_, _>>()?)
}
