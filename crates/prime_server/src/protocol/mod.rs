//! Client protocols: how requests arrive from clients and how answers go back.
//!
//! A stream protocol (netstring here; others plug in the same way) is a [`StreamProtocol`]: a
//! decoder for requests, a health check answered without touching workers, the mapping of a
//! request to job frames and of an [`Answer`] to response bytes. [`serve`] runs any of them on a
//! TCP listener over the [`Server`] bridge. The HTTP front (hyper: HTTP/1.1 and HTTP/2, in
//! cleartext or over TLS, [`tls`]) and the zmq-native front (a ROUTER for REQ/DEALER clients)
//! use the same bridge.

pub mod http;
pub mod netstring;
pub mod tls;
pub mod zmq_front;

use crate::answer::{Answer, Failure};
use crate::server::Server;
use crate::shutdown::Shutdown;
use crate::stats::ServerStats;
use crate::transport::Frames;
use crate::wire::{ClientProtocol, TraceId};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, FramedRead};

/// A request the protocol cannot accept; the connection is answered and closed. Or, with
/// status 0, a connection that failed (reset): the client is gone and nothing is answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ProtocolError {
    /// 400 for malformed input, 413 for too large; 0 for a failed connection.
    pub status: u16,
    /// What was wrong, for the client.
    pub reason: String,
}

impl ProtocolError {
    /// Malformed input (400).
    pub fn malformed(reason: impl Into<String>) -> Self {
        ProtocolError {
            status: 400,
            reason: reason.into(),
        }
    }
    /// Input over a size limit (413).
    pub fn too_large(reason: impl Into<String>) -> Self {
        ProtocolError {
            status: 413,
            reason: reason.into(),
        }
    }
}

impl ProtocolError {
    /// Reading the connection failed (it was reset): the client is gone.
    pub fn connection_failed(reason: impl Into<String>) -> Self {
        ProtocolError {
            status: 0,
            reason: reason.into(),
        }
    }

    /// Whether the connection failed (rather than the input being refused).
    pub fn is_connection_failure(&self) -> bool {
        self.status == 0
    }
}

impl From<std::io::Error> for ProtocolError {
    /// What a codec's reader gets when the connection fails under it.
    fn from(e: std::io::Error) -> Self {
        ProtocolError::connection_failed(e.to_string())
    }
}

/// What a health check reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Serving: send traffic here.
    Serving,
    /// Draining: a load balancer should move traffic away.
    Draining,
}

impl Health {
    /// The state `shutdown` is in.
    pub fn of(shutdown: &Shutdown) -> Health {
        if shutdown.is_draining() {
            Health::Draining
        } else {
            Health::Serving
        }
    }
}

/// A client protocol carried over a byte stream.
pub trait StreamProtocol: Clone + Send + Sync + 'static {
    /// One decoded request.
    type Request: Send + 'static;
    /// Splits the byte stream into requests.
    type Codec: Decoder<Item = Self::Request, Error = ProtocolError> + Send + 'static;

    /// A fresh decoder for a new connection.
    fn codec(&self) -> Self::Codec;
    /// The response to a health check, answered by the server itself; `None` if `req` is not one.
    fn health(&self, req: &Self::Request, state: Health) -> Option<Vec<u8>>;
    /// The client protocol its jobs carry in their header (`docs/PROTOCOL.md` §2): how the
    /// stage that answers must encode its Reply.
    fn client_protocol(&self) -> ClientProtocol;
    /// The frames the first stage receives for `req`.
    fn job_frames(&self, req: Self::Request) -> Frames;
    /// The response bytes for an answer.
    fn answer(&self, answer: Answer) -> Vec<u8>;
    /// The response to a request that could not be decoded (the connection closes after it).
    fn refuse(&self, err: &ProtocolError) -> Vec<u8>;
}

/// How many requests one connection may have in flight (pipelined) before the server stops
/// reading from it.
pub const MAX_PIPELINE: usize = 1024;

/// Serves `protocol` on `listener`, at most `max_connections` connections at once (see
/// [`accept_until_closing`]; a connection beyond is answered a 503 failure and closed). During
/// the drain it goes on accepting and serving (health checks answer draining); when the closing
/// phase starts it stops accepting, answers new requests 503 at once, and closes each
/// connection once it has answered what it had in flight; at the stop, what the pipeline did not
/// finish is answered 503. Returns when every connection is closed. Each connection's answers go
/// back in request order.
///
/// **Half-closed clients.** A client that shuts down its sending side after its requests (as
/// `nc` does at the end of its input) is answered: the end of its input is not taken for its
/// departure. A client is gone when the connection is reset or an answer cannot be written;
/// what it still had in flight is then cancelled (its workers are interrupted). A client that
/// closes its socket without a reset looks the same as a half-close until the next answer is
/// written to it, so its work runs on until then (or its deadline).
pub async fn serve<P: StreamProtocol>(
    listener: TcpListener,
    server: Server,
    protocol: P,
    max_connections: usize,
    shutdown: Shutdown,
) {
    let refusal = protocol.answer(Answer::Failed(Failure::new(503, TOO_MANY_CONNECTIONS)));
    let protocol = Arc::new(protocol);
    let stats = server.stats();
    accept_until_closing(
        listener,
        &shutdown,
        max_connections,
        &refusal,
        stats,
        |stream| connection(stream, server.clone(), protocol.clone(), shutdown.clone()),
    )
    .await;
}

/// Why a connection beyond the cap is refused, as its refusal says.
pub const TOO_MANY_CONNECTIONS: &str = "too many connections";

/// Accepts connections until the closing phase starts (through the drain: a load balancer's
/// health probe on a new connection must see the 503), running `serve_one` on each as its own
/// task while fewer than `max_connections` are open; then closes the listener and waits for
/// every connection task to end. Each open connection keeps the process
/// [busy](Shutdown::is_idle), so a drain ends early once none is left.
///
/// The cap keeps descriptors for zmq (see [`crate::fd_limit`]): a connection beyond it is
/// accepted, sent `refusal` if the socket takes it at once (it always does on a fresh socket;
/// the refusal never waits), and closed, so the client learns at once instead of waiting in the
/// listen backlog. A connection's slot frees when its task ends. When accepting itself fails for
/// want of descriptors (or memory), the loop backs off (10 ms doubling to 500 ms) and logs it
/// once, then at most every 10 s with a count, and once more when accepting works again.
pub async fn accept_until_closing<F, Fut>(
    listener: TcpListener,
    shutdown: &Shutdown,
    max_connections: usize,
    refusal: &[u8],
    stats: Arc<ServerStats>,
    mut serve_one: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = tokio_util::task::TaskTracker::new();
    let mut door = Door::new(max_connections, refusal);
    shutdown.front_started();
    let mut spawn = |stream: TcpStream, door: &mut Door| {
        if let Some((stream, permit)) = door.admit(stream) {
            let _ = stream.set_nodelay(true);
            let busy = shutdown.busy();
            let serving = serve_one(stream);
            let stats = stats.clone();
            stats.connections.fetch_add(1, Ordering::Relaxed);
            connections.spawn(async move {
                serving.await;
                stats.connections.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
                drop(busy);
            });
        } else {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.closing() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    door.accepted();
                    spawn(stream, &mut door);
                }
                Err(e) => {
                    let pause = door.accept_failed(&e);
                    tokio::select! {
                        _ = shutdown.closing() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
    // Serve the connections that already completed their handshake and wait in the backlog:
    // closing the listener would reset them unanswered. (Asked of the socket itself: tokio's
    // accept would not try before its reactor saw the listener readable.)
    if let Ok(std_listener) = listener.into_std() {
        while let Ok((stream, _)) = std_listener.accept() {
            match stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                Ok(stream) => spawn(stream, &mut door),
                Err(e) => tracing::debug!(error = %e, "a connection from the backlog failed"),
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// How often a front logs the same trouble at most (fd pressure, refused connections).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The first pause after accept failed for want of resources, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The accept loop's door: the connection cap, refusals, and what accept failures it logged.
struct Door<'a> {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    refusal: &'a [u8],
    refused: Throttled,
    failures: Throttled,
    /// Accept failures for want of resources since it last worked; the next pause grows with it.
    failing: u64,
}

impl<'a> Door<'a> {
    fn new(max: usize, refusal: &'a [u8]) -> Self {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Door {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            refusal,
            refused: Throttled::new(LOG_EVERY),
            failures: Throttled::new(LOG_EVERY),
            failing: 0,
        }
    }

    fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// A slot for `stream`, or `None` when every slot is taken (the connection is refused).
    fn admit(
        &mut self,
        stream: TcpStream,
    ) -> Option<(TcpStream, tokio::sync::OwnedSemaphorePermit)> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some((stream, permit)),
            Err(_) => {
                if let Some(refused) = self.refused.hit() {
                    tracing::warn!(
                        max_connections = self.max,
                        refused,
                        "connection limit reached: refusing new connections"
                    );
                }
                refuse(stream, self.refusal);
                None
            }
        }
    }

    /// Accepting works (again).
    fn accepted(&mut self) {
        if self.failing > 0 {
            tracing::info!(
                failures = self.failing,
                open = self.open(),
                "accepting connections again"
            );
            self.failures.reset();
            self.failing = 0;
        }
    }

    /// Accept failed with `e`: logs it if due and returns how long to wait before trying again.
    fn accept_failed(&mut self, e: &std::io::Error) -> Duration {
        let resources = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !resources {
            // A connection that died in the backlog and the like: the next one may do.
            if let Some(failures) = self.failures.hit() {
                tracing::warn!(error = %e, failures, "accept failed");
            }
            return BACKOFF_FIRST;
        }
        self.failing = self.failing.saturating_add(1);
        if let Some(failures) = self.failures.hit() {
            tracing::warn!(
                error = %e,
                failures,
                open = self.open(),
                max_connections = self.max,
                fd_limit = crate::fd_limit::current().map_or(0, |l| l.soft),
                "cannot accept connections: out of file descriptors (or memory); \
                 new connections wait in the listen backlog"
            );
        }
        // Until a descriptor frees nothing will work: back off rather than spin, but not so far
        // that the backlog waits long once one does.
        let doublings = self.failing.saturating_sub(1).min(6) as u32;
        (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
    }
}

/// Refuses a connection beyond the cap: `refusal` if the socket takes it without waiting, then
/// close.
fn refuse(stream: TcpStream, refusal: &[u8]) {
    use std::io::{Read, Write};
    // tokio's own try_write would say WouldBlock on a socket whose readiness it has not yet
    // seen; the plain (non-blocking) socket writes at once.
    let Ok(mut s) = stream.into_std() else { return };
    let _ = s.write(refusal);
    // Read what the client already sent: closing a socket with unread input resets the
    // connection, and a reset can destroy the refusal before the client reads it.
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match s.read(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// A warning logged at most once per interval, with how many times it happened since the last.
struct Throttled {
    every: Duration,
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn new(every: Duration) -> Self {
        Throttled {
            every,
            last: None,
            count: 0,
        }
    }

    /// Counts one occurrence; if a line is due, returns how many it reports (this one included).
    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }

    /// Forgets the past: the next occurrence is logged at once.
    fn reset(&mut self) {
        self.last = None;
        self.count = 0;
    }
}

type Reply = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

async fn connection<P: StreamProtocol>(
    stream: TcpStream,
    server: Server,
    protocol: Arc<P>,
    shutdown: Shutdown,
) {
    let (rd, wr) = stream.into_split();
    let mut requests = FramedRead::new(rd, protocol.codec());
    let mut writer = BufWriter::new(wr);
    let mut pending: FuturesOrdered<Reply> = FuturesOrdered::new();
    let mut reading = true;
    let mut last_words: Option<Vec<u8>> = None;
    // Whether the client's input ended (a half-close, or a close without a reset).
    let mut ended = false;
    while reading {
        if pending.is_empty() && shutdown.is_closing() {
            // Closing and nothing in flight: answer (503) what the client already sent, then
            // close.
            match requests.next().now_or_never() {
                Some(item) => {
                    let next = take(item, &server, &protocol, &shutdown, &mut pending);
                    if next == Next::Gone {
                        return;
                    }
                    ended = next == Next::Ended;
                    apply(next, &mut reading, &mut last_words);
                    continue;
                }
                None => break,
            }
        }
        tokio::select! {
            biased;
            // Stopping: read no more; what is in flight is answered (the server core answers
            // everything still open with 503 as it stops), then the connection closes.
            _ = shutdown.stopped() => reading = false,
            // Closing: an idle connection closes (looked at again at the top of the loop).
            _ = shutdown.closing(), if pending.is_empty() => {}
            Some(bytes) = pending.next(), if !pending.is_empty() => {
                // A failed write: the client is gone; dropping what it still waits for
                // cancels it (its workers are interrupted).
                if !write_answers(&mut writer, bytes, &mut pending).await {
                    return;
                }
            }
            item = requests.next(), if pending.len() < MAX_PIPELINE => {
                let next = take(item, &server, &protocol, &shutdown, &mut pending);
                if next == Next::Gone {
                    // The connection failed (reset): the client is gone, and dropping what it
                    // waits for cancels it.
                    return;
                }
                ended = next == Next::Ended;
                apply(next, &mut reading, &mut last_words);
            }
        }
    }
    // The input is over: answer what was asked.
    let input = requests.into_inner();
    while !pending.is_empty() {
        tokio::select! {
            biased;
            Some(bytes) = pending.next() => {
                if !write_answers(&mut writer, bytes, &mut pending).await {
                    return;
                }
            }
            // After a half-close, a reset means the client is gone (a half-closed one would
            // still read its answers): what it waits for is cancelled.
            _ = input.ready(tokio::io::Interest::ERROR), if ended => {
                tracing::debug!("the client reset its connection after its input ended");
                return;
            }
        }
    }
    if let Some(bytes) = last_words {
        let _ = writer.write_all(&bytes).await;
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Writes `first` and every other answer already done, then flushes; false if the client is
/// gone (a write failed).
async fn write_answers(
    writer: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    first: Vec<u8>,
    pending: &mut FuturesOrdered<Reply>,
) -> bool {
    if writer.write_all(&first).await.is_err() {
        return false;
    }
    while let Some(Some(bytes)) = pending.next().now_or_never() {
        if writer.write_all(&bytes).await.is_err() {
            return false;
        }
    }
    writer.flush().await.is_ok()
}

/// What a stream connection does after the reader gave it something.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Go on reading.
    Read,
    /// The client's input ended (a half-close, or a close): answer what it sent, then close.
    Ended,
    /// Its input is refused: these last words, then close.
    Refuse(Vec<u8>),
    /// The connection failed: the client is gone.
    Gone,
}

fn apply(next: Next, reading: &mut bool, last_words: &mut Option<Vec<u8>>) {
    match next {
        Next::Read | Next::Gone => {}
        Next::Ended => *reading = false,
        Next::Refuse(bytes) => {
            *last_words = Some(bytes);
            *reading = false;
        }
    }
}

/// Takes what the reader gave: a request is answered at once (health; 503 while closing) or
/// submitted, its answer queued in `pending` in request order.
fn take<P: StreamProtocol>(
    item: Option<Result<P::Request, ProtocolError>>,
    server: &Server,
    protocol: &Arc<P>,
    shutdown: &Shutdown,
    pending: &mut FuturesOrdered<Reply>,
) -> Next {
    match item {
        Some(Ok(req)) => {
            if let Some(resp) = protocol.health(&req, Health::of(shutdown)) {
                pending.push_back(Box::pin(std::future::ready(resp)));
            } else if shutdown.is_closing() {
                let answer = Answer::Failed(server.refuse_draining());
                pending.push_back(Box::pin(std::future::ready(protocol.answer(answer))));
            } else {
                let p = server.submit_from(
                    protocol.client_protocol(),
                    protocol.job_frames(req),
                    None,
                    TraceId::NONE,
                );
                let proto = protocol.clone();
                pending.push_back(Box::pin(p.map(move |a| proto.answer(a))));
            }
            Next::Read
        }
        Some(Err(e)) if e.is_connection_failure() => {
            tracing::debug!(error = %e, "the client's connection failed");
            Next::Gone
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "refusing a malformed request");
            Next::Refuse(protocol.refuse(&e))
        }
        // The client closed its sending side: a half-close (nc at the end of its input) or a
        // close. Either way it is answered; a client really gone shows as a failed write.
        None => Next::Ended,
    }
}

/// The listen backlog of front servers: large, so a burst of connections is not left waiting for
/// SYN retransmits (the C++ server's 100 caused 1-second stalls at 256 connections).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Parses a listen endpoint: the seed's `tcp://*:8002` / `tcp://127.0.0.1:8002` or plain
/// `host:port`. `*` means every interface. Returns the candidate addresses, preferred first.
pub fn listen_addrs(endpoint: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let hostport = endpoint.strip_prefix("tcp://").unwrap_or(endpoint);
    if hostport.contains("://") {
        return Err(format!(
            "listen endpoint {endpoint:?}: only tcp:// (or host:port) is served"
        ));
    }
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("listen endpoint {endpoint:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("listen endpoint {endpoint:?}: bad port {port:?}"))?;
    if host == "*" || host.is_empty() {
        return Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ]);
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("listen endpoint {endpoint:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("listen endpoint {endpoint:?}: no address"));
    }
    Ok(addrs)
}

/// Binds a listener for a listen endpoint (see [`listen_addrs`]) with [`LISTEN_BACKLOG`],
/// trying each candidate address in turn. The error names the endpoint.
pub fn bind_listener(endpoint: &str) -> std::io::Result<TcpListener> {
    let addrs = listen_addrs(endpoint)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut last = None;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let attempt = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(LISTEN_BACKLOG)
        });
        match attempt {
            Ok(l) => return Ok(l),
            Err(e) => {
                last = Some(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {endpoint} ({addr}): {e}"),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("cannot listen on {endpoint}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_endpoints() {
        assert_eq!(listen_addrs("tcp://*:8002").unwrap().len(), 2);
        assert_eq!(
            listen_addrs("tcp://127.0.0.1:8002").unwrap(),
            vec!["127.0.0.1:8002".parse().unwrap()]
        );
        assert_eq!(
            listen_addrs("127.0.0.1:0").unwrap(),
            vec!["127.0.0.1:0".parse().unwrap()]
        );
        for bad in ["ipc:///tmp/x", "tcp://127.0.0.1", "127.0.0.1:http", "nope"] {
            assert!(listen_addrs(bad).is_err(), "{bad}");
        }
    }
}
