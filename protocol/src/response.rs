//! Responses: what the server answers, matched to requests by correlation id.

use crate::api::{ApiKey, ErrorCode};
use crate::frame::{begin_frame, end_frame, DecodeError, RESPONSE_HEADER_BYTES};
use crate::wire::{Reader, Writer};

/// One api the server speaks, with its version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersions {
    /// Api key.
    pub api: u16,
    /// Lowest version.
    pub min: u16,
    /// Highest version.
    pub max: u16,
}

/// A topic and its partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: u32,
}

/// One delivery of a message to a group member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The message's offset.
    pub offset: u64,
    /// 1 on the first delivery; more means it was delivered before (redelivered).
    pub delivery_count: u32,
}

/// The deliveries of one partition in a consume answer, with batches holding their messages.
/// The batches may hold other messages too (delivered to other members, or acknowledged):
/// only the offsets listed are this member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedPartition<'a> {
    /// Partition.
    pub partition: u32,
    /// The deliveries, by offset.
    pub deliveries: Vec<DeliveryInfo>,
    /// Whole RecordBatch v2 batches covering every delivered offset, concatenated.
    pub batches: &'a [u8],
}

/// A successful response. Fetched batches are borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// What the server speaks.
    Handshake {
        /// Server name and version, for logs.
        server: String,
        /// Largest frame the server accepts.
        max_frame_bytes: u32,
        /// Largest record batch a produce may carry.
        max_batch_bytes: u32,
        /// Apis and versions.
        apis: Vec<ApiVersions>,
    },
    /// Topic created.
    CreateTopic,
    /// Topic deleted.
    DeleteTopic,
    /// The topics.
    ListTopics(Vec<TopicInfo>),
    /// Partition count of the topic.
    Metadata {
        /// Partitions.
        partitions: u32,
    },
    /// The batch is durable at these offsets.
    Produce {
        /// Partition it went to.
        partition: u32,
        /// Offset of its first record.
        first_offset: u64,
        /// Offset of its last record.
        last_offset: u64,
    },
    /// Batches read.
    Fetch {
        /// One past the last durable offset.
        high_watermark: u64,
        /// Where to fetch from next.
        next_offset: u64,
        /// Whole RecordBatch v2 batches, concatenated.
        batches: &'a [u8],
    },
    /// Joined.
    JoinGroup {
        /// The member's id, for every later request.
        member: u64,
        /// Partitions of the topic.
        partitions: u32,
        /// The session timeout in force; send something more often than this.
        session_timeout_ms: u32,
    },
    /// Left.
    LeaveGroup,
    /// Session renewed.
    Heartbeat,
    /// Messages delivered (none when the wait ran out).
    Consume {
        /// Per partition with deliveries.
        partitions: Vec<ConsumedPartition<'a>>,
    },
    /// Acknowledged (durably, if asked).
    Ack,
    /// Given back.
    Nack,
    /// The producer's identity: put both in the header of each batch it sends.
    InitProducer {
        /// Producer id.
        producer_id: i64,
        /// Epoch.
        epoch: i16,
    },
}

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// Details for humans.
    pub message: String,
}

/// Appends a successful response frame.
pub fn encode_response(correlation_id: u32, response: &Response<'_>, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    let mut w = Writer::new(out);
    w.u32(correlation_id);
    w.u16(ErrorCode::None as u16);
    match response {
        Response::Handshake {
            server,
            max_frame_bytes,
            max_batch_bytes,
            apis,
        } => {
            w.string(server);
            w.u32(*max_frame_bytes);
            w.u32(*max_batch_bytes);
            w.u32(apis.len() as u32);
            for a in apis {
                w.u16(a.api);
                w.u16(a.min);
                w.u16(a.max);
            }
        }
        Response::CreateTopic | Response::DeleteTopic => {}
        Response::ListTopics(topics) => {
            w.u32(topics.len() as u32);
            for t in topics {
                w.string(&t.name);
                w.u32(t.partitions);
            }
        }
        Response::Metadata { partitions } => w.u32(*partitions),
        Response::Produce {
            partition,
            first_offset,
            last_offset,
        } => {
            w.u32(*partition);
            w.u64(*first_offset);
            w.u64(*last_offset);
        }
        Response::Fetch {
            high_watermark,
            next_offset,
            batches,
        } => {
            w.u64(*high_watermark);
            w.u64(*next_offset);
            w.bytes(batches);
        }
        Response::JoinGroup {
            member,
            partitions,
            session_timeout_ms,
        } => {
            w.u64(*member);
            w.u32(*partitions);
            w.u32(*session_timeout_ms);
        }
        Response::LeaveGroup | Response::Heartbeat | Response::Ack | Response::Nack => {}
        Response::InitProducer { producer_id, epoch } => {
            w.i64(*producer_id);
            w.u16(*epoch as u16);
        }
        Response::Consume { partitions } => {
            // Room for all of it at once: an answer carries up to megabytes of batches, and
            // growing the frame piece by piece would copy them again and again.
            let body: usize = partitions
                .iter()
                .map(|p| 12 + 12 * p.deliveries.len() + p.batches.len())
                .sum();
            w.reserve(4 + body);
            w.u32(partitions.len() as u32);
            for p in partitions {
                w.u32(p.partition);
                w.u32(p.deliveries.len() as u32);
                for d in &p.deliveries {
                    w.u64(d.offset);
                    w.u32(d.delivery_count);
                }
                w.bytes(p.batches);
            }
        }
    }
    end_frame(out, at);
}

/// Appends an error response frame.
pub fn encode_error(correlation_id: u32, code: ErrorCode, message: &str, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    let mut w = Writer::new(out);
    w.u32(correlation_id);
    w.u16(code as u16);
    w.string(message);
    end_frame(out, at);
}

/// Reads the correlation id of a response frame (size prefix included), to find which request
/// it answers before decoding it with [`decode_response`].
pub fn response_correlation_id(frame: &[u8]) -> Result<u32, DecodeError> {
    let mut r = Reader::new(frame);
    r.u32("size")?;
    r.u32("correlation id")
}

/// Decodes a response frame (size prefix included) to a request of `api`.
pub fn decode_response(
    frame: &[u8],
    api: ApiKey,
) -> Result<(u32, Result<Response<'_>, ErrorReply>), DecodeError> {
    let mut r = Reader::new(frame);
    let size = r.u32("size")? as usize;
    if size != r.remaining() || size < RESPONSE_HEADER_BYTES {
        return Err(DecodeError::Malformed("size"));
    }
    let correlation_id = r.u32("correlation id")?;
    let code = r.u16("error code")?;
    if code != ErrorCode::None as u16 {
        let message = r.string("error message")?;
        r.finish()?;
        let code = ErrorCode::from_u16(code);
        return Ok((correlation_id, Err(ErrorReply { code, message })));
    }
    let response = match api {
        ApiKey::Handshake => {
            let server = r.string("server name")?;
            let max_frame_bytes = r.u32("max frame bytes")?;
            let max_batch_bytes = r.u32("max batch bytes")?;
            let n = r.count(6, "api count")?;
            let mut apis = Vec::with_capacity(n);
            for _ in 0..n {
                apis.push(ApiVersions {
                    api: r.u16("api")?,
                    min: r.u16("min version")?,
                    max: r.u16("max version")?,
                });
            }
            Response::Handshake {
                server,
                max_frame_bytes,
                max_batch_bytes,
                apis,
            }
        }
        ApiKey::CreateTopic => Response::CreateTopic,
        ApiKey::DeleteTopic => Response::DeleteTopic,
        ApiKey::ListTopics => {
            let n = r.count(6, "topic count")?;
            let mut topics = Vec::with_capacity(n);
            for _ in 0..n {
                topics.push(TopicInfo {
                    name: r.string("topic")?,
                    partitions: r.u32("partitions")?,
                });
            }
            Response::ListTopics(topics)
        }
        ApiKey::Metadata => Response::Metadata {
            partitions: r.u32("partitions")?,
        },
        ApiKey::Produce => Response::Produce {
            partition: r.u32("partition")?,
            first_offset: r.u64("first offset")?,
            last_offset: r.u64("last offset")?,
        },
        ApiKey::Fetch => Response::Fetch {
            high_watermark: r.u64("high watermark")?,
            next_offset: r.u64("next offset")?,
            batches: r.bytes("batches")?,
        },
        ApiKey::JoinGroup => Response::JoinGroup {
            member: r.u64("member")?,
            partitions: r.u32("partitions")?,
            session_timeout_ms: r.u32("session timeout")?,
        },
        ApiKey::LeaveGroup => Response::LeaveGroup,
        ApiKey::Heartbeat => Response::Heartbeat,
        ApiKey::Consume => {
            // partition + delivery count + batch length: the least a partition takes.
            let n = r.count(12, "partition count")?;
            let mut partitions = Vec::with_capacity(n);
            for _ in 0..n {
                let partition = r.u32("partition")?;
                let m = r.count(12, "delivery count")?;
                let mut deliveries = Vec::with_capacity(m);
                for _ in 0..m {
                    deliveries.push(DeliveryInfo {
                        offset: r.u64("offset")?,
                        delivery_count: r.u32("delivery count")?,
                    });
                }
                partitions.push(ConsumedPartition {
                    partition,
                    deliveries,
                    batches: r.bytes("batches")?,
                });
            }
            Response::Consume { partitions }
        }
        ApiKey::Ack => Response::Ack,
        ApiKey::Nack => Response::Nack,
        ApiKey::InitProducer => Response::InitProducer {
            producer_id: r.i64("producer id")?,
            epoch: r.u16("epoch")? as i16,
        },
    };
    r.finish()?;
    Ok((correlation_id, Ok(response)))
}
