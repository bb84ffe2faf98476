//! The producer's accumulator: per partition, the batches being filled, waiting and in
//! flight, in the order they were made; and the rules that say which batch is sent when.
//!
//! A partition's batches sit in one queue, oldest first: those in flight, then those waiting
//! (a batch whose request failed for a passing reason waits again in its place), then the one
//! being filled. Only the first waiting batch may go next, so a partition's batches reach the
//! server in the order their messages were sent, retries included.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_format::batch::BatchBuilder;

use super::delivery::{Delivery, Outcome};
use crate::client::now_ms;
use crate::error::ClientError;

/// Bytes a record takes in a batch besides its key, value and headers, at most (length,
/// attributes, deltas, and the lengths of the parts).
const RECORD_OVERHEAD_BYTES: usize = 24;

/// A message as it is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a [u8], &'a [u8])],
}

impl Message<'_> {
    /// The bytes it takes in a batch, at most.
    pub fn size(&self) -> usize {
        RECORD_OVERHEAD_BYTES
            + self.key.map_or(0, <[u8]>::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 10)
                .sum::<usize>()
    }
}

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Not sent, or to be sent again.
    Waiting,
    /// Sent, as the request with this correlation id.
    InFlight(u32),
}

/// One batch of messages for one partition.
pub(crate) struct Batch {
    pub builder: BatchBuilder,
    pub outcome: Arc<Outcome>,
    pub created: Instant,
    /// Message bytes counted against the producer's buffer.
    pub bytes: usize,
    pub stage: Stage,
    /// No message joins it any more.
    pub closed: bool,
    /// Its base sequence at the producer's current epoch, once numbered (idempotent
    /// producers number a batch when they first send it).
    pub sequence: Option<i32>,
    /// Not to be sent again before then (a retry's pause).
    pub retry_at: Option<Instant>,
    /// It was sent and no answer said whether it was stored (the connection was lost).
    pub maybe_stored: bool,
    /// Why it was last refused, for the error if the producer gives up on it.
    pub last_refusal: Option<String>,
    /// Times it was sent.
    pub sends: u32,
}

impl Batch {
    fn new(now: Instant, outcome: Arc<Outcome>) -> Self {
        Self {
            builder: BatchBuilder::new(now_ms()),
            outcome,
            created: now,
            bytes: 0,
            stage: Stage::Waiting,
            closed: false,
            sequence: None,
            retry_at: None,
            maybe_stored: false,
            last_refusal: None,
            sends: 0,
        }
    }

    pub fn records(&self) -> usize {
        self.builder.len()
    }
}

/// The rules a partition's queue is run by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub linger: Duration,
    pub batch_bytes: usize,
    pub in_flight_max: usize,
    pub delivery_timeout: Duration,
}

/// One partition's batches.
#[derive(Default)]
pub(crate) struct PartitionQueue {
    pub batches: VecDeque<Batch>,
    /// The sequence the next numbered batch starts at.
    pub next_sequence: i32,
    /// In its topic's list of partitions with batches.
    listed: bool,
    /// Record bytes the last batch closed with: a new batch reserves as much, so a steady
    /// stream fills its batches without growing them a doubling at a time.
    last_records_bytes: usize,
}

impl PartitionQueue {
    /// Adds `m` to the batch being filled, or to a new one whose outcome `new_outcome` makes.
    pub fn append(
        &mut self,
        m: &Message<'_>,
        rules: &Rules,
        now: Instant,
        new_outcome: impl FnOnce() -> Arc<Outcome>,
    ) -> Delivery {
        let size = m.size();
        let fits = self.batches.back().is_some_and(|b| {
            !b.closed
                && b.stage == Stage::Waiting
                && b.builder.encoded_len() + size <= rules.batch_bytes
        });
        if !fits {
            if let Some(b) = self.batches.back_mut() {
                b.closed = true;
                self.last_records_bytes = b.bytes;
            }
            let mut batch = Batch::new(now, new_outcome());
            batch
                .builder
                .reserve(self.last_records_bytes.min(rules.batch_bytes));
            self.batches.push_back(batch);
        }
        let Some(b) = self.batches.back_mut() else {
            unreachable!("a batch was just made");
        };
        let index = b.records() as u32;
        b.builder.push(m.key, m.value, m.headers);
        b.bytes += size;
        if b.builder.encoded_len() >= rules.batch_bytes {
            b.closed = true;
        }
        Delivery::new(Arc::clone(&b.outcome), index)
    }

    pub fn in_flight(&self) -> usize {
        self.batches
            .iter()
            .filter(|b| matches!(b.stage, Stage::InFlight(_)))
            .count()
    }

    /// The first waiting batch: the only one that may be sent next.
    pub fn next_waiting(&self) -> Option<usize> {
        self.batches.iter().position(|b| b.stage == Stage::Waiting)
    }

    /// Whether the batch at `at` (the first waiting one) may be sent now, given the
    /// partition's requests in flight; `hurry`: send without lingering (a flush, a close).
    pub fn sendable(&self, at: usize, rules: &Rules, now: Instant, hurry: bool) -> bool {
        let in_flight = self.in_flight();
        let Some(b) = self.batches.get(at) else {
            return false;
        };
        if in_flight >= rules.in_flight_max || b.retry_at.is_some_and(|t| t > now) {
            return false;
        }
        hurry
            || b.closed
            || at + 1 < self.batches.len()
            || in_flight == 0
            || now >= b.created + rules.linger
    }

    /// When this partition next needs looking at: its first waiting batch's linger or retry
    /// pause ending, if it could be sent then.
    pub fn next_due(&self, rules: &Rules) -> Option<Instant> {
        let in_flight = self.in_flight();
        if in_flight >= rules.in_flight_max {
            return None;
        }
        let b = self.batches.get(self.next_waiting()?)?;
        Some(match b.retry_at {
            Some(t) => t,
            None if b.closed || in_flight == 0 => b.created,
            None => b.created + rules.linger,
        })
    }

    /// Numbers the batch at `at` if it is not yet: its base sequence, and the next one after
    /// its records.
    pub fn number(&mut self, at: usize) -> Option<i32> {
        let next = self.next_sequence;
        let b = self.batches.get_mut(at)?;
        if let Some(s) = b.sequence {
            return Some(s);
        }
        b.sequence = Some(next);
        // Sequences wrap past i32::MAX to 0, as the server's do.
        let after = (i64::from(next) + b.records() as i64) % (i64::from(i32::MAX) + 1);
        self.next_sequence = i32::try_from(after).unwrap_or(0);
        Some(next)
    }

    /// The position of the batch in flight as request `id`.
    pub fn find(&self, id: u32) -> Option<usize> {
        self.batches
            .iter()
            .position(|b| b.stage == Stage::InFlight(id))
    }

    /// Whether a batch before sequence `seq` is waiting to be sent again or in flight: a
    /// later batch refused as out of order then only waits for it.
    pub fn earlier_pending(&self, seq: i32, except: usize) -> bool {
        self.batches.iter().enumerate().any(|(i, b)| {
            i != except
                && b.sequence.is_some_and(|s| s < seq)
                && (b.stage == Stage::Waiting || matches!(b.stage, Stage::InFlight(_)))
        })
    }

    /// Takes out every waiting batch made longer ago than the delivery timeout, for the
    /// caller to fail (outside its lock).
    pub fn expire(&mut self, rules: &Rules, now: Instant, out: &mut Vec<Batch>) {
        let mut i = 0;
        while i < self.batches.len() {
            let b = &self.batches[i];
            if b.stage == Stage::Waiting && now >= b.created + rules.delivery_timeout {
                out.extend(self.batches.remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// Forgets every batch's sequence (after the producer's epoch changed: nothing waiting
    /// was stored) and starts again at 0.
    pub fn renumber(&mut self) {
        self.next_sequence = 0;
        for b in &mut self.batches {
            b.sequence = None;
        }
    }
}

/// The error a batch the producer gives up on is failed with; `unconnected`: why the
/// producer has no connection, if it has none.
pub(crate) fn gave_up(timeout: Duration, b: &Batch, unconnected: Option<&str>) -> ClientError {
    let why = match (&b.last_refusal, unconnected) {
        (Some(refusal), _) => refusal.clone(),
        (None, Some(why)) => format!("no connection to the server: {why}"),
        (None, None) => "it could not be sent in time".into(),
    };
    ClientError::DeliveryTimeout {
        after: timeout,
        why,
        maybe_stored: b.maybe_stored,
    }
}

/// A topic's partitions and where its keyless messages go.
pub(crate) struct TopicQueues {
    pub name: Arc<str>,
    pub partitions: Vec<PartitionQueue>,
    /// The partitions that hold batches (and, until [`TopicQueues::prune`], some that held
    /// them): what sending and timers look at, so that a topic of many partitions costs what
    /// its busy ones do.
    active: Vec<u32>,
    /// The partition keyless messages go to now, and the bytes sent there since it was
    /// chosen: it changes once a batch's worth went there (Kafka's sticky partitioner).
    sticky: u32,
    sticky_bytes: usize,
}

impl TopicQueues {
    pub fn new(name: &str, partitions: u32, first_sticky: u32) -> Self {
        let partitions = partitions.max(1);
        Self {
            name: Arc::from(name),
            partitions: (0..partitions).map(|_| PartitionQueue::default()).collect(),
            active: Vec::new(),
            sticky: first_sticky % partitions,
            sticky_bytes: 0,
        }
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// Lists partition `p` among the active ones, before something is added to its queue.
    pub fn list_active(&mut self, p: u32) {
        if let Some(q) = self.partitions.get_mut(p as usize) {
            if !q.listed {
                q.listed = true;
                self.active.push(p);
            }
        }
    }

    /// The partitions that may hold batches, and their queues.
    pub fn active(&self) -> impl Iterator<Item = (u32, &PartitionQueue)> {
        self.active
            .iter()
            .filter_map(|&p| self.partitions.get(p as usize).map(|q| (p, q)))
    }

    /// Calls `f` with each partition that may hold batches, and its queue.
    pub fn each_active(&mut self, mut f: impl FnMut(u32, &mut PartitionQueue)) {
        for &p in &self.active {
            if let Some(q) = self.partitions.get_mut(p as usize) {
                f(p, q);
            }
        }
    }

    /// Drops the partitions left without batches from the active list.
    pub fn prune(&mut self) {
        let partitions = &mut self.partitions;
        self.active
            .retain(|&p| match partitions.get_mut(p as usize) {
                Some(q) if q.batches.is_empty() => {
                    q.listed = false;
                    false
                }
                Some(_) => true,
                None => false,
            });
    }

    /// The partition `m` goes to: the one asked for, its key's (Kafka's murmur2), or the
    /// sticky one.
    pub fn choose(
        &mut self,
        m: &Message<'_>,
        asked: Option<u32>,
        rules: &Rules,
    ) -> Result<u32, ClientError> {
        let n = self.partition_count();
        if let Some(p) = asked {
            if p >= n {
                return Err(ClientError::Server {
                    code: keel_protocol::ErrorCode::UnknownPartition,
                    message: format!("topic {} has {n} partitions; there is no {p}", self.name),
                });
            }
            return Ok(p);
        }
        if let Some(key) = m.key {
            return Ok(keel_protocol::partition_for_key(key, n));
        }
        if self.sticky_bytes >= rules.batch_bytes {
            self.sticky = (self.sticky + 1) % n;
            self.sticky_bytes = 0;
        }
        self.sticky_bytes += m.size();
        Ok(self.sticky)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            linger: Duration::from_millis(5),
            batch_bytes: 1000,
            in_flight_max: 2,
            delivery_timeout: Duration::from_secs(1),
        }
    }

    fn msg(value: &[u8]) -> Message<'_> {
        Message {
            key: None,
            value,
            headers: &[],
        }
    }

    fn outcome() -> Arc<Outcome> {
        Outcome::new(std::sync::Weak::new(), Duration::from_secs(5))
    }

    #[test]
    fn messages_fill_a_batch_until_it_is_full() {
        let (r, now) = (rules(), Instant::now());
        let mut q = PartitionQueue::default();
        let value = [7u8; 300];
        drop(q.append(&msg(&value), &r, now, outcome));
        drop(q.append(&msg(&value), &r, now, outcome));
        assert_eq!(
            q.batches.len(),
            1,
            "the second message joins the first's batch"
        );
        drop(q.append(&msg(&value), &r, now, outcome));
        assert_eq!(q.batches.len(), 2, "the third does not fit in 1000 bytes");
        assert_eq!(q.batches[0].records(), 2);
        assert!(q.batches[0].closed);
        let big = [1u8; 5000];
        drop(q.append(&msg(&big), &r, now, outcome));
        assert_eq!(q.batches.len(), 3, "a message over batch_bytes goes alone");
        assert!(q.batches[2].closed);
    }

    #[test]
    fn an_idle_partition_sends_at_once_and_a_busy_one_lingers() {
        let (r, now) = (rules(), Instant::now());
        let mut q = PartitionQueue::default();
        drop(q.append(&msg(b"a"), &r, now, outcome));
        assert!(q.sendable(0, &r, now, false), "nothing in flight: no wait");
        q.batches[0].stage = Stage::InFlight(1);
        q.batches[0].closed = true;
        drop(q.append(&msg(b"b"), &r, now, outcome));
        assert!(!q.sendable(1, &r, now, false), "one in flight: it lingers");
        assert_eq!(q.next_due(&r), Some(now + r.linger));
        assert!(
            q.sendable(1, &r, now + r.linger, false),
            "until linger ends"
        );
        assert!(q.sendable(1, &r, now, true), "or a flush hurries it");
        q.batches[1].stage = Stage::InFlight(2);
        drop(q.append(&msg(b"c"), &r, now, outcome));
        assert!(
            !q.sendable(2, &r, now + r.linger, true),
            "two in flight is the most"
        );
        assert_eq!(
            q.next_due(&r),
            None,
            "an answer frees a slot, not the clock"
        );
    }

    #[test]
    fn batches_are_numbered_in_order_once() {
        let (r, now) = (rules(), Instant::now());
        let mut q = PartitionQueue::default();
        for v in [[1u8; 600], [2u8; 600], [3u8; 600]] {
            drop(q.append(&msg(&v), &r, now, outcome));
        }
        assert_eq!(q.number(0), Some(0));
        assert_eq!(q.number(0), Some(0), "a resend keeps its number");
        assert_eq!(q.number(1), Some(1));
        q.renumber();
        assert_eq!(q.number(1), Some(0), "a new epoch starts again at 0");
        q.next_sequence = i32::MAX;
        assert_eq!(q.number(2), Some(i32::MAX));
        assert_eq!(q.next_sequence, 0, "after i32::MAX comes 0");
    }

    #[test]
    fn waiting_batches_expire_after_the_delivery_timeout_and_say_why() {
        let (r, now) = (rules(), Instant::now());
        let mut q = PartitionQueue::default();
        let d = q.append(&msg(b"x"), &r, now, outcome);
        q.batches[0].last_refusal = Some("Busy: too many bytes".into());
        let mut out = Vec::new();
        q.expire(&r, now, &mut out);
        assert!(out.is_empty());
        q.expire(&r, now + r.delivery_timeout, &mut out);
        assert_eq!(out.len(), 1);
        let b = &out[0];
        b.outcome.finish(Err(gave_up(r.delivery_timeout, b, None)));
        match d.wait() {
            Err(ClientError::DeliveryTimeout {
                why, maybe_stored, ..
            }) => {
                assert!(why.contains("Busy"), "{why}");
                assert!(!maybe_stored);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_partitions_with_batches_are_looked_at() {
        let (r, now) = (rules(), Instant::now());
        let mut t = TopicQueues::new("t", 1000, 0);
        assert_eq!(t.active().count(), 0);
        for p in [7, 7, 300] {
            t.list_active(p);
            drop(t.partitions[p as usize].append(&msg(b"x"), &r, now, outcome));
        }
        let listed: Vec<u32> = t.active().map(|(p, _)| p).collect();
        assert_eq!(listed, [7, 300], "each listed once");
        t.partitions[7].batches.clear();
        t.prune();
        let listed: Vec<u32> = t.active().map(|(p, _)| p).collect();
        assert_eq!(listed, [300], "an emptied partition leaves the list");
        t.list_active(7);
        drop(t.partitions[7].append(&msg(b"y"), &r, now, outcome));
        assert_eq!(t.active().count(), 2, "and comes back with its next batch");
        t.list_active(1000);
        assert_eq!(t.active().count(), 2, "no such partition: not listed");
    }

    #[test]
    fn keyless_messages_stick_to_a_partition_for_a_batch_then_move_on() {
        let r = rules();
        let mut t = TopicQueues::new("t", 3, 1);
        let value = [0u8; 400];
        let m = msg(&value);
        let picks: Vec<u32> = (0..7).map(|_| t.choose(&m, None, &r).unwrap()).collect();
        assert_eq!(picks, [1, 1, 1, 2, 2, 2, 0]);
        let keyed = Message {
            key: Some(b"customer-7"),
            ..m
        };
        assert_eq!(
            t.choose(&keyed, None, &r).unwrap(),
            keel_protocol::partition_for_key(b"customer-7", 3)
        );
        assert!(t.choose(&m, Some(3), &r).is_err());
    }
}
