//! prime_proxyd: one stage's load balancer as its own process.
//!
//! `prime_proxyd UPSTREAM DOWNSTREAM [DRAIN_SECONDS]` (the C++ daemon's arguments) or
//! `prime_proxyd --config FILE --stage NAME`. On SIGTERM it keeps dispatching until no job is
//! queued or in a worker's hands, or the drain time is over, then exits 0.

use anyhow::{bail, Context as _};
use clap::Parser;
use prime_bin::daemon;
use prime_server::metrics::Metrics;
use prime_server::security::ProxyKeys;
use prime_server::shutdown::{OnDrain, Shutdown};
use prime_server::topology::{HeartbeatConfig, StageSection, Topology};
use prime_server::transport::Context;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "One stage's load-balancing proxy: workers pull, a job goes only to an idle worker"
)]
struct Args {
    /// Where the server or the previous stage's workers send jobs (bound), e.g. ipc:///tmp/ps/parse_in.
    upstream: Option<String>,
    /// Where this stage's workers connect (bound), e.g. ipc:///tmp/ps/parse_out.
    downstream: Option<String>,
    /// After SIGTERM/SIGINT: seconds to keep going while jobs are queued or held (the proxy
    /// exits as soon as none is), or DRAIN,SHUTDOWN: it stops after both. Default 28,1.
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg)]
    drain_seconds: Option<daemon::DrainArg>,
    /// Named form of UPSTREAM.
    #[arg(long = "upstream", value_name = "ENDPOINT")]
    upstream_flag: Option<String>,
    /// Named form of DOWNSTREAM.
    #[arg(long = "downstream", value_name = "ENDPOINT")]
    downstream_flag: Option<String>,
    /// Named form of DRAIN_SECONDS (also DRAIN,SHUTDOWN); with --config, overrides the file's
    /// `drain_seconds`.
    #[arg(long = "drain-seconds", value_name = "SECONDS", value_parser = daemon::drain_arg)]
    drain_flag: Option<daemon::DrainArg>,
    /// Seconds after the drain before what is still queued is answered 503 (default 1; with
    /// --config, overrides the file's `shutdown_seconds`).
    #[arg(long, value_name = "SECONDS")]
    shutdown_seconds: Option<u64>,
    /// A topology file; with --stage, runs that stage's proxy.
    #[arg(long)]
    config: Option<String>,
    /// The stage of the topology file to run.
    #[arg(long)]
    stage: Option<String>,
    /// Jobs waiting for a worker before 503.
    #[arg(long, default_value_t = 4096)]
    queue_limit: usize,
    /// Bytes of payload the waiting jobs may hold together before 503.
    #[arg(long, default_value_t = prime_server::proxy::DEFAULT_QUEUE_LIMIT_BYTES)]
    queue_limit_bytes: usize,
    /// How many workers may be handed one job when the ones holding it die.
    #[arg(long, default_value_t = 2)]
    max_attempts: u8,
    /// Heartbeat interval in milliseconds (must match the workers').
    #[arg(long, default_value_t = 2500)]
    heartbeat_ms: u64,
    /// The largest frame any of its zmq sockets takes in; a peer that sends a larger one is
    /// disconnected (default: the topology's `max_message_bytes`, or 4 × 10 MiB + 64 KiB).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// `text` or `json` log lines.
    #[arg(long, value_parser = daemon::log_format)]
    log_format: Option<prime_server::topology::LogFormat>,
    /// CURVE: this proxy's secret key file (`prime_keygen NAME` writes NAME.secret). Both
    /// endpoints then admit only the keys of --allow-upstream and --allow-downstream. With
    /// --config, keys come from the topology's [security].
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    curve_secret: Option<PathBuf>,
    /// A public key file of a peer that may send jobs (a front, or a previous stage's
    /// workers); repeat it for several.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    allow_upstream: Vec<PathBuf>,
    /// A public key file of this stage's workers; repeat it for several.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    allow_downstream: Vec<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: the stage's
    /// `proxy_metrics_listen` with --config, else none).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Named flags and the C++ positional arguments mean the same; a flag wins.
    daemon::prefer_flag(&mut args.upstream, args.upstream_flag.take());
    daemon::prefer_flag(&mut args.downstream, args.downstream_flag.take());
    daemon::prefer_flag(&mut args.drain_seconds, args.drain_flag.take());
    let (stage, heartbeat, drain, format, limit, keys) =
        match (&args.config, &args.upstream, &args.downstream) {
            (Some(path), None, None) => {
                let t = Topology::load(path)?;
                let name = args
                    .stage
                    .as_deref()
                    .context("--config needs --stage NAME")?;
                let (i, stage) = t.stage(name)?;
                (
                    stage.clone(),
                    t.heartbeat,
                    daemon::grace(t.grace(), args.drain_seconds, args.shutdown_seconds),
                    args.log_format.unwrap_or(t.log_format),
                    daemon::message_limit(
                        args.max_message_bytes,
                        t.max_message_bytes(),
                        &daemon::max_bodies(&t),
                    )?,
                    t.proxy_keys(i)?,
                )
            }
            (None, Some(up), Some(down)) => (
                StageSection {
                    name: "stage".into(),
                    work: String::new(),
                    upstream: up.clone(),
                    downstream: down.clone(),
                    workers: 0,
                    queue_limit: args.queue_limit,
                    queue_limit_bytes: args.queue_limit_bytes.max(1),
                    max_attempts: args.max_attempts.max(1),
                    proxy_key: None,
                    worker_key: Vec::new(),
                    proxy_metrics_listen: None,
                    workers_metrics_listen: None,
                },
                HeartbeatConfig {
                    interval_ms: args.heartbeat_ms,
                    ..HeartbeatConfig::default()
                },
                daemon::grace(
                    Default::default(),
                    args.drain_seconds,
                    args.shutdown_seconds,
                ),
                args.log_format.unwrap_or_default(),
                args.max_message_bytes
                    .unwrap_or(prime_server::transport::DEFAULT_MAX_MESSAGE_BYTES),
                match &args.curve_secret {
                    None => None,
                    Some(secret) => Some(ProxyKeys {
                        keypair: daemon::read_keypair(secret)?,
                        senders: daemon::read_public_keys(&args.allow_upstream)?,
                        workers: daemon::read_public_keys(&args.allow_downstream)?,
                    }),
                },
            ),
            _ => bail!("give UPSTREAM DOWNSTREAM, or --config FILE --stage NAME (see --help)"),
        };
    daemon::init_logging(format);
    daemon::raise_fd_limit();
    let ctx = Context::with_max_message_bytes(limit);
    let shutdown = Shutdown::new();
    shutdown.on_signals(drain)?;
    let metrics = Metrics::new();
    metrics.zmq(&ctx);
    let proxy = daemon::start_proxy(
        &ctx,
        &stage,
        heartbeat.heartbeat(),
        OnDrain::FinishAndExit,
        keys,
        &metrics,
        &shutdown,
    )?;
    let listen = args.metrics_listen.or(stage.proxy_metrics_listen.clone());
    let listener = daemon::metrics_listener(listen.as_deref(), &metrics, &shutdown)?;
    prime_server::component::join(proxy);
    shutdown.stop();
    if let Some(l) = listener {
        let _ = l.join();
    }
    tracing::info!("prime_proxyd stopped");
    Ok(())
}
