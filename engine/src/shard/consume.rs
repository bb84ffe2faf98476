//! Serving a consume on a shard: per partition of the group this shard owns (taking turns),
//! read from where the group wants to deliver next, pick the offsets by the delivery rules
//! within what was read, and carry the whole batches holding them. A read the tail cache cannot
//! answer goes to the disk through the ring, and the consume goes on when it completes. What it
//! found goes into the request's shared answer (`groups/consume.rs`); a request that found
//! nothing and may wait stays as a waiter of the group until something changes or its time
//! is up.

use std::sync::Arc;
use std::time::Instant;

use crate::delivery::MemberId;
use crate::groups::{
    cover, ConsumeGather, ConsumeTask, ConsumedPartition, GroupKey, Look, Reading,
};
use crate::io::Disk;
use crate::read::{DiskRead, ReadFor, ReadResult, ReadStep};

use super::groups::{GroupCmd, Waiter, GROUP_TICK};
use super::tables::store_into;
use super::{owned, Command, Shard};
use crate::error::{DataError, GroupError};

/// Most bytes one read for a consume asks for (less when the answer has less room): a full
/// answer of 1 KiB messages, with its batches' overhead, in one disk read.
const READ_BYTES: usize = 1 << 20;
/// Bytes a consume's disk read brings in beyond its answer, for the group's next consume of
/// the partition (`read_ahead.rs`): with the answer, about one disk read of 1 MiB.
const READ_AHEAD_BYTES: usize = 768 << 10;
/// Bytes read beyond what the messages handed out are expected to take.
const READ_SLACK_BYTES: usize = 16 << 10;
/// Messages one look at a partition takes room for (what it does not hand out goes back).
const LOOK_MESSAGES_MAX: usize = 4096;

impl<D: Disk> Shard<D> {
    /// A consume arrives: this shard's first look at it.
    pub(super) fn consume(
        &mut self,
        key: GroupKey,
        member: MemberId,
        gather: Arc<ConsumeGather>,
        chain: Vec<usize>,
    ) {
        let now = crate::clock::now();
        let known = self.groups.groups.get_mut(&key).and_then(|g| {
            let m = g.members.get(&member).filter(|m| !m.is_gone()).cloned()?;
            Some((m, g.turn_order()))
        });
        let Some((member, todo)) = known else {
            // Unknown here is unknown everywhere: the other shards need not look.
            gather.member_unknown();
            if gather.first_looks_over(1 + chain.len()) && gather.claim() {
                gather.answer(&key.0, member);
            }
            return;
        };
        member.touch(now);
        self.consume_step(ConsumeTask {
            key,
            member,
            gather,
            chain,
            todo,
            found: Vec::new(),
            look: Look::First,
            reading: None,
            until: None,
        });
    }

    /// A waiting consume looks again.
    pub(super) fn consume_again(&mut self, key: GroupKey, w: Waiter) {
        let todo = match self.groups.groups.get_mut(&key) {
            Some(g) if !w.member.is_gone() => g.turn_order(),
            _ => {
                w.gather.member_unknown();
                if w.gather.claim() {
                    w.gather.answer(&key.0, w.member.id);
                }
                return;
            }
        };
        self.consume_step(ConsumeTask {
            key,
            member: w.member,
            gather: w.gather,
            chain: Vec::new(),
            todo,
            found: Vec::new(),
            look: Look::Again,
            reading: None,
            until: Some(w.until),
        });
    }

    /// Looks at the task's partitions in turn until the answer is full or none is left; a
    /// disk read suspends it (it goes on in [`Shard::consume_read_done`]).
    fn consume_step(&mut self, mut task: ConsumeTask) {
        loop {
            if task.reading.is_none() {
                if task.gather.full() || task.gather.is_answered() {
                    return self.consume_finish(task);
                }
                let Some(p) = task.todo.pop() else {
                    return self.consume_finish(task);
                };
                task.reading = self.hand_out(&task, p, crate::clock::now());
                if task.reading.is_none() {
                    continue;
                }
            }
            let Some((p, from, bytes)) = task
                .reading
                .as_ref()
                .map(|r| (r.partition, r.from, r.bytes))
            else {
                continue;
            };
            let topic = Arc::clone(&task.key.1);
            let Some(part) = owned(&mut self.topics, &topic, p) else {
                self.consume_read(&mut task, Ok(ReadResult::default()));
                continue;
            };
            match part.begin_read(from, bytes, ReadFor::Consume(Box::new(task))) {
                ReadStep::Done(ReadFor::Consume(t), result) => {
                    task = *t;
                    self.consume_read(&mut task, result);
                }
                ReadStep::Done(ReadFor::Caller(done), result) => return done(result),
                ReadStep::Disk(r) => return self.consume_disk_read(topic, p, r),
            }
        }
    }

    /// A consume's read goes to the disk when it is the partition's turn: consumes take turns,
    /// so that the next one finds what this one read ahead instead of reading it too.
    fn consume_disk_read(&mut self, topic: Arc<str>, p: u32, mut r: DiskRead) {
        let Some(part) = owned(&mut self.topics, &topic, p) else {
            let (_, _, target) = r.into_request();
            return self.read_done(target, Err(DataError::TopicDeleted(topic.to_string())));
        };
        if part.consume_reading {
            part.reads_in_flight += 1;
            part.consume_reads_waiting.push(r.into_request());
            return;
        }
        part.consume_reading = true;
        r.read_ahead(READ_AHEAD_BYTES);
        self.submit_read(topic, p, r);
    }

    /// A consume's disk read is over: the reads that waited for their turn begin again (from
    /// what it read ahead, or from the disk, one at a time).
    pub(super) fn consume_read_turn_over(&mut self, topic: &Arc<str>, p: u32) {
        let Some(part) = owned(&mut self.topics, topic, p) else {
            return;
        };
        part.consume_reading = false;
        let waiting = std::mem::take(&mut part.consume_reads_waiting);
        part.reads_in_flight -= waiting.len();
        for (from, max_bytes, target) in waiting {
            let Some(part) = owned(&mut self.topics, topic, p) else {
                self.read_done(target, Err(DataError::TopicDeleted(topic.to_string())));
                continue;
            };
            match part.begin_read(from, max_bytes, target) {
                ReadStep::Done(target, result) => self.read_done(target, result),
                ReadStep::Disk(r) => self.consume_disk_read(Arc::clone(topic), p, r),
            }
        }
    }

    /// A consume's disk read completed: it goes on.
    pub(super) fn consume_read_done(
        &mut self,
        mut task: ConsumeTask,
        result: Result<ReadResult, DataError>,
    ) {
        self.consume_read(&mut task, result);
        self.consume_step(task);
    }

    /// Hands the member messages of partition `p` by the delivery rules, before their batches
    /// are read, so that consumes reading the same partition at once get different messages;
    /// as many as one read is expected to hold. `None` when there is nothing for it.
    fn hand_out(&mut self, task: &ConsumeTask, p: u32, now: Instant) -> Option<Reading> {
        let part = owned(&mut self.topics, &task.key.1, p)?;
        let (start, end) = (part.log_start(), part.durable_next);
        let g = self.groups.groups.get_mut(&task.key)?;
        let others = g.has_others();
        let ack_timeout = g.stored.settings.ack_timeout;
        let message_bytes = g.message_bytes(p);
        let d = g.partitions.get_mut(&p)?;
        if d.next_wanted(now) < start {
            let lost = d.skip_below(start);
            if lost > 0 {
                log::warn!(
                    "group {} on {}/{p}: retention dropped {lost} messages it had not \
                     acknowledged; it goes on from offset {start}",
                    task.key.0,
                    task.key.1
                );
            }
            if let Some(slot) = g.stored.slot(p) {
                store_into(&mut self.groups.tables, slot, d.acks());
            }
            g.settle(p);
        }
        let d = g.partitions.get_mut(&p)?;
        let wanted = d.next_wanted(now);
        if wanted >= end {
            return None;
        }
        let want = task.gather.take_room(LOOK_MESSAGES_MAX);
        let allowed = task.member.take_room(want);
        task.gather.give_room(want - allowed);
        // Offsets close to the lowest wanted only, so the reads that carry them are few and
        // their bytes mostly sent.
        let below = wanted.saturating_add(allowed as u64);
        let batch = d.next(
            task.member.id,
            others,
            allowed,
            end.min(below),
            now,
            ack_timeout,
        );
        task.member.release(allowed - batch.deliveries.len());
        task.gather.give_room(allowed - batch.deliveries.len());
        let offsets = || {
            let handed = batch.deliveries.iter().map(|d| d.offset);
            handed.chain(batch.dead_letters.iter().copied())
        };
        let from = offsets().min()?;
        let span = offsets().max().map_or(1, |last| last - from + 1) as usize;
        // A batch holding the last offset may start before it and end after it: room for one
        // more batch's worth beyond what the messages take.
        let bytes = (span * message_bytes + READ_SLACK_BYTES).min(READ_BYTES);
        Some(Reading {
            partition: p,
            from,
            bytes,
            deliveries: batch.deliveries,
            dead_letters: batch.dead_letters,
        })
    }

    /// Sends the member what the read (`result`) covers of what was handed to it, copies the
    /// dead letters it holds, and reads on for the rest while the answer has room and reads
    /// make progress (`task.reading` is then left set); what cannot be carried goes back.
    fn consume_read(&mut self, task: &mut ConsumeTask, result: Result<ReadResult, DataError>) {
        let Some(mut reading) = task.reading.take() else {
            return;
        };
        let p = reading.partition;
        let read = result.unwrap_or_else(|e| {
            log::debug!(
                "group {} on {}/{p}: read for a consume failed: {e}",
                task.key.0,
                task.key.1
            );
            ReadResult::default()
        });
        let now = crate::clock::now();
        let covered = cover(&reading.deliveries, &read.data, &task.gather);
        let dead_letters = std::mem::take(&mut reading.dead_letters);
        let (in_data, missing): (Vec<u64>, Vec<u64>) = dead_letters
            .into_iter()
            .partition(|&o| o >= reading.from && o < read.next_offset);
        let Some(g) = self.groups.groups.get_mut(&task.key) else {
            return;
        };
        if read.next_offset > reading.from {
            g.note_read(p, read.data.len(), read.next_offset - reading.from);
        }
        let sent: Vec<_> = reading.deliveries.drain(..covered.sent).collect();
        if !sent.is_empty() {
            match task.found.iter_mut().find(|f| f.partition == p) {
                Some(f) => {
                    f.deliveries.extend(sent);
                    f.batches.extend_from_slice(&covered.batches);
                }
                None => task.found.push(ConsumedPartition {
                    partition: p,
                    deliveries: sent,
                    batches: covered.batches,
                }),
            }
        }
        let progressed = covered.sent > 0;
        let room = task.gather.bytes_left() > 0;
        if let (true, true, Some(next)) = (progressed, room, reading.deliveries.first()) {
            // Read on from the first message the read did not reach.
            reading.from = next.offset;
            let span = reading
                .deliveries
                .last()
                .map_or(1, |l| l.offset - next.offset + 1);
            reading.bytes = (span as usize * g.message_bytes(p) + READ_SLACK_BYTES).min(READ_BYTES);
            task.reading = Some(reading);
        } else if let Some(d) = g.partitions.get_mut(&p) {
            for u in &reading.deliveries {
                d.give_back(task.member.id, u.offset, now);
            }
            task.gather.give_room(reading.deliveries.len());
        }
        if let Some(d) = g.partitions.get_mut(&p) {
            for &o in &missing {
                d.retry_dead_letter(o, now);
            }
        }
        g.settle(p);
        for offset in in_data {
            self.dead_letter(&task.key, p, offset, &read.data);
        }
    }

    /// This shard is done looking: the request is answered, or waits here.
    fn consume_finish(&mut self, task: ConsumeTask) {
        let now = crate::clock::now();
        let ConsumeTask {
            key,
            member,
            gather,
            chain,
            found,
            look,
            until,
            ..
        } = task;
        match look {
            Look::First => {
                let waits = gather
                    .until
                    .map(|u| u.min(now + member.session_timeout / 2))
                    .filter(|&u| u > now);
                let has_partitions = self
                    .groups
                    .groups
                    .get(&key)
                    .is_some_and(|g| !g.partitions.is_empty());
                if !found.is_empty() {
                    gather.add_part(found);
                } else if let Some(until) = waits.filter(|_| has_partitions) {
                    // Counted before this shard's first look is: the last one to finish then
                    // knows the request waits somewhere.
                    gather.note_waiting();
                    self.park(
                        &key,
                        Waiter {
                            member: Arc::clone(&member),
                            gather: Arc::clone(&gather),
                            until,
                        },
                    );
                }
                if !gather.full() && !chain.is_empty() {
                    return self.hand_on(key, member.id, gather, chain);
                }
                if gather.first_looks_over(1 + chain.len())
                    && (gather.has_parts() || !gather.any_waiting())
                    && gather.claim()
                {
                    gather.answer(&key.0, member.id);
                }
            }
            Look::Again if !found.is_empty() => {
                if gather.claim() {
                    gather.add_part(found);
                    gather.answer(&key.0, member.id);
                } else {
                    // Another shard answered first: these were never sent.
                    self.give_back(&key, member.id, &found, now);
                }
            }
            Look::Again => match until {
                Some(until) if until > now && !gather.is_answered() => {
                    self.park(
                        &key,
                        Waiter {
                            member,
                            gather,
                            until,
                        },
                    );
                }
                _ => {
                    if gather.claim() {
                        gather.answer(&key.0, member.id);
                    }
                }
            },
        }
    }

    /// Hands the consume on to the next shard of its chain, whose first look comes next. The
    /// send never waits (a shard waiting for another's queue could wait for ever); what it
    /// adds is bounded by the consumes in flight, each of which is in one place at a time.
    fn hand_on(
        &mut self,
        key: GroupKey,
        member: MemberId,
        gather: Arc<ConsumeGather>,
        mut chain: Vec<usize>,
    ) {
        let next = chain.remove(0);
        // This look is over; the next shard's is still to come, so this is not the last.
        gather.first_looks_over(1);
        let cmd = GroupCmd::Consume {
            key,
            member,
            gather,
            chain,
        };
        match &self.groups.peers {
            Some(peers) => peers.send_now(next, Command::Group(cmd)),
            None => cmd.refuse(&GroupError::ShuttingDown),
        }
    }

    fn park(&mut self, key: &GroupKey, w: Waiter) {
        // A stopping shard answers what waits (it will not look again).
        let group = self.groups.groups.get_mut(key).filter(|_| !self.stopping);
        let Some(g) = group else {
            if w.gather.claim() {
                w.gather.answer(&key.0, w.member.id);
            }
            return;
        };
        // This member's answered waits are stale: they go (each member's waits stay few).
        g.waiters
            .retain(|old| old.member.id != w.member.id || !old.gather.is_answered());
        g.waiters.push(w);
        let next = crate::clock::now() + GROUP_TICK;
        self.groups.tick_at = Some(self.groups.tick_at.map_or(next, |t| t.min(next)));
    }

    fn give_back(
        &mut self,
        key: &GroupKey,
        member: MemberId,
        found: &[ConsumedPartition],
        now: Instant,
    ) {
        let Some(g) = self.groups.groups.get_mut(key) else {
            return;
        };
        for part in found {
            if let Some(d) = g.partitions.get_mut(&part.partition) {
                for u in &part.deliveries {
                    d.give_back(member, u.offset, now);
                }
            }
            g.settle(part.partition);
        }
        self.groups.mark_changed(key);
    }
}
