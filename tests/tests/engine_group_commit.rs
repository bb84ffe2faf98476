//! Group commit is real: many concurrent appenders share each fdatasync, and every one of them
//! still gets its own dense offsets.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::{Engine, IoMode};
use keel_tests::answers::{appended, Tagged};
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

    // 64 appenders, each sending its next message only once the previous one is acknowledged
    // (driven from one thread through callbacks, so the test does not hinge on 64 OS threads
    // being scheduled in time).
    let answers = Tagged::new();
    let send = |appender: usize, i: usize| {
        let value = format!("appender {appender} message {i}");
        let record = one_record(value.as_bytes());
        engine.append("gc", 0, record, answers.ticket((appender, i, value)));
    };
    for appender in 0..APPENDERS {
        send(appender, 0);
    }
    let mut acked: Vec<(u64, String)> = Vec::new();
    while acked.len() < APPENDERS * EACH {
        let ((appender, i, value), r) = answers.recv_timeout(Duration::from_secs(30)).unwrap();
        acked.push((appended(r).unwrap().first, value));
        if i + 1 < EACH {
            send(appender, i + 1);
        }
    }
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
fn a_flush_waiting_for_appenders_that_never_come_back_goes_at_its_deadline() {
    lone_append_after_bursts(IoMode::Uring);
}

#[test]
fn a_waiting_flush_goes_at_its_deadline_with_the_portable_backend_too() {
    lone_append_after_bursts(IoMode::Portable);
}

fn lone_append_after_bursts(io: IoMode) {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.commit_linger = Duration::from_millis(100);
    cfg.io = io;
    let engine = Engine::open(cfg).unwrap();
    engine.create_topic("lone", 1).unwrap();
    let answers = Tagged::new();
    let send = |value: String| {
        let record = one_record(value.as_bytes());
        engine.append("lone", 0, record, answers.ticket(value));
    };
    let mut acked = Vec::new();
    let mut rounds = 0;
    // A burst of appends all at once, then one alone. The flush that answers the burst's last
    // ones finds nobody gathered, so the lone append's flush waits for them; nobody else
    // comes, and only its deadline can let it go. (How the burst splits into flushes is the
    // scheduler's call, so rounds repeat until a wait has run out.)
    while engine.stats().holds_expired == 0 {
        rounds += 1;
        assert!(rounds <= 50, "no flush waited in 50 rounds");
        for i in 0..16 {
            send(format!("round {rounds} burst {i}"));
        }
        for _ in 0..16 {
            let (value, r) = answers.recv_timeout(Duration::from_secs(30)).unwrap();
            acked.push((appended(r).unwrap().first, value));
        }
        send(format!("round {rounds} alone"));
        let (value, r) = answers
            .recv_timeout(Duration::from_secs(30))
            .expect("a held flush must go at its deadline");
        acked.push((appended(r).unwrap().first, value));
    }
    let stats = engine.stats();
    assert!(stats.flushes_held >= stats.holds_expired);
    acked.sort();
    let log = read_all(&engine, "lone", 0);
    assert_eq!(log.len(), acked.len());
    for ((offset, value), (base, bytes)) in acked.iter().zip(&log) {
        assert_eq!(offset, base);
        let view = keel_engine::BatchView::verify(bytes).unwrap();
        let record = view.records().next().unwrap().unwrap();
        assert_eq!(record.value, Some(value.as_bytes()));
    }
}

/// Appends streamed from many appenders at once with two flushes allowed in flight: some flushes
/// are written while the one before them syncs, and the offsets stay dense and in order of the
/// answers. With one allowed, none ever is.
#[test]
fn a_second_flush_goes_while_the_first_syncs_only_when_allowed() {
    for (allowed, overlaps) in [(2usize, true), (1, false)] {
        let dir = data_dir();
        let mut cfg = small_config(dir.path(), 1);
        cfg.segment_bytes = 16 << 20;
        cfg.commit_linger = Duration::ZERO;
        cfg.flushes_in_flight = allowed;
        let engine = Engine::open(cfg).unwrap();
        engine.create_topic("pipe", 1).unwrap();
        let answers = Tagged::new();
        let mut sent = 0u64;
        let mut offsets = Vec::new();
        for _ in 0..256 {
            engine.append("pipe", 0, one_record(b"x"), answers.ticket(sent));
            sent += 1;
        }
        while offsets.len() < 4000 {
            let (_, r) = answers.recv_timeout(Duration::from_secs(30)).unwrap();
            offsets.push(appended(r).unwrap().first);
            engine.append("pipe", 0, one_record(b"x"), answers.ticket(sent));
            sent += 1;
        }
        let stats = engine.stats();
        assert!(
            stats.flushes_overlapped <= stats.flushes,
            "{allowed} in flight: {stats:?}"
        );
        assert_eq!(
            stats.flushes_overlapped > 0,
            overlaps,
            "{allowed} in flight: {} of {} flushes overlapped",
            stats.flushes_overlapped,
            stats.flushes
        );
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        assert_eq!(
            offsets, sorted,
            "{allowed} in flight: answered in offset order"
        );
        assert_eq!(sorted, (0..4000).collect::<Vec<_>>());
    }
}
