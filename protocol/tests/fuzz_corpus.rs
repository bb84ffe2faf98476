#![allow(clippy::unwrap_used)] // a failing unwrap is a failing test
//! Replays the fuzzer's corpus (and any crash it saved) through the decoders under plain
//! `cargo test`, so what fuzzing found stays fixed on the stable toolchain.

use std::path::Path;

use keel_protocol::{
    decode_request, encode_request, frame_len, DEFAULT_MAX_FRAME_BYTES, REQUEST_HEADER_BYTES,
};

/// The same checks as `fuzz/fuzz_targets/decode_request.rs`.
fn check(data: &[u8]) {
    if let Ok(Some(len)) = frame_len(data, REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES) {
        assert!(len <= data.len());
        if let Ok((header, request)) = decode_request(&data[..len]) {
            let mut again = Vec::new();
            encode_request(header.correlation_id, &request, &mut again);
            assert_eq!(
                again,
                &data[..len],
                "a decoded request must encode back to its frame"
            );
        }
    }
    let _ = decode_request(data);
}

#[test]
fn every_fuzz_corpus_input_decodes_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["corpus/decode_request", "artifacts/decode_request"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{} makes the decoder panic",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(
        replayed >= 9,
        "the committed corpus was not found ({replayed} inputs)"
    );
}
