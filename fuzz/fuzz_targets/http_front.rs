//! The HTTP request path: arbitrary bytes from a client into the HTTP front (hyper and our
//! service) over an in-memory stream, with a one-stage echo pipeline behind it. The front must
//! answer or close, never panic or hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prime_server::pipeline::{Pipeline, Running};
use prime_server::protocol::http::{serve_io, HttpConfig};
use prime_server::Outcome;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pipeline() -> &'static Running {
    static P: OnceLock<Running> = OnceLock::new();
    P.get_or_init(|| {
        let mut p = Pipeline::new("fuzz-http-front");
        p.timeout = Some(Duration::from_secs(2));
        p.stage(1, |job, _| {
            Ok(Outcome::Reply(
                prime_server::http_job::Response::new(200)
                    .body(job.frames.concat())
                    .encode(),
            ))
        });
        p.start().expect("pipeline")
    })
}

fuzz_target!(|data: &[u8]| {
    let running = pipeline();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let config = HttpConfig {
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(200),
            max_body: 4096,
            ..HttpConfig::default()
        };
        let conn = tokio::spawn(serve_io(
            server,
            running.server.clone(),
            config,
            running.shutdown.clone(),
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the front hung");
        let _ = conn.await;
    });
});
