//! Sealed segments' summaries: a roll saves one beside the segment it seals, and start-up reads
//! it instead of the segment — the log, its index and the idempotent producers' state come out
//! the same. A summary that is missing, damaged or does not match its segment is not believed:
//! the segment is read whole, and the summary written again.

use std::fs;
use std::path::{Path, PathBuf};

use keel_engine::summary::SegmentSummary;
use keel_engine::{BatchBuilder, DataError, Engine, OffsetRange};
use keel_tests::{copy_dir, data_dir, read_all, segment_base, segment_files, small_config};

/// A batch of `records` messages of about 1 KiB from `producer`, first sequence `seq`.
fn batch(producer: i64, seq: i32, records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000).producer(producer, 0, seq);
    for i in 0..records {
        let value = format!("p{producer} s{seq} r{i} {}", "x".repeat(1000));
        b.push(None, value.as_bytes(), &[]);
    }
    b.build()
}

fn summary_files(dir: &Path) -> Vec<PathBuf> {
    let partition = dir.join("topics/t/0");
    let mut out: Vec<PathBuf> = fs::read_dir(partition)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sum"))
        .collect();
    out.sort();
    out
}

fn summary_of(segment: &Path) -> PathBuf {
    segment.with_extension("sum")
}

/// What a test log holds: producer 1 wrote only into the first segment, producer 2 all along.
struct Built {
    /// Producer 1's last batch and where it went.
    early_last: (Vec<u8>, OffsetRange),
    /// Producer 2's last batch, its offsets, and its next sequence.
    late_last: (Vec<u8>, OffsetRange, i32),
}

/// Fills partition 0 of "t" over five segments.
fn build(dir: &Path) -> Built {
    let engine = Engine::open(small_config(dir, 1)).unwrap();
    engine.create_topic("t", 1).unwrap();
    let mut early_last = None;
    for seq in 0..8 {
        let b = batch(1, seq, 1);
        early_last = Some((b.clone(), engine.append_wait("t", 0, b).unwrap()));
    }
    let mut seq = 0;
    let mut late_last = None;
    while segment_files(dir, "t", 0).len() < 5 {
        let b = batch(2, seq, 3);
        late_last = Some((b.clone(), engine.append_wait("t", 0, b).unwrap(), seq + 3));
        seq += 3;
    }
    let (Some(early_last), Some((b, r, next))) = (early_last, late_last) else {
        unreachable!("both producers wrote");
    };
    Built {
        early_last,
        late_last: (b, r, next),
    }
}

/// The reopened engine holds exactly `log`, and knows both producers as they were.
fn assert_same(engine: &Engine, log: &[(u64, Vec<u8>)], built: &Built, when: &str) {
    assert!(
        read_all(engine, "t", 0) == log,
        "{when}: the log reads back the same"
    );
    let (early, early_at) = &built.early_last;
    assert_eq!(
        engine.append_wait("t", 0, early.clone()).unwrap(),
        *early_at,
        "{when}: a producer last heard of in the first segment is remembered"
    );
    match engine.append_wait("t", 0, batch(1, 20, 1)) {
        Err(DataError::OutOfOrderSequence {
            expected: 8,
            got: 20,
            ..
        }) => {}
        other => panic!("{when}: expected a gap refused, got {other:?}"),
    }
    let (late, late_at, _) = &built.late_last;
    assert_eq!(
        engine.append_wait("t", 0, late.clone()).unwrap(),
        *late_at,
        "{when}"
    );
}

#[test]
fn start_up_reads_summaries_instead_of_sealed_segments_and_rebuilds_the_same_state() {
    let dir = data_dir();
    let built = build(dir.path());
    let segments = segment_files(dir.path(), "t", 0);
    let sealed = &segments[..segments.len() - 1];
    assert_eq!(
        summary_files(dir.path()),
        sealed.iter().map(|s| summary_of(s)).collect::<Vec<_>>(),
        "each sealed segment has a summary, the one being written none"
    );
    let log = {
        let mut cfg = small_config(dir.path(), 1);
        cfg.check_sealed_segments = true;
        let engine = Engine::open(cfg).unwrap();
        let log = read_all(&engine, "t", 0);
        assert_same(&engine, &log, &built, "every segment read whole");
        log
    };

    // Proof that start-up reads the summaries and not the segments: with the middle of every
    // sealed segment's data wiped (the parts no summary check looks at), the partition still
    // opens, knows where every segment ends, and goes on appending after the last one.
    let wiped = data_dir();
    copy_dir(dir.path(), wiped.path());
    for segment in segment_files(wiped.path(), "t", 0).iter().rev().skip(1) {
        let mut bytes = fs::read(segment).unwrap();
        bytes[8192..64 * 1024].fill(0);
        fs::write(segment, bytes).unwrap();
    }
    let engine = Engine::open(small_config(wiped.path(), 1)).unwrap();
    let (_, late_at, next_seq) = &built.late_last;
    let after = engine.append_wait("t", 0, batch(2, *next_seq, 1)).unwrap();
    assert_eq!(after.first, late_at.last + 1, "appends go on after the log");
    let err = engine.read_wait("t", 0, 0, 64 << 20).unwrap_err();
    assert!(
        matches!(err, DataError::Corruption { .. }),
        "the wiped data is found when read: {err}"
    );
    drop(engine);

    // From the summaries: the same log and the same producers.
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    assert_same(&engine, &log, &built, "from the summaries");
}

#[test]
fn a_missing_damaged_or_mismatched_summary_is_not_believed_and_is_written_again() {
    let dir = data_dir();
    let built = build(dir.path());
    let log = {
        let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
        read_all(&engine, "t", 0)
    };
    let segments = segment_files(dir.path(), "t", 0);
    let [missing, damaged, wrong_end, wrong_offset, ..] = &segments[..] else {
        panic!("at least five segments");
    };
    let originals: Vec<SegmentSummary> = [missing, damaged, wrong_end, wrong_offset]
        .iter()
        .map(|s| decode(s))
        .collect();
    fs::remove_file(summary_of(missing)).unwrap();
    let mut bytes = fs::read(summary_of(damaged)).unwrap();
    bytes[20] ^= 0x01;
    fs::write(summary_of(damaged), bytes).unwrap();
    // Valid summaries that name an end their segment does not have, as one saved before a
    // crash would, had its segment been written on after it: a byte position where no flush
    // ends, and an offset its last flush does not end at.
    let mut s = decode(wrong_end);
    s.durable_end -= 4096;
    s.index.retain(|e| e.pos < s.durable_end);
    fs::write(summary_of(wrong_end), s.encode()).unwrap();
    let mut s = decode(wrong_offset);
    s.next_offset -= 1;
    for p in &mut s.producers {
        p.batches.retain(|b| b.offsets.last < s.next_offset);
    }
    s.producers.retain(|p| !p.batches.is_empty());
    fs::write(summary_of(wrong_offset), s.encode()).unwrap();
    // A summary whose segment is gone, and one beside the segment that ends the log (left
    // by a crash between a roll's summary and its new segment, say).
    let orphan = dir.path().join("topics/t/0/00000000000099999999.sum");
    fs::write(&orphan, b"left behind").unwrap();
    let last = summary_of(segments.last().unwrap());
    fs::write(&last, b"left behind").unwrap();

    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    assert_same(&engine, &log, &built, "with four summaries not believed");
    drop(engine);
    assert!(!orphan.exists(), "a summary without its segment is removed");
    assert!(
        !last.exists(),
        "the segment that ends the log has no summary"
    );
    for (segment, original) in [missing, damaged, wrong_end, wrong_offset]
        .into_iter()
        .zip(originals)
    {
        let written = decode(segment);
        let what = segment.display();
        assert_eq!(written.durable_end, original.durable_end, "{what}");
        assert_eq!(written.next_offset, original.next_offset, "{what}");
        assert_eq!(written.index, original.index, "{what}");
    }
}

/// The summary beside `segment`, which must be valid.
fn decode(segment: &Path) -> SegmentSummary {
    let bytes = fs::read(summary_of(segment)).unwrap();
    SegmentSummary::decode(&bytes, segment_base(segment)).unwrap()
}

#[test]
fn a_summary_that_cannot_be_removed_from_the_segment_ending_the_log_is_a_named_error() {
    let dir = data_dir();
    build(dir.path());
    // A directory where the last segment's summary would be: removing it fails (not with
    // "not found"), and appends after a summary that may still be believed must not go on.
    let last = summary_of(segment_files(dir.path(), "t", 0).last().unwrap());
    fs::create_dir_all(last.join("in the way")).unwrap();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    let err = engine.append_wait("t", 0, batch(3, 0, 1)).unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(err, DataError::PartitionOffline { .. }) && shown.contains("remove summary"),
        "{shown}"
    );
}
