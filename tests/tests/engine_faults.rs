//! Failing writes and syncs poison the partition: nothing not durable is acknowledged, later
//! appends fail too, reads go on. A full disk fails appends without taking the engine down.

use std::sync::Arc;
use std::time::Duration;

use keel_engine::io::FaultPlan;
use keel_engine::testing::{self, TestDisk};
use keel_engine::{DataError, Engine};
use keel_tests::answers::{appended, Answers};
use keel_tests::{data_dir, one_record, read_all, small_config};

fn faulty_engine(dir: &std::path::Path, plan: &Arc<FaultPlan>) -> Engine {
    let cfg = small_config(dir, 1);
    let engine = testing::open(cfg, TestDisk::Faults(Arc::clone(plan))).unwrap();
    engine.create_topic("f", 2).unwrap();
    engine
}

fn assert_poisoned(r: Result<keel_engine::OffsetRange, DataError>, errno: i32) {
    match r {
        Err(DataError::Poisoned { source, path, .. }) => {
            assert_eq!(source.raw_os_error(), Some(errno), "the OS error is kept");
            assert!(
                path.to_string_lossy().ends_with(".seg"),
                "the segment is named: {path:?}"
            );
        }
        other => panic!("expected a poisoned partition, got {other:?}"),
    }
}

fn poisoning_fails_in_flight_and_later_appends(fail: impl Fn(&FaultPlan)) {
    let dir = data_dir();
    let plan = FaultPlan::new();
    let engine = faulty_engine(dir.path(), &plan);
    for i in 0..10 {
        engine
            .append_wait("f", 0, one_record(format!("ok {i}").as_bytes()))
            .unwrap();
    }
    let good = read_all(&engine, "f", 0);

    fail(&plan);
    // A burst in flight together: the failing flush and whatever gathered behind it.
    let answers = Answers::new();
    for i in 0..32 {
        let record = one_record(format!("doomed {i}").as_bytes());
        engine.append("f", 0, record, answers.ticket(i));
    }
    for _ in 0..32 {
        let r = answers
            .recv_timeout(Duration::from_secs(10))
            .expect("every append is answered");
        assert_poisoned(appended(r), libc_eio());
    }
    assert!(plan.injected() >= 1);
    plan.heal();
    // Still poisoned after the disk "recovers": a failed fsync cannot be retried safely.
    assert_poisoned(engine.append_wait("f", 0, one_record(b"later")), libc_eio());
    // Reads go on, and other partitions keep working.
    assert_eq!(read_all(&engine, "f", 0), good);
    engine
        .append_wait("f", 1, one_record(b"other partition"))
        .unwrap();
    drop(engine);

    // After a restart the acknowledged data is intact and the partition takes writes again.
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    let after = read_all(&engine, "f", 0);
    assert_eq!(after[..good.len()], good[..]);
    engine
        .append_wait("f", 0, one_record(b"after restart"))
        .unwrap();
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn a_failed_write_poisons_the_partition() {
    poisoning_fails_in_flight_and_later_appends(|plan| plan.fail_write_in(1));
}

#[test]
fn a_failed_fdatasync_poisons_the_partition() {
    poisoning_fails_in_flight_and_later_appends(|plan| plan.fail_sync_in(1));
}

#[test]
fn no_space_for_a_new_segment_fails_appends_but_not_the_engine() {
    let dir = data_dir();
    let plan = FaultPlan::new();
    let engine = faulty_engine(dir.path(), &plan);
    plan.set_errno(28); // ENOSPC
    plan.fail_allocate_in(1);
    let value = vec![7u8; 30_000];
    let mut acked = Vec::new();
    let err = loop {
        match engine.append_wait("f", 0, one_record(&value)) {
            Ok(r) => acked.push(r.first),
            Err(e) => break e,
        }
        assert!(acked.len() < 100, "the segment should have filled up");
    };
    assert!(matches!(err, DataError::NoSpace { .. }), "got {err}");
    // Still no space: still a clean error, nothing half-acknowledged.
    assert!(matches!(
        engine.append_wait("f", 0, one_record(&value)),
        Err(DataError::NoSpace { .. })
    ));
    plan.heal();
    let r = engine.append_wait("f", 0, one_record(&value)).unwrap();
    assert_eq!(
        r.first,
        acked.len() as u64,
        "the offsets of failed appends are handed out again"
    );
    assert_eq!(read_all(&engine, "f", 0).len(), acked.len() + 1);
}

/// A creation that fails for want of space leaves nothing behind: the topic is not listed, it
/// does not come back at the next start, and once there is room it can be created afresh.
#[test]
fn a_topic_creation_that_fails_leaves_nothing_behind() {
    let dir = data_dir();
    let plan = FaultPlan::new();
    let engine = faulty_engine(dir.path(), &plan);
    plan.set_errno(28); // ENOSPC
                        // The second partition's first segment finds no room, after the first one's was made.
    plan.fail_allocate_in(2);
    let err = engine.create_topic("nospace", 2).unwrap_err();
    assert!(
        matches!(err, keel_engine::AdminError::NoSpace { .. }),
        "got {err}"
    );
    assert!(engine.partitions("nospace").is_err());
    assert!(!dir.path().join("topics/nospace").exists());
    assert_eq!(engine.list_topics(), vec![("f".to_string(), 2)]);
    plan.heal();
    drop(engine);

    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    assert_eq!(
        engine.list_topics(),
        vec![("f".to_string(), 2)],
        "the failed topic came back"
    );
    engine.create_topic("nospace", 2).unwrap();
    let r = engine
        .append_wait("nospace", 1, one_record(b"fits"))
        .unwrap();
    assert_eq!(r.first, 0);
}
