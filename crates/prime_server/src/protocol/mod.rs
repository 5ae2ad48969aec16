//! Client protocols: how requests arrive from clients and how answers go back.
//!
//! A stream protocol (netstring here; others plug in the same way) is a [`StreamProtocol`]: a
//! decoder for requests, a health check answered without touching workers, the mapping of a
//! request to job frames and of an [`Answer`] to response bytes. [`serve`] runs any of them on a
//! TCP listener over the [`ServerHandle`] bridge. The HTTP front (hyper) uses the same bridge.

pub mod netstring;

use crate::server::{Answer, ServerHandle};
use crate::shutdown::Shutdown;
use crate::transport::Frames;
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, FramedRead};

/// A request the protocol cannot accept; the connection is answered and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ProtocolError {
    /// 400 for malformed input, 413 for too large.
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

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::malformed(e.to_string())
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
    fn health(&self, req: &Self::Request, draining: bool) -> Option<Vec<u8>>;
    /// The frames the first stage receives for `req`.
    fn into_job(&self, req: Self::Request) -> Frames;
    /// The response bytes for an answer.
    fn answer(&self, answer: Answer) -> Vec<u8>;
    /// The response to a request that could not be decoded (the connection closes after it).
    fn refuse(&self, err: &ProtocolError) -> Vec<u8>;
}

/// How many requests one connection may have in flight (pipelined) before the server stops
/// reading from it.
pub const MAX_PIPELINE: usize = 1024;

/// Serves `protocol` on `listener` until the drain starts (then stops accepting) and closes
/// connections when `shutdown` stops. Each connection's answers go back in request order.
pub async fn serve<P: StreamProtocol>(
    listener: TcpListener,
    server: ServerHandle,
    protocol: P,
    shutdown: Shutdown,
) {
    let protocol = Arc::new(protocol);
    loop {
        tokio::select! {
            _ = shutdown.draining() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, server.clone(), protocol.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

type Reply = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

async fn connection<P: StreamProtocol>(
    stream: TcpStream,
    server: ServerHandle,
    protocol: Arc<P>,
    shutdown: Shutdown,
) {
    let (rd, wr) = stream.into_split();
    let mut requests = FramedRead::new(rd, protocol.codec());
    let mut writer = BufWriter::new(wr);
    let mut pending: FuturesOrdered<Reply> = FuturesOrdered::new();
    let mut reading = true;
    let mut last_words: Option<Vec<u8>> = None;
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.stopped() => return,
            Some(bytes) = pending.next(), if !pending.is_empty() => {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
                // Write every answer that is ready too, then flush once.
                while let Some(Some(bytes)) = pending.next().now_or_never() {
                    if writer.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
            item = requests.next(), if reading && pending.len() < MAX_PIPELINE => match item {
                Some(Ok(req)) => {
                    if let Some(resp) = protocol.health(&req, shutdown.is_draining()) {
                        pending.push_back(Box::pin(std::future::ready(resp)));
                    } else {
                        let p = server.submit(protocol.into_job(req), None);
                        let proto = protocol.clone();
                        pending.push_back(Box::pin(p.map(move |a| proto.answer(a))));
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "refusing a malformed request");
                    last_words = Some(protocol.refuse(&e));
                    reading = false;
                }
                // The client closed: what it still waits for is cancelled (dropping the pending
                // answers interrupts the workers holding them).
                None => return,
            },
        }
    }
    if let Some(bytes) = last_words {
        let _ = writer.write_all(&bytes).await;
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
