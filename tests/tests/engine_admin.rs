//! Topics are durable; bad names, unknown topics and partitions, malformed and oversized
//! batches get named errors; a data directory is used by one engine at a time; tmpfs is
//! refused with a clear message.

use keel_engine::filesystem::Filesystem;
use keel_engine::{AdminError, BatchError, DataError, Engine, EngineConfig, FlushSync, OpenError};
use keel_tests::{data_dir, one_record, read_all, small_config};

#[test]
fn topics_are_created_listed_deleted_and_survive_a_restart() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    engine.create_topic("a", 3).unwrap();
    engine.create_topic("b.events", 1).unwrap();
    engine.create_topic("doomed", 2).unwrap();
    engine.append_wait("doomed", 1, one_record(b"x")).unwrap();
    assert!(matches!(
        engine.create_topic("a", 1),
        Err(AdminError::TopicExists(_))
    ));
    engine.delete_topic("doomed").unwrap();
    assert!(
        !dir.path().join("topics/doomed").exists(),
        "a deleted topic's files are gone"
    );
    assert!(matches!(
        engine.append_wait("doomed", 0, one_record(b"x")),
        Err(DataError::UnknownTopic(_))
    ));
    assert!(matches!(
        engine.delete_topic("doomed"),
        Err(AdminError::UnknownTopic(_))
    ));
    engine.append_wait("a", 2, one_record(b"kept")).unwrap();
    drop(engine);
    // Its files went in the background, and were all gone by the time the engine closed.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".deleted-"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    let topics = engine.list_topics();
    assert_eq!(
        topics,
        vec![("a".to_string(), 3), ("b.events".to_string(), 1)]
    );
    assert_eq!(read_all(&engine, "a", 2).len(), 1);
    // A recreated topic starts empty.
    engine.create_topic("doomed", 1).unwrap();
    assert_eq!(read_all(&engine, "doomed", 0).len(), 0);
}

#[test]
fn bad_requests_get_named_errors_and_the_engine_keeps_serving() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    for bad in ["", "has/slash", "..", ".hidden", "white space"] {
        assert!(
            matches!(
                engine.create_topic(bad, 1),
                Err(AdminError::InvalidTopicName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        engine.create_topic("zero", 0),
        Err(AdminError::InvalidPartitionCount { asked: 0, .. })
    ));
    engine.create_topic("t", 2).unwrap();
    assert!(matches!(
        engine.append_wait("nope", 0, one_record(b"x")),
        Err(DataError::UnknownTopic(t)) if t == "nope"
    ));
    assert!(matches!(
        engine.append_wait("t", 2, one_record(b"x")),
        Err(DataError::UnknownPartition { partition: 2, .. })
    ));
    assert!(matches!(
        engine.read_wait("t", 9, 0, 100),
        Err(DataError::UnknownPartition { partition: 9, .. })
    ));
    let mut bad_crc = one_record(b"x");
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert!(matches!(
        engine.append_wait("t", 0, bad_crc),
        Err(DataError::InvalidBatch(BatchError::Crc { .. }))
    ));
    assert!(matches!(
        engine.append_wait("t", 0, vec![1, 2, 3]),
        Err(DataError::InvalidBatch(BatchError::Length { .. }))
    ));
    let huge = one_record(&vec![0u8; 100_000]);
    assert!(matches!(
        engine.append_wait("t", 0, huge),
        Err(DataError::BatchTooLarge { max: 65_536, .. })
    ));
    // None of that consumed offsets or stopped the partition.
    assert_eq!(
        engine
            .append_wait("t", 0, one_record(b"fine"))
            .unwrap()
            .first,
        0
    );
}

#[test]
fn a_data_directory_is_locked_by_its_engine() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    match Engine::open(small_config(dir.path(), 1)) {
        Err(OpenError::DataDirLocked { .. }) => {}
        Err(e) => panic!("expected the lock error, got {e}"),
        Ok(_) => panic!("two engines opened one data directory"),
    }
    drop(engine);
    Engine::open(small_config(dir.path(), 1)).unwrap();
}

#[test]
fn tmpfs_is_refused_with_a_clear_message() {
    let shm = std::path::Path::new("/dev/shm");
    if !keel_engine::filesystem::is_tmpfs(shm) {
        eprintln!("skipping: /dev/shm is not tmpfs on this machine");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    match Engine::open(EngineConfig::new(dir.path())) {
        Err(e @ OpenError::VolatileFilesystem { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("tmpfs") && msg.contains("ext4"), "{msg}");
        }
        Err(e) => panic!("expected the volatile filesystem error, got {e}"),
        Ok(_) => panic!("opened a data directory on tmpfs"),
    }
}

#[test]
fn bad_configurations_are_refused() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.segment_bytes = 1000;
    assert!(matches!(
        Engine::open(cfg),
        Err(OpenError::InvalidConfig(_))
    ));
    let mut cfg = small_config(dir.path(), 1);
    cfg.max_batch_bytes = cfg.max_flush_bytes;
    assert!(matches!(
        Engine::open(cfg),
        Err(OpenError::InvalidConfig(_))
    ));
}

#[test]
fn auto_flush_sync_resolves_from_the_data_directory_s_filesystem() {
    let dir = data_dir();
    let trusted = Filesystem::of(dir.path()).trusts_dsync_writes();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    let expected = if trusted {
        FlushSync::DsyncWrite
    } else {
        FlushSync::Fdatasync
    };
    assert_eq!(engine.config().flush_sync, expected);
}

/// A crash in the middle of a creation leaves a topic directory without its metadata file (the
/// commit point), and one in the middle of a deletion a renamed directory: the next start
/// removes both, and neither topic is listed.
#[test]
fn an_interrupted_creation_or_deletion_is_finished_off_at_start() {
    let dir = data_dir();
    drop(Engine::open(small_config(dir.path(), 1)).unwrap());
    let topics = dir.path().join("topics");
    std::fs::create_dir_all(topics.join("half/0")).unwrap();
    std::fs::write(topics.join("half/meta.tmp"), b"keel-topic 1\n").unwrap();
    std::fs::create_dir_all(topics.join(".deleted-gone-1/0")).unwrap();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    assert!(engine.list_topics().is_empty());
    assert!(!topics.join("half").exists());
    assert!(!topics.join(".deleted-gone-1").exists());
    engine.create_topic("half", 1).unwrap();
}
