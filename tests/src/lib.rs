//! Shared helpers for the end-to-end tests: data directories on a real filesystem, engine
//! configurations sized for tests, batch generation and whole-log reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

pub mod answers;
pub mod crash_load;
pub mod cutter;
pub mod exactly_once;
pub mod groups;
pub mod keeld;
pub mod member;
pub mod powerfs;
pub mod raw_produce;
pub mod refuser;
pub mod relay;
pub mod simulation;

use keel_engine::{BatchBuilder, BatchView, Engine, EngineConfig};
use tempfile::TempDir;

/// A fresh data directory on a real filesystem (ext4 or xfs: O_DIRECT works there, unlike
/// tmpfs), removed when dropped. Under `$KEEL_TEST_DIR` if set, else the system temp directory,
/// else (when that is tmpfs) the workspace's `target/` directory.
pub fn data_dir() -> TempDir {
    let base = match std::env::var_os("KEEL_TEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if !keel_engine::filesystem::is_tmpfs(&std::env::temp_dir()) => std::env::temp_dir(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-data"),
    };
    std::fs::create_dir_all(&base).expect("create test directory base");
    assert!(
        !keel_engine::filesystem::is_tmpfs(&base),
        "{} is on tmpfs, where O_DIRECT fails: set KEEL_TEST_DIR to a directory on ext4 or xfs",
        base.display()
    );
    tempfile::Builder::new()
        .prefix("keel-test-")
        .tempdir_in(base)
        .expect("create test data directory")
}

/// A configuration for tests: small segments so logs span many of them.
pub fn small_config(dir: &Path, shards: usize) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.shards = shards;
    cfg.pin_shards = false;
    cfg.segment_bytes = 256 * 1024;
    cfg.max_batch_bytes = 64 * 1024;
    cfg.max_flush_bytes = 128 * 1024;
    cfg
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A batch of `records` records with random values of up to `max_value` bytes and some keys.
pub fn random_batch(rng: &mut Rng, records: usize, max_value: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for i in 0..records {
        let len = rng.below(max_value as u64 + 1) as usize;
        let value = rng.bytes(len);
        let key = format!("key-{i}");
        let key = (i % 3 == 0).then_some(key.as_bytes());
        b.push(key, &value, &[(b"n", i.to_string().as_bytes())]);
    }
    b.build()
}

/// A batch with one record holding `value`.
pub fn one_record(value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::new(0);
    b.push(None, value, &[]);
    b.build()
}

/// Every batch of a partition, from offset 0 to the high watermark, as (base offset, bytes).
pub fn read_all(engine: &Engine, topic: &str, partition: u32) -> Vec<(u64, Vec<u8>)> {
    read_from(engine, topic, partition, 0)
}

/// The first offset `partition` of `topic` still has (above 0 once retention dropped some).
pub fn log_start(engine: &Engine, topic: &str, partition: u32) -> u64 {
    match engine.read_wait(topic, partition, 0, 1) {
        Err(keel_engine::DataError::OffsetOutOfRange { start, .. }) => start,
        Ok(_) => 0,
        Err(e) => panic!("read {topic}/{partition} at 0: {e}"),
    }
}

/// The segment files of a partition in the data directory `dir`, oldest first.
pub fn segment_files(dir: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let part = keel_engine::layout::partition_dir(dir, topic, partition);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&part)
        .unwrap_or_else(|e| panic!("{}: {e}", part.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(keel_engine::layout::parse_segment_file_name)
                .is_some()
        })
        .collect();
    files.sort();
    files
}

/// Every batch of a partition, from offset `from` to the high watermark, as (base offset,
/// bytes).
pub fn read_from(
    engine: &Engine,
    topic: &str,
    partition: u32,
    mut from: u64,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let r = engine
            .read_wait(topic, partition, from, 100_000)
            .expect("read");
        for view in keel_format::batch::batches(&r.data) {
            let view = view.expect("read returned a batch that does not verify");
            out.push((view.base_offset() as u64, view.bytes().to_vec()));
        }
        if r.next_offset >= r.high_watermark || r.data.is_empty() {
            assert_eq!(
                r.next_offset, r.high_watermark,
                "read stopped short of the end"
            );
            return out;
        }
        from = r.next_offset;
    }
}

/// The bytes of `batch` as stored: with its assigned base offset.
pub fn with_offset(batch: &[u8], base_offset: u64) -> Vec<u8> {
    let mut b = batch.to_vec();
    keel_format::batch::set_base_offset(&mut b, base_offset);
    assert!(BatchView::verify(&b).is_ok());
    b
}

/// The value the crash test's appender writes for (round, partition, seq): deterministic, of
/// varied length, so the checker can regenerate it byte for byte.
pub fn crash_value(round: u32, partition: u32, seq: u64) -> Vec<u8> {
    let mut value = format!("round {round} partition {partition} seq {seq} ").into_bytes();
    let mut rng = Rng(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let extra = rng.below(3000) as usize;
    value.extend(rng.bytes(extra));
    value
}

/// Reads one whole response frame (size prefix included) from a raw connection.
pub fn read_frame(s: &mut impl std::io::Read) -> Vec<u8> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut frame = size.to_vec();
    frame.resize(4 + u32::from_le_bytes(size) as usize, 0);
    s.read_exact(&mut frame[4..]).unwrap();
    frame
}

/// Copies the directory tree `from` to `to` (created), leaving out the engine's `LOCK` file.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The base offset a segment file (or its summary) is named by.
pub fn segment_base(path: &Path) -> u64 {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap();
    stem.parse().unwrap()
}
