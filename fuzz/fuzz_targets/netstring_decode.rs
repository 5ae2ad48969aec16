//! The netstring request decoder on arbitrary bytes, fed whole and in two pieces.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prime_server::protocol::netstring::NetstringCodec;
use tokio_util::codec::Decoder;

fn all(input: &[&[u8]]) -> Result<Vec<Vec<u8>>, ()> {
    let mut c = NetstringCodec::new(64);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input {
        buf.extend_from_slice(piece);
        loop {
            match c.decode(&mut buf) {
                Ok(Some(x)) => out.push(x.to_vec()),
                Ok(None) => break,
                Err(_) => return Err(()),
            }
        }
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let whole = all(&[data]);
    if data.len() > 1 {
        let (a, b) = data.split_at(data.len() / 2);
        // Splitting the stream changes nothing about what decodes.
        if let (Ok(w), Ok(s)) = (&whole, all(&[a, b])) {
            assert_eq!(w, &s);
        }
    }
});
