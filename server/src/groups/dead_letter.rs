//! Dead letters: a message delivered `max_deliveries` times without an ack is copied,
//! durably, to the topic's dead-letter topic `TOPIC.dlq` (created on first use with the same
//! partition count; the copy goes to the same partition number), and only then counts as
//! acknowledged. If the copy fails it is tried again later; the message is never dropped.

use std::time::{Duration, Instant};

use keel_engine::{Engine, EngineError};
use keel_format::batch::{trusted_batches, BatchBuilder, Record};

use super::{Groups, LiveGroup};

/// Suffix of a topic's dead-letter topic.
pub const DLQ_SUFFIX: &str = ".dlq";
/// How long a failed copy waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Groups {
    pub(super) fn dead_letter(
        &self,
        engine: &Engine,
        g: &LiveGroup,
        partition: u32,
        offsets: &[u64],
    ) {
        for &offset in offsets {
            match copy(engine, g, partition, offset) {
                Ok(to) => {
                    if let Some(mut d) = g.partition(partition) {
                        d.dead_lettered(offset);
                        self.store.store(&g.stored, partition, d.acks());
                    }
                    log::warn!(
                        "group {:?}: {}/{partition} offset {offset} was delivered {} times without an ack; copied to {} offset {to}",
                        g.stored.group,
                        g.stored.topic,
                        g.stored.settings.max_deliveries,
                        dlq_name(&g.stored.topic)
                    );
                }
                Err(e) => {
                    log::error!(
                        "group {:?}: copying {}/{partition} offset {offset} to the dead-letter topic failed: {e}; trying again later",
                        g.stored.group,
                        g.stored.topic
                    );
                    if let Some(mut d) = g.partition(partition) {
                        d.retry_dead_letter(offset, Instant::now() + RETRY_AFTER);
                    }
                }
            }
        }
    }
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

/// The dead-letter topic of `topic`.
pub fn dlq_name(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// Copies one message, with headers saying where it came from; returns its dead-letter
/// offset once durable.
fn copy(engine: &Engine, g: &LiveGroup, partition: u32, offset: u64) -> Result<u64, EngineError> {
    let topic = &g.stored.topic;
    let read = engine.read_wait(topic, partition, offset, 1)?;
    let origin = [
        ("keel.dlq.topic", topic.to_string()),
        ("keel.dlq.partition", partition.to_string()),
        ("keel.dlq.offset", offset.to_string()),
        ("keel.dlq.group", g.stored.group.clone()),
        (
            "keel.dlq.deliveries",
            g.stored.settings.max_deliveries.to_string(),
        ),
    ];
    let mut out = None;
    for b in trusted_batches(&read.data) {
        let base = b.base_offset() as u64;
        for r in b.records() {
            let r = r.map_err(EngineError::InvalidBatch)?;
            if base + r.offset_delta as u64 == offset {
                out = Some(dead_letter_batch(
                    b.base_timestamp() + r.timestamp_delta,
                    &r,
                    &origin,
                ));
            }
        }
    }
    let batch = out.ok_or_else(|| {
        EngineError::InvalidConfig(format!(
            "offset {offset} of {topic}/{partition} cannot be read"
        ))
    })?;
    let dlq = dlq_name(topic);
    let partitions = engine.partitions(topic)?;
    match engine.create_topic(&dlq, partitions) {
        Ok(()) => log::info!("created dead-letter topic {dlq:?}"),
        Err(EngineError::TopicExists(_)) => {}
        Err(e) => return Err(e),
    }
    let dlq_partitions = engine.partitions(&dlq)?;
    Ok(engine
        .append_wait(&dlq, partition % dlq_partitions, batch)?
        .first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_format::batch::BatchView;

    #[test]
    fn a_dead_letter_copy_keeps_the_record_exactly_and_adds_where_it_came_from() {
        let mut b = BatchBuilder::new(1_000);
        b.push_record(Some(b"k"), None, &[(b"trace", None), (b"x", Some(b"1"))]);
        let bytes = b.build();
        let view = BatchView::verify(&bytes).unwrap();
        let r = view.records().next().unwrap().unwrap();
        let copy = dead_letter_batch(1_000, &r, &[("keel.dlq.offset", "7".into())]);
        let view = BatchView::verify(&copy).unwrap();
        assert_eq!(view.base_timestamp(), 1_000);
        let c = view.records().next().unwrap().unwrap();
        assert_eq!(c.key, Some(&b"k"[..]));
        assert_eq!(c.value, None, "a tombstone stays a tombstone");
        assert_eq!(
            c.headers,
            vec![
                (&b"trace"[..], None),
                (&b"x"[..], Some(&b"1"[..])),
                (&b"keel.dlq.offset"[..], Some(&b"7"[..])),
            ]
        );
    }
}
