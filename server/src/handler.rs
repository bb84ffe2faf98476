//! Turns decoded requests into engine calls and answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use keel_engine::{
    shard_for, ConsumeLimits, DataError, Engine, GroupSettings, GroupStart, JoinRequest,
    ProducerIdentity, Reservation, Ticket,
};
use keel_protocol::{
    ApiKey, ApiVersions, ErrorCode, JoinSettings, OffsetSpan, PartitionTarget, Request, Response,
    StartAt, TopicInfo, MAX_NACK_DELAY_MS,
};

use crate::budget::{BudgetHold, ByteBudget};
use crate::config::GroupDefaults;
use crate::pending::{Then, Tickets, Waiting};
use crate::reply::Reply;
use keel_protocol::partition_for_key;

/// Bytes of a fetch response around its batches (header, watermarks, length); a fetch's
/// `max_bytes` is capped so that its answer always fits in one frame.
const FETCH_RESPONSE_OVERHEAD: usize = 64;
/// Batch bytes a consume answer carries at most (unless the frame limit is lower).
const CONSUME_ANSWER_BYTES: usize = 4 << 20;
/// Longest long-poll wait a fetch may ask for.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(60);

/// A request the engine answers later: its place among the requests waiting for the engine,
/// and where they wait.
pub struct Later<'a> {
    /// Its place, taken.
    pub place: Reservation,
    /// Where it waits.
    pub tickets: &'a mut dyn Tickets,
}

/// The ticket for the engine: the request waits in `later` until the engine answers it. A
/// request without a place (the caller did not ask [`Handler::answers_later`]: a bug) is
/// answered with an internal error instead.
fn ticket(
    later: Option<Later<'_>>,
    reply: Reply,
    then: Then,
    shard_hold: Option<BudgetHold>,
) -> Option<Ticket> {
    let Some(Later { place, tickets }) = later else {
        reply.error(
            ErrorCode::Internal,
            "a request the engine answers later came without a place to wait",
        );
        return None;
    };
    let waiting = Waiting {
        reply,
        then,
        shard_hold,
    };
    Some(tickets.ticket(place, waiting))
}

/// What every connection shares.
pub struct Handler {
    engine: Arc<Engine>,
    group_defaults: GroupDefaults,
    shard_budgets: Vec<Arc<ByteBudget>>,
    max_frame_bytes: u32,
}

impl Handler {
    /// A handler over `engine`, with one in-flight budget of `shard_inflight_bytes` per shard.
    pub fn new(
        engine: Arc<Engine>,
        group_defaults: GroupDefaults,
        shard_inflight_bytes: usize,
        max_frame_bytes: u32,
    ) -> Self {
        let shard_budgets = (0..engine.config().shards)
            .map(|_| ByteBudget::new(shard_inflight_bytes))
            .collect();
        Self {
            engine,
            group_defaults,
            shard_budgets,
            max_frame_bytes,
        }
    }

    /// The largest frame a request may have.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Bytes of connection budget a request holds until its answer is written: its own frame,
    /// plus the answer it may bring back.
    pub fn cost(&self, frame_len: usize, request: &Request<'_>) -> usize {
        match request {
            Request::Fetch { max_bytes, .. } => frame_len + self.fetch_budget(*max_bytes),
            Request::Consume { .. } => frame_len + Self::consume_answer_limit(self.max_frame_bytes),
            _ => frame_len,
        }
    }

    /// Most batch bytes a consume answer carries: room in one frame for the batches plus the
    /// delivery list, and no more than a few reads' worth.
    pub fn consume_answer_limit(max_frame_bytes: u32) -> usize {
        (max_frame_bytes as usize / 2).min(CONSUME_ANSWER_BYTES)
    }

    fn fetch_budget(&self, max_bytes: u32) -> usize {
        (max_bytes as usize).min(self.max_frame_bytes as usize - FETCH_RESPONSE_OVERHEAD)
    }

    fn shard_budget(&self, topic: &str, partition: u32) -> &Arc<ByteBudget> {
        &self.shard_budgets[shard_for(topic, partition, self.shard_budgets.len())]
    }

    /// The shard budget a request holds until the engine has answered it, and how much of
    /// it; `None` for requests that need none (or will be refused before reaching a shard).
    pub fn shard_cost(&self, request: &Request<'_>) -> Option<(&Arc<ByteBudget>, usize)> {
        match request {
            Request::Produce {
                topic,
                target,
                batch,
                ..
            } => {
                let partition = self.partition_of(topic, target).ok()?;
                Some((self.shard_budget(topic, partition), batch.len()))
            }
            Request::Fetch {
                topic,
                partition,
                max_bytes,
                ..
            } => Some((
                self.shard_budget(topic, *partition),
                self.fetch_budget(*max_bytes),
            )),
            _ => None,
        }
    }

    /// Whether the engine answers `request` later, through a ticket.
    pub fn answers_later(&self, request: &Request<'_>) -> bool {
        match request {
            Request::Produce { .. }
            | Request::Fetch { .. }
            | Request::Consume { .. }
            | Request::Ack { .. }
            | Request::Nack { .. } => true,
            Request::Handshake { .. }
            | Request::CreateTopic { .. }
            | Request::DeleteTopic { .. }
            | Request::ListTopics
            | Request::Metadata { .. }
            | Request::JoinGroup { .. }
            | Request::LeaveGroup { .. }
            | Request::Heartbeat { .. }
            | Request::InitProducer { .. } => false,
        }
    }

    fn partition_of(&self, topic: &str, target: &PartitionTarget<'_>) -> Result<u32, DataError> {
        match target {
            PartitionTarget::Partition(p) => Ok(*p),
            PartitionTarget::Key(key) => {
                let n = self.engine.partitions(topic)?;
                Ok(partition_for_key(key, n))
            }
        }
    }

    /// Handles one request from connection `conn`; the answer goes through `reply`, now or
    /// later. `shard_hold` is what [`Handler::shard_cost`] asked for, taken; `later` is there
    /// for a request [`Handler::answers_later`].
    pub fn handle(
        &self,
        request: Request<'_>,
        frame: &Bytes,
        reply: Reply,
        conn: u64,
        shard_hold: Option<BudgetHold>,
        later: Option<Later<'_>>,
    ) {
        match request {
            Request::Handshake { .. } => reply.ok(&Response::Handshake {
                server: format!("keeld {}", env!("CARGO_PKG_VERSION")),
                max_frame_bytes: self.max_frame_bytes,
                max_batch_bytes: u32::try_from(self.engine.config().max_batch_bytes)
                    .unwrap_or(u32::MAX),
                apis: ApiKey::ALL
                    .iter()
                    .map(|&api| {
                        let (min, max) = api.versions();
                        ApiVersions {
                            api: api as u16,
                            min,
                            max,
                        }
                    })
                    .collect(),
            }),
            Request::CreateTopic { topic, partitions } => {
                match self.engine.create_topic(&topic, partitions) {
                    Ok(()) => {
                        log::info!("created topic {topic:?} with {partitions} partitions");
                        reply.ok(&Response::CreateTopic);
                    }
                    Err(e) => reply.engine_error(&e),
                }
            }
            Request::DeleteTopic { topic } => match self.engine.delete_topic(&topic) {
                Ok(()) => {
                    log::info!("deleted topic {topic:?}");
                    reply.ok(&Response::DeleteTopic);
                }
                Err(e) => reply.engine_error(&e),
            },
            Request::ListTopics => reply.ok(&Response::ListTopics(
                self.engine
                    .list_topics()
                    .into_iter()
                    .map(|(name, partitions)| TopicInfo { name, partitions })
                    .collect(),
            )),
            Request::Metadata { topic } => match self.engine.partitions(&topic) {
                Ok(partitions) => reply.ok(&Response::Metadata { partitions }),
                Err(e) => reply.engine_error(&e),
            },
            Request::InitProducer { producer_id, epoch } => {
                let current = (producer_id >= 0).then_some(ProducerIdentity {
                    id: producer_id,
                    epoch,
                });
                match self.engine.init_producer(current) {
                    Ok(p) => reply.ok(&Response::InitProducer {
                        producer_id: p.id,
                        epoch: p.epoch,
                    }),
                    Err(e) => reply.engine_error(&e),
                }
            }
            Request::JoinGroup {
                group,
                topic,
                start,
                settings,
            } => match settings.check(true) {
                Err(why) => reply.error(ErrorCode::InvalidArgument, &why),
                Ok(()) => self.join(&group, &topic, start, settings, conn, reply),
            },
            Request::LeaveGroup {
                group,
                topic,
                member,
            } => match self.engine.leave_group(&group, &topic, member) {
                Ok(()) => reply.ok(&Response::LeaveGroup),
                Err(e) => reply.engine_error(&e),
            },
            Request::Heartbeat {
                group,
                topic,
                member,
            } => match self.engine.heartbeat(&group, &topic, member) {
                Ok(()) => reply.ok(&Response::Heartbeat),
                Err(e) => reply.engine_error(&e),
            },
            Request::Produce {
                topic,
                target,
                batch,
                ..
            } => {
                let partition = match self.partition_of(&topic, &target) {
                    Ok(p) => p,
                    Err(e) => return reply.engine_error(&e),
                };
                if batch.is_empty() {
                    return reply.error(ErrorCode::InvalidBatch, "empty batch");
                }
                let batch = owned_part(frame, batch);
                let Some(ticket) = ticket(later, reply, Then::Produced { partition }, shard_hold)
                else {
                    return;
                };
                self.engine.append(&topic, partition, batch, ticket);
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                let max_bytes = self.fetch_budget(max_bytes);
                let Some(ticket) = ticket(later, reply, Then::Fetched, shard_hold) else {
                    return;
                };
                if max_wait_ms == 0 {
                    self.engine
                        .read(&topic, partition, offset, max_bytes, ticket);
                } else {
                    // A fetch that finds nothing waits on the partition's shard until a flush
                    // brings data or its wait runs out; it holds its shard budget meanwhile,
                    // which bounds what waits on a shard.
                    let wait = Duration::from_millis(u64::from(max_wait_ms)).min(MAX_FETCH_WAIT);
                    let until = Instant::now() + wait;
                    self.engine
                        .read_waiting(&topic, partition, offset, max_bytes, until, ticket);
                }
            }
            Request::Consume {
                group,
                topic,
                member,
                max_messages,
                max_wait_ms,
            } => {
                let wait = Duration::from_millis(u64::from(max_wait_ms)).min(MAX_FETCH_WAIT);
                let until = (!wait.is_zero()).then(|| Instant::now() + wait);
                let limits = ConsumeLimits {
                    max_messages: max_messages as usize,
                    max_bytes: Self::consume_answer_limit(self.max_frame_bytes),
                    until,
                };
                let Some(ticket) = ticket(later, reply, Then::Consumed, shard_hold) else {
                    return;
                };
                self.engine.consume(&group, &topic, member, limits, ticket);
            }
            Request::Ack {
                group,
                topic,
                member,
                durable,
                spans,
            } => {
                let Some(ticket) = ticket(later, reply, Then::Acked, shard_hold) else {
                    return;
                };
                let spans = spans_of(&spans);
                self.engine
                    .ack(&group, &topic, member, &spans, durable, ticket);
            }
            Request::Nack { delay_ms, .. } if delay_ms > MAX_NACK_DELAY_MS => reply.error(
                ErrorCode::InvalidArgument,
                &format!("delay_ms must be at most {MAX_NACK_DELAY_MS} (a day), not {delay_ms}"),
            ),
            Request::Nack {
                group,
                topic,
                member,
                delay_ms,
                spans,
            } => {
                let delay = Duration::from_millis(u64::from(delay_ms));
                let Some(ticket) = ticket(later, reply, Then::Nacked, shard_hold) else {
                    return;
                };
                let spans = spans_of(&spans);
                self.engine
                    .nack(&group, &topic, member, &spans, delay, ticket);
            }
        }
    }

    /// Joins a group (creating it, which writes files, the first time); a setting of 0 asks
    /// for the server's default. Each setting was checked against its range already.
    fn join(
        &self,
        group: &str,
        topic: &str,
        start: StartAt,
        asked: JoinSettings,
        conn: u64,
        reply: Reply,
    ) {
        let d = &self.group_defaults;
        let session_timeout_ms = asked_or(asked.session_timeout_ms, d.session_timeout_ms);
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        let joined = self.engine.join_group(JoinRequest {
            group,
            topic,
            start: match start {
                StartAt::Earliest => GroupStart::Earliest,
                StartAt::Latest => GroupStart::Latest,
                StartAt::Offset(o) => GroupStart::Offset(o),
                StartAt::Timestamp(t) => GroupStart::Timestamp(t),
            },
            settings: GroupSettings {
                ack_timeout: ms(asked_or(asked.ack_timeout_ms, d.ack_timeout_ms)),
                max_deliveries: asked_or(asked.max_deliveries, d.max_deliveries),
            },
            session_timeout: ms(session_timeout_ms),
            max_unacked: asked_or(asked.max_unacked, d.max_unacked) as usize,
            conn,
        });
        match joined {
            Ok(j) => reply.ok(&Response::JoinGroup {
                member: j.member,
                partitions: j.partitions,
                session_timeout_ms,
            }),
            Err(e) => reply.engine_error(&e),
        }
    }
}

/// `part` (a slice of `frame`, as decoded) as a shared slice of the frame's own bytes; a copy
/// only if it is not inside the frame, which decoding does not produce.
fn owned_part(frame: &Bytes, part: &[u8]) -> Bytes {
    let inside = frame.as_ptr_range();
    let range = part.as_ptr_range();
    if inside.start <= range.start && range.end <= inside.end {
        frame.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// A join's setting, or the server's default where it asked for one (0).
fn asked_or(asked: u32, default: u32) -> u32 {
    if asked == 0 {
        default
    } else {
        asked
    }
}

/// Spans as the engine takes them: (partition, first, last).
fn spans_of(spans: &[OffsetSpan]) -> Vec<(u32, u64, u64)> {
    spans
        .iter()
        .map(|s| (s.partition, s.first, s.last))
        .collect()
}
