//! prime_httpd: the front server as its own process.
//!
//! `prime_httpd LISTEN PROXY LOOPBACK INTERRUPT [ENABLE_LOGGING] [MAX_REQUEST_SIZE]
//! [TIMEOUT_SECONDS] [DRAIN_SECONDS] [HEALTH_PATH]` (the C++ daemon's arguments), the same as
//! flags, or `prime_httpd --config FILE [--server NAME]`. On SIGTERM it drains: it keeps
//! accepting and serving while its health path answers 503, then stops accepting, finishes what
//! is in flight within the shutdown time, answers the rest 503, and exits 0.

use anyhow::{bail, Context as _};
use clap::Parser;
use prime_bin::daemon;
use prime_server::metrics::Metrics;
use prime_server::security::FrontKeys;
use prime_server::shutdown::Shutdown;
use prime_server::topology::{self, HeartbeatConfig, Protocol, Topology};
use prime_server::transport::Context;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The front server: HTTP (or netstring) clients in, jobs to the first stage's proxy"
)]
struct Args {
    /// Where clients connect: tcp://*:8002, tcp://127.0.0.1:8002 or HOST:PORT.
    listen: Option<String>,
    /// The first stage's proxy, upstream endpoint.
    proxy: Option<String>,
    /// Where workers send replies (bound).
    loopback: Option<String>,
    /// Where workers listen for interrupts (bound).
    interrupt: Option<String>,
    /// `true` for one access-log line per request.
    enable_logging: Option<bool>,
    /// Largest request body in bytes.
    max_request_size: Option<usize>,
    /// Seconds before a request is answered 504 (0 = never).
    timeout_seconds: Option<u64>,
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    /// A path answered by the server itself (200, or 503 while draining).
    health_path: Option<String>,
    /// Named form of LISTEN.
    #[arg(long = "listen", value_name = "ENDPOINT")]
    listen_flag: Option<String>,
    /// Named form of PROXY.
    #[arg(long = "proxy", value_name = "ENDPOINT")]
    proxy_flag: Option<String>,
    /// Named form of LOOPBACK.
    #[arg(long = "loopback", value_name = "ENDPOINT")]
    loopback_flag: Option<String>,
    /// Named form of INTERRUPT.
    #[arg(long = "interrupt", value_name = "ENDPOINT")]
    interrupt_flag: Option<String>,
    /// Named form of ENABLE_LOGGING: one access-log line per request.
    #[arg(long)]
    access_log: bool,
    /// Named form of MAX_REQUEST_SIZE.
    #[arg(long = "max-body", value_name = "BYTES")]
    max_body_flag: Option<usize>,
    /// Named form of TIMEOUT_SECONDS.
    #[arg(long = "timeout", value_name = "SECONDS")]
    timeout_flag: Option<u64>,
    /// Named form of DRAIN_SECONDS (also DRAIN,SHUTDOWN); with --config, overrides the file's
    /// `drain_seconds`.
    #[arg(long = "drain-seconds", value_name = "SECONDS", value_parser = daemon::drain_arg)]
    drain_flag: Option<daemon::DrainArg>,
    /// After the drain: seconds given to what is in flight, accepting nothing new, before the
    /// rest is answered 503 and the process exits (default 1; with --config, overrides the
    /// file's `shutdown_seconds`).
    #[arg(long, value_name = "SECONDS")]
    shutdown_seconds: Option<u64>,
    /// Named form of HEALTH_PATH.
    #[arg(long = "health-path", value_name = "PATH")]
    health_flag: Option<String>,
    /// Also serve zmq clients (REQ/DEALER) on a ROUTER bound here (tcp:// or ipc://).
    #[arg(long, value_name = "ENDPOINT")]
    zmq_listen: Option<String>,
    /// Client connections served at once; one beyond is answered 503 and closed. Default: the
    /// open-file limit (raised to its hard limit at start) less a reserve for zmq. With --config,
    /// overrides the server's `max_connections`.
    #[arg(long, value_name = "N", value_parser = daemon::max_connections_arg)]
    max_connections: Option<usize>,
    /// A topology file; runs its front server (see --server).
    #[arg(long)]
    config: Option<String>,
    /// Which [[server]] of the topology file to run (needed when it has several).
    #[arg(long)]
    server: Option<String>,
    /// `http` or `netstring`.
    #[arg(long, default_value = "http")]
    protocol: String,
    /// Seconds a client may take to send a request head.
    #[arg(long, default_value_t = 30)]
    header_timeout: u64,
    /// The largest frame any of its zmq sockets takes in; a peer that sends a larger one is
    /// disconnected (default: the topology's `max_message_bytes`, or 4 × the largest body + 64 KiB).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// `text` or `json` log lines.
    #[arg(long, value_parser = daemon::log_format)]
    log_format: Option<prime_server::topology::LogFormat>,
    /// Heartbeat interval in milliseconds (must match the workers'): how often this server
    /// tells workers it is alive; they drop the jobs of a server silent for 3 intervals.
    #[arg(long, default_value_t = 2500)]
    heartbeat_ms: u64,
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
    /// Also serve Prometheus metrics at http://ADDR/metrics (default: the server's
    /// `metrics_listen` with --config, else none).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Named flags and the C++ positional arguments mean the same; a flag wins.
    daemon::prefer_flag(&mut args.listen, args.listen_flag.take());
    daemon::prefer_flag(&mut args.proxy, args.proxy_flag.take());
    daemon::prefer_flag(&mut args.loopback, args.loopback_flag.take());
    daemon::prefer_flag(&mut args.interrupt, args.interrupt_flag.take());
    daemon::prefer_flag(&mut args.max_request_size, args.max_body_flag.take());
    daemon::prefer_flag(&mut args.timeout_seconds, args.timeout_flag.take());
    daemon::prefer_flag(&mut args.drain_seconds, args.drain_flag.take());
    daemon::prefer_flag(&mut args.health_path, args.health_flag.take());
    if args.access_log {
        args.enable_logging = Some(true);
    }
    let (section, proxy, drain, format, heartbeat, default_limit, keys) =
        match (&args.config, &args.listen) {
            (Some(path), None) => {
                let t = Topology::load(path)?;
                let s = t.server(args.server.as_deref())?.clone();
                let keys = t.front_keys(&s)?;
                let proxy = t.stages[0].upstream.clone();
                let heartbeat = t.heartbeat.heartbeat();
                let format = args.log_format.unwrap_or(t.log_format);
                (
                    s,
                    proxy,
                    daemon::grace(t.grace(), args.drain_seconds, args.shutdown_seconds),
                    format,
                    heartbeat,
                    t.max_message_bytes(),
                    keys,
                )
            }
            (None, Some(listen)) => {
                let (Some(proxy), Some(lb), Some(int)) =
                    (&args.proxy, &args.loopback, &args.interrupt)
                else {
                    bail!("give LISTEN PROXY LOOPBACK INTERRUPT (see --help)");
                };
                let protocol = match args.protocol.as_str() {
                    "http" => Protocol::Http,
                    "netstring" => Protocol::Netstring,
                    p => bail!("--protocol: expected http or netstring, got {p:?}"),
                };
                let mut s = daemon::server_section(
                    listen,
                    lb,
                    int,
                    protocol,
                    args.timeout_seconds.unwrap_or(60),
                    args.max_request_size.unwrap_or(10 * 1024 * 1024),
                    args.health_path.clone(),
                    args.enable_logging.unwrap_or(false),
                );
                s.header_timeout_seconds = args.header_timeout.max(1);
                s.zmq_listen = args.zmq_listen.clone();
                prime_server::protocol::listen_addrs(listen).map_err(anyhow::Error::msg)?;
                let limit = topology::message_limit_for_body(s.max_body_bytes);
                (
                    s,
                    proxy.clone(),
                    daemon::grace(
                        Default::default(),
                        args.drain_seconds,
                        args.shutdown_seconds,
                    ),
                    args.log_format.unwrap_or_default(),
                    HeartbeatConfig {
                        interval_ms: args.heartbeat_ms,
                        ..HeartbeatConfig::default()
                    }
                    .heartbeat(),
                    limit,
                    match &args.curve_secret {
                        None => None,
                        Some(secret) => Some(FrontKeys {
                            keypair: daemon::read_keypair(secret)?,
                            proxy: daemon::required_public_key(
                                args.proxy_key.as_ref(),
                                "--proxy-key",
                            )?,
                            workers: daemon::read_public_keys(&args.allow_worker)?,
                            clients: daemon::read_public_keys(&args.allow_client)?,
                        }),
                    },
                )
            }
            _ => bail!("give LISTEN PROXY LOOPBACK INTERRUPT, or --config FILE (see --help)"),
        };
    let mut section = section;
    if args.max_connections.is_some() {
        section.max_connections = args.max_connections;
    }
    let limit = daemon::message_limit(
        args.max_message_bytes,
        default_limit,
        &[section.max_body_bytes],
    )?;
    daemon::init_logging(format);
    daemon::raise_fd_limit();
    let ctx = Context::with_max_message_bytes(limit);
    let shutdown = Shutdown::new();
    shutdown.on_signals(drain)?;
    let metrics = Metrics::new();
    metrics.zmq(&ctx);
    let listen = args
        .metrics_listen
        .clone()
        .or(section.metrics_listen.clone());
    let listener = daemon::metrics_listener(listen.as_deref(), &metrics, &shutdown)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let zmq_clients = keys.as_ref().map(FrontKeys::zmq_clients);
        let server = daemon::start_server(
            &ctx,
            &section,
            &proxy.parse()?,
            heartbeat,
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
