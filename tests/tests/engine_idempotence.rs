//! Idempotent producers through the engine: a batch sent again is answered with its first
//! offsets and not written twice (durable already, or still in its flush); a gap and an old
//! epoch are refused without writing; and the state is rebuilt from the log on reopen.

use keel_engine::{BatchBuilder, DataError, Engine, OffsetRange};
use keel_tests::answers::{appended, Answers};
use keel_tests::{data_dir, read_all, small_config};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(20);

/// A batch of `records` messages from producer 42 at `epoch`, first sequence `seq`.
fn batch(epoch: i16, seq: i32, records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000).producer(42, epoch, seq);
    for i in 0..records {
        b.push(None, format!("e{epoch} s{seq} r{i}").as_bytes(), &[]);
    }
    b.build()
}

fn range(first: u64, last: u64) -> OffsetRange {
    OffsetRange { first, last }
}

/// Appends to partition `p` of topic "t", waiting until durable.
fn put(engine: &Engine, p: u32, batch: Vec<u8>) -> OffsetRange {
    engine.append_wait("t", p, batch).unwrap()
}

#[test]
fn a_batch_sent_again_gets_its_first_offsets_and_is_stored_once() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    engine.create_topic("t", 1).unwrap();
    assert_eq!(put(&engine, 0, batch(0, 0, 3)), range(0, 2));
    assert_eq!(put(&engine, 0, batch(0, 3, 2)), range(3, 4));
    // Durable already: answered at once with the first offsets.
    assert_eq!(put(&engine, 0, batch(0, 0, 3)), range(0, 2));
    assert_eq!(put(&engine, 0, batch(0, 3, 2)), range(3, 4));
    // Sent again and again while the first is still being made durable (the copies after
    // the first arrive while its flush is gathered or written): one write, every copy
    // answered with its offsets once they are durable.
    let answers = Answers::new();
    for tag in 0..20 {
        engine.append("t", 0, batch(0, 5, 4), answers.ticket(tag));
    }
    for _ in 0..20 {
        let c = answers.expect(PATIENCE);
        assert_eq!(appended(c.answer).unwrap(), range(5, 8), "answer {}", c.tag);
    }
    // A producer that is not idempotent is never deduplicated.
    let plain = |v: &[u8]| {
        let mut b = BatchBuilder::new(0);
        b.push(None, v, &[]);
        b.build()
    };
    assert_eq!(
        engine.append_wait("t", 0, plain(b"x")).unwrap(),
        range(9, 9)
    );
    assert_eq!(
        engine.append_wait("t", 0, plain(b"x")).unwrap(),
        range(10, 10)
    );
    let stored: Vec<u64> = read_all(&engine, "t", 0).iter().map(|(o, _)| *o).collect();
    assert_eq!(stored, vec![0, 3, 5, 9, 10], "each batch once");
}

#[test]
fn a_gap_and_an_old_epoch_are_refused_and_nothing_is_written() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    engine.create_topic("t", 1).unwrap();
    engine.append_wait("t", 0, batch(1, 0, 2)).unwrap();
    match engine.append_wait("t", 0, batch(1, 5, 1)) {
        Err(DataError::OutOfOrderSequence {
            producer_id: 42,
            expected: 2,
            got: 5,
        }) => {}
        other => panic!("a gap: {other:?}"),
    }
    match engine.append_wait("t", 0, batch(0, 2, 1)) {
        Err(DataError::ProducerFenced {
            producer_id: 42,
            epoch: 0,
            current: 1,
        }) => {}
        other => panic!("an old epoch: {other:?}"),
    }
    match engine.append_wait("t", 0, batch(2, 7, 1)) {
        Err(DataError::OutOfOrderSequence { expected: 0, .. }) => {}
        other => panic!("a new epoch starts at 0: {other:?}"),
    }
    assert_eq!(
        read_all(&engine, "t", 0).len(),
        1,
        "nothing refused was written"
    );
    assert_eq!(put(&engine, 0, batch(1, 2, 1)), range(2, 2));
    assert_eq!(put(&engine, 0, batch(2, 0, 1)), range(3, 3));
    match engine.append_wait("t", 0, batch(1, 3, 1)) {
        Err(DataError::ProducerFenced { current: 2, .. }) => {}
        other => panic!("fenced by the new epoch: {other:?}"),
    }
}

#[test]
fn the_producers_state_is_rebuilt_from_the_log_on_reopen() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 2);
    // Small segments, so the producer's batches span several.
    cfg.segment_bytes = 64 << 10;
    cfg.max_flush_bytes = 32 << 10;
    cfg.max_batch_bytes = 16 << 10;
    {
        let engine = Engine::open(cfg.clone()).unwrap();
        engine.create_topic("t", 2).unwrap();
        let mut seq = 0;
        for _ in 0..200 {
            engine.append_wait("t", 1, batch(3, seq, 10)).unwrap();
            seq += 10;
        }
    }
    let engine = Engine::open(cfg).unwrap();
    // The last batch, sent again after the restart: its first offsets, not a second copy.
    assert_eq!(put(&engine, 1, batch(3, 1990, 10)), range(1990, 1999));
    match engine.append_wait("t", 1, batch(3, 2010, 1)) {
        Err(DataError::OutOfOrderSequence { expected: 2000, .. }) => {}
        other => panic!("the sequence goes on from the log: {other:?}"),
    }
    match engine.append_wait("t", 1, batch(2, 0, 1)) {
        Err(DataError::ProducerFenced { current: 3, .. }) => {}
        other => panic!("the epoch comes back from the log: {other:?}"),
    }
    assert_eq!(put(&engine, 1, batch(3, 2000, 1)), range(2000, 2000));
    assert_eq!(read_all(&engine, "t", 1).len(), 201);
}
