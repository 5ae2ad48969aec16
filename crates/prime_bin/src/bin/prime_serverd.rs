//! prime_serverd: the "is this number prime?" demo.
//!
//! - `prime_serverd START,END [WORKERS]` simulates the whole service in one process and prints how
//!   many primes it found among the odd numbers of the range, how many requests it made, and the
//!   wall time. `prime_serverd END [WORKERS]`, the C++ form, is the range from 3 to END.
//! - `prime_serverd [LISTEN] [WORKERS] [DRAIN_SECONDS] [HEALTH_PATH]` serves it over HTTP
//!   (`GET /is_prime?possible_prime=N`, `POST /is_prime` with body `N`); LISTEN is
//!   `tcp://*:8002`, `tcp://127.0.0.1:8002` or `host:port` (default `127.0.0.1:8002`).
//! - `prime_serverd --config FILE` runs a whole topology in one process; the flags given
//!   override the file's values (see `prime_bin::flags`).

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use prime_bin::flags::{self, FrontFlags, GraceFlags};
use prime_bin::{daemon, prime};
use prime_server::pipeline::{Pipeline, Transport};
use prime_server::topology::{Protocol, ServerSection};

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
#[command(
    version,
    about = "The prime_server demo: is this number prime?",
    after_help = flags::RULE
)]
struct Args {
    /// `START,END` to simulate (test every odd number of the range in one process; `END` alone,
    /// the C++ form, is `3,END`), or the endpoint to listen on: `tcp://*:8002`,
    /// `tcp://127.0.0.1:8002` or `HOST:PORT`.
    #[arg(default_value = "127.0.0.1:8002")]
    target: String,
    /// Worker threads per stage (default: twice the number of cores, so a worker is always ready
    /// while another waits for its next job).
    workers: Option<usize>,
    #[arg(value_name = "DRAIN_SECONDS", value_parser = daemon::drain_arg, help = daemon::DRAIN_HELP)]
    drain_seconds: Option<daemon::DrainArg>,
    /// A health-check path (HTTP) or payload (netstring) answered by the server itself: 200 `OK`,
    /// or 503 during the drain (netstring: `OK` / `DRAINING`); --health-path overrides it.
    health: Option<String>,
    #[command(flatten)]
    front: FrontFlags,
    /// The most jobs waiting at each stage; more are answered 503 at once [file: `queue_limit`
    /// of every [[stage]]; default 4096].
    #[arg(long, value_name = "N", value_parser = flags::at_least_one)]
    queue_limit: Option<usize>,
    #[command(flatten)]
    grace: GraceFlags,
    /// How the stages are joined: `memory` (the default; measured ~2-3x faster on cheap
    /// requests, see BENCHMARKS.md) or `inproc` (zmq, the multi-process code path). Not with
    /// --config: the file's endpoints join the stages then.
    #[arg(long, value_enum, default_value = "memory")]
    transport: TransportArg,
    /// The largest frame any zmq socket takes in (ipc, tcp and the zmq front; inproc is not
    /// limited); a peer that sends a larger one is disconnected [file: `max_message_bytes`;
    /// default 4 × the largest body + 64 KiB].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// With --compute-only: test the range this many times (to time one number).
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// `text` or `json` log lines (level from RUST_LOG) [file: `log_format`; default text].
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

/// The range to simulate, if `s` is one: `START,END`, or `END` alone (the C++ form: the odd
/// numbers from 3 to END).
fn parse_range(s: &str) -> Option<anyhow::Result<(u64, u64)>> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(s.parse().map(|end| (0, end)).context("bad END"));
    }
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
    let args = Args::parse();
    if let Some(path) = &args.config {
        let mut t = prime_server::topology::Topology::load(path)?;
        args.front.apply_all(&mut t.servers)?;
        for stage in &mut t.stages {
            flags::given(&mut stage.queue_limit, args.queue_limit);
        }
        let grace = args.grace.grace(t.grace(), args.drain_seconds);
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
    let mut section = ServerSection::new(&args.target, "-", "-");
    section.name = "prime_serverd".into();
    section.health_path = args.health.clone();
    args.front.apply(&mut section)?;
    let mut p = Pipeline::new("prime_serverd");
    p.transport(args.transport.transport());
    flags::given(&mut p.queue_limit, args.queue_limit);
    p.max_message_bytes = daemon::message_limit(
        args.max_message_bytes,
        prime_server::topology::message_limit_for_body(section.max_body_bytes),
        &[section.max_body_bytes],
    )?;
    p.stage(workers, prime::parse_stage)
        .stage(workers, prime::test_stage);
    let hint = match section.protocol {
        Protocol::Http if section.tls_cert.is_some() => {
            "curl -k 'https://ADDR/is_prime?possible_prime=32416190071'"
        }
        Protocol::Http => "curl 'http://ADDR/is_prime?possible_prime=32416190071'",
        Protocol::Netstring => "printf '11:32416190071,' | nc -q1 HOST PORT",
    };
    daemon::run_pipeline(
        &section,
        p,
        args.grace.grace(Default::default(), args.drain_seconds),
        Some(hint),
    )?;
    tracing::info!("prime_serverd stopped");
    Ok(())
}
