//! What every daemon does the same way: logging, signals, and starting the parts of a topology
//! (front servers, proxies, workers).

use crate::work::Factory;
use prime_server::endpoint::{Endpoint, InvalidEndpoint};
use prime_server::metrics::{HttpMetrics, Metrics};
use prime_server::protocol::{self, http::HttpConfig, netstring::Netstring, tls::Tls};
use prime_server::proxy::{Proxy, ProxyConfig};
use prime_server::security::{self, FrontKeys, ProxyKeys, WorkerKeys};
use prime_server::server::{Server, ServerConfig};
use prime_server::shutdown::{Grace, OnDrain, Shutdown};
use prime_server::topology::{self, LogFormat, Protocol, ServerSection, StageSection, Topology};
use prime_server::transport::Context;
use prime_server::transport::{Admission, Keypair, PublicKey};
use prime_server::worker::{Worker, WorkerConfig};
use prime_server::Heartbeat;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

/// A daemon's named flag and its C++ positional argument mean the same; the flag wins.
pub fn prefer_flag<T>(positional: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *positional = flag;
    }
}

/// A drain time given on a command line: `DRAIN` or the C++ form `DRAIN,SHUTDOWN`, whole
/// seconds (see [`drain_arg`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainArg {
    /// The drain.
    pub drain: Duration,
    /// The shutdown time after it, if given.
    pub shutdown: Option<Duration>,
}

/// Parses a drain argument (the positional DRAIN_SECONDS or `--drain-seconds`): `10`, or `10,5`
/// for a 10 s drain and 5 s of shutdown.
pub fn drain_arg(s: &str) -> Result<DrainArg, String> {
    let (drain, shutdown) = prime_server::shutdown::Grace::parse_seconds(s)?;
    Ok(DrainArg { drain, shutdown })
}

/// The help text of every daemon's drain argument and `--shutdown-seconds`.
pub const DRAIN_HELP: &str = "After SIGTERM/SIGINT: seconds to keep accepting and serving \
    while health checks answer 503, or DRAIN,SHUTDOWN (the C++ form, e.g. 10,5). Default 28. An \
    idle process (no client connection, nothing in flight) does not wait it out; a second signal \
    stops at once.";

/// The drain and shutdown times of a daemon: `base` (the topology's, or the defaults), with
/// what the command line gave over it (`drain`: the positional argument or `--drain-seconds`,
/// whose `,SHUTDOWN` part counts unless `--shutdown-seconds` is given too).
pub fn grace(
    base: prime_server::shutdown::Grace,
    drain: Option<DrainArg>,
    shutdown_seconds: Option<u64>,
) -> prime_server::shutdown::Grace {
    let mut g = base;
    if let Some(d) = drain {
        g.drain = d.drain;
        if let Some(s) = d.shutdown {
            g.shutdown = s;
        }
    }
    if let Some(s) = shutdown_seconds {
        g.shutdown = Duration::from_secs(s);
    }
    g
}

/// An all-in-one daemon's front (`prime_echod`, `prime_filed`): the `[[server]]` named `server`
/// of the topology file `config` with its drain times and log format, or without a file a
/// section for `listen` that `defaults` adjusts; the front flags given over it either way (the
/// one rule, see [`crate::flags`]). Sets up logging (`log_format` over the file's) and the
/// open-file limit.
pub fn all_in_one_front(
    config: Option<&str>,
    server: Option<&str>,
    listen: Option<String>,
    front: &crate::flags::FrontFlags,
    log_format: Option<LogFormat>,
    defaults: impl FnOnce(&mut ServerSection),
) -> anyhow::Result<(ServerSection, Grace)> {
    let (mut section, grace, format) = match config {
        Some(path) => {
            let t = Topology::load(path)?;
            let s = t.server(server)?.clone();
            (s, t.grace(), t.log_format)
        }
        None => {
            let listen = front.listen.clone().or(listen);
            let listen = listen
                .ok_or_else(|| anyhow::anyhow!("give LISTEN, or --config FILE (see --help)"))?;
            let mut section = ServerSection::new(&listen, "-", "-");
            defaults(&mut section);
            (section, Grace::default(), LogFormat::Text)
        }
    };
    // The one rule: a flag given overrides the file's value (or the positional argument's).
    front.apply(&mut section)?;
    init_logging(log_format.unwrap_or(format));
    raise_fd_limit();
    Ok((section, grace))
}

/// Sets up `tracing` to stderr: text or JSON lines, level from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Raises the soft open-file limit to the hard limit (logging the limit in force), so client
/// connections and zmq have every descriptor the system allows; a failure is logged and the
/// daemon goes on with the limit it has. Call it after [`init_logging`], before anything opens
/// descriptors.
pub fn raise_fd_limit() {
    if let Err(e) = prime_server::fd_limit::raise() {
        tracing::warn!(error = %e, "cannot read the open-file limit");
    }
}

/// The cap on a front's client connections: the section's `max_connections`, or the default
/// from the open-file limit shared by the `fronts` fronts of this process. Warns when a cap set
/// by hand leaves zmq less than the default reserve.
pub fn connection_cap(section: &ServerSection, fronts: usize) -> usize {
    use prime_server::fd_limit;
    let Ok(limit) = fd_limit::current() else {
        return section
            .max_connections
            .unwrap_or_else(fd_limit::default_max_connections);
    };
    let default = fd_limit::max_connections_for(limit.soft);
    match section.max_connections {
        None => (default / fronts.max(1)).max(1),
        Some(n) => {
            if n > default {
                tracing::warn!(
                    front = %section.name,
                    max_connections = n,
                    fd_limit = limit.soft,
                    reserve = fd_limit::reserve(limit.soft),
                    "max_connections leaves zmq less than the reserve of descriptors: if they \
                     run out, a worker connecting aborts the front (libzmq)"
                );
            }
            n
        }
    }
}

/// Parses `--log-format`.
pub fn log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "--log-format: expected text or json, got {other:?}"
        )),
    }
}

/// The largest frame this process's zmq sockets take in: `flag` (`--max-message-bytes`) if
/// given, else `default` (the topology's, or one derived from the largest body); refused when a
/// request body of one of `max_bodies` bytes would not fit in a frame.
pub fn message_limit(
    flag: Option<usize>,
    default: usize,
    max_bodies: &[usize],
) -> anyhow::Result<usize> {
    let limit = flag.unwrap_or(default);
    for &body in max_bodies {
        topology::check_message_limit(limit, body)
            .map_err(|why| anyhow::anyhow!("--max-message-bytes: {why}"))?;
    }
    Ok(limit)
}

/// Every `max_body_bytes` of a topology's servers.
pub fn max_bodies(t: &Topology) -> Vec<usize> {
    t.servers.iter().map(|s| s.max_body_bytes).collect()
}

/// Serves `metrics` at `http://ADDR/metrics` (`--metrics-listen`, or the topology's key) on a
/// thread of its own until `shutdown` stops; nothing when `addr` is `None`. Fails at once if
/// the address cannot be bound.
pub fn metrics_listener(
    addr: Option<&str>,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("--metrics-listen: expected ADDR:PORT, got {addr:?}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bound = rt
        .block_on(prime_server::metrics::serve(
            addr,
            metrics.clone(),
            shutdown.clone(),
        ))
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    println!("metrics on http://{bound}/metrics");
    let shutdown = shutdown.clone();
    Ok(Some(
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                rt.block_on(shutdown.stopped());
            })?,
    ))
}

/// Reads a daemon's own key pair from its secret key file (`--curve-secret`).
pub fn read_keypair(path: &std::path::Path) -> anyhow::Result<Keypair> {
    Ok(security::read_secret(path)?)
}

/// Reads public key files (`--proxy-key`, `--allow-…`).
pub fn read_public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    Ok(paths
        .iter()
        .map(|p| security::read_public(p))
        .collect::<Result<_, _>>()?)
}

/// Reads one public key file, required with `--curve-secret`: `flag` names it in the error.
pub fn required_public_key(path: Option<&PathBuf>, flag: &str) -> anyhow::Result<PublicKey> {
    let path =
        path.ok_or_else(|| anyhow::anyhow!("--curve-secret needs {flag} FILE (a .public file)"))?;
    Ok(security::read_public(path)?)
}

/// Binds a stage's proxy and runs it on a thread.
pub fn start_proxy(
    ctx: &Context,
    stage: &StageSection,
    heartbeat: Heartbeat,
    on_drain: OnDrain,
    security: Option<ProxyKeys>,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<JoinHandle<()>> {
    let mut cfg = ProxyConfig::new(stage.upstream.parse()?, stage.downstream.parse()?);
    cfg.security = security;
    cfg.stage = stage.name.clone();
    cfg.queue_limit = stage.queue_limit;
    cfg.queue_limit_bytes = stage.queue_limit_bytes;
    cfg.heartbeat = heartbeat;
    cfg.on_drain = on_drain;
    cfg.max_attempts = stage.max_attempts;
    let proxy = Proxy::bind(ctx, cfg)?;
    metrics.proxy(&stage.name, proxy.stats());
    tracing::info!(stage = %stage.name, upstream = %stage.upstream, downstream = %stage.downstream, "proxy bound");
    Ok(proxy.spawn(format!("{}-proxy", stage.name), shutdown.clone())?)
}

/// What a pool of workers connects to.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// A name for threads and logs.
    pub name: String,
    /// The stage's proxy, downstream side.
    pub upstream: Endpoint,
    /// The next stage's proxy, upstream side.
    pub downstream: Option<Endpoint>,
    /// Every server's loopback.
    pub loopbacks: Vec<Endpoint>,
    /// Every server's interrupt endpoint.
    pub interrupts: Vec<Endpoint>,
    /// The stage's index, from 1.
    pub stage: u8,
    /// How many worker threads.
    pub workers: usize,
    /// Heartbeat timing.
    pub heartbeat: Heartbeat,
    /// Leave the proxy when the drain starts ([`OnDrain::FinishAndExit`], worker processes).
    pub on_drain: OnDrain,
    /// CURVE keys (front keys in the order of `loopbacks`); `None`: plain zmq.
    pub security: Option<WorkerKeys>,
}

impl PoolSpec {
    /// The pool of stage `i` of a topology: connected to its proxy and the next stage's, and to
    /// every server's loopback and interrupt endpoints, with the stage's worker count.
    pub fn from_topology(t: &Topology, i: usize, on_drain: OnDrain) -> anyhow::Result<PoolSpec> {
        let s = &t.stages[i];
        let endpoints = |all: Vec<String>| -> Result<Vec<Endpoint>, InvalidEndpoint> {
            all.iter().map(|e| e.parse()).collect()
        };
        Ok(PoolSpec {
            name: s.name.clone(),
            upstream: s.downstream.parse()?,
            downstream: t.worker_downstream(i).map(str::parse).transpose()?,
            loopbacks: endpoints(t.loopbacks())?,
            interrupts: endpoints(t.interrupts())?,
            stage: (i + 1) as u8,
            workers: s.workers,
            heartbeat: t.heartbeat.heartbeat(),
            on_drain,
            security: t.worker_keys(i)?,
        })
    }
}

/// Starts a pool of worker threads.
pub fn start_workers(
    ctx: &Context,
    pool: &PoolSpec,
    work: &Factory,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    let mut stats = Vec::new();
    for i in 0..pool.workers.max(1) {
        let cfg = WorkerConfig {
            upstream: pool.upstream.clone(),
            downstream: pool.downstream.clone(),
            loopbacks: pool.loopbacks.clone(),
            interrupts: pool.interrupts.clone(),
            heartbeat: pool.heartbeat,
            blob: Vec::new(),
            stage: pool.stage,
            batch_scheduling: true,
            on_drain: pool.on_drain,
            security: pool.security.clone(),
        };
        let worker = Worker::connect(ctx, cfg, work())?;
        stats.push(worker.stats());
        threads.push(worker.spawn(format!("{}-w{i}", pool.name), shutdown.clone())?);
    }
    metrics.workers(&pool.name, stats);
    // Started, not connected: a connect succeeds whether or not the proxy is there. Each worker
    // says `connected to the proxy` when it first hears it.
    tracing::info!(
        pool = %pool.name,
        workers = pool.workers,
        upstream = %pool.upstream,
        "workers started, waiting for their proxy"
    );
    Ok(threads)
}

/// Starts a front server's core (inside the current tokio runtime, so its pump runs there).
pub fn start_server(
    ctx: &Context,
    section: &ServerSection,
    proxy: &Endpoint,
    heartbeat: Heartbeat,
    security: Option<FrontKeys>,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<Server> {
    let mut cfg = ServerConfig::new(
        proxy.clone(),
        section.loopback.parse()?,
        section.interrupt.parse()?,
    );
    cfg.timeout = section.timeout();
    cfg.max_in_flight = section.max_in_flight;
    cfg.heartbeat = heartbeat;
    cfg.security = security;
    let server = Server::start(ctx, cfg, shutdown.clone())?;
    metrics.front(&section.name, &server);
    Ok(server)
}

/// The address to show people: the wildcard becomes localhost.
fn display_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Serves a front server's client protocol until the stop (the shutdown's phases: see
/// [`prime_server::shutdown`]). Prints the listening address on stdout, and
/// `hint` after it (`ADDR`, `HOST` and `PORT` replaced) as a command to try. The zmq front, if
/// the section has one, opens its socket in `ctx`, admitting the clients of `zmq_security`
/// (`None`: plain zmq).
#[allow(clippy::too_many_arguments)]
pub async fn serve_front(
    ctx: &Context,
    section: &ServerSection,
    server: Server,
    shutdown: Shutdown,
    hint: Option<&str>,
    zmq_security: Option<Admission>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    use std::io::Write;
    let tls = match section.tls_files().map_err(anyhow::Error::msg)? {
        None => None,
        Some((cert, key)) => {
            let tls = Tls::load(cert, key)?;
            tracing::info!(front = %section.name, cert = %cert.display(), key = %key.display(), "TLS certificate loaded (re-read on SIGHUP)");
            tokio::spawn(protocol::tls::reload_on_sighup(
                vec![tls.clone()],
                shutdown.clone(),
            )?);
            Some(tls)
        }
    };
    let listener = protocol::bind_listener(&section.listen)?;
    let addr = listener.local_addr()?;
    let max_connections = connection_cap(section, 1);
    let protocol_name = match section.protocol {
        Protocol::Http if tls.is_some() => "https",
        Protocol::Http => "http",
        Protocol::Netstring => "netstring",
    };
    // The log has it (JSON under --log-format json); stdout keeps the plain lines people and
    // scripts read.
    tracing::info!(front = %section.name, %addr, protocol = %protocol_name, max_connections, "front listening");
    println!("{} listening on {addr} ({protocol_name})", section.name);
    if let Some(h) = hint {
        let shown = display_addr(addr);
        let command = h
            .replace("ADDR", &shown.to_string())
            .replace("HOST", &shown.ip().to_string())
            .replace("PORT", &shown.port().to_string());
        tracing::info!(front = %section.name, %command, "try");
        println!("try: {command}");
    }
    std::io::stdout().flush()?;
    let zmq_listen: Option<Endpoint> = section.zmq_listen.as_deref().map(str::parse).transpose()?;
    let zmq_front = zmq_listen.map(|endpoint| {
        let config = protocol::zmq_front::ZmqFrontConfig {
            max_request: section.max_body_bytes,
            health: section.health_path.clone().map(String::into_bytes),
            request_timeout: section.timeout(),
            security: zmq_security,
            ..Default::default()
        };
        let (server, sd, ctx) = (server.clone(), shutdown.clone(), ctx.clone());
        tokio::spawn(async move {
            if let Err(e) =
                protocol::zmq_front::serve(&ctx, &endpoint, server, config, sd.clone()).await
            {
                tracing::error!(error = %e, "zmq front failed");
                sd.stop();
            }
        })
    });
    match section.protocol {
        Protocol::Http => {
            let config = HttpConfig {
                max_body: section.max_body_bytes,
                header_timeout: Duration::from_secs(section.header_timeout_seconds),
                health_path: section.health_path.clone(),
                access_log: section.access_log,
                request_timeout: section.timeout(),
                max_connections,
                metrics_path: (!section.metrics_path.is_empty())
                    .then(|| section.metrics_path.clone()),
                metrics: Some(metrics.clone()),
                requests: Some(HttpMetrics::new(metrics, &section.name)),
                tls,
                ..HttpConfig::default()
            };
            protocol::http::serve(listener, server.clone(), config, shutdown.clone()).await;
        }
        Protocol::Netstring => {
            let proto = Netstring {
                max_len: section.max_body_bytes,
                health: section.health_path.as_ref().map(|h| {
                    std::sync::Arc::new(protocol::netstring::HealthCheck {
                        request: h.clone().into_bytes().into(),
                        response: "OK".into(),
                    })
                }),
            };
            protocol::serve(
                listener,
                server.clone(),
                proto,
                max_connections,
                shutdown.clone(),
            )
            .await;
        }
    }
    shutdown.stopped().await;
    if let Some(z) = zmq_front {
        let _ = z.await;
    }
    server.closed().await;
    Ok(())
}

/// Runs a whole service in one process (stages over inproc) behind one front server, until the
/// stop; with signals wired for `grace`. Used by the all-in-one daemons.
pub fn run_all_in_one(
    section: &ServerSection,
    stages: Vec<(usize, Factory)>,
    grace: Grace,
) -> anyhow::Result<()> {
    let mut p =
        prime_server::pipeline::Pipeline::new(&format!("{}-{}", section.name, std::process::id()));
    for (workers, factory) in stages {
        p.stage_with(workers, move || factory());
    }
    run_pipeline(section, p, grace, None)
}

/// Runs a pipeline (its stages over its own endpoints) behind one front server described by
/// `section` (whose deadline and in-flight limit it takes), until the stop.
pub fn run_pipeline(
    section: &ServerSection,
    mut p: prime_server::pipeline::Pipeline,
    grace: Grace,
    hint: Option<&str>,
) -> anyhow::Result<()> {
    p.timeout = section.timeout();
    p.max_in_flight = section.max_in_flight;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let running = p.start_in(&rt)?;
    running.shutdown.on_signals(grace)?;
    let metrics = Metrics::new();
    metrics.front(&section.name, &running.server);
    if let Some(ctx) = &running.ctx {
        metrics.zmq(ctx);
    }
    for (i, stats) in running.stage_stats.iter().enumerate() {
        metrics.proxy(&(i + 1).to_string(), stats.clone());
    }
    for (i, stats) in running.worker_stats.iter().enumerate() {
        metrics.workers(&(i + 1).to_string(), stats.clone());
    }
    let listener = metrics_listener(
        section.metrics_listen.as_deref(),
        &metrics,
        &running.shutdown,
    )?;
    // In-memory stages have no zmq context; the zmq front, if any, needs one.
    let ctx = running
        .ctx
        .clone()
        .unwrap_or_else(|| Context::with_max_message_bytes(p.max_message_bytes));
    let result = rt.block_on(serve_front(
        &ctx,
        section,
        running.server.clone(),
        running.shutdown.clone(),
        hint,
        None,
        &metrics,
    ));
    running.shutdown.stop();
    running.join();
    if let Some(l) = listener {
        let _ = l.join();
    }
    result
}

/// Runs every part of a topology in one process: its proxies, its worker pools and its front
/// servers, with the topology's endpoints, their sockets opened in `ctx`.
pub fn run_topology(t: &Topology, ctx: &Context) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.on_signals(t.grace())?;
    let metrics = &Metrics::new();
    metrics.zmq(ctx);
    let mut listeners = Vec::new();
    for s in &t.servers {
        listeners.extend(metrics_listener(
            s.metrics_listen.as_deref(),
            metrics,
            &shutdown,
        )?);
    }
    let hb = t.heartbeat.heartbeat();
    let mut threads = Vec::new();
    for (i, s) in t.stages.iter().enumerate() {
        let keys = t.proxy_keys(i)?;
        threads.push(start_proxy(
            ctx,
            s,
            hb,
            OnDrain::ServeUntilStop,
            keys,
            metrics,
            &shutdown,
        )?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut servers = Vec::new();
        let mut zmq_admissions = Vec::new();
        for s in &t.servers {
            let keys = t.front_keys(s)?;
            zmq_admissions.push(keys.as_ref().map(FrontKeys::zmq_clients));
            servers.push(start_server(
                ctx,
                s,
                &t.stages[0].upstream.parse()?,
                hb,
                keys,
                metrics,
                &shutdown,
            )?);
        }
        for (i, s) in t.stages.iter().enumerate() {
            let pool = PoolSpec::from_topology(t, i, OnDrain::ServeUntilStop)?;
            let factory = crate::work::factory(&s.work, Default::default())?;
            threads.extend(start_workers(ctx, &pool, &factory, metrics, &shutdown)?);
        }
        // The fronts of one process share its descriptors: each gets its part of the default.
        let sections: Vec<ServerSection> = t
            .servers
            .iter()
            .map(|s| ServerSection {
                max_connections: Some(connection_cap(s, t.servers.len())),
                ..s.clone()
            })
            .collect();
        let fronts = sections.iter().zip(servers).zip(zmq_admissions).map(
            |((section, server), admission)| {
                serve_front(
                    ctx,
                    section,
                    server,
                    shutdown.clone(),
                    None,
                    admission,
                    metrics,
                )
            },
        );
        for r in futures_util::future::join_all(fronts).await {
            r?;
        }
        anyhow::Ok(())
    });
    shutdown.stop();
    for th in threads.into_iter().chain(listeners) {
        prime_server::component::join(th);
    }
    result
}
