//! The HTTP/1.1 front: hyper on tokio, bridged to the server core.
//!
//! hyper does the protocol (keep-alive by version and `Connection` tokens, pipelined requests
//! answered in order, chunked bodies, `Expect: 100-continue`, HEAD, header limits → 431, header
//! and idle timeouts). This module adds what is ours: the request-size limit (413), the body-read
//! timeout (408), the Host check for HTTP/1.1 (400), the health path answered by the server
//! itself, the mapping of a request to job frames ([`crate::http_job`]) and of an [`Answer`] to a
//! response, request ids and the access log. A client that goes away drops its request's future,
//! which interrupts the workers holding it.
//!
//! **Request ids.** Each request is known by a trace id: the client's `X-Request-Id` if it is
//! one (1 to 64 printable ASCII bytes), else one the server makes ([`Server::trace_id_for`]).
//! Its job carries it to every worker ([`crate::Job::trace_id`]), and every answer returns it as
//! `X-Request-Id`.
//!
//! **The access log** ([`HttpConfig::access_log`]) has exactly one line per request that
//! entered (that hyper parsed a head for), at target `access`: answered, refused before its body
//! was read (413), or abandoned by its client before the answer (status 499, with the time it
//! had run): see [`AccessLine`].

use crate::answer::Answer;
use crate::http_job::{encode_request, ResponseView, Version as WireVersion};
use crate::metrics::{HttpMetrics, Metrics, Route, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::server::{Pending, Server};
use crate::shutdown::Shutdown;
use crate::wire::TraceId;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Settings of the HTTP front.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The largest request body accepted (413 beyond; default 10 MiB).
    pub max_body: usize,
    /// The largest request head (request line and headers) accepted (431 beyond; default
    /// 64 KiB, at least 8 KiB).
    pub max_head: usize,
    /// The most header lines accepted (431 beyond; default 100).
    pub max_headers: usize,
    /// How long a connection may take to send a request head, counted from when the server
    /// starts waiting for it, so it also closes idle keep-alive connections (default 30 s).
    pub header_timeout: Duration,
    /// How long a request body may take to arrive (408 beyond; default 30 s).
    pub body_timeout: Duration,
    /// The deadline of each request; `None` uses the server core's.
    pub request_timeout: Option<Duration>,
    /// A path answered by the server itself: 200 `OK`, or 503 while draining.
    pub health_path: Option<String>,
    /// Log one line per request that entered at target `access` (see [`AccessLine`]: request
    /// id, peer, method, path and query, status, bytes, µs, user agent), those abandoned by
    /// their client included (status 499).
    pub access_log: bool,
    /// The most client connections served at once; one beyond is answered a 503 with
    /// `Retry-After` and closed (default from the open-file limit,
    /// [`crate::fd_limit::default_max_connections`]).
    pub max_connections: usize,
    /// A path answered by the server itself with `metrics` in Prometheus's text format.
    pub metrics_path: Option<String>,
    /// The process's metrics, for `metrics_path`.
    pub metrics: Option<Metrics>,
    /// Where answers are counted by route, method and status class.
    pub requests: Option<Arc<HttpMetrics>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body: 10 * 1024 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            request_timeout: None,
            health_path: None,
            access_log: false,
            max_connections: crate::fd_limit::default_max_connections(),
            metrics_path: None,
            metrics: None,
            requests: None,
        }
    }
}

struct Ctx {
    server: Server,
    config: HttpConfig,
    shutdown: Shutdown,
}

/// Serves HTTP on `listener` until `shutdown` stops, at most [`HttpConfig::max_connections`]
/// connections at once (one beyond is sent [`CONNECTION_REFUSAL`] and closed). When the drain
/// starts it stops accepting new connections; those already open go on being served (the health
/// path answers 503) until the stop, when each answers what it has in flight and closes. Returns
/// when every connection is closed.
pub async fn serve(listener: TcpListener, server: Server, config: HttpConfig, shutdown: Shutdown) {
    let max_connections = config.max_connections;
    let ctx = Arc::new(Ctx {
        server,
        config,
        shutdown: shutdown.clone(),
    });
    super::accept_until_drain(
        listener,
        &shutdown,
        max_connections,
        CONNECTION_REFUSAL,
        ctx.server.stats(),
        |stream| {
            let peer = stream.peer_addr().ok();
            connection(stream, peer, ctx.clone())
        },
    )
    .await;
}

/// What a connection beyond the cap is sent before it is closed. It is written before the
/// request is read (it must not wait for a client while holding a descriptor), so it is a
/// complete HTTP/1.1 response that needs nothing from the request: a 503 that asks the client to
/// come back in a second, on a connection that closes.
pub const CONNECTION_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 21\r\n\
\r\n\
too many connections\n";

/// Serves HTTP on one connection of any byte stream (a TLS stream, an in-memory pipe in a fuzz
/// target) until the client closes it or `shutdown` stops. The access log names no peer.
pub async fn serve_io<I>(io: I, server: Server, config: HttpConfig, shutdown: Shutdown)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(Ctx {
        server,
        config,
        shutdown,
    });
    connection(io, None, ctx).await
}

async fn connection<I>(stream: I, peer: Option<SocketAddr>, ctx: Arc<Ctx>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = ctx.shutdown.clone();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.header_timeout)
        .max_buf_size(ctx.config.max_head.max(8192))
        .max_headers(ctx.config.max_headers)
        .keep_alive(true);
    let svc_ctx = ctx.clone();
    let conn = builder.serve_connection(
        TokioIo::new(stream),
        service_fn(move |req| handle(req, peer, svc_ctx.clone())),
    );
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        // Stopping: answer what is in flight (the server core answers what the pipeline did not
        // finish with 503) and close.
        _ = shutdown.stopped() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

type Resp = http::Response<Full<Bytes>>;

/// A response made by the front itself: a short text body, `Retry-After` on 503, and
/// `Connection: close` where the request's input was at fault.
fn text(status: u16, reason: &str, connection: After) -> Resp {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = String::with_capacity(reason.len() + 1);
    body.push_str(reason);
    body.push('\n');
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if connection == After::Close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// What becomes of the connection after a response the front made itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// It may serve the next request.
    KeepAlive,
    /// It closes: the request's input was at fault, or the server is draining.
    Close,
}

/// Turns a worker's encoded response into a hyper response, sharing the reply's buffer. The
/// server frames the body itself, so a worker's `content-length` and `transfer-encoding` are
/// dropped, except `content-length` on an answer to HEAD (which has no body to measure).
fn from_reply(bytes: Vec<u8>, head: bool) -> Resp {
    let (status, headers, body_at) = match ResponseView::parse(&bytes) {
        Ok(v) => {
            let headers: Vec<(header::HeaderName, HeaderValue)> = v
                .headers
                .iter()
                .filter_map(|(n, val)| {
                    let name = header::HeaderName::from_bytes(n).ok()?;
                    let value = HeaderValue::from_bytes(val).ok()?;
                    Some((name, value))
                })
                .filter(|(n, _)| {
                    n != header::TRANSFER_ENCODING && (head || n != header::CONTENT_LENGTH)
                })
                .collect();
            (v.status, headers, bytes.len() - v.body.len())
        }
        Err(e) => {
            tracing::warn!(error = %e, "a worker's response was malformed");
            return text(502, "the worker's response was malformed", After::KeepAlive);
        }
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        return text(
            502,
            "the worker's response had an invalid status",
            After::KeepAlive,
        );
    };
    let body = Bytes::from(bytes).slice(body_at..);
    let mut r = http::Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    for (n, v) in headers {
        h.append(n, v);
    }
    r
}

/// Which route a path is, for the request counters.
fn route(config: &HttpConfig, path: &str) -> Route {
    if config.health_path.as_deref() == Some(path) {
        Route::Health
    } else if config.metrics_path.as_deref() == Some(path) && config.metrics.is_some() {
        Route::Metrics
    } else {
        Route::App
    }
}

/// The header a request's trace id comes in and goes back in.
pub const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

async fn handle(
    req: http::Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: Arc<Ctx>,
) -> Result<Resp, Infallible> {
    let given = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| TraceId::new(v.as_bytes()));
    let mut line = AccessLine::new(&ctx, peer, &req, given);
    let route = route(&ctx.config, req.uri().path());
    let method = ctx.config.requests.is_some().then(|| req.method().clone());
    let mut resp = respond(req, &ctx, &mut line.ids).await;
    if let (Some(requests), Some(method)) = (&ctx.config.requests, method) {
        requests.count(route, &method, resp.status().as_u16());
    }
    let (_, trace_id) = line.ids.get(&ctx.server);
    if let Ok(v) = HeaderValue::from_bytes(trace_id.as_bytes()) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    line.answered(&resp);
    Ok(resp)
}

/// The ids of one request: its number (unique per server) and its trace id. A request sent into
/// the pipeline gets them from the server core when it is submitted; one the front answers
/// itself takes a number then ([`Server::reserve_id`]), so that every line of the access log
/// names its request (refusals before the body included).
struct Ids {
    /// The client's `X-Request-Id`, if it is a valid trace id.
    given: Option<TraceId>,
    known: Option<(u64, TraceId)>,
}

impl Ids {
    fn submitted(&mut self, pending: &Pending) {
        self.known = Some((pending.id(), pending.trace_id()));
    }

    /// The request's ids, taken now if it has none yet.
    fn get(&mut self, server: &Server) -> (u64, TraceId) {
        let given = self.given;
        *self.known.get_or_insert_with(|| {
            let id = server.reserve_id();
            (id, given.unwrap_or_else(|| server.trace_id_for(id)))
        })
    }
}

/// One request's line in the access log (target `access`), written exactly once: when its
/// answer is made, or, if the request ends without one (its client went away and hyper dropped
/// it), when it is dropped, with status 499 ("client closed request") and the time it had run.
///
/// Fields: `request_id` (the trace id returned as `X-Request-Id`, the same field as in the
/// workers' `job` spans), `id` (the server's number for the request), `peer` (the client's
/// address, `-` if unknown), `method`, `path` (path and query, as sent), `status`, `bytes` (of
/// the body), `us` (µs from the head's arrival to the answer), `user_agent` (`-` if none).
/// Without the access log on, it only keeps the ids.
struct AccessLine {
    ids: Ids,
    /// Only with the access log on.
    fields: Option<LineFields>,
}

struct LineFields {
    /// To take an id for a request that has none yet when its line is written.
    server: Server,
    started: Instant,
    peer: Option<SocketAddr>,
    method: http::Method,
    target: String,
    user_agent: String,
}

impl AccessLine {
    fn new(
        ctx: &Ctx,
        peer: Option<SocketAddr>,
        req: &http::Request<Incoming>,
        given: Option<TraceId>,
    ) -> AccessLine {
        let fields = ctx.config.access_log.then(|| LineFields {
            server: ctx.server.clone(),
            started: Instant::now(),
            peer,
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_string()),
            user_agent: req.headers().get(header::USER_AGENT).map_or_else(
                || "-".into(),
                |v| String::from_utf8_lossy(v.as_bytes()).into(),
            ),
        });
        AccessLine {
            ids: Ids { given, known: None },
            fields,
        }
    }

    /// The request is answered with `resp`: its line, now.
    fn answered(mut self, resp: &Resp) {
        let bytes = hyper::body::Body::size_hint(resp.body())
            .exact()
            .unwrap_or(0);
        self.write(resp.status().as_u16(), bytes);
    }

    fn write(&mut self, status: u16, bytes: u64) {
        let Some(f) = self.fields.take() else {
            return;
        };
        let (id, request_id) = self.ids.get(&f.server);
        let peer = f.peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        tracing::info!(
            target: "access",
            request_id = %request_id,
            id,
            peer = %peer,
            method = %f.method,
            path = %f.target,
            status,
            bytes,
            us = f.started.elapsed().as_micros() as u64,
            user_agent = %f.user_agent,
        );
    }
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        // Not answered: hyper dropped the request because its client went away.
        self.write(499, 0);
    }
}

/// The answer to a request. A request sent into the pipeline records its ids in `ids` as soon
/// as it is submitted (its line in the access log names it even if its client leaves before the
/// answer).
async fn respond(req: http::Request<Incoming>, ctx: &Ctx, ids: &mut Ids) -> Resp {
    let config = &ctx.config;
    let version = match req.version() {
        Version::HTTP_10 => WireVersion::Http10,
        Version::HTTP_11 => WireVersion::Http11,
        _ => return text(505, "only HTTP/1.0 and HTTP/1.1 are served", After::Close),
    };
    if version == WireVersion::Http11 && !req.headers().contains_key(header::HOST) {
        return text(400, "an HTTP/1.1 request needs a Host header", After::Close);
    }
    if let Some(health) = &config.health_path {
        if req.uri().path() == health {
            return if ctx.shutdown.is_draining() {
                text(503, "draining", After::Close)
            } else {
                text(200, "OK", After::KeepAlive)
            };
        }
    }
    if let (Some(path), Some(metrics)) = (&config.metrics_path, &config.metrics) {
        if req.uri().path() == path {
            let body = if req.method() == http::Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(metrics.render())
            };
            let mut r = http::Response::new(Full::new(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            return r;
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body as u64) {
        return text(413, "the request body is too large", After::Close);
    }
    let (parts, body) = req.into_parts();
    let head = parts.method == http::Method::HEAD;
    let body = if hyper::body::Body::is_end_stream(&body) {
        Vec::new()
    } else {
        match tokio::time::timeout(
            config.body_timeout,
            Limited::new(body, config.max_body).collect(),
        )
        .await
        {
            Ok(Ok(collected)) => collected.to_bytes().to_vec(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return text(413, "the request body is too large", After::Close)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "bad request body");
                return text(400, "the request body is malformed", After::Close);
            }
            Err(_) => {
                return text(
                    408,
                    "the request body took too long to arrive",
                    After::Close,
                )
            }
        }
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let frames = encode_request(
        parts.method.as_str(),
        target,
        version,
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        body,
    );
    let trace_id = ids.given.unwrap_or(TraceId::NONE);
    let pending = ctx
        .server
        .submit_traced(frames, config.request_timeout, trace_id);
    ids.submitted(&pending);
    let mut resp = match pending.await {
        Answer::Reply(bytes) => from_reply(bytes, head),
        Answer::Failed(f) => text(f.status, &f.reason, After::KeepAlive),
    };
    if ctx.shutdown.is_draining() {
        // Draining: tell the client to take its next request elsewhere.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_one_well_formed_response() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = r.parse(CONNECTION_REFUSAL).unwrap() else {
            panic!("incomplete");
        };
        assert_eq!(r.code, Some(503));
        let body = &CONNECTION_REFUSAL[head..];
        assert_eq!(
            body,
            format!("{}\n", super::super::TOO_MANY_CONNECTIONS).as_bytes()
        );
        let length = r
            .headers
            .iter()
            .find(|h| h.name == "content-length")
            .unwrap();
        assert_eq!(length.value, body.len().to_string().as_bytes());
    }
}
