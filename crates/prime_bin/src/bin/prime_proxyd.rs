//! prime_proxyd: one stage's load balancer as its own process.
//!
//! `prime_proxyd UPSTREAM DOWNSTREAM [DRAIN_SECONDS]` (the C++ daemon's arguments) or
//! `prime_proxyd --config FILE --stage NAME`, where the flags given override the file's values
//! (see `prime_bin::flags`). On SIGTERM it keeps dispatching until no job is
//! queued or in a worker's hands, or the drain time is over, then exits 0.

use anyhow::{bail, Context as _};
use clap::Parser;
use prime_bin::daemon;
use prime_bin::flags::{self, GraceFlags, ProxyFlags};
use prime_server::metrics::Metrics;
use prime_server::security::ProxyKeys;
use prime_server::shutdown::{OnDrain, Shutdown};
use prime_server::topology::{HeartbeatConfig, StageSection, Topology};
use prime_server::transport::Context;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "One stage's load-balancing proxy: workers pull, a job goes only to an idle worker",
    after_help = flags::RULE
)]
struct Args {
    /// Where the server or the previous stage's workers send jobs (bound), e.g. ipc:///tmp/ps/parse_in.
    #[arg(conflicts_with = "config")]
    upstream: Option<String>,
    /// Where this stage's workers connect (bound), e.g. ipc:///tmp/ps/parse_out.
    downstream: Option<String>,
    /// After SIGTERM/SIGINT: seconds to keep going while jobs are queued or held (the proxy
    /// exits as soon as none is), or DRAIN,SHUTDOWN: it stops after both. Default 28,1.
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg)]
    drain_seconds: Option<daemon::DrainArg>,
    #[command(flatten)]
    proxy: ProxyFlags,
    #[command(flatten)]
    grace: GraceFlags,
    /// A topology file; with --stage, runs that stage's proxy.
    #[arg(long, requires = "stage")]
    config: Option<String>,
    /// The stage of the topology file to run.
    #[arg(long, requires = "config")]
    stage: Option<String>,
    /// Heartbeat interval in milliseconds (must match the workers') [file: `[heartbeat]
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut stage, mut heartbeat, grace, format, limit, keys) = match &args.config {
        Some(path) => {
            let t = Topology::load(path)?;
            let name = args
                .stage
                .as_deref()
                .context("--config needs --stage NAME")?;
            let (i, stage) = t.stage(name)?;
            (
                stage.clone(),
                t.heartbeat,
                t.grace(),
                args.log_format.unwrap_or(t.log_format),
                daemon::message_limit(
                    args.max_message_bytes,
                    t.max_message_bytes(),
                    &daemon::max_bodies(&t),
                )?,
                t.proxy_keys(i)?,
            )
        }
        None => {
            let up = args.proxy.upstream.clone().or(args.upstream.clone());
            let down = args.proxy.downstream.clone().or(args.downstream.clone());
            let (Some(up), Some(down)) = (up, down) else {
                bail!(
                    "give UPSTREAM DOWNSTREAM (or --upstream, --downstream), or --config FILE \
                     --stage NAME (see --help)"
                );
            };
            (
                StageSection::new("stage", "", &up, &down),
                HeartbeatConfig::default(),
                Default::default(),
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
            )
        }
    };
    // The one rule: a flag given overrides the file's value (or the positional argument's).
    args.proxy.apply(&mut stage);
    flags::given(&mut heartbeat.interval_ms, args.heartbeat_ms);
    daemon::init_logging(format);
    daemon::raise_fd_limit();
    let ctx = Context::with_max_message_bytes(limit);
    let shutdown = Shutdown::new();
    shutdown.on_signals(args.grace.grace(grace, args.drain_seconds))?;
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
    let listener =
        daemon::metrics_listener(stage.proxy_metrics_listen.as_deref(), &metrics, &shutdown)?;
    prime_server::component::join(proxy);
    shutdown.stop();
    if let Some(l) = listener {
        let _ = l.join();
    }
    tracing::info!("prime_proxyd stopped");
    Ok(())
}
