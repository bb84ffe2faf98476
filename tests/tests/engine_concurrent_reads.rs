//! Readers following a log while it is appended to (through segment rolls, tail-cache
//! evictions and disk reads) only ever see whole, verified batches, at dense offsets, with the
//! exact bytes appended there, and never beyond the durable end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::Engine;
use keel_format::batch;
use keel_tests::answers::{appended, Answers};
use keel_tests::{crash_value, data_dir, one_record, small_config};

/// The sequence number an appended value carries ("round 0 partition P seq N ...").
fn seq_of(value: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(&value[..value.len().min(64)]).into_owned();
    let mut words = text.split(' ');
    words
        .position(|w| w == "seq")
        .expect("a value from this test");
    words
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a sequence number")
}

#[test]
fn readers_following_appends_see_only_whole_durable_batches_in_order() {
    const APPENDS: u64 = 6000;
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 2);
    cfg.tail_cache_bytes = 64 * 1024; // small: lagging readers go to disk
    let engine = Arc::new(Engine::open(cfg).unwrap());
    engine.create_topic("cr", 2).unwrap();
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..2u32)
        .map(|partition| {
            let (engine, done) = (Arc::clone(&engine), Arc::clone(&done));
            std::thread::spawn(move || {
                let (mut next, mut last_hw, mut seen) = (0u64, 0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "reader {partition} stuck at {next}"
                    );
                    let finished = done.load(Ordering::SeqCst);
                    let r = engine.read_wait("cr", partition, next, 3000).unwrap();
                    assert!(r.high_watermark >= last_hw, "the high watermark went back");
                    last_hw = r.high_watermark;
                    for view in batch::batches(&r.data) {
                        let view = view.expect("a read returned a batch that does not verify");
                        assert_eq!(
                            view.base_offset() as u64,
                            next,
                            "partition {partition}: offsets are dense"
                        );
                        assert!(
                            (view.last_offset() as u64) < r.high_watermark,
                            "read past the durable end"
                        );
                        let value = view.records().next().unwrap().unwrap().value.unwrap();
                        assert_eq!(
                            value,
                            &crash_value(0, partition, seq_of(value))[..],
                            "bytes differ at {next}"
                        );
                        next = view.last_offset() as u64 + 1;
                        seen += 1;
                    }
                    if finished && next == r.high_watermark {
                        return seen;
                    }
                    if r.data.is_empty() {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        })
        .collect();

    let answers = Answers::new();
    let send = |seq: u64| {
        let partition = (seq % 2) as u32;
        let record = one_record(&crash_value(0, partition, seq));
        engine.append("cr", partition, record, answers.ticket(seq));
    };
    for seq in 0..256 {
        send(seq);
    }
    for seq in 256..APPENDS + 256 {
        appended(answers.recv_timeout(Duration::from_secs(30)).unwrap()).unwrap();
        if seq < APPENDS {
            send(seq);
        }
    }
    done.store(true, Ordering::SeqCst);
    let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(seen, APPENDS, "the readers saw every append exactly once");
    assert!(engine.stats().disk_reads > 0, "some reads came from disk");
}
