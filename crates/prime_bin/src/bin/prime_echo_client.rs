//! A Rust client for the broker demo (examples/broker): sends random strings through the front
//! server's zmq front (`[empty][id][payload]` on a DEALER) and checks that every answer is its
//! own data. A string answered 503 (the front could not take it now, or the broker died holding
//! it) or 504 (its deadline passed, e.g. while no worker was up) is sent again with a new id.
//! SIGINT or SIGTERM ends it early: it finishes the string in hand and prints its count.
//!
//! `prime_echo_client [tcp://127.0.0.1:8003] [SECONDS] [--wait SECONDS] [--curve-secret FILE --server-key FILE]`

use clap::Parser;
use prime_server::security;
use prime_server::transport::{Context, Credentials, Kind, Socket, Waiter};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Sends random strings through a front's zmq front and checks every answer")]
struct Args {
    /// The front's zmq_listen endpoint.
    #[arg(default_value = "tcp://127.0.0.1:8003")]
    endpoint: String,
    /// How long to send.
    #[arg(default_value_t = 10.0)]
    seconds: f64,
    /// Seconds to wait for an answer before counting an error (the front answers every request,
    /// 504 at its deadline at the latest: this is for a front that is gone).
    #[arg(long, default_value_t = 10.0)]
    wait: f64,
    /// CURVE: this client's secret key file (its public key must be on the front's client list).
    #[arg(long, value_name = "FILE", requires = "server_key")]
    curve_secret: Option<PathBuf>,
    /// CURVE: the front's public key file.
    #[arg(long, value_name = "FILE", requires = "curve_secret")]
    server_key: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seconds = args.seconds;
    let credentials = match (&args.curve_secret, &args.server_key) {
        (Some(secret), Some(server)) => Some(Credentials {
            keypair: security::read_secret(secret)?,
            server: security::read_public(server)?,
        }),
        _ => None,
    };
    let ctx = Context::new();
    let sock = ctx.socket(Kind::Dealer)?;
    sock.connect_presenting(&args.endpoint.parse()?, credentials.as_ref())?;
    let mut waiter = Waiter::new()?;
    waiter.watch(&sock, 0)?;
    // SIGINT/SIGTERM: finish the string in hand, print the count and exit.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut fired = Vec::new();
    // xorshift: random enough strings without a dependency.
    let mut x = prime_server::server::random_id();
    let (mut sent, mut ok, mut wrong, mut failed) = (0u64, 0u64, 0u64, 0u64);
    // Strings sent again, and strings whose 503/504 came after a stop signal (not sent again).
    let (mut again, mut unfinished) = (0u64, 0u64);
    let mut id = 0u64;
    let stop_at = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < stop_at && !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let data = format!("{x:016x}").into_bytes();
        sent += 1;
        // One string until its answer: sent again after a 503 (the front could not take it now,
        // or the broker died holding it) or a 504 (its deadline passed, e.g. while no worker
        // was up), each time with a new id.
        loop {
            id += 1;
            match ask(&sock, &mut waiter, &mut fired, id, &data, args.wait)? {
                Some((status, body)) if status == b"200" => {
                    if body == data {
                        ok += 1;
                    } else {
                        wrong += 1;
                    }
                }
                Some((status, _)) if status == b"503" || status == b"504" => {
                    if stop.load(Ordering::Relaxed) {
                        unfinished += 1;
                        break;
                    }
                    again += 1;
                    if status == b"503" {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    continue;
                }
                Some((status, body)) => {
                    failed += 1;
                    eprintln!(
                        "rust client: {}: {}",
                        String::from_utf8_lossy(&status),
                        String::from_utf8_lossy(&body)
                    );
                }
                None => {
                    failed += 1;
                    eprintln!("rust client: no answer in {} s", args.wait);
                }
            }
            break;
        }
    }
    let unfinished = match unfinished {
        0 => String::new(),
        n => format!(", stopped before an answer {n}"),
    };
    println!(
        "rust client: sent {sent}, own data back {ok}, someone else's {wrong}, errors {failed}{unfinished} (sent again after a 503 or 504: {again})"
    );
    anyhow::ensure!(
        wrong == 0 && failed == 0,
        "some answers were wrong or missing"
    );
    Ok(())
}

/// Sends `data` as request `id` and waits up to `wait` seconds for its answer: (status, body),
/// or `None` if none came.
fn ask(
    sock: &Socket,
    waiter: &mut Waiter,
    fired: &mut Vec<u64>,
    id: u64,
    data: &[u8],
    wait: f64,
) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let id = id.to_le_bytes();
    sock.send([&b""[..], &id[..], data])?;
    let deadline = Instant::now() + Duration::from_secs_f64(wait);
    loop {
        // The waiter reports edges: read until the socket is empty before each wait.
        let Some(mut frames) = sock.try_recv()? else {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            waiter.wait(left, fired)?;
            continue;
        };
        if frames.len() != 4 || frames[1] != id {
            continue;
        }
        let body = frames.pop().unwrap_or_default();
        let status = frames.pop().unwrap_or_default();
        return Ok(Some((status, body)));
    }
}
