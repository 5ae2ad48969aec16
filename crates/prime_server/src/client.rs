//! A batch client: pumps requests at a server, keeping a fixed number in flight, and hands every
//! answer to a collect function. Used by simulation mode, tests and benchmarks.
//!
//! It opens `connections` TCP connections and keeps up to `depth` requests in flight on each
//! (pipelined, so answers come back in order per connection). Requests are drawn from one shared
//! iterator, so the batch ends when the iterator does and every answer is in.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, FramedRead};

/// What a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Requests sent.
    pub sent: u64,
    /// Answers received.
    pub answered: u64,
    /// Wall time of the whole batch.
    pub elapsed: Duration,
}

/// How to frame requests and unframe answers.
pub trait ClientCodec: Clone + Send + 'static {
    /// Splits the answer stream.
    type Decoder: Decoder<Item = Bytes, Error = std::io::Error> + Send + 'static;
    /// A fresh decoder for a new connection.
    fn decoder(&self) -> Self::Decoder;
    /// The bytes that carry `request` on the wire.
    fn encode(&self, request: &[u8]) -> Vec<u8>;
}

/// Netstring framing for the batch client.
#[derive(Debug, Clone)]
pub struct NetstringClient {
    /// The largest answer accepted.
    pub max_len: usize,
}

/// Decodes netstring answers for the client.
#[derive(Debug)]
pub struct NetstringAnswers(crate::protocol::netstring::NetstringCodec);

impl Decoder for NetstringAnswers {
    type Item = Bytes;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        self.0
            .decode(src)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.reason))
    }
}

impl ClientCodec for NetstringClient {
    type Decoder = NetstringAnswers;
    fn decoder(&self) -> NetstringAnswers {
        NetstringAnswers(crate::protocol::netstring::NetstringCodec::new(
            self.max_len,
        ))
    }
    fn encode(&self, request: &[u8]) -> Vec<u8> {
        crate::protocol::netstring::encode(request)
    }
}

/// The batch client. See the module docs.
#[derive(Debug, Clone)]
pub struct BatchClient<C> {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// How many connections to open.
    pub connections: usize,
    /// How many requests each connection keeps in flight.
    pub depth: usize,
    /// The framing.
    pub codec: C,
}

impl<C: ClientCodec> BatchClient<C> {
    /// Sends every request `requests` yields and calls `collect(request, answer)` for each
    /// answer. Returns when all are answered; an I/O error on any connection ends the batch
    /// with that error.
    pub async fn run<I, F>(&self, requests: I, collect: F) -> std::io::Result<BatchReport>
    where
        I: Iterator<Item = Vec<u8>> + Send + 'static,
        F: FnMut(&[u8], &[u8]) + Send + 'static,
    {
        let started = Instant::now();
        let requests = Arc::new(Mutex::new(requests));
        let collect = Arc::new(Mutex::new(collect));
        let mut tasks = Vec::new();
        for _ in 0..self.connections.max(1) {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            tasks.push(tokio::spawn(run_connection(
                stream,
                self.codec.clone(),
                self.depth.max(1),
                requests.clone(),
                collect.clone(),
            )));
        }
        let mut report = BatchReport::default();
        for t in tasks {
            let (sent, answered) = t.await.map_err(std::io::Error::other)??;
            report.sent += sent;
            report.answered += answered;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

type Shared<T> = Arc<Mutex<T>>;

async fn run_connection<C, I, F>(
    stream: TcpStream,
    codec: C,
    depth: usize,
    requests: Shared<I>,
    collect: Shared<F>,
) -> std::io::Result<(u64, u64)>
where
    C: ClientCodec,
    I: Iterator<Item = Vec<u8>>,
    F: FnMut(&[u8], &[u8]),
{
    let (rd, mut wr) = stream.into_split();
    let mut answers = FramedRead::new(rd, codec.decoder());
    let mut in_flight: VecDeque<Vec<u8>> = VecDeque::new();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut exhausted = false;
    loop {
        if !exhausted && in_flight.len() < depth {
            let mut out = Vec::new();
            while in_flight.len() < depth {
                let next = requests.lock().ok().and_then(|mut r| r.next());
                match next {
                    Some(req) => {
                        out.extend(codec.encode(&req));
                        in_flight.push_back(req);
                        sent += 1;
                    }
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
            }
        }
        if in_flight.is_empty() {
            break;
        }
        match answers.next().await {
            Some(Ok(answer)) => {
                let req = in_flight.pop_front().unwrap_or_default();
                answered += 1;
                if let Ok(mut f) = collect.lock() {
                    f(&req, &answer);
                }
            }
            Some(Err(e)) => return Err(e),
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "server closed the connection with {} requests unanswered",
                        in_flight.len()
                    ),
                ))
            }
        }
    }
    Ok((sent, answered))
}

/// HTTP/1.1 framing for the batch client: requests are complete raw HTTP requests (sent as
/// they are); answers are responses with a `Content-Length`, handed to the collect function as
/// `status` (3 ASCII digits), a space, and the body.
#[derive(Debug, Clone, Default)]
pub struct HttpClient;

/// Decodes HTTP responses for the client.
#[derive(Debug, Default)]
pub struct HttpAnswers;

impl Decoder for HttpAnswers {
    type Item = Bytes;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(src) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(bad(&format!("bad response: {e}"))),
        };
        let status = resp.code.unwrap_or(0);
        let mut len = None;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad(
                    "chunked responses are not supported by the batch client",
                ));
            }
        }
        let len = len.ok_or_else(|| bad("response without Content-Length"))?;
        if src.len() < head_len + len {
            src.reserve(head_len + len - src.len());
            return Ok(None);
        }
        let mut whole = src.split_to(head_len + len);
        let body = whole.split_off(head_len);
        let mut out = BytesMut::with_capacity(4 + len);
        out.extend_from_slice(format!("{status:03} ").as_bytes());
        out.extend_from_slice(&body);
        Ok(Some(out.freeze()))
    }
}

impl ClientCodec for HttpClient {
    type Decoder = HttpAnswers;
    fn decoder(&self) -> HttpAnswers {
        HttpAnswers
    }
    fn encode(&self, request: &[u8]) -> Vec<u8> {
        request.to_vec()
    }
}
