//! Recovery: a torn tail is cut off and appends go on after it; corruption before later,
//! durable data refuses to open with the file and byte position, unless repair is asked for.

use std::fs;
use std::path::{Path, PathBuf};

use keel_engine::{BatchView, DataError, Engine, RecoveryMode, LOST_HEADER};
use keel_tests::{
    copy_dir, data_dir, one_record, random_batch, read_all, segment_base, segment_files,
    small_config, with_offset, Rng,
};

/// Fills one partition until its log spans segments, the last holding over 64 KiB. Returns
/// every batch as stored (base offset, bytes).
fn build_log(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let engine = Engine::open(small_config(dir, 1)).unwrap();
    engine.create_topic("t", 1).unwrap();
    let mut rng = Rng(0xfeed);
    let mut log = Vec::new();
    while segment_files(dir, "t", 0).len() < 2 || last_segment_data_end(dir, &log) < 80 * 1024 {
        let records = 1 + rng.below(4) as usize;
        let batch = random_batch(&mut rng, records, 1200);
        let r = engine.append_wait("t", 0, batch.clone()).unwrap();
        log.push((r.first, with_offset(&batch, r.first)));
    }
    log
}

/// Byte position of each batch in `file`, found by searching for its exact bytes (independent
/// of the engine's own scanner).
fn positions(file: &[u8], log: &[(u64, Vec<u8>)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    for (i, (_, bytes)) in log.iter().enumerate() {
        if let Some(at) = file[from..]
            .windows(bytes.len())
            .position(|w| w == &bytes[..])
        {
            out.push((i, from + at));
            from += at + bytes.len();
        }
    }
    out
}

fn last_segment_data_end(dir: &Path, log: &[(u64, Vec<u8>)]) -> usize {
    let files = segment_files(dir, "t", 0);
    let Some(last) = files.last() else { return 0 };
    let bytes = fs::read(last).unwrap();
    let base = segment_base(last);
    let tail: Vec<_> = log.iter().filter(|(o, _)| *o >= base).cloned().collect();
    positions(&bytes, &tail)
        .last()
        .map_or(0, |&(i, at)| at + tail[i].1.len())
}

#[test]
fn a_torn_tail_at_every_512_byte_boundary_of_the_last_64_kib_is_cut_off() {
    let pristine = data_dir();
    let log = build_log(pristine.path());
    let last_file = segment_files(pristine.path(), "t", 0).pop().unwrap();
    let base = segment_base(&last_file);
    let file = fs::read(&last_file).unwrap();
    let tail: Vec<_> = log.iter().filter(|(o, _)| *o >= base).cloned().collect();
    let placed = positions(&file, &tail);
    assert_eq!(
        placed.len(),
        tail.len(),
        "every batch of the last segment was found in it"
    );
    let data_end = placed.last().map(|&(i, at)| at + tail[i].1.len()).unwrap();
    let first_cut = (data_end - 64 * 1024) / 512 * 512;
    let mut rng = Rng(99);

    for (n, cut) in (first_cut..=data_end.div_ceil(512) * 512)
        .step_by(512)
        .enumerate()
    {
        let scratch = data_dir();
        copy_dir(pristine.path(), scratch.path());
        let _ = fs::remove_file(scratch.path().join("LOCK"));
        let victim = segment_files(scratch.path(), "t", 0).pop().unwrap();
        let mut bytes = fs::read(&victim).unwrap();
        bytes.truncate(cut);
        // Alternate: nothing after the cut, zeros, garbage.
        match n % 3 {
            0 => {}
            1 => bytes.extend(std::iter::repeat_n(0u8, 8192)),
            _ => bytes.extend(rng.bytes(8192)),
        }
        fs::write(&victim, &bytes).unwrap();

        let survivors: Vec<_> = placed
            .iter()
            .filter(|&&(i, at)| at + tail[i].1.len() <= cut)
            .map(|&(i, _)| tail[i].clone())
            .collect();
        let mut expected: Vec<_> = log.iter().filter(|(o, _)| *o < base).cloned().collect();
        expected.extend(survivors);

        let engine = Engine::open(small_config(scratch.path(), 1))
            .unwrap_or_else(|e| panic!("cut at {cut}: reopen failed: {e}"));
        let got = read_all(&engine, "t", 0);
        assert!(
            got == expected,
            "cut at {cut}: the batches before the damage differ"
        );
        // Appends continue right after the surviving log, and survive another reopen.
        let next = expected.last().map_or(base, |(o, b)| {
            o + keel_engine::BatchView::verify(b).unwrap().record_count() as u64
        });
        let value = format!("after cut {cut}");
        let r = engine
            .append_wait("t", 0, one_record(value.as_bytes()))
            .unwrap();
        assert_eq!(
            r.first, next,
            "cut at {cut}: appends continue at the end of the log"
        );
        drop(engine);
        let engine = Engine::open(small_config(scratch.path(), 1))
            .unwrap_or_else(|e| panic!("cut at {cut}: second reopen failed: {e}"));
        let got = read_all(&engine, "t", 0);
        assert_eq!(got.len(), expected.len() + 1, "cut at {cut}");
        assert_eq!(
            got.last().unwrap().1,
            with_offset(&one_record(value.as_bytes()), next)
        );
    }
}

/// Flips one byte inside batch `victim` of the log and returns (file, byte position).
fn flip_inside(dir: &Path, log: &[(u64, Vec<u8>)], victim: usize) -> (PathBuf, usize) {
    for file in segment_files(dir, "t", 0) {
        let mut bytes = fs::read(&file).unwrap();
        let batch = &log[victim].1;
        if let Some(at) = bytes.windows(batch.len()).position(|w| w == &batch[..]) {
            let pos = at + batch.len() / 2;
            bytes[pos] ^= 0x40;
            fs::write(&file, &bytes).unwrap();
            return (file, pos);
        }
    }
    panic!("batch {victim} not found");
}

#[test]
fn a_flipped_byte_followed_by_valid_batches_is_named_corruption() {
    for victim_at in [0.3, 0.95] {
        let dir = data_dir();
        let log = build_log(dir.path());
        // One in an older segment, one near the end of the last segment.
        let victim = (log.len() as f64 * victim_at) as usize;
        let (file, pos) = flip_inside(dir.path(), &log, victim);
        let batch_len = log[victim].1.len() as u64;
        let in_sealed_segment = file != *segment_files(dir.path(), "t", 0).last().unwrap();
        assert_eq!(
            in_sealed_segment,
            victim_at < 0.5,
            "the victims the test means"
        );
        let mut check_all = small_config(dir.path(), 1);
        if in_sealed_segment {
            // By default start-up reads a sealed segment's summary, not the segment: the
            // partition opens and takes appends, and the damage is named when it is read.
            // (On a copy, so the rest runs on the log as built.)
            let probe = data_dir();
            copy_dir(dir.path(), probe.path());
            let engine = Engine::open(small_config(probe.path(), 1)).unwrap();
            engine.append_wait("t", 0, one_record(b"taken")).unwrap();
            let err = engine.read_wait("t", 0, 0, 64 << 20).unwrap_err();
            let DataError::Corruption { path, position, .. } = &err else {
                panic!("expected corruption on read, got {err}");
            };
            let copied = probe.path().join(file.strip_prefix(dir.path()).unwrap());
            assert_eq!(*path, copied, "the error names the damaged file");
            assert!(
                *position <= pos as u64 && position + batch_len >= pos as u64,
                "position {position} should be the damaged batch (flip at {pos})"
            );
            check_all.check_sealed_segments = true;
        }
        // Reading every segment at start, the engine opens and holds the damaged partition
        // offline, naming the file and byte.
        let engine = Engine::open(check_all).unwrap();
        let offline = engine
            .append_wait("t", 0, one_record(b"refused"))
            .unwrap_err();
        let DataError::PartitionOffline { cause, .. } = &offline else {
            panic!("expected the partition offline, got {offline}");
        };
        let DataError::Corruption {
            path,
            position,
            detail,
        } = cause.as_ref()
        else {
            panic!("expected corruption, got {cause}");
        };
        assert_eq!(*path, file, "the error names the damaged file");
        assert!(
            *position <= pos as u64 && position + batch_len >= pos as u64,
            "position {position} should be the damaged batch (flip at {pos}); {detail}"
        );
        let shown = offline.to_string();
        assert!(shown.contains(&format!("at byte {position}")), "{shown}");
        assert!(
            matches!(
                engine.read_wait("t", 0, 0, 1 << 20),
                Err(DataError::PartitionOffline { .. })
            ),
            "reads are refused too"
        );
        assert_eq!(engine.stats().partitions_offline, 1);
        drop(engine);

        // Repair truncates at the damaged batch and keeps everything before it; the offsets
        // it cut away are filled with records marked lost, never handed out again.
        let mut cfg = small_config(dir.path(), 1);
        cfg.recovery = RecoveryMode::Repair;
        let engine = Engine::open(cfg).unwrap();
        let (last_first, last_batch) = log.last().unwrap();
        let log_end = last_first + BatchView::verify(last_batch).unwrap().record_count() as u64;
        let got = read_all(&engine, "t", 0);
        assert_eq!(got[..victim], log[..victim]);
        let mut filled = log[victim].0;
        for (first, bytes) in &got[victim..] {
            assert_eq!(*first, filled, "the lost offsets are filled in order");
            let view = BatchView::verify(bytes).unwrap();
            for r in view.records() {
                let r = r.unwrap();
                assert_eq!((r.key, r.value), (None, None));
                assert_eq!(r.headers, vec![(LOST_HEADER, Some(&b"repair"[..]))]);
            }
            filled += view.record_count() as u64;
        }
        assert_eq!(
            filled, log_end,
            "filled up to the highest offset handed out"
        );
        let r = engine
            .append_wait("t", 0, one_record(b"after repair"))
            .unwrap();
        assert_eq!(r.first, log_end, "no offset is handed out twice");
        drop(engine);
        let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
        assert_eq!(read_all(&engine, "t", 0).len(), got.len() + 1);
    }
}
