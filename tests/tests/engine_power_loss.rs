//! Promises 1 and 2 under a simulated power cut: the engine runs on the real disk, but every
//! write that no completed fdatasync covered may be undone afterwards (lost whole, kept, or
//! torn sector by sector). An append acknowledged before its sync completed would be caught
//! here: its bytes could be rolled back. Several rounds on one data directory, each with a
//! different crash point and a different choice of what is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::aligned::{AlignedBuf, BLOCK_BYTES};
use keel_engine::io::{Block, CrashingDisk, Disk, FileId, IoKind, SyncAfter, UringDisk};
use keel_engine::io::{CrashPlan, FaultPlan};
use keel_engine::testing::{self, TestDisk};
use keel_engine::{BatchView, Engine, FlushSync};
use keel_tests::answers::{appended, Answers, Tagged};
use keel_tests::{crash_value, data_dir, log_start, one_record, read_from, small_config};

const IN_FLIGHT: u64 = 256;

/// Appends with IN_FLIGHT appends in flight until `acks` were acknowledged, then cuts the power
/// and stops the engine. Returns what was acknowledged: (partition, offset, value).
fn append_then_cut_power(
    dir: &std::path::Path,
    round: u32,
    acks: usize,
    plan: &Arc<CrashPlan>,
) -> Vec<(u32, u64, Vec<u8>)> {
    append_then_cut_power_with(config(dir, None), round, acks, plan).0
}

/// The tests' engine configuration, keeping `retention` bytes per partition if given.
fn config(dir: &std::path::Path, retention: Option<u64>) -> keel_engine::EngineConfig {
    let mut cfg = small_config(dir, 2);
    cfg.retention_bytes = retention;
    cfg
}

/// [`append_then_cut_power`] with any configuration; also returns the engine's counters at
/// the cut.
fn append_then_cut_power_with(
    cfg: keel_engine::EngineConfig,
    round: u32,
    acks: usize,
    plan: &Arc<CrashPlan>,
) -> (Vec<(u32, u64, Vec<u8>)>, keel_engine::EngineStats) {
    let engine = testing::open(cfg, TestDisk::Crashes(Arc::clone(plan))).unwrap();
    if engine.partitions("pl").is_err() {
        engine.create_topic("pl", 2).unwrap();
    }
    let mut acked = Vec::new();
    let answers = Tagged::new();
    let send = |seq: u64| {
        let partition = (seq % 2) as u32;
        let value = crash_value(round, partition, seq);
        let record = one_record(&value);
        engine.append("pl", partition, record, answers.ticket((partition, value)));
    };
    let mut next = 0;
    while next < IN_FLIGHT {
        send(next);
        next += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < acks {
        let Ok(((partition, value), r)) =
            answers.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            panic!(
                "round {round}: stalled at {} acks, stats {:?}",
                acked.len(),
                engine.stats()
            );
        };
        if let Ok(range) = appended(r) {
            acked.push((partition, range.first, value));
        }
        send(next);
        next += 1;
    }
    let stats = engine.stats();
    plan.crash();
    drop(engine); // in-flight appends now fail: the disk is gone
    (acked, stats)
}

/// Every acknowledged (partition, offset, value) the log still keeps (all of them, without
/// retention) is in the log, at that offset, byte for byte. Returns how many were checked.
fn assert_all_survive(engine: &Engine, acked: &[(u32, u64, Vec<u8>)], context: &str) -> usize {
    let starts = [log_start(engine, "pl", 0), log_start(engine, "pl", 1)];
    let logs = [
        read_from(engine, "pl", 0, starts[0]),
        read_from(engine, "pl", 1, starts[1]),
    ];
    let mut checked = 0;
    for (partition, offset, value) in acked {
        let start = starts[*partition as usize];
        if *offset < start {
            continue;
        }
        checked += 1;
        let (base, bytes) = logs[*partition as usize]
            .get((*offset - start) as usize)
            .unwrap_or_else(|| panic!("{context}: acknowledged {partition}/{offset} lost"));
        assert_eq!(base, offset);
        let record = BatchView::verify(bytes)
            .unwrap()
            .records()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            record.value,
            Some(&value[..]),
            "{context}: {partition}/{offset} differs"
        );
    }
    checked
}

/// A write or sync that fails (EIO or ENOSPC; from then on every one fails, as a disk gone bad
/// does) while appends stream, then a power cut that undoes what no sync covered: a failed
/// sync leaves its write on the disk unsynced, as a device that lost its write cache does.
/// Nothing whose flush failed may have been acknowledged, and after the cut every
/// acknowledged append is there. Six rounds on one directory, the failure at a different
/// point each time.
#[test]
fn a_failed_write_or_sync_then_a_power_cut_loses_nothing_acknowledged() {
    let dir = data_dir();
    let mut all_acked = Vec::new();
    let mut rng = keel_tests::Rng(0xfa17);
    for round in 0..6u32 {
        let faults = FaultPlan::new();
        let crashes = CrashPlan::new();
        // EIO or ENOSPC (5, 28).
        faults.set_errno(if round % 2 == 0 { 5 } else { 28 });
        let after = 10 + rng.below(90) as i64;
        if round % 3 == 2 {
            faults.fail_write_in(after);
        } else {
            faults.fail_sync_in(after);
        }
        let disk = TestDisk::FaultsAndCrashes(Arc::clone(&faults), Arc::clone(&crashes));
        let engine = testing::open(config(dir.path(), None), disk).unwrap();
        if engine.partitions("pl").is_err() {
            engine.create_topic("pl", 2).unwrap();
        }
        let answers = Tagged::new();
        let send = |seq: u64| {
            let partition = (seq % 2) as u32;
            let value = crash_value(100 + round, partition, seq);
            engine.append(
                "pl",
                partition,
                one_record(&value),
                answers.ticket((partition, value)),
            );
        };
        for seq in 0..IN_FLIGHT {
            send(seq);
        }
        let (mut next, mut failed, acked_before) = (IN_FLIGHT, 0, all_acked.len());
        let deadline = Instant::now() + Duration::from_secs(60);
        // Until both partitions refuse (each poisoned by a failed flush of its own), or, in a
        // build that ignores failures, plenty were acknowledged.
        while failed < 2 * IN_FLIGHT && all_acked.len() - acked_before < 50_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(((partition, value), r)) = answers.recv_timeout(left) else {
                panic!(
                    "round {round}: stalled, {} acked, {failed} failed",
                    all_acked.len()
                );
            };
            match appended(r) {
                Ok(range) => all_acked.push((partition, range.first, value)),
                Err(_) => failed += 1,
            }
            send(next);
            next += 1;
        }
        assert!(
            faults.injected() > 0,
            "round {round}: no failure was injected"
        );
        crashes.crash();
        drop(engine);
        let undone = crashes
            .lose_unsynced_writes(0xfa11 + u64::from(round))
            .unwrap();
        let engine = Engine::open(small_config(dir.path(), 2))
            .unwrap_or_else(|e| panic!("round {round}: reopen after the failure and the cut: {e}"));
        let checked = assert_all_survive(
            &engine,
            &all_acked,
            &format!("round {round} ({undone} writes undone)"),
        );
        assert_eq!(checked, all_acked.len());
    }
    assert!(
        all_acked.len() > 100,
        "{} acknowledged in all",
        all_acked.len()
    );
}

/// Four rounds of appends, a power cut losing every unsynced write, and a reopen, with flushes
/// made durable as `flush_sync` says.
fn acknowledged_appends_survive_power_cuts(flush_sync: FlushSync) {
    let dir = data_dir();
    let mut all_acked = Vec::new();
    for (round, acks) in [(0u32, 300usize), (1, 1500), (2, 4000), (3, 800)] {
        let plan = CrashPlan::new();
        let mut cfg = config(dir.path(), None);
        cfg.flush_sync = flush_sync;
        all_acked.extend(append_then_cut_power_with(cfg, round, acks, &plan).0);
        let undone = plan
            .lose_unsynced_writes(0x5eed + u64::from(round))
            .unwrap();

        let engine = Engine::open(small_config(dir.path(), 2)).unwrap_or_else(|e| {
            panic!("round {round}: reopen after the power cut ({undone} writes undone): {e}")
        });
        assert_all_survive(
            &engine,
            &all_acked,
            &format!("round {round} ({undone} writes undone)"),
        );
    }
}

#[test]
fn every_acknowledged_append_survives_losing_all_unsynced_writes() {
    acknowledged_appends_survive_power_cuts(FlushSync::Auto);
}

/// Flushes as on a filesystem that cannot be trusted with `RWF_DSYNC`: a write, then a linked
/// `fdatasync`; the sync's completion is what acknowledges.
#[test]
fn every_acknowledged_append_survives_with_write_then_fdatasync_flushes() {
    acknowledged_appends_survive_power_cuts(FlushSync::Fdatasync);
}

/// The same with retention reusing segment files: a write undone by the power cut leaves
/// the older part of the log that file held before, not zeros, and recovery must take none of
/// it for the log while keeping everything acknowledged that retention keeps.
#[test]
fn every_kept_acknowledged_append_survives_power_cuts_in_reused_segment_files() {
    let dir = data_dir();
    let retention = Some(2 * small_config(dir.path(), 2).segment_bytes);
    let mut all_acked = Vec::new();
    let mut reused = 0;
    for (round, acks) in [(0u32, 1500usize), (1, 2500), (2, 600), (3, 3000), (4, 900)] {
        let plan = CrashPlan::new();
        let cfg = config(dir.path(), retention);
        let (acked, stats) = append_then_cut_power_with(cfg, round, acks, &plan);
        all_acked.extend(acked);
        reused += stats.segments_recycled;
        let undone = plan
            .lose_unsynced_writes(0xbeef + u64::from(round))
            .unwrap();

        let engine = Engine::open(config(dir.path(), retention)).unwrap_or_else(|e| {
            panic!("round {round}: reopen after the power cut ({undone} writes undone): {e}")
        });
        let context = format!("round {round} ({undone} writes undone)");
        let checked = assert_all_survive(&engine, &all_acked, &context);
        assert!(checked > 0, "{context}: retention kept nothing to check");
        assert!(
            log_start(&engine, "pl", 0) > 0,
            "{context}: nothing was dropped"
        );
    }
    assert!(reused >= 4, "segment files were reused {reused} times");
}

/// A partition has several flushes in flight at once, and the device may complete a later one
/// first (the simulator holds some writes back to make that common). Each flush is
/// acknowledged only once every earlier one is durable: the power fails at a random write while
/// appends stream (often between a later flush's completion and an earlier one's), and
/// everything acknowledged must survive. A build that answers a flush as soon as its own write
/// is durable loses acknowledged appends here.
#[test]
fn flushes_in_flight_together_are_acknowledged_in_order() {
    for seed in 0..40u64 {
        let dir = data_dir();
        let plan = CrashPlan::new();
        let engine = testing::open(
            small_config(dir.path(), 2),
            TestDisk::Crashes(Arc::clone(&plan)),
        )
        .unwrap();
        engine.create_topic("pl", 2).unwrap();
        plan.crash_at_write(40 + (seed as usize * 37) % 400);
        let answers = Tagged::new();
        let send = |seq: u64| {
            let partition = (seq % 2) as u32;
            let value = crash_value(0, partition, seq);
            engine.append(
                "pl",
                partition,
                one_record(&value),
                answers.ticket((partition, value)),
            );
        };
        let (mut sent, mut answered, mut acked) = (0u64, 0u64, Vec::new());
        while sent < IN_FLIGHT {
            send(sent);
            sent += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered < sent {
            let Ok(((partition, value), r)) =
                answers.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                panic!("seed {seed}: {answered} of {sent} appends answered");
            };
            answered += 1;
            if let Ok(range) = appended(r) {
                acked.push((partition, range.first, value));
            }
            if !plan.cut_by_countdown() {
                send(sent);
                sent += 1;
            }
        }
        assert!(
            plan.cut_by_countdown(),
            "seed {seed}: the power never failed"
        );
        drop(engine);
        let undone = plan.lose_unsynced_writes(seed).unwrap();

        let engine = Engine::open(small_config(dir.path(), 2)).unwrap_or_else(|e| {
            panic!("seed {seed}: reopen after the power cut ({undone} writes undone): {e}")
        });
        assert_all_survive(
            &engine,
            &acked,
            &format!("seed {seed} ({undone} writes undone)"),
        );
    }
}

/// A process crash leaves its last writes on the device but not durable. The next engine must
/// make them durable before it decides where the log ends and writes after it: otherwise a
/// power cut soon after could drop the old tail while keeping the new writes behind it, and the
/// log would look corrupt (a gap followed by a sealed flush) although nothing acknowledged was
/// damaged.
#[test]
fn recovery_makes_a_crashed_predecessors_writes_durable_before_writing_after_them() {
    for seed in 0..6u64 {
        let dir = data_dir();
        let plan = CrashPlan::new();
        let acked = append_then_cut_power(dir.path(), 0, 600, &plan);
        plan.power_stays(); // it was the process that died, not the power

        // The next engine recovers and starts appending; the power fails before its first sync.
        let cfg = small_config(dir.path(), 2);
        let engine = testing::open(cfg, TestDisk::Crashes(Arc::clone(&plan))).unwrap();
        let answers = Answers::new();
        for seq in 0..64u64 {
            let partition = (seq % 2) as u32;
            let value = crash_value(1, partition, seq);
            engine.append("pl", partition, one_record(&value), answers.ticket(seq));
        }
        plan.crash();
        drop(engine);
        plan.lose_unsynced_writes(seed).unwrap();

        let engine = Engine::open(small_config(dir.path(), 2))
            .unwrap_or_else(|e| panic!("seed {seed}: the log must open after the power cut: {e}"));
        assert_all_survive(&engine, &acked, &format!("seed {seed}"));
    }
}

/// Recovery writes too (it seals a torn tail and clears leftovers). A power cut in the middle
/// of it must leave a log the next recovery can still open, with everything acknowledged.
#[test]
fn a_power_cut_during_recovery_loses_nothing_acknowledged() {
    // Recovery writes only when the lost writes left a torn tail or leftovers to clear, so not
    // every round gets to cut inside it: run until enough have (bounded).
    const CUTS_WANTED: usize = 6;
    const ROUNDS_MAX: u64 = 150;
    let mut cut_during_recovery = 0;
    let mut rounds = 0;
    for seed in 0..ROUNDS_MAX {
        if cut_during_recovery >= CUTS_WANTED {
            break;
        }
        rounds += 1;
        let cut_at = 1 + (seed % 4) as usize;
        let dir = data_dir();
        let plan = CrashPlan::new();
        let acked = append_then_cut_power(dir.path(), 0, 700, &plan);
        plan.lose_unsynced_writes(seed).unwrap();

        // Recover with the power failing at the cut_at-th write of the recovery.
        plan.power_stays();
        plan.crash_at_write(cut_at);
        let cfg = small_config(dir.path(), 2);
        drop(testing::open(cfg, TestDisk::Crashes(Arc::clone(&plan)))); // may fail: the power went out under it
        cut_during_recovery += usize::from(plan.cut_by_countdown());
        plan.crash();
        plan.lose_unsynced_writes(seed.wrapping_mul(31) + 7)
            .unwrap();

        let engine = Engine::open(small_config(dir.path(), 2)).unwrap_or_else(|e| {
            panic!("seed {seed}, cut at write {cut_at}: the log must still open: {e}")
        });
        assert_all_survive(
            &engine,
            &acked,
            &format!("seed {seed}, cut at write {cut_at}"),
        );
    }
    assert!(
        cut_during_recovery >= CUTS_WANTED,
        "only {cut_during_recovery} of {rounds} rounds cut the power inside recovery"
    );
}

/// Writes a block of `fill` at `pos` and waits for its completions; returns their kinds.
fn write_and_wait(
    disk: &mut CrashingDisk<UringDisk>,
    file: FileId,
    pos: u64,
    fill: u8,
    sync: SyncAfter,
    token: u64,
) -> Vec<IoKind> {
    let mut buf = AlignedBuf::zeroed(BLOCK_BYTES);
    buf.as_mut_slice().fill(fill);
    disk.submit_write(file, pos, buf, BLOCK_BYTES, token, sync);
    let expected = if sync.any() { 2 } else { 1 };
    let (mut kinds, mut done) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while kinds.len() < expected {
        assert!(
            Instant::now() < deadline,
            "{sync:?}: only {kinds:?} completed"
        );
        std::thread::sleep(Duration::from_millis(1));
        disk.wait(&mut done, Block::No).unwrap();
        for c in done.drain(..) {
            assert_eq!(c.token, token);
            c.result.unwrap();
            kinds.push(c.kind);
        }
    }
    kinds
}

/// The two durabilities a flush can ask of the disk seam, under a power cut: a write made
/// durable by itself (`RWF_DSYNC`, what data flushes use) promises nothing about the file's
/// earlier writes, as on a device with FUA; a linked `fdatasync` covers them too.
#[test]
fn a_write_durable_by_itself_covers_only_itself_and_a_file_sync_covers_the_file() {
    for sync in [SyncAfter::ThisWrite, SyncAfter::File] {
        let dir = data_dir();
        let path = dir.path().join("seam");
        let plan = CrashPlan::new();
        let mut disk = CrashingDisk::new(UringDisk::new().unwrap(), Arc::clone(&plan));
        let file = disk.open(&path, true).unwrap();
        let earlier = write_and_wait(&mut disk, file, 0, 0xaa, SyncAfter::Nothing, 1);
        assert_eq!(earlier, [IoKind::Write]);
        let mut kinds = write_and_wait(&mut disk, file, BLOCK_BYTES as u64, 0xbb, sync, 2);
        kinds.sort_by_key(|k| *k == IoKind::Sync);
        assert_eq!(kinds, [IoKind::Write, IoKind::Sync], "{sync:?}");
        disk.close(file);
        drop(disk);

        // Each seed decides anew for every write no sync covered: kept, lost or torn.
        let undone: usize = (1..=8u64)
            .map(|k| {
                plan.lose_unsynced_writes(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    .unwrap()
            })
            .sum();
        let bytes = std::fs::read(&path).unwrap();
        let (first, second) = bytes.split_at(BLOCK_BYTES);
        assert!(
            second.iter().all(|&b| b == 0xbb),
            "{sync:?}: the synced write"
        );
        if sync == SyncAfter::File {
            assert_eq!(undone, 0, "the file sync covered the earlier write");
            assert!(first.iter().all(|&b| b == 0xaa));
        } else {
            assert!(
                undone > 0,
                "the earlier write was not covered, so it can be lost"
            );
            assert!(first.iter().any(|&b| b != 0xaa));
        }
    }
}

/// A rename made through the disk is durable only once its directory is synced through it: a
/// power cut may undo it before (and, over a few seeds, does), never after.
#[test]
fn a_rename_is_durable_only_once_its_directory_is_synced() {
    let dir = data_dir();
    for synced in [false, true] {
        let mut undone = 0;
        for seed in 0..16u64 {
            let d = dir.path().join(format!("{synced}-{seed}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("old"), b"x").unwrap();
            let plan = CrashPlan::new();
            let mut disk = CrashingDisk::new(UringDisk::new().unwrap(), Arc::clone(&plan));
            disk.rename(&d.join("old"), &d.join("new")).unwrap();
            if synced {
                disk.sync_dir(&d).unwrap();
            }
            plan.crash();
            drop(disk);
            plan.lose_unsynced_writes(seed).unwrap();
            let back = d.join("old").exists();
            assert_ne!(back, d.join("new").exists(), "the file is under one name");
            undone += usize::from(back);
        }
        if synced {
            assert_eq!(undone, 0, "a synced rename was undone");
        } else {
            assert!(undone > 0, "no unsynced rename was undone in 16 cuts");
        }
    }
}

/// Topic creations and deletions the engine answered survive a power cut: their metadata files
/// and directories go through the same simulator, which undoes what no directory sync covered.
#[test]
fn answered_topic_creations_and_deletions_survive_power_cuts() {
    for seed in 0..8u64 {
        let dir = data_dir();
        let plan = CrashPlan::new();
        let cfg = small_config(dir.path(), 2);
        let engine = testing::open(cfg, TestDisk::Crashes(Arc::clone(&plan))).unwrap();
        engine.create_topic("kept", 2).unwrap();
        engine.create_topic("gone", 1).unwrap();
        engine.delete_topic("gone").unwrap();
        engine.create_topic("late", 3).unwrap();
        plan.crash();
        drop(engine);
        plan.lose_unsynced_writes(seed).unwrap();
        let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
        assert_eq!(
            engine.list_topics(),
            vec![("kept".to_string(), 2), ("late".to_string(), 3)],
            "seed {seed}"
        );
    }
}
