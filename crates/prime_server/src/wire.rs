//! Wire protocol v2: the frames exchanged by server, proxies and workers.
//!
//! Every message starts with one **header frame** of exactly [`HEADER_LEN`] bytes, little-endian,
//! laid out byte by byte (no compiler-dependent struct layout). Payload frames follow. The full
//! table per message is in `docs/PROTOCOL.md`; this is the code that encodes and decodes it.
//!
//! ```text
//! offset size field
//!  0     2    magic        b"PS"
//!  2     1    version      2
//!  3     1    kind         see [`Kind`]
//!  4     1    attempt      how many times this job was handed to a worker (1 = first)
//!  5     1    stage        index of the stage that sent this message (0 = the server)
//!  6     2    flags        see [`flags`]
//!  8     8    request_id   unique per server
//! 16     8    server_id    the server that must receive the answer
//! 24     8    arrival_us   when the server accepted the request, Unix microseconds
//! 32     8    deadline_us  when the server will give up on it, Unix microseconds (0 = none)
//! 40     2    status       0 = application reply; else a failure status (500, 503, 504…)
//! 42     6    token        the request's reply token (see [`ReplyToken`]); zero on messages that
//!                           concern no job this peer was handed
//! ```
//!
//! Decoding never panics: anything that is not a well-formed v2 message is a [`WireError`].

use crate::transport::Frames;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of the header frame.
pub const HEADER_LEN: usize = 48;
/// The first two bytes of every header.
pub const MAGIC: [u8; 2] = *b"PS";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 2;

/// Bits of [`Header::flags`].
pub mod flags {
    /// On a [`super::Kind::Heartbeat`] from a worker: the worker is busy with a job.
    pub const BUSY: u16 = 1;
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

/// Why bytes are not a v2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message had no frame at all.
    #[error("empty message")]
    Empty,
    /// A message read from a ROUTER had no frame after the sender's routing id.
    #[error("no routing envelope")]
    NoEnvelope,
    /// The header frame is not [`HEADER_LEN`] bytes long.
    #[error("header frame is {0} bytes, expected {HEADER_LEN}")]
    HeaderLength(usize),
    /// The header does not start with [`MAGIC`].
    #[error("bad magic {0:02x?}")]
    Magic([u8; 2]),
    /// Another protocol version: the peer must be upgraded (or we must).
    #[error("protocol version {0} not supported (this side speaks {VERSION})")]
    Version(u8),
    /// A kind this version does not define.
    #[error("unknown message kind {0}")]
    Kind(u8),
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
    pub flags: u16,
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
}

impl Header {
    /// A header of the given kind with every other field zero.
    pub fn new(kind: Kind) -> Header {
        Header {
            kind,
            attempt: 0,
            stage: 0,
            flags: 0,
            request_id: 0,
            server_id: 0,
            arrival_us: 0,
            deadline_us: 0,
            status: 0,
            token: ReplyToken::NONE,
        }
    }

    /// The same request, as a message of another kind (status and flags cleared, the reply
    /// token kept: a reply or a forwarded job must carry it). Clear the token before publishing
    /// a header to peers that were not handed the job.
    pub fn with_kind(&self, kind: Kind) -> Header {
        Header {
            kind,
            flags: 0,
            status: 0,
            ..*self
        }
    }

    /// Encodes the header frame.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4] = self.attempt;
        b[5] = self.stage;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.server_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.arrival_us.to_le_bytes());
        b[32..40].copy_from_slice(&self.deadline_us.to_le_bytes());
        b[40..42].copy_from_slice(&self.status.to_le_bytes());
        b[42..48].copy_from_slice(&self.token.0);
        b
    }

    /// Decodes a header frame.
    pub fn decode(b: &[u8]) -> Result<Header, WireError> {
        if b.len() != HEADER_LEN {
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
            flags: u16_at(6),
            request_id: u64_at(8),
            server_id: u64_at(16),
            arrival_us: u64_at(24),
            deadline_us: u64_at(32),
            status: u16_at(40),
            token: ReplyToken([b[42], b[43], b[44], b[45], b[46], b[47]]),
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

/// The current wall-clock time in Unix microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
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

    prop_compose! {
        fn header_strategy()(kind in kind_strategy(), attempt: u8, stage: u8, flags: u16,
            request_id: u64, server_id: u64, arrival_us: u64, deadline_us: u64, status: u16,
            token: [u8; TOKEN_LEN])
            -> Header {
            Header {
                kind, attempt, stage, flags, request_id, server_id, arrival_us, deadline_us, status,
                token: ReplyToken(token),
            }
        }
    }

    proptest! {
        #[test]
        fn header_round_trips(h in header_strategy()) {
            prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Header::decode(&bytes);
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
            flags: 0x0102,
            request_id: 0x0807_0605_0403_0201,
            server_id: 1,
            arrival_us: 2,
            deadline_us: 3,
            status: 504,
            token: ReplyToken::NONE,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], &[b'P', b'S', 2, 1, 1, 2, 0x02, 0x01]);
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
    fn wrong_version_is_named() {
        let mut b = Header::new(Kind::Job).encode();
        // A version-1 peer: it knows no reply tokens.
        b[2] = 1;
        assert_eq!(Header::decode(&b), Err(WireError::Version(1)));
        assert_eq!(Header::decode(&b[..10]), Err(WireError::Version(1)));
        b[2] = 3;
        assert_eq!(Header::decode(&b), Err(WireError::Version(3)));
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
