//! Consumer groups on a shard: the delivery state of every (group, partition) this shard owns,
//! a copy of each group's member list, consumes waiting for messages, and the clock that ends
//! sessions, redelivers what its ack deadline or nack delay made due, and answers waiting
//! consumes at their deadline. Requests arrive as [`GroupCmd`]s; consumes are served in
//! `consume.rs`. The rules are `docs/CONSUMERS.md`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::delivery::{DeliveryCounts, MemberId, PartitionDelivery};
use crate::error::{DataError, GroupError};
use crate::groups::{
    ConsumeGather, Countdown, GroupKey, HelperTx, Member, SlotRef, Span, StoredGroup, TableRef,
};
use crate::io::Disk;
use crate::offsets::AckState;

use super::tables::{store_into, ShardTable};
use super::{Shard, ShardLinks};

/// How often a shard with groups looks at its sessions, ack deadlines, nack delays and
/// waiting consumes' deadlines.
pub const GROUP_TICK: Duration = Duration::from_millis(50);
/// How soon a waiting consume looks again when another shard has not finished its first look
/// at the request.
const RETRY_SOON: Duration = Duration::from_micros(200);
/// Stored bytes per message assumed for a partition not read yet.
const MESSAGE_BYTES_GUESS: usize = 1024;
/// How long a dead letter whose copy failed (or found the helper's queue full) waits before it
/// is tried again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// A group request to a shard.
pub enum GroupCmd {
    /// The tables the shard owns, the helper its groups use, and the other shards (once, at
    /// start).
    Attach {
        /// The offset tables this shard stores into and syncs.
        tables: Vec<TableRef>,
        /// Where dead letters go.
        helper: HelperTx,
        /// Every shard: consumes are handed on to them.
        peers: ShardLinks,
    },
    /// Serve `key` from now on: its partitions this shard owns start from their durable state
    /// in this shard's tables.
    Load {
        /// The group.
        key: GroupKey,
        /// Its durable description.
        stored: Arc<StoredGroup>,
        /// Answered once it is served, with the committed offset of each partition loaded.
        reply: Sender<Result<Vec<(u32, u64)>, GroupError>>,
    },
    /// A member joined.
    Joined {
        /// The group.
        key: GroupKey,
        /// The member.
        member: Arc<Member>,
    },
    /// A member left (said so, or its connection closed).
    Left {
        /// The group.
        key: GroupKey,
        /// The member.
        member: MemberId,
    },
    /// Hand messages of this shard's partitions to a member.
    Consume {
        /// The group.
        key: GroupKey,
        /// The member.
        member: MemberId,
        /// What the shards serving the request share.
        gather: Arc<ConsumeGather>,
        /// The shards to hand the request on to, in turn, while the answer has room.
        chain: Vec<usize>,
    },
    /// Acknowledge spans (partition, first, last) of this shard's partitions.
    Ack {
        /// The group.
        key: GroupKey,
        /// The member acknowledging.
        member: MemberId,
        /// Spans of this shard's partitions.
        spans: Vec<Span>,
        /// Answer only once the acknowledgements are durable.
        durable: bool,
        /// Where this part's outcome goes.
        done: Arc<Countdown>,
    },
    /// Give spans back for redelivery after `delay`.
    Nack {
        /// The group.
        key: GroupKey,
        /// The member giving them back.
        member: MemberId,
        /// Spans of this shard's partitions.
        spans: Vec<Span>,
        /// How long until they are delivered again.
        delay: Duration,
        /// Where this part's outcome goes.
        done: Arc<Countdown>,
    },
    /// The helper copied a dead letter (or failed to).
    DeadLettered {
        /// The group.
        key: GroupKey,
        /// Partition of the message.
        partition: u32,
        /// Its offset.
        offset: u64,
        /// Whether the copy is durable.
        copied: bool,
    },
    /// Report every (group, partition)'s committed offset, once durable (nothing if a table
    /// sync failed).
    Committed {
        /// The answer.
        reply: Sender<Vec<(GroupKey, u32, u64)>>,
    },
    /// A new group's slots in this shard's tables: store each one's starting offset, and
    /// answer once they are durable.
    WriteSlots {
        /// The slots, with their starting offsets.
        slots: Vec<(SlotRef, u64)>,
        /// Answered once they are durable.
        reply: Sender<Result<(), GroupError>>,
    },
    /// Report what metrics show of every (group, partition).
    Metrics {
        /// The answer.
        reply: Sender<Vec<GroupPartitionMetrics>>,
    },
}

impl GroupCmd {
    /// Answers the command with `err` instead of carrying it out.
    pub fn refuse(self, err: &GroupError) {
        match self {
            GroupCmd::Load { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
            GroupCmd::WriteSlots { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
            GroupCmd::Consume {
                key,
                member,
                gather,
                chain,
            } => {
                if gather.first_looks_over(1 + chain.len()) && gather.claim() {
                    gather.answer(&key.0, member);
                }
            }
            GroupCmd::Ack { done, .. } | GroupCmd::Nack { done, .. } => {
                done.part_done(Err(err.clone()))
            }
            GroupCmd::Attach { .. }
            | GroupCmd::Joined { .. }
            | GroupCmd::Left { .. }
            | GroupCmd::DeadLettered { .. }
            | GroupCmd::Committed { .. }
            | GroupCmd::Metrics { .. } => {}
        }
    }
}

/// What metrics show of one (group, partition).
#[derive(Debug, Clone)]
pub struct GroupPartitionMetrics {
    /// The group.
    pub key: GroupKey,
    /// Partition.
    pub partition: u32,
    /// Every offset below it is acknowledged.
    pub committed: u64,
    /// Delivered, not yet acknowledged.
    pub in_flight: usize,
    /// New messages wait for the lowest unacknowledged one.
    pub window_full: bool,
    /// Deliveries, redeliveries, dead letters and window-full pauses so far.
    pub counts: DeliveryCounts,
}

/// A consume waiting on this shard for messages.
pub(super) struct Waiter {
    pub member: Arc<Member>,
    pub gather: Arc<ConsumeGather>,
    /// Answered empty at this moment if nothing came.
    pub until: Instant,
}

/// One group as this shard serves it.
pub(super) struct ShardGroup {
    pub stored: Arc<StoredGroup>,
    pub members: HashMap<MemberId, Arc<Member>>,
    /// The group's partitions this shard owns.
    pub partitions: BTreeMap<u32, PartitionDelivery>,
    /// Where the next consume starts, so partitions take turns.
    pub cursor: usize,
    pub waiters: Vec<Waiter>,
    /// Per partition, the stored bytes per message its reads have found lately: how many
    /// messages to hand out for one read.
    pub sizes: HashMap<u32, usize>,
}

impl ShardGroup {
    /// Gives back each member's prefetch room for deliveries that left flight in `partition`.
    pub fn settle(&mut self, partition: u32) {
        let Some(d) = self.partitions.get_mut(&partition) else {
            return;
        };
        if !d.has_released() {
            return;
        }
        for (member, n) in d.take_released() {
            if let Some(m) = self.members.get(&member) {
                m.release(n);
            }
        }
    }

    /// Stored bytes per message of `partition`, as its reads found them lately.
    pub fn message_bytes(&self, partition: u32) -> usize {
        self.sizes
            .get(&partition)
            .copied()
            .unwrap_or(MESSAGE_BYTES_GUESS)
    }

    /// A read of `partition` found `bytes` for `messages` offsets.
    pub fn note_read(&mut self, partition: u32, bytes: usize, messages: u64) {
        let sample = (bytes / messages.max(1) as usize).max(1);
        let avg = self.sizes.entry(partition).or_insert(sample);
        *avg = (*avg * 3 + sample) / 4;
    }

    /// Whether more than one member is there (a redelivery goes to another one first).
    pub fn has_others(&self) -> bool {
        self.members.len() > 1
    }

    /// The partitions in the order the next consume looks at them (the first last).
    pub fn turn_order(&mut self) -> Vec<u32> {
        let ids: Vec<u32> = self.partitions.keys().copied().collect();
        let n = ids.len().max(1);
        let start = self.cursor % n;
        self.cursor = self.cursor.wrapping_add(1);
        let mut order: Vec<u32> = ids[start..].iter().chain(&ids[..start]).copied().collect();
        order.reverse();
        order
    }
}

/// Every group this shard serves.
#[derive(Default)]
pub(super) struct ShardGroups {
    pub groups: HashMap<GroupKey, ShardGroup>,
    /// The offset tables this shard owns, by number (`tables.rs`).
    pub tables: BTreeMap<usize, ShardTable>,
    pub helper: Option<HelperTx>,
    pub peers: Option<ShardLinks>,
    /// Groups where something may have become deliverable this turn: their waiting consumes
    /// look again.
    pub changed: Vec<GroupKey>,
    /// A waiting consume must look again soon: another shard has not finished its first
    /// look at the request yet.
    pub retry_soon: bool,
    /// When the clock next looks at sessions, deadlines and delays.
    pub tick_at: Option<Instant>,
}

impl ShardGroups {
    pub fn mark_changed(&mut self, key: &GroupKey) {
        if !self.changed.contains(key) {
            self.changed.push(key.clone());
        }
    }

    /// Whether the clock has anything to watch: members, deliveries in flight or due, waiting
    /// consumes.
    fn active(&self) -> bool {
        self.groups.values().any(|g| {
            !g.members.is_empty()
                || !g.waiters.is_empty()
                || g.partitions
                    .values()
                    .any(|d| d.in_flight() > 0 || d.next_due().is_some())
        })
    }
}

impl<D: Disk> Shard<D> {
    pub(super) fn handle_group(&mut self, cmd: GroupCmd) {
        match cmd {
            GroupCmd::Attach {
                tables,
                helper,
                peers,
            } => {
                self.attach_tables(tables);
                self.groups.helper = Some(helper);
                self.groups.peers = Some(peers);
            }
            GroupCmd::Load { key, stored, reply } => {
                let max = stored.settings.max_deliveries;
                let states = self.load_states(&stored);
                let committed = states.iter().map(|(p, s)| (*p, s.committed)).collect();
                let partitions = states
                    .into_iter()
                    .map(|(p, acks)| (p, PartitionDelivery::new(acks, max)))
                    .collect();
                self.groups.groups.entry(key).or_insert(ShardGroup {
                    stored,
                    members: HashMap::new(),
                    partitions,
                    cursor: 0,
                    waiters: Vec::new(),
                    sizes: HashMap::new(),
                });
                let _ = reply.send(Ok(committed));
            }
            GroupCmd::Joined { key, member } => {
                if let Some(g) = self.groups.groups.get_mut(&key) {
                    g.members.insert(member.id, member);
                    self.groups
                        .tick_at
                        .get_or_insert(crate::clock::now() + GROUP_TICK);
                }
            }
            GroupCmd::Left { key, member } => self.member_left(&key, member, crate::clock::now()),
            GroupCmd::Consume {
                key,
                member,
                gather,
                chain,
            } => self.consume(key, member, gather, chain),
            GroupCmd::Ack {
                key,
                member,
                spans,
                durable,
                done,
            } => self.ack(&key, member, &spans, durable, done),
            GroupCmd::Nack {
                key,
                member,
                spans,
                delay,
                done,
            } => self.nack(&key, member, &spans, delay, &done),
            GroupCmd::DeadLettered {
                key,
                partition,
                offset,
                copied,
            } => self.dead_lettered(&key, partition, offset, copied),
            GroupCmd::Committed { reply } => {
                let mut out = Vec::new();
                for (key, g) in &self.groups.groups {
                    for (&p, d) in &g.partitions {
                        out.push((key.clone(), p, d.acks().committed));
                    }
                }
                // Reported once durable: a checkpoint must never be ahead of the table.
                let tables: Vec<usize> = self.groups.tables.keys().copied().collect();
                self.tables_durable(
                    &tables,
                    Box::new(move |r| {
                        let _ = reply.send(if r.is_ok() { out } else { Vec::new() });
                    }),
                );
            }
            GroupCmd::WriteSlots { slots, reply } => {
                let mut tables = Vec::new();
                for (slot, start) in slots {
                    store_into(
                        &mut self.groups.tables,
                        slot,
                        &AckState::new(slot.owner, start),
                    );
                    tables.push(slot.table);
                }
                tables.sort_unstable();
                tables.dedup();
                self.tables_durable(
                    &tables,
                    Box::new(move |r| {
                        let _ = reply.send(r);
                    }),
                );
            }
            GroupCmd::Metrics { reply } => {
                let mut out = Vec::new();
                for (key, g) in &self.groups.groups {
                    for (&p, d) in &g.partitions {
                        out.push(GroupPartitionMetrics {
                            key: key.clone(),
                            partition: p,
                            committed: d.acks().committed,
                            in_flight: d.in_flight(),
                            window_full: d.window_full(),
                            counts: d.counts(),
                        });
                    }
                }
                let _ = reply.send(out);
            }
        }
    }

    fn member_left(&mut self, key: &GroupKey, member: MemberId, now: Instant) {
        let Some(g) = self.groups.groups.get_mut(key) else {
            return;
        };
        if g.members.remove(&member).is_none() {
            return;
        }
        let ids: Vec<u32> = g.partitions.keys().copied().collect();
        for p in ids {
            if let Some(d) = g.partitions.get_mut(&p) {
                d.member_left(member, now);
            }
            g.settle(p);
        }
        self.groups.mark_changed(key);
    }

    fn ack(
        &mut self,
        key: &GroupKey,
        member: MemberId,
        spans: &[Span],
        durable: bool,
        done: Arc<Countdown>,
    ) {
        let Some(g) = self.groups.groups.get_mut(key) else {
            return done.part_done(Err(unknown_member(key, member)));
        };
        // An ack from a member whose session ended still counts: the message was processed.
        if let Some(m) = g.members.get(&member) {
            m.touch(crate::clock::now());
        }
        if let Some(&(p, ..)) = spans.iter().find(|s| s.0 >= g.stored.partitions()) {
            return done.part_done(Err(GroupError::Data(DataError::UnknownPartition {
                topic: key.1.to_string(),
                partition: p,
            })));
        }
        let mut partitions: Vec<u32> = spans.iter().map(|s| s.0).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut touched = Vec::new();
        let mut named = Vec::new();
        for p in partitions {
            let (Some(d), Some(slot)) = (g.partitions.get_mut(&p), g.stored.slot(p)) else {
                continue;
            };
            named.push(slot.table);
            let mine = spans
                .iter()
                .filter(|s| s.0 == p)
                .map(|&(_, first, last)| (first, last));
            if d.ack_spans(mine) > 0 {
                // Stored by this shard alone, so stores of one slot never go back in time.
                store_into(&mut self.groups.tables, slot, d.acks());
                touched.push(p);
            }
            g.settle(p);
        }
        if !touched.is_empty() {
            // Acks free prefetch room and the ack window.
            self.groups.mark_changed(key);
        }
        if !durable {
            return done.part_done(Ok(()));
        }
        // Every partition named, touched or not: offsets acknowledged before (without asking
        // for durability) may not be durable yet. A durable ack is answered from this loop,
        // once the table's sync through the ring completes.
        named.sort_unstable();
        named.dedup();
        self.tables_durable(&named, Box::new(move |r| done.part_done(r)));
    }

    fn nack(
        &mut self,
        key: &GroupKey,
        member: MemberId,
        spans: &[Span],
        delay: Duration,
        done: &Countdown,
    ) {
        let Some(g) = self.groups.groups.get_mut(key) else {
            return done.part_done(Err(unknown_member(key, member)));
        };
        let now = crate::clock::now();
        match g.members.get(&member) {
            Some(m) if !m.is_gone() => m.touch(now),
            _ => return done.part_done(Err(unknown_member(key, member))),
        }
        if let Some(&(p, ..)) = spans.iter().find(|s| s.0 >= g.stored.partitions()) {
            return done.part_done(Err(GroupError::Data(DataError::UnknownPartition {
                topic: key.1.to_string(),
                partition: p,
            })));
        }
        for &(p, first, last) in spans {
            if let Some(d) = g.partitions.get_mut(&p) {
                d.nack_span(member, first, last, delay, now);
            }
            g.settle(p);
        }
        self.groups.mark_changed(key);
        done.part_done(Ok(()));
    }

    fn dead_lettered(&mut self, key: &GroupKey, partition: u32, offset: u64, copied: bool) {
        let Some(g) = self.groups.groups.get_mut(key) else {
            return;
        };
        let (Some(d), Some(slot)) = (g.partitions.get_mut(&partition), g.stored.slot(partition))
        else {
            return;
        };
        if copied {
            d.dead_lettered(offset);
            store_into(&mut self.groups.tables, slot, d.acks());
        } else {
            d.retry_dead_letter(offset, crate::clock::now() + DEAD_LETTER_RETRY);
        }
        g.settle(partition);
        self.groups.mark_changed(key);
    }

    /// Hands a dead letter (delivered its maximum number of times) of `data` to the helper, to
    /// copy; tried again later if it cannot be now.
    pub(super) fn dead_letter(&mut self, key: &GroupKey, partition: u32, offset: u64, data: &[u8]) {
        use crate::groups::dead_letter::{copy_of, dlq_name, Origin};
        use crate::groups::HelperJob;
        let shard = self.id;
        let Some(g) = self.groups.groups.get_mut(key) else {
            return;
        };
        let origin = Origin {
            topic: &key.1,
            partition,
            offset,
            group: &key.0,
            deliveries: g.stored.settings.max_deliveries,
        };
        let job = copy_of(data, &origin).map(|batch| HelperJob::DeadLetter {
            key: key.clone(),
            partition,
            offset,
            dlq: Arc::from(dlq_name(&key.1)),
            batch,
            from_shard: shard,
        });
        let queued = match (job, &self.groups.helper) {
            (Some(job), Some(helper)) => helper.try_send(job).is_ok(),
            _ => false,
        };
        if !queued {
            if let Some(d) = g.partitions.get_mut(&partition) {
                d.retry_dead_letter(offset, crate::clock::now() + DEAD_LETTER_RETRY);
            }
        }
    }

    /// A flush made more of `topic`'s partition durable: consumes waiting on its groups look
    /// again.
    pub(super) fn groups_data_arrived(&mut self, topic: &str) {
        let keys: Vec<GroupKey> = self
            .groups
            .groups
            .iter()
            .filter(|(k, g)| &*k.1 == topic && !g.waiters.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.groups.mark_changed(&key);
        }
    }

    /// The groups' part of a shard turn: the clock when due, then waiting consumes of groups
    /// where something changed.
    pub(super) fn groups_turn(&mut self) {
        let now = crate::clock::now();
        if self.groups.tick_at.is_some_and(|t| t <= now) {
            self.groups_tick(now);
            self.groups.tick_at = self.groups.active().then(|| now + GROUP_TICK);
        }
        self.groups.retry_soon = false;
        for key in std::mem::take(&mut self.groups.changed) {
            self.wake_waiters(&key);
        }
        // Last: the syncs cover every ack this turn stored.
        self.tables_turn(now);
    }

    /// Ends silent sessions, redelivers what came due, and lets waiting consumes whose
    /// deadline passed answer.
    fn groups_tick(&mut self, now: Instant) {
        let keys: Vec<GroupKey> = self.groups.groups.keys().cloned().collect();
        for key in keys {
            let Some(g) = self.groups.groups.get_mut(&key) else {
                continue;
            };
            let silent: Vec<MemberId> = g
                .members
                .values()
                .filter(|m| m.is_gone() || m.silent_since(now))
                .map(|m| m.id)
                .collect();
            for id in &silent {
                if g.members.get(id).is_some_and(|m| m.leave()) {
                    log::info!(
                        "group {:?} on {}: member {id} left (session timed out)",
                        key.0,
                        key.1
                    );
                }
            }
            let mut changed = g.waiters.iter().any(|w| w.until <= now);
            for d in g.partitions.values_mut() {
                if d.expire(now) > 0 || d.has_due(now) {
                    changed = true;
                }
            }
            let ids: Vec<u32> = g.partitions.keys().copied().collect();
            for p in ids {
                g.settle(p);
            }
            for id in silent {
                self.member_left(&key, id, now);
            }
            if changed {
                self.groups.mark_changed(&key);
            }
        }
    }

    /// Waiting consumes of `key` look again: answered ones go, those still waiting for another
    /// shard's first look wait a moment more, the rest are served (answering if they find
    /// something or their time is up, waiting again otherwise).
    fn wake_waiters(&mut self, key: &GroupKey) {
        let Some(g) = self.groups.groups.get_mut(key) else {
            return;
        };
        let waiters = std::mem::take(&mut g.waiters);
        let mut again = Vec::new();
        for w in waiters {
            if w.gather.is_answered() {
                continue;
            }
            if !w.gather.first_looks_done() {
                self.groups.retry_soon = true;
                if let Some(g) = self.groups.groups.get_mut(key) {
                    g.waiters.push(w);
                }
                continue;
            }
            again.push(w);
        }
        for w in again {
            self.consume_again(key.clone(), w);
        }
    }

    /// Answers every waiting consume with what it has (the shard stops, or the group goes).
    pub(super) fn answer_waiters(&mut self, topic: Option<&str>) {
        for (key, g) in self.groups.groups.iter_mut() {
            if topic.is_some_and(|t| t != &*key.1) {
                continue;
            }
            for w in g.waiters.drain(..) {
                if w.gather.claim() {
                    w.gather.answer(&key.0, w.member.id);
                }
            }
        }
    }

    /// The topic is going: its groups go with it.
    pub(super) fn remove_topic_groups(&mut self, topic: &str) {
        self.answer_waiters(Some(topic));
        self.groups.groups.retain(|k, _| &*k.1 != topic);
    }

    /// When the shard's clock must wake it for its groups.
    pub(super) fn groups_wake_at(&self) -> Option<Instant> {
        if !self.groups.changed.is_empty() {
            return Some(crate::clock::now());
        }
        if self.groups.retry_soon {
            // Another shard is taking its first look at the request: moments, not worth a
            // busy loop.
            return Some(crate::clock::now() + RETRY_SOON);
        }
        self.groups.tick_at
    }
}

pub(super) fn unknown_member(key: &GroupKey, member: MemberId) -> GroupError {
    GroupError::UnknownMember {
        group: key.0.to_string(),
        member,
    }
}
