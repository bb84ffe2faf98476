//! Answers on their way to a connection's writer, and how engine errors become error codes.

use keel_engine::{BatchError, ConsumedPartition, EngineError, ReadResult};
use keel_protocol::{encode_error, encode_response, ErrorCode, Response};

use crate::answers::AnswerTx;
use crate::budget::BudgetHold;

/// An answer as data: small answers are encoded where they are made; the big ones (fetched and
/// consumed batches) go as the engine gave them and are encoded by the connection's writer,
/// straight into what it sends, so the shard that made them spends nothing on copying them.
pub enum Body {
    /// A whole frame, size prefix included.
    Frame(Vec<u8>),
    /// A fetch's answer.
    Fetched(u32, ReadResult),
    /// A consume's answer.
    Consumed(u32, Vec<ConsumedPartition>),
}

/// One answer, holding its connection's budget until it is written (or the connection is
/// gone), so unwritten answers count against the connection's limit too.
pub struct Outgoing {
    body: Body,
    _hold: BudgetHold,
}

impl Outgoing {
    /// An answer holding `hold` until written.
    pub fn new(body: Body, hold: BudgetHold) -> Self {
        Self { body, _hold: hold }
    }

    /// Appends the answer's frame to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match &self.body {
            Body::Frame(frame) => out.extend_from_slice(frame),
            Body::Fetched(correlation_id, res) => {
                let response = Response::Fetch {
                    high_watermark: res.high_watermark,
                    next_offset: res.next_offset,
                    batches: &res.data,
                };
                encode_response(*correlation_id, &response, out);
            }
            Body::Consumed(correlation_id, parts) => {
                let partitions = parts
                    .iter()
                    .map(|p| keel_protocol::ConsumedPartition {
                        partition: p.partition,
                        deliveries: p
                            .deliveries
                            .iter()
                            .map(|d| keel_protocol::DeliveryInfo {
                                offset: d.offset,
                                delivery_count: d.delivery_count,
                            })
                            .collect(),
                        batches: &p.batches,
                    })
                    .collect();
                encode_response(*correlation_id, &Response::Consume { partitions }, out);
            }
        }
    }
}

/// The way back to the client for one request.
pub struct Reply {
    correlation_id: u32,
    tx: AnswerTx,
    hold: BudgetHold,
}

impl Reply {
    /// A reply to request `correlation_id`, holding `hold` until the answer is written.
    pub fn new(correlation_id: u32, tx: AnswerTx, hold: BudgetHold) -> Self {
        Self {
            correlation_id,
            tx,
            hold,
        }
    }

    /// Sends a successful response.
    pub fn ok(self, response: &Response<'_>) {
        let mut frame = Vec::new();
        encode_response(self.correlation_id, response, &mut frame);
        self.send(frame);
    }

    /// Sends an error response.
    pub fn error(self, code: ErrorCode, message: &str) {
        let mut frame = Vec::new();
        encode_error(self.correlation_id, code, message, &mut frame);
        self.send(frame);
    }

    /// Sends the error response for an engine error.
    pub fn engine_error(self, e: &EngineError) {
        self.error(error_code(e), &e.to_string());
    }

    /// Sends a fetch's answer, to be encoded by the connection's writer.
    pub fn fetched(self, res: ReadResult) {
        let body = Body::Fetched(self.correlation_id, res);
        self.send_body(body);
    }

    /// Sends a consume's answer, to be encoded by the connection's writer.
    pub fn consumed(self, parts: Vec<ConsumedPartition>) {
        let body = Body::Consumed(self.correlation_id, parts);
        self.send_body(body);
    }

    fn send(self, frame: Vec<u8>) {
        self.send_body(Body::Frame(frame));
    }

    fn send_body(self, body: Body) {
        // When the writer is gone (the connection broke) the answer is dropped, and its budget
        // given back.
        self.tx.send(Outgoing {
            body,
            _hold: self.hold,
        });
    }
}

/// The wire code for an engine error. Every variant is named: a new one does not compile until
/// it is given its code.
pub fn error_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::UnknownTopic(_) | EngineError::TopicDeleted(_) => ErrorCode::UnknownTopic,
        EngineError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        EngineError::TopicExists(_) => ErrorCode::TopicExists,
        EngineError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
        EngineError::InvalidBatch(BatchError::Compressed { .. }) => {
            ErrorCode::CompressionUnsupported
        }
        EngineError::InvalidBatch(_) => ErrorCode::InvalidBatch,
        EngineError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
        EngineError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        EngineError::Poisoned { .. } | EngineError::BrokenInvariant { .. } => {
            ErrorCode::PartitionPoisoned
        }
        EngineError::NoSpace { .. } => ErrorCode::NoSpace,
        EngineError::Corruption { .. } => ErrorCode::Corruption,
        EngineError::ShuttingDown => ErrorCode::ShuttingDown,
        EngineError::InvalidConfig(_) | EngineError::InvalidGroupName { .. } => {
            ErrorCode::InvalidArgument
        }
        EngineError::OffsetTablePoisoned { .. } => ErrorCode::PartitionPoisoned,
        // No slot left for a new group's partitions: space, of another kind.
        EngineError::OffsetTableFull { .. } => ErrorCode::NoSpace,
        EngineError::DamagedMetadata { .. } => ErrorCode::Corruption,
        EngineError::UnknownMember { .. } => ErrorCode::UnknownMember,
        EngineError::PartitionOffline { .. }
        | EngineError::TopicOffline { .. }
        | EngineError::GroupOffline { .. } => ErrorCode::Offline,
        // A disk operation failed while serving the request (the message names it and the
        // file), or, for the rest, errors of opening the data directory and of misuse of the
        // engine that no request can cause: the message says which.
        EngineError::Io { .. }
        | EngineError::UringUnavailable { .. }
        | EngineError::DirectIoUnsupported { .. }
        | EngineError::VolatileFilesystem { .. }
        | EngineError::DataDirLocked { .. } => ErrorCode::Internal,
    }
}
