//! Offset tables under a simulated power cut. Acks are stored into the mapped tables by several
//! threads, each asking for durability every few acks; the power is cut while they run, and
//! every sector written since the last completed sync is then kept or set back at random. After
//! reopening: every ack that was answered as durable is still there, and no offset that was
//! never acknowledged looks acknowledged. An answer given before its sync completed, a sync
//! that did not cover the acks it answered, or a store that could tear the only good copy of a
//! slot would each be caught here. Several rounds on one data directory.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_engine::groups::{GroupSettings, GroupStore, TablePowerCut};
use keel_engine::offsets::WINDOW;
use keel_engine::xorshift::xorshift;
use keel_tests::data_dir;

const PARTITIONS: u32 = 4;
/// Acks per durability request.
const ACKS_PER_SYNC: usize = 5;
/// Durable answers to wait for before the cut.
const ANSWERS_BEFORE_CUT: usize = 300;

struct Round {
    /// (partition, offset) whose durable ack was answered.
    answered: Vec<(u32, u64)>,
    /// Every offset acknowledged, per partition, answered or not.
    acked: Vec<BTreeSet<u64>>,
}

/// Acks offsets of every partition in a shuffled order (one thread per partition) until the
/// power is cut after ANSWERS_BEFORE_CUT durable answers. `acked` is what earlier rounds acked.
fn ack_then_cut_power(dir: &std::path::Path, round: u64, acked: Vec<BTreeSet<u64>>) -> Round {
    let power = TablePowerCut::new();
    let store = GroupStore::open_with_power_cut(dir, 2, 16, Arc::clone(&power)).unwrap();
    let g = store
        .find_or_create("g", "t", GroupSettings::default(), 2, || {
            Ok(vec![0; PARTITIONS as usize])
        })
        .unwrap();
    let answered = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(acked));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for p in 0..PARTITIONS {
            let (store, g, answered, acked, stop) = (&store, &g, &answered, &acked, &stop);
            s.spawn(move || {
                let mut rng = xorshift(round * 1000 + u64::from(p) + 7);
                let mut state = store.load(g, p);
                let mut unanswered = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    // A block of not-yet-acked offsets just above the committed one, in a
                    // random order: the window has gaps, as it does under real consumers.
                    let base = state.committed;
                    let mut block: Vec<u64> =
                        (base..base + 64).filter(|&o| !state.is_acked(o)).collect();
                    for i in (1..block.len()).rev() {
                        block.swap(i, (rng() % (i as u64 + 1)) as usize);
                    }
                    block.truncate(40);
                    for o in block {
                        assert!(state.ack(o), "offset {o} within the window");
                        acked.lock().unwrap()[p as usize].insert(o);
                        store.store(g, p, &state);
                        unanswered.push((p, o));
                        if unanswered.len() == ACKS_PER_SYNC {
                            let batch = std::mem::take(&mut unanswered);
                            let answered = Arc::clone(answered);
                            store.when_durable(
                                g,
                                &[p],
                                Box::new(move |r| {
                                    if r.is_ok() {
                                        answered.lock().unwrap().extend(batch);
                                    }
                                }),
                            );
                        }
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.lock().unwrap().len() < ANSWERS_BEFORE_CUT * (round as usize + 1) / 2 {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} durable answers, {power:?}",
                answered.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        power.cut();
        stop.store(true, Ordering::SeqCst);
    });
    drop(store);
    let lost = power.lose_unsynced(round * 77 + 3).unwrap();
    eprintln!("round {round}: {lost} sectors set back");
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    Round { answered, acked }
}

#[test]
fn durably_answered_acks_survive_a_power_cut_and_nothing_unacked_appears_acked() {
    let dir = data_dir();
    let mut acked = vec![BTreeSet::new(); PARTITIONS as usize];
    let mut answered_total = 0;
    for round in 1..=4 {
        let r = ack_then_cut_power(dir.path(), round, acked);
        acked = r.acked;
        answered_total += r.answered.len();
        let store = GroupStore::open(dir.path(), 2, 16).unwrap();
        let g = store.find("g", "t").expect("the group survives");
        let states: Vec<_> = (0..PARTITIONS).map(|p| store.load(&g, p)).collect();
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
    assert!(answered_total >= ANSWERS_BEFORE_CUT);
}
