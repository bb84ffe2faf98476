//! Handing messages to a member: pick the offsets (per partition, by the delivery rules),
//! then read batches that hold them. Runs on a worker thread, as it waits for reads.

use std::time::Instant;

use keel_engine::batch::trusted_batches;
use keel_engine::delivery::{Delivery, MemberId};
use keel_engine::{Engine, EngineError};
use keel_protocol::{ConsumedPartition, DeliveryInfo, Response, StartAt};

use super::{ConsumeJob, Groups, LiveGroup};

/// Bytes one read asks for.
const READ_BYTES: usize = 256 << 10;

/// The messages of one partition for one answer.
pub struct Part {
    partition: u32,
    deliveries: Vec<DeliveryInfo>,
    batches: Vec<u8>,
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
        let Some(limit) = g.members().get(&member).map(|m| m.max_unacked) else {
            return Err(ConsumeError::UnknownMember);
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
            let Some(from) = g.partition(p).map(|d| d.next_wanted(now)) else {
                continue;
            };
            let read = match engine.read_wait(topic, p, from, READ_BYTES) {
                Ok(r) => r,
                // Nothing there (the log is shorter than the group's position).
                Err(EngineError::OffsetOutOfRange { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let batch = match g.partition(p) {
                Some(mut d) => d.next(member, room, read.high_watermark, now, ack_timeout),
                None => continue,
            };
            if !batch.dead_letters.is_empty() {
                self.dead_letter(&engine, g, p, &batch.dead_letters);
            }
            if batch.deliveries.is_empty() {
                continue;
            }
            let (sent, batches) =
                match cover(&engine, topic, p, &batch.deliveries, read.data, budget) {
                    Ok(c) => c,
                    Err(e) => {
                        give_back(g, member, p, &batch.deliveries);
                        return Err(e.into());
                    }
                };
            give_back(g, member, p, &batch.deliveries[sent..]);
            room -= sent;
            budget = budget.saturating_sub(batches.len());
            parts.push(Part {
                partition: p,
                deliveries: batch.deliveries[..sent]
                    .iter()
                    .map(|d| DeliveryInfo {
                        offset: d.offset,
                        delivery_count: d.delivery_count,
                    })
                    .collect(),
                batches,
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
            batches: &p.batches,
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

/// Whole batches holding the delivered offsets (ascending), starting with what was read
/// already and reading on where it falls short; stops before `budget` bytes (always taking
/// the first). Returns how many deliveries it covers and the batches.
fn cover(
    engine: &Engine,
    topic: &str,
    partition: u32,
    deliveries: &[Delivery],
    mut data: Vec<u8>,
    budget: usize,
) -> Result<(usize, Vec<u8>), EngineError> {
    let mut out = Vec::new();
    let mut next = 0;
    while next < deliveries.len() {
        let mut progressed = false;
        for b in trusted_batches(&data) {
            let (base, last) = (b.base_offset() as u64, b.last_offset() as u64);
            let want = deliveries[next].offset;
            if last < want {
                continue;
            }
            if base > want {
                break;
            }
            if !out.is_empty() && out.len() + b.bytes().len() > budget {
                return Ok((next, out));
            }
            out.extend_from_slice(b.bytes());
            progressed = true;
            while next < deliveries.len() && deliveries[next].offset <= last {
                next += 1;
            }
            if next == deliveries.len() {
                break;
            }
        }
        if next == deliveries.len() {
            break;
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
    Ok((next, out))
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
