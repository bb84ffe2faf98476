//! Consumer groups as shard state, through the engine itself: a topic with more partitions than
//! shards drained by one member, each message once; a consume waiting on every shard answered by
//! a message on either; an ack naming partitions of two shards; and the timers (ack timeout,
//! nack delay, session end) firing on the shards' clocks, with no thread of their own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel_engine::{shard_for, DataError, Engine, GroupError};
use keel_tests::answers::{consumed, Answers};
use keel_tests::groups::{ack, consume, join};
use keel_tests::{data_dir, one_record, small_config};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn one_member_drains_a_topic_with_more_partitions_than_shards_each_message_once() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    engine.create_topic("t", 5).unwrap();
    let mut produced = BTreeSet::new();
    for i in 0..40u64 {
        for p in 0..5 {
            let r = engine
                .append_wait("t", p, one_record(format!("{p}-{i}").as_bytes()))
                .unwrap();
            produced.insert((p, r.first));
        }
    }
    let m = engine
        .join_group(join("g", "t", LONG, LONG))
        .unwrap()
        .member;
    let mut seen = BTreeSet::new();
    let mut partitions_per_answer = BTreeSet::new();
    while seen.len() < produced.len() {
        let got = consume(&engine, "g", "t", m, 64, Duration::ZERO).unwrap();
        assert!(!got.is_empty(), "messages left but none delivered");
        partitions_per_answer.insert(got.iter().map(|d| d.0).collect::<BTreeSet<_>>().len());
        let offsets: Vec<(u32, u64)> = got.iter().map(|&(p, o, _)| (p, o)).collect();
        for &(p, o, count) in &got {
            assert_eq!(count, 1, "a first delivery");
            assert!(seen.insert((p, o)), "{p}/{o} delivered twice");
        }
        ack(&engine, "g", "t", m, &offsets, true).unwrap();
    }
    assert_eq!(seen, produced);
    assert!(
        partitions_per_answer.iter().any(|&n| n > 1),
        "an answer carries partitions of both shards"
    );
    assert!(consume(&engine, "g", "t", m, 64, Duration::ZERO)
        .unwrap()
        .is_empty());
    let metrics = engine.group_metrics();
    let committed: Vec<u64> = metrics[0].partitions.iter().map(|p| p.committed).collect();
    assert_eq!(
        committed,
        vec![40; 5],
        "every partition acknowledged to its end"
    );
}

#[test]
fn a_waiting_consume_is_answered_by_a_message_on_either_shard() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    engine.create_topic("t", 4).unwrap();
    let on_shard = |s: usize| (0..4).find(|&p| shard_for("t", p, 2) == s).unwrap();
    let m = engine
        .join_group(join("g", "t", LONG, LONG))
        .unwrap()
        .member;
    for shard in [0, 1, 0] {
        let p = on_shard(shard);
        let started = Instant::now();
        let producer = std::thread::scope(|s| {
            let engine = &engine;
            let producer = s.spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                engine.append_wait("t", p, one_record(b"late")).unwrap()
            });
            let got = consume(engine, "g", "t", m, 10, Duration::from_secs(10)).unwrap();
            let appended = producer.join().unwrap();
            assert_eq!(
                got,
                vec![(p, appended.first, 1)],
                "the message that arrived"
            );
            appended
        });
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "answered when the message on shard {shard} arrived, not at the deadline: {took:?}"
        );
        ack(&engine, "g", "t", m, &[(p, producer.first)], false).unwrap();
    }
    let empty_at = Instant::now();
    assert!(
        consume(&engine, "g", "t", m, 10, Duration::from_millis(300))
            .unwrap()
            .is_empty()
    );
    assert!(
        empty_at.elapsed() >= Duration::from_millis(300),
        "waited until its deadline"
    );
}

#[test]
fn an_ack_naming_partitions_of_both_shards_is_answered_once_both_are_durable() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    engine.create_topic("t", 2).unwrap();
    assert_ne!(shard_for("t", 0, 2), shard_for("t", 1, 2));
    for p in 0..2 {
        engine.append_wait("t", p, one_record(b"x")).unwrap();
    }
    let m = engine
        .join_group(join("g", "t", LONG, LONG))
        .unwrap()
        .member;
    let got = consume(&engine, "g", "t", m, 10, Duration::ZERO).unwrap();
    assert_eq!(got.len(), 2);
    ack(&engine, "g", "t", m, &[(0, 0), (1, 0)], true).unwrap();
    let committed: Vec<u64> = engine.group_metrics()[0]
        .partitions
        .iter()
        .map(|p| p.committed)
        .collect();
    assert_eq!(committed, vec![1, 1]);
    assert!(matches!(
        ack(&engine, "g", "t", m, &[(7, 0)], true),
        Err(GroupError::Data(DataError::UnknownPartition {
            partition: 7,
            ..
        }))
    ));
    assert!(matches!(
        ack(&engine, "nobody", "t", m, &[(0, 0)], true),
        Err(GroupError::UnknownMember { .. })
    ));
}

#[test]
fn a_group_s_acks_survive_a_change_of_shard_count_and_its_slots_follow_the_partitions() {
    let dir = data_dir();
    let mut acked = BTreeSet::new();
    for (round, shards) in [2, 1, 3, 2].into_iter().enumerate() {
        let engine = Engine::open(small_config(dir.path(), shards)).unwrap();
        if round == 0 {
            engine.create_topic("t", 4).unwrap();
            for p in 0..4 {
                for _ in 0..10 {
                    engine.append_wait("t", p, one_record(b"x")).unwrap();
                }
            }
        }
        let m = engine
            .join_group(join("g", "t", LONG, LONG))
            .unwrap()
            .member;
        let got = consume(&engine, "g", "t", m, 1000, Duration::ZERO).unwrap();
        let delivered: BTreeSet<(u32, u64)> = got.iter().map(|&(p, o, _)| (p, o)).collect();
        assert!(
            delivered.is_disjoint(&acked),
            "{shards} shards: nothing durably acknowledged comes back"
        );
        assert_eq!(
            delivered.len() + acked.len(),
            40,
            "{shards} shards: every other one does"
        );
        // Two more of each partition, so every partition's slot is written under every count.
        let some: Vec<(u32, u64)> = (0..4)
            .flat_map(|p| delivered.iter().copied().filter(move |d| d.0 == p).take(2))
            .collect();
        ack(&engine, "g", "t", m, &some, true).unwrap();
        acked.extend(some);
        engine.shutdown();
    }
}

#[test]
fn a_waiting_consume_is_answered_when_the_engine_stops() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    engine.create_topic("t", 2).unwrap();
    let m = engine
        .join_group(join("g", "t", LONG, LONG))
        .unwrap()
        .member;
    let answers = Answers::new();
    let limits = keel_engine::ConsumeLimits {
        max_messages: 10,
        max_bytes: 1 << 20,
        until: Some(Instant::now() + Duration::from_secs(60)),
    };
    engine.consume("g", "t", m, limits, answers.ticket(0));
    assert!(
        answers.recv_timeout(Duration::from_millis(200)).is_err(),
        "it waits while the engine runs"
    );
    let stopping = Instant::now();
    engine.shutdown();
    let answer = consumed(answers.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert!(answer.is_empty());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "not at its deadline"
    );
}
