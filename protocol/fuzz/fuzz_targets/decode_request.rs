//! Feeds arbitrary bytes to the frame and request decoders. Run:
//! `cd protocol && cargo fuzz run -s none decode_request -- -max_total_time=60`.
//! What it finds is replayed by `protocol/tests/fuzz_corpus.rs` under `cargo test`.
#![no_main]

use keel_protocol::{decode_request, encode_request, frame_len, DEFAULT_MAX_FRAME_BYTES, REQUEST_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = frame_len(data, REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES) {
        assert!(len <= data.len());
        if let Ok((header, request)) = decode_request(&data[..len]) {
            // What decodes must encode back to the same frame (pair assertion).
            let mut again = Vec::new();
            encode_request(header.correlation_id, &request, &mut again);
            assert_eq!(again, &data[..len]);
        }
    }
    let _ = decode_request(data);
});
