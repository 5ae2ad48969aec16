//! A Rust client for the broker demo (examples/broker): sends random strings through the front
//! server's zmq front (`[empty][id][payload]` on a DEALER) and checks that every answer is its
//! own data.
//!
//! `prime_echo_client [tcp://127.0.0.1:8003] [SECONDS] [--curve-secret FILE --server-key FILE]`

use clap::Parser;
use prime_server::security;
use prime_server::transport::{Context, Credentials, Kind, Waiter};
use std::path::PathBuf;
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
    let mut fired = Vec::new();
    // xorshift: random enough strings without a dependency.
    let mut x = prime_server::server::random_id();
    let (mut sent, mut ok, mut wrong, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let stop_at = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < stop_at {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let data = format!("{x:016x}").into_bytes();
        let id = sent.to_le_bytes();
        sent += 1;
        sock.send([&b""[..], &id[..], &data[..]])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The waiter reports edges: read until the socket is empty before each wait.
            let Some(frames) = sock.try_recv()? else {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    failed += 1;
                    break;
                }
                waiter.wait(left, &mut fired)?;
                continue;
            };
            if frames.len() != 4 || frames[1] != id {
                continue;
            }
            match (frames[2].as_slice(), frames[3] == data) {
                (b"200", true) => ok += 1,
                (b"200", false) => wrong += 1,
                _ => failed += 1,
            }
            break;
        }
    }
    println!(
        "rust client: sent {sent}, own data back {ok}, someone else's {wrong}, errors {failed}"
    );
    anyhow::ensure!(
        wrong == 0 && failed == 0,
        "some answers were wrong or missing"
    );
    Ok(())
}
