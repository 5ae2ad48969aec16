//! Wire protocol v3: the frames exchanged by server, proxies and workers.
//!
//! Every message starts with one **header frame**: [`HEADER_LEN`] fixed bytes, little-endian, laid
//! out byte by byte (no compiler-dependent struct layout), optionally followed by a request's
//! [`TraceId`] (up to [`MAX_TRACE_LEN`] printable ASCII bytes: the frame is 48..=112 bytes).
//! Payload frames follow. The full table per message is in `docs/PROTOCOL.md`; this is the code
//! that encodes and decodes it.
//!
//! ```text
//! offset size field
//!  0     2    magic        b"PS"
//!  2     1    version      3
//!  3     1    kind         see [`Kind`]
//!  4     1    attempt      how many times this job was handed to a worker (1 = first)
//!  5     1    stage        index of the stage that sent this message (0 = the server, a proxy)
//!  6     1    flags        see [`flags`]
//!  7     1    protocol     the request's client protocol, see [`ClientProtocol`]
//!  8     8    request_id   unique per server
//! 16     8    server_id    the server that must receive the answer
//! 24     8    arrival_us   when the server accepted the request, Unix microseconds
//! 32     8    deadline_us  when the server will give up on it, Unix microseconds (0 = none)
//! 40     2    status       0 = application reply; else a failure status (500, 503, 504…)
//! 42     6    token        the request's reply token (see [`ReplyToken`]); zero on messages that
//!                           concern no job this peer was handed
//! 48     0-64 trace id     the request's trace id (see [`TraceId`]), the rest of the frame;
//!                           absent on messages that concern no job
//! ```
//!
//! Decoding never panics: anything that is not a well-formed v3 message is a [`WireError`].

use crate::transport::Frames;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of the fixed part of the header frame (all of it when it carries no trace id).
pub const HEADER_LEN: usize = 48;
/// The longest trace id a header carries.
pub const MAX_TRACE_LEN: usize = 64;
/// The longest header frame: the fixed part and the longest trace id.
pub const MAX_HEADER_LEN: usize = HEADER_LEN + MAX_TRACE_LEN;
/// The first two bytes of every header.
pub const MAGIC: [u8; 2] = *b"PS";
/// The protocol version this crate speaks. Version 3 carries the request's [`ClientProtocol`]
/// in byte 7 (the high byte of version 2's 16-bit flags, always zero there): a version-2 worker
/// would drop it from the jobs it forwards, and the last stage would not know how to answer.
pub const VERSION: u8 = 3;

/// Bits of [`Header::flags`].
pub mod flags {
    /// On a [`super::Kind::Heartbeat`] from a worker: the worker is busy with a job.
    pub const BUSY: u8 = 1;
    /// On a [`super::Kind::Heartbeat`] from a proxy to a sender: the proxy knows no worker now.
    pub const NO_WORKERS: u8 = 2;
    /// On a [`super::Kind::Heartbeat`] from a proxy to a sender: the proxy is draining or
    /// leaving; jobs sent to it now may find nobody (a draining front refuses them at once).
    pub const LEAVING: u8 = 4;
}

/// Length of the reply token, bytes 42..48 of the header.
pub const TOKEN_LEN: usize = 6;

/// A request's **reply token**: 48 bits the server draws at random for each request it sends
/// into the pipeline and writes into the job's header. Whoever is handed the job (a worker, the
/// proxies that carry it) copies the header, token included, into the jobs it forwards and the
/// reply it sends; the server accepts a reply only if it carries the token of the request it
/// answers. So a peer that can reach the loopback but was never handed a job cannot answer it:
/// request ids are guessable (they count up, and interrupts name them), the token is not — a
/// blind guess succeeds with probability 2^-48 per try.
///
/// Messages that concern no job the receiver was handed (interrupts, heartbeats, Ready,
/// Disconnect) carry [`ReplyToken::NONE`]. The server never draws it for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReplyToken(pub [u8; TOKEN_LEN]);

impl ReplyToken {
    /// No token: all zeros.
    pub const NONE: ReplyToken = ReplyToken([0; TOKEN_LEN]);

    /// Whether this is [`ReplyToken::NONE`].
    pub fn is_none(&self) -> bool {
        *self == ReplyToken::NONE
    }
}

/// A request's **trace id**: what the client knows its request by (the HTTP front takes it from
/// `X-Request-Id`, or makes one), carried after the fixed header of every message about the job
/// so that the workers' log lines for it can name it. 0 to [`MAX_TRACE_LEN`] bytes of printable
/// ASCII (`0x21..=0x7e`: no spaces, no control bytes), so it can go into a log line or an HTTP
/// header as it is; empty ([`TraceId::NONE`]) on messages that concern no job.
///
/// Stored inline (no allocation), so a [`Header`] stays `Copy`.
///
/// ```
/// use prime_server::wire::TraceId;
/// let t = TraceId::new(b"req-42").unwrap();
/// assert_eq!(t.as_str(), "req-42");
/// assert!(TraceId::new(b"has space").is_none());
/// assert_eq!(TraceId::from_ids(0xab, 0x1f).as_str(), "00000000000000ab-1f");
/// ```
#[derive(Clone, Copy)]
pub struct TraceId {
    len: u8,
    bytes: [u8; MAX_TRACE_LEN],
}

/// `x` as 16 lower-case hex digits: each nibble spread to a byte of its own, then turned into a
/// digit in every byte at once ('0'-'9', or 'a'-'f' for the nibbles over 9).
fn hex16(x: u64) -> [u8; 16] {
    fn spread(x: u32) -> u64 {
        let mut n = u64::from(x);
        n = (n | n << 16) & 0x0000_ffff_0000_ffff;
        n = (n | n << 8) & 0x00ff_00ff_00ff_00ff;
        (n | n << 4) & 0x0f0f_0f0f_0f0f_0f0f
    }
    fn digits(n: u64) -> [u8; 8] {
        let over_9 = ((n + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        (n + 0x3030_3030_3030_3030 + over_9 * (b'a' - b'9' - 1) as u64).to_be_bytes()
    }
    let mut out = [0; 16];
    out[..8].copy_from_slice(&digits(spread((x >> 32) as u32)));
    out[8..].copy_from_slice(&digits(spread(x as u32)));
    out
}

impl TraceId {
    /// No trace id: empty.
    pub const NONE: TraceId = TraceId {
        len: 0,
        bytes: [0; MAX_TRACE_LEN],
    };

    /// A trace id of these bytes, if they are one: 1 to [`MAX_TRACE_LEN`] printable ASCII bytes.
    pub fn new(bytes: &[u8]) -> Option<TraceId> {
        if bytes.is_empty() {
            return None;
        }
        TraceId::from_wire(bytes)
    }

    /// What follows the fixed header: empty or a valid trace id.
    #[inline]
    fn from_wire(bytes: &[u8]) -> Option<TraceId> {
        if bytes.is_empty() {
            return Some(TraceId::NONE);
        }
        // Without an early exit, so the check compiles to a few vector instructions.
        let printable = bytes
            .iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x7f - 0x21));
        if bytes.len() > MAX_TRACE_LEN || !printable {
            return None;
        }
        let mut t = TraceId::NONE;
        t.bytes[..bytes.len()].copy_from_slice(bytes);
        t.len = bytes.len() as u8;
        Some(t)
    }

    /// The trace id a server makes for a request that brought none: its server id as 16
    /// lower-case hex digits, `-`, and its request id in hex. Unique as the pair is (a server's
    /// id names one incarnation of it), short, and it names the request in the server's logs.
    pub fn from_ids(server_id: u64, request_id: u64) -> TraceId {
        TraceId::server_prefix(server_id).with_request_id(request_id)
    }

    /// The first 17 bytes of every trace id [`TraceId::from_ids`] makes for `server_id`: a
    /// server keeps it, and adds each request's id ([`TraceId::with_request_id`]).
    pub(crate) fn server_prefix(server_id: u64) -> TraceId {
        let mut t = TraceId::NONE;
        t.bytes[..16].copy_from_slice(&hex16(server_id));
        t.bytes[16] = b'-';
        t.len = 17;
        t
    }

    /// This prefix ([`TraceId::server_prefix`]) followed by `request_id` in hex.
    pub(crate) fn with_request_id(mut self, request_id: u64) -> TraceId {
        // Made for every request that brings none: the digits without a loop.
        let digits = (16 - request_id.leading_zeros() as usize / 4).max(1);
        self.bytes[17..17 + digits].copy_from_slice(&hex16(request_id)[16 - digits..]);
        self.len = (17 + digits) as u8;
        self
    }

    /// The bytes, printable ASCII.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The trace id as text (empty for [`TraceId::NONE`]).
    pub fn as_str(&self) -> &str {
        // Only printable ASCII gets in.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Whether this is [`TraceId::NONE`].
    pub fn is_none(&self) -> bool {
        self.len == 0
    }
}

impl Default for TraceId {
    fn default() -> Self {
        TraceId::NONE
    }
}

impl PartialEq for TraceId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for TraceId {}

impl std::hash::Hash for TraceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TraceId({:?})", self.as_str())
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a message is. The numbers are the wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Server or worker → proxy → worker: work to do. Payload: the application's frames.
    Job = 1,
    /// Worker → server (loopback): the answer. Payload: exactly one frame.
    Reply = 2,
    /// Worker → proxy: idle and ready for a job. Payload: zero or one frame, the heartbeat blob.
    Ready = 3,
    /// Worker ↔ proxy: still alive. Payload: zero frames, or (from a worker's heartbeat thread
    /// while the worker is busy) one frame, the routing id of the worker it speaks for.
    Heartbeat = 4,
    /// Server → workers (interrupt channel): stop working on this request. No payload.
    Interrupt = 5,
    /// Proxy → the sender of a job: refused (queue full). Payload: zero or one frame, the reason.
    Reject = 6,
    /// Worker → proxy: leaving; forget me. No payload.
    Disconnect = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Job,
            2 => Kind::Reply,
            3 => Kind::Ready,
            4 => Kind::Heartbeat,
            5 => Kind::Interrupt,
            6 => Kind::Reject,
            7 => Kind::Disconnect,
            _ => return None,
        })
    }

    /// How many payload frames a message of this kind may carry (inclusive bounds).
    fn payload_frames(self) -> (usize, usize) {
        match self {
            Kind::Job => (0, usize::MAX),
            Kind::Reply => (1, 1),
            Kind::Ready | Kind::Reject | Kind::Heartbeat => (0, 1),
            Kind::Interrupt | Kind::Disconnect => (0, 0),
        }
    }
}

/// The client protocol a request came in by: byte 7 of the header. The server writes it into the
/// job it sends into the pipeline, and every message about that job carries it (forwarded jobs,
/// Replies, Rejects, Interrupts), so every stage knows how the last one must answer without
/// guessing from the payload: an HTTP request's Reply is an HTTP response frame
/// ([`http_job::Response`](crate::http_job::Response)), the others' is the bytes the client gets.
/// Messages that concern no job carry [`ClientProtocol::Direct`] (0).
///
/// The wire values are ASCII letters, readable in a dump of the frame.
///
/// ```
/// use prime_server::wire::{ClientProtocol, Header, Kind};
/// let mut h = Header::new(Kind::Job);
/// h.protocol = ClientProtocol::Http;
/// assert_eq!(h.encode()[7], b'h');
/// assert_eq!(Header::decode(&h.encode()).unwrap().protocol, ClientProtocol::Http);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ClientProtocol {
    /// 0: no client protocol. A job the application submitted itself
    /// ([`Server::submit`](crate::Server::submit)); the Reply's body is handed back as it is.
    /// Also the value of every message that concerns no job.
    #[default]
    Direct = 0,
    /// `h`: the HTTP front (HTTP/1.0, 1.1 or 2). The job is the request head and body frames
    /// (`docs/PROTOCOL.md` §5), the Reply body an HTTP response frame.
    Http = b'h',
    /// `n`: the netstring front. The job is one frame, the request's bytes; the Reply body is
    /// the response's bytes (sent back as one netstring).
    Netstring = b'n',
    /// `z`: the zmq front. The job is the client's payload frames (1 to 64); the Reply body is
    /// what the client gets as the body of a `200`.
    Zmq = b'z',
}

impl ClientProtocol {
    /// The protocol of this wire value, if it is one.
    pub fn from_u8(v: u8) -> Option<ClientProtocol> {
        Some(match v {
            0 => ClientProtocol::Direct,
            b'h' => ClientProtocol::Http,
            b'n' => ClientProtocol::Netstring,
            b'z' => ClientProtocol::Zmq,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for ClientProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientProtocol::Direct => "direct",
            ClientProtocol::Http => "http",
            ClientProtocol::Netstring => "netstring",
            ClientProtocol::Zmq => "zmq",
        })
    }
}

/// Why bytes are not a v3 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message had no frame at all.
    #[error("empty message")]
    Empty,
    /// A message read from a ROUTER had no frame after the sender's routing id.
    #[error("no routing envelope")]
    NoEnvelope,
    /// The header frame is shorter than [`HEADER_LEN`] or longer than [`MAX_HEADER_LEN`] bytes.
    #[error("header frame is {0} bytes, expected {HEADER_LEN} to {MAX_HEADER_LEN}")]
    HeaderLength(usize),
    /// The bytes after the fixed header are not a trace id (printable ASCII only).
    #[error("the header's trace id has a byte outside printable ASCII")]
    TraceId,
    /// The header does not start with [`MAGIC`].
    #[error("bad magic {0:02x?}")]
    Magic([u8; 2]),
    /// Another protocol version: the peer must be upgraded (or we must).
    #[error("protocol version {0} not supported (this side speaks {VERSION})")]
    Version(u8),
    /// A kind this version does not define.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// A client protocol (byte 7) this version does not define.
    #[error("unknown client protocol {0}")]
    Protocol(u8),
    /// The number of payload frames is wrong for the kind.
    #[error("{kind:?} message with {frames} payload frames")]
    FrameCount {
        /// The kind of message.
        kind: Kind,
        /// How many payload frames it had.
        frames: usize,
    },
}

/// The header frame, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the message is.
    pub kind: Kind,
    /// How many times this job has been handed to a worker.
    pub attempt: u8,
    /// The stage that sent the message (0 = server).
    pub stage: u8,
    /// See [`flags`].
    pub flags: u8,
    /// The client protocol of the request the message concerns (copied like the token);
    /// [`ClientProtocol::Direct`] on messages that concern no job.
    pub protocol: ClientProtocol,
    /// Unique per server.
    pub request_id: u64,
    /// The server that must get the answer.
    pub server_id: u64,
    /// When the server accepted the request, Unix µs.
    pub arrival_us: u64,
    /// When the server gives up on the request, Unix µs; 0 = never.
    pub deadline_us: u64,
    /// 0 = application reply; otherwise a failure status.
    pub status: u16,
    /// The request's reply token: copied from the job into what is forwarded and replied,
    /// [`ReplyToken::NONE`] elsewhere.
    pub token: ReplyToken,
    /// The request's trace id: copied like the token, [`TraceId::NONE`] on messages that concern
    /// no job (interrupts included).
    pub trace_id: TraceId,
}

/// An encoded header frame: [`HEADER_LEN`] to [`MAX_HEADER_LEN`] bytes, inline (encoding a
/// header allocates nothing). Derefs to the bytes.
#[derive(Clone, Copy)]
pub struct EncodedHeader {
    len: u8,
    bytes: [u8; MAX_HEADER_LEN],
}

impl std::ops::Deref for EncodedHeader {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::ops::DerefMut for EncodedHeader {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for EncodedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedHeader({:02x?})", &**self)
    }
}

impl Header {
    /// A header of the given kind with every other field zero.
    pub fn new(kind: Kind) -> Header {
        Header {
            kind,
            attempt: 0,
            stage: 0,
            flags: 0,
            protocol: ClientProtocol::Direct,
            request_id: 0,
            server_id: 0,
            arrival_us: 0,
            deadline_us: 0,
            status: 0,
            token: ReplyToken::NONE,
            trace_id: TraceId::NONE,
        }
    }

    /// The same request, as a message of another kind (status and flags cleared; the reply
    /// token, the trace id, the client protocol and every other field kept: a reply or a
    /// forwarded job must carry them). Clear the token
    /// before publishing a header to peers that were not handed the job.
    pub fn with_kind(&self, kind: Kind) -> Header {
        Header {
            kind,
            flags: 0,
            status: 0,
            ..*self
        }
    }

    /// Encodes the header frame: the fixed part, then the trace id if any.
    pub fn encode(&self) -> EncodedHeader {
        let mut out = EncodedHeader {
            len: (HEADER_LEN + self.trace_id.len as usize) as u8,
            bytes: [0u8; MAX_HEADER_LEN],
        };
        // All 64 bytes, a fixed-size copy: those past the trace id's length are zero.
        out.bytes[HEADER_LEN..].copy_from_slice(&self.trace_id.bytes);
        let b = &mut out.bytes;
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4] = self.attempt;
        b[5] = self.stage;
        b[6] = self.flags;
        b[7] = self.protocol.as_u8();
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.server_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.arrival_us.to_le_bytes());
        b[32..40].copy_from_slice(&self.deadline_us.to_le_bytes());
        b[40..42].copy_from_slice(&self.status.to_le_bytes());
        b[42..48].copy_from_slice(&self.token.0);
        out
    }

    /// Decodes a header frame.
    pub fn decode(b: &[u8]) -> Result<Header, WireError> {
        if !(HEADER_LEN..=MAX_HEADER_LEN).contains(&b.len()) {
            // Check magic/version first where we can, so a peer of another version gets the
            // more useful error.
            if b.len() >= 3 && b[0..2] == MAGIC && b[2] != VERSION {
                return Err(WireError::Version(b[2]));
            }
            return Err(WireError::HeaderLength(b.len()));
        }
        if b[0..2] != MAGIC {
            return Err(WireError::Magic([b[0], b[1]]));
        }
        if b[2] != VERSION {
            return Err(WireError::Version(b[2]));
        }
        let kind = Kind::from_u8(b[3]).ok_or(WireError::Kind(b[3]))?;
        let protocol = ClientProtocol::from_u8(b[7]).ok_or(WireError::Protocol(b[7]))?;
        let trace_id = TraceId::from_wire(&b[HEADER_LEN..]).ok_or(WireError::TraceId)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(Header {
            kind,
            attempt: b[4],
            stage: b[5],
            flags: b[6],
            protocol,
            request_id: u64_at(8),
            server_id: u64_at(16),
            arrival_us: u64_at(24),
            deadline_us: u64_at(32),
            status: u16_at(40),
            token: ReplyToken([b[42], b[43], b[44], b[45], b[46], b[47]]),
            trace_id,
        })
    }

    /// The deadline as a wall-clock time, if any.
    pub fn deadline(&self) -> Option<SystemTime> {
        (self.deadline_us != 0).then(|| UNIX_EPOCH + Duration::from_micros(self.deadline_us))
    }

    /// Whether the deadline has passed at `now_us` (Unix µs).
    pub fn expired_at(&self, now_us: u64) -> bool {
        self.deadline_us != 0 && now_us >= self.deadline_us
    }
}

/// The current wall-clock time in Unix microseconds (0 before 1970).
///
/// Read for every job and every request (deadlines, and the durations the metrics count), so it
/// asks the kernel's vDSO directly: `SystemTime::now().duration_since(UNIX_EPOCH)` costs about
/// twice as many instructions for the same reading.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Builds a message: the header frame followed by the payload frames.
pub fn message<I>(header: &Header, payload: I) -> Frames
where
    I: IntoIterator<Item = Vec<u8>>,
{
    let mut frames = vec![header.encode().to_vec()];
    frames.extend(payload);
    frames
}

/// Decodes a message (without any routing envelope): the header and the payload frames, checking
/// the payload frame count against the kind.
pub fn decode(mut frames: Frames) -> Result<(Header, Frames), WireError> {
    if frames.is_empty() {
        return Err(WireError::Empty);
    }
    let header = Header::decode(&frames[0])?;
    let payload = frames.split_off(1);
    let (min, max) = header.kind.payload_frames();
    if payload.len() < min || payload.len() > max {
        return Err(WireError::FrameCount {
            kind: header.kind,
            frames: payload.len(),
        });
    }
    Ok((header, payload))
}

/// Decodes a message read from a ROUTER socket: the sender's routing id, then the message as
/// [`decode`] reads it.
pub fn decode_routed(mut frames: Frames) -> Result<(Vec<u8>, Header, Frames), WireError> {
    if frames.len() < 2 {
        return Err(WireError::NoEnvelope);
    }
    let rest = frames.split_off(1);
    let sender = frames.pop().unwrap_or_default();
    let (header, payload) = decode(rest)?;
    Ok((sender, header, payload))
}

/// The routing id a server's loopback socket presents to workers: `b"ps-"` and the server id as
/// 16 lower-case hex digits. Workers address replies with it.
pub fn server_routing_id(server_id: u64) -> Vec<u8> {
    format!("ps-{server_id:016x}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = Kind> {
        (1u8..=7).prop_map(|k| Kind::from_u8(k).unwrap())
    }

    /// A trace id: none, or 1 to 64 printable ASCII bytes.
    fn trace_strategy() -> impl Strategy<Value = TraceId> {
        proptest::collection::vec(0x21u8..=0x7e, 0..=MAX_TRACE_LEN)
            .prop_map(|b| TraceId::from_wire(&b).unwrap())
    }

    fn protocol_strategy() -> impl Strategy<Value = ClientProtocol> {
        prop_oneof![
            Just(ClientProtocol::Direct),
            Just(ClientProtocol::Http),
            Just(ClientProtocol::Netstring),
            Just(ClientProtocol::Zmq),
        ]
    }

    prop_compose! {
        fn header_strategy()(kind in kind_strategy(), attempt: u8, stage: u8, flags: u8,
            protocol in protocol_strategy(), request_id: u64, server_id: u64, arrival_us: u64,
            deadline_us: u64, status: u16, token: [u8; TOKEN_LEN], trace_id in trace_strategy())
            -> Header {
            Header {
                kind, attempt, stage, flags, protocol, request_id, server_id, arrival_us,
                deadline_us, status, token: ReplyToken(token), trace_id,
            }
        }
    }

    proptest! {
        #[test]
        fn header_round_trips(h in header_strategy()) {
            let b = h.encode();
            prop_assert_eq!(b.len(), HEADER_LEN + h.trace_id.as_bytes().len());
            prop_assert_eq!(Header::decode(&b), Ok(h));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..150)) {
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn a_trace_byte_outside_printable_ascii_is_an_error(h in header_strategy(),
            at in 0usize..MAX_TRACE_LEN, byte in prop_oneof![0u8..=0x20, 0x7fu8..=0xff]) {
            let mut b = h.encode().to_vec();
            prop_assume!(at < b.len() - HEADER_LEN);
            b[HEADER_LEN + at] = byte;
            prop_assert_eq!(Header::decode(&b), Err(WireError::TraceId));
        }

        #[test]
        fn a_made_trace_id_is_valid_and_names_both_ids(server_id: u64, request_id: u64) {
            let t = TraceId::from_ids(server_id, request_id);
            prop_assert_eq!(TraceId::new(t.as_bytes()), Some(t));
            prop_assert_eq!(t.as_str(), format!("{server_id:016x}-{request_id:x}"));
        }

        #[test]
        fn random_frames_never_panic(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..60), 0..5)) {
            let _ = decode(frames);
        }

        #[test]
        fn corrupt_headers_are_errors(h in header_strategy(), at in 0usize..4, byte: u8) {
            let mut b = h.encode();
            prop_assume!(b[at] != byte);
            b[at] = byte;
            // Magic, version and kind are checked; only a change to another valid kind decodes.
            if let Ok(d) = Header::decode(&b) {
                prop_assert!(at == 3 && d.kind as u8 == byte);
            }
        }
    }

    #[test]
    fn a_routed_message_names_its_sender_and_needs_more_than_the_envelope() {
        let h = Header::new(Kind::Ready);
        let mut frames = vec![b"w1".to_vec()];
        frames.extend(message(&h, [b"blob".to_vec()]));
        let (sender, got, payload) = decode_routed(frames).unwrap();
        assert_eq!(
            (sender, got, payload),
            (b"w1".to_vec(), h, vec![b"blob".to_vec()])
        );
        assert_eq!(
            decode_routed(vec![b"w1".to_vec()]),
            Err(WireError::NoEnvelope)
        );
        assert_eq!(decode_routed(Vec::new()), Err(WireError::NoEnvelope));
    }

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let h = Header {
            kind: Kind::Job,
            attempt: 1,
            stage: 2,
            flags: 0x05,
            protocol: ClientProtocol::Netstring,
            request_id: 0x0807_0605_0403_0201,
            server_id: 1,
            arrival_us: 2,
            deadline_us: 3,
            status: 504,
            token: ReplyToken::NONE,
            trace_id: TraceId::NONE,
        };
        let b = h.encode();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(&b[0..8], &[b'P', b'S', 3, 1, 1, 2, 0x05, b'n']);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[16], 1);
        assert_eq!(b[24], 2);
        assert_eq!(b[32], 3);
        assert_eq!(&b[40..42], &504u16.to_le_bytes());
        assert!(b[42..].iter().all(|&x| x == 0));
    }

    #[test]
    fn the_reply_token_is_bytes_42_to_48_and_survives_a_round_trip_and_a_change_of_kind() {
        let mut h = Header::new(Kind::Job);
        h.request_id = 9;
        h.token = ReplyToken([1, 2, 3, 4, 5, 0xff]);
        let b = h.encode();
        assert_eq!(&b[42..48], &[1, 2, 3, 4, 5, 0xff]);
        let decoded = Header::decode(&b).unwrap();
        assert_eq!(decoded.token, h.token);
        // What a worker does to the header of the job it was handed.
        let reply = decoded.with_kind(Kind::Reply);
        assert_eq!(Header::decode(&reply.encode()).unwrap().token, h.token);
        assert!(Header::new(Kind::Interrupt).token.is_none());
    }

    #[test]
    fn the_trace_id_follows_the_fixed_header_and_survives_a_change_of_kind() {
        let mut h = Header::new(Kind::Job);
        h.token = ReplyToken([9; TOKEN_LEN]);
        h.trace_id = TraceId::new(b"abc-123").unwrap();
        let b = h.encode();
        assert_eq!(&b[HEADER_LEN..], b"abc-123");
        let decoded = Header::decode(&b).unwrap();
        assert_eq!(decoded.trace_id.as_str(), "abc-123");
        for kind in [Kind::Reply, Kind::Job, Kind::Reject] {
            let copy = Header::decode(&decoded.with_kind(kind).encode()).unwrap();
            assert_eq!(copy.trace_id, h.trace_id);
        }
        assert!(Header::new(Kind::Interrupt).trace_id.is_none());
        assert_eq!(Header::new(Kind::Heartbeat).encode().len(), HEADER_LEN);
    }

    #[test]
    fn trace_ids_are_1_to_64_printable_ascii_bytes() {
        assert!(TraceId::new(b"").is_none());
        assert!(TraceId::new(&[b'x'; MAX_TRACE_LEN]).is_some());
        assert!(TraceId::new(&[b'x'; MAX_TRACE_LEN + 1]).is_none());
        assert!(TraceId::new(b"!~").is_some());
        for bad in [&b"a b"[..], b"a\tb", b"caf\xc3\xa9", b"a\x7f", b"\0"] {
            assert!(TraceId::new(bad).is_none(), "{bad:?}");
        }
        assert_eq!(TraceId::from_ids(1, 0).as_str(), "0000000000000001-0");
        assert_eq!(
            TraceId::from_ids(u64::MAX, u64::MAX).as_str(),
            "ffffffffffffffff-ffffffffffffffff"
        );
    }

    #[test]
    fn a_header_frame_is_48_to_112_bytes() {
        let mut h = Header::new(Kind::Job);
        h.trace_id = TraceId::new(&[b'z'; MAX_TRACE_LEN]).unwrap();
        let b = h.encode();
        assert_eq!(b.len(), MAX_HEADER_LEN);
        assert!(Header::decode(&b).is_ok());
        let mut longer = b.to_vec();
        longer.push(b'z');
        assert_eq!(
            Header::decode(&longer),
            Err(WireError::HeaderLength(MAX_HEADER_LEN + 1))
        );
        assert_eq!(
            Header::decode(&b[..HEADER_LEN - 1]),
            Err(WireError::HeaderLength(HEADER_LEN - 1))
        );
        // A header frame with a trace id carries the reply token where it always did.
        let mut h = Header::new(Kind::Reply);
        h.token = ReplyToken([1, 2, 3, 4, 5, 6]);
        h.trace_id = TraceId::new(b"t").unwrap();
        assert_eq!(&h.encode()[42..], &[1, 2, 3, 4, 5, 6, b't']);
    }

    #[test]
    fn made_trace_ids_at_the_edges() {
        assert_eq!(TraceId::from_ids(0, 0).as_str(), "0000000000000000-0");
        assert_eq!(
            TraceId::from_ids(u64::MAX, u64::MAX).as_str(),
            "ffffffffffffffff-ffffffffffffffff"
        );
        assert_eq!(
            TraceId::from_ids(0x0123_4567_89ab_cdef, 0xa0).as_str(),
            "0123456789abcdef-a0"
        );
        assert_eq!(hex16(0xfedc_ba98_7654_3210), *b"fedcba9876543210");
    }

    #[test]
    fn wrong_version_is_named() {
        let mut b = Header::new(Kind::Job).encode();
        // A version-1 peer: it knows no reply tokens.
        b[2] = 1;
        assert_eq!(Header::decode(&b), Err(WireError::Version(1)));
        assert_eq!(Header::decode(&b[..10]), Err(WireError::Version(1)));
        // A version-2 peer: it knows no client protocol, and would drop it from what it forwards.
        b[2] = 2;
        assert_eq!(Header::decode(&b), Err(WireError::Version(2)));
        assert_eq!(
            WireError::Version(2).to_string(),
            "protocol version 2 not supported (this side speaks 3)"
        );
        b[2] = 4;
        assert_eq!(Header::decode(&b), Err(WireError::Version(4)));
    }

    #[test]
    fn the_client_protocol_is_byte_7_copied_with_the_request_and_checked() {
        for (protocol, byte) in [
            (ClientProtocol::Direct, 0),
            (ClientProtocol::Http, b'h'),
            (ClientProtocol::Netstring, b'n'),
            (ClientProtocol::Zmq, b'z'),
        ] {
            let mut h = Header::new(Kind::Job);
            h.protocol = protocol;
            h.flags = flags::BUSY;
            let b = h.encode();
            assert_eq!((b[6], b[7]), (flags::BUSY, byte));
            let decoded = Header::decode(&b).unwrap();
            assert_eq!(decoded.protocol, protocol);
            // A Reply, a forwarded job or a Reject made from the job keeps it.
            for kind in [Kind::Reply, Kind::Job, Kind::Reject, Kind::Interrupt] {
                assert_eq!(decoded.with_kind(kind).protocol, protocol);
            }
        }
        let mut b = Header::new(Kind::Job).encode();
        b[7] = b'x';
        assert_eq!(Header::decode(&b), Err(WireError::Protocol(b'x')));
        assert_eq!(
            Header::new(Kind::Heartbeat).protocol,
            ClientProtocol::Direct
        );
    }

    #[test]
    fn frame_counts_are_checked() {
        let h = Header::new(Kind::Reply);
        assert!(decode(message(&h, [])).is_err());
        assert!(decode(message(&h, [b"a".to_vec()])).is_ok());
        assert!(decode(message(&h, [b"a".to_vec(), b"b".to_vec()])).is_err());
        let h = Header::new(Kind::Heartbeat);
        assert!(decode(message(&h, [b"x".to_vec()])).is_ok());
        assert!(decode(message(&h, [b"x".to_vec(), b"y".to_vec()])).is_err());
        let h = Header::new(Kind::Interrupt);
        assert!(decode(message(&h, [b"x".to_vec()])).is_err());
        assert_eq!(decode(vec![]), Err(WireError::Empty));
    }
}
