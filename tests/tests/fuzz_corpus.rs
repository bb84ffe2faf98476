//! Replays the engine's fuzz corpus (and any crash a fuzzer saved) through the same checks the
//! fuzz targets make (`keel_engine::fuzz_checks`), under plain `cargo test`: what fuzzing
//! found stays fixed on the stable toolchain, in CI.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use keel_engine::fuzz_checks::TARGETS;

/// keeld's allocator: the Kafka decoder's inputs are replayed as keeld would meet them
/// (`server/fuzz/fuzz_targets/decode_kafka_request.rs` says why it matters).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[test]
fn every_engine_fuzz_corpus_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/fuzz");
    for (target, check) in TARGETS {
        let mut replayed = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = fs::read(&path).unwrap();
                let outcome = catch_unwind(AssertUnwindSafe(|| check(&data)));
                assert!(outcome.is_ok(), "{} fails {target}'s check", path.display());
                replayed += 1;
            }
        }
        assert!(
            replayed >= 1,
            "no corpus for {target} under {}",
            root.display()
        );
    }
}

/// The Kafka listener's decoder (`server/fuzz`): every input decodes or is refused with a
/// named error (among them the crash the fuzzer found: an array length of 1.6 billion in a
/// 23-byte Metadata request), and the captured requests of real clients decode.
#[test]
fn every_kafka_fuzz_corpus_input_decodes_or_is_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/fuzz");
    let (mut replayed, mut decoded) = (0, 0);
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join("decode_kafka_request")) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            let outcome = catch_unwind(|| keel_server::kafka::decode_request(&data));
            match outcome {
                Ok(Ok(())) => decoded += 1,
                Ok(Err(why)) => assert!(!why.is_empty(), "{}: an unnamed error", path.display()),
                Err(_) => panic!("{} makes the Kafka decoder panic", path.display()),
            }
            replayed += 1;
        }
    }
    assert!(
        replayed >= 10,
        "the committed corpus was not found ({replayed} inputs)"
    );
    assert!(
        decoded >= 5,
        "real clients' requests decode ({decoded} of {replayed})"
    );
}
