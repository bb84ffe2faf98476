//! The portable backend (pwrite + fdatasync on a thread, for hosts that block io_uring) keeps
//! the same promises and writes the same format: what it wrote reads back byte-identical,
//! through either backend, and its appenders still share syncs.

use keel_engine::{Engine, IoMode};
use keel_tests::answers::{appended, Answers};
use keel_tests::{data_dir, one_record, random_batch, read_all, small_config, with_offset, Rng};

#[test]
fn the_portable_backend_round_trips_and_its_files_open_with_io_uring() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 2);
    cfg.io = IoMode::Portable;
    let engine = Engine::open(cfg.clone()).unwrap();
    engine.create_topic("p", 2).unwrap();
    let mut rng = Rng(0x9077);
    let mut expected = [Vec::new(), Vec::new()];
    for i in 0..400u32 {
        let records = 1 + rng.below(8) as usize;
        let batch = random_batch(&mut rng, records, 2000);
        let p = i % 2;
        let r = engine.append_wait("p", p, batch.clone()).unwrap();
        expected[p as usize].push((r.first, with_offset(&batch, r.first)));
    }
    let segments = std::fs::read_dir(dir.path().join("topics/p/0"))
        .unwrap()
        .count();
    assert!(
        segments >= 2,
        "the log should span segments, has {segments} files"
    );
    for p in 0..2 {
        assert_eq!(
            read_all(&engine, "p", p),
            expected[p as usize],
            "partition {p} via the portable backend"
        );
    }
    drop(engine);

    // Reopened with io_uring: same bytes, and appends go on from there.
    cfg.io = IoMode::Uring;
    let engine = Engine::open(cfg.clone()).unwrap();
    for p in 0..2 {
        assert_eq!(
            read_all(&engine, "p", p),
            expected[p as usize],
            "partition {p} via io_uring"
        );
    }
    engine
        .append_wait("p", 0, one_record(b"from io_uring"))
        .unwrap();
    drop(engine);
    cfg.io = IoMode::Portable;
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(read_all(&engine, "p", 0).len(), expected[0].len() + 1);
}

#[test]
fn portable_appenders_share_syncs() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.io = IoMode::Portable;
    let engine = Engine::open(cfg).unwrap();
    engine.create_topic("g", 1).unwrap();
    let answers = Answers::new();
    let total = 2000;
    for i in 0..total {
        let record = one_record(format!("m{i}").as_bytes());
        engine.append("g", 0, record, answers.ticket(i as u64));
    }
    for _ in 0..total {
        let r = answers.recv_timeout(std::time::Duration::from_secs(30));
        appended(r.unwrap()).unwrap();
    }
    let stats = engine.stats();
    assert_eq!(stats.appends, total as u64);
    assert!(
        stats.syncs * 4 <= stats.appends,
        "{} syncs for {} appends",
        stats.syncs,
        stats.appends
    );
    assert_eq!(read_all(&engine, "g", 0).len(), total);
}
