//! Api keys, their versions, and the error codes responses carry.

use crate::frame::DecodeError;

/// The requests of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// Version negotiation and limits.
    Handshake = 0,
    /// Create a topic.
    CreateTopic = 1,
    /// Delete a topic.
    DeleteTopic = 2,
    /// List topics.
    ListTopics = 3,
    /// Partitions of one topic.
    Metadata = 4,
    /// Append a batch, answered once durable.
    Produce = 5,
    /// Read batches from an offset, optionally waiting for new ones.
    Fetch = 6,
    /// Join a consumer group (creating it on first use); answers a member id.
    JoinGroup = 7,
    /// Leave a consumer group: what the member holds is redelivered.
    LeaveGroup = 8,
    /// Keep a member's session alive.
    Heartbeat = 9,
    /// Messages for a member, optionally waiting for some.
    Consume = 10,
    /// Acknowledge delivered messages.
    Ack = 11,
    /// Give delivered messages back for redelivery.
    Nack = 12,
    /// An idempotent producer's id and epoch, or the next epoch of its id.
    InitProducer = 13,
}

impl ApiKey {
    /// Every api, in key order.
    pub const ALL: [ApiKey; 14] = [
        ApiKey::Handshake,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::ListTopics,
        ApiKey::Metadata,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::JoinGroup,
        ApiKey::LeaveGroup,
        ApiKey::Heartbeat,
        ApiKey::Consume,
        ApiKey::Ack,
        ApiKey::Nack,
        ApiKey::InitProducer,
    ];

    /// The api with this key.
    pub fn from_u16(key: u16) -> Result<Self, DecodeError> {
        match Self::ALL.get(usize::from(key)) {
            Some(&api) => Ok(api),
            None => Err(DecodeError::UnknownApi(key)),
        }
    }

    /// Versions this implementation speaks, inclusive.
    pub fn versions(self) -> (u16, u16) {
        (0, 0)
    }
}

/// The outcome a response carries. 0 is success; the rest name what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// The server failed in a way not listed here; the message says how.
    Internal = 1,
    /// The request could not be decoded.
    MalformedRequest = 2,
    /// Unknown api key.
    UnsupportedApi = 3,
    /// Known api, unsupported version.
    UnsupportedVersion = 4,
    /// No such topic.
    UnknownTopic = 5,
    /// The topic has no such partition.
    UnknownPartition = 6,
    /// The topic exists already.
    TopicExists = 7,
    /// The topic name is not allowed.
    InvalidTopicName = 8,
    /// The batch is malformed (length, magic, CRC, records).
    InvalidBatch = 9,
    /// The batch exceeds the maximum batch size.
    BatchTooLarge = 10,
    /// The offset is outside the log.
    OffsetOutOfRange = 11,
    /// A write or sync failed earlier; the partition takes no writes until restarted.
    PartitionPoisoned = 12,
    /// No space left on the device.
    NoSpace = 13,
    /// Stored data failed its checksum.
    Corruption = 14,
    /// The server is shutting down.
    ShuttingDown = 15,
    /// An argument is out of range (a partition count of 0, for one).
    InvalidArgument = 16,
    /// Too many requests or bytes in flight; retry later.
    Busy = 17,
    /// No such member in the group: its session ended (timeout, disconnect, restart). Join
    /// again.
    UnknownMember = 18,
    /// A batch whose attributes name no compression codec (5 to 7; gzip, snappy, lz4 and
    /// zstd are taken).
    CompressionUnsupported = 19,
    /// The partition, topic or group is offline: its files are damaged (the server's log names
    /// the file and byte); the rest of the server runs.
    Offline = 20,
    /// An idempotent producer's batch does not follow its last one on the partition: a batch
    /// between them is missing. Nothing of it was written.
    OutOfOrderSequence = 21,
    /// An idempotent producer's epoch is older than the partition has seen: a newer instance
    /// of the producer took over. Nothing of it was written.
    ProducerFenced = 22,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::None,
        ErrorCode::Internal,
        ErrorCode::MalformedRequest,
        ErrorCode::UnsupportedApi,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::TopicExists,
        ErrorCode::InvalidTopicName,
        ErrorCode::InvalidBatch,
        ErrorCode::BatchTooLarge,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::PartitionPoisoned,
        ErrorCode::NoSpace,
        ErrorCode::Corruption,
        ErrorCode::ShuttingDown,
        ErrorCode::InvalidArgument,
        ErrorCode::Busy,
        ErrorCode::UnknownMember,
        ErrorCode::CompressionUnsupported,
        ErrorCode::Offline,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::ProducerFenced,
    ];

    /// The code with this number; unknown numbers (from a newer peer) read as `Internal`.
    pub fn from_u16(code: u16) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(ErrorCode::Internal)
    }

    /// The code that answers a request that failed to decode.
    pub fn for_decode_error(e: &DecodeError) -> Self {
        match e {
            DecodeError::UnknownApi(_) => ErrorCode::UnsupportedApi,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::MalformedRequest,
        }
    }
}
