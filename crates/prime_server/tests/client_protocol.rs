//! The client protocol in the job's header (`docs/PROTOCOL.md` §2, byte 7): every front writes its
//! own, every stage reads the one the server wrote (a forwarded job keeps it), whichever way the
//! stages are joined, so the stage that answers knows the form of its answer without guessing
//! from the payload.

use prime_server::http_job::{Response, REQUEST_MAGIC};
use prime_server::pipeline::{Pipeline, Running, Transport};
use prime_server::protocol::{self, http::HttpConfig, netstring::Netstring, zmq_front};
use prime_server::transport::{Context, Kind as SocketKind};
use prime_server::{ClientProtocol, Outcome};
use std::io::{Read, Write};
use std::time::Duration;

mod common;
use common::{connect, wait_until};

/// Stage 1 forwards the client's frames as they are; stage 2 answers with the protocol both saw,
/// in that protocol's form: an HTTP response frame for HTTP, bare bytes for the others. A payload
/// that looks like an HTTP request head is not taken for one.
fn pipeline(transport: Transport) -> Running {
    let mut p = Pipeline::new(&format!(
        "client-protocol-{}",
        prime_server::server::random_id()
    ));
    p.transport(transport);
    p.timeout = Some(Duration::from_secs(60));
    p.stage(1, |job, _| {
        let mut frames = std::mem::take(&mut job.frames);
        frames.push(job.protocol().to_string().into_bytes());
        Ok(Outcome::Forward(frames))
    });
    p.stage(1, |job, _| {
        let seen_by_1 = String::from_utf8_lossy(job.frames.last().unwrap()).into_owned();
        let looks_http = job.frames[0].starts_with(&REQUEST_MAGIC);
        let text = format!("{seen_by_1} {} looks_http={looks_http}", job.protocol());
        Ok(Outcome::Reply(match job.protocol() {
            ClientProtocol::Http => Response::text(200, text).encode(),
            _ => text.into_bytes(),
        }))
    });
    p.start().unwrap()
}

/// What one raw HTTP/1.1 request gets: the whole response as text.
fn http_get(addr: std::net::SocketAddr) -> String {
    let mut s = connect(addr);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// What one netstring request gets.
fn netstring(addr: std::net::SocketAddr, payload: &str) -> String {
    let mut s = connect(addr);
    s.write_all(format!("{}:{payload},", payload.len()).as_bytes())
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn every_front_writes_its_client_protocol_into_the_job_and_every_stage_reads_it() {
    for transport in [Transport::Inproc, Transport::Memory] {
        let running = pipeline(transport.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ctx = Context::new();
        let zmq_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let zmq_ep: prime_server::Endpoint = format!("tcp://127.0.0.1:{zmq_port}").parse().unwrap();
        let (http_addr, ns_addr, fronts) = {
            let _guard = rt.enter();
            let http = protocol::bind_listener("127.0.0.1:0").unwrap();
            let ns = protocol::bind_listener("127.0.0.1:0").unwrap();
            let addrs = (http.local_addr().unwrap(), ns.local_addr().unwrap());
            let (server, shutdown) = (running.server.clone(), running.shutdown.clone());
            let fronts = vec![
                tokio::spawn(protocol::http::serve(
                    http,
                    server.clone(),
                    HttpConfig::default(),
                    shutdown.clone(),
                )),
                tokio::spawn(protocol::serve(
                    ns,
                    server.clone(),
                    Netstring::default(),
                    100,
                    shutdown.clone(),
                )),
                {
                    let (ctx, ep) = (ctx.clone(), zmq_ep.clone());
                    tokio::spawn(async move {
                        zmq_front::serve(&ctx, &ep, server, Default::default(), shutdown)
                            .await
                            .unwrap()
                    })
                },
            ];
            (addrs.0, addrs.1, fronts)
        };
        let runner = std::thread::spawn(move || {
            rt.block_on(async {
                for f in fronts {
                    let _ = f.await;
                }
            })
        });

        let http = http_get(http_addr);
        assert!(http.starts_with("HTTP/1.1 200"), "{http}");
        assert!(
            http.ends_with("http http looks_http=true"),
            "{transport:?}: {http}"
        );

        // A netstring or zmq payload that looks like an HTTP request head is still that
        // protocol's request.
        let hq = "HQ\u{1}\0";
        assert_eq!(
            netstring(ns_addr, hq),
            "35:netstring netstring looks_http=true,",
            "{transport:?}"
        );

        let client = ctx.socket(SocketKind::Dealer).unwrap();
        client.connect(&zmq_ep).unwrap();
        client
            .send([&b""[..], b"id", hq.as_bytes(), b"body"])
            .unwrap();
        let mut got = None;
        wait_until("no answer from the zmq front", || {
            got = client.try_recv().unwrap();
            got.is_some()
        });
        assert_eq!(
            got.unwrap(),
            vec![
                b"".to_vec(),
                b"id".to_vec(),
                b"200".to_vec(),
                b"zmq zmq looks_http=true".to_vec()
            ],
            "{transport:?}"
        );

        // A request the application submits itself has no client protocol.
        let direct = running.server.submit(vec![b"x".to_vec()], None);
        let answer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(direct);
        assert_eq!(
            answer,
            prime_server::Answer::Reply(b"direct direct looks_http=false".to_vec()),
            "{transport:?}"
        );

        running.shutdown.stop();
        runner.join().unwrap();
        running.join();
    }
}
