//! Feeds arbitrary bytes to the Kafka listener's request decoder (header and body, every API
//! and version it serves). Run:
//! `cd server && cargo fuzz run -s none decode_kafka_request -- -max_total_time=60`.
//! What it finds is replayed by `tests/tests/fuzz_corpus.rs` under `cargo test`.
//!
//! With keeld's allocator: kafka-protocol 0.18 sizes a `Vec` from an array's length field
//! before reading its elements, so a few bytes can ask for a block of hundreds of GiB. mimalloc
//! reserves such a block without committing memory, and the decode then fails for want of
//! bytes; the system allocator refuses it and the process aborts (`docs/KAFKA.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fuzz_target!(|data: &[u8]| {
    let _ = keel_server::kafka::decode_request(data);
});
