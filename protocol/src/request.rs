//! Requests: what clients send.

use crate::api::ApiKey;
use crate::frame::{begin_frame, end_frame, DecodeError, REQUEST_HEADER_BYTES, SIZE_PREFIX_BYTES};
use crate::wire::{Reader, Writer};
use std::ops::RangeInclusive;

/// The header every request starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Which request.
    pub api: ApiKey,
    /// Its version.
    pub version: u16,
    /// Chosen by the client; echoed in the response.
    pub correlation_id: u32,
}

/// Where a produced batch goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionTarget<'a> {
    /// This partition.
    Partition(u32),
    /// The partition the server derives from this key.
    Key(&'a [u8]),
}

/// Where a consumer group starts reading a topic, when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first offset of each partition.
    Earliest,
    /// Each partition's end at creation: only messages produced later.
    Latest,
    /// This offset in every partition (clamped to the log's end).
    Offset(u64),
    /// The first message whose timestamp (ms since the epoch) is at or after this.
    Timestamp(i64),
}

/// Inclusive offsets `first..=last` of one partition, for acks and nacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetSpan {
    /// Partition.
    pub partition: u32,
    /// First offset.
    pub first: u64,
    /// Last offset (inclusive).
    pub last: u64,
}

/// Settings a member brings when joining. Group-wide ones (`ack_timeout_ms`,
/// `max_deliveries`) take effect when the group is created and are kept from then on; 0 asks
/// for the server's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JoinSettings {
    /// Deliveries the member may hold unacknowledged (prefetch).
    pub max_unacked: u32,
    /// The member leaves when it sends nothing for this long.
    pub session_timeout_ms: u32,
    /// A delivery not acknowledged within this is redelivered (group-wide).
    pub ack_timeout_ms: u32,
    /// Deliveries before a message goes to the dead-letter topic (group-wide).
    pub max_deliveries: u32,
}

impl JoinSettings {
    /// Allowed session timeouts: 100 ms to an hour.
    pub const SESSION_TIMEOUT_MS: RangeInclusive<u32> = 100..=3_600_000;
    /// Allowed ack timeouts: 100 ms to a day.
    pub const ACK_TIMEOUT_MS: RangeInclusive<u32> = 100..=86_400_000;
    /// Allowed deliveries before dead-lettering.
    pub const MAX_DELIVERIES: RangeInclusive<u32> = 1..=10_000;
    /// Allowed prefetch.
    pub const MAX_UNACKED: RangeInclusive<u32> = 1..=100_000;

    /// The settings as (name, value, allowed range).
    fn fields(&self) -> [(&'static str, u32, RangeInclusive<u32>); 4] {
        [
            ("max_unacked", self.max_unacked, Self::MAX_UNACKED),
            (
                "session_timeout_ms",
                self.session_timeout_ms,
                Self::SESSION_TIMEOUT_MS,
            ),
            ("ack_timeout_ms", self.ack_timeout_ms, Self::ACK_TIMEOUT_MS),
            ("max_deliveries", self.max_deliveries, Self::MAX_DELIVERIES),
        ]
    }

    /// Fails naming the first setting outside its range. 0 asks for the server's default and
    /// is always allowed, unless `zero_allowed` is false (the server's own defaults).
    pub fn check(&self, zero_allowed: bool) -> Result<(), String> {
        for (name, value, range) in self.fields() {
            if (value != 0 || !zero_allowed) && !range.contains(&value) {
                let zero = if zero_allowed {
                    " (or 0 for the server's default)"
                } else {
                    ""
                };
                return Err(format!(
                    "{name} must be {}..={}{zero}, not {value}",
                    range.start(),
                    range.end()
                ));
            }
        }
        Ok(())
    }
}

/// Longest a Nack may ask for its messages to wait before redelivery: a day.
pub const MAX_NACK_DELAY_MS: u32 = 86_400_000;

/// A decoded request. Batch bytes are borrowed from the frame, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Version negotiation; the server answers with what it supports and its limits.
    Handshake {
        /// Free-form client name, for logs.
        client: String,
    },
    /// Create a topic.
    CreateTopic {
        /// Name.
        topic: String,
        /// Partition count.
        partitions: u32,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Name.
        topic: String,
    },
    /// List topics.
    ListTopics,
    /// Partitions of a topic.
    Metadata {
        /// Name.
        topic: String,
    },
    /// Append one RecordBatch v2; answered once it is durable.
    Produce {
        /// Topic.
        topic: String,
        /// Partition, or key to hash.
        target: PartitionTarget<'a>,
        /// Idempotent producer id (-1: none).
        producer_id: i64,
        /// Sequence of the batch's first record for that producer.
        base_sequence: i32,
        /// The batch, as a Kafka producer would send it.
        batch: &'a [u8],
    },
    /// Read batches from an offset.
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// First offset wanted.
        offset: u64,
        /// Byte budget of the answer (at least one batch is returned when there is one).
        max_bytes: u32,
        /// How long to wait for data when there is none yet (0: answer at once).
        max_wait_ms: u32,
    },
    /// Join a group reading a topic (the group is created on first join).
    JoinGroup {
        /// Group name.
        group: String,
        /// Topic the group reads.
        topic: String,
        /// Where a new group starts.
        start: StartAt,
        /// The member's settings.
        settings: JoinSettings,
    },
    /// Leave: what the member holds is redelivered.
    LeaveGroup {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Member id from the join.
        member: u64,
    },
    /// Keep the member's session alive (any request naming the member does too).
    Heartbeat {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Member id.
        member: u64,
    },
    /// Up to `max_messages` deliveries, waiting up to `max_wait_ms` for the first.
    Consume {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Member id.
        member: u64,
        /// Most deliveries wanted (the member's prefetch limit applies too).
        max_messages: u32,
        /// How long to wait when nothing is ready (0: answer at once).
        max_wait_ms: u32,
    },
    /// Acknowledge delivered messages.
    Ack {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Member id.
        member: u64,
        /// Answer only once the acknowledgements are durable.
        durable: bool,
        /// What is acknowledged.
        spans: Vec<OffsetSpan>,
    },
    /// Give delivered messages back, to be redelivered after `delay_ms`.
    Nack {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Member id.
        member: u64,
        /// Redelivery waits this long.
        delay_ms: u32,
        /// What is given back.
        spans: Vec<OffsetSpan>,
    },
    /// A producer id and epoch for an idempotent producer: a new id (`producer_id` -1), or
    /// the next epoch of one this server handed out.
    InitProducer {
        /// The producer's current id, or -1 for a new one.
        producer_id: i64,
        /// Its current epoch (ignored for a new one).
        epoch: i16,
    },
}

impl Request<'_> {
    /// The api of this request.
    pub fn api(&self) -> ApiKey {
        match self {
            Request::Handshake { .. } => ApiKey::Handshake,
            Request::CreateTopic { .. } => ApiKey::CreateTopic,
            Request::DeleteTopic { .. } => ApiKey::DeleteTopic,
            Request::ListTopics => ApiKey::ListTopics,
            Request::Metadata { .. } => ApiKey::Metadata,
            Request::Produce { .. } => ApiKey::Produce,
            Request::Fetch { .. } => ApiKey::Fetch,
            Request::JoinGroup { .. } => ApiKey::JoinGroup,
            Request::LeaveGroup { .. } => ApiKey::LeaveGroup,
            Request::Heartbeat { .. } => ApiKey::Heartbeat,
            Request::Consume { .. } => ApiKey::Consume,
            Request::Ack { .. } => ApiKey::Ack,
            Request::Nack { .. } => ApiKey::Nack,
            Request::InitProducer { .. } => ApiKey::InitProducer,
        }
    }
}

/// A request that could not be decoded; `correlation_id` is set when the header was readable,
/// so the server can answer it with an error instead of closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad request (correlation id {correlation_id:?}): {error}")]
pub struct BadRequest {
    /// The request's correlation id, if the header could be read.
    pub correlation_id: Option<u32>,
    /// What is wrong.
    pub error: DecodeError,
}

/// Appends one whole request frame (size prefix included) to `out`.
pub fn encode_request(correlation_id: u32, request: &Request<'_>, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    let mut w = Writer::new(out);
    write_header(&mut w, request.api(), correlation_id);
    match request {
        Request::Handshake { client } => w.string(client),
        Request::CreateTopic { topic, partitions } => {
            w.string(topic);
            w.u32(*partitions);
        }
        Request::DeleteTopic { topic } | Request::Metadata { topic } => w.string(topic),
        Request::ListTopics => {}
        Request::Produce {
            topic,
            target,
            producer_id,
            base_sequence,
            batch,
        } => {
            write_produce_head(&mut w, topic, target, *producer_id, *base_sequence);
            w.bytes(batch);
        }
        Request::Fetch {
            topic,
            partition,
            offset,
            max_bytes,
            max_wait_ms,
        } => {
            w.string(topic);
            w.u32(*partition);
            w.u64(*offset);
            w.u32(*max_bytes);
            w.u32(*max_wait_ms);
        }
        Request::JoinGroup {
            group,
            topic,
            start,
            settings,
        } => {
            w.string(group);
            w.string(topic);
            let (tag, value) = match *start {
                StartAt::Earliest => (0, 0),
                StartAt::Latest => (1, 0),
                StartAt::Offset(o) => (2, o),
                StartAt::Timestamp(t) => (3, t as u64),
            };
            w.u8(tag);
            w.u64(value);
            w.u32(settings.max_unacked);
            w.u32(settings.session_timeout_ms);
            w.u32(settings.ack_timeout_ms);
            w.u32(settings.max_deliveries);
        }
        Request::LeaveGroup {
            group,
            topic,
            member,
        }
        | Request::Heartbeat {
            group,
            topic,
            member,
        } => {
            w.string(group);
            w.string(topic);
            w.u64(*member);
        }
        Request::Consume {
            group,
            topic,
            member,
            max_messages,
            max_wait_ms,
        } => {
            w.string(group);
            w.string(topic);
            w.u64(*member);
            w.u32(*max_messages);
            w.u32(*max_wait_ms);
        }
        Request::Ack {
            group,
            topic,
            member,
            durable,
            spans,
        } => {
            w.string(group);
            w.string(topic);
            w.u64(*member);
            w.u8(u8::from(*durable));
            write_spans(&mut w, spans);
        }
        Request::Nack {
            group,
            topic,
            member,
            delay_ms,
            spans,
        } => {
            w.string(group);
            w.string(topic);
            w.u64(*member);
            w.u32(*delay_ms);
            write_spans(&mut w, spans);
        }
        Request::InitProducer { producer_id, epoch } => {
            w.i64(*producer_id);
            w.u16(*epoch as u16);
        }
    }
    end_frame(out, at);
}

/// Appends a whole produce request frame, [`encode_request`]'s bytes for a
/// [`Request::Produce`] of `batch.build()`, with the batch encoded straight into `out`: the
/// builder's records are copied once, into the frame, instead of into an encoded batch first.
pub fn encode_produce_request(
    correlation_id: u32,
    topic: &str,
    target: &PartitionTarget<'_>,
    producer_id: i64,
    base_sequence: i32,
    batch: &keel_format::batch::BatchBuilder,
    out: &mut Vec<u8>,
) {
    let at = begin_frame(out);
    let mut w = Writer::new(out);
    write_header(&mut w, ApiKey::Produce, correlation_id);
    write_produce_head(&mut w, topic, target, producer_id, base_sequence);
    w.u32(batch.encoded_len() as u32);
    batch.build_into(out);
    end_frame(out, at);
}

fn write_header(w: &mut Writer<'_>, api: ApiKey, correlation_id: u32) {
    w.u16(api as u16);
    w.u16(api.versions().1);
    w.u32(correlation_id);
}

/// A produce body's fields before its batch.
fn write_produce_head(
    w: &mut Writer<'_>,
    topic: &str,
    target: &PartitionTarget<'_>,
    producer_id: i64,
    base_sequence: i32,
) {
    w.string(topic);
    match target {
        PartitionTarget::Partition(p) => {
            w.u8(0);
            w.u32(*p);
        }
        PartitionTarget::Key(key) => {
            w.u8(1);
            w.bytes(key);
        }
    }
    w.i64(producer_id);
    w.i32(base_sequence);
}

fn write_spans(w: &mut Writer<'_>, spans: &[OffsetSpan]) {
    w.u32(spans.len() as u32);
    for s in spans {
        w.u32(s.partition);
        w.u64(s.first);
        w.u64(s.last);
    }
}

const SPAN_BYTES: usize = 20;

fn read_spans(r: &mut Reader<'_>) -> Result<Vec<OffsetSpan>, DecodeError> {
    let n = r.count(SPAN_BYTES, "span count")?;
    let mut spans = Vec::with_capacity(n);
    for _ in 0..n {
        let span = OffsetSpan {
            partition: r.u32("partition")?,
            first: r.u64("first offset")?,
            last: r.u64("last offset")?,
        };
        if span.last < span.first {
            return Err(DecodeError::Malformed("span ends before it starts"));
        }
        spans.push(span);
    }
    Ok(spans)
}

/// Decodes one request frame (size prefix included, as [`crate::frame_len`] delimits it).
pub fn decode_request(frame: &[u8]) -> Result<(RequestHeader, Request<'_>), BadRequest> {
    let mut r = Reader::new(frame);
    let bad = |correlation_id, error| BadRequest {
        correlation_id,
        error,
    };
    let size = r.u32("size").map_err(|e| bad(None, e))? as usize;
    if size != r.remaining() || size < REQUEST_HEADER_BYTES {
        return Err(bad(None, DecodeError::Malformed("size")));
    }
    let (key, version, correlation_id) = (|| {
        Ok::<_, DecodeError>((
            r.u16("api key")?,
            r.u16("api version")?,
            r.u32("correlation id")?,
        ))
    })()
    .map_err(|e| bad(None, e))?;
    debug_assert_eq!(
        frame.len() - r.remaining(),
        SIZE_PREFIX_BYTES + REQUEST_HEADER_BYTES
    );
    let header = (|| {
        let api = ApiKey::from_u16(key)?;
        let (min, max) = api.versions();
        if version < min || version > max {
            return Err(DecodeError::UnsupportedVersion { api: key, version });
        }
        Ok(RequestHeader {
            api,
            version,
            correlation_id,
        })
    })()
    .map_err(|e| bad(Some(correlation_id), e))?;
    let request = decode_body(header.api, &mut r)
        .and_then(|req| r.finish().map(|()| req))
        .map_err(|e| bad(Some(correlation_id), e))?;
    Ok((header, request))
}

fn decode_body<'a>(api: ApiKey, r: &mut Reader<'a>) -> Result<Request<'a>, DecodeError> {
    Ok(match api {
        ApiKey::Handshake => Request::Handshake {
            client: r.string("client name")?,
        },
        ApiKey::CreateTopic => Request::CreateTopic {
            topic: r.string("topic")?,
            partitions: r.u32("partitions")?,
        },
        ApiKey::DeleteTopic => Request::DeleteTopic {
            topic: r.string("topic")?,
        },
        ApiKey::ListTopics => Request::ListTopics,
        ApiKey::Metadata => Request::Metadata {
            topic: r.string("topic")?,
        },
        ApiKey::Produce => Request::Produce {
            topic: r.string("topic")?,
            target: match r.u8("partition target")? {
                0 => PartitionTarget::Partition(r.u32("partition")?),
                1 => PartitionTarget::Key(r.bytes("key")?),
                _ => return Err(DecodeError::Malformed("partition target")),
            },
            producer_id: r.i64("producer id")?,
            base_sequence: r.i32("base sequence")?,
            batch: r.bytes("batch")?,
        },
        ApiKey::Fetch => Request::Fetch {
            topic: r.string("topic")?,
            partition: r.u32("partition")?,
            offset: r.u64("offset")?,
            max_bytes: r.u32("max bytes")?,
            max_wait_ms: r.u32("max wait")?,
        },
        ApiKey::JoinGroup => Request::JoinGroup {
            group: r.string("group")?,
            topic: r.string("topic")?,
            start: {
                let tag = r.u8("start")?;
                let value = r.u64("start value")?;
                match tag {
                    0 => StartAt::Earliest,
                    1 => StartAt::Latest,
                    2 => StartAt::Offset(value),
                    3 => StartAt::Timestamp(value as i64),
                    _ => return Err(DecodeError::Malformed("start")),
                }
            },
            settings: JoinSettings {
                max_unacked: r.u32("max unacked")?,
                session_timeout_ms: r.u32("session timeout")?,
                ack_timeout_ms: r.u32("ack timeout")?,
                max_deliveries: r.u32("max deliveries")?,
            },
        },
        ApiKey::LeaveGroup => Request::LeaveGroup {
            group: r.string("group")?,
            topic: r.string("topic")?,
            member: r.u64("member")?,
        },
        ApiKey::Heartbeat => Request::Heartbeat {
            group: r.string("group")?,
            topic: r.string("topic")?,
            member: r.u64("member")?,
        },
        ApiKey::Consume => Request::Consume {
            group: r.string("group")?,
            topic: r.string("topic")?,
            member: r.u64("member")?,
            max_messages: r.u32("max messages")?,
            max_wait_ms: r.u32("max wait")?,
        },
        ApiKey::Ack => Request::Ack {
            group: r.string("group")?,
            topic: r.string("topic")?,
            member: r.u64("member")?,
            durable: match r.u8("durable")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Malformed("durable")),
            },
            spans: read_spans(r)?,
        },
        ApiKey::Nack => Request::Nack {
            group: r.string("group")?,
            topic: r.string("topic")?,
            member: r.u64("member")?,
            delay_ms: r.u32("delay")?,
            spans: read_spans(r)?,
        },
        ApiKey::InitProducer => Request::InitProducer {
            producer_id: r.i64("producer id")?,
            epoch: r.u16("epoch")? as i16,
        },
    })
}
