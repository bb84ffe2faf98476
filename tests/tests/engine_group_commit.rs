//! Group commit is real: many concurrent appenders share each fdatasync, and every one of them
//! still gets its own dense offsets.

use std::sync::Arc;

use keel_engine::Engine;
use keel_tests::{data_dir, one_record, read_all, small_config};

#[test]
fn sixty_four_appenders_share_fdatasyncs() {
    const APPENDERS: usize = 64;
    const EACH: usize = 40;
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.segment_bytes = 16 << 20;
    let engine = Arc::new(Engine::open(cfg).unwrap());
    engine.create_topic("gc", 1).unwrap();
    let before = engine.stats();

    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        let value = format!("appender {t} message {i}");
                        let r = engine
                            .append_wait("gc", 0, one_record(value.as_bytes()))
                            .unwrap();
                        (r.first, value)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort();

    let stats = engine.stats();
    let appends = stats.appends - before.appends;
    let syncs = stats.syncs - before.syncs;
    assert_eq!(appends, (APPENDERS * EACH) as u64);
    // Each appender waits for its ack before sending again, so a sync per append would be
    // 2,560 syncs. Sharing must cut that by far more than half.
    assert!(
        syncs * 4 <= appends,
        "{syncs} fdatasyncs for {appends} appends: group commit is not sharing syncs"
    );
    assert_eq!(syncs, stats.flushes - before.flushes, "one sync per flush");
    eprintln!("group commit: {appends} appends in {syncs} fdatasyncs");

    // Offsets are dense and each acknowledged message is where its ack said.
    let offsets: Vec<u64> = acked.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..appends).collect::<Vec<_>>());
    let log = read_all(&engine, "gc", 0);
    for ((offset, value), (base, bytes)) in acked.iter().zip(&log) {
        assert_eq!(offset, base);
        let view = keel_engine::BatchView::verify(bytes).unwrap();
        let record = view.records().next().unwrap().unwrap();
        assert_eq!(record.value, Some(value.as_bytes()));
    }
}

#[test]
fn shutdown_answers_every_append_and_keeps_every_acknowledged_one() {
    let dir = data_dir();
    let cfg = small_config(dir.path(), 2);
    let engine = Engine::open(cfg.clone()).unwrap();
    engine.create_topic("s", 2).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..2000u32 {
        let tx = tx.clone();
        let value = format!("message {i}");
        engine.append("s", i % 2, one_record(value.as_bytes()), move |r| {
            let _ = tx.send((i, value, r));
        });
    }
    drop(tx);
    drop(engine); // stops taking requests, finishes what is in flight
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(
        answers.len(),
        2000,
        "every append is answered, none is dropped silently"
    );
    let engine = Engine::open(cfg).unwrap();
    let logs = [read_all(&engine, "s", 0), read_all(&engine, "s", 1)];
    let mut acked = 0;
    for (i, value, r) in answers {
        let Ok(range) = r else { continue };
        acked += 1;
        let (base, bytes) = &logs[(i % 2) as usize][range.first as usize];
        assert_eq!(*base, range.first);
        let view = keel_engine::BatchView::verify(bytes).unwrap();
        assert_eq!(
            view.records().next().unwrap().unwrap().value,
            Some(value.as_bytes())
        );
    }
    assert!(acked > 0);
}
