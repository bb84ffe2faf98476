//! Writes from registered buffers, checked byte for byte on disk, and the buffers' lifecycle:
//! registered on first use, unregistered before they are freed, bounded by the budget.
//!
//! Test code: each `expect` names the step that failed, and its failure is the test's.

use std::path::Path;

use super::*;
use crate::io::fixed::{FixedBuffers, REGISTERED_BYTES_MIN};

const CHUNK: usize = 256 << 10;

fn disk_with_file(dir: &Path) -> (UringDisk, FileId) {
    let mut disk = UringDisk::new().expect("io_uring is available on the test machines");
    let file = disk.open(&dir.join("data"), true).expect("open");
    disk.allocate(file, 16 << 20).expect("allocate");
    (disk, file)
}

/// Fills `buf` with a pattern of `seed` (different for every seed and position).
fn fill(buf: &mut AlignedBuf, seed: u8) {
    for (i, b) in buf.as_mut_slice()[..CHUNK].iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add((i % 251) as u8);
    }
}

fn expected(seed: u8) -> Vec<u8> {
    let mut buf = AlignedBuf::zeroed(CHUNK);
    fill(&mut buf, seed);
    buf.as_slice()[..CHUNK].to_vec()
}

/// Writes `buf[..CHUNK]` at chunk `at`, durably, and returns the buffer once written.
fn write(disk: &mut UringDisk, file: FileId, at: u64, buf: AlignedBuf, token: u64) -> AlignedBuf {
    disk.submit_write(
        file,
        at * CHUNK as u64,
        buf,
        CHUNK,
        token,
        SyncAfter::ThisWrite,
    );
    let (mut back, mut synced) = (None, false);
    let mut out = Vec::new();
    while back.is_none() || !synced {
        disk.wait(&mut out, Block::Yes).expect("wait");
        for c in out.drain(..) {
            assert_eq!(c.token, token);
            match c.kind {
                IoKind::Write => {
                    assert_eq!(c.result.expect("write"), CHUNK);
                    back = c.buf;
                }
                IoKind::Sync => {
                    c.result.expect("sync");
                    synced = true;
                }
                IoKind::Read => panic!("no read was submitted"),
            }
        }
    }
    back.expect("the write returns its buffer")
}

/// Fills `buf` with pattern `round` and writes it at chunk `round`.
fn write_round(disk: &mut UringDisk, file: FileId, mut buf: AlignedBuf, round: u8) -> AlignedBuf {
    fill(&mut buf, round);
    let at = u64::from(round);
    write(disk, file, at, buf, 2 + at)
}

fn on_disk(dir: &Path, at: u64) -> Vec<u8> {
    let bytes = std::fs::read(dir.join("data")).expect("read back");
    let start = at as usize * CHUNK;
    bytes[start..start + CHUNK].to_vec()
}

/// Checks that chunk `round` holds pattern `round`, for each of the first `rounds`.
fn assert_chunks(dir: &Path, rounds: u8) {
    for round in 0..rounds {
        assert!(
            on_disk(dir, u64::from(round)) == expected(round),
            "chunk {round} differs"
        );
    }
}

/// A ring, a file, and one buffer (pattern `seed`) written from and registered.
fn one_registered_write(seed: u8) -> (tempfile::TempDir, UringDisk, AlignedBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, file) = disk_with_file(dir.path());
    let mut buf = AlignedBuf::zeroed(CHUNK);
    fill(&mut buf, seed);
    let buf = write(&mut disk, file, 0, buf, 2);
    (dir, disk, buf)
}

/// Replaces the ring's table with a smaller one.
fn with_table(disk: &mut UringDisk, slots: usize, budget: usize) {
    disk.ring
        .submitter()
        .unregister_buffers()
        .expect("unregister");
    disk.fixed = FixedBuffers::with_limits(&disk.ring.submitter(), slots, budget);
}

#[test]
fn writes_from_registered_buffers_land_byte_for_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, file) = disk_with_file(dir.path());
    let mut bufs = vec![AlignedBuf::zeroed(CHUNK), AlignedBuf::zeroed(CHUNK)];
    for round in 0..8u8 {
        let mut buf = bufs.remove(0);
        if round == 4 {
            // A buffer dropped while registered, and a new one in its place.
            drop(buf);
            buf = AlignedBuf::zeroed(CHUNK);
        }
        bufs.push(write_round(&mut disk, file, buf, round));
    }
    assert_chunks(dir.path(), 8);
    // Three buffers were registered once each; every write went through a registration.
    assert_eq!(disk.fixed.registrations, 3);
    assert_eq!(disk.fixed.fixed_writes, 8);
}

#[test]
fn a_dropped_registered_buffer_is_unregistered_then_freed() {
    let (_dir, mut disk, buf) = one_registered_write(1);
    assert_eq!(disk.fixed.pinned(), CHUNK);
    let released = disk.fixed.released();
    drop(buf);
    // Not freed by its owner: the ring holds the memory until it has unregistered it.
    assert_eq!(released.state(), (1, false));
    disk.wait(&mut Vec::new(), Block::No).expect("wait");
    assert_eq!(released.state(), (0, false));
    assert_eq!(disk.fixed.pinned(), 0);
}

#[test]
fn the_budget_bounds_what_stays_registered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, file) = disk_with_file(dir.path());
    // Slots to spare: only the byte budget makes buffers give theirs up.
    with_table(&mut disk, 4, 2 * CHUNK);
    let mut bufs: Vec<AlignedBuf> = (0..4).map(|_| AlignedBuf::zeroed(CHUNK)).collect();
    for round in 0..12u8 {
        let buf = bufs.remove(0);
        bufs.push(write_round(&mut disk, file, buf, round));
        assert!(disk.fixed.pinned() <= 2 * CHUNK);
    }
    assert_chunks(dir.path(), 12);
    // Four buffers taking turns within room for two: each write registered its buffer anew.
    assert_eq!(disk.fixed.registrations, 12);
}

#[test]
fn without_registration_writes_pin_their_pages_as_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, file) = disk_with_file(dir.path());
    // An empty table is refused by the kernel (EINVAL), as an old kernel would refuse any.
    with_table(&mut disk, 0, CHUNK);
    let mut buf = AlignedBuf::zeroed(CHUNK);
    for round in 0..3u8 {
        buf = write_round(&mut disk, file, buf, round);
    }
    assert_chunks(dir.path(), 3);
    assert_eq!((disk.fixed.registrations, disk.fixed.fixed_writes), (0, 0));
    // Small buffers are never registered either.
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, file) = disk_with_file(dir.path());
    let small = AlignedBuf::zeroed(REGISTERED_BYTES_MIN / 2);
    disk.submit_write(
        file,
        0,
        small,
        REGISTERED_BYTES_MIN / 2,
        2,
        SyncAfter::Nothing,
    );
    let mut out = Vec::new();
    while out.is_empty() {
        disk.wait(&mut out, Block::Yes).expect("wait");
    }
    assert_eq!(disk.fixed.registrations, 0);
}

#[test]
fn buffers_that_outlive_their_ring_are_freed_by_their_owner() {
    let (_dir, disk, buf) = one_registered_write(7);
    let released = disk.fixed.released();
    drop(disk);
    assert_eq!(released.state(), (0, true));
    drop(buf);
    // Freed at once: nothing waits for a ring that is gone.
    assert_eq!(released.state(), (0, true));
}

#[test]
fn over_the_memlock_limit_only_smaller_buffers_are_tried() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, file) = disk_with_file(dir.path());
    let enomem = std::io::Error::from_raw_os_error(libc::ENOMEM);
    disk.fixed.refused(4 * CHUNK, &enomem);
    // A buffer as large as the refused one is not tried again; a smaller one is.
    let mut big = AlignedBuf::zeroed(4 * CHUNK);
    assert_eq!(disk.fixed.slot_for(&disk.ring.submitter(), &mut big), None);
    let mut buf = AlignedBuf::zeroed(CHUNK);
    fill(&mut buf, 3);
    let _buf = write(&mut disk, file, 0, buf, 2);
    assert_eq!(disk.fixed.registrations, 1);
    assert!(on_disk(dir.path(), 0) == expected(3));
    // Any other refusal ends registering.
    disk.fixed
        .refused(CHUNK, &std::io::Error::from_raw_os_error(libc::EPERM));
    let mut other = AlignedBuf::zeroed(CHUNK);
    assert_eq!(
        disk.fixed.slot_for(&disk.ring.submitter(), &mut other),
        None
    );
}
