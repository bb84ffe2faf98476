//! Arbitrary bytes through `keel_engine::fuzz_checks::record_batch`. Run from `engine/`:
//! `cargo +nightly fuzz run -s none record_batch -- -max_total_time=60`. The corpus it keeps (and any
//! crash it saves) is replayed under `cargo test` by `tests/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_engine::fuzz_checks::record_batch(data));
