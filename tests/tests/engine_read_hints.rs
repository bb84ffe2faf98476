//! Reading on from where a read stopped costs one disk read, even in a sealed segment whose
//! index is sparse: the partition remembers where recent reads stopped. Without that, each read
//! walked (and read from disk again) everything from the index entry before it. A read stopped by
//! its budget reads no further to find that out, a read landing on an index entry brings in the
//! walk from there with the same disk read, and a group's consumes read ahead and take turns at
//! the disk, about one disk read per megabyte.

use std::time::Duration;

use keel_engine::{BatchView, ConsumeLimits, Engine};
use keel_tests::answers::{consumed, Tagged};
use keel_tests::groups::{ack, consume, join, PATIENCE};
use keel_tests::{data_dir, one_record, read_all, small_config};

/// A partition of topic `topic` holding a sealed segment of about 27 MiB in batches of four
/// 4000-byte messages, then 2000 single messages in the next segment, past a small tail cache;
/// and where the sealed segment ends.
fn sealed_backlog(dir: &std::path::Path, topic: &str) -> (Engine, u64) {
    let mut cfg = small_config(dir, 1);
    cfg.segment_bytes = 32 << 20;
    cfg.tail_cache_bytes = 64 << 10;
    let engine = Engine::open(cfg).unwrap();
    engine.create_topic(topic, 1).unwrap();
    let value = vec![7u8; 4000];
    let mut appended = 0u64;
    // The next appends roll the segment, sealing it.
    while appended < 7000 {
        let mut batch = keel_engine::BatchBuilder::new(0);
        for _ in 0..4 {
            batch.push(None, &value, &[]);
        }
        engine.append_wait(topic, 0, batch.build()).unwrap();
        appended += 4;
    }
    let sealed_end = appended;
    while appended < sealed_end + 2000 {
        engine.append_wait(topic, 0, one_record(&value)).unwrap();
        appended += 1;
    }
    (engine, sealed_end)
}

#[test]
fn reading_on_from_where_a_read_stopped_takes_one_disk_read() {
    let dir = data_dir();
    let (engine, sealed_end) = sealed_backlog(dir.path(), "h");
    let whole = read_all(&engine, "h", 0);

    // Small reads through the sealed segment, each from where the last one stopped.
    let before = engine.stats().disk_reads;
    let (mut from, mut reads, mut got) = (0u64, 0u64, Vec::new());
    while from < sealed_end {
        let r = engine.read_wait("h", 0, from, 16 << 10).unwrap();
        let mut rest = &r.data[..];
        while !rest.is_empty() {
            let view = BatchView::verify(rest).unwrap();
            let len = view.bytes().len();
            got.push((view.base_offset() as u64, rest[..len].to_vec()));
            rest = &rest[len..];
        }
        from = r.next_offset;
        reads += 1;
    }
    let disk_reads = engine.stats().disk_reads - before;
    assert_eq!(
        got,
        whole[..got.len()].to_vec(),
        "the same batches as one read from the start"
    );
    assert!(reads > 100, "{reads} reads");
    assert!(
        disk_reads <= reads + reads / 10,
        "{disk_reads} disk reads for {reads} reads"
    );
}

/// A read whose budget ends before the next batch stops there, even when that batch runs past
/// the bytes read from disk: whether it fits is known from its length, and fetching the rest of
/// it only to leave it out cost every such read a second disk read.
#[test]
fn a_read_stopped_by_its_budget_reads_the_disk_once() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.segment_bytes = 32 << 20;
    cfg.tail_cache_bytes = 64 << 10;
    let engine = Engine::open(cfg).unwrap();
    engine.create_topic("b", 1).unwrap();
    // Batches of about 20,100 bytes, each its own flush of 20 KiB: a budget of 70,000 bytes
    // takes three, and the fourth runs past the 72 KiB one disk read for that budget brings in.
    let value = vec![3u8; 4000];
    for _ in 0..400 {
        let mut batch = keel_engine::BatchBuilder::new(0);
        for _ in 0..5 {
            batch.push(None, &value, &[]);
        }
        engine.append_wait("b", 0, batch.build()).unwrap();
    }
    let whole = read_all(&engine, "b", 0);
    let budget = 70_000;

    let before = engine.stats().disk_reads;
    let (mut from, mut reads, mut got) = (0u64, 0u64, Vec::new());
    while from < 1500 {
        let r = engine.read_wait("b", 0, from, budget).unwrap();
        assert!(
            r.data.len() <= budget,
            "{} bytes for a budget of {budget}",
            r.data.len()
        );
        for view in keel_format::batch::batches(&r.data) {
            let view = view.unwrap();
            got.push((view.base_offset() as u64, view.bytes().to_vec()));
        }
        assert!(r.next_offset > from, "a read moves forward");
        from = r.next_offset;
        reads += 1;
    }
    let disk_reads = engine.stats().disk_reads - before;
    assert_eq!(
        got,
        whole[..got.len()].to_vec(),
        "the same batches as one read from the start"
    );
    assert!(reads > 50, "{reads} reads");
    assert_eq!(
        disk_reads, reads,
        "{disk_reads} disk reads for {reads} reads"
    );
}

/// A partition of 1 KiB messages stored in batches of 64, as clients send them, past the tail
/// cache; and a member of group "g" on it.
fn backlog(dir: &std::path::Path, batches: usize) -> (Engine, u64) {
    let mut cfg = small_config(dir, 1);
    cfg.segment_bytes = 32 << 20;
    cfg.max_flush_bytes = 1 << 20;
    cfg.max_batch_bytes = 256 << 10;
    cfg.tail_cache_bytes = 64 << 10;
    let engine = Engine::open(cfg).unwrap();
    engine.create_topic("c", 1).unwrap();
    let value = vec![5u8; 1024];
    for _ in 0..batches {
        let mut batch = keel_engine::BatchBuilder::new(0);
        for _ in 0..64 {
            batch.push(None, &value, &[]);
        }
        engine.append_wait("c", 0, batch.build()).unwrap();
    }
    let long = Duration::from_secs(60);
    let mut j = join("g", "c", long, long);
    j.max_unacked = 4096;
    let m = engine.join_group(j).unwrap().member;
    (engine, m)
}

/// Member `m`'s first consume of 256 messages, acknowledged: it teaches the group how many
/// bytes a message takes. The (partition, offset) of each.
fn first_consume(engine: &Engine, m: u64) -> Vec<(u32, u64)> {
    let first = consume(engine, "g", "c", m, 256, Duration::ZERO).unwrap();
    let offsets: Vec<(u32, u64)> = first.iter().map(|&(p, o, _)| (p, o)).collect();
    ack(engine, "g", "c", m, &offsets, false).unwrap();
    offsets
}

/// Consumes of 256 messages of 1 KiB in a row read the disk about once a megabyte, not once
/// each: a consume's disk read brings in what follows its answer, and the next consume takes
/// it from memory.
#[test]
fn consumes_in_a_row_read_ahead() {
    let dir = data_dir();
    let (engine, m) = backlog(dir.path(), 40);
    let offsets = first_consume(&engine, m);

    let before = engine.stats().disk_reads;
    let mut consumes = 0u64;
    let mut next = offsets.len() as u64;
    while next + 256 <= 40 * 64 {
        let got = consume(&engine, "g", "c", m, 256, Duration::ZERO).unwrap();
        let offsets: Vec<(u32, u64)> = got.iter().map(|&(p, o, _)| (p, o)).collect();
        let expected: Vec<(u32, u64)> = (next..next + 256).map(|o| (0, o)).collect();
        assert_eq!(offsets, expected, "the next 256 messages, in order");
        ack(&engine, "g", "c", m, &offsets, false).unwrap();
        next += 256;
        consumes += 1;
    }
    let disk_reads = engine.stats().disk_reads - before;
    assert!(consumes >= 8, "{consumes} consumes");
    // About 270 KiB per consume: three or four to a megabyte.
    assert!(
        disk_reads * 3 <= consumes + 2,
        "{disk_reads} disk reads for {consumes} consumes"
    );
}

/// Consumes of several members arriving at once take turns at the disk (those arriving while
/// one reads wait for it, then begin again from what it read ahead), and every message goes to
/// one of them once. How much the turns save under load is the benchmark's to show (issue 28 in
/// `docs/benchmarks-log.md`): here the disk is fast enough that most consumes arrive after the
/// read before them.
#[test]
fn consumes_at_once_take_turns_at_the_disk() {
    let dir = data_dir();
    let (engine, first_member) = backlog(dir.path(), 80);
    let long = Duration::from_secs(60);
    let mut members = vec![first_member];
    for _ in 1..4 {
        let mut j = join("g", "c", long, long);
        j.max_unacked = 4096;
        members.push(engine.join_group(j).unwrap().member);
    }
    let offsets = first_consume(&engine, first_member);
    let mut seen: std::collections::BTreeSet<u64> = offsets.iter().map(|&(_, o)| o).collect();

    let before = engine.stats().disk_reads;
    let answers = Tagged::new();
    let limits = || ConsumeLimits {
        max_messages: 256,
        max_bytes: 4 << 20,
        until: None,
    };
    let mut consumes = 0;
    while seen.len() + 4 * 256 <= 80 * 64 {
        for &m in &members {
            engine.consume("g", "c", m, limits(), answers.ticket(m));
        }
        for _ in 0..4 {
            let (m, answer) = answers.recv_timeout(PATIENCE).unwrap();
            let parts = consumed(answer).unwrap();
            let got: Vec<(u32, u64)> = parts
                .iter()
                .flat_map(|p| p.deliveries.iter().map(move |d| (p.partition, d.offset)))
                .collect();
            assert_eq!(got.len(), 256, "a full answer");
            for &(_, o) in &got {
                assert!(seen.insert(o), "offset {o} delivered twice");
            }
            ack(&engine, "g", "c", m, &got, false).unwrap();
            consumes += 1;
        }
    }
    let disk_reads = engine.stats().disk_reads - before;
    assert_eq!(
        seen,
        (0..seen.len() as u64).collect(),
        "every message from the start, none skipped"
    );
    assert!(consumes >= 16, "{consumes} consumes");
    assert!(
        disk_reads * 3 <= consumes + 2,
        "{disk_reads} disk reads for {consumes} consumes"
    );
}

/// A read no earlier read led to starts at the sealed segment's index entry before its offset,
/// and its one disk read covers the walk from there as well as its budget.
#[test]
fn a_read_from_a_sealed_index_entry_reads_the_disk_once() {
    let dir = data_dir();
    let (engine, sealed_end) = sealed_backlog(dir.path(), "s");

    // From the end backwards, so that no read starts where another stopped.
    let before = engine.stats().disk_reads;
    let mut reads = 0u64;
    let mut from = sealed_end - 1;
    while from > 200 {
        let r = engine.read_wait("s", 0, from, 16 << 10).unwrap();
        let first = keel_format::batch::batches(&r.data)
            .next()
            .unwrap()
            .unwrap();
        assert!(
            first.base_offset() as u64 <= from,
            "the batch holding {from}"
        );
        assert!(
            first.last_offset() as u64 >= from,
            "the batch holding {from}"
        );
        reads += 1;
        from -= 197;
    }
    let disk_reads = engine.stats().disk_reads - before;
    assert!(reads > 30, "{reads} reads");
    assert_eq!(
        disk_reads, reads,
        "{disk_reads} disk reads for {reads} reads"
    );
}
