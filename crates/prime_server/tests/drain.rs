//! The zmq-native front through the shutdown's phases, moved by hand: it serves through the
//! drain (its health payload answering 503), refuses new requests once the drain is over while
//! what is in flight finishes, and passes on the answers made at the stop.

use prime_server::endpoint::Endpoint;
use prime_server::pipeline::Pipeline;
use prime_server::protocol::zmq_front::{self, ZmqFrontConfig};
use prime_server::transport::{Context, Kind as SocketKind, Socket};
use prime_server::Outcome;
use std::time::Duration;

mod common;
use common::{wait_until, LIMIT};

/// Sends `[empty][id][payload]`.
fn send(client: &Socket, id: &str, payload: &str) {
    client
        .send([&b""[..], id.as_bytes(), payload.as_bytes()])
        .unwrap();
}

/// The next answer: (id, status, body).
fn answer(client: &Socket) -> (String, String, String) {
    let mut got = None;
    wait_until("no answer from the zmq front", || {
        got = client.try_recv().unwrap();
        got.is_some()
    });
    let frames: Vec<String> = got
        .unwrap()
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert_eq!(frames.len(), 4, "{frames:?}");
    (frames[1].clone(), frames[2].clone(), frames[3].clone())
}

#[test]
fn the_zmq_front_serves_through_the_drain_then_refuses_and_finishes_what_is_in_flight() {
    let mut p = Pipeline::new(&format!("zmq-drain-{}", prime_server::server::random_id()));
    p.timeout = Some(Duration::from_secs(60));
    // `slow` waits until the test says so; anything else is echoed.
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Arc::new(std::sync::Mutex::new(gate));
    p.stage(2, move |job, _| {
        let body = job.frames.concat();
        if body == b"slow" {
            let _ = gate.lock().unwrap().recv_timeout(LIMIT);
        }
        Ok(Outcome::Reply(body))
    });
    let running = p.start().unwrap();
    let ctx = Context::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint: Endpoint = format!("tcp://127.0.0.1:{port}").parse().unwrap();
    let front = {
        let (ctx, endpoint) = (ctx.clone(), endpoint.clone());
        let (server, shutdown) = (running.server.clone(), running.shutdown.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let config = ZmqFrontConfig {
                health: Some(b"health".to_vec()),
                ..ZmqFrontConfig::default()
            };
            rt.block_on(zmq_front::serve(&ctx, &endpoint, server, config, shutdown))
                .unwrap();
        })
    };
    let client = ctx.socket(SocketKind::Dealer).unwrap();
    client.connect(&endpoint).unwrap();
    send(&client, "1", "health");
    assert_eq!(answer(&client), ("1".into(), "200".into(), "OK".into()));

    running.shutdown.drain();
    send(&client, "2", "health");
    assert_eq!(
        answer(&client),
        ("2".into(), "503".into(), "draining".into())
    );
    send(&client, "3", "during the drain");
    assert_eq!(
        answer(&client),
        ("3".into(), "200".into(), "during the drain".into())
    );
    send(&client, "4", "slow");
    wait_until("the slow request never entered", || {
        running.server.in_flight() == 1
    });

    running.shutdown.close();
    send(&client, "5", "after the drain");
    assert_eq!(
        answer(&client),
        (
            "5".into(),
            "503".into(),
            "the server is shutting down".into()
        )
    );
    assert_eq!(running.server.stats().snapshot().draining_refused, 1);
    // What was in flight finishes.
    go.send(()).unwrap();
    assert_eq!(answer(&client), ("4".into(), "200".into(), "slow".into()));

    running.shutdown.stop();
    front.join().unwrap();
    running.join();
}
