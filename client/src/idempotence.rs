//! What an idempotent [`Producer`](crate::Producer) keeps so that it can send a request again
//! after its connection was lost without the server storing it twice: its producer id and
//! epoch (from the server), the next sequence of each partition it writes, and a copy of
//! every request in flight, to resend as it was. The server answers a batch it already has
//! with the offsets it first gave it (`docs/PROTOCOL.md`, idempotent producers).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Batches in flight per partition at most: the server remembers a producer's last five
/// batches per partition, so a resent batch older than that could not be recognised.
pub const IN_FLIGHT_PER_PARTITION_MAX: usize = 5;

/// How an idempotent producer retries.
#[derive(Debug, Clone)]
pub struct Idempotence {
    /// How long a request may take in all, reconnections and resends included; past it the
    /// producer gives up and says which requests' outcome is unknown.
    pub delivery_timeout: Duration,
}

impl Default for Idempotence {
    fn default() -> Self {
        // Kafka's delivery.timeout.ms.
        Self {
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

/// A request in flight, as sent.
pub(crate) struct Sent {
    pub frame: Vec<u8>,
    pub partition: (String, u32),
    pub first_sent: Instant,
}

/// The producer's identity, sequences and requests in flight.
pub(crate) struct Sequencing {
    pub options: Idempotence,
    pub producer_id: i64,
    pub epoch: i16,
    next_seq: HashMap<(String, u32), i32>,
    in_flight_per_partition: HashMap<(String, u32), usize>,
    sent: HashMap<u32, Sent>,
}

impl Sequencing {
    pub fn new(options: Idempotence, producer_id: i64, epoch: i16) -> Self {
        Self {
            options,
            producer_id,
            epoch,
            next_seq: HashMap::new(),
            in_flight_per_partition: HashMap::new(),
            sent: HashMap::new(),
        }
    }

    /// Requests in flight to `partition` of `topic`.
    pub fn in_flight_to(&self, topic: &str, partition: u32) -> usize {
        self.in_flight_per_partition
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// The sequence the next batch to `partition` of `topic` starts at.
    pub fn peek_sequence(&self, topic: &str, partition: u32) -> i32 {
        self.next_seq
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// The sequence the next batch of `records` to `partition` of `topic` starts at; the one
    /// after it is counted from there.
    pub fn take_sequence(&mut self, topic: &str, partition: u32, records: usize) -> i32 {
        let next = self
            .next_seq
            .entry((topic.to_string(), partition))
            .or_insert(0);
        let first = *next;
        // Sequences wrap past i32::MAX to 0, as the server's do.
        let after = (i64::from(first) + records as i64) % (i64::from(i32::MAX) + 1);
        *next = i32::try_from(after).unwrap_or(0);
        first
    }

    /// Keeps `frame` (request `id`, to `partition` of `topic`) until it is answered.
    pub fn sent(&mut self, id: u32, topic: &str, partition: u32, frame: Vec<u8>) {
        let key = (topic.to_string(), partition);
        *self.in_flight_per_partition.entry(key.clone()).or_insert(0) += 1;
        self.sent.insert(
            id,
            Sent {
                frame,
                partition: key,
                first_sent: Instant::now(),
            },
        );
    }

    /// Request `id` was answered.
    pub fn answered(&mut self, id: u32) {
        if let Some(s) = self.sent.remove(&id) {
            if let Some(n) = self.in_flight_per_partition.get_mut(&s.partition) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// The frame of request `id`, to send again.
    pub fn frame(&self, id: u32) -> Option<&[u8]> {
        self.sent.get(&id).map(|s| s.frame.as_slice())
    }

    /// When the oldest request in flight runs out of time.
    pub fn deadline(&self) -> Option<Instant> {
        self.sent
            .values()
            .map(|s| s.first_sent + self.options.delivery_timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_records_per_partition_and_wrap() {
        let mut s = Sequencing::new(Idempotence::default(), 1, 0);
        assert_eq!(s.take_sequence("t", 0, 3), 0);
        assert_eq!(s.take_sequence("t", 0, 2), 3);
        assert_eq!(s.take_sequence("t", 1, 1), 0, "each partition its own");
        assert_eq!(s.take_sequence("u", 0, 1), 0, "each topic its own");
        s.next_seq.insert(("t".into(), 2), i32::MAX);
        assert_eq!(s.take_sequence("t", 2, 2), i32::MAX);
        assert_eq!(s.take_sequence("t", 2, 1), 1, "after i32::MAX comes 0");
    }

    #[test]
    fn requests_are_kept_until_answered() {
        let mut s = Sequencing::new(Idempotence::default(), 1, 0);
        s.sent(7, "t", 0, vec![1, 2]);
        s.sent(8, "t", 0, vec![3]);
        assert_eq!(s.in_flight_to("t", 0), 2);
        assert_eq!(s.frame(7), Some(&[1u8, 2][..]));
        assert!(s.deadline().is_some());
        s.answered(7);
        assert_eq!((s.in_flight_to("t", 0), s.frame(7)), (1, None));
        s.answered(8);
        assert_eq!(s.deadline(), None);
    }
}
