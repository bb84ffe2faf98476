//! Appends across partitions and segments come back byte-identical, at the offsets returned at
//! append time, before and after a reopen, from memory and from disk.

use std::collections::BTreeMap;

use keel_engine::{DataError, Engine};
use keel_tests::answers::{appended, Answers};
use keel_tests::{data_dir, random_batch, read_all, small_config, with_offset, Rng};

type Expected = BTreeMap<u32, Vec<(u64, Vec<u8>)>>;

fn fill(
    engine: &Engine,
    topic: &str,
    partitions: u32,
    batches: usize,
    rng: &mut Rng,
    expected: &mut Expected,
) {
    for _ in 0..batches {
        let p = rng.below(u64::from(partitions)) as u32;
        let records = 1 + rng.below(20) as usize;
        let max_value = [10, 500, 3000][rng.below(3) as usize];
        let batch = random_batch(rng, records, max_value);
        let range = engine.append_wait(topic, p, batch.clone()).expect("append");
        assert_eq!(range.last - range.first + 1, records as u64);
        let log = expected.entry(p).or_default();
        let next = log.last().map_or(0, |(o, b)| {
            o + keel_engine::BatchView::verify(b).unwrap().record_count() as u64
        });
        assert_eq!(range.first, next, "offsets are dense per partition");
        log.push((range.first, with_offset(&batch, range.first)));
    }
}

fn check(engine: &Engine, topic: &str, expected: &Expected) {
    for (&p, log) in expected {
        let got = read_all(engine, topic, p);
        assert_eq!(got.len(), log.len(), "partition {p}: batch count");
        for (g, e) in got.iter().zip(log) {
            assert_eq!(g.0, e.0, "partition {p}: offset");
            assert!(g.1 == e.1, "partition {p}: batch at offset {} differs", e.0);
        }
    }
}

#[test]
fn batches_round_trip_across_segments_partitions_and_reopen() {
    let dir = data_dir();
    let mut rng = Rng(0x5eed_0001);
    let cfg = small_config(dir.path(), 2);
    let engine = Engine::open(cfg.clone()).unwrap();
    engine.create_topic("events", 3).unwrap();
    let mut expected = Expected::new();
    fill(&engine, "events", 3, 600, &mut rng, &mut expected);
    check(&engine, "events", &expected);
    drop(engine);

    let segments = std::fs::read_dir(dir.path().join("topics/events/0"))
        .unwrap()
        .count();
    assert!(
        segments >= 3,
        "the log should span several segments, has {segments} files"
    );

    let engine = Engine::open(cfg).unwrap();
    check(&engine, "events", &expected);
    assert!(
        engine.stats().disk_reads > 0,
        "after a reopen the reads come from disk"
    );
    // Appends continue densely after the recovered end, and everything survives a reopen.
    fill(&engine, "events", 3, 50, &mut rng, &mut expected);
    drop(engine);
    let engine = Engine::open(small_config(dir.path(), 3)).unwrap();
    check(&engine, "events", &expected);
}

#[test]
fn reads_without_a_tail_cache_come_from_disk_and_honour_offsets_and_limits() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.tail_cache_bytes = 0;
    let engine = Engine::open(cfg).unwrap();
    engine.create_topic("t", 1).unwrap();
    let mut rng = Rng(7);
    let mut expected = Expected::new();
    fill(&engine, "t", 1, 300, &mut rng, &mut expected);
    let log = &expected[&0];
    check(&engine, "t", &expected);
    assert!(engine.stats().disk_reads > 0);

    // From an offset inside a batch: that whole batch comes first.
    let (base, bytes) = &log[100];
    let count = keel_engine::BatchView::verify(bytes)
        .unwrap()
        .record_count() as u64;
    let r = engine.read_wait("t", 0, base + count - 1, 1).unwrap();
    assert_eq!(&r.data, bytes, "one whole batch, even over max_bytes");
    assert_eq!(r.next_offset, base + count);

    // The high watermark is the end; beyond it is out of range.
    let end = r.high_watermark;
    assert!(engine.read_wait("t", 0, end, 1000).unwrap().data.is_empty());
    assert!(matches!(
        engine.read_wait("t", 0, end + 1, 1000),
        Err(DataError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn data_survives_rolls_that_race_the_zeroing_of_the_next_segment() {
    // Segments of 4 MiB are zeroed in 256 KiB chunks; hundreds of appends in flight at once
    // roll into the next segment while its zeroing is still running.
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.segment_bytes = 4 << 20;
    cfg.max_batch_bytes = 256 * 1024;
    cfg.max_flush_bytes = 1 << 20;
    let engine = Engine::open(cfg.clone()).unwrap();
    engine.create_topic("z", 1).unwrap();
    let mut rng = Rng(0x2e20);
    let answers = Answers::new();
    let mut sent = Vec::new();
    for i in 0..2000 {
        let batch = random_batch(&mut rng, 4, 3000);
        engine.append("z", 0, batch.clone(), answers.ticket(i));
        sent.push(batch);
    }
    let mut expected = vec![(0, Vec::new()); sent.len()];
    for _ in 0..sent.len() {
        let c = answers.expect(std::time::Duration::from_secs(30));
        let i = c.tag as usize;
        let first = appended(c.answer).unwrap().first;
        expected[i] = (first, with_offset(&sent[i], first));
    }
    expected.sort();
    let segments = std::fs::read_dir(dir.path().join("topics/z/0"))
        .unwrap()
        .count();
    assert!(
        segments >= 4,
        "expected several rolls, found {segments} files"
    );
    assert_eq!(read_all(&engine, "z", 0), expected);
    drop(engine);
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(read_all(&engine, "z", 0), expected);
}
