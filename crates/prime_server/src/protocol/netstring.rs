//! netstring: `<decimal length>:<bytes>,` requests and responses over TCP.
//!
//! The request's bytes go to the first stage as one frame; a worker's reply bytes come back as one
//! netstring. Failures are answered as netstrings too: `TIMEOUT` (504, as the C++ reference),
//! `ERROR <status>: <reason>` for the others, and `BAD_REQUEST: <reason>` for a malformed or
//! oversized netstring, after which the connection closes.

use super::{Health, ProtocolError, StreamProtocol};
use crate::answer::Answer;
use crate::transport::Frames;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;
use tokio_util::codec::{Decoder, Encoder};

/// The most digits a length may have (a length of 10^20 is more than any limit).
const MAX_DIGITS: usize = 20;

/// Decodes (and encodes) netstrings, refusing any longer than `max_len` bytes of payload.
#[derive(Debug, Clone)]
pub struct NetstringCodec {
    max_len: usize,
    /// The declared length of the netstring being read, once its `len:` prefix was parsed.
    want: Option<(usize, usize)>,
}

impl NetstringCodec {
    /// A codec refusing payloads over `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        NetstringCodec {
            max_len,
            want: None,
        }
    }
}

/// Frames `payload` as a netstring.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

impl Decoder for NetstringCodec {
    type Item = Bytes;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        let (prefix, len) = match self.want {
            Some(w) => w,
            None => {
                let scan = src.len().min(MAX_DIGITS + 1);
                let Some(colon) = src[..scan].iter().position(|&b| b == b':') else {
                    if !src[..scan].iter().all(u8::is_ascii_digit) {
                        return Err(ProtocolError::malformed("Non-numeric length"));
                    }
                    if src.len() > MAX_DIGITS {
                        return Err(ProtocolError::too_large("Length has too many digits"));
                    }
                    return Ok(None);
                };
                let digits = &src[..colon];
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(ProtocolError::malformed("Non-numeric length"));
                }
                // At most 20 ASCII digits: parse as u128 so nothing overflows.
                let len: u128 = digits
                    .iter()
                    .fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
                if len > self.max_len as u128 {
                    return Err(ProtocolError::too_large("Request exceeded maximum length"));
                }
                let w = (colon + 1, len as usize);
                self.want = Some(w);
                w
            }
        };
        if src.len() < prefix + len + 1 {
            src.reserve(prefix + len + 1 - src.len());
            return Ok(None);
        }
        if src[prefix + len] != b',' {
            return Err(ProtocolError::malformed("Missing ',' after body"));
        }
        self.want = None;
        src.advance(prefix);
        let body = src.split_to(len).freeze();
        src.advance(1);
        Ok(Some(body))
    }
}

impl Encoder<Bytes> for NetstringCodec {
    type Error = std::io::Error;
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.put_slice(item.len().to_string().as_bytes());
        dst.put_u8(b':');
        dst.put_slice(&item);
        dst.put_u8(b',');
        Ok(())
    }
}

/// A health check: requests whose payload equals `request` are answered `response` by the server
/// itself (`DRAINING` instead while the server drains).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The payload that asks for health.
    pub request: Bytes,
    /// The payload answered.
    pub response: Bytes,
}

/// The netstring client protocol.
#[derive(Debug, Clone)]
pub struct Netstring {
    /// The largest payload accepted (default 10 MiB).
    pub max_len: usize,
    /// The optional health check.
    pub health: Option<Arc<HealthCheck>>,
}

impl Default for Netstring {
    fn default() -> Self {
        Netstring {
            max_len: 10 * 1024 * 1024,
            health: None,
        }
    }
}

impl StreamProtocol for Netstring {
    type Request = Bytes;
    type Codec = NetstringCodec;

    fn codec(&self) -> NetstringCodec {
        NetstringCodec::new(self.max_len)
    }

    fn health(&self, req: &Bytes, state: Health) -> Option<Vec<u8>> {
        let h = self.health.as_ref()?;
        (req == &h.request).then(|| match state {
            Health::Draining => encode(b"DRAINING"),
            Health::Serving => encode(&h.response),
        })
    }

    fn client_protocol(&self) -> crate::wire::ClientProtocol {
        crate::wire::ClientProtocol::Netstring
    }

    fn job_frames(&self, req: Bytes) -> Frames {
        vec![req.to_vec()]
    }

    fn answer(&self, answer: Answer) -> Vec<u8> {
        match answer {
            Answer::Reply(body) => encode(&body),
            Answer::Failed(f) if f.status == 504 => encode(b"TIMEOUT"),
            Answer::Failed(f) => encode(format!("ERROR {}: {}", f.status, f.reason).as_bytes()),
        }
    }

    fn refuse(&self, err: &ProtocolError) -> Vec<u8> {
        encode(format!("BAD_REQUEST: {}", err.reason).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut NetstringCodec, input: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    #[test]
    fn decodes_split_and_coalesced() {
        let mut c = NetstringCodec::new(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in b"1" {
            buf.put_u8(b);
            assert!(c.decode(&mut buf).unwrap().is_none());
        }
        for &b in b"2:abgeschnitte,0:,3:abc,4:ab" {
            buf.put_u8(b);
            while let Some(x) = c.decode(&mut buf).unwrap() {
                got.push(x);
            }
        }
        assert_eq!(got, vec![&b"abgeschnitte"[..], b"", b"abc"]);
        assert_eq!(&buf[..], b"4:ab");
    }

    #[test]
    fn errors() {
        let mut c = NetstringCodec::new(10);
        assert!(decode_all(&mut c, b"x:")
            .unwrap_err()
            .reason
            .contains("Non-numeric"));
        let mut c = NetstringCodec::new(10);
        assert!(decode_all(&mut c, b"11:")
            .unwrap_err()
            .reason
            .contains("maximum"));
        let mut c = NetstringCodec::new(10);
        assert!(decode_all(&mut c, b"2:abc")
            .unwrap_err()
            .reason
            .contains("','"));
        let mut c = NetstringCodec::new(10);
        assert!(decode_all(&mut c, &[b'9'; 30]).is_err());
        let mut c = NetstringCodec::new(10);
        assert!(decode_all(&mut c, b"99999999999999999999999:").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..8), split in 0usize..400) {
            let mut wire = Vec::new();
            for i in &items { wire.extend(encode(i)); }
            let split = split.min(wire.len());
            let mut c = NetstringCodec::new(64);
            let mut buf = BytesMut::from(&wire[..split]);
            let mut out = Vec::new();
            while let Some(x) = c.decode(&mut buf).unwrap() { out.push(x.to_vec()); }
            buf.extend_from_slice(&wire[split..]);
            while let Some(x) = c.decode(&mut buf).unwrap() { out.push(x.to_vec()); }
            prop_assert_eq!(out, items);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut c = NetstringCodec::new(64);
            let _ = decode_all(&mut c, &bytes);
        }
    }
}
