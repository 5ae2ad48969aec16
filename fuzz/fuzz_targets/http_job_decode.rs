//! The HTTP job and reply decoders workers use, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prime_server::http_job::{Request, Response, ResponseView};

fuzz_target!(|data: &[u8]| {
    let (a, b) = data.split_at(data.len() / 2);
    if let Ok(req) = Request::decode(&[a.to_vec(), b.to_vec()]) {
        assert_eq!(Request::decode(&req.encode()).expect("round trip"), req);
    }
    if let Ok(resp) = Response::decode(data) {
        assert_eq!(Response::decode(&resp.encode()).expect("round trip"), resp);
    }
    let _ = ResponseView::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Request::parse_target("GET", s);
    }
});
