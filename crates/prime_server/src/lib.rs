//! prime_server: a ZeroMQ parallel pipeline ("butterfly") behind an async front server, for
//! services whose requests cost wildly different amounts of work.
//!
//! ```text
//! client <-> server ---> proxy <-> workers ---> proxy <-> workers ...
//!              ^                      |                      |
//!              \______ loopback ______/______________________/
//! ```
//!
//! A map of the modules, from the bottom up:
//! - [`endpoint`]: where a zmq socket binds or connects (`inproc`, `ipc`, `tcp`), checked once.
//! - [`transport`]: the one module that talks to libzmq: sockets, and waiting on them.
//! - [`wire`]: protocol v3, the frames between server, proxies and workers (`docs/PROTOCOL.md`).
//! - [`heartbeat`]: heartbeat timing, shared by proxies and workers.
//! - [`answer`]: the one [`Answer`] every request gets.
//! - [`stats`]: the components' counters, read as snapshots.
//! - `rate_limit`: warnings about dropped messages, at most one line per side per interval.
//! - [`work`]: the work contract: a [`WorkFn`] takes a [`Job`] and returns an [`Outcome`].
//! - [`interrupt`]: the [`Interrupt`] check a work function calls to learn its request died.
//! - [`proxy`]: one stage's load balancer; workers pull, a job goes only to an idle worker
//!   (the rule itself is a state machine without sockets, `proxy/balance.rs`).
//! - `proxy_watch`: how a sender learns that the proxy it sends jobs to died or restarted.
//! - [`worker`]: the zmq worker: runs the work function; forwards or replies through the
//!   loopback.
//! - [`server`]: the server core: ids, deadlines, the in-flight limit, interrupts, and the pump
//!   that owns its zmq sockets.
//! - [`protocol`]: client protocols (HTTP/1.1 and HTTP/2 on hyper, in cleartext or over TLS with
//!   rustls; netstring; zmq) served over the server core.
//! - [`http_job`]: HTTP requests and responses as workers see them, and their job encoding
//!   (named apart from the HTTP front, [`protocol::http`], and the `http` crate).
//! - [`client`]: a batch client that keeps N requests in flight.
//! - [`shutdown`]: drain-then-stop, wired to SIGTERM/SIGINT in daemons.
//! - [`component`]: how the components' threads run and end (spans, errors, panics).
//! - [`pipeline`]: a whole pipeline in one process, its stages joined by zmq (the code of a
//!   multi-process deployment) or by in-memory queues (`memory`, the fast path when every part
//!   lives in the process).
//! - [`topology`]: the TOML topology file that describes a deployment.
//! - [`fd_limit`]: the open-file limit, raised at start, and the share of it client connections
//!   may take (the rest is kept for zmq).
//!
//! The main types are re-exported here.
//!
//! # Example
//!
//! A one-stage echo service over inproc, asked once through the server core:
//!
//! ```
//! use prime_server::{Answer, Outcome, Pipeline};
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let mut p = Pipeline::new("doc-echo");
//! p.stage(1, |job, _interrupt| Ok(Outcome::Reply(job.frames.concat())));
//! let running = p.start().unwrap();
//! let answer = rt.block_on(running.server.submit(vec![b"hello".to_vec()], None));
//! assert_eq!(answer, Answer::Reply(b"hello".to_vec()));
//! running.stop();
//! ```

pub mod answer;
pub mod client;
pub mod component;
pub mod endpoint;
pub mod fd_limit;
pub mod heartbeat;
pub mod http_job;
pub mod interrupt;
pub(crate) mod memory;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod proxy;
pub(crate) mod proxy_watch;
pub(crate) mod rate_limit;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod topology;
pub mod transport;
pub mod wire;
pub mod work;
pub mod worker;

pub use answer::{Answer, Failure};
pub use endpoint::Endpoint;
pub use heartbeat::Heartbeat;
pub use interrupt::{Interrupt, Interrupted};
pub use pipeline::{Pipeline, Running, Transport};
pub use proxy::{Proxy, ProxyConfig};
pub use server::{Pending, Server, ServerConfig};
pub use shutdown::{OnDrain, Shutdown};
pub use transport::Context;
pub use wire::ClientProtocol;
pub use work::{Job, Outcome, WorkError, WorkFn};
pub use worker::{Worker, WorkerConfig};

/// Errors of the library. Each says what failed; the cause is part of the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A zmq endpoint or socket failed.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// An operating-system call failed.
    #[error("{op}: {cause}")]
    Io {
        /// What the library was doing.
        op: &'static str,
        /// What the system said.
        cause: std::io::Error,
    },
    /// A component's configuration does not hold together.
    #[error("{0}")]
    Config(String),
}
