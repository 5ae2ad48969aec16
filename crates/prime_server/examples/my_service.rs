//! A two-stage HTTP service in one process: the README's "Using the library", shown there
//! verbatim. Run it with `cargo run -p prime_server --example my_service [-- LISTEN]`, then
//! `curl 'http://127.0.0.1:8080/?q=hello'`; Ctrl-C stops it.
use prime_server::http_job::{Request, Response};
use prime_server::pipeline::{Pipeline, Transport};
use prime_server::protocol::{self, http::HttpConfig};
use prime_server::{Outcome, WorkError};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Log lines to stdout, the level from RUST_LOG (default info); without a subscriber the
    // library's lines (and ours) go nowhere.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());

    let mut p = Pipeline::new("my-service");
    // All stages in this process: in-memory queues (the fast path). The default, Transport::Inproc,
    // runs the zmq proxies and workers of a multi-process deployment, in threads.
    p.transport(Transport::Memory);
    p.stage(4, |job, _interrupt| {
        // Stage 1: validate; answer bad requests right here (short-circuit) or pass on.
        let req = Request::decode(&job.frames).map_err(|e| WorkError::Failed {
            status: 400,
            reason: e.to_string(),
        })?;
        match req.query_value("q") {
            Some(q) => Ok(Outcome::Forward(vec![q.as_bytes().to_vec()])),
            None => Ok(Outcome::Reply(
                Response::text(400, "missing ?q=\n").encode(),
            )),
        }
    });
    p.stage(4, |job, interrupt| {
        // Stage 2: the expensive part; call interrupt.check()? in long loops.
        interrupt.check()?;
        let mut body = job.frames.concat();
        body.push(b'\n');
        Ok(Outcome::Reply(Response::new(200).body(body).encode()))
    });

    // The front runs on a tokio runtime; the stages' pump runs on the same one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let running = p.start_in(&rt)?;
    // SIGTERM or Ctrl-C: drain for up to 10 s (answer what is in flight), then stop.
    running.shutdown.on_signals(Duration::from_secs(10))?;
    rt.block_on(async {
        let listener = protocol::bind_listener(&listen)?;
        tracing::info!("listening on {}", listener.local_addr()?);
        let config = HttpConfig::default();
        protocol::http::serve(
            listener,
            running.server.clone(),
            config,
            running.shutdown.clone(),
        )
        .await;
        running.server.closed().await;
        Ok::<_, std::io::Error>(())
    })?;
    running.join();
    Ok(())
}
