//! Dead letters: a message delivered `max_deliveries` times without an ack is copied,
//! durably, to its topic's dead-letter topic `TOPIC.dlq` (created on first use with the topic's
//! partition count; the copy goes to the same partition number), and only then counts as
//! acknowledged. If the copy fails it is tried again later; the message is never dropped.
//! This module builds the copy; the helper thread appends it (`helper.rs`).

use keel_format::batch::{trusted_batches, BatchBuilder, Record};

/// Suffix of a topic's dead-letter topic.
pub const DLQ_SUFFIX: &str = ".dlq";

/// The dead-letter topic of `topic`.
pub fn dlq_name(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// Where a dead letter came from, added to its copy as headers.
pub struct Origin<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// The group that gave up on it.
    pub group: &'a str,
    /// How many times it was delivered.
    pub deliveries: u32,
}

/// The copy of the record at `origin.offset` in `data` (whole batches as stored), if `data`
/// holds it.
pub fn copy_of(data: &[u8], origin: &Origin<'_>) -> Option<Vec<u8>> {
    let headers = [
        ("keel.dlq.topic", origin.topic.to_string()),
        ("keel.dlq.partition", origin.partition.to_string()),
        ("keel.dlq.offset", origin.offset.to_string()),
        ("keel.dlq.group", origin.group.to_string()),
        ("keel.dlq.deliveries", origin.deliveries.to_string()),
    ];
    for b in trusted_batches(data) {
        let base = b.base_offset() as u64;
        if base > origin.offset || (b.last_offset() as u64) < origin.offset {
            continue;
        }
        let Ok(records) = b.decoded() else { continue };
        for r in records.iter().flatten() {
            if base + r.offset_delta as u64 == origin.offset {
                let at = b.base_timestamp() + r.timestamp_delta;
                return Some(dead_letter_batch(at, &r, &headers));
            }
        }
    }
    None
}

/// The dead-letter copy of `record`: the same key, value and headers (nulls stay null), the
/// same timestamp, and `origin` added as headers.
fn dead_letter_batch(timestamp_ms: i64, record: &Record<'_>, origin: &[(&str, String)]) -> Vec<u8> {
    let mut headers: Vec<(&[u8], Option<&[u8]>)> = record.headers.clone();
    headers.extend(
        origin
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
    );
    let mut batch = BatchBuilder::new(timestamp_ms);
    batch.push_record(record.key, record.value, &headers);
    batch.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_format::batch::{set_base_offset, BatchView};

    #[test]
    fn a_dead_letter_copy_keeps_the_record_exactly_and_adds_where_it_came_from() {
        let mut b = BatchBuilder::new(1_000);
        b.push_record(Some(b"other"), Some(b"v"), &[]);
        b.push_record(Some(b"k"), None, &[(b"trace", None), (b"x", Some(b"1"))]);
        let mut bytes = b.build();
        set_base_offset(&mut bytes, 6);
        let origin = Origin {
            topic: "t",
            partition: 2,
            offset: 7,
            group: "g",
            deliveries: 16,
        };
        let copy = copy_of(&bytes, &origin).unwrap();
        let view = BatchView::verify(&copy).unwrap();
        assert_eq!(view.base_timestamp(), 1_000);
        let c = view.records().next().unwrap().unwrap();
        assert_eq!(c.key, Some(&b"k"[..]));
        assert_eq!(c.value, None, "a tombstone stays a tombstone");
        assert_eq!(
            &c.headers[..2],
            &[(&b"trace"[..], None), (&b"x"[..], Some(&b"1"[..]))]
        );
        assert!(c
            .headers
            .contains(&(&b"keel.dlq.offset"[..], Some(&b"7"[..]))));
        assert!(copy_of(
            &bytes,
            &Origin {
                offset: 9,
                ..origin
            }
        )
        .is_none());
    }
}
