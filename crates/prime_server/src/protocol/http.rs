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
//! **Half-closed clients.** A client that sends its request and then shuts down its sending
//! side (as `nc` does at the end of its input) is answered if the request said it would send
//! nothing more: HTTP/1.0 without `Connection: keep-alive`, or `Connection: close`. On a
//! persistent connection (HTTP/1.1 by default) the end of the input means the client left:
//! its request is cancelled and its workers interrupted. A reset, or an answer that cannot be
//! written, means the client left whatever the request said. The two cannot be told apart
//! from the end of the input alone: a client that closes its socket after a `Connection: close`
//! request has its work run on until the answer (or the deadline).
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
/// connections at once (one beyond is sent [`CONNECTION_REFUSAL`] and closed). During the drain
/// it goes on accepting and serving, the health path answers 503 and every answer says
/// `Connection: close`. When the closing phase starts it stops accepting, answers new requests
/// 503 at once, closes idle connections, and closes the others once their answer is written; at
/// the stop each answers what it has in flight (503 for what the pipeline did not finish) and
/// closes. Returns when every connection is closed.
pub async fn serve(listener: TcpListener, server: Server, config: HttpConfig, shutdown: Shutdown) {
    let max_connections = config.max_connections;
    let ctx = Arc::new(Ctx {
        server,
        config,
        shutdown: shutdown.clone(),
    });
    super::accept_until_closing(
        listener,
        &shutdown,
        max_connections,
        CONNECTION_REFUSAL,
        ctx.server.stats(),
        |stream| {
            let peer = stream.peer_addr().ok();
            connection(HalfClose::tcp(stream), peer, ctx.clone())
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
    connection(HalfClose::new(io), None, ctx).await
}

async fn connection<I>(stream: HalfClose<I>, peer: Option<SocketAddr>, ctx: Arc<Ctx>)
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
    let ends_input = stream.ends_input.clone();
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let svc_ctx = ctx.clone();
    let svc_served = served.clone();
    let conn = builder.serve_connection(
        TokioIo::new(stream),
        service_fn(move |req: http::Request<Incoming>| {
            // Decided as hyper hands the request over, before it looks for the end of the input.
            ends_input.store(
                declares_last_request(&req),
                std::sync::atomic::Ordering::Release,
            );
            svc_served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            handle(req, peer, svc_ctx.clone())
        }),
    );
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => return log_end(res),
        // Closing: a connection that has served a request closes now if idle, or after the
        // answer it is writing. One that has not sent its first request yet is left to send it
        // (it is answered 503), so that a request on its way is not cut off unanswered.
        _ = shutdown.closing() => {
            if served.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    tokio::select! {
        res = conn.as_mut() => return log_end(res),
        // Stopping: answer what is in flight (the server core answers what the pipeline did not
        // finish with 503) and close.
        _ = shutdown.stopped() => conn.as_mut().graceful_shutdown(),
    }
    log_end(conn.await)
}

fn log_end(res: hyper::Result<()>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Whether a request says its client sends nothing more on the connection: HTTP/1.0 without
/// `Connection: keep-alive`, or `Connection: close`. Only then is the end of its input after
/// the request taken as a half-close rather than as the client leaving.
fn declares_last_request(req: &http::Request<Incoming>) -> bool {
    let has = |token: &str| {
        req.headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has("close") || (req.version() == Version::HTTP_10 && !has("keep-alive"))
}

/// A connection's byte stream that hides the end of the client's input while the request being
/// served said it was the last (see [`declares_last_request`]): hyper, which takes the end of
/// the input in the middle of a request for the client leaving, then answers it instead. A
/// reset (seen by `reset`, over TCP) or any other error goes through as an error, which ends
/// the connection and cancels its request.
struct HalfClose<I> {
    inner: I,
    /// Set while the request being served is the client's last.
    ends_input: Arc<std::sync::atomic::AtomicBool>,
    /// Completes when the connection is reset; `None` for streams that cannot tell (the end
    /// of the input is then held until the answer is written).
    reset: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl<I> HalfClose<I> {
    fn new(inner: I) -> Self {
        HalfClose {
            inner,
            ends_input: Arc::default(),
            reset: None,
        }
    }
}

impl HalfClose<SharedTcp> {
    /// A TCP connection, watched for a reset while the end of its input is held.
    fn tcp(stream: tokio::net::TcpStream) -> Self {
        let stream = Arc::new(stream);
        let watched = stream.clone();
        HalfClose {
            inner: SharedTcp(stream),
            ends_input: Arc::default(),
            reset: Some(Box::pin(async move {
                // An error on the socket: after the end of the input, only a reset makes one.
                let _ = watched.ready(tokio::io::Interest::ERROR).await;
            })),
        }
    }
}

/// A TCP stream shared with the watch for its reset ([`HalfClose::tcp`]).
struct SharedTcp(Arc<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for SharedTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for SharedTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain system call on the socket this stream owns.
        let rc = unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) };
        std::task::Poll::Ready(if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        })
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HalfClose<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let at_end = matches!(polled, std::task::Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0;
        if at_end && self.ends_input.load(std::sync::atomic::Ordering::Acquire) {
            // Nothing more will come, and nothing more is wanted: the answer (written when the
            // request is done, which wakes the connection) ends the connection, unless the
            // client resets it first.
            if let Some(reset) = self.reset.as_mut() {
                if reset.as_mut().poll(cx).is_ready() {
                    self.reset = None;
                    return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
                }
            }
            return std::task::Poll::Pending;
        }
        polled
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HalfClose<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    if ctx.shutdown.is_draining() {
        // Draining: tell the client to take its next request elsewhere.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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
    if ctx.shutdown.is_closing() {
        // Past the drain: nothing new is taken in; what is in flight finishes.
        let f = ctx.server.refuse_draining();
        return text(f.status, &f.reason, After::Close);
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
    let pending = ctx.server.submit_from(
        crate::wire::ClientProtocol::Http,
        frames,
        config.request_timeout,
        trace_id,
    );
    ids.submitted(&pending);
    match pending.await {
        Answer::Reply(bytes) => from_reply(bytes, head),
        Answer::Failed(f) => text(f.status, &f.reason, After::KeepAlive),
    }
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
