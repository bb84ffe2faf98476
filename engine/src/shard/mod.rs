//! A shard: one thread, one ring, the partitions routed to it. Shared nothing: requests arrive
//! over a bounded channel and the thread is woken through its ring.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Sender, TryRecvError};

use crate::blocking::BlockingIo;
use crate::config::EngineConfig;
use crate::error::{DataError, GroupError};
use crate::histogram::Log2Histogram;
use crate::inbox::{Inbox, InboxSender};
use crate::io::{Block, Completion, Disk, Waker, WAKE_BATCH};
use crate::janitor::JanitorTx;
use crate::linger::Hold;
use crate::long_poll::ParkedRead;
use crate::open::open_partition;
use crate::partition::{FlushDone, Partition};
use crate::read::{DiskRead, ReadFor, ReadResult, ReadStep};
use crate::topic_name::{Fnv1aBuild, TopicMap, TopicName};
use crate::{AppendDone, ReadDone};

mod consume;
mod groups;
mod tables;

use groups::ShardGroups;
pub use groups::{GroupCmd, GroupPartitionMetrics};

/// Requests taken from the channel per turn before flushes are started, so one busy producer
/// cannot delay the flush of what is already gathered for long.
const COMMANDS_PER_TURN_MAX: usize = 256;

/// A request to a shard.
pub enum Command {
    /// Append a batch to a partition this shard owns.
    Append {
        /// Topic name.
        topic: TopicName,
        /// Partition.
        partition: u32,
        /// A RecordBatch v2 (shared, never written: its offsets are set in the flush's copy).
        batch: Bytes,
        /// Called once durable, or failed.
        done: AppendDone,
    },
    /// Read whole batches from an offset on.
    Read {
        /// Topic name.
        topic: Arc<str>,
        /// Partition.
        partition: u32,
        /// First offset wanted.
        from: u64,
        /// Byte budget (at least one batch is returned).
        max_bytes: usize,
        /// Finding the partition's end, wait until data arrives or this passes.
        until: Option<Instant>,
        /// Called with the answer.
        done: ReadDone,
    },
    /// Learn a topic and open the partitions of it this shard owns.
    AddTopic {
        /// Topic name.
        topic: Arc<str>,
        /// Partition count of the topic.
        partitions: u32,
        /// The ones this shard owns.
        owned: Vec<u32>,
        /// What to do when a partition cannot be opened.
        opening: Opening,
        /// Answer.
        reply: Sender<Result<(), DataError>>,
    },
    /// A consumer-group request.
    Group(GroupCmd),
    /// Forget a topic, once its in-flight work is done.
    RemoveTopic {
        /// Topic name.
        topic: Arc<str>,
        /// Answer, once its partitions are closed.
        reply: Sender<Result<(), DataError>>,
    },
    /// Finish what is in flight and exit.
    Stop,
}

impl Command {
    /// Answers the command with `err` instead of carrying it out.
    pub(crate) fn refuse(self, err: &DataError) {
        match self {
            Command::Append { done, .. } => done(Err(err.clone())),
            Command::Read { done, .. } => done(Err(err.clone())),
            Command::AddTopic { reply, .. } | Command::RemoveTopic { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
            Command::Group(cmd) => cmd.refuse(&GroupError::from(err.clone())),
            Command::Stop => {}
        }
    }
}

/// The shards, as other shards reach them.
#[derive(Clone)]
pub struct ShardLinks {
    /// Each shard's queue.
    pub txs: Vec<InboxSender<Command>>,
    /// Each shard's waker.
    pub wakers: Vec<Arc<Waker>>,
}

impl ShardLinks {
    /// Sends `cmd` to shard `shard` past its queue's bound, without waiting, and wakes it;
    /// refuses the command when the shard is gone. For shards handing each other work.
    pub fn send_now(&self, shard: usize, cmd: Command) {
        let (Some(tx), Some(waker)) = (self.txs.get(shard), self.wakers.get(shard)) else {
            return cmd.refuse(&DataError::ShuttingDown);
        };
        match tx.send_now(cmd) {
            Ok(()) => waker.wake(usize::MAX),
            Err(crossbeam_channel::SendError(cmd)) => cmd.refuse(&DataError::ShuttingDown),
        }
    }
}

/// Why a topic is added to a shard, which decides what a partition that cannot be opened does.
#[derive(Debug, Clone)]
pub enum Opening {
    /// A new topic: any failure fails the creation (which the engine then takes back).
    Create,
    /// A topic recovered at start: a partition that cannot be opened (a damaged segment) is
    /// held offline, answering every request with why, while the rest runs.
    Recover,
    /// A topic whose metadata is damaged: held offline whole, nothing opened.
    Damaged(Arc<DataError>),
}

/// Counters of one shard, readable from any thread.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Appends answered successfully.
    pub appends: AtomicU64,
    /// Flushes completed (each one write made durable).
    pub flushes: AtomicU64,
    /// Syncs made on the write path (`RWF_DSYNC` writes, or `fdatasync`s when portable).
    pub syncs: AtomicU64,
    /// Bytes written by flushes (whole blocks).
    pub bytes_written: AtomicU64,
    /// Flushes that failed and poisoned their partition.
    pub failed_flushes: AtomicU64,
    /// Disk reads issued.
    pub disk_reads: AtomicU64,
    /// Segment files retention deleted.
    pub segments_deleted: AtomicU64,
    /// Segment files retention kept as the next segment.
    pub segments_recycled: AtomicU64,
    /// Flushes that waited for the appenders the last flush answered (`linger.rs`).
    pub flushes_held: AtomicU64,
    /// Of those, the ones that went at their deadline with not all of them back.
    pub holds_expired: AtomicU64,
    /// Flushes written while an earlier flush of their partition was still in flight.
    pub flushes_overlapped: AtomicU64,
    /// Partitions held offline because they could not be recovered.
    pub partitions_offline: AtomicU64,
    /// Microseconds from a flush's submission to both its write and its sync completing.
    pub flush_io_us: Log2Histogram,
}

struct TopicSlot {
    partitions: u32,
    owned: HashMap<u32, Partition, Fnv1aBuild>,
    /// Owned partitions that could not be recovered, and why.
    offline: HashMap<u32, Arc<DataError>, Fnv1aBuild>,
    /// Set when the whole topic is offline (its metadata is damaged).
    damaged: Option<Arc<DataError>>,
    removing: Option<Sender<Result<(), DataError>>>,
}

/// The partition of `topic` this shard owns, if it does. A free function, so the borrow of the
/// topics stays apart from the shard's disk and operation table.
fn owned<'a>(
    topics: &'a mut TopicMap<TopicSlot>,
    topic: &str,
    partition: u32,
) -> Option<&'a mut Partition> {
    topics
        .get_mut(topic)
        .and_then(|s| s.owned.get_mut(&partition))
}

/// Adds (`topic`, `partition`) to `list` unless it is there, and brings `earliest` forward to
/// `until`: the partitions something waits on, and when the first of them is due.
fn note_until(
    list: &mut Vec<(Arc<str>, u32)>,
    earliest: &mut Option<Instant>,
    topic: Arc<str>,
    partition: u32,
    until: Instant,
) {
    *earliest = Some(earliest.map_or(until, |u| u.min(until)));
    if !list.iter().any(|(t, p)| *p == partition && *t == topic) {
        list.push((topic, partition));
    }
}

/// Whether `p`'s next flush waits (`linger.rs`): the deadline while it does. A stopping shard
/// never holds a flush back. Counts the waits that begin and those that run out.
fn flush_hold(
    stats: &ShardStats,
    stopping: bool,
    p: &mut Partition,
    now: Instant,
) -> Option<Instant> {
    if stopping {
        return None;
    }
    let hold = p.hold_flush(now);
    match hold {
        Hold::Wait { began: true, .. } => {
            stats.flushes_held.fetch_add(1, Ordering::Relaxed);
        }
        Hold::GoAtDeadline => {
            stats.holds_expired.fetch_add(1, Ordering::Relaxed);
        }
        Hold::Wait { .. } | Hold::Go => {}
    }
    hold.until()
}

/// What an in-flight operation belongs to.
enum Owner {
    Flush(Arc<str>, u32),
    Zero(Arc<str>, u32),
    Read(Arc<str>, u32, u64, DiskRead),
    /// A sync of offset table `n` (`tables.rs`).
    TableSync(usize),
}

/// The shard's state, run by [`Shard::run`] on its own thread.
pub struct Shard<D> {
    /// Which shard this is.
    id: usize,
    disk: D,
    rx: Inbox<Command>,
    waker: Arc<Waker>,
    cfg: Arc<EngineConfig>,
    stats: Arc<ShardStats>,
    /// Removes the files retention drops, off this thread.
    janitor: JanitorTx,
    topics: TopicMap<TopicSlot>,
    ops: HashMap<u64, Owner>,
    next_token: u64,
    deferred: Vec<Completion>,
    to_flush: Vec<(Arc<str>, u32)>,
    /// Partitions whose next flush waits a moment for more appends (`linger.rs`), and the
    /// earliest moment one of them goes anyway.
    lingering: Vec<(Arc<str>, u32)>,
    linger_until: Option<Instant>,
    /// Partitions with reads waiting at their end (`long_poll.rs`), and the earliest moment
    /// one of those reads is due.
    waiting: Vec<(Arc<str>, u32)>,
    reads_until: Option<Instant>,
    /// The consumer groups this shard serves (`groups.rs`).
    groups: ShardGroups,
    /// A partition holds more unflushed bytes than allowed: take no requests until it drains.
    throttled: bool,
    stopping: bool,
}

impl<D: Disk> Shard<D> {
    /// Shard `id`, over `disk`, taking requests from `rx`.
    pub fn new(
        id: usize,
        disk: D,
        rx: Inbox<Command>,
        cfg: Arc<EngineConfig>,
        stats: Arc<ShardStats>,
        janitor: JanitorTx,
    ) -> Self {
        let waker = disk.waker();
        Self {
            id,
            disk,
            rx,
            waker,
            cfg,
            stats,
            janitor,
            topics: TopicMap::default(),
            ops: HashMap::new(),
            next_token: 1,
            deferred: Vec::new(),
            to_flush: Vec::new(),
            lingering: Vec::new(),
            linger_until: None,
            waiting: Vec::new(),
            reads_until: None,
            groups: ShardGroups::default(),
            throttled: false,
            stopping: false,
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The event loop: runs until [`Command::Stop`] and all in-flight work is done.
    pub fn run(mut self) {
        if let Err(e) = self.disk.start_on_thread() {
            log::warn!("could not let the ring's workers use every core ({e}); syncs may wait behind their shard");
        }
        let mut completions = Vec::new();
        loop {
            let mut took = 0;
            self.throttled = self.over_pending_limit();
            while took < COMMANDS_PER_TURN_MAX && !self.throttled {
                let Some(cmd) = self.next_command() else {
                    break;
                };
                took += 1;
                self.handle(cmd);
            }
            if took > 0 {
                self.rx.made_room();
            }
            self.start_flushes();
            self.answer_due_reads();
            self.groups_turn();
            self.finish_removals();
            if self.stopping
                && self.ops.is_empty()
                && self.deferred.is_empty()
                && self.to_flush.is_empty()
                && self.lingering.is_empty()
                && !self.tables_busy()
            {
                break;
            }
            // Sleep unless work is certainly waiting: a drained queue (or, with I/O in flight, a
            // trickle the completion will pick up) is not a reason to spin; the re-check after
            // parking closes the race with senders.
            let mut block = took < COMMANDS_PER_TURN_MAX && self.deferred.is_empty();
            if block {
                let wake_at = self.wake_at();
                self.waker.park(wake_at);
                if self.rx.len() >= wake_at && !self.throttled {
                    block = false;
                }
            }
            let wake_by = [
                self.linger_until,
                self.reads_until,
                self.groups_wake_at(),
                self.tables_wake_at(),
            ]
            .into_iter()
            .flatten()
            .min();
            let block = match (block, wake_by) {
                (false, _) => Block::No,
                (true, None) => Block::Yes,
                (true, Some(until)) => match until.checked_duration_since(crate::clock::now()) {
                    Some(left) if !left.is_zero() => Block::AtMost(left),
                    _ => Block::No,
                },
            };
            completions.append(&mut self.deferred);
            if let Err(e) = self.disk.wait(&mut completions, block) {
                log::error!("shard ring wait failed: {e}");
            }
            self.waker.unpark();
            for c in completions.drain(..) {
                self.on_completion(c);
            }
        }
        self.refuse_queued();
        for (_, slot) in self.topics.drain() {
            for (_, p) in slot.owned {
                p.close(&mut self.disk);
            }
        }
        self.close_tables();
    }

    /// The next request, if one is queued.
    fn next_command(&mut self) -> Option<Command> {
        match self.rx.try_recv() {
            Ok(cmd) => Some(cmd),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.stopping = true;
                None
            }
        }
    }

    /// Requests still queued when the shard exits (sent in a race with the engine closing)
    /// are answered, not dropped unanswered.
    fn refuse_queued(&mut self) {
        let err = DataError::ShuttingDown;
        for cmd in self.rx.try_iter() {
            cmd.refuse(&err);
        }
    }

    fn over_pending_limit(&self) -> bool {
        let limit = self.cfg.max_pending_bytes;
        self.to_flush.iter().any(|(t, p)| {
            self.topics
                .get(t)
                .and_then(|s| s.owned.get(p))
                .is_some_and(|p| p.pending_bytes() >= limit)
        })
    }

    fn partition(&mut self, topic: &str, partition: u32) -> Result<&mut Partition, DataError> {
        let Some(slot) = self.topics.get_mut(topic) else {
            return Err(DataError::UnknownTopic(topic.to_string()));
        };
        if slot.removing.is_some() {
            return Err(DataError::TopicDeleted(topic.to_string()));
        }
        if let Some(cause) = &slot.damaged {
            return Err(DataError::TopicOffline {
                topic: topic.to_string(),
                cause: Arc::clone(cause),
            });
        }
        if let Some(cause) = slot.offline.get(&partition) {
            return Err(DataError::PartitionOffline {
                topic: topic.to_string(),
                partition,
                cause: Arc::clone(cause),
            });
        }
        if partition >= slot.partitions {
            return Err(DataError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            });
        }
        slot.owned
            .get_mut(&partition)
            .ok_or(DataError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Append {
                topic,
                partition,
                batch,
                done,
            } => {
                let limit = self.cfg.max_pending_bytes;
                let topic = topic.as_str();
                match self.partition(topic, partition) {
                    Ok(p) => {
                        p.append(batch, done);
                        let over = p.pending_bytes() >= limit;
                        let wants_flush = p.wants_flush();
                        self.throttled |= over;
                        if wants_flush {
                            // The map's own name: shared, not allocated again.
                            if let Some((name, _)) = self.topics.get_key_value(topic) {
                                self.to_flush.push((Arc::clone(name), partition));
                            }
                        }
                    }
                    Err(e) => done(Err(e)),
                }
            }
            Command::Read {
                topic,
                partition,
                from,
                max_bytes,
                until,
                done,
            } => {
                let stopping = self.stopping;
                match self.partition(&topic, partition) {
                    Ok(p) => match until.filter(|_| !stopping && from == p.durable_next) {
                        Some(until) if until > crate::clock::now() => {
                            p.waiting_reads.park(ParkedRead {
                                from,
                                max_bytes,
                                until,
                                done,
                            });
                            self.note_waiting(topic, partition, until);
                        }
                        _ => {
                            let step = p.begin_read(from, max_bytes, ReadFor::Caller(done));
                            self.read_step(topic, partition, step);
                        }
                    },
                    Err(e) => done(Err(e)),
                }
            }
            Command::AddTopic {
                topic,
                partitions,
                owned,
                opening,
                reply,
            } => {
                let _ = reply.send(self.add_topic(topic, partitions, owned, opening));
            }
            Command::RemoveTopic { topic, reply } => match self.topics.get_mut(&topic) {
                Some(slot) => {
                    let err = DataError::TopicDeleted(topic.to_string());
                    for p in slot.owned.values_mut() {
                        p.fail_pending(&err);
                        for r in p.waiting_reads.take_all() {
                            (r.done)(Err(err.clone()));
                        }
                    }
                    slot.removing = Some(reply);
                    self.remove_topic_groups(&topic);
                }
                None => {
                    let _ = reply.send(Ok(()));
                }
            },
            Command::Group(cmd) => self.handle_group(cmd),
            Command::Stop => {
                self.stopping = true;
                self.answer_waiting_reads(None);
                self.answer_waiters(None);
            }
        }
    }

    /// Notes that a read waits on `partition` of `topic` until `until`.
    fn note_waiting(&mut self, topic: Arc<str>, partition: u32, until: Instant) {
        note_until(
            &mut self.waiting,
            &mut self.reads_until,
            topic,
            partition,
            until,
        );
    }

    fn answer_due_reads(&mut self) {
        let now = crate::clock::now();
        if self.reads_until.is_some_and(|u| u <= now) {
            self.answer_waiting_reads(Some(now));
        }
    }

    /// Answers, with nothing, the waiting reads due by `now` (every one when `None`: the shard
    /// stops), and finds the next deadline among the rest.
    fn answer_waiting_reads(&mut self, now: Option<Instant>) {
        let mut next = None;
        let topics = &mut self.topics;
        self.waiting.retain(|(topic, partition)| {
            let Some(p) = owned(topics, topic, *partition) else {
                return false;
            };
            let due = match now {
                Some(now) => p.waiting_reads.take_due(now),
                None => p.waiting_reads.take_all(),
            };
            for r in due {
                r.answer_empty(p.durable_next);
            }
            let earliest = p.waiting_reads.earliest();
            next = match (next, earliest) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
            earliest.is_some()
        });
        self.reads_until = next;
    }

    /// A flush made more of the partition durable: the reads waiting at its old end read on.
    fn release_waiting_reads(&mut self, topic: &Arc<str>, partition: u32) {
        let Some(p) = owned(&mut self.topics, topic, partition) else {
            return;
        };
        if p.waiting_reads.is_empty() {
            return;
        }
        for r in p.waiting_reads.take_all() {
            let Some(p) = owned(&mut self.topics, topic, partition) else {
                return;
            };
            let step = p.begin_read(r.from, r.max_bytes, ReadFor::Caller(r.done));
            self.read_step(Arc::clone(topic), partition, step);
        }
    }

    fn add_topic(
        &mut self,
        topic: Arc<str>,
        partitions: u32,
        owned: Vec<u32>,
        opening: Opening,
    ) -> Result<(), DataError> {
        let mut slot = TopicSlot {
            partitions,
            owned: HashMap::default(),
            offline: HashMap::default(),
            damaged: None,
            removing: None,
        };
        if let Opening::Damaged(cause) = opening {
            slot.damaged = Some(cause);
            self.topics.insert(topic, slot);
            return Ok(());
        }
        for id in owned {
            let token = self.token();
            let mut io = BlockingIo {
                disk: &mut self.disk,
                deferred: &mut self.deferred,
                token,
            };
            match open_partition(&mut io, &self.cfg, Arc::clone(&topic), id) {
                Ok(p) => {
                    slot.owned.insert(id, p);
                }
                Err(e) if matches!(opening, Opening::Recover) => {
                    log::error!(
                        "{topic}/{id} is offline: {e}. Every other partition is served; requests \
                         for this one are answered PartitionOffline. To repair: docs/OPERATIONS.md, \
                         \"Damaged files\" (keeld --recovery repair truncates a damaged segment)"
                    );
                    slot.offline.insert(id, Arc::new(e));
                    self.stats
                        .partitions_offline
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    for (_, p) in slot.owned {
                        p.close(&mut self.disk);
                    }
                    return Err(e);
                }
            }
        }
        self.topics.insert(topic, slot);
        Ok(())
    }

    fn finish_removals(&mut self) {
        let done: Vec<Arc<str>> = self
            .topics
            .iter()
            .filter(|(_, s)| s.removing.is_some() && s.owned.values().all(Partition::is_idle))
            .map(|(t, _)| Arc::clone(t))
            .collect();
        for topic in done {
            if let Some(slot) = self.topics.remove(&topic) {
                for (_, p) in slot.owned {
                    p.close(&mut self.disk);
                }
                self.stats
                    .partitions_offline
                    .fetch_sub(slot.offline.len() as u64, Ordering::Relaxed);
                if let Some(reply) = slot.removing {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// How many queued requests should wake the sleeping shard: with I/O in flight its
    /// completion will, so only a batch of them; while a flush waits for appends, as many as
    /// it waits for; otherwise the first.
    fn wake_at(&self) -> usize {
        let missing = self
            .lingering
            .iter()
            .filter_map(|(t, p)| self.topics.get(t)?.owned.get(p))
            .map(Partition::linger_missing)
            .filter(|&n| n > 0)
            .min();
        match missing {
            Some(n) => n.min(WAKE_BATCH),
            None if !self.ops.is_empty() => WAKE_BATCH,
            None => 1,
        }
    }

    fn start_flushes(&mut self) {
        let mut list = std::mem::take(&mut self.to_flush);
        // Held flushes are looked at again each turn: their appends may be in, or their time up.
        list.append(&mut self.lingering);
        self.linger_until = None;
        let now = crate::clock::now();
        for (topic, partition) in list.drain(..) {
            self.start_flushes_of(&topic, partition, now);
            self.kick_zeroing(topic, partition);
        }
        self.to_flush = list;
    }

    /// Starts as many of the partition's flushes as may go now, or notes it as lingering when
    /// its next flush waits for more appends (`linger.rs`).
    fn start_flushes_of(&mut self, topic: &Arc<str>, partition: u32, now: Instant) {
        loop {
            let token = self.token();
            let stopping = self.stopping;
            let Some(p) = owned(&mut self.topics, topic, partition) else {
                return;
            };
            if !p.wants_flush() {
                return;
            }
            if let Some(until) = flush_hold(&self.stats, stopping, p, now) {
                let (list, at) = (&mut self.lingering, &mut self.linger_until);
                note_until(list, at, Arc::clone(topic), partition, until);
                return;
            }
            let overlapped = !p.is_flushing_idle();
            if !p.start_flush(&mut self.disk, token) {
                return;
            }
            if overlapped {
                self.stats
                    .flushes_overlapped
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.ops
                .insert(token, Owner::Flush(Arc::clone(topic), partition));
        }
    }

    /// Keeps one zero write into the partition's prepared segment in flight, until it is done.
    fn kick_zeroing(&mut self, topic: Arc<str>, partition: u32) {
        if self.stopping {
            return;
        }
        let token = self.token();
        let Some(p) = owned(&mut self.topics, &topic, partition) else {
            return;
        };
        if p.zero_step(&mut self.disk, token) {
            self.ops.insert(token, Owner::Zero(topic, partition));
        }
    }

    /// Goes on with a read: answers it, or issues its next disk read.
    fn read_step(&mut self, topic: Arc<str>, partition: u32, step: ReadStep) {
        match step {
            // Only a consume's disk read gets here for a consume: its turn ends.
            ReadStep::Done(target @ ReadFor::Consume(_), result) => {
                self.read_done(target, result);
                self.consume_read_turn_over(&topic, partition);
            }
            ReadStep::Done(target, result) => self.read_done(target, result),
            ReadStep::Disk(r) => self.submit_read(topic, partition, r),
        }
    }

    fn read_done(&mut self, target: ReadFor, result: Result<ReadResult, DataError>) {
        match target {
            ReadFor::Caller(done) => done(result),
            ReadFor::Consume(task) => self.consume_read_done(*task, result),
        }
    }

    fn submit_read(&mut self, topic: Arc<str>, partition: u32, r: DiskRead) {
        let token = self.token();
        let Ok(p) = self.partition(&topic, partition) else {
            let err = DataError::TopicDeleted(topic.to_string());
            return self.read_done(r.target, Err(err));
        };
        let Some((file, pos, len)) = p.next_read(&r) else {
            let step = p.finish_read(r, Ok(()));
            return self.read_step(topic, partition, step);
        };
        p.reads_in_flight += 1;
        self.disk.submit_read(
            file,
            pos,
            crate::aligned::AlignedBuf::zeroed(len),
            len,
            token,
        );
        self.stats.disk_reads.fetch_add(1, Ordering::Relaxed);
        self.ops
            .insert(token, Owner::Read(topic, partition, pos, r));
    }

    fn on_completion(&mut self, c: Completion) {
        let token = c.token;
        match self.ops.get(&token) {
            Some(Owner::Flush(topic, partition)) => {
                let (topic, partition) = (Arc::clone(topic), *partition);
                let Some(p) = owned(&mut self.topics, &topic, partition) else {
                    return;
                };
                let complete = p.on_flush_completion(c);
                let finished: Vec<FlushDone> = std::iter::from_fn(|| p.take_finished()).collect();
                if complete {
                    self.ops.remove(&token);
                }
                if finished.is_empty() {
                    return;
                }
                // Keep the disk busy: the next flushes go out before these ones' appenders are
                // answered, unless they wait for them (then the shard's next turn decides).
                self.start_flushes_of(&topic, partition, crate::clock::now());
                let Some(p) = owned(&mut self.topics, &topic, partition) else {
                    return;
                };
                let mut any_ok = false;
                for done in &finished {
                    let counter = if done.ok {
                        &self.stats.flushes
                    } else {
                        &self.stats.failed_flushes
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if done.ok {
                        any_ok = true;
                        self.stats.flush_io_us.record(done.io_us);
                        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .appends
                            .fetch_add(done.appends as u64, Ordering::Relaxed);
                        self.stats
                            .bytes_written
                            .fetch_add(done.bytes as u64, Ordering::Relaxed);
                    }
                }
                p.enforce_retention(&mut self.disk);
                let retired = p.take_retired();
                self.stats
                    .segments_deleted
                    .fetch_add(retired.dropped.len() as u64, Ordering::Relaxed);
                for path in retired.dropped {
                    self.janitor.remove(path);
                }
                self.stats
                    .segments_recycled
                    .fetch_add(retired.recycled, Ordering::Relaxed);
                for done in finished {
                    for (answer, outcome) in done.answers {
                        answer(outcome);
                    }
                }
                if any_ok {
                    self.release_waiting_reads(&topic, partition);
                    self.groups_data_arrived(&topic);
                }
                self.kick_zeroing(topic, partition);
            }
            Some(Owner::Zero(..)) => {
                let Some(Owner::Zero(topic, partition)) = self.ops.remove(&token) else {
                    return;
                };
                let Some(p) = owned(&mut self.topics, &topic, partition) else {
                    return;
                };
                p.on_zero_completion(c);
                if p.zeroing() {
                    // The last chunk's sync is still to come under the same token.
                    self.ops.insert(token, Owner::Zero(topic, partition));
                    return;
                }
                if p.wants_flush() {
                    self.to_flush.push((Arc::clone(&topic), partition));
                }
                self.kick_zeroing(topic, partition);
            }
            Some(Owner::Read(..)) => {
                let Some(Owner::Read(topic, partition, pos, r)) = self.ops.remove(&token) else {
                    return;
                };
                let Some(p) = owned(&mut self.topics, &topic, partition) else {
                    let err = DataError::TopicDeleted(topic.to_string());
                    return self.read_done(r.target, Err(err));
                };
                p.reads_in_flight -= 1;
                let step = p.continue_read(r, pos, c);
                self.read_step(topic, partition, step);
            }
            Some(Owner::TableSync(index)) => {
                let index = *index;
                self.ops.remove(&token);
                self.on_table_sync(index, c);
            }
            None => log::warn!("completion for unknown operation {token}"),
        }
    }
}
