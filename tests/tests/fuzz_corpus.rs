//! Replays the engine's fuzz corpus (and any crash a fuzzer saved) through the same checks the
//! fuzz targets make (`keel_engine::fuzz_checks`), under plain `cargo test`: what fuzzing
//! found stays fixed on the stable toolchain, in CI.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use keel_engine::fuzz_checks::TARGETS;

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
