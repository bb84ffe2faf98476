//! Handing messages to a member: pick the offsets (per partition, by the delivery rules),
//! then read batches that hold them. Runs on a worker thread, as it waits for reads.

use std::ops::Range;
use std::time::Instant;

use keel_engine::delivery::{Delivery, MemberId};
use keel_engine::{Engine, EngineError};
use keel_format::batch::trusted_batches;
use keel_protocol::{ConsumedPartition, DeliveryInfo, Response, StartAt};

use super::{ConsumeJob, Groups, LiveGroup};

/// Bytes one read asks for.
const READ_BYTES: usize = 256 << 10;

/// Reads from where partition `p` of the group wants to deliver next; `None` when the log has
/// nothing there. When retention has dropped that part of the log, the group moves past it
/// (what it had not acknowledged is gone: logged) and reads from the log's start instead.
fn read_wanted(
    engine: &Engine,
    g: &LiveGroup,
    p: u32,
    now: Instant,
) -> Result<Option<keel_engine::ReadResult>, EngineError> {
    let topic = g.stored.topic.as_str();
    for _ in 0..2 {
        let Some(from) = g.partition(p).map(|d| d.next_wanted(now)) else {
            return Ok(None);
        };
        match engine.read_wait(topic, p, from, READ_BYTES) {
            Ok(r) => return Ok(Some(r)),
            Err(EngineError::OffsetOutOfRange { start, .. }) if from < start => {
                let lost = g.partition(p).map_or(0, |mut d| d.skip_below(start));
                if lost > 0 {
                    log::warn!(
                        "group {} on {topic}/{p}: retention dropped {lost} messages it had not acknowledged; it goes on from offset {start}",
                        g.stored.group
                    );
                }
            }
            // Nothing there yet (the log is shorter than the group's position).
            Err(EngineError::OffsetOutOfRange { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The messages of one partition for one answer.
pub struct Part {
    partition: u32,
    deliveries: Vec<DeliveryInfo>,
    covered: Covered,
}

enum ConsumeError {
    UnknownMember,
    Engine(EngineError),
}

impl From<EngineError> for ConsumeError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl Groups {
    /// Tries a consume: answers it, or parks it when it found nothing and may wait.
    pub(super) fn run_consume(&self, mut job: ConsumeJob) {
        job.seen = job.group.generation();
        match self.deliver(&job.group, job.member, job.max) {
            Ok(parts) if parts.is_empty() && job.deadline.is_some_and(|d| Instant::now() < d) => {
                self.waiting.park(job);
            }
            Ok(parts) => {
                job.group.touch(job.member);
                answer(job, &parts);
            }
            Err(ConsumeError::UnknownMember) => {
                let group = job.group.stored.group.clone();
                super::unknown_member(job.reply, &group, job.member);
            }
            Err(ConsumeError::Engine(e)) => job.reply.engine_error(&e),
        }
    }

    fn deliver(
        &self,
        g: &LiveGroup,
        member: MemberId,
        max: usize,
    ) -> Result<Vec<Part>, ConsumeError> {
        let engine = self.engine()?;
        let (limit, others) = {
            let members = g.members();
            let Some(limit) = members.get(&member).map(|m| m.max_unacked) else {
                return Err(ConsumeError::UnknownMember);
            };
            (limit, members.len() > 1)
        };
        let mut room = max.min(limit.saturating_sub(g.held_by(member)));
        let mut budget = self.answer_bytes;
        let topic = g.stored.topic.as_str();
        let ack_timeout = g.stored.settings.ack_timeout;
        let n = g.partition_count();
        let start = g.next_start();
        let mut parts = Vec::new();
        for i in 0..n {
            if room == 0 || budget == 0 {
                break;
            }
            let p = (start + i) % n;
            let now = Instant::now();
            let Some(read) = read_wanted(&engine, g, p, now)? else {
                continue;
            };
            let batch = match g.partition(p) {
                Some(mut d) => d.next(member, others, room, read.high_watermark, now, ack_timeout),
                None => continue,
            };
            if !batch.dead_letters.is_empty() {
                self.dead_letter(&engine, g, p, &batch.dead_letters);
            }
            if batch.deliveries.is_empty() {
                continue;
            }
            let covered = match cover(&engine, topic, p, &batch.deliveries, read.data, budget) {
                Ok(c) => c,
                Err(e) => {
                    give_back(g, member, p, &batch.deliveries);
                    return Err(e.into());
                }
            };
            let sent = covered.sent;
            give_back(g, member, p, &batch.deliveries[sent..]);
            room -= sent;
            budget = budget.saturating_sub(covered.batches().len());
            parts.push(Part {
                partition: p,
                deliveries: batch.deliveries[..sent]
                    .iter()
                    .map(|d| DeliveryInfo {
                        offset: d.offset,
                        delivery_count: d.delivery_count,
                    })
                    .collect(),
                covered,
            });
        }
        Ok(parts)
    }
}

fn give_back(g: &LiveGroup, member: MemberId, partition: u32, unsent: &[Delivery]) {
    if unsent.is_empty() {
        return;
    }
    if let Some(mut d) = g.partition(partition) {
        let now = Instant::now();
        for u in unsent {
            d.give_back(member, u.offset, now);
        }
    }
    g.changed();
}

fn answer(job: ConsumeJob, parts: &[Part]) {
    let partitions = parts
        .iter()
        .map(|p| ConsumedPartition {
            partition: p.partition,
            deliveries: p.deliveries.clone(),
            batches: p.covered.batches(),
        })
        .collect();
    job.reply.ok(&Response::Consume { partitions });
}

/// Answers a waiting consume that found nothing in time.
pub fn answer_empty(job: ConsumeJob) {
    job.reply.ok(&Response::Consume {
        partitions: Vec::new(),
    });
}

/// The batches covering some deliveries: one slice of a read (the usual case: nothing is
/// copied before the answer is encoded), or bytes gathered from several reads.
pub struct Covered {
    /// Deliveries covered (a prefix of those asked for).
    sent: usize,
    bytes: Vec<u8>,
    range: Range<usize>,
}

impl Covered {
    fn batches(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
}

/// Whole batches holding the delivered offsets (ascending), starting with what was read
/// already and reading on where it falls short; stops before `budget` bytes (always taking
/// the first).
fn cover(
    engine: &Engine,
    topic: &str,
    partition: u32,
    deliveries: &[Delivery],
    mut data: Vec<u8>,
    budget: usize,
) -> Result<Covered, EngineError> {
    let mut gathered = Vec::new();
    let mut next = 0;
    loop {
        // Byte ranges of `data` to send, merged where they touch.
        let mut pieces: Vec<Range<usize>> = Vec::new();
        let mut size = gathered.len();
        let (mut pos, mut full) = (0, false);
        for b in trusted_batches(&data) {
            if next == deliveries.len() {
                break;
            }
            let len = b.bytes().len();
            let at = pos;
            pos += len;
            let (base, last) = (b.base_offset() as u64, b.last_offset() as u64);
            let want = deliveries[next].offset;
            if last < want {
                continue;
            }
            if base > want {
                break;
            }
            if size > 0 && size + len > budget {
                full = true;
                break;
            }
            size += len;
            match pieces.last_mut() {
                Some(r) if r.end == at => r.end = at + len,
                _ => pieces.push(at..at + len),
            }
            while next < deliveries.len() && deliveries[next].offset <= last {
                next += 1;
            }
        }
        let progressed = !pieces.is_empty();
        let done = full || next == deliveries.len();
        if done && gathered.is_empty() && pieces.len() <= 1 {
            let range = pieces.pop().unwrap_or(0..0);
            return Ok(Covered {
                sent: next,
                bytes: data,
                range,
            });
        }
        for r in pieces {
            gathered.extend_from_slice(&data[r]);
        }
        if done {
            let range = 0..gathered.len();
            return Ok(Covered {
                sent: next,
                bytes: gathered,
                range,
            });
        }
        let want = deliveries[next].offset;
        let more = engine.read_wait(topic, partition, want, READ_BYTES)?;
        let first = trusted_batches(&more.data)
            .next()
            .map(|b| b.base_offset() as u64);
        if !progressed && first.is_none_or(|base| base > want) {
            return Err(EngineError::InvalidConfig(format!(
                "offset {want} of {topic}/{partition} was delivered but cannot be read"
            )));
        }
        data = more.data;
    }
}

/// Where a new group starts in each partition.
pub fn start_offsets(
    engine: &Engine,
    topic: &str,
    partitions: u32,
    start: StartAt,
) -> Result<Vec<u64>, EngineError> {
    (0..partitions)
        .map(|p| {
            let end = engine.read_wait(topic, p, 0, 1)?.high_watermark;
            Ok(match start {
                StartAt::Earliest => 0,
                StartAt::Latest => end,
                StartAt::Offset(o) => o.min(end),
                StartAt::Timestamp(ts) => offset_at_time(engine, topic, p, ts, end)?,
            })
        })
        .collect()
}

/// The first offset whose timestamp is at or after `ts` (or the end): a scan from the start,
/// acceptable once per group creation.
fn offset_at_time(
    engine: &Engine,
    topic: &str,
    partition: u32,
    ts: i64,
    end: u64,
) -> Result<u64, EngineError> {
    let mut from = 0;
    while from < end {
        let read = engine.read_wait(topic, partition, from, READ_BYTES)?;
        for b in trusted_batches(&read.data) {
            let base = b.base_offset() as u64;
            for r in b.records().flatten() {
                if b.base_timestamp() + r.timestamp_delta >= ts {
                    return Ok(base + r.offset_delta as u64);
                }
            }
        }
        if read.next_offset <= from {
            break;
        }
        from = read.next_offset;
    }
    Ok(end)
}
