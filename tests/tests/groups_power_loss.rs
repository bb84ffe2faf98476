//! Offset tables under a simulated power cut, with the acks going through the engine: members
//! consume and acknowledge in a shuffled order, each ack asking to be answered once durable,
//! which the shard owning the partition does after its table's sync through its ring completes.
//! The power is cut while they run (the same crash simulator as the logs', `CrashPlan`); every
//! sector of the tables written since the last completed sync is then kept or set back at
//! random. After reopening: every ack that was answered as
//! durable is still there, and no offset that was never acknowledged looks acknowledged. An
//! answer given before its sync completed, a sync that did not cover the acks it answered, or a
//! store that could tear the only good copy of a slot would each be caught here. Several rounds
//! on one data directory.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_engine::groups::GroupStore;
use keel_engine::io::{CrashPlan, SystemFs};
use keel_engine::offsets::WINDOW;
use keel_engine::testing::{self, TestDisk};
use keel_engine::xorshift::xorshift;
use keel_engine::Engine;
use keel_tests::answers::{settled, Answers};
use keel_tests::groups::{consume, join, PATIENCE};
use keel_tests::{data_dir, one_record, small_config};

const PARTITIONS: u32 = 4;
const MESSAGES_PER_PARTITION: u64 = 3000;
/// Acks per durable ack request.
const ACKS_PER_REQUEST: usize = 5;
/// Durable answers to wait for before the cut.
const ANSWERS_BEFORE_CUT: usize = 300;
const MEMBERS: usize = 4;
/// Power cuts, each on the directory the last one left. A build answering acks before their
/// sync is caught in most single rounds (a cut keeps each unsynced sector at random): six make
/// missing it unlikely.
const ROUNDS: u64 = 6;

struct Round {
    /// (partition, offset) whose durable ack was answered.
    answered: Vec<(u32, u64)>,
    /// Every offset acknowledged, per partition, answered or not.
    acked: Vec<BTreeSet<u64>>,
}

/// One member: consumes, shuffles what it got, acks it in requests of ACKS_PER_REQUEST asking
/// for durability, until `stop`.
fn member(
    engine: &Engine,
    seed: u64,
    stop: &AtomicBool,
    answered: &Mutex<Vec<(u32, u64)>>,
    acked: &Mutex<Vec<BTreeSet<u64>>>,
) {
    let long = Duration::from_secs(60);
    let Ok(joined) = engine.join_group(join("g", "t", long, long)) else {
        return;
    };
    let m = joined.member;
    let mut next = xorshift(seed);
    while !stop.load(Ordering::SeqCst) {
        let Ok(got) = consume(engine, "g", "t", m, 40, Duration::from_millis(50)) else {
            return;
        };
        let mut offsets: Vec<(u32, u64)> = got.iter().map(|&(p, o, _)| (p, o)).collect();
        for i in (1..offsets.len()).rev() {
            offsets.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        for chunk in offsets.chunks(ACKS_PER_REQUEST) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            {
                let mut acked = acked.lock().unwrap();
                for &(p, o) in chunk {
                    acked[p as usize].insert(o);
                }
            }
            let spans: Vec<(u32, u64, u64)> = chunk.iter().map(|&(p, o)| (p, o, o)).collect();
            let answers = Answers::new();
            engine.ack("g", "t", m, &spans, true, answers.ticket(0));
            match answers.recv_timeout(PATIENCE).map(settled) {
                Ok(Ok(())) => answered.lock().unwrap().extend_from_slice(chunk),
                // Failed after the cut: not answered as durable.
                Ok(Err(_)) => {}
                Err(_) => panic!("an ack was never answered"),
            }
        }
    }
}

/// Acks through the engine until the power is cut after ANSWERS_BEFORE_CUT durable answers.
fn ack_then_cut_power(dir: &std::path::Path, round: u64, acked: Vec<BTreeSet<u64>>) -> Round {
    let power = CrashPlan::new();
    let cfg = small_config(dir, 2);
    let engine = testing::open(cfg, TestDisk::Crashes(Arc::clone(&power))).unwrap();
    if round == 1 {
        engine.create_topic("t", PARTITIONS).unwrap();
        for p in 0..PARTITIONS {
            for _ in 0..MESSAGES_PER_PARTITION {
                engine.append_wait("t", p, one_record(b"m")).unwrap();
            }
        }
    }
    let answered = Mutex::new(Vec::new());
    let acked = Mutex::new(acked);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 0..MEMBERS {
            let (engine, stop, answered, acked) = (&engine, &stop, &answered, &acked);
            s.spawn(move || member(engine, round * 100 + i as u64 + 1, stop, answered, acked));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.lock().unwrap().len() < ANSWERS_BEFORE_CUT {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} durable answers, {power:?}",
                answered.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        power.crash();
        stop.store(true, Ordering::SeqCst);
    });
    drop(engine);
    let lost = power.lose_unsynced_writes(round * 77 + 3).unwrap();
    eprintln!("round {round}: {lost} writes and sectors set back");
    Round {
        answered: answered.into_inner().unwrap(),
        acked: acked.into_inner().unwrap(),
    }
}

#[test]
fn durably_answered_acks_survive_a_power_cut_and_nothing_unacked_appears_acked() {
    let dir = data_dir();
    let mut acked = vec![BTreeSet::new(); PARTITIONS as usize];
    let mut answered_total = 0;
    for round in 1..=ROUNDS {
        let r = ack_then_cut_power(dir.path(), round, acked);
        acked = r.acked;
        answered_total += r.answered.len();
        let (store, maps) =
            GroupStore::open(dir.path(), 2, 16_384, None, Arc::new(SystemFs)).unwrap();
        let g = store.find("g", "t").expect("the group survives");
        let states: Vec<_> = (0..PARTITIONS).map(|p| store.load(&maps, &g, p)).collect();
        for &(p, o) in &r.answered {
            assert!(
                states[p as usize].is_acked(o),
                "round {round}: partition {p} offset {o} was answered as durable, and is lost \
                 (committed {})",
                states[p as usize].committed
            );
        }
        for (p, state) in states.iter().enumerate() {
            let top = acked[p].last().copied().unwrap_or(0) + WINDOW as u64 + 1;
            for o in 0..top {
                assert!(
                    !state.is_acked(o) || acked[p].contains(&o),
                    "round {round}: partition {p} offset {o} looks acknowledged and never was"
                );
            }
        }
    }
    assert!(answered_total >= ROUNDS as usize * ANSWERS_BEFORE_CUT);
}
