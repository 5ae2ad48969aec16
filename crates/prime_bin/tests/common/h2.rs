//! A raw HTTP/2 client over a plain TCP socket (h2c by prior knowledge), frame by frame, for the
//! tests that must see what a library client hides: a stream reset sent at a chosen moment, the
//! GOAWAY of a drain. Requests are HPACK-encoded as literals (no Huffman, no table); of a
//! response's header block only the `:status` is read (it comes first): a static-table index,
//! or a literal whose digits may be Huffman-coded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// What a client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// RST_STREAM's code for a client that no longer wants the answer.
pub const CANCEL: u32 = 0x8;

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's last stream id and error code.
    pub fn goaway(&self) -> (u32, u32) {
        let p = &self.payload;
        (
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        )
    }
}

/// One stream's answer: its status (if sent as a static index) and its body.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

pub struct H2 {
    pub s: TcpStream,
    /// Every frame read that was not for the stream being waited for, nor a SETTINGS or PING
    /// the client answered, in order (a later [`H2::answer`] takes its stream's from here).
    pub other: Vec<Frame>,
}

/// The `:status` at the start of a response's header block.
pub fn status_of(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        // Indexed: the static table's :status entries are 8..=14.
        return [200, 204, 206, 304, 400, 404, 500]
            .get(usize::from(first & 0x7f).checked_sub(8)?)
            .copied();
    }
    // A literal whose name is a :status entry (index 8..=14, under a 6-bit prefix with
    // indexing, or a 4-bit one without or never indexed).
    let index = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&index) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(2..2 + len)?;
    let digits = if len_byte & 0x80 == 0 {
        String::from_utf8(value.to_vec()).ok()?
    } else {
        huffman_digits(value)?
    };
    digits.parse().ok()
}

/// Decodes a Huffman-coded string of digits (RFC 7541 Appendix B: 0-2 have 5-bit codes 0-2, 3-9
/// 6-bit codes 0x19-0x1f), ignoring the padding.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let take = |i: usize, n: usize| -> Option<u8> {
        bits.get(i..i + n)
            .map(|b| b.iter().fold(0u8, |acc, bit| acc << 1 | bit))
    };
    while i + 5 <= bits.len() {
        let five = take(i, 5)?;
        if five < 3 {
            out.push(char::from(b'0' + five));
            i += 5;
        } else if (12..=15).contains(&five) && i + 6 <= bits.len() {
            let six = take(i, 6)?;
            if !(0x19..=0x1f).contains(&six) {
                break;
            }
            out.push(char::from(b'3' + (six - 0x19)));
            i += 6;
        } else {
            // Padding (all ones) or something that is no digit.
            break;
        }
    }
    Some(out)
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A request's header block: `:method`, `:scheme` http, `:path`, `:authority`, then `headers`.
pub fn request_block(
    method: &str,
    path: &str,
    authority: &str,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut b = Vec::new();
    match method {
        "GET" => b.push(0x82),
        "POST" => b.push(0x83),
        other => {
            // Literal without indexing, name `:method` (static index 2).
            hpack_int(&mut b, 0x00, 4, 2);
            hpack_str(&mut b, other.as_bytes());
        }
    }
    b.push(0x86); // :scheme http
    hpack_int(&mut b, 0x00, 4, 4); // :path
    hpack_str(&mut b, path.as_bytes());
    hpack_int(&mut b, 0x00, 4, 1); // :authority
    hpack_str(&mut b, authority.as_bytes());
    for (n, v) in headers {
        b.push(0x00);
        hpack_str(&mut b, n.as_bytes());
        hpack_str(&mut b, v.as_bytes());
    }
    b
}

impl H2 {
    /// Connects, sends the preface and empty SETTINGS.
    pub fn connect(addr: SocketAddr) -> H2 {
        let s = super::connect(addr);
        let mut h = H2 {
            s,
            other: Vec::new(),
        };
        h.s.write_all(PREFACE).unwrap();
        h.frame(SETTINGS, 0, 0, &[]);
        h
    }

    pub fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).unwrap();
    }

    /// A GET on stream `id` (odd, rising), its request complete.
    pub fn get(&mut self, id: u32, path: &str, headers: &[(&str, &str)]) {
        let block = request_block("GET", path, "test", headers);
        self.frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
    }

    /// Resets stream `id` with `code`.
    pub fn reset(&mut self, id: u32, code: u32) {
        self.frame(RST_STREAM, 0, id, &code.to_be_bytes());
    }

    /// The next frame, answering SETTINGS and PING as a client must; `None` once the server
    /// closed the connection.
    pub fn read_frame(&mut self) -> Option<Frame> {
        loop {
            let mut head = [0u8; 9];
            self.s.read_exact(&mut head).ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.s.read_exact(&mut payload).ok()?;
            let f = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            match (f.kind, f.flags & ACK) {
                (SETTINGS, 0) => self.frame(SETTINGS, ACK, 0, &[]),
                (SETTINGS, _) => {}
                (PING, 0) => {
                    let p = f.payload.clone();
                    self.frame(PING, ACK, 0, &p);
                }
                _ => return Some(f),
            }
        }
    }

    /// Reads until stream `id` ends (END_STREAM or a reset); frames of other streams and of the
    /// connection go to `other`. `None` if the connection closed first.
    pub fn answer(&mut self, id: u32) -> Option<Answer> {
        let mut a = Answer::default();
        let mut earlier: std::collections::VecDeque<Frame> = std::collections::VecDeque::new();
        let mut i = 0;
        while i < self.other.len() {
            if self.other[i].stream == id {
                earlier.push_back(self.other.remove(i));
            } else {
                i += 1;
            }
        }
        loop {
            let f = match earlier.pop_front() {
                Some(f) => f,
                None => self.read_frame()?,
            };
            if f.stream != id {
                self.other.push(f);
                continue;
            }
            match f.kind {
                HEADERS if a.status.is_none() => a.status = status_of(&f.payload),
                DATA => a.body.extend_from_slice(&f.payload),
                RST_STREAM => return Some(a),
                _ => {}
            }
            if f.flags & END_STREAM != 0 {
                return Some(a);
            }
        }
    }
}
