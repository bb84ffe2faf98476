//! Answers on their way to a connection's writer, and how engine errors become error codes.

use keel_engine::{AdminError, BatchError, ConsumedPartition, DataError, GroupError, ReadResult};
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
    pub fn engine_error(self, e: &impl WireError) {
        self.error(e.code(), &e.to_string());
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

/// An engine error as the client gets it: its wire code. Every variant of every layer's error
/// is named: a new one does not compile until it is given its code.
pub trait WireError: std::fmt::Display {
    /// The wire code.
    fn code(&self) -> ErrorCode;
}

impl WireError for DataError {
    fn code(&self) -> ErrorCode {
        match self {
            DataError::UnknownTopic(_) | DataError::TopicDeleted(_) => ErrorCode::UnknownTopic,
            DataError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            DataError::InvalidBatch(
                BatchError::Compressed { .. } | BatchError::UndefinedCodec(_),
            ) => ErrorCode::CompressionUnsupported,
            DataError::InvalidBatch(_) => ErrorCode::InvalidBatch,
            DataError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            DataError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            DataError::Poisoned { .. } | DataError::BrokenInvariant { .. } => {
                ErrorCode::PartitionPoisoned
            }
            DataError::NoSpace { .. } => ErrorCode::NoSpace,
            DataError::Corruption { .. } | DataError::DamagedMetadata { .. } => {
                ErrorCode::Corruption
            }
            DataError::PartitionOffline { .. } | DataError::TopicOffline { .. } => {
                ErrorCode::Offline
            }
            DataError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            DataError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            DataError::ShuttingDown => ErrorCode::ShuttingDown,
            // A disk operation failed while serving the request; the message names it and the
            // file.
            DataError::Io(_) => ErrorCode::Internal,
        }
    }
}

impl WireError for AdminError {
    fn code(&self) -> ErrorCode {
        match self {
            AdminError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
            AdminError::InvalidPartitionCount { .. } => ErrorCode::InvalidArgument,
            AdminError::TopicExists(_) => ErrorCode::TopicExists,
            AdminError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            AdminError::TopicOffline { .. } => ErrorCode::Offline,
            AdminError::NoSpace { .. } => ErrorCode::NoSpace,
            AdminError::ShuttingDown => ErrorCode::ShuttingDown,
            AdminError::Partition(e) => e.code(),
            AdminError::DamagedProducerIds { .. } | AdminError::DamagedCommittedOffsets { .. } => {
                ErrorCode::Corruption
            }
            AdminError::TooMany { .. } => ErrorCode::InvalidArgument,
            AdminError::Io(_) => ErrorCode::Internal,
        }
    }
}

impl WireError for GroupError {
    fn code(&self) -> ErrorCode {
        match self {
            GroupError::InvalidGroupName { .. } => ErrorCode::InvalidArgument,
            GroupError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
            GroupError::UnknownMember { .. } => ErrorCode::UnknownMember,
            GroupError::GroupOffline { .. } => ErrorCode::Offline,
            GroupError::DamagedMetadata { .. } => ErrorCode::Corruption,
            // No slot left for a new group's partitions: space, of another kind.
            GroupError::OffsetTableFull { .. } | GroupError::NoSpace { .. } => ErrorCode::NoSpace,
            GroupError::OffsetTablePoisoned { .. } | GroupError::OffsetTableUnavailable { .. } => {
                ErrorCode::PartitionPoisoned
            }
            // The topic was recreated with another partition count: the request cannot be
            // served as asked.
            GroupError::PartitionsChanged { .. } => ErrorCode::InvalidArgument,
            GroupError::ShuttingDown => ErrorCode::ShuttingDown,
            GroupError::Data(e) => e.code(),
            GroupError::Io(_) => ErrorCode::Internal,
        }
    }
}
