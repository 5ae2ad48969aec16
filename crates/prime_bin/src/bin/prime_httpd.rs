//! prime_httpd: the front server as its own process.
//!
//! `prime_httpd LISTEN PROXY LOOPBACK INTERRUPT [ENABLE_LOGGING] [MAX_REQUEST_SIZE]
//! [TIMEOUT_SECONDS] [DRAIN_SECONDS] [HEALTH_PATH]` (the C++ daemon's arguments), the same as
//! flags, or `prime_httpd --config FILE [--server NAME]`, where the flags given override the
//! file's values (see `prime_bin::flags`). On SIGTERM it drains: it keeps accepting and serving
//! while its health path answers 503, then stops accepting, finishes what is in flight within
//! the shutdown time, answers the rest 503, and exits 0.

use anyhow::{bail, Context as _};
use clap::Parser;
use prime_bin::daemon;
use prime_bin::flags::{self, FrontFlags, GraceFlags};
use prime_server::metrics::Metrics;
use prime_server::security::FrontKeys;
use prime_server::shutdown::Shutdown;
use prime_server::topology::{self, HeartbeatConfig, ServerSection, Topology};
use prime_server::transport::Context;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The front server: HTTP (or netstring) clients in, jobs to the first stage's proxy",
    after_help = flags::RULE
)]
struct Args {
    /// Where clients connect: tcp://*:8002, tcp://127.0.0.1:8002 or HOST:PORT.
    #[arg(conflicts_with = "config")]
    listen: Option<String>,
    /// The first stage's proxy, upstream endpoint.
    proxy: Option<String>,
    /// Where workers send replies (bound).
    loopback: Option<String>,
    /// Where workers listen for interrupts (bound).
    interrupt: Option<String>,
    /// One access-log line per request: off for `false` (any case), `0`, `no` or `off`, on
    /// otherwise (as the C++ prime_httpd).
    enable_logging: Option<String>,
    /// Largest request body in bytes.
    max_request_size: Option<usize>,
    /// Seconds before a request is answered 504 (0 = never).
    timeout_seconds: Option<u64>,
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    /// A path answered by the server itself (200, or 503 while draining).
    health_path: Option<String>,
    #[command(flatten)]
    front: FrontFlags,
    /// Named form of PROXY [file: the first [[stage]]'s `upstream`].
    #[arg(long = "proxy", value_name = "ENDPOINT")]
    proxy_flag: Option<String>,
    /// Named form of LOOPBACK [file: `loopback`].
    #[arg(long = "loopback", value_name = "ENDPOINT")]
    loopback_flag: Option<String>,
    /// Named form of INTERRUPT [file: `interrupt`].
    #[arg(long = "interrupt", value_name = "ENDPOINT")]
    interrupt_flag: Option<String>,
    #[command(flatten)]
    grace: GraceFlags,
    /// A topology file; runs its front server (see --server).
    #[arg(long)]
    config: Option<String>,
    /// Which [[server]] of the topology file to run (needed when it has several).
    #[arg(long, requires = "config")]
    server: Option<String>,
    /// The largest frame any of its zmq sockets takes in; a peer that sends a larger one is
    /// disconnected [file: `max_message_bytes`; default 4 × the largest body + 64 KiB].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// `text` or `json` log lines [file: `log_format`; default text].
    #[arg(long, value_parser = daemon::log_format)]
    log_format: Option<prime_server::topology::LogFormat>,
    /// Heartbeat interval in milliseconds (must match the workers'): how often this server
    /// tells workers it is alive; they drop the jobs of a server silent for 3 intervals [file:
    /// `[heartbeat] interval_ms`; default 2500].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ms: Option<u64>,
    /// CURVE: the front's secret key file (`prime_keygen NAME` writes NAME.secret); needs
    /// --proxy-key. Its loopback and interrupt endpoints then admit only the keys of
    /// --allow-worker, its zmq front only those of --allow-client. With --config, keys come
    /// from the topology's [security].
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    curve_secret: Option<PathBuf>,
    /// The first stage's proxy's public key file.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    proxy_key: Option<PathBuf>,
    /// A public key file of workers (of any stage) that may reply; repeat it for several.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    allow_worker: Vec<PathBuf>,
    /// A public key file of zmq clients (--zmq-listen); repeat it for several.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    allow_client: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Named flags and the C++ positional arguments mean the same; a flag wins.
    daemon::prefer_flag(&mut args.proxy, args.proxy_flag.take());
    daemon::prefer_flag(&mut args.loopback, args.loopback_flag.take());
    daemon::prefer_flag(&mut args.interrupt, args.interrupt_flag.take());
    let mut warnings = Vec::new();
    let (mut section, proxy, drain, format, mut heartbeat, default_limit, keys) = match &args.config
    {
        Some(path) => {
            let mut t = Topology::load(path)?;
            let mut s = t.server(args.server.as_deref())?.clone();
            // The flags given before the file's derived values (the message limit).
            args.front.apply(&mut s)?;
            for server in t.servers.iter_mut().filter(|x| x.name == s.name) {
                *server = s.clone();
            }
            let keys = t.front_keys(&s)?;
            let proxy = t.stages[0].upstream.clone();
            let format = args.log_format.unwrap_or(t.log_format);
            (
                s,
                proxy,
                t.grace(),
                format,
                t.heartbeat,
                t.max_message_bytes(),
                keys,
            )
        }
        None => {
            let listen = args.front.listen.clone().or(args.listen.clone());
            let (Some(listen), Some(proxy), Some(lb), Some(int)) =
                (listen, &args.proxy, &args.loopback, &args.interrupt)
            else {
                bail!(
                    "give LISTEN PROXY LOOPBACK INTERRUPT (or --listen, --proxy, --loopback, \
                         --interrupt), or --config FILE (see --help)"
                );
            };
            let mut s = ServerSection::new(&listen, lb, int);
            flags::given(&mut s.timeout_seconds, args.timeout_seconds);
            flags::given(&mut s.max_body_bytes, args.max_request_size);
            if let Some(value) = &args.enable_logging {
                let (on, warning) = flags::cxx_enable_logging(value);
                s.access_log = on;
                warnings.extend(warning);
            }
            s.health_path = args.health_path.clone();
            // The one rule: a named flag overrides its positional argument.
            args.front.apply(&mut s)?;
            let limit = topology::message_limit_for_body(s.max_body_bytes);
            (
                s,
                proxy.clone(),
                Default::default(),
                args.log_format.unwrap_or_default(),
                HeartbeatConfig::default(),
                limit,
                match &args.curve_secret {
                    None => None,
                    Some(secret) => Some(FrontKeys {
                        keypair: daemon::read_keypair(secret)?,
                        proxy: daemon::required_public_key(args.proxy_key.as_ref(), "--proxy-key")?,
                        workers: daemon::read_public_keys(&args.allow_worker)?,
                        clients: daemon::read_public_keys(&args.allow_client)?,
                    }),
                },
            )
        }
    };
    // The one rule, for this daemon's own flags: given, they override the file's values.
    let proxy = args.proxy.clone().unwrap_or(proxy);
    flags::given(&mut section.loopback, args.loopback.clone());
    flags::given(&mut section.interrupt, args.interrupt.clone());
    flags::given(&mut heartbeat.interval_ms, args.heartbeat_ms);
    let limit = daemon::message_limit(
        args.max_message_bytes,
        default_limit,
        &[section.max_body_bytes],
    )?;
    daemon::init_logging(format);
    for w in warnings {
        tracing::warn!("{w}");
    }
    daemon::raise_fd_limit();
    let ctx = Context::with_max_message_bytes(limit);
    let shutdown = Shutdown::new();
    shutdown.on_signals(args.grace.grace(drain, args.drain_seconds))?;
    let metrics = Metrics::new();
    metrics.zmq(&ctx);
    let listener =
        daemon::metrics_listener(section.metrics_listen.as_deref(), &metrics, &shutdown)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let zmq_clients = keys.as_ref().map(FrontKeys::zmq_clients);
        let server = daemon::start_server(
            &ctx,
            &section,
            &proxy.parse()?,
            heartbeat.heartbeat(),
            keys,
            &metrics,
            &shutdown,
        )
        .context("starting the server core")?;
        daemon::serve_front(
            &ctx,
            &section,
            server,
            shutdown.clone(),
            None,
            zmq_clients,
            &metrics,
        )
        .await
    });
    shutdown.stop();
    drop(rt);
    if let Some(l) = listener {
        let _ = l.join();
    }
    result?;
    tracing::info!("prime_httpd stopped");
    Ok(())
}
