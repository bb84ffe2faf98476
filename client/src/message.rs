//! Fetched messages: the records of the batches a fetch returns.

use keel_format::batch::batches;

use crate::error::{ClientError, Result};

/// One message read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, as the producer set it.
    pub timestamp_ms: i64,
    /// Key, if it has one.
    pub key: Option<Vec<u8>>,
    /// Value; `None` for a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers, in order; a header value may be null.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The answer to a fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// One past the last durable offset of the partition.
    pub high_watermark: u64,
    /// Where the next fetch should start.
    pub next_offset: u64,
    /// The batches, as stored (Kafka RecordBatch v2), concatenated.
    pub batches: Vec<u8>,
}

impl Fetched {
    /// Whether the fetch reached the end of the log.
    pub fn at_end(&self) -> bool {
        self.next_offset >= self.high_watermark
    }

    /// The messages at or after `from`, checking each batch's CRC. A batch can start before
    /// the offset asked for; its earlier records are skipped.
    pub fn messages(&self, from: u64) -> Result<Vec<Message>> {
        messages_in(&self.batches, |offset| offset >= from)
    }
}

/// The messages of concatenated batches whose offsets `wanted` picks, checking each batch's
/// CRC.
pub(crate) fn messages_in(
    batches_bytes: &[u8],
    mut wanted: impl FnMut(u64) -> bool,
) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    for batch in batches(batches_bytes) {
        let batch = batch.map_err(|e| ClientError::Protocol(format!("batch: {e}")))?;
        let base = u64::try_from(batch.base_offset())
            .map_err(|_| ClientError::Protocol("negative base offset".into()))?;
        let records = batch
            .decoded()
            .map_err(|e| ClientError::Protocol(format!("batch: {e}")))?;
        for record in records.iter() {
            let record = record.map_err(|e| ClientError::Protocol(format!("record: {e}")))?;
            let offset = base + record.offset_delta as u64;
            if !wanted(offset) {
                continue;
            }
            out.push(Message {
                offset,
                timestamp_ms: batch.base_timestamp() + record.timestamp_delta,
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.map(<[u8]>::to_vec),
                headers: record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                    .collect(),
            });
        }
    }
    Ok(out)
}
