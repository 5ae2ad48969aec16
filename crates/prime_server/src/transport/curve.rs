//! CURVE and ZAP: encrypted zmq connections, and admission by key.
//!
//! A socket that binds with an [`Admission`] is a CURVE server: every connection is encrypted,
//! and a peer gets in only if its public key is on the admission's allow-list. A socket that
//! connects with [`Credentials`] is a CURVE client: it proves its own key and checks the
//! server's (a server holding another key gets nothing from it). `inproc://` endpoints carry no
//! handshake (messages never leave the process), so keys are not applied there.
//!
//! Admission is decided by a ZAP handler (zmq's RFC 27) that libzmq asks, for each CURVE
//! handshake, whether the key may connect to that socket (its ZAP domain); it runs on the
//! context's monitor thread (`monitor.rs`), which also reads each CURVE server socket's
//! handshake failures (a peer without CURVE, or one that expects another server key), which
//! never reach ZAP. Every refusal is counted and logged, one line per refused peer at once then at most one per peer every ten seconds, with
//! the peer's address and key where libzmq gives them.

use super::monitor::{Monitor, Source};
use super::{zerr, Result, TransportError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Length of a CURVE key in bytes (40 characters in Z85 text).
pub const KEY_LEN: usize = 32;

/// A key that is not one.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 40 characters of Z85 text (the count of characters found).
    #[error(
        "not a CURVE key: expected 40 characters of Z85 text, got {0} characters (or not Z85)"
    )]
    BadText(usize),
    /// libzmq could not make a key pair.
    #[error("cannot make a CURVE key pair: {0}")]
    Generate(String),
}

/// A CURVE public key. Not secret: it names a peer, in allow-lists and in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

/// A CURVE secret key. Its `Debug` shows nothing of it; the bytes are zeroed when dropped.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

/// A peer's own key pair.
#[derive(Clone, Debug)]
pub struct Keypair {
    public: PublicKey,
    secret: SecretKey,
}

fn decode(text: &str) -> std::result::Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    if text.len() != 40 {
        return Err(KeyError::BadText(text.chars().count()));
    }
    const Z85: &[u8] =
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    if !text.bytes().all(|b| Z85.contains(&b)) {
        return Err(KeyError::BadText(40));
    }
    let bytes = zmq::z85_decode(text).map_err(|_| KeyError::BadText(40))?;
    bytes.try_into().map_err(|_| KeyError::BadText(40))
}

fn encode(key: &[u8; KEY_LEN]) -> String {
    zmq::z85_encode(key).expect("32 bytes are a multiple of 4")
}

impl PublicKey {
    /// Parses 40 characters of Z85 text (surrounding white space ignored).
    pub fn from_z85(text: &str) -> std::result::Result<PublicKey, KeyError> {
        decode(text).map(PublicKey)
    }

    /// The key as 40 characters of Z85 text.
    pub fn to_z85(&self) -> String {
        encode(&self.0)
    }

    /// The first eight characters of the Z85 text: enough to tell keys apart in a log line.
    pub fn fingerprint(&self) -> String {
        self.to_z85()[..8].to_string()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_z85())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl SecretKey {
    /// Parses 40 characters of Z85 text (surrounding white space ignored).
    pub fn from_z85(text: &str) -> std::result::Result<SecretKey, KeyError> {
        decode(text).map(SecretKey)
    }

    /// The key as 40 characters of Z85 text, for writing it to its file.
    pub fn to_z85(&self) -> String {
        encode(&self.0)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned, exclusive reference; volatile so the zeroing is kept.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl Keypair {
    /// A new random key pair (libzmq's `zmq_curve_keypair`, on libsodium's randomness).
    pub fn generate() -> std::result::Result<Keypair, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Keypair {
            public: PublicKey(pair.public_key),
            secret: SecretKey(pair.secret_key),
        })
    }

    /// The key pair of a secret key: its public key is derived from it (Curve25519).
    pub fn from_secret(secret: SecretKey) -> Keypair {
        let mut public = [0u8; KEY_LEN];
        // SAFETY: both buffers are crypto_scalarmult_BYTES (32) long. It fails only for a
        // public key of small order, which a base-point multiplication never yields.
        unsafe { libsodium_sys::crypto_scalarmult_base(public.as_mut_ptr(), secret.0.as_ptr()) };
        Keypair {
            public: PublicKey(public),
            secret,
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret half.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }
}

/// What a bound socket demands of the peers that connect to it: CURVE with the socket's own key
/// pair, and a client key on `allow`.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The socket's own key pair; peers connect with its public key as their server key.
    pub keypair: Keypair,
    /// The client keys admitted. Several keys per role let a new key be rolled out before the
    /// old one is removed.
    pub allow: Vec<PublicKey>,
    /// What the socket is, for logs (`loopback`, `proxy upstream`, …); with the endpoint it is
    /// the socket's ZAP domain.
    pub role: String,
}

/// What a connecting socket presents: its own key pair, and the key it expects the server to
/// prove.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The socket's own key pair; the server admits its public key or refuses the connection.
    pub keypair: Keypair,
    /// The public key of the socket it connects to.
    pub server: PublicKey,
}

/// libzmq's ZAP endpoint: a handler binds it in each context that checks keys.
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// The admission state of one context, shared by the context and every socket it opened. The
/// ZAP handler is a source of the context's monitor thread (see `monitor.rs`), started with the
/// first CURVE server socket.
pub(crate) struct Security {
    ctx: zmq::Context,
    monitor: Arc<Monitor>,
    /// The allow-list of each ZAP domain; `None` until the ZAP handler runs.
    policies: Mutex<Option<Arc<Mutex<Policies>>>>,
    refusals: Refusals,
}

type Policies = HashMap<String, HashSet<PublicKey>>;

impl Security {
    pub(crate) fn new(ctx: zmq::Context, monitor: Arc<Monitor>) -> Security {
        Security {
            ctx,
            monitor,
            policies: Mutex::new(None),
            refusals: Refusals::new(),
        }
    }

    /// Peers refused so far on this context's CURVE sockets: unknown keys, wrong server keys,
    /// no CURVE at all.
    pub(crate) fn refused(&self) -> u64 {
        self.refusals.count.load(Ordering::Relaxed)
    }

    /// Makes `socket` a CURVE server admitting `admission.allow` under the ZAP domain `domain`,
    /// starting the ZAP handler if this is the context's first. Call before binding. Returns
    /// where the socket's monitor reports the handshakes that fail before ZAP is asked (a peer
    /// without CURVE, or one that expects another server key).
    pub(crate) fn serve(
        &self,
        socket: &zmq::Socket,
        admission: &Admission,
        domain: &str,
    ) -> Result<Refusals> {
        let mut policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        if policies.is_none() {
            *policies = Some(self.start()?);
        }
        let p = policies.as_ref().expect("started above");
        p.lock().unwrap_or_else(|e| e.into_inner()).insert(
            domain.to_string(),
            admission.allow.iter().copied().collect(),
        );
        socket
            .set_zap_domain(domain)
            .map_err(zerr("set zap domain"))?;
        socket
            .set_curve_server(true)
            .map_err(zerr("set curve server"))?;
        socket
            .set_curve_secretkey(&admission.keypair.secret.0)
            .map_err(zerr("set curve secret key"))?;
        Ok(self.refusals.clone())
    }

    fn start(&self) -> Result<Arc<Mutex<Policies>>> {
        let rep = self.ctx.socket(zmq::REP).map_err(zerr("socket"))?;
        rep.set_linger(0).map_err(zerr("set linger"))?;
        rep.bind(ZAP_ENDPOINT)
            .map_err(|cause| TransportError::Zmq {
                op: "bind the ZAP handler",
                cause,
            })?;
        let policies = Arc::new(Mutex::new(HashMap::new()));
        self.monitor.add(Box::new(ZapHandler {
            rep,
            policies: policies.clone(),
            refusals: self.refusals.clone(),
        }))?;
        Ok(policies)
    }
}

/// Curve client options for one connect: libzmq copies a socket's options into each connection
/// as it is made, so a socket may connect to several servers with a key for each.
pub(crate) fn client(socket: &zmq::Socket, credentials: &Credentials) -> Result<()> {
    socket
        .set_curve_serverkey(&credentials.server.0)
        .map_err(zerr("set curve server key"))?;
    socket
        .set_curve_publickey(&credentials.keypair.public.0)
        .map_err(zerr("set curve public key"))?;
    socket
        .set_curve_secretkey(&credentials.keypair.secret.0)
        .map_err(zerr("set curve secret key"))
}

/// The refusals of one context's CURVE sockets (shared by the ZAP handler and the sockets'
/// monitors): every one counted, and logged once per refused peer per ten seconds, so each key
/// that knocks shows up by name at once, while one peer retrying in a loop writes a line every
/// ten seconds with how many times it was refused since.
#[derive(Clone)]
pub(crate) struct Refusals {
    count: Arc<AtomicU64>,
    log: Arc<Mutex<RefusalLog>>,
}

/// The refused peers logged lately: `(endpoint's domain, peer)` → when last logged, and how
/// many refusals of it since.
#[derive(Default)]
struct RefusalLog {
    peers: std::collections::HashMap<(String, String), (Instant, u64)>,
}

/// The shortest time between two lines about one refused peer.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// The most refused peers remembered; beyond, the oldest lines are forgotten (a flood of
/// distinct keys is still counted, and logged a line each at most once per interval).
const REFUSAL_LOG_PEERS: usize = 1024;

impl Refusals {
    fn new() -> Refusals {
        Refusals {
            count: Arc::new(AtomicU64::new(0)),
            log: Arc::default(),
        }
    }

    /// Peer `peer` (its key, or what the handshake said when there is none) was refused on the
    /// socket `domain` for `why`.
    fn refused(&self, domain: &str, peer: &str, address: &str, why: &str, now: Instant) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.peers.len() >= REFUSAL_LOG_PEERS {
            log.peers
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < REFUSAL_LOG_INTERVAL);
        }
        let entry = log
            .peers
            .entry((domain.to_string(), peer.to_string()))
            .or_insert((now, 0));
        entry.1 += 1;
        if entry.1 == 1 || now.saturating_duration_since(entry.0) >= REFUSAL_LOG_INTERVAL {
            tracing::warn!(
                endpoint = domain,
                peer,
                address,
                refusals = entry.1,
                "refused peers: {why} (one line per peer every {} s at most)",
                REFUSAL_LOG_INTERVAL.as_secs()
            );
            *entry = (now, 0);
        }
    }

    /// Writes the lines held back for peers refused again within their interval, once it has
    /// passed.
    pub(crate) fn flush(&self, now: Instant) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        for ((domain, peer), (at, held)) in log.peers.iter_mut() {
            if *held > 0 && now.saturating_duration_since(*at) >= REFUSAL_LOG_INTERVAL {
                tracing::warn!(
                    endpoint = %domain,
                    peer = %peer,
                    refusals = *held,
                    "refused peers: refused again (one line per peer every {} s at most)",
                    REFUSAL_LOG_INTERVAL.as_secs()
                );
                *at = now;
                *held = 0;
            }
        }
    }

    /// A monitor event of the socket `domain`: a handshake failed before ZAP was asked (`kind`
    /// and `value` as libzmq reports them).
    pub(crate) fn handshake_failed(
        &self,
        domain: &str,
        kind: zmq::SocketEvent,
        value: u32,
        now: Instant,
    ) {
        let why = match kind {
            zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL => protocol_error(value),
            zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL => {
                "the handshake failed (no CURVE, or a connection cut short)"
            }
            _ => return,
        };
        self.refused(domain, "(no key: the handshake failed)", "-", why, now);
    }
}

/// Answers libzmq's ZAP requests (RFC 27) on the monitor thread.
struct ZapHandler {
    rep: zmq::Socket,
    policies: Arc<Mutex<Policies>>,
    refusals: Refusals,
}

impl Source for ZapHandler {
    fn socket(&self) -> &zmq::Socket {
        &self.rep
    }

    fn read(&mut self, now: Instant) -> bool {
        while let Ok(request) = self.rep.recv_multipart(zmq::DONTWAIT) {
            self.answer(&request, now);
        }
        true
    }

    fn tick(&mut self, now: Instant) {
        self.refusals.flush(now);
    }
}

impl ZapHandler {
    /// Answers one ZAP request: 200 if the key is on the domain's allow-list, else 400.
    fn answer(&mut self, request: &[Vec<u8>], now: Instant) {
        // version, request id, domain, address, routing id, mechanism, credentials…
        let frame = |i: usize| request.get(i).map(Vec::as_slice).unwrap_or_default();
        let domain = String::from_utf8_lossy(frame(2)).into_owned();
        let address = String::from_utf8_lossy(frame(3)).into_owned();
        let key = <[u8; KEY_LEN]>::try_from(frame(6)).ok().map(PublicKey);
        let admitted = frame(5) == b"CURVE"
            && key.is_some_and(|k| {
                self.policies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&domain)
                    .is_some_and(|allow| allow.contains(&k))
            });
        let (status, text): (&[u8], &[u8]) = if admitted {
            (b"200", b"OK")
        } else {
            let who = key.map_or_else(|| "(no key)".to_string(), |k| k.to_z85());
            let why = "its key is not on the allow-list";
            self.refusals.refused(&domain, &who, &address, why, now);
            (b"400", b"key not allowed")
        };
        let user = key.map(|k| k.to_z85()).unwrap_or_default();
        let reply: [&[u8]; 6] = [b"1.0", frame(1), status, text, user.as_bytes(), b""];
        let _ = self.rep.send_multipart(reply, zmq::DONTWAIT);
    }
}

/// What libzmq's `ZMQ_PROTOCOL_ERROR_*` code of a failed handshake means for an operator.
fn protocol_error(code: u32) -> &'static str {
    match code {
        // ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        0x1100_0002 => "the peer does not speak CURVE (no keys set)",
        // ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
        0x1100_0001 => "the peer's handshake does not decrypt (it expects another server key)",
        // ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE
        0x1000_0003 => "the key exchange failed",
        _ => "the peer broke the handshake protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_is_derived_from_its_secret_key_as_libzmq_does() {
        let pair = Keypair::generate().unwrap();
        let again = Keypair::from_secret(SecretKey::from_z85(&pair.secret.to_z85()).unwrap());
        assert_eq!(again.public(), pair.public());
        assert_eq!(
            PublicKey::from_z85(&pair.public().to_z85()).unwrap(),
            pair.public()
        );
        assert!(!format!("{:?}", pair).contains(&pair.secret.to_z85()));
    }

    #[test]
    fn keys_that_are_not_40_characters_of_z85_are_refused() {
        assert!(PublicKey::from_z85("short").is_err());
        assert!(PublicKey::from_z85(&"~".repeat(40)).is_err());
        assert!(PublicKey::from_z85(&format!("  {}\n", "0".repeat(40))).is_ok());
    }

    use crate::transport::{Context, Endpoint, Kind, Socket};
    use std::time::Duration;

    #[test]
    fn libzmq_is_built_with_curve() {
        // Fails when the CXXFLAGS of .cargo/config.toml were not applied (see its comment).
        assert_eq!(zmq::has("curve"), Some(true));
    }

    fn server(ctx: &Context, allow: Vec<PublicKey>) -> (Socket, Endpoint, Keypair) {
        let keypair = Keypair::generate().unwrap();
        let s = ctx.socket(Kind::Router).unwrap();
        let admission = Admission {
            keypair: keypair.clone(),
            allow,
            role: "test".into(),
        };
        s.bind_admitting(&"tcp://127.0.0.1:*".parse().unwrap(), Some(&admission))
            .unwrap();
        let ep = s.last_endpoint().unwrap();
        (s, ep, keypair)
    }

    /// A client socket of `ctx` named `id`, so that what reaches a server can be told apart from
    /// what an earlier client sent.
    fn client_socket(ctx: &Context, id: &str) -> Socket {
        let s = ctx.socket(Kind::Dealer).unwrap();
        s.set_routing_id(id.as_bytes()).unwrap();
        s
    }

    /// Sends from `client` for up to `wait`; returns what of `client`'s reached `server`. (An
    /// earlier client's messages may still arrive: each client resends until one gets through.)
    fn reaches(client: &Socket, server: &Socket, wait: Duration) -> Option<Vec<Vec<u8>>> {
        let id = client.inner.get_identity().unwrap();
        assert!(!id.is_empty(), "name the client");
        let t = Instant::now();
        while t.elapsed() < wait {
            let _ = client.send([b"hello"]);
            std::thread::sleep(Duration::from_millis(20));
            while let Some(m) = server.try_recv().unwrap() {
                if m[0] == id {
                    return Some(m);
                }
            }
        }
        None
    }

    fn refusals_reach(ctx: &Context, n: u64) -> u64 {
        let t = Instant::now();
        while ctx.refused_peers() < n && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        ctx.refused_peers()
    }

    #[test]
    fn only_a_listed_key_that_knows_the_server_key_gets_through_and_refusals_are_counted() {
        let ctx = Context::new();
        let good = Keypair::generate().unwrap();
        let (srv, ep, srv_keys) = server(&ctx, vec![good.public()]);
        let other = Context::new();

        let admitted = client_socket(&other, "admitted");
        let creds = Credentials {
            keypair: good.clone(),
            server: srv_keys.public(),
        };
        admitted.connect_presenting(&ep, Some(&creds)).unwrap();
        let got = reaches(&admitted, &srv, Duration::from_secs(10)).expect("admitted");
        assert_eq!(got[1], b"hello");
        assert_eq!(ctx.refused_peers(), 0);

        let unknown = client_socket(&other, "unknown");
        let stranger = Credentials {
            keypair: Keypair::generate().unwrap(),
            server: srv_keys.public(),
        };
        unknown.connect_presenting(&ep, Some(&stranger)).unwrap();
        assert_eq!(reaches(&unknown, &srv, Duration::from_millis(500)), None);
        assert_eq!(refusals_reach(&ctx, 1), 1, "an unknown key");

        let wrong_server = client_socket(&other, "wrong_server");
        let misled = Credentials {
            keypair: good.clone(),
            server: Keypair::generate().unwrap().public(),
        };
        wrong_server.connect_presenting(&ep, Some(&misled)).unwrap();
        assert_eq!(
            reaches(&wrong_server, &srv, Duration::from_millis(500)),
            None
        );
        assert!(refusals_reach(&ctx, 2) >= 2, "a wrong server key");

        let before = ctx.refused_peers();
        let plain = client_socket(&other, "plain");
        plain.connect(&ep).unwrap();
        assert_eq!(reaches(&plain, &srv, Duration::from_millis(500)), None);
        assert!(refusals_reach(&ctx, before + 1) > before, "no CURVE");
    }

    /// Connections that end at their handshake (refused peers, however many) are counted as
    /// refusals, never reported as peers connecting and going away; an admitted peer is.
    #[test]
    fn refused_peers_are_not_reported_connected_and_an_admitted_one_is() {
        use crate::transport::PeerEvent;
        let ctx = Context::new();
        let good = Keypair::generate().unwrap();
        let keypair = Keypair::generate().unwrap();
        let admission = Admission {
            keypair: keypair.clone(),
            allow: vec![good.public()],
            role: "test".into(),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let srv = ctx.socket(Kind::Router).unwrap();
        srv.bind_watching(
            &"tcp://127.0.0.1:*".parse().unwrap(),
            Some(&admission),
            Some(Arc::new(move |e: &PeerEvent| {
                s.lock().unwrap().push(e.clone())
            })),
        )
        .unwrap();
        let ep = srv.last_endpoint().unwrap();
        let other = Context::new();
        // libzmq gives up after a refused handshake: a peer that insists comes back anew.
        for k in 0..5 {
            let stranger = client_socket(&other, &format!("stranger-{k}"));
            let creds = Credentials {
                keypair: Keypair::generate().unwrap(),
                server: keypair.public(),
            };
            stranger.connect_presenting(&ep, Some(&creds)).unwrap();
            assert_eq!(reaches(&stranger, &srv, Duration::from_millis(200)), None);
        }
        assert_eq!(refusals_reach(&ctx, 5), 5);
        let admitted = client_socket(&other, "admitted");
        let creds = Credentials {
            keypair: good,
            server: keypair.public(),
        };
        admitted.connect_presenting(&ep, Some(&creds)).unwrap();
        assert!(reaches(&admitted, &srv, Duration::from_secs(10)).is_some());
        let t = Instant::now();
        while seen.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Anything the strangers' connections would have made is in by now (they ended before
        // the admitted one began).
        let seen = seen.lock().unwrap();
        assert!(
            matches!(seen.as_slice(), [PeerEvent::Connected { .. }]),
            "{seen:?}"
        );
    }
}
