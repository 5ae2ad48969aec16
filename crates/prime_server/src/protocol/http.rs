//! The HTTP front: hyper on tokio, bridged to the server core; HTTP/1.1 and HTTP/2, in cleartext
//! or over TLS.
//!
//! hyper does the protocol (keep-alive by version and `Connection` tokens, pipelined requests
//! answered in order, chunked bodies, `Expect: 100-continue`, HEAD, header limits → 431, header
//! and idle timeouts; HTTP/2's streams, flow control, resets and GOAWAY). This module adds what
//! is ours: the request-size limit (413), the body-read timeout (408), the Host check for
//! HTTP/1.1 (400), the health path answered by the server itself, the mapping of a request to
//! job frames ([`crate::http_job`]) and of an [`Answer`] to a response, request ids and the
//! access log. A client that goes away drops its request's future, which interrupts the workers
//! holding it.
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
//! **HTTP/2.** One connection serves one version, chosen by hyper-util's auto builder: over
//! TLS by ALPN (`h2`, else HTTP/1.1, see [`super::tls`]); in cleartext by prior knowledge (a
//! connection that opens with the HTTP/2 preface is h2c, any other HTTP/1.1; the `Upgrade: h2c`
//! dance is not offered). Everything after the connection is the same for both: an HTTP/2
//! request is turned into the HTTP/1.1 request it means before it is looked at ([`as_http11`]),
//! so the limits, the deadline, the health path, the access log and the job a worker gets do not
//! depend on the version. A stream the client resets is a client gone: hyper drops the request's
//! future, which interrupts its workers (499 in the access log). HTTP/2 connections that have
//! served a request get a GOAWAY when the drain ends (the closing phase); what is in flight on
//! them finishes. A connection of unknown version, or an HTTP/2 one, with nothing sent and
//! nothing in flight for [`HttpConfig::header_timeout`] is closed as an idle HTTP/1.1 one is.
//!
//! **The access log** ([`HttpConfig::access_log`]) has exactly one line per request that
//! entered (that hyper parsed a head for), at target `access`: answered, refused before its body
//! was read (413), or abandoned by its client before the answer (status 499, with the time it
//! had run): see [`AccessLine`].

use super::tls::Tls;
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
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
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
    /// Serve HTTPS with this certificate (HTTP/2 or HTTP/1.1 by ALPN); `None`: cleartext
    /// (HTTP/1.1, or h2c by prior knowledge).
    pub tls: Option<Tls>,
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
            tls: None,
        }
    }
}

/// The most HTTP/2 streams a client may have open at once on one connection (hyper's default,
/// stated here so the documentation can say it); the in-flight limit counts every stream's
/// request as it counts every HTTP/1.1 request.
pub const MAX_STREAMS: u32 = 200;

struct Ctx {
    server: Server,
    config: HttpConfig,
    shutdown: Shutdown,
    /// For a connection of a version not known yet: HTTP/1.1, or HTTP/2 if it opens with the
    /// preface (h2c by prior knowledge).
    any: auto::Builder<TokioExecutor>,
    /// For a connection known to be HTTP/1.1 (TLS without `h2` chosen by ALPN).
    h1: auto::Builder<TokioExecutor>,
    /// For a connection known to be HTTP/2 (TLS with `h2` chosen by ALPN).
    h2: auto::Builder<TokioExecutor>,
}

impl Ctx {
    fn new(server: Server, config: HttpConfig, shutdown: Shutdown) -> Ctx {
        let mut any = auto::Builder::new(TokioExecutor::new());
        any.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(config.max_head.max(8192))
            .max_headers(config.max_headers)
            .keep_alive(true);
        any.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_head.max(8192)).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_STREAMS);
        Ctx {
            server,
            config,
            shutdown,
            h1: any.clone().http1_only(),
            h2: any.clone().http2_only(),
            any,
        }
    }

    fn builder(&self, version: Option<Proto>) -> &auto::Builder<TokioExecutor> {
        match version {
            None => &self.any,
            Some(Proto::H1) => &self.h1,
            Some(Proto::H2) => &self.h2,
        }
    }
}

/// The HTTP version a connection speaks, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// How long an HTTP/2 connection (or one whose version is not known yet) is given to finish
/// after the stop, or after the GOAWAY that closes it for being idle, before it is dropped: the
/// graceful shutdown waits for the client to answer a PING, and a client that is gone never does.
const GOAWAY_LINGER: Duration = Duration::from_secs(1);

/// The client preface of an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection knows of itself, shared by its task, its byte stream and its service.
struct ConnState {
    started: Instant,
    /// When bytes last arrived or a request last ended, in ms after `started`.
    last_activity_ms: AtomicU64,
    /// Requests being served.
    active: AtomicUsize,
    /// Requests taken.
    served: AtomicU64,
    /// 0 while unknown, else 1 + [`Proto`] as u8.
    version: AtomicU8,
    /// Woken by a request taken during the closing phase: the connection then closes after it.
    kick: tokio::sync::Notify,
}

impl ConnState {
    fn new(version: Option<Proto>) -> ConnState {
        let state = ConnState {
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            version: AtomicU8::new(0),
            kick: tokio::sync::Notify::new(),
        };
        if let Some(v) = version {
            state.set_version(v);
        }
        state
    }

    fn set_version(&self, v: Proto) {
        let code = match v {
            Proto::H1 => 1,
            Proto::H2 => 2,
        };
        self.version.store(code, Ordering::Relaxed);
    }

    fn version(&self) -> Option<Proto> {
        match self.version.load(Ordering::Relaxed) {
            1 => Some(Proto::H1),
            2 => Some(Proto::H2),
            _ => None,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// A request is taken.
    fn taken(&self, shutdown: &Shutdown) {
        self.served.fetch_add(1, Ordering::Relaxed);
        if shutdown.is_closing() {
            self.kick.notify_one();
        }
    }

    /// A request is being served until the guard drops.
    fn active(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// When the connection will have been idle (nothing read, nothing in flight) for `after`;
    /// `None` if it has been already.
    fn idle_at(&self, after: Duration) -> Option<tokio::time::Instant> {
        let now = Instant::now();
        if self.active.load(Ordering::Relaxed) > 0 {
            return Some((now + after).into());
        }
        let last =
            self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        let due = last + after;
        (due > now).then(|| due.into())
    }
}

/// An HTTP/2 request being served (see [`ConnState::active`]).
struct Active(Arc<ConnState>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves HTTP on `listener` until `shutdown` stops, at most [`HttpConfig::max_connections`]
/// connections at once (one beyond is sent [`CONNECTION_REFUSAL`] and closed). During the drain
/// it goes on accepting and serving, the health path answers 503 and every answer says
/// `Connection: close`. When the closing phase starts it stops accepting, answers new requests
/// 503 at once, closes idle connections, and closes the others once their answer is written; at
/// the stop each answers what it has in flight (503 for what the pipeline did not finish) and
/// closes. Returns when every connection is closed.
///
/// With [`HttpConfig::tls`] every connection starts with a TLS handshake (which must end within
/// [`HttpConfig::header_timeout`]) and a connection beyond the cap is closed without a word (a
/// TLS client could not read one before its handshake).
pub async fn serve(listener: TcpListener, server: Server, config: HttpConfig, shutdown: Shutdown) {
    let max_connections = config.max_connections;
    let tls = config.tls.as_ref().map(Tls::acceptor);
    let refusal: &[u8] = if tls.is_some() {
        b""
    } else {
        CONNECTION_REFUSAL
    };
    let ctx = Arc::new(Ctx::new(server, config, shutdown.clone()));
    super::accept_until_closing(
        listener,
        &shutdown,
        max_connections,
        refusal,
        ctx.server.stats(),
        |stream| {
            let peer = stream.peer_addr().ok();
            let (ctx, tls) = (ctx.clone(), tls.clone());
            async move {
                let (tcp, reset) = shared_tcp(stream);
                match tls {
                    None => connection(HalfClose::watched(tcp, reset), peer, None, ctx).await,
                    Some(acceptor) => tls_connection(acceptor, tcp, reset, peer, ctx).await,
                }
            }
        },
    )
    .await;
}

/// The TLS handshake, then HTTP/2 if ALPN chose `h2`, HTTP/1.1 otherwise.
async fn tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: SharedTcp,
    reset: ResetWatch,
    peer: Option<SocketAddr>,
    ctx: Arc<Ctx>,
) {
    let handshake = tokio::time::timeout(ctx.config.header_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, ?peer, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS handshake timed out");
                return;
            }
        },
        _ = ctx.shutdown.stopped() => return,
    };
    let version = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        _ => Proto::H1,
    };
    connection(HalfClose::watched(stream, reset), peer, Some(version), ctx).await
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
    let ctx = Arc::new(Ctx::new(server, config, shutdown));
    connection(HalfClose::new(io), None, None, ctx).await
}

/// Serves one connection: `version` as known from ALPN, or `None` (HTTP/1.1, or h2c if it opens
/// with the HTTP/2 preface).
async fn connection<I>(
    mut stream: HalfClose<I>,
    peer: Option<SocketAddr>,
    version: Option<Proto>,
    ctx: Arc<Ctx>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(version));
    stream.state = state.clone();
    let ends_input = stream.ends_input.clone();
    let svc_ctx = ctx.clone();
    let svc_state = state.clone();
    let conn = ctx.builder(version).serve_connection(
        TokioIo::new(stream),
        service_fn(move |mut req: http::Request<Incoming>| {
            svc_state.taken(&svc_ctx.shutdown);
            let active = if req.version() == Version::HTTP_2 {
                as_http11(&mut req);
                // Counted while it runs, for the idle rule of HTTP/2 connections.
                Some(svc_state.active())
            } else {
                // Decided as hyper hands the request over, before it looks for the end of the
                // input.
                ends_input.store(declares_last_request(&req), Ordering::Release);
                None
            };
            handle(req, peer, svc_ctx.clone(), active)
        }),
    );
    tokio::pin!(conn);
    let shutdown = &ctx.shutdown;
    let idle_after = ctx.config.header_timeout;
    let idle = tokio::time::sleep(idle_after);
    tokio::pin!(idle);
    // HTTP/2's graceful shutdown waits for the client to answer the GOAWAY's PING: a client that
    // does not is cut off this long after its idle GOAWAY, or after the stop. (So is, after the
    // stop, a connection that has not said which version it speaks.)
    let linger = tokio::time::sleep(GOAWAY_LINGER);
    tokio::pin!(linger);
    let mut lingering = false;
    let (mut closing, mut stopping, mut shut) = (false, false, false);
    loop {
        let not_h1 = state.version() != Some(Proto::H1);
        tokio::select! {
            // The connection first: what the client already sent is read (and its request
            // taken) before a phase change can close the connection under it.
            biased;
            res = conn.as_mut() => return log_end(res),
            // One phase waited for at a time (the stop implies the closing phase).
            _ = shutdown.closing(), if !closing => closing = true,
            _ = shutdown.stopped(), if closing && !stopping => stopping = true,
            // The version learnt (which ends the idle watch of an HTTP/1.1 connection), or a
            // request taken while closing or stopping.
            _ = state.kick.notified(), if state.version().is_none() || ((closing || stopping) && !shut) => {}
            // HTTP/1.1 has hyper's header timeout; a connection still of unknown version, or an
            // HTTP/2 one, is closed here once idle as long.
            _ = idle.as_mut(), if !shut && not_h1 => {
                match state.idle_at(idle_after) {
                    Some(at) => idle.as_mut().reset(at),
                    None if state.version().is_none() => {
                        tracing::debug!(?peer, "closing a connection that sent nothing");
                        return;
                    }
                    None => {
                        conn.as_mut().graceful_shutdown();
                        shut = true;
                        linger.as_mut().reset(tokio::time::Instant::now() + GOAWAY_LINGER);
                        lingering = true;
                    }
                }
            }
            _ = linger.as_mut(), if lingering && not_h1 => {
                tracing::debug!(?peer, "a client did not finish its connection's shutdown: closing it");
                return;
            }
        }
        let version = state.version();
        if stopping && !lingering && version != Some(Proto::H1) {
            linger
                .as_mut()
                .reset(tokio::time::Instant::now() + GOAWAY_LINGER);
            lingering = true;
        }
        // Closing: a connection that has served a request closes now if idle, or after what it
        // is serving (HTTP/2: GOAWAY, and its open streams finish). One that has not sent its
        // first request yet is left to send it (it is answered 503), so that a request on its
        // way is not cut off unanswered; HTTP/2's GOAWAY lets such a request through anyway.
        // Stopping: answer what is in flight (the server core answers what the pipeline did not
        // finish with 503) and close. Either waits until the connection said which version it
        // speaks: hyper-util cannot shut down a connection still reading its first bytes
        // without dropping them.
        let due = stopping
            || (closing
                && (state.served.load(Ordering::Relaxed) > 0 || version == Some(Proto::H2)));
        if due && !shut && version.is_some() {
            conn.as_mut().graceful_shutdown();
            shut = true;
        }
    }
}

/// An HTTP/2 request as the rest of the front, and the workers, see every request: HTTP/1.1,
/// its target in origin form, a `Host` field from `:authority` (first, where an HTTP/1.1 client
/// puts it; as with an absolute-form target in HTTP/1.1, the authority wins over a `Host` field
/// sent beside it), and its `cookie` fields joined into one (RFC 9113 §8.2.3). The rest is as
/// sent. (The answer's `Connection: close` of a drain is dropped by hyper for HTTP/2, where such
/// fields do not exist: the GOAWAY at the drain's end says it.)
fn as_http11(req: &mut http::Request<Incoming>) {
    let uri = req.uri().clone();
    let host = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let sent = std::mem::take(req.headers_mut());
    let cookies: Vec<&[u8]> = sent
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let joined = (cookies.len() > 1)
        .then(|| HeaderValue::from_bytes(&cookies.join(&b"; "[..])).ok())
        .flatten();
    let headers = req.headers_mut();
    headers.reserve(sent.len() + 1);
    let has_host = host.is_some();
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    let mut cookie_done = false;
    for (name, value) in &sent {
        if has_host && name == header::HOST {
            continue;
        }
        if name == header::COOKIE {
            if let Some(joined) = &joined {
                if !cookie_done {
                    headers.append(header::COOKIE, joined.clone());
                    cookie_done = true;
                }
                continue;
            }
        }
        headers.append(name.clone(), value.clone());
    }
    if let Some(pq) = uri.path_and_query() {
        *req.uri_mut() = http::Uri::from(pq.clone());
    }
    *req.version_mut() = Version::HTTP_11;
}

fn log_end(res: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
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
///
/// It also tells the connection what arrives: when bytes last did (for the idle rule) and, while
/// the version is not known, whether the connection opened with the HTTP/2 preface.
struct HalfClose<I> {
    inner: I,
    /// Set while the request being served is the client's last.
    ends_input: Arc<std::sync::atomic::AtomicBool>,
    /// Completes when the connection is reset; `None` for streams that cannot tell (the end
    /// of the input is then held until the answer is written).
    reset: Option<ResetWatch>,
    /// The connection's state, told of what arrives.
    state: Arc<ConnState>,
    /// How many bytes of the HTTP/2 preface have arrived while the version was not known.
    sniffed: usize,
}

/// Completes when a TCP connection is reset.
type ResetWatch = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A TCP connection shared with the watch for its reset.
fn shared_tcp(stream: tokio::net::TcpStream) -> (SharedTcp, ResetWatch) {
    let stream = Arc::new(stream);
    let watched = stream.clone();
    let reset = Box::pin(async move {
        // An error on the socket: after the end of the input, only a reset makes one.
        let _ = watched.ready(tokio::io::Interest::ERROR).await;
    });
    (SharedTcp(stream), reset)
}

impl<I> HalfClose<I> {
    fn new(inner: I) -> Self {
        HalfClose {
            inner,
            ends_input: Arc::default(),
            reset: None,
            state: Arc::new(ConnState::new(None)),
            sniffed: 0,
        }
    }

    /// A stream over a TCP connection (plain or TLS), watched for a reset while the end of its
    /// input is held.
    fn watched(inner: I, reset: ResetWatch) -> Self {
        HalfClose {
            reset: Some(reset),
            ..HalfClose::new(inner)
        }
    }

    /// `bytes` arrived.
    fn arrived(&mut self, bytes: &[u8]) {
        let version = self.state.version();
        if version == Some(Proto::H1) {
            // hyper's header timeout is HTTP/1.1's idle rule: nothing to note.
            return;
        }
        self.state.touch();
        if self.sniffed < H2_PREFACE.len() && version.is_none() {
            let n = bytes.len().min(H2_PREFACE.len() - self.sniffed);
            if bytes[..n] != H2_PREFACE[self.sniffed..self.sniffed + n] {
                self.state.set_version(Proto::H1);
                self.state.kick.notify_one();
            } else {
                self.sniffed += n;
                if self.sniffed == H2_PREFACE.len() {
                    self.state.set_version(Proto::H2);
                    self.state.kick.notify_one();
                }
            }
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
            // Into the buffer as it is: hyper hands over its spare capacity uninitialized, and
            // zeroing it first (`initialize_unfilled`) cost a third of a cheap request's
            // instructions.
            // SAFETY: the slice is only written to (by the read), never read or de-initialized.
            let mut unfilled = unsafe { buf.unfilled_mut() };
            match self.0.try_read_buf(&mut unfilled) {
                Ok(n) => {
                    // SAFETY: the read initialized the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
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
        if buf.filled().len() > before {
            self.arrived(&buf.filled()[before..]);
        }
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

/// Answers one request; `_active`, an HTTP/2 request's mark in its connection's state, is held
/// until the answer is made.
async fn handle(
    req: http::Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: Arc<Ctx>,
    _active: Option<Active>,
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
