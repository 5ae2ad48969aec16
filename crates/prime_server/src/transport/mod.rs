//! The one module that talks to libzmq.
//!
//! Everything else in the crate speaks in [`Context`], [`Socket`], [`Frames`], [`Waiter`],
//! [`SocketEvents`] and [`PeerEvent`], so the rest of the code never names `zmq::`. Endpoints are zmq's: `inproc://name` (threads of one
//! process sharing one [`Context`]), `ipc:///path` (processes on one host) and `tcp://host:port`
//! (processes on many hosts). A bind or connect that fails is an error naming the endpoint.

mod curve;
mod monitor;

pub use crate::endpoint::{Endpoint, InvalidEndpoint, Scheme};
pub use curve::{Admission, Credentials, KeyError, Keypair, PublicKey, SecretKey, KEY_LEN};
pub use monitor::{PeerAddress, PeerEvent, PeerWatch, SETTLE};
use std::os::unix::io::RawFd;
use std::sync::Arc;
// libzmq is built with CURVE on libsodium's NaCl functions (see .cargo/config.toml); this crate
// links libsodium for it.
use libsodium_sys as _;
use std::time::Duration;

/// A multipart message: one `Vec<u8>` per zmq frame.
pub type Frames = Vec<Vec<u8>>;

/// How a socket behaves; the names are zmq's socket types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Addresses peers by routing id; the first frame received is the sender's id.
    Router,
    /// Round-robins sends over its peers and fair-queues receives.
    Dealer,
    /// Broadcasts to every subscriber.
    Pub,
    /// Receives what publishers broadcast.
    Sub,
}

impl Kind {
    fn zmq(self) -> zmq::SocketType {
        match self {
            Kind::Router => zmq::ROUTER,
            Kind::Dealer => zmq::DEALER,
            Kind::Pub => zmq::PUB,
            Kind::Sub => zmq::SUB,
        }
    }
}

/// Errors of the transport layer. Each names the endpoint or operation it concerns, followed by
/// the cause; the cause is part of the message and not also a `source()`, so that an error chain
/// printed in full (anyhow's `{:#}`) does not say it twice.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint string is not `inproc://…`, `ipc://…` or `tcp://…`.
    #[error(transparent)]
    InvalidEndpoint(#[from] InvalidEndpoint),
    /// Binding failed (address in use, permission, bad interface…).
    #[error("cannot bind {endpoint}: {cause}")]
    Bind {
        /// The endpoint.
        endpoint: Endpoint,
        /// What libzmq said.
        cause: zmq::Error,
    },
    /// Something listens on the ipc endpoint already (another process bound it). Binding
    /// anyway would take the path over from it: libzmq unlinks the socket file it finds.
    #[error("cannot bind {endpoint}: already in use (another process is listening there)")]
    InUse {
        /// The endpoint.
        endpoint: Endpoint,
    },
    /// The ipc socket file's directory could not be created.
    #[error("cannot bind {endpoint}: cannot create {dir}: {cause}")]
    IpcDir {
        /// The endpoint.
        endpoint: Endpoint,
        /// The directory.
        dir: std::path::PathBuf,
        /// What the system said.
        cause: std::io::Error,
    },
    /// Connecting failed (malformed address, unknown inproc name…).
    #[error("cannot connect to {endpoint}: {cause}")]
    Connect {
        /// The endpoint.
        endpoint: Endpoint,
        /// What libzmq said.
        cause: zmq::Error,
    },
    /// A system call failed.
    #[error("{op}: {cause}")]
    Os {
        /// The call.
        op: &'static str,
        /// What the system said.
        cause: std::io::Error,
    },
    /// Any other libzmq failure.
    #[error("zmq {op}: {cause}")]
    Zmq {
        /// The operation that failed.
        op: &'static str,
        /// What libzmq said.
        cause: zmq::Error,
    },
}

/// Outcome of a non-blocking send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The message was queued for sending.
    Yes,
    /// The peer's queue is full (high-water mark) or, with [`Kind::Router`], the peer is unknown:
    /// the message was not sent.
    Unreachable,
}

type Result<T> = std::result::Result<T, TransportError>;

fn zerr(op: &'static str) -> impl FnOnce(zmq::Error) -> TransportError {
    move |cause| TransportError::Zmq { op, cause }
}

/// EAFNOSUPPORT's value on Linux (the only target we build for); the binding has no name for it.
fn libc_eafnosupport() -> i32 {
    97
}

/// The largest frame a socket takes in unless its [`Context`] says otherwise: four times the
/// HTTP front's default largest body (10 MiB) plus 64 KiB, the default largest request head, so
/// that any request the front accepts fits, and a reply may be a few times its request.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 10 * 1024 * 1024 + 64 * 1024;

/// A zmq context: the I/O threads and the namespace of `inproc://` endpoints, and the largest
/// frame its sockets take in. Cheap to clone; every component of one process that talks over
/// inproc must share one.
///
/// **The message-size limit** (libzmq's `ZMQ_MAXMSGSIZE`, set on every socket this context
/// opens): libzmq checks the size a peer announces for each *frame* before it allocates
/// anything, and on a frame over the limit closes the connection it came on without delivering
/// the message. A peer that connected reconnects by itself (the frame is lost, with whatever of
/// its message was sent); one that was connected to is gone until it connects again. The limit
/// counts one frame, not a whole multipart message, and does not apply to `inproc://`, where
/// messages are never encoded.
#[derive(Clone)]
pub struct Context {
    inner: zmq::Context,
    max_message_bytes: usize,
    security: Arc<curve::Security>,
    monitor: Arc<monitor::Monitor>,
}

impl Default for Context {
    fn default() -> Self {
        Context::with_max_message_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Context(max_message_bytes: {})", self.max_message_bytes)
    }
}

impl Context {
    /// A new context with libzmq's defaults (one I/O thread) and
    /// [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A new context whose sockets take in no frame over `bytes`.
    pub fn with_max_message_bytes(bytes: usize) -> Self {
        let inner = zmq::Context::new();
        let monitor = Arc::new(monitor::Monitor::new(inner.clone()));
        Context {
            security: Arc::new(curve::Security::new(inner.clone(), monitor.clone())),
            monitor,
            inner,
            max_message_bytes: bytes,
        }
    }

    /// Peers refused so far by this context's CURVE sockets (see [`Socket::bind_admitting`]):
    /// keys not on the allow-list, peers expecting another server key, peers without CURVE.
    pub fn refused_peers(&self) -> u64 {
        self.security.refused()
    }

    /// The largest frame this context's sockets take in.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Opens a socket of the given kind with the crate's defaults: a short linger so shutdown
    /// never hangs on unsent messages, IPv6 dual stack for tcp, and the context's largest frame.
    pub fn socket(&self, kind: Kind) -> Result<Socket> {
        let inner = self.inner.socket(kind.zmq()).map_err(zerr("socket"))?;
        inner.set_linger(200).map_err(zerr("set linger"))?;
        let limit = i64::try_from(self.max_message_bytes).unwrap_or(i64::MAX);
        inner
            .set_maxmsgsize(limit)
            .map_err(zerr("set maxmsgsize"))?;
        if kind == Kind::Sub {
            inner.set_subscribe(b"").map_err(zerr("subscribe"))?;
        }
        Ok(Socket {
            inner,
            kind,
            security: self.security.clone(),
            monitor: self.monitor.clone(),
        })
    }
}

/// One zmq socket. `Send` but not `Sync`: it lives on one thread at a time.
pub struct Socket {
    inner: zmq::Socket,
    kind: Kind,
    /// Keeps the context's ZAP handler running while the socket lives.
    security: Arc<curve::Security>,
    /// Keeps the context's monitor thread running while the socket lives.
    monitor: Arc<monitor::Monitor>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Socket({:?})", self.kind)
    }
}

impl Socket {
    /// Binds to `endpoint`. For tcp it tries IPv6 dual stack first and falls back to IPv4 only
    /// where the host has no IPv6. For ipc it creates the socket file's directory if missing,
    /// and fails with [`TransportError::InUse`] if something listens there already: libzmq
    /// would unlink the live socket file and take the path over.
    pub fn bind(&self, endpoint: &Endpoint) -> Result<()> {
        claim_ipc_path(endpoint)?;
        if endpoint.scheme() == Scheme::Tcp {
            let _ = self.inner.set_ipv6(true);
            if let Err(e) = self.inner.bind(endpoint.as_str()) {
                // No IPv6 on this host: libzmq reports it as an unknown address family (not in the
                // binding's enum) or as the address not being available.
                let no_ipv6 = e == zmq::Error::EADDRNOTAVAIL || e.to_raw() == libc_eafnosupport();
                if !no_ipv6 {
                    return Err(TransportError::Bind {
                        endpoint: endpoint.clone(),
                        cause: e,
                    });
                }
                let _ = self.inner.set_ipv6(false);
            } else {
                return Ok(());
            }
        }
        self.inner
            .bind(endpoint.as_str())
            .map_err(|cause| TransportError::Bind {
                endpoint: endpoint.clone(),
                cause,
            })
    }

    /// Binds to `endpoint` as [`Socket::bind`] does; with an admission (and an endpoint that is
    /// not `inproc://`), as a CURVE server that admits only the peers whose keys it lists. The
    /// ZAP domain is the admission's role and the endpoint.
    pub fn bind_admitting(&self, endpoint: &Endpoint, admission: Option<&Admission>) -> Result<()> {
        self.bind_watching(endpoint, admission, None)
    }

    /// Binds as [`Socket::bind_admitting`] does, and tells `peers` of each peer that connects
    /// or goes away ([`PeerEvent`]), from libzmq's socket monitor, read by a thread of the
    /// context: a connection's address, never the peer's routing id (libzmq does not say which
    /// connection carries which). `inproc://` has no connections: nothing is reported there.
    pub fn bind_watching(
        &self,
        endpoint: &Endpoint,
        admission: Option<&Admission>,
        peers: Option<PeerWatch>,
    ) -> Result<()> {
        let remote = endpoint.scheme() != Scheme::Inproc;
        let mut watch = monitor::Watch {
            label: endpoint.to_string(),
            refusals: None,
            peers: peers.filter(|_| remote),
        };
        if let Some(a) = admission.filter(|_| remote) {
            let domain = format!("{} {}", a.role, endpoint);
            watch.refusals = Some(self.security.serve(&self.inner, a, &domain)?);
            watch.label = domain;
        } else if admission.is_none() && endpoint.scheme() == Scheme::Tcp {
            tracing::warn!(
                %endpoint,
                "BOUND WITHOUT CURVE: anyone who can reach this tcp endpoint can read its \
                 traffic and send it messages (take jobs, forge replies); give the deployment \
                 keys ([security] in the topology, or the daemons' key flags) or keep the port \
                 closed to all but trusted hosts"
            );
        }
        if watch.refusals.is_some() || watch.peers.is_some() {
            self.monitor.watch(&self.inner, watch)?;
        }
        self.bind(endpoint)
    }

    /// Connects to `endpoint` as [`Socket::connect`] does; with credentials (and an endpoint
    /// that is not `inproc://`), as a CURVE client proving its key and checking the server's.
    /// Each connect of one socket may present other credentials (libzmq copies them into the
    /// connection); once a socket has presented some, its later connects use CURVE too.
    pub fn connect_presenting(
        &self,
        endpoint: &Endpoint,
        credentials: Option<&Credentials>,
    ) -> Result<()> {
        if let Some(c) = credentials.filter(|_| endpoint.scheme() != Scheme::Inproc) {
            curve::client(&self.inner, c)?;
        }
        self.connect(endpoint)
    }

    /// Drops the connection to `endpoint` made by an earlier connect, and connects to it anew
    /// (with `credentials`, as [`Socket::connect_presenting`]). libzmq gives up on a connection
    /// whose CURVE handshake failed (a key not admitted yet, a server restarted with another
    /// key) and never tries it again by itself; this is how a peer tries again.
    pub fn reconnect(&self, endpoint: &Endpoint, credentials: Option<&Credentials>) -> Result<()> {
        // Not connected (any more): nothing to drop.
        let _ = self.inner.disconnect(endpoint.as_str());
        self.connect_presenting(endpoint, credentials)
    }

    /// Connects to `endpoint`. zmq connects in the background and reconnects after failures; an
    /// error here means the endpoint itself is unusable.
    pub fn connect(&self, endpoint: &Endpoint) -> Result<()> {
        if endpoint.scheme() == Scheme::Tcp {
            let _ = self.inner.set_ipv6(true);
        }
        self.inner
            .connect(endpoint.as_str())
            .map_err(|cause| TransportError::Connect {
                endpoint: endpoint.clone(),
                cause,
            })
    }

    /// The endpoint this socket bound last, with the port zmq picked for `tcp://…:*`.
    pub fn last_endpoint(&self) -> Result<Endpoint> {
        let text = match self.inner.get_last_endpoint() {
            Ok(Ok(s)) => s,
            Ok(Err(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return Err(zerr("last endpoint")(e)),
        };
        Ok(Endpoint::parse(&text)?)
    }

    /// Sets the id this socket presents to peers; a ROUTER peer addresses it by this id.
    pub fn set_routing_id(&self, id: &[u8]) -> Result<()> {
        self.inner.set_identity(id).map_err(zerr("set routing id"))
    }

    /// With [`Kind::Router`]: a send to an unknown peer fails ([`Sent::Unreachable`]) instead of
    /// being dropped silently.
    pub fn set_router_mandatory(&self, on: bool) -> Result<()> {
        self.inner
            .set_router_mandatory(on)
            .map_err(zerr("set router mandatory"))
    }

    /// With `true`, a connecting socket has a pipe to its peer only while connected (zmq's
    /// `ZMQ_IMMEDIATE`): nothing queues for a peer that is not there, and each new connection
    /// gets a new pipe. For a connecting ROUTER this is what lets a peer that restarts with
    /// another routing id be addressed by its new id (libzmq otherwise keeps the pipe, and the
    /// first id it learned, across reconnects: zeromq/libzmq#1575).
    pub fn set_immediate(&self, on: bool) -> Result<()> {
        self.inner.set_immediate(on).map_err(zerr("set immediate"))
    }

    /// Bounds the queues of this socket, per peer, in messages (0 = unbounded).
    pub fn set_high_water_marks(&self, send: i32, recv: i32) -> Result<()> {
        self.inner.set_sndhwm(send).map_err(zerr("set sndhwm"))?;
        self.inner.set_rcvhwm(recv).map_err(zerr("set rcvhwm"))
    }

    /// Sends the frames as one message without blocking.
    pub fn send<I, T>(&self, frames: I) -> Result<Sent>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut iter = frames.into_iter().peekable();
        let mut first = true;
        while let Some(frame) = iter.next() {
            let more = if iter.peek().is_some() {
                zmq::SNDMORE
            } else {
                0
            };
            match self.inner.send(frame.as_ref(), zmq::DONTWAIT | more) {
                Ok(()) => first = false,
                // Only the first frame can fail this way: once a message has started, zmq
                // guarantees the remaining frames are accepted.
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) if first => {
                    return Ok(Sent::Unreachable)
                }
                Err(e) => return Err(zerr("send")(e)),
            }
        }
        Ok(Sent::Yes)
    }

    /// A file descriptor that becomes readable when this socket's state may have changed (zmq's
    /// `ZMQ_FD`, edge-triggered): register it with an event loop, then ask [`Socket::has_input`].
    /// The descriptor belongs to zmq; never close it.
    pub fn event_fd(&self) -> Result<RawFd> {
        self.inner.get_fd().map_err(zerr("get fd"))
    }

    /// Whether a message is waiting (zmq's `ZMQ_EVENTS`). Asking also lets zmq process its
    /// pending commands, which is what re-arms [`Socket::event_fd`].
    pub fn has_input(&self) -> Result<bool> {
        self.inner
            .get_events()
            .map(|e| e.contains(zmq::POLLIN))
            .map_err(zerr("get events"))
    }

    /// Receives one whole message without blocking; `None` when nothing is waiting.
    pub fn try_recv(&self) -> Result<Option<Frames>> {
        match self.inner.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => Ok(Some(frames)),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(zerr("recv")(e)),
        }
    }

    /// Like [`Socket::try_recv`], with the message's [`Origin`], which can say who sent it.
    ///
    /// Costs what [`Socket::try_recv`] costs: the same receive calls (it reads the "more" flag
    /// from each frame, `zmq_msg_more`, instead of asking the socket, `zmq_getsockopt`: both are
    /// reads of memory), and
    /// the first frame's zmq message, which the copy into [`Frames`] would have closed at once,
    /// is closed when the origin is dropped. The sender's address is looked up only when
    /// [`Origin::peer`] is asked.
    pub fn try_recv_from(&self) -> Result<Option<(Frames, Origin)>> {
        let mut first = zmq::Message::new();
        match self.inner.recv(&mut first, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => return Ok(None),
            Err(e) => return Err(zerr("recv")(e)),
        }
        let mut frames = vec![first.to_vec()];
        let mut more = first.get_more();
        let mut part = zmq::Message::new();
        while more {
            // The rest of a message is there once its first frame is: zmq delivers whole
            // messages.
            self.inner
                .recv(&mut part, zmq::DONTWAIT)
                .map_err(zerr("recv"))?;
            frames.push(part.to_vec());
            more = part.get_more();
        }
        Ok(Some((frames, Origin(first))))
    }
}

/// Where a message received with [`Socket::try_recv_from`] came from.
pub struct Origin(zmq::Message);

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Origin")
    }
}

impl Origin {
    /// The sender's address, as libzmq recorded it for the connection the message came on (its
    /// `Peer-Address` property): a tcp peer's IP address (libzmq keeps no port), an ipc peer's
    /// process id; [`PeerAddress::Unknown`] over `inproc://`.
    pub fn peer(&mut self) -> PeerAddress {
        match self.0.gets("Peer-Address") {
            Some(text) => PeerAddress::from_property(text),
            None => PeerAddress::Unknown,
        }
    }
}

/// Makes an ipc endpoint's path ready to bind: its directory exists, and nothing listens there.
///
/// libzmq unlinks the file at an ipc path before it binds, a live socket included, so without
/// this check a second process binding the path silently takes it over: peers that connect
/// afterwards reach the newcomer while those already connected stay with the original. A
/// connect tells a live socket (it accepts) from a file left by a process that died without
/// unlinking it (refused), which libzmq may replace. Two processes starting at the same
/// instant can still both pass; the check is for the operator who starts a daemon twice.
/// Abstract sockets (`ipc://@name`) have no file and need no check: the kernel refuses a
/// second bind of the name. `ipc://*` (a name libzmq picks) neither.
fn claim_ipc_path(endpoint: &Endpoint) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = endpoint.ipc_path() else {
        return Ok(());
    };
    if path.as_os_str() == "*" || path.as_os_str().as_bytes().starts_with(b"@") {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|cause| TransportError::IpcDir {
            endpoint: endpoint.clone(),
            dir: dir.to_path_buf(),
            cause,
        })?;
    }
    if path.symlink_metadata().is_ok() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(TransportError::InUse {
            endpoint: endpoint.clone(),
        });
    }
    // Refused (a stale file), not a socket, no permission, a path too long for a socket
    // address: whatever it is, libzmq's own bind reports what stands in the way.
    Ok(())
}

/// Waits for zmq sockets (and plain descriptors) to become readable with an edge-triggered epoll
/// set, which is cheaper than `zmq_poll`: `zmq_poll` asks every socket for its events (a system
/// call each) before and after it sleeps, where this sleeps in one `epoll_wait`.
///
/// The rule that makes it correct: zmq signals a socket's descriptor only when a reader that
/// found the socket empty must be woken. So whenever [`Waiter::wait`] reports a socket, and
/// before the first wait, drain that socket with [`Socket::try_recv`] until it returns `None`;
/// a socket left with messages in it is not signalled again. Edges are recorded by the kernel
/// when zmq signals, so a send on the socket (which may let zmq consume the signal) loses none.
pub struct Waiter {
    epoll: std::os::fd::OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiter")
    }
}

impl Waiter {
    /// An empty set.
    pub fn new() -> Result<Waiter> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call; the descriptor it returns is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("epoll_create1"));
        }
        Ok(Waiter {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            epoll: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            events: Vec::new(),
        })
    }

    /// Watches a socket; [`Waiter::wait`] reports `token` when it may have messages.
    pub fn watch(&mut self, socket: &Socket, token: u64) -> Result<()> {
        let fd = socket.event_fd()?;
        self.watch_fd(fd, token)
    }

    /// Watches a plain descriptor, edge-triggered: drain it whenever it is reported.
    pub fn watch_fd(&mut self, fd: RawFd, token: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: valid epoll descriptor, valid event pointer; the kernel copies the event.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(os_error("epoll_ctl"));
        }
        self.events.push(libc::epoll_event { events: 0, u64: 0 });
        Ok(())
    }

    /// Sleeps until a watched socket or descriptor is signalled or `timeout` passes; returns the
    /// tokens signalled (none on timeout or a signal interrupting the wait).
    pub fn wait(&mut self, timeout: Duration, fired: &mut Vec<u64>) -> Result<()> {
        use std::os::fd::AsRawFd;
        fired.clear();
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let max = i32::try_from(self.events.len().max(1)).unwrap_or(i32::MAX);
        if self.events.is_empty() {
            self.events.push(libc::epoll_event { events: 0, u64: 0 });
        }
        // SAFETY: the buffer holds `max` events and outlives the call.
        let n =
            unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(TransportError::Os {
                op: "epoll_wait",
                cause: e,
            });
        }
        fired.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// A socket that owns its zmq event descriptor's registration with tokio's reactor, for tasks
/// that own zmq sockets (the server core's pump, the zmq client front). The same rule as
/// [`Waiter`]'s holds: when [`SocketEvents::wait`] returns, drain the socket with
/// [`Socket::try_recv`] until it returns `None`.
pub struct SocketEvents {
    // Declared before `socket`: the registration ends before the socket (and with it the
    // descriptor) is closed.
    fd: tokio::io::unix::AsyncFd<ZmqFd>,
    socket: Socket,
}

struct ZmqFd(RawFd);

impl std::os::fd::AsRawFd for ZmqFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl std::fmt::Debug for SocketEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SocketEvents({:?})", self.socket.kind)
    }
}

impl SocketEvents {
    /// Takes `socket` and registers its event descriptor with the current tokio runtime.
    pub fn new(socket: Socket) -> Result<SocketEvents> {
        let fd = ZmqFd(socket.event_fd()?);
        // SAFETY: the descriptor belongs to `socket`, which this value owns and closes only
        // after the registration has ended (field order).
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|cause| TransportError::Os {
            op: "register zmq descriptor",
            cause: cause.into(),
        })?;
        Ok(SocketEvents { fd, socket })
    }

    /// The socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Completes when zmq signals the socket (an edge: drain the socket after it). The future
    /// borrows only the registration, not the socket (which is not `Sync`), so a task waiting
    /// on it can move between threads.
    pub fn wait(&self) -> impl std::future::Future<Output = Result<()>> + Send + '_ {
        let fd = &self.fd;
        async move {
            let mut guard = fd.readable().await.map_err(|cause| TransportError::Os {
                op: "wait for zmq descriptor",
                cause,
            })?;
            guard.clear_ready();
            Ok(())
        }
    }
}

/// Marks the calling thread as a batch thread (Linux `SCHED_BATCH`): when woken it does not
/// preempt the thread running on its core but waits for the core's next turn. Pipeline threads
/// (proxies, workers) use it so that handing them a message does not cost the front server's
/// thread a context switch; they still get their full share of the CPU. Best effort: an error is
/// ignored.
pub fn prefer_batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on the calling thread (pid 0) with a valid parameter.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

fn os_error(op: &'static str) -> TransportError {
    TransportError::Os {
        op,
        cause: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_names_the_endpoint() {
        let ctx = Context::new();
        let a = ctx.socket(Kind::Router).unwrap();
        a.bind(&"tcp://127.0.0.1:*".parse().unwrap()).unwrap();
        let ep = a.last_endpoint().unwrap();
        let b = ctx.socket(Kind::Router).unwrap();
        let err = b.bind(&ep).unwrap_err().to_string();
        assert!(err.contains(ep.as_str()), "{err}");
        let err = TransportError::from(Endpoint::parse("inproc://").unwrap_err()).to_string();
        assert!(err.contains("inproc://"), "{err}");
    }

    /// A fresh directory under the system's temporary directory.
    fn temp_dir(tag: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("ps-transport-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Receives one message, waiting up to 10 s.
    fn recv_within(s: &Socket) -> Frames {
        let t = std::time::Instant::now();
        loop {
            if let Some(m) = s.try_recv().unwrap() {
                return m;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "nothing arrived");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends until the connecting side has a peer to send to.
    fn send_within(s: &Socket, frames: &[&[u8]]) {
        let t = std::time::Instant::now();
        while s.send(frames.iter().copied()).unwrap() == Sent::Unreachable {
            assert!(t.elapsed() < Duration::from_secs(10), "never connected");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_second_bind_of_a_live_ipc_endpoint_fails_and_the_first_keeps_working() {
        let dir = temp_dir("in-use");
        let ep = Endpoint::ipc(&dir.join("s")).unwrap();
        let first = Context::new().socket(Kind::Router).unwrap();
        first.bind(&ep).unwrap();
        // Another context, as another process would have.
        let second = Context::new().socket(Kind::Router).unwrap();
        let err = second.bind(&ep).unwrap_err();
        assert!(matches!(err, TransportError::InUse { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(ep.as_str()) && text.contains("already in use"),
            "{text}"
        );
        let client = Context::new().socket(Kind::Dealer).unwrap();
        client.connect(&ep).unwrap();
        send_within(&client, &[b"hello"]);
        assert_eq!(recv_within(&first)[1], b"hello");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stale_socket_file_does_not_block_a_bind() {
        let dir = temp_dir("stale");
        let path = dir.join("s");
        // A listener that goes away without unlinking its file, as a crashed process's does.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let ep = Endpoint::ipc(&path).unwrap();
        let server = Context::new().socket(Kind::Router).unwrap();
        server.bind(&ep).unwrap();
        let client = Context::new().socket(Kind::Dealer).unwrap();
        client.connect(&ep).unwrap();
        send_within(&client, &[b"hello"]);
        assert_eq!(recv_within(&server)[1], b"hello");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_directory_of_an_ipc_endpoint_is_created() {
        let dir = temp_dir("mkdir");
        let path = dir.join("a/b/s");
        let ep = Endpoint::ipc(&path).unwrap();
        let s = Context::new().socket(Kind::Router).unwrap();
        s.bind(&ep).unwrap();
        assert!(path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_frame_over_the_limit_is_dropped_and_its_sender_goes_on() {
        let dir = temp_dir("limit");
        let ep = Endpoint::ipc(&dir.join("s")).unwrap();
        let server = Context::with_max_message_bytes(1024)
            .socket(Kind::Router)
            .unwrap();
        server.bind(&ep).unwrap();
        let client = Context::new().socket(Kind::Dealer).unwrap();
        client.connect(&ep).unwrap();
        send_within(&client, &[b"small", &[7u8; 1024]]);
        assert_eq!(
            recv_within(&server)[1..],
            [b"small".to_vec(), vec![7u8; 1024]]
        );
        send_within(&client, &[&[7u8; 1025]]);
        // The connection is closed on the big frame, with what was sent along with it; the
        // client reconnects and goes on.
        let t = std::time::Instant::now();
        let after = loop {
            assert!(t.elapsed() < Duration::from_secs(10), "nothing arrived");
            client.send([b"after"]).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            if let Some(m) = server.try_recv().unwrap() {
                break m;
            }
        };
        assert_eq!(after[1], b"after");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_message_says_which_peer_sent_it_over_tcp_and_ipc_but_not_inproc() {
        let dir = temp_dir("origin");
        let ipc = Endpoint::ipc(&dir.join("s")).unwrap();
        let cases = [
            (
                "tcp://127.0.0.1:*".parse().unwrap(),
                "tcp://127.0.0.1".to_string(),
            ),
            (ipc, format!("pid:{}", std::process::id())),
            ("inproc://t-origin".parse().unwrap(), "unknown".to_string()),
        ];
        let ctx = Context::new();
        for (ep, want) in cases {
            let server = ctx.socket(Kind::Router).unwrap();
            server.bind(&ep).unwrap();
            let client = ctx.socket(Kind::Dealer).unwrap();
            client.connect(&server.last_endpoint().unwrap()).unwrap();
            send_within(&client, &[b"hello", b"world"]);
            let t = std::time::Instant::now();
            let (frames, mut origin) = loop {
                if let Some(m) = server.try_recv_from().unwrap() {
                    break m;
                }
                assert!(t.elapsed() < Duration::from_secs(10), "nothing arrived");
                std::thread::sleep(Duration::from_millis(2));
            };
            assert_eq!(frames[1..], [b"hello".to_vec(), b"world".to_vec()]);
            assert_eq!(origin.peer().to_string(), want, "{ep}");
            assert_eq!(server.try_recv_from().unwrap().map(|(f, _)| f), None);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Collects what a watched socket reports.
    fn watcher() -> (PeerWatch, Arc<std::sync::Mutex<Vec<PeerEvent>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            Arc::new(move |e: &PeerEvent| s.lock().unwrap().push(e.clone())),
            seen,
        )
    }

    fn wait_for_events(seen: &std::sync::Mutex<Vec<PeerEvent>>, n: usize) -> Vec<PeerEvent> {
        let t = std::time::Instant::now();
        while seen.lock().unwrap().len() < n {
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", seen.lock());
            std::thread::sleep(Duration::from_millis(10));
        }
        seen.lock().unwrap().clone()
    }

    #[test]
    fn a_watched_socket_reports_each_peer_connecting_and_going_away_with_its_address() {
        let dir = temp_dir("watch");
        let ipc = Endpoint::ipc(&dir.join("s")).unwrap();
        for ep in ["tcp://127.0.0.1:*".parse().unwrap(), ipc] {
            let ctx = Context::new();
            let server = ctx.socket(Kind::Router).unwrap();
            let (watch, seen) = watcher();
            server.bind_watching(&ep, None, Some(watch)).unwrap();
            let bound = server.last_endpoint().unwrap();
            let client = Context::new().socket(Kind::Dealer).unwrap();
            client.connect(&bound).unwrap();
            send_within(&client, &[b"hello"]);
            let events = wait_for_events(&seen, 1);
            let PeerEvent::Connected { endpoint, peer } = &events[0] else {
                panic!("{events:?}");
            };
            assert_eq!(endpoint, bound.as_str());
            match (bound.scheme(), peer) {
                (Scheme::Tcp, PeerAddress::Tcp(a)) => {
                    assert_eq!(a.ip().to_string(), "127.0.0.1");
                    assert_ne!(a.port(), 0);
                }
                (Scheme::Ipc, PeerAddress::Local { pid, .. }) => {
                    assert_eq!(*pid, std::process::id())
                }
                _ => panic!("{bound}: {peer:?}"),
            }
            let connected = *peer;
            drop(client);
            let events = wait_for_events(&seen, 2);
            let PeerEvent::Disconnected { peer, lasted, .. } = &events[1] else {
                panic!("{events:?}");
            };
            assert_eq!((*peer, *lasted >= SETTLE), (connected, true));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_connection_that_ends_at_once_is_not_reported() {
        let ctx = Context::new();
        let server = ctx.socket(Kind::Router).unwrap();
        let (watch, seen) = watcher();
        let ep = "tcp://127.0.0.1:*".parse().unwrap();
        server.bind_watching(&ep, None, Some(watch)).unwrap();
        let addr = server.last_endpoint().unwrap();
        let port = addr.as_str().rsplit(':').next().unwrap();
        // A port probe: connects and closes before saying anything.
        drop(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap());
        std::thread::sleep(SETTLE * 3);
        assert_eq!(*seen.lock().unwrap(), []);
    }

    #[test]
    fn router_mandatory_reports_unknown_peer() {
        let ctx = Context::new();
        let r = ctx.socket(Kind::Router).unwrap();
        r.set_router_mandatory(true).unwrap();
        r.bind(&"inproc://t-mandatory".parse().unwrap()).unwrap();
        assert_eq!(
            r.send([b"nobody".as_slice(), b"x"]).unwrap(),
            Sent::Unreachable
        );
    }
}
