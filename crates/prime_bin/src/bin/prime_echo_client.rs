//! A Rust client for the broker demo (examples/broker): sends random strings through the front
//! server's zmq front (`[empty][id][payload]` on a DEALER) and checks that every answer is its
//! own data.
//!
//! `prime_echo_client [tcp://127.0.0.1:8003] [SECONDS]`

use prime_server::transport::{Context, Kind, Waiter};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "tcp://127.0.0.1:8003".into());
    let seconds: f64 = args.next().map_or(Ok(10.0), |s| s.parse())?;
    let ctx = Context::new();
    let sock = ctx.socket(Kind::Dealer)?;
    sock.connect(&endpoint.parse()?)?;
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
