//! Idempotent producers, per partition: the last batches each producer wrote, by sequence, so
//! that a batch sent again (a retry after a lost answer) is answered with the offsets it was
//! first given instead of being written twice. Kafka's rules, so that Kafka's clients and
//! Keel's own behave alike:
//!
//! - a batch carries a producer id (-1: not idempotent, never checked), an epoch and the
//!   sequence of its first record; sequences count records and wrap at `i32::MAX`;
//! - an epoch below the producer's current one is fenced; a new epoch starts at sequence 0;
//! - within an epoch, a batch must start right after the last one (else `OutOfOrderSequence`),
//!   or repeat one of the last [`BATCHES_KEPT`] exactly (a duplicate);
//! - a producer the partition has no state for may start anywhere: its state may have expired.
//!
//! The state lives in memory and is rebuilt at start from the batch headers of the log
//! (`recovery.rs` folds every batch it scans), so it is exactly as durable as the log itself.
//! A sealed segment's summary (`summary.rs`) saves the state as it was at the segment's end, so
//! that start-up reads only the batches after the newest summary.
//! A producer not heard from for `producer_expiry` (by the server's clock, Kafka's
//! `producer.id.expiration.ms`) is forgotten, as is the quietest one past [`PRODUCERS_MAX`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::DataError;
use crate::OffsetRange;

/// Batches remembered per producer (Kafka keeps five: the most a producer has in flight).
pub const BATCHES_KEPT: usize = 5;
/// Producers remembered per partition; past it, the one quiet the longest is forgotten.
pub const PRODUCERS_MAX: usize = 4096;
/// How often (at most) a partition looks for expired producers, in milliseconds.
const EXPIRY_SWEEP_EVERY_MS: i64 = 1000;

/// One batch a producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedBatch {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Where it went.
    pub offsets: OffsetRange,
    /// Where it ends in its segment (recovery keeps only what the log still holds).
    pub end_pos: u64,
}

/// What the partition knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    batches: VecDeque<ProducedBatch>,
    /// The newest batch's largest timestamp (ms): who has been quiet longest.
    last_timestamp: i64,
    /// When the server last recorded a batch of it (ms since the epoch, the server's clock;
    /// at start, when the log was read): what expiry goes by, whatever the clients' clocks.
    last_seen_ms: i64,
}

/// One producer's state as a segment summary saves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedProducer {
    /// Producer id.
    pub id: i64,
    /// Its current epoch.
    pub epoch: i16,
    /// The newest batch's largest timestamp (ms).
    pub last_timestamp: i64,
    /// When the server last recorded a batch of it (ms since the epoch, the server's clock).
    pub last_seen_ms: i64,
    /// Its last batches, oldest first (at most [`BATCHES_KEPT`]; `end_pos` is not saved).
    pub batches: Vec<ProducedBatch>,
}

/// The idempotence fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    /// Producer id (at least 0).
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Records in the batch (at least one).
    pub records: u32,
    /// Largest record timestamp (ms).
    pub max_timestamp: i64,
}

impl Sequenced {
    /// Sequence of the batch's last record.
    pub fn last_seq(&self) -> i32 {
        seq_add(self.first_seq, self.records - 1)
    }
}

/// The idempotence fields of `view`, if its producer is idempotent (producer id 0 or more).
pub fn sequenced(view: &keel_format::batch::BatchView<'_>) -> Option<Sequenced> {
    let producer_id = view.producer_id();
    let records = u32::try_from(view.record_count()).ok().filter(|&n| n > 0)?;
    (producer_id >= 0).then(|| Sequenced {
        producer_id,
        epoch: view.producer_epoch(),
        first_seq: view.base_sequence(),
        records,
        max_timestamp: view.max_timestamp(),
    })
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Write,
    /// Written before: answer with these offsets.
    Duplicate(OffsetRange),
    /// Its epoch is older than the producer's `current` one.
    Fenced {
        /// The producer's epoch.
        current: i16,
    },
    /// It does not follow the producer's last batch.
    OutOfOrder {
        /// The sequence a batch of this producer must start at.
        expected: i32,
    },
}

impl Verdict {
    /// The error answering a refused batch `b`; only [`Verdict::Fenced`] and
    /// [`Verdict::OutOfOrder`] are refusals.
    pub fn refusal(self, b: &Sequenced) -> DataError {
        match self {
            Verdict::Fenced { current } => DataError::ProducerFenced {
                producer_id: b.producer_id,
                epoch: b.epoch,
                current,
            },
            Verdict::OutOfOrder { expected } => DataError::OutOfOrderSequence {
                producer_id: b.producer_id,
                expected,
                got: b.first_seq,
            },
            Verdict::Write | Verdict::Duplicate(_) => DataError::BrokenInvariant {
                topic: String::new(),
                partition: 0,
                what: format!("{self:?} taken for a refusal of producer {}", b.producer_id),
            },
        }
    }
}

/// The producers of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Producers {
    by_id: HashMap<i64, Producer>,
    /// Forget a producer not seen for this long (ms); 0: never.
    expiry_ms: i64,
    /// The next time (ms) to look for expired producers.
    next_sweep_ms: i64,
}

/// Now, in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `seq` plus `n`, wrapping past `i32::MAX` to 0 as Kafka's sequences do.
fn seq_add(seq: i32, n: u32) -> i32 {
    let wrapped = (i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1);
    // The remainder is below i32::MAX + 1, so it fits.
    i32::try_from(wrapped).unwrap_or(0)
}

impl Producers {
    /// What to do with batch `b`.
    pub fn check(&self, b: &Sequenced) -> Verdict {
        // Sequences start at 0 and never go below it.
        if b.first_seq < 0 {
            return Verdict::OutOfOrder { expected: 0 };
        }
        let Some(p) = self.by_id.get(&b.producer_id) else {
            return Verdict::Write;
        };
        if b.epoch < p.epoch {
            return Verdict::Fenced { current: p.epoch };
        }
        if b.epoch > p.epoch {
            return if b.first_seq == 0 {
                Verdict::Write
            } else {
                Verdict::OutOfOrder { expected: 0 }
            };
        }
        let last_seq = b.last_seq();
        if let Some(seen) = p
            .batches
            .iter()
            .find(|s| s.first_seq == b.first_seq && s.last_seq == last_seq)
        {
            return Verdict::Duplicate(seen.offsets);
        }
        match p.batches.back() {
            Some(newest) if seq_add(newest.last_seq, 1) != b.first_seq => Verdict::OutOfOrder {
                expected: seq_add(newest.last_seq, 1),
            },
            _ => Verdict::Write,
        }
    }

    /// Forgets producers not seen for `expiry` from now on (`None`: never).
    pub fn set_expiry(&mut self, expiry: Option<Duration>) {
        self.expiry_ms = expiry.map_or(0, |e| i64::try_from(e.as_millis()).unwrap_or(i64::MAX));
        self.next_sweep_ms = 0;
    }

    /// Records that batch `b` was written at `offsets`, ending at `end_pos` of its segment.
    pub fn record(&mut self, b: &Sequenced, offsets: OffsetRange, end_pos: u64) {
        self.record_at(b, offsets, end_pos, now_ms());
    }

    /// [`Producers::record`] at `now_ms` by the server's clock.
    fn record_at(&mut self, b: &Sequenced, offsets: OffsetRange, end_pos: u64, now_ms: i64) {
        let batch = ProducedBatch {
            first_seq: b.first_seq,
            last_seq: b.last_seq(),
            offsets,
            end_pos,
        };
        self.push(b.producer_id, b.epoch, batch, b.max_timestamp, now_ms);
        self.expire(now_ms);
    }

    /// Forgets the producers not seen for the expiry, at most once a second.
    fn expire(&mut self, now_ms: i64) {
        if self.expiry_ms == 0 || now_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now_ms.saturating_add(EXPIRY_SWEEP_EVERY_MS);
        let oldest_kept = now_ms.saturating_sub(self.expiry_ms);
        self.by_id.retain(|_, p| p.last_seen_ms >= oldest_kept);
    }

    /// Takes in what a scan of the next segment found, keeping only batches that end at or
    /// before `durable_end` (the rest were cut from the log).
    pub fn absorb(&mut self, later: Producers, durable_end: u64) {
        let now = now_ms();
        for (id, p) in later.by_id {
            for &batch in p.batches.iter().filter(|b| b.end_pos <= durable_end) {
                self.push(id, p.epoch, batch, p.last_timestamp, now);
            }
        }
    }

    /// The state as it was when the log ended at `next_offset`: each producer's batches below
    /// it, ordered by producer id. A roll saves it while batches bound for the next segment may
    /// be gathered already.
    pub fn saved_before(&self, next_offset: u64) -> Vec<SavedProducer> {
        let mut saved: Vec<SavedProducer> = self
            .by_id
            .iter()
            .filter_map(|(&id, p)| {
                let batches: Vec<ProducedBatch> = p
                    .batches
                    .iter()
                    .filter(|b| b.offsets.last < next_offset)
                    .map(|b| ProducedBatch { end_pos: 0, ..*b })
                    .collect();
                (!batches.is_empty()).then_some(SavedProducer {
                    id,
                    epoch: p.epoch,
                    last_timestamp: p.last_timestamp,
                    last_seen_ms: p.last_seen_ms,
                    batches,
                })
            })
            .collect();
        saved.sort_unstable_by_key(|p| p.id);
        saved
    }

    /// The state a summary saved ([`Producers::saved_before`]), without an expiry (see
    /// [`Producers::set_expiry`]).
    pub fn restore(saved: Vec<SavedProducer>) -> Self {
        let by_id = saved
            .into_iter()
            .map(|p| {
                let producer = Producer {
                    epoch: p.epoch,
                    batches: p.batches.into(),
                    last_timestamp: p.last_timestamp,
                    last_seen_ms: p.last_seen_ms,
                };
                (p.id, producer)
            })
            .collect();
        Self {
            by_id,
            ..Self::default()
        }
    }

    /// Adds `batch` as producer `id`'s newest at `epoch` (a new epoch forgets the old one's).
    fn push(&mut self, id: i64, epoch: i16, batch: ProducedBatch, timestamp: i64, now_ms: i64) {
        if !self.by_id.contains_key(&id) && self.by_id.len() >= PRODUCERS_MAX {
            self.forget_quietest();
        }
        let p = self.by_id.entry(id).or_insert_with(|| Producer {
            epoch,
            batches: VecDeque::new(),
            last_timestamp: timestamp,
            last_seen_ms: now_ms,
        });
        p.last_seen_ms = p.last_seen_ms.max(now_ms);
        if epoch != p.epoch {
            p.epoch = epoch;
            p.batches.clear();
        }
        if p.batches.len() == BATCHES_KEPT {
            p.batches.pop_front();
        }
        p.batches.push_back(batch);
        p.last_timestamp = p.last_timestamp.max(timestamp);
    }

    /// Producers known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    fn forget_quietest(&mut self) {
        let quietest = self
            .by_id
            .iter()
            .min_by_key(|(_, p)| p.last_timestamp)
            .map(|(&id, _)| id);
        if let Some(id) = quietest {
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, first_seq: i32, records: u32) -> Sequenced {
        Sequenced {
            producer_id: 7,
            epoch,
            first_seq,
            records,
            max_timestamp: 1,
        }
    }

    fn at(first: u64, last: u64) -> OffsetRange {
        OffsetRange { first, last }
    }

    #[test]
    fn a_producer_goes_on_in_sequence_and_a_repeat_gets_its_first_offsets() {
        let mut p = Producers::default();
        assert_eq!(p.check(&batch(0, 0, 3)), Verdict::Write);
        p.record(&batch(0, 0, 3), at(10, 12), 100);
        assert_eq!(p.check(&batch(0, 3, 2)), Verdict::Write);
        p.record(&batch(0, 3, 2), at(20, 21), 200);
        assert_eq!(p.check(&batch(0, 0, 3)), Verdict::Duplicate(at(10, 12)));
        assert_eq!(p.check(&batch(0, 3, 2)), Verdict::Duplicate(at(20, 21)));
        assert_eq!(
            p.check(&batch(0, 6, 1)),
            Verdict::OutOfOrder { expected: 5 },
            "a gap"
        );
        assert_eq!(
            p.check(&batch(0, 0, 2)),
            Verdict::OutOfOrder { expected: 5 },
            "an old sequence that is not a batch it remembers"
        );
    }

    #[test]
    fn epochs_fence_the_old_and_a_new_one_starts_at_zero() {
        let mut p = Producers::default();
        p.record(&batch(3, 0, 1), at(0, 0), 10);
        assert_eq!(p.check(&batch(2, 1, 1)), Verdict::Fenced { current: 3 });
        assert_eq!(
            p.check(&batch(4, 5, 1)),
            Verdict::OutOfOrder { expected: 0 }
        );
        assert_eq!(p.check(&batch(4, 0, 1)), Verdict::Write);
        p.record(&batch(4, 0, 1), at(1, 1), 20);
        assert_eq!(p.check(&batch(3, 1, 1)), Verdict::Fenced { current: 4 });
        assert_eq!(
            p.check(&batch(4, 0, 1)),
            Verdict::Duplicate(at(1, 1)),
            "the old epoch's batches are gone"
        );
    }

    #[test]
    fn only_the_last_batches_are_remembered_and_sequences_wrap() {
        let mut p = Producers::default();
        for i in 0..10u64 {
            p.record(&batch(0, i as i32, 1), at(i, i), i);
        }
        assert_eq!(
            p.check(&batch(0, 4, 1)),
            Verdict::OutOfOrder { expected: 10 }
        );
        assert_eq!(p.check(&batch(0, 5, 1)), Verdict::Duplicate(at(5, 5)));
        let mut w = Producers::default();
        w.record(&batch(0, i32::MAX - 1, 2), at(0, 1), 1);
        assert_eq!(
            w.check(&batch(0, 0, 1)),
            Verdict::Write,
            "after i32::MAX comes 0"
        );
        assert_eq!(batch(0, i32::MAX, 3).last_seq(), 1);
    }

    #[test]
    fn an_unknown_producer_may_start_anywhere_and_the_quietest_is_forgotten_first() {
        let mut p = Producers::default();
        assert_eq!(p.check(&batch(0, 500, 1)), Verdict::Write);
        for id in 0..PRODUCERS_MAX as i64 {
            let b = Sequenced {
                producer_id: id + 100,
                max_timestamp: id + 10,
                ..batch(0, 0, 1)
            };
            p.record(&b, at(0, 0), 0);
        }
        assert_eq!(p.len(), PRODUCERS_MAX);
        let newcomer = Sequenced {
            producer_id: 1,
            ..batch(0, 0, 1)
        };
        p.record(&newcomer, at(1, 1), 0);
        assert_eq!(p.len(), PRODUCERS_MAX, "bounded");
        let quietest = Sequenced {
            producer_id: 100,
            ..batch(0, 1, 1)
        };
        assert_eq!(p.check(&quietest), Verdict::Write, "forgotten: no state");
    }

    #[test]
    fn a_producer_not_seen_for_the_expiry_is_forgotten_by_the_servers_clock() {
        let mut p = Producers::default();
        p.set_expiry(Some(Duration::from_secs(60)));
        let quiet = Sequenced {
            producer_id: 1,
            ..batch(0, 0, 1)
        };
        let busy = Sequenced {
            producer_id: 2,
            ..batch(0, 0, 1)
        };
        let t0 = 1_000_000;
        p.record_at(&quiet, at(0, 0), 0, t0);
        p.record_at(&busy, at(1, 1), 0, t0);
        for (i, minute) in (1..=3i64).enumerate() {
            let next = Sequenced {
                first_seq: 1 + i as i32,
                ..busy
            };
            p.record_at(
                &next,
                at(2 + i as u64, 2 + i as u64),
                0,
                t0 + minute * 30_000,
            );
        }
        // 90 s after it was last seen, the quiet one is gone: its repeat is written as new.
        assert_eq!(p.len(), 1);
        assert_eq!(p.check(&quiet), Verdict::Write);
        assert_eq!(
            p.check(&Sequenced {
                first_seq: 3,
                ..busy
            }),
            Verdict::Duplicate(at(4, 4)),
            "the busy one is remembered"
        );
        // Without an expiry nobody is forgotten for being quiet.
        let mut kept = Producers::default();
        kept.record_at(&quiet, at(0, 0), 0, t0);
        kept.record_at(&busy, at(1, 1), 0, t0 + 10 * 86_400_000);
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn a_saved_state_holds_only_batches_before_the_end_and_restores_the_same_verdicts() {
        let mut p = Producers::default();
        let other = |first_seq| Sequenced {
            producer_id: 9,
            ..batch(1, first_seq, 1)
        };
        p.record(&batch(0, 0, 2), at(0, 1), 100);
        p.record(&other(0), at(2, 2), 200);
        p.record(&batch(0, 2, 1), at(3, 3), 300);
        p.record(&other(1), at(4, 4), 50);
        let saved = p.saved_before(4);
        assert_eq!(
            saved.iter().map(|s| s.id).collect::<Vec<_>>(),
            [7, 9],
            "ordered by id"
        );
        assert_eq!(saved[1].batches.len(), 1, "offset 4 lies past the end");
        assert!(saved
            .iter()
            .flat_map(|s| &s.batches)
            .all(|b| b.end_pos == 0));
        let restored = Producers::restore(saved);
        for b in [batch(0, 0, 2), batch(0, 2, 1), other(0)] {
            assert_eq!(restored.check(&b), p.check(&b), "{b:?}");
        }
        assert_eq!(
            restored.check(&other(1)),
            Verdict::Write,
            "the batch past the end is not remembered"
        );
        assert_eq!(restored.check(&batch(0, 9, 1)), p.check(&batch(0, 9, 1)));
    }

    #[test]
    fn absorbing_a_later_segment_keeps_only_what_the_log_still_holds() {
        let mut first = Producers::default();
        first.record(&batch(0, 0, 1), at(0, 0), 4096);
        let mut later = Producers::default();
        later.record(&batch(0, 1, 1), at(1, 1), 4096);
        later.record(&batch(0, 2, 1), at(2, 2), 8192);
        first.absorb(later, 4096);
        assert_eq!(first.check(&batch(0, 1, 1)), Verdict::Duplicate(at(1, 1)));
        assert_eq!(
            first.check(&batch(0, 2, 1)),
            Verdict::Write,
            "cut from the log"
        );
    }
}
