//! prime_serverd: the "is this number prime?" demo.
//!
//! - `prime_serverd START,END [WORKERS]` simulates the whole service in one process and prints how
//!   many primes it found among the odd numbers of the range, how many requests it made, and the
//!   wall time.
//! - `prime_serverd [LISTEN] [WORKERS] [DRAIN_SECONDS] [HEALTH_PATH]` serves it over HTTP
//!   (`GET /is_prime?possible_prime=N`, `POST /is_prime` with body `N`); LISTEN is
//!   `tcp://*:8002`, `tcp://127.0.0.1:8002` or `host:port` (default `127.0.0.1:8002`).

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use prime_bin::{daemon, prime};
use prime_server::pipeline::{Pipeline, Transport};
use prime_server::topology::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// HTTP/1.1 (and 1.0): `GET /is_prime?possible_prime=N`, `POST /is_prime` with body `N`.
    Http,
    /// `len:payload,` requests and responses; the payload is the number.
    Netstring,
}

/// How the stages of the all-in-one service are joined.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum TransportArg {
    /// Shared in-memory queues that the workers pull from (no proxy threads, no zmq).
    Memory,
    /// zmq inproc sockets and a proxy thread per stage, as a multi-process deployment.
    Inproc,
}

impl TransportArg {
    fn transport(self) -> Transport {
        match self {
            TransportArg::Memory => Transport::Memory,
            TransportArg::Inproc => Transport::Inproc,
        }
    }
}

#[derive(Parser, Debug)]
#[command(version, about = "The prime_server demo: is this number prime?")]
struct Args {
    /// `START,END` to simulate (test every odd number of the range in one process), or the
    /// endpoint to listen on: `tcp://*:8002`, `tcp://127.0.0.1:8002` or `HOST:PORT`.
    #[arg(default_value = "127.0.0.1:8002")]
    target: String,
    /// Worker threads per stage (default: twice the number of cores, so a worker is always ready
    /// while another waits for its next job).
    workers: Option<usize>,
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    /// A health-check path (HTTP) or payload (netstring) answered by the server itself: 200 `OK`,
    /// or 503 during the drain (netstring: `OK` / `DRAINING`).
    health: Option<String>,
    /// The client protocol.
    #[arg(long, value_enum, default_value = "http")]
    protocol: Proto,
    /// Named form of DRAIN_SECONDS (also DRAIN,SHUTDOWN); with --config, overrides the file's
    /// `drain_seconds` (and `shutdown_seconds`).
    #[arg(long = "drain-seconds", value_name = "SECONDS", value_parser = daemon::drain_arg)]
    drain_flag: Option<daemon::DrainArg>,
    /// After the drain: seconds given to what is in flight, accepting nothing new, before the
    /// rest is answered 503 and the process exits (default 1); with --config, overrides the
    /// file's `shutdown_seconds`.
    #[arg(long, value_name = "SECONDS")]
    shutdown_seconds: Option<u64>,
    /// Log one line per request (id, method, path, status, bytes, µs) at target `access`.
    #[arg(long)]
    access_log: bool,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    max_body: usize,
    /// Seconds a client may take to send a request head; also closes idle keep-alive connections.
    #[arg(long, default_value_t = 30)]
    header_timeout: u64,
    /// Seconds a request may take before it is answered with a timeout (0 = no limit).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The most requests in flight; more are answered 503 at once.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Client connections served at once; one beyond is answered 503 (netstring: `ERROR 503`)
    /// and closed. Default: the open-file limit (raised to its hard limit at start) less a
    /// reserve for zmq. With --config, set `max_connections` per server in the file instead.
    #[arg(long, value_name = "N", value_parser = daemon::max_connections_arg, conflicts_with = "config")]
    max_connections: Option<usize>,
    /// Also serve Prometheus metrics at http://ADDR/metrics. With --config, set
    /// `metrics_listen` per server in the file instead.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    metrics_listen: Option<String>,
    /// The most jobs waiting at each stage; more are answered 503 at once.
    #[arg(long, default_value_t = 4096)]
    queue_limit: usize,
    /// Also serve zmq clients (REQ/DEALER) on a ROUTER bound here (tcp:// or ipc://).
    #[arg(long, value_name = "ENDPOINT")]
    zmq_listen: Option<String>,
    /// How the stages are joined: `memory` (the default; measured ~2-3x faster on cheap
    /// requests, see BENCHMARKS.md) or `inproc` (zmq, the multi-process code path).
    #[arg(long, value_enum, default_value = "memory")]
    transport: TransportArg,
    /// The largest frame any zmq socket takes in (ipc, tcp and the zmq front; inproc is not
    /// limited); a peer that sends a larger one is disconnected (default: the topology's
    /// `max_message_bytes` with --config, else 4 × --max-body + 64 KiB).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// With --compute-only: test the range this many times (to time one number).
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// `text` or `json` log lines (level from RUST_LOG).
    #[arg(long, value_parser = prime_bin::daemon::log_format)]
    log_format: Option<prime_server::topology::LogFormat>,
    /// Run the whole topology of this TOML file in one process (its endpoints, stages, servers).
    #[arg(long, conflicts_with_all = ["target", "workers", "drain_seconds", "health"])]
    config: Option<String>,
    /// With START,END: skip the pipeline and only compute, on WORKERS plain threads (the lower
    /// bound simulation mode is measured against).
    #[arg(long)]
    compute_only: bool,
}

fn parse_range(s: &str) -> Option<anyhow::Result<(u64, u64)>> {
    let (a, b) = s.split_once(',')?;
    Some((|| {
        let a: u64 = a
            .trim()
            .parse()
            .with_context(|| format!("bad START {a:?}"))?;
        let b: u64 = b.trim().parse().with_context(|| format!("bad END {b:?}"))?;
        if a > b {
            bail!("START must not be above END, got {a},{b}");
        }
        Ok((a, b))
    })())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    daemon::prefer_flag(&mut args.drain_seconds, args.drain_flag.take());
    if let Some(path) = &args.config {
        let mut t = prime_server::topology::Topology::load(path)?;
        let grace = daemon::grace(t.grace(), args.drain_seconds, args.shutdown_seconds);
        (t.drain_seconds, t.shutdown_seconds) = (grace.drain.as_secs(), grace.shutdown.as_secs());
        let limit = daemon::message_limit(
            args.max_message_bytes,
            t.max_message_bytes(),
            &daemon::max_bodies(&t),
        )?;
        prime_bin::daemon::init_logging(args.log_format.unwrap_or(t.log_format));
        prime_bin::daemon::raise_fd_limit();
        let ctx = prime_server::transport::Context::with_max_message_bytes(limit);
        prime_bin::daemon::run_topology(&t, &ctx)?;
        tracing::info!("prime_serverd stopped");
        return Ok(());
    }
    prime_bin::daemon::init_logging(args.log_format.unwrap_or_default());
    prime_bin::daemon::raise_fd_limit();
    let workers = args
        .workers
        .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get()));
    if workers == 0 {
        bail!("WORKERS must be at least 1");
    }
    match parse_range(&args.target) {
        Some(range) if args.compute_only => {
            let (start, end) = range?;
            let t = std::time::Instant::now();
            let repeat = usize::try_from(args.repeat.max(1)).unwrap_or(usize::MAX);
            let (primes, n) = prime::compute(start, end, workers, repeat);
            println!("{primes} primes found");
            println!("{n} numbers tested");
            println!("{:.3} s wall time", t.elapsed().as_secs_f64());
            Ok(())
        }
        Some(range) => simulate(range?, workers, args.transport.transport()),
        None => serve(&args, workers),
    }
}

fn simulate((start, end): (u64, u64), workers: usize, transport: Transport) -> anyhow::Result<()> {
    let sim = prime::simulate(start, end, workers, transport)?;
    println!("{} primes found", sim.primes);
    println!("{} requests made", sim.report.sent);
    println!("{:.3} s wall time", sim.report.elapsed.as_secs_f64());
    if sim.errors > 0 {
        bail!("{} requests were not answered cleanly", sim.errors);
    }
    Ok(())
}

fn serve(args: &Args, workers: usize) -> anyhow::Result<()> {
    let mut p = Pipeline::new("prime_serverd");
    p.transport(args.transport.transport());
    p.queue_limit = args.queue_limit;
    p.max_message_bytes = daemon::message_limit(
        args.max_message_bytes,
        prime_server::topology::message_limit_for_body(args.max_body),
        &[args.max_body],
    )?;
    p.stage(workers, prime::parse_stage)
        .stage(workers, prime::test_stage);
    let protocol = match args.protocol {
        Proto::Http => Protocol::Http,
        Proto::Netstring => Protocol::Netstring,
    };
    let mut section = daemon::server_section(
        &args.target,
        "-",
        "-",
        protocol,
        args.timeout,
        args.max_body,
        args.health.clone(),
        args.access_log,
    );
    section.name = "prime_serverd".into();
    section.max_in_flight = args.max_in_flight;
    section.max_connections = args.max_connections;
    section.metrics_listen = args.metrics_listen.clone();
    section.header_timeout_seconds = args.header_timeout.max(1);
    section.zmq_listen = args.zmq_listen.clone();
    let hint = match protocol {
        Protocol::Http => "curl 'http://ADDR/is_prime?possible_prime=32416190071'",
        Protocol::Netstring => "printf '11:32416190071,' | nc -q1 HOST PORT",
    };
    daemon::run_pipeline(
        &section,
        p,
        daemon::grace(
            Default::default(),
            args.drain_seconds,
            args.shutdown_seconds,
        ),
        Some(hint),
    )?;
    tracing::info!("prime_serverd stopped");
    Ok(())
}
