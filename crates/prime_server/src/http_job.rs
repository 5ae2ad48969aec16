//! HTTP requests and responses as workers see them, and their encoding in job frames.
//!
//! The HTTP front hands stage 1 a job of two payload frames: the request **head** and the
//! **body** (de-chunked). A worker answers with [`Response::encode`] as its
//! [`Outcome::Reply`](crate::work::Outcome::Reply). Both encodings are plain little-endian
//! length-prefixed fields, documented in `docs/PROTOCOL.md` §5, so a worker in any language can
//! read requests and write responses.
//!
//! ```
//! use prime_server::http_job::{Request, Response};
//!
//! let req = Request::parse_target("GET", "/is_prime?possible_prime=7&x=a+b%26c");
//! assert_eq!(req.path, "/is_prime");
//! assert_eq!(req.query_value("possible_prime"), Some("7"));
//! assert_eq!(req.query_value("x"), Some("a b&c"));
//! let resp = Response::new(200).header("content-type", "application/json").body("{}");
//! assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
//! ```

use crate::transport::Frames;
use std::borrow::Cow;

/// Magic of the request head frame.
pub const REQUEST_MAGIC: [u8; 2] = *b"HQ";
/// Magic of an encoded response.
pub const RESPONSE_MAGIC: [u8; 2] = *b"HR";

/// Why frames are not an HTTP request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed HTTP {what}: {why}")]
pub struct DecodeError {
    what: &'static str,
    why: &'static str,
}

fn err(what: &'static str, why: &'static str) -> DecodeError {
    DecodeError { what, why }
}

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// An HTTP request as a worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method as sent (any token: GET, POST, PATCH, …).
    pub method: String,
    /// The request target as sent (percent-encoded, with the query).
    pub target: String,
    /// The path, percent-decoded.
    pub path: String,
    /// The query's pairs in order, each key and value percent-decoded after splitting (`+` is a
    /// space); repeated keys keep every value. Empty without a `?`.
    pub query: Vec<(String, String)>,
    /// The protocol version.
    pub version: Version,
    /// The headers in order, names lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with the given method and target and nothing else (for tests and tools).
    pub fn parse_target(method: &str, target: &str) -> Request {
        let (raw_path, raw_query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let path = percent_encoding::percent_decode_str(raw_path)
            .decode_utf8_lossy()
            .into_owned();
        let query = raw_query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Request {
            method: method.to_string(),
            target: target.to_string(),
            path,
            query,
            version: Version::Http11,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Every value of query key `key`, in order.
    pub fn query_values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query key `key`.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Encodes the request as the two job payload frames (head, body).
    pub fn encode(&self) -> Frames {
        encode_request(
            &self.method,
            &self.target,
            self.version,
            self.headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_slice())),
            self.body.clone(),
        )
    }

    /// Decodes the two job payload frames (head, body) that the HTTP front sends stage 1.
    pub fn decode(frames: &[Vec<u8>]) -> Result<Request, DecodeError> {
        let [head, body] = frames else {
            return Err(err("request", "expected 2 frames (head, body)"));
        };
        let mut r = Reader::new(head, "request");
        if r.take(2)? != REQUEST_MAGIC {
            return Err(err("request", "bad magic"));
        }
        let version = match r.u8()? {
            0 => Version::Http10,
            1 => Version::Http11,
            _ => return Err(err("request", "unknown version")),
        };
        r.u8()?;
        let method = r.str16()?;
        let target = r.str32()?;
        let count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count).min(256));
        for _ in 0..count {
            let name = r.str16()?;
            let value = r.bytes32()?.to_vec();
            headers.push((name, value));
        }
        if !r.done() {
            return Err(err("request", "trailing bytes in head"));
        }
        let mut req = Request::parse_target(&method, &target);
        req.version = version;
        req.headers = headers;
        req.body = body.clone();
        Ok(req)
    }
}

/// Encodes a request head and body as the two job payload frames.
pub fn encode_request<'a>(
    method: &str,
    target: &str,
    version: Version,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    body: Vec<u8>,
) -> Frames {
    let mut head = Vec::with_capacity(64 + target.len());
    head.extend_from_slice(&REQUEST_MAGIC);
    head.push(match version {
        Version::Http10 => 0,
        Version::Http11 => 1,
    });
    head.push(0);
    put16(&mut head, method.as_bytes());
    put32(&mut head, target.as_bytes());
    let count_at = head.len();
    head.extend_from_slice(&[0, 0]);
    let mut count: u16 = 0;
    for (name, value) in headers {
        if count == u16::MAX {
            break;
        }
        put16(&mut head, name);
        put32(&mut head, value);
        count += 1;
    }
    head[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
    vec![head, body]
}

/// An HTTP response as a worker writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (100–999).
    pub status: u16,
    /// Headers in order. `content-length`, `transfer-encoding` and `connection` are set by the
    /// server and ignored here.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// A `text/plain` response with this status and text.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.into().into_bytes())
    }

    /// Encodes the response as the one frame of a Reply.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.body.len() + 32 * self.headers.len());
        out.extend_from_slice(&RESPONSE_MAGIC);
        out.extend_from_slice(&self.status.to_le_bytes());
        let count = self.headers.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(count as u16).to_le_bytes());
        for (name, value) in self.headers.iter().take(count) {
            put16(&mut out, name.as_bytes());
            put32(&mut out, value);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes a Reply's frame.
    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        let view = ResponseView::parse(bytes)?;
        Ok(Response {
            status: view.status,
            headers: view
                .headers
                .iter()
                .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
                .collect(),
            body: view.body.to_vec(),
        })
    }
}

/// A borrowed view of an encoded response (what the front uses, without copying the body twice).
#[derive(Debug)]
pub struct ResponseView<'a> {
    /// The status code.
    pub status: u16,
    /// The headers, raw.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> ResponseView<'a> {
    /// Parses an encoded response.
    pub fn parse(bytes: &'a [u8]) -> Result<ResponseView<'a>, DecodeError> {
        let mut r = Reader::new(bytes, "response");
        if r.take(2)? != RESPONSE_MAGIC {
            return Err(err("response", "bad magic"));
        }
        let status = r.u16()?;
        if !(100..=999).contains(&status) {
            return Err(err("response", "status out of range"));
        }
        let count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count).min(256));
        for _ in 0..count {
            let n = r.u16()?;
            let name = r.take(usize::from(n))?;
            let v = r.u32()?;
            let value = r.take(v as usize)?;
            headers.push((name, value));
        }
        Ok(ResponseView {
            status,
            headers,
            body: &bytes[r.pos..],
        })
    }
}

fn put16(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

fn put32(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(u32::MAX as usize);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(err(self.what, "truncated"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn str16(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()?;
        let s = self.take(usize::from(n))?;
        Ok(utf8(s))
    }
    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()?;
        self.take(n as usize)
    }
    fn str32(&mut self) -> Result<String, DecodeError> {
        Ok(utf8(self.bytes32()?))
    }
    fn done(&self) -> bool {
        self.pos == self.b.len()
    }
}

fn utf8(b: &[u8]) -> String {
    match String::from_utf8_lossy(b) {
        Cow::Borrowed(s) => s.to_string(),
        Cow::Owned(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn query_is_split_then_decoded() {
        let r = Request::parse_target("GET", "/a%20b?x=1%262&y=a+b&z=%3D&x=3&flag&=v&e=");
        assert_eq!(r.path, "/a b");
        let q: Vec<(&str, &str)> = r
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            q,
            vec![
                ("x", "1&2"),
                ("y", "a b"),
                ("z", "="),
                ("x", "3"),
                ("flag", ""),
                ("", "v"),
                ("e", "")
            ]
        );
        assert_eq!(r.query_values("x").collect::<Vec<_>>(), vec!["1&2", "3"]);
        let r = Request::parse_target("GET", "/is_prime");
        assert!(r.query.is_empty());
        let r = Request::parse_target("GET", "/blah?");
        assert!(r.query.is_empty());
    }

    #[test]
    fn request_round_trip() {
        let mut r = Request::parse_target("PATCH", "/x?a=1");
        r.version = Version::Http10;
        r.headers = vec![
            ("host".into(), b"h".to_vec()),
            ("x-a".into(), b"1".to_vec()),
            ("x-a".into(), b"2".to_vec()),
        ];
        r.body = b"body".to_vec();
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_never_a_panic(a in proptest::collection::vec(any::<u8>(), 0..80),
                                             b in proptest::collection::vec(any::<u8>(), 0..8)) {
            let _ = Request::decode(&[a.clone(), b]);
            let _ = Response::decode(&a);
        }

        #[test]
        fn response_round_trip(status in 100u16..1000, body in proptest::collection::vec(any::<u8>(), 0..50),
                               headers in proptest::collection::vec(("[a-z-]{1,10}", proptest::collection::vec(any::<u8>(), 0..10)), 0..5)) {
            let r = Response { status, headers, body };
            prop_assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
    }
}
