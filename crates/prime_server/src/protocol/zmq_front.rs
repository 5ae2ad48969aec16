//! The zmq-native client front: a ROUTER socket that REQ or DEALER clients in any language talk
//! to, with the same deadlines, limits and errors as the other fronts.
//!
//! A request is `[empty][id][payload…]`: REQ sockets add the empty frame themselves, DEALER
//! clients send it. `id` is any bytes the client picks (echoed back, so a DEALER client can keep
//! several requests in flight); the payload frames are the job the first stage receives. The answer
//! is `[empty][id][status][body]`, `status` in ASCII decimal: `200` with the worker's reply, or a
//! failure (`400`, `413`, `500`, `503`, `504`, …) with a short reason. See `docs/PROTOCOL.md` §5.

use crate::answer::Answer;
use crate::endpoint::Endpoint;
use crate::rate_limit::DropWarnings;
use crate::server::Server;
use crate::shutdown::{Shutdown, POLL_INTERVAL};
use crate::transport::{Admission, Context, Frames, Kind, Sent, Socket, SocketEvents};
use crate::Error;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Settings of the zmq front.
#[derive(Debug, Clone)]
pub struct ZmqFrontConfig {
    /// The largest request (all payload frames together) accepted; larger ones get `413`.
    pub max_request: usize,
    /// The most payload frames in one request; more get `400`.
    pub max_frames: usize,
    /// A payload (one frame) answered by the server itself: `200 OK`, or `503 draining`.
    pub health: Option<Vec<u8>>,
    /// The deadline of each request; `None` uses the server core's.
    pub request_timeout: Option<Duration>,
    /// CURVE: serve with this key pair and admit only these clients' keys
    /// ([`FrontKeys::zmq_clients`](crate::security::FrontKeys::zmq_clients)). `None`: plain zmq.
    pub security: Option<Admission>,
}

impl Default for ZmqFrontConfig {
    fn default() -> Self {
        ZmqFrontConfig {
            max_request: 10 * 1024 * 1024,
            max_frames: 64,
            health: None,
            request_timeout: None,
            security: None,
        }
    }
}

type Answered = Pin<Box<dyn Future<Output = (Frames, Answer)> + Send>>;

/// Binds a ROUTER at `endpoint` and serves zmq clients until `shutdown` stops: as usual during
/// the drain (the health payload answers `503 draining`), new requests answered 503 at once from
/// the closing phase on, and at the stop what the pipeline did not finish answered 503. Each
/// request in flight keeps the process [busy](Shutdown::is_idle). Runs on the current tokio
/// runtime.
pub async fn serve(
    ctx: &Context,
    endpoint: &Endpoint,
    server: Server,
    config: ZmqFrontConfig,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let socket = ctx.socket(Kind::Router)?;
    socket.set_router_mandatory(true)?;
    socket.bind_admitting(endpoint, config.security.as_ref())?;
    tracing::info!(endpoint = %socket.last_endpoint()?, "zmq front listening");
    // The socket is reached through `events` at each use: a reference to it (not `Sync`) held
    // across an await would keep this future from moving between threads.
    let events = SocketEvents::new(socket)?;
    shutdown.front_started();
    let mut pending: FuturesUnordered<Answered> = FuturesUnordered::new();
    let mut warnings = DropWarnings::new("zmq front");
    let mut check = true;
    loop {
        if check {
            while let Some(msg) = events.socket().try_recv()? {
                let socket = events.socket();
                if let Some(fut) = request(socket, msg, &server, &config, &shutdown, &mut warnings)?
                {
                    pending.push(fut);
                }
            }
            if warnings.has_unreported() {
                warnings.flush(std::time::Instant::now());
            }
            check = false;
        }
        tokio::select! {
            biased;
            _ = shutdown.stopped() => break,
            Some((envelope, answer)) = pending.next(), if !pending.is_empty() => {
                send(events.socket(), envelope, answer)?;
            }
            r = events.wait() => {
                r?;
                check = true;
            }
            _ = tokio::time::sleep(POLL_INTERVAL) => check = true,
        }
    }
    // The server core answers what is still open as it stops; pass those answers on.
    while let Ok(Some((envelope, answer))) =
        tokio::time::timeout(Duration::from_secs(1), pending.next()).await
    {
        send(events.socket(), envelope, answer)?;
    }
    Ok(())
}

/// Takes one request: answers it at once (malformed, too large, health, draining) or returns
/// the future of its answer. `envelope` keeps the routing frames, the empty delimiter and the id.
fn request(
    socket: &Socket,
    mut msg: Frames,
    server: &Server,
    config: &ZmqFrontConfig,
    shutdown: &Shutdown,
    warnings: &mut DropWarnings,
) -> Result<Option<Answered>, Error> {
    let Some(delim) = msg.iter().position(Vec::is_empty) else {
        let now = std::time::Instant::now();
        warnings.dropped("clients", "no empty delimiter frame", now);
        return Ok(None);
    };
    if msg.len() < delim + 2 {
        // No id: nothing to answer the client with but an empty id.
        let mut envelope = msg;
        envelope.truncate(delim + 1);
        envelope.push(Vec::new());
        let a = Answer::Failed(crate::answer::Failure::new(
            400,
            "a request is [empty][id][payload...]",
        ));
        send(socket, envelope, a)?;
        return Ok(None);
    }
    let payload = msg.split_off(delim + 2);
    let envelope = msg;
    let fail = |status, reason: &str| Answer::Failed(crate::answer::Failure::new(status, reason));
    let immediate = if payload.is_empty() {
        Some(fail(400, "a request needs at least one payload frame"))
    } else if payload.len() > config.max_frames {
        Some(fail(400, "too many frames"))
    } else if payload.iter().map(Vec::len).sum::<usize>() > config.max_request {
        Some(fail(413, "the request is too large"))
    } else if config
        .health
        .as_ref()
        .is_some_and(|h| payload.len() == 1 && &payload[0] == h)
    {
        Some(if shutdown.is_draining() {
            fail(503, "draining")
        } else {
            Answer::Reply(b"OK".to_vec())
        })
    } else if shutdown.is_closing() {
        Some(Answer::Failed(server.refuse_draining()))
    } else {
        None
    };
    if let Some(a) = immediate {
        send(socket, envelope, a)?;
        return Ok(None);
    }
    let p = server.submit_from(
        crate::wire::ClientProtocol::Zmq,
        payload,
        config.request_timeout,
        crate::wire::TraceId::NONE,
    );
    let busy = shutdown.busy();
    Ok(Some(Box::pin(async move {
        let answer = p.await;
        drop(busy);
        (envelope, answer)
    })))
}

fn send(socket: &Socket, envelope: Frames, answer: Answer) -> Result<(), Error> {
    let (status, body) = match answer {
        Answer::Reply(b) => ("200".to_string(), b),
        Answer::Failed(f) => (f.status.to_string(), f.reason.into_bytes()),
    };
    let frames = envelope
        .iter()
        .map(Vec::as_slice)
        .chain([status.as_bytes(), body.as_slice()]);
    if socket.send(frames)? == Sent::Unreachable {
        // The client went away; its request was answered all the same.
        tracing::debug!("zmq front: answer for a client that is gone");
    }
    Ok(())
}
