//! Who is connected: libzmq's socket monitor, read by one thread per context, and the peer
//! address a received message carries.
//!
//! A bound socket may ask to be watched ([`Socket::bind_watching`](super::Socket::bind_watching)):
//! libzmq then reports each connection it accepts and each that closes on a monitor socket, and
//! the context's monitor thread turns them into [`PeerEvent`]s for a callback of the caller's
//! (which logs and counts them). The same thread reads the handshake failures of CURVE server
//! sockets and answers ZAP requests (see `curve.rs`): whatever a context needs read in the
//! background, one thread reads. It starts with the first socket that needs it and is stopped
//! and joined when the context and every socket of it are gone, so that the context ends (and
//! libzmq's shutdown runs) on the thread that dropped it, before the process exits: libzmq
//! ending a context on a thread of its own while the process runs its exit handlers can abort
//! the process.
//!
//! The monitor speaks of connections, not of peers' ids: libzmq says which descriptor a
//! connection came on, never which routing id it carries. The thread asks the descriptor who is
//! at its other end as soon as it reads the event (`getpeername`, or the ipc peer's process id,
//! `SO_PEERCRED`). A connection is reported once it has lasted [`SETTLE`]; one that ends sooner
//! (a peer refused at its CURVE handshake, a port probe, a peer that connects in a loop) is
//! logged at debug level only, so that no peer can write two info lines per connection it opens
//! where its refusals are counted and logged, rate-limited, as refused peers.

use super::curve::Refusals;
use super::{zerr, Result, TransportError};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a connection must last before it is reported connected: one that ends sooner (a peer
/// refused at its CURVE handshake, a port probe, a peer that connects in a loop) is logged at
/// debug level only, so that no peer can write two info lines per connection it opens.
pub const SETTLE: Duration = Duration::from_millis(500);

/// How often the monitor thread looks at its sources when nothing happens (new sources, stops,
/// connections settling, warnings to flush).
const ROUND: Duration = Duration::from_millis(100);

/// Who is at the other end of a connection, as far as the system says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAddress {
    /// A tcp peer's address and port.
    Tcp(SocketAddr),
    /// A tcp peer's address, its port unknown (a message's `Peer-Address` property carries no
    /// port).
    TcpHost(IpAddr),
    /// An ipc peer: the process that connected, and its user.
    Local {
        /// Its process id.
        pid: u32,
        /// Its user id.
        uid: u32,
    },
    /// Not known: an `inproc://` peer (no connection), or one gone before it could be asked.
    Unknown,
}

impl std::fmt::Display for PeerAddress {
    /// `tcp://10.0.0.7:41234` (`tcp://[::1]:41234`), `tcp://10.0.0.7` without a port,
    /// `pid:4242` for an ipc peer, `unknown`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddress::Tcp(a) => write!(f, "tcp://{a}"),
            PeerAddress::TcpHost(IpAddr::V6(ip)) => write!(f, "tcp://[{ip}]"),
            PeerAddress::TcpHost(ip) => write!(f, "tcp://{ip}"),
            PeerAddress::Local { pid, .. } => write!(f, "pid:{pid}"),
            PeerAddress::Unknown => f.write_str("unknown"),
        }
    }
}

/// An IPv4 peer of a dual-stack socket shows as `::ffff:a.b.c.d`: say `a.b.c.d`.
fn unmapped(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

impl PeerAddress {
    /// Parses libzmq's `Peer-Address` message property: an IP address for tcp,
    /// `localhost:uid:gid:pid` for ipc (libzmq built with `SO_PEERCRED`, see
    /// .cargo/config.toml).
    pub(crate) fn from_property(text: &str) -> PeerAddress {
        // An IPv6 address may start with ':' too (`::ffff:10.0.0.7`).
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => return PeerAddress::TcpHost(unmapped(ip)),
            Ok(ip) => return PeerAddress::TcpHost(ip),
            Err(_) => {}
        }
        // ipc: what getnameinfo says of a unix socket (glibc: `localhost`), then the peer's
        // credentials.
        let mut parts = text.rsplitn(4, ':');
        let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
        match (number(), number(), number()) {
            (Some(pid), Some(_gid), Some(uid)) => PeerAddress::Local { pid, uid },
            _ => PeerAddress::Unknown,
        }
    }

    /// Asks the system who is at the other end of connected socket `fd`.
    pub(crate) fn of_descriptor(fd: RawFd) -> PeerAddress {
        // SAFETY: zeroed bytes are a valid sockaddr_storage (plain integers).
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into the storage and says how many. A
        // descriptor that is not a socket (any more) is an error, not undefined behaviour.
        let rc = unsafe { libc::getpeername(fd, (&raw mut ss).cast(), &mut len) };
        if rc != 0 {
            return PeerAddress::Unknown;
        }
        match i32::from(ss.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                PeerAddress::Tcp(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in6>() };
                let port = u16::from_be(a.sin6_port);
                PeerAddress::Tcp(match unmapped(Ipv6Addr::from(a.sin6_addr.s6_addr)) {
                    IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, port)),
                    IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
                })
            }
            libc::AF_UNIX => {
                let mut cred = libc::ucred {
                    pid: 0,
                    uid: 0,
                    gid: 0,
                };
                let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
                // SAFETY: a ucred buffer of the length given.
                let rc = unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_PEERCRED,
                        (&raw mut cred).cast(),
                        &mut len,
                    )
                };
                match u32::try_from(cred.pid) {
                    Ok(pid) if rc == 0 && pid != 0 => PeerAddress::Local { pid, uid: cred.uid },
                    _ => PeerAddress::Unknown,
                }
            }
            _ => PeerAddress::Unknown,
        }
    }
}

/// A peer connecting to a watched socket or going away, as libzmq's socket monitor saw it: a
/// connection, not a routing id (libzmq does not say which peer a connection carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A connection was accepted and has lasted [`SETTLE`].
    Connected {
        /// The endpoint it came in on, as libzmq names it (`tcp://0.0.0.0:5555`, `ipc:///…`).
        endpoint: String,
        /// Who is at its other end.
        peer: PeerAddress,
    },
    /// A connection reported [`PeerEvent::Connected`] closed: the peer closed it or died, or
    /// libzmq dropped it (a frame over the message limit).
    Disconnected {
        /// The endpoint it came in on.
        endpoint: String,
        /// Who was at its other end.
        peer: PeerAddress,
        /// How long it lasted.
        lasted: Duration,
    },
}

/// What a watched socket's caller is told of its peers; called on the context's monitor thread,
/// so it must be quick (count, log).
pub type PeerWatch = Arc<dyn Fn(&PeerEvent) + Send + Sync>;

/// Something the monitor thread reads: a socket, and what to do with what arrives on it.
pub(crate) trait Source: Send {
    /// The socket to wait on.
    fn socket(&self) -> &zmq::Socket;
    /// The socket is readable: read all it holds without blocking. `false`: this source is
    /// done, drop it.
    fn read(&mut self, now: Instant) -> bool;
    /// Called every round, at least every [`ROUND`].
    fn tick(&mut self, now: Instant);
}

/// What to watch on one bound socket.
pub(crate) struct Watch {
    /// The socket, for logs: its ZAP domain (role and endpoint) or its endpoint.
    pub(crate) label: String,
    /// Where its CURVE handshake failures go; `None` without CURVE.
    pub(crate) refusals: Option<Refusals>,
    /// Who hears of its peers' connections; `None`: nobody.
    pub(crate) peers: Option<PeerWatch>,
}

/// The monitor thread of one context, shared by the context and every socket it opened: the
/// thread runs until the last of them is dropped.
pub(crate) struct Monitor {
    ctx: zmq::Context,
    running: Mutex<Option<Running>>,
    /// Numbers the monitors' inproc endpoints.
    next: AtomicU64,
}

struct Running {
    sources: mpsc::Sender<Box<dyn Source>>,
    /// An eventfd the thread polls: written to, it stops the thread at once.
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub(crate) fn new(ctx: zmq::Context) -> Monitor {
        Monitor {
            ctx,
            running: Mutex::new(None),
            next: AtomicU64::new(0),
        }
    }

    /// Hands `source` to the monitor thread, starting the thread if it is not running.
    pub(crate) fn add(&self, source: Box<dyn Source>) -> Result<()> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_none() {
            *running = Some(start()?);
        }
        let r = running.as_ref().expect("started above");
        // The thread ends only when this monitor is dropped (or its context terminated): the
        // source is then of no use anyway.
        let _ = r.sources.send(source);
        Ok(())
    }

    /// Watches `socket` as `watch` says. Call before it binds, so that no event is lost.
    pub(crate) fn watch(&self, socket: &zmq::Socket, watch: Watch) -> Result<()> {
        let mut events = zmq::SocketEvent::MONITOR_STOPPED as i32;
        if watch.refusals.is_some() {
            events |= zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
                | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32;
        }
        if watch.peers.is_some() {
            events |= zmq::SocketEvent::ACCEPTED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let endpoint = format!("inproc://prime-server-monitor-{n}");
        socket.monitor(&endpoint, events).map_err(zerr("monitor"))?;
        let pair = self.ctx.socket(zmq::PAIR).map_err(zerr("socket"))?;
        pair.connect(&endpoint).map_err(zerr("connect monitor"))?;
        self.add(Box::new(Watched {
            pair,
            watch,
            open: HashMap::new(),
        }))
    }
}

impl Drop for Monitor {
    /// Stops the thread and waits for it: it closes its sockets, so the context can end here.
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut r) = running.take() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte write from a live buffer to the eventfd this value owns.
            let n = unsafe { libc::write(r.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            if let (8, Some(thread)) = (n, r.thread.take()) {
                crate::component::join(thread);
            }
        }
    }
}

fn start() -> Result<Running> {
    let (tx, rx) = mpsc::channel();
    // SAFETY: plain system call; the descriptor it returns is owned from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(TransportError::Os {
            op: "eventfd",
            cause: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("zmq-monitor".into())
        .spawn(move || run(rx, &s))
        .map_err(|cause| TransportError::Os {
            op: "spawn the zmq monitor thread",
            cause,
        })?;
    Ok(Running {
        sources: tx,
        stop,
        thread: Some(thread),
    })
}

/// The monitor thread: reads its sources until `stop` is written to; dropping the sources on
/// the way out closes their sockets.
fn run(new: mpsc::Receiver<Box<dyn Source>>, stop: &OwnedFd) {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let timeout = ROUND.as_millis() as i64;
    loop {
        sources.extend(new.try_iter());
        let ready = {
            let mut items = vec![zmq::PollItem::from_fd(stop.as_raw_fd(), zmq::POLLIN)];
            items.extend(sources.iter().map(|s| s.socket().as_poll_item(zmq::POLLIN)));
            match zmq::poll(&mut items, timeout) {
                Ok(_) => items.iter().map(|i| i.is_readable()).collect::<Vec<_>>(),
                Err(zmq::Error::ETERM) => return,
                Err(_) => continue,
            }
        };
        if ready[0] {
            return;
        }
        let now = Instant::now();
        let mut ready = ready.into_iter().skip(1);
        sources.retain_mut(|s| !ready.next().unwrap_or(false) || s.read(now));
        for s in &mut sources {
            s.tick(now);
        }
    }
}

/// One connection of a watched socket, from its ACCEPTED event until its DISCONNECTED.
struct Open {
    endpoint: String,
    peer: PeerAddress,
    since: Instant,
    /// Whether it was reported connected (it lasted [`SETTLE`]).
    reported: bool,
}

/// The monitor of one bound socket.
struct Watched {
    pair: zmq::Socket,
    watch: Watch,
    /// Its connections, by descriptor.
    open: HashMap<RawFd, Open>,
}

/// One event of libzmq's monitor (version 1): what, its value (a descriptor or an error code)
/// and the endpoint.
struct Event {
    kind: zmq::SocketEvent,
    value: u32,
    endpoint: String,
}

impl Event {
    fn parse(frames: &[Vec<u8>]) -> Option<Event> {
        let head = frames.first().filter(|h| h.len() >= 6)?;
        Some(Event {
            kind: zmq::SocketEvent::from_raw(u16::from_le_bytes([head[0], head[1]])),
            value: u32::from_le_bytes([head[2], head[3], head[4], head[5]]),
            endpoint: frames
                .get(1)
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .unwrap_or_default(),
        })
    }

    fn fd(&self) -> RawFd {
        self.value as RawFd
    }
}

impl Source for Watched {
    fn socket(&self) -> &zmq::Socket {
        &self.pair
    }

    fn read(&mut self, now: Instant) -> bool {
        let mut batch = Vec::new();
        while let Ok(frames) = self.pair.recv_multipart(zmq::DONTWAIT) {
            batch.extend(Event::parse(&frames));
        }
        for (i, event) in batch.iter().enumerate() {
            match event.kind {
                zmq::SocketEvent::ACCEPTED => {
                    // A descriptor already closed again may be another connection's by now:
                    // ask it only if its DISCONNECTED is not among the events read.
                    let closed = batch[i + 1..]
                        .iter()
                        .any(|e| e.kind == zmq::SocketEvent::DISCONNECTED && e.fd() == event.fd());
                    let peer = if closed {
                        PeerAddress::Unknown
                    } else {
                        PeerAddress::of_descriptor(event.fd())
                    };
                    let open = Open {
                        endpoint: event.endpoint.clone(),
                        peer,
                        since: now,
                        reported: false,
                    };
                    self.open.insert(event.fd(), open);
                }
                zmq::SocketEvent::DISCONNECTED => self.closed(event, now),
                zmq::SocketEvent::MONITOR_STOPPED => return false,
                kind => {
                    if let Some(r) = &self.watch.refusals {
                        r.handshake_failed(&self.watch.label, kind, event.value, now);
                    }
                }
            }
        }
        true
    }

    fn tick(&mut self, now: Instant) {
        if let Some(peers) = &self.watch.peers {
            for open in self.open.values_mut() {
                if !open.reported && now.saturating_duration_since(open.since) >= SETTLE {
                    open.reported = true;
                    peers(&PeerEvent::Connected {
                        endpoint: open.endpoint.clone(),
                        peer: open.peer,
                    });
                }
            }
        }
        if let Some(r) = &self.watch.refusals {
            r.flush(now);
        }
    }
}

impl Watched {
    fn closed(&mut self, event: &Event, now: Instant) {
        let Some(open) = self.open.remove(&event.fd()) else {
            return;
        };
        let lasted = now.saturating_duration_since(open.since);
        match &self.watch.peers {
            Some(peers) if open.reported => peers(&PeerEvent::Disconnected {
                endpoint: open.endpoint,
                peer: open.peer,
                lasted,
            }),
            _ => tracing::debug!(
                socket = %self.watch.label,
                peer = %open.peer,
                ?lasted,
                "a connection closed before it had lasted {SETTLE:?}: not reported"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_address_properties_are_read_as_libzmq_writes_them() {
        assert_eq!(
            PeerAddress::from_property("localhost:1000:1000:4242"),
            PeerAddress::Local {
                pid: 4242,
                uid: 1000
            }
        );
        let v4 = PeerAddress::from_property("::ffff:127.0.0.1");
        assert_eq!(v4.to_string(), "tcp://127.0.0.1");
        assert_eq!(PeerAddress::from_property("::1").to_string(), "tcp://[::1]");
        assert_eq!(
            PeerAddress::from_property("10.1.2.3").to_string(),
            "tcp://10.1.2.3"
        );
        assert_eq!(PeerAddress::from_property(""), PeerAddress::Unknown);
        assert_eq!(
            PeerAddress::from_property("localhost:x"),
            PeerAddress::Unknown
        );
        assert_eq!(PeerAddress::from_property("1:2"), PeerAddress::Unknown);
        assert_eq!(
            PeerAddress::Local { pid: 7, uid: 0 }.to_string(),
            "pid:7",
            "an ipc peer is its process"
        );
    }
}
