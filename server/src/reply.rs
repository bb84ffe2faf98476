//! Answers on their way to a connection's writer, and how engine errors become error codes.

use keel_engine::{BatchError, EngineError};
use keel_protocol::{encode_error, encode_response, ErrorCode, Response};

use crate::answers::AnswerTx;
use crate::budget::BudgetHold;

/// One encoded response frame, holding its connection's budget until it is written (or the
/// connection is gone), so unwritten answers count against the connection's limit too.
pub struct Outgoing {
    /// The whole frame, size prefix included.
    pub frame: Vec<u8>,
    _hold: BudgetHold,
}

impl Outgoing {
    /// A frame holding `hold` until written.
    pub fn new(frame: Vec<u8>, hold: BudgetHold) -> Self {
        Self { frame, _hold: hold }
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

    fn send(self, frame: Vec<u8>) {
        // When the writer is gone (the connection broke) the answer is dropped, and its budget
        // given back.
        self.tx.send(Outgoing {
            frame,
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
        | EngineError::DataDirLocked { .. }
        | EngineError::OnShardThread(_) => ErrorCode::Internal,
    }
}
