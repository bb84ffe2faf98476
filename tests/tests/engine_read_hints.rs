//! Reading on from where a read stopped costs one disk read, even in a sealed segment whose
//! index is sparse: the partition remembers where recent reads stopped. Without that, each read
//! walked (and read from disk again) everything from the index entry before it.

use keel_engine::{BatchView, Engine};
use keel_tests::{data_dir, one_record, read_all, small_config};

#[test]
fn reading_on_from_where_a_read_stopped_takes_one_disk_read() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    // Segments big enough that sealing thins their index to an entry every ~100 KiB.
    cfg.segment_bytes = 32 << 20;
    cfg.tail_cache_bytes = 64 << 10;
    let engine = Engine::open(cfg).unwrap();
    engine.create_topic("h", 1).unwrap();
    let value = vec![7u8; 4000];
    let mut appended = 0u64;
    // About 27 MiB: the next appends roll the segment, sealing it.
    while appended < 7000 {
        let mut batch = keel_engine::BatchBuilder::new(0);
        for _ in 0..4 {
            batch.push(None, &value, &[]);
        }
        engine.append_wait("h", 0, batch.build()).unwrap();
        appended += 4;
    }
    let sealed_end = appended;
    while appended < sealed_end + 2000 {
        engine.append_wait("h", 0, one_record(&value)).unwrap();
        appended += 1;
    }
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
