//! Retention: a partition keeps at least its retention size, drops its oldest segments beyond
//! it, and reuses their files as new segments. A reused file still holds an older part of the
//! log past the new data; reopening must take none of it for the log, yet still find real
//! damage.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_engine::{DataError, Engine, EngineConfig};
use keel_tests::answers::{appended, Tagged};
use keel_tests::{
    data_dir, log_start, random_batch, read_from, segment_files, small_config, with_offset, Rng,
};

const SEGMENT: u64 = 256 * 1024;
const RETENTION: u64 = 3 * SEGMENT;

fn config(dir: &Path) -> EngineConfig {
    let mut cfg = small_config(dir, 1);
    cfg.retention_bytes = Some(RETENTION);
    assert_eq!(cfg.segment_bytes, SEGMENT);
    cfg
}

/// Appends `count` random batches with up to 64 in flight; returns (offset, stored bytes) of
/// each, in offset order.
fn append_many(engine: &Engine, rng: &mut Rng, count: usize) -> Vec<(u64, Vec<u8>)> {
    let answers = Tagged::new();
    let mut sent = 0;
    let mut out = Vec::new();
    while out.len() < count {
        while sent < count && sent - out.len() < 64 {
            let records = 1 + rng.below(6) as usize;
            let batch = random_batch(rng, records, 3000);
            let copy = batch.clone();
            engine.append("r", 0, batch, answers.ticket(copy));
            sent += 1;
        }
        let (batch, r) = answers
            .recv_timeout(Duration::from_secs(30))
            .expect("an append was not answered in 30 s");
        let first = appended(r).expect("append failed").first;
        out.push((first, with_offset(&batch, first)));
    }
    out.sort_by_key(|(offset, _)| *offset);
    out
}

/// What the engine holds from its log start on equals what was appended there, byte for byte.
fn assert_retained(engine: &Engine, appended: &[(u64, Vec<u8>)], context: &str) -> u64 {
    let start = log_start(engine, "r", 0);
    let expected: Vec<_> = appended
        .iter()
        .filter(|(o, _)| *o >= start)
        .cloned()
        .collect();
    assert!(
        expected.first().is_some_and(|(o, _)| *o == start),
        "{context}: the log starts at a batch boundary ({start})"
    );
    let got = read_from(engine, "r", 0, start);
    assert_eq!(got.len(), expected.len(), "{context}: batches kept");
    assert!(got == expected, "{context}: kept batches differ");
    let kept: u64 = expected.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(
        kept + SEGMENT >= RETENTION,
        "{context}: only {kept} bytes kept, retention is {RETENTION}"
    );
    start
}

#[test]
fn retention_drops_old_segments_reuses_their_files_and_reopens_over_their_leftovers() {
    let dir = data_dir();
    let mut rng = Rng(0x7e7e_7105);
    let engine = Engine::open(config(dir.path())).unwrap();
    engine.create_topic("r", 1).unwrap();
    let mut appended = append_many(&engine, &mut rng, 1500);

    let stats = engine.stats();
    assert!(
        stats.segments_recycled >= 5,
        "segment files were reused: {stats:?}"
    );
    let start = assert_retained(&engine, &appended, "after filling");
    assert!(start > 0, "old segments were dropped");
    match engine.read_wait("r", 0, start - 1, 1 << 20) {
        Err(DataError::OffsetOutOfRange {
            offset, start: s, ..
        }) => {
            assert_eq!((offset, s), (start - 1, start));
        }
        other => panic!("a read below the log start must say so: {other:?}"),
    }
    let files = segment_files(dir.path(), "r", 0);
    assert!(
        (3..=5).contains(&files.len()),
        "retention keeps 3 to 5 segments of {SEGMENT} bytes, found {}",
        files.len()
    );
    // A dropped segment's summary goes with it; each sealed segment kept has its own.
    let mut summaries: Vec<PathBuf> = fs::read_dir(dir.path().join("topics/r/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sum"))
        .collect();
    let sealed: Vec<PathBuf> = files[..files.len() - 1]
        .iter()
        .map(|f| f.with_extension("sum"))
        .collect();
    summaries.sort();
    assert_eq!(
        summaries, sealed,
        "summaries of exactly the sealed segments kept"
    );
    drop(engine);

    // Every kept segment file but the first has been used before: what follows its data is
    // an older part of the log, not damage. Once read whole, once from the summaries.
    for round in 0..2 {
        let mut cfg = config(dir.path());
        cfg.check_sealed_segments = round == 0;
        let engine =
            Engine::open(cfg).unwrap_or_else(|e| panic!("reopen {round} over reused files: {e}"));
        assert_retained(&engine, &appended, &format!("reopen {round}"));
        appended.extend(append_many(&engine, &mut rng, 400));
        assert_retained(&engine, &appended, &format!("after reopen {round}"));
    }

    // Real damage in a reused segment is still found: flip a byte inside a batch of the
    // oldest kept segment, which later segments follow.
    let start = {
        let engine = Engine::open(config(dir.path())).unwrap();
        log_start(&engine, "r", 0)
    };
    let oldest = segment_files(dir.path(), "r", 0)[0].clone();
    let victim = appended
        .iter()
        .find(|(o, _)| *o > start)
        .map(|(_, b)| b.clone())
        .unwrap();
    let mut bytes = fs::read(&oldest).unwrap();
    let at = bytes
        .windows(victim.len())
        .position(|w| w == &victim[..])
        .expect("the victim is in the oldest kept segment");
    bytes[at + victim.len() / 2] ^= 0x20;
    fs::write(&oldest, &bytes).unwrap();
    // Start-up believes the sealed segment's summary; reading the batch names the damage.
    let engine = Engine::open(config(dir.path())).unwrap();
    match engine.read_wait("r", 0, start, 1 << 20) {
        Err(DataError::Corruption { path, position, .. }) => {
            assert_eq!(path, oldest, "names the damaged file");
            assert_eq!(position, at as u64, "names the damaged batch");
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a damaged reused segment was served"),
    }
    drop(engine);
    // Reading every segment at start finds it there, and holds the partition offline.
    let mut check_all = config(dir.path());
    check_all.check_sealed_segments = true;
    let engine = Engine::open(check_all).unwrap();
    match engine.read_wait("r", 0, start, 1 << 20) {
        Err(DataError::PartitionOffline { cause, .. }) => match cause.as_ref() {
            DataError::Corruption { path, position, .. } => {
                assert_eq!(*path, oldest, "names the damaged file");
                assert_eq!(*position, at as u64, "names the damaged batch");
            }
            other => panic!("expected corruption, got {other}"),
        },
        Err(e) => panic!("expected the partition offline, got {e}"),
        Ok(_) => panic!("a damaged reused segment was served"),
    }
}

#[test]
fn without_retention_nothing_is_dropped() {
    let dir = data_dir();
    let mut rng = Rng(0x0dd_5eed);
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    engine.create_topic("r", 1).unwrap();
    let appended = append_many(&engine, &mut rng, 600);
    let stats = engine.stats();
    assert_eq!((stats.segments_recycled, stats.segments_deleted), (0, 0));
    assert_eq!(log_start(&engine, "r", 0), 0);
    assert!(read_from(&engine, "r", 0, 0) == appended);
    assert!(segment_files(dir.path(), "r", 0).len() > 5);
}

/// Files in the partition's directory whose names end in `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

#[test]
fn dropped_files_are_removed_off_the_shard_and_a_crash_leftover_is_not_log() {
    let dir = data_dir();
    let partition = dir.path().join("topics").join("r").join("0");
    let mut rng = Rng(0xd20_99ed);
    let mut keep_all = small_config(dir.path(), 1);
    keep_all.retention_bytes = None;
    let engine = Engine::open(keep_all).unwrap();
    engine.create_topic("r", 1).unwrap();
    let mut appended = append_many(&engine, &mut rng, 800);
    drop(engine);
    let before = segment_files(dir.path(), "r", 0);
    assert!(before.len() > 6, "a log of many segments: {}", before.len());

    // A crash after a segment was renamed to its dropped name, before it was removed: a copy
    // of a whole segment, valid batches included, which must not be taken for the log.
    let leftover = partition.join("00000000000000000000.dropped");
    fs::copy(&before[1], &leftover).unwrap();

    // Reopened with a smaller retention: the oldest segments go at the first flush, one
    // reused as the next segment and the rest handed to the janitor.
    let engine = Engine::open(config(dir.path())).unwrap();
    assert!(
        !leftover.exists(),
        "recovery removed the leftover dropped file"
    );
    appended.extend(append_many(&engine, &mut rng, 5));
    let stats = engine.stats();
    assert!(stats.segments_deleted >= 2, "files were dropped: {stats:?}");
    assert_retained(&engine, &appended, "after dropping");
    drop(engine);
    assert_eq!(
        files_ending(&partition, ".dropped"),
        Vec::<std::path::PathBuf>::new(),
        "every dropped file is removed by the time the engine is closed"
    );
    let after = segment_files(dir.path(), "r", 0);
    assert!(
        (3..=5).contains(&after.len()),
        "retention keeps 3 to 5 segments, found {}",
        after.len()
    );
    let engine = Engine::open(config(dir.path())).unwrap();
    assert_retained(&engine, &appended, "reopened");
}
