//! How a [`Producer`](crate::Producer) batches, retries and bounds its memory. The defaults
//! are the Kafka producer's (its setting is named beside each), except where this says why.

use std::time::Duration;

use crate::ClientOptions;

/// A producer's settings; [`ProducerOptions::default`] suits most applications.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// The connection's own settings (connect and request timeouts, client name).
    pub connection: ClientOptions,
    /// How long a message may wait for more to join its batch while earlier requests to its
    /// partition are in flight (`linger.ms`, 5 ms). A partition with nothing in flight gets
    /// its batch sent at once: waiting there saves no request, it only adds latency.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (`batch.size`; 64 KiB where Kafka's is
    /// 16 KiB). A larger message goes in a batch of its own. Larger than Kafka's because a
    /// Keel request carries one partition's batch where a Kafka request carries one batch for
    /// each partition of a broker: with five requests in flight per partition, 16 KiB batches
    /// would hold a partition to 80 KiB in flight per producer. Never more than the largest
    /// batch the server said it takes in the handshake (keeld's `max_batch_bytes`).
    pub batch_bytes: usize,
    /// The most message bytes the producer holds, waiting or in flight (`buffer.memory`,
    /// 32 MiB); [`Producer::send`](crate::Producer::send) waits for room past it.
    pub buffer_bytes: usize,
    /// How long [`Producer::send`](crate::Producer::send) waits for room, or for a topic's
    /// partition count (`max.block.ms`, 60 s).
    pub max_block: Duration,
    /// Numbered batches, so a batch resent after a lost connection is stored once
    /// (`enable.idempotence`, on). Off, a lost connection fails the batches in flight
    /// instead of resending them: their outcome is unknown.
    pub idempotence: bool,
    /// How long a message may take in all, waiting, retries and reconnections included,
    /// before the producer gives up on it (`delivery.timeout.ms`, 120 s).
    pub delivery_timeout: Duration,
    /// The pause before a batch the server refused for a passing reason is sent again
    /// (`retry.backoff.ms`, 100 ms).
    pub retry_backoff: Duration,
    /// Requests in flight per partition at most (`max.in.flight.requests.per.connection`,
    /// 5). Idempotence allows at most five: the server remembers a producer's last five
    /// batches per partition, and a resent batch older than those could not be recognised.
    pub in_flight_per_partition: usize,
}

/// The most requests in flight per partition an idempotent producer may have.
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            connection: ClientOptions::default(),
            linger: Duration::from_millis(5),
            batch_bytes: 64 * 1024,
            buffer_bytes: 32 << 20,
            max_block: Duration::from_secs(60),
            idempotence: true,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            in_flight_per_partition: IDEMPOTENT_IN_FLIGHT_MAX,
        }
    }
}

impl ProducerOptions {
    /// Why these settings cannot work, if they cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.batch_bytes == 0 {
            return Err("batch_bytes must be positive".into());
        }
        if self.buffer_bytes < self.batch_bytes {
            return Err(format!(
                "buffer_bytes ({}) must hold at least one batch ({} bytes)",
                self.buffer_bytes, self.batch_bytes
            ));
        }
        if self.in_flight_per_partition == 0 {
            return Err("in_flight_per_partition must be positive".into());
        }
        if self.idempotence && self.in_flight_per_partition > IDEMPOTENT_IN_FLIGHT_MAX {
            return Err(format!(
                "an idempotent producer keeps at most {IDEMPOTENT_IN_FLIGHT_MAX} requests in \
                 flight per partition (in_flight_per_partition is {})",
                self.in_flight_per_partition
            ));
        }
        Ok(())
    }
}
