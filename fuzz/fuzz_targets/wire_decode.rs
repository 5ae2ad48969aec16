//! Every wire decoder on arbitrary frames: errors, never panics; what decodes re-encodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prime_server::wire::{self, Header};

fuzz_target!(|data: &[u8]| {
    // Split the input into frames at 0xff bytes.
    let frames: Vec<Vec<u8>> = data.split(|&b| b == 0xff).map(|f| f.to_vec()).collect();
    if let Ok(h) = Header::decode(data) {
        let again = Header::decode(&h.encode()).expect("re-encoded header decodes");
        assert_eq!(again, h);
    }
    let _ = wire::decode(frames);
});
