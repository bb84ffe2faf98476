//! What fuzzing checks of each decoder of what the engine reads back from disk: given any
//! bytes, it ends in a value or a refusal — never a panic, a hang or an allocation beyond the
//! input's size — and what it accepts says what the bytes hold (it encodes back to them, or a
//! second way of reading it agrees). The fuzz targets (`engine/fuzz`) and the test replaying
//! their corpus under `cargo test` (`tests/tests/fuzz_corpus.rs`) both call these.
//!
//! Each check runs twice: on the input as it is, and with its checksum made to match, so that
//! the fuzzer reaches the parsing behind the checksum instead of stopping at it.

use crate::aligned::{align_up, BLOCK_BYTES};
use crate::batch::BatchView;
use crate::batch::CRC_START;
use crate::groups::GroupMeta;
use crate::layout::{seal_text, TopicMeta};
use crate::offsets::{self, Decoded, COPY_BYTES, CRC_AT};
use crate::recovery::{scan_in_windows, MemFile};
use crate::summary::SegmentSummary;

/// A check of one input.
pub type Check = fn(&[u8]);

/// Every check, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("record_batch", record_batch),
    ("segment_scan", segment_scan),
    ("segment_summary", segment_summary),
    ("offset_slot", offset_slot),
    ("metadata", metadata),
];

/// A record batch (Kafka RecordBatch v2) as read from a segment or a request.
pub fn record_batch(data: &[u8]) {
    check_record_batch(data);
    if data.len() >= CRC_START {
        let mut fixed = data.to_vec();
        let crc = keel_format::crc::crc32c(&fixed[CRC_START..]);
        fixed[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
        check_record_batch(&fixed);
    }
}

fn check_record_batch(data: &[u8]) {
    let Ok(view) = BatchView::verify(data) else {
        return;
    };
    let count = view.record_count();
    assert!(count > 0);
    assert_eq!(
        view.last_offset() - view.base_offset(),
        i64::from(count) - 1
    );
    if view.check_appendable().is_ok() {
        // Verified and uncompressed: every record it counts reads.
        let read = view
            .records()
            .map(|r| r.map(|_| ()))
            .collect::<Result<Vec<()>, _>>();
        assert_eq!(read.map(|r| r.len()), Ok(count as usize));
    }
}

/// A segment file, scanned as recovery does at start: with a window of one block and with one
/// holding the whole file, which must find the same.
pub fn segment_scan(data: &[u8]) {
    let len = data.len() as u64;
    let whole = align_up(len).max(BLOCK_BYTES as u64) as usize;
    let small = scan_in_windows(MemFile(data), len, 0, 64 * 1024, BLOCK_BYTES);
    let big = scan_in_windows(MemFile(data), len, 0, 64 * 1024, whole);
    let (Ok(small), Ok(big)) = (small, big) else {
        panic!("reading memory cannot fail");
    };
    for s in [&small, &big] {
        assert!(s.sealed_end <= s.valid_end);
        assert!(s.valid_end <= len);
        assert!(s.sealed_end.is_multiple_of(BLOCK_BYTES as u64));
        assert!(s.dirty_end >= s.valid_end);
        assert!(s.index.windows(2).all(|w| w[0].pos < w[1].pos));
        assert!(s.index.iter().all(|e| e.pos < s.valid_end));
    }
    let found = |s: &crate::recovery::Scan| {
        let index = s.index.clone();
        (
            s.valid_end,
            s.sealed_end,
            s.next_offset,
            index,
            s.later_flush_at,
            s.dirty_end,
        )
    };
    assert_eq!(found(&small), found(&big));
}

/// A sealed segment's summary: what decodes encodes back to the same bytes.
pub fn segment_summary(data: &[u8]) {
    check_segment_summary(data);
    if let Some(body_len) = data.len().checked_sub(4) {
        let mut fixed = data.to_vec();
        let crc = keel_format::crc::crc32c(&fixed[..body_len]);
        fixed[body_len..].copy_from_slice(&crc.to_be_bytes());
        check_segment_summary(&fixed);
    }
}

fn check_segment_summary(data: &[u8]) {
    let base = data
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    if let Ok(summary) = SegmentSummary::decode(data, base) {
        assert_eq!(summary.encode(), data);
    }
}

/// One copy of an offset-table slot (the input cut or padded with zeros to a copy's size):
/// what decodes encodes back to the same bytes.
pub fn offset_slot(data: &[u8]) {
    let mut copy = vec![0u8; COPY_BYTES];
    let n = data.len().min(COPY_BYTES);
    copy[..n].copy_from_slice(&data[..n]);
    check_offset_slot(&copy);
    let crc = keel_format::crc::crc32c(&copy[..CRC_AT]);
    copy[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    check_offset_slot(&copy);
}

fn check_offset_slot(copy: &[u8]) {
    if let Decoded::Ok(seq, state) = offsets::decode(copy) {
        let mut again = vec![0u8; COPY_BYTES];
        offsets::encode(seq, &state, &mut again);
        assert_eq!(again[..CRC_AT + 4], copy[..CRC_AT + 4]);
    }
}

/// The small text files: a topic's `meta`, a group's `.meta`. What decodes encodes back.
pub fn metadata(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_metadata(text);
    let body = text.rsplit_once("crc ").map_or(text, |(body, _)| body);
    check_metadata(&seal_text(body.to_string()));
}

fn check_metadata(text: &str) {
    if let Some(meta) = TopicMeta::decode(text) {
        assert_eq!(TopicMeta::decode(&meta.encode()), Some(meta));
    }
    if let Some(meta) = GroupMeta::decode(text) {
        assert_eq!(GroupMeta::decode(&meta.encode()), Some(meta));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xorshift::xorshift;

    #[test]
    fn random_inputs_and_valid_files_pass_every_check() {
        let mut next = xorshift(11);
        for _ in 0..300 {
            let len = (next() % 9000) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for (_, check) in TARGETS {
                check(&data);
            }
        }
        let flushes = vec![vec![crate::recovery::tests::batch_of(2, 100)]];
        let (segment, _) = crate::recovery::tests::segment_with(&flushes, 0, 16 * 1024);
        segment_scan(&segment);
        record_batch(&crate::recovery::tests::batch_of(3, 10));
        metadata(TopicMeta { partitions: 3 }.encode().as_bytes());
    }
}
