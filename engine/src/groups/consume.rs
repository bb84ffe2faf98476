//! A consume request while shards serve it. It goes from shard to shard (each serves the
//! partitions of the group it owns, and hands the request on while the answer has room) and is
//! answered once: with what the shards found on their first look, or, when none found anything
//! and the request may wait, by the first shard that has something later (or at its
//! deadline). What the shards share is atomic: the room left in
//! the answer (messages and bytes), the count of shards still looking, and the claim on the
//! one answer; parts and the answer's continuation pass through bounded channels, never a lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use keel_format::batch::trusted_batches;

use crate::delivery::{Delivery, MemberId};
use crate::error::GroupError;
use crate::groups::members::Member;
use crate::groups::GroupKey;

/// The messages of one partition in a consume answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedPartition {
    /// Partition.
    pub partition: u32,
    /// The messages handed to the member, ascending.
    pub deliveries: Vec<Delivery>,
    /// Whole batches holding them, as stored.
    pub batches: Vec<u8>,
}

/// Called once with a consume's answer.
pub(crate) type ConsumeDone = Box<dyn FnOnce(Result<Vec<ConsumedPartition>, GroupError>) + Send>;

/// What the shards serving one consume share.
pub struct ConsumeGather {
    room: AtomicUsize,
    bytes: AtomicUsize,
    /// A batch larger than the whole byte budget may go once, so it is never stuck.
    oversized_taken: AtomicBool,
    budget: usize,
    /// Shards that have not finished their first look.
    first_looks: AtomicUsize,
    answered: AtomicBool,
    /// Shards where the request waits for messages.
    waiting: AtomicUsize,
    /// A shard did not know the member (its session ended): the answer says so.
    unknown: AtomicBool,
    parts_tx: Sender<Vec<ConsumedPartition>>,
    parts_rx: Receiver<Vec<ConsumedPartition>>,
    done: Receiver<ConsumeDone>,
    /// Until when the request may wait for messages.
    pub until: Option<Instant>,
}

impl ConsumeGather {
    /// A consume of up to `max` messages and `budget` batch bytes, served by `shards` shards.
    pub fn new(
        max: usize,
        budget: usize,
        shards: usize,
        until: Option<Instant>,
        done: ConsumeDone,
    ) -> Arc<Self> {
        let (parts_tx, parts_rx) = bounded(shards.max(1));
        let (done_tx, done_rx) = bounded(1);
        // The channel was made with room for it.
        let _ = done_tx.send(done);
        Arc::new(Self {
            room: AtomicUsize::new(max),
            bytes: AtomicUsize::new(budget),
            oversized_taken: AtomicBool::new(false),
            budget,
            first_looks: AtomicUsize::new(shards),
            answered: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            unknown: AtomicBool::new(false),
            parts_tx,
            parts_rx,
            done: done_rx,
            until,
        })
    }

    /// Takes room for up to `want` messages; returns how many.
    pub fn take_room(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .room
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |room| {
                granted = want.min(room);
                Some(room - granted)
            });
        granted
    }

    /// Gives back room taken and not used.
    pub fn give_room(&self, n: usize) {
        self.room.fetch_add(n, Ordering::AcqRel);
    }

    /// Whether the answer has room for no more messages.
    pub fn full(&self) -> bool {
        self.room.load(Ordering::Acquire) == 0 || self.bytes.load(Ordering::Acquire) == 0
    }

    /// Batch bytes the answer may still carry.
    pub fn bytes_left(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Takes `len` bytes of the answer for a batch: false when it does not fit (a batch larger
    /// than the whole budget fits once).
    fn take_bytes(&self, len: usize) -> bool {
        let fits = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(len))
            .is_ok();
        fits || (len > self.budget && !self.oversized_taken.swap(true, Ordering::AcqRel))
    }

    /// A shard did not know the member.
    pub fn member_unknown(&self) {
        self.unknown.store(true, Ordering::Release);
    }

    /// Adds what one shard found (not empty).
    pub fn add_part(&self, part: Vec<ConsumedPartition>) {
        assert!(!part.is_empty(), "only parts with messages are added");
        // Each shard adds at most one part per answer, and the channel has room for each.
        let _ = self.parts_tx.try_send(part);
    }

    /// Whether any shard added messages.
    pub fn has_parts(&self) -> bool {
        !self.parts_rx.is_empty()
    }

    /// `n` shards finished their first look (or will take none); true for the caller that
    /// finished the last.
    pub fn first_looks_over(&self, n: usize) -> bool {
        let before = self.first_looks.fetch_sub(n, Ordering::AcqRel);
        assert!(before >= n, "no more looks finish than there are");
        before == n
    }

    /// Whether every shard finished its first look.
    pub fn first_looks_done(&self) -> bool {
        self.first_looks.load(Ordering::Acquire) == 0
    }

    /// A shard keeps the request waiting for messages.
    pub fn note_waiting(&self) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a shard keeps the request waiting.
    pub fn any_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Claims the one answer; true for the caller that did.
    pub fn claim(&self) -> bool {
        !self.answered.swap(true, Ordering::AcqRel)
    }

    /// Whether the answer was claimed.
    pub fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Answers with every part added (after [`ConsumeGather::claim`] returned true); when
    /// none was and a shard did not know the member, says so.
    pub fn answer(&self, group: &str, member: MemberId) {
        let Ok(done) = self.done.try_recv() else {
            return;
        };
        if self.unknown.load(Ordering::Acquire) && !self.has_parts() {
            let err = GroupError::UnknownMember {
                group: group.to_string(),
                member,
            };
            return done(Err(err));
        }
        let mut parts: Vec<ConsumedPartition> = self.parts_rx.try_iter().flatten().collect();
        parts.sort_by_key(|p| p.partition);
        done(Ok(parts));
    }
}

/// Which look a shard is taking for a consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// The first, as the request arrives: every shard takes one, and the last to finish answers
    /// unless the request waits.
    First,
    /// A waiting request looked at again on this shard (something changed, or time is up).
    Again,
}

/// One shard's work on one consume: the partitions it still has to look at.
pub struct ConsumeTask {
    /// The group.
    pub key: GroupKey,
    /// The member consuming.
    pub member: Arc<Member>,
    /// What the shards serving the request share.
    pub gather: Arc<ConsumeGather>,
    /// The shards still to take their first look, in turn.
    pub chain: Vec<usize>,
    /// Partitions of this shard still to look at, the next last.
    pub todo: Vec<u32>,
    /// What this shard found so far.
    pub found: Vec<ConsumedPartition>,
    /// Which look this is.
    pub look: Look,
    /// What a read in flight is for.
    pub reading: Option<Reading>,
    /// Until when this shard keeps the request waiting (on a look again).
    pub until: Option<Instant>,
}

/// The messages of one partition handed to a member whose batches are being read.
pub struct Reading {
    /// Partition.
    pub partition: u32,
    /// Where the read starts: the lowest offset wanted.
    pub from: u64,
    /// Bytes to read: what the offsets handed out are expected to take.
    pub bytes: usize,
    /// Messages handed out, ascending: sent if the read covers them, given back if not.
    pub deliveries: Vec<Delivery>,
    /// Messages to copy to the dead-letter topic, from what the read holds.
    pub dead_letters: Vec<u64>,
}

/// What covering some deliveries with the batches read found.
pub struct Covered {
    /// Deliveries covered: a prefix of those asked for.
    pub sent: usize,
    /// The batches holding them, as stored.
    pub batches: Vec<u8>,
}

/// The whole batches of `data` (batches read from a partition) holding `deliveries`
/// (ascending), within the answer's byte budget; stops at the first delivery it cannot carry.
pub fn cover(deliveries: &[Delivery], data: &[u8], gather: &ConsumeGather) -> Covered {
    let mut batches = Vec::new();
    let mut next = 0;
    for b in trusted_batches(data) {
        let Some(want) = deliveries.get(next) else {
            break;
        };
        let (base, last) = (b.base_offset() as u64, b.last_offset() as u64);
        if last < want.offset {
            continue;
        }
        if base > want.offset || !gather.take_bytes(b.bytes().len()) {
            break;
        }
        batches.extend_from_slice(b.bytes());
        while deliveries.get(next).is_some_and(|d| d.offset <= last) {
            next += 1;
        }
    }
    Covered {
        sent: next,
        batches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_format::batch::{set_base_offset, BatchBuilder};
    use std::sync::mpsc;

    fn batch_at(base: u64, records: usize, value_bytes: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(0);
        for _ in 0..records {
            b.push(None, &vec![7; value_bytes], &[]);
        }
        let mut bytes = b.build();
        set_base_offset(&mut bytes, base);
        bytes
    }

    fn at(offset: u64) -> Delivery {
        Delivery {
            offset,
            delivery_count: 1,
        }
    }

    #[test]
    fn cover_takes_the_batches_holding_the_deliveries_within_the_budget() {
        let mut data = batch_at(0, 2, 10);
        data.extend(batch_at(2, 2, 10));
        data.extend(batch_at(4, 2, 10));
        let one = batch_at(0, 2, 10).len();
        let gather = ConsumeGather::new(10, 2 * one, 1, None, Box::new(|_| ()));
        let c = cover(&[at(1), at(4), at(5)], &data, &gather);
        assert_eq!(c.sent, 3, "batches 0 and 4 fit; 2 holds nothing wanted");
        assert_eq!(c.batches.len(), 2 * one);
        assert_eq!(gather.bytes_left(), 0);
        let c = cover(&[at(2)], &data, &gather);
        assert_eq!(c.sent, 0, "no room left");
    }

    #[test]
    fn a_batch_larger_than_the_whole_budget_goes_once() {
        let data = batch_at(0, 1, 1000);
        let gather = ConsumeGather::new(10, 100, 1, None, Box::new(|_| ()));
        assert_eq!(cover(&[at(0)], &data, &gather).sent, 1);
        assert_eq!(cover(&[at(0)], &data, &gather).sent, 0);
    }

    #[test]
    fn one_answer_with_every_part_from_whoever_claims_it() {
        let (tx, rx) = mpsc::channel();
        let gather = ConsumeGather::new(10, 100, 2, None, Box::new(move |r| tx.send(r).unwrap()));
        assert_eq!(gather.take_room(6), 6);
        assert_eq!(gather.take_room(6), 4);
        gather.add_part(vec![ConsumedPartition {
            partition: 3,
            deliveries: vec![at(1)],
            batches: vec![],
        }]);
        assert!(!gather.first_looks_over(1));
        assert!(gather.first_looks_over(1));
        assert!(gather.claim());
        assert!(!gather.claim());
        gather.answer("g", 1);
        gather.answer("g", 1);
        let parts = rx.try_recv().unwrap().unwrap();
        assert_eq!(parts.len(), 1);
        assert!(rx.try_recv().is_err(), "answered once");
    }
}
