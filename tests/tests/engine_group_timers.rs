//! The timers of consumer groups run on the shards' own clocks: an ack deadline passing, a
//! nack's delay ending and a silent member's session ending each redeliver, while the process
//! runs no thread for them (only the shards, the janitor and the groups' helper: the offset
//! tables are synced on the shards' rings). One test in its own process, so the threads counted
//! are this engine's.

use std::time::{Duration, Instant};

use keel_engine::Engine;
use keel_tests::groups::{ack, consume, join, nack};
use keel_tests::{data_dir, one_record, small_config};

const LONG: Duration = Duration::from_secs(30);

/// The names of this process's threads that the engine started.
fn engine_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("keel-"))
        .collect();
    names.sort();
    names
}

/// Consumes until something comes or `within` passes.
fn consume_within(engine: &Engine, member: u64, within: Duration) -> Vec<(u32, u64, u32)> {
    let until = Instant::now() + within;
    loop {
        let got = consume(engine, "g", "t", member, 10, Duration::from_millis(100)).unwrap();
        if !got.is_empty() || Instant::now() > until {
            return got;
        }
    }
}

#[test]
fn ack_deadlines_nack_delays_and_sessions_end_on_the_shards_clocks() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    engine.create_topic("t", 1).unwrap();
    for i in 0..3 {
        engine
            .append_wait("t", 0, one_record(format!("m{i}").as_bytes()))
            .unwrap();
    }
    let ack_timeout = Duration::from_millis(300);
    let a = engine
        .join_group(join("g", "t", ack_timeout, LONG))
        .unwrap()
        .member;

    // Ack deadline: taken, not acknowledged, delivered again once it passes. The clocks are
    // read before each request: the engine's deadline counts from a moment after them.
    let taken = Instant::now();
    let first = consume(&engine, "g", "t", a, 10, Duration::ZERO).unwrap();
    assert_eq!(first, vec![(0, 0, 1), (0, 1, 1), (0, 2, 1)]);
    let again = consume_within(&engine, a, Duration::from_secs(10));
    assert!(taken.elapsed() >= ack_timeout, "not before its deadline");
    assert_eq!(again, vec![(0, 0, 2), (0, 1, 2), (0, 2, 2)]);

    // Nack delay: given back for 400 ms, then delivered again.
    ack(&engine, "g", "t", a, &[(0, 0), (0, 2)], false).unwrap();
    let nacked = Instant::now();
    nack(&engine, "g", "t", a, &[(0, 1)], Duration::from_millis(400)).unwrap();
    let back = consume_within(&engine, a, Duration::from_secs(10));
    assert!(
        nacked.elapsed() >= Duration::from_millis(400),
        "not before its delay"
    );
    assert_eq!(back, vec![(0, 1, 3)]);
    ack(&engine, "g", "t", a, &[(0, 1)], false).unwrap();

    // Session end: a silent member's messages go to the member that is heard from.
    let b = engine
        .join_group(join("g", "t", LONG, Duration::from_millis(300)))
        .unwrap()
        .member;
    engine.append_wait("t", 0, one_record(b"for b")).unwrap();
    let silent_from = Instant::now();
    assert_eq!(
        consume(&engine, "g", "t", b, 10, Duration::ZERO).unwrap(),
        vec![(0, 3, 1)]
    );
    let moved = consume_within(&engine, a, Duration::from_secs(10));
    assert!(
        silent_from.elapsed() >= Duration::from_millis(300),
        "not before its session ends"
    );
    assert_eq!(moved, vec![(0, 3, 2)], "b's message, redelivered to a");
    assert!(
        engine.heartbeat("g", "t", b).is_err(),
        "b is no longer a member"
    );

    let threads = engine_threads();
    let expected = [
        "keel-groups",
        "keel-janitor",
        "keel-shard-0",
        "keel-shard-1",
    ];
    assert_eq!(
        threads, expected,
        "the timers ran on no thread of their own"
    );
}
