//! Keel's errors as Kafka error codes. Every variant is named: a new engine error must be
//! given its Kafka meaning here, not fall into a catch-all.

use kafka_protocol::ResponseError as K;
use keel_engine::{AdminError, BatchError, DataError};

/// The Kafka error code for a failed append, read or lookup.
pub fn data_error(e: &DataError) -> i16 {
    match e {
        DataError::UnknownTopic(_)
        | DataError::UnknownPartition { .. }
        | DataError::TopicDeleted(_) => K::UnknownTopicOrPartition.code(),
        DataError::InvalidBatch(b) => batch_error(b),
        DataError::BatchTooLarge { .. } => K::MessageTooLarge.code(),
        DataError::OffsetOutOfRange { .. } => K::OffsetOutOfRange.code(),
        DataError::OutOfOrderSequence { .. } => K::OutOfOrderSequenceNumber.code(),
        DataError::ProducerFenced { .. } => K::InvalidProducerEpoch.code(),
        // The partition cannot be served now; a retry may find it back (after a restart or
        // a repair), which is what Kafka's storage error tells a client.
        DataError::Io(_)
        | DataError::NoSpace { .. }
        | DataError::Poisoned { .. }
        | DataError::BrokenInvariant { .. }
        | DataError::Corruption { .. }
        | DataError::DamagedMetadata { .. }
        | DataError::PartitionOffline { .. }
        | DataError::TopicOffline { .. } => K::KafkaStorageError.code(),
        DataError::ShuttingDown => K::NotLeaderOrFollower.code(),
    }
}

/// The Kafka error code for a batch the engine refused.
fn batch_error(e: &BatchError) -> i16 {
    match e {
        BatchError::Compressed { .. } | BatchError::UndefinedCodec(_) => {
            K::UnsupportedCompressionType.code()
        }
        BatchError::Decompress(_) => K::CorruptMessage.code(),
        BatchError::Crc { .. } => K::CorruptMessage.code(),
        BatchError::Magic(_) => K::UnsupportedForMessageFormat.code(),
        BatchError::Length { .. } | BatchError::RecordCount { .. } | BatchError::Record { .. } => {
            K::CorruptMessage.code()
        }
        BatchError::Transactional { .. } => K::InvalidRecord.code(),
    }
}

/// The Kafka error code for a failed topic creation or deletion, or producer id.
pub fn admin_error(e: &AdminError) -> i16 {
    match e {
        AdminError::TopicExists(_) => K::TopicAlreadyExists.code(),
        AdminError::UnknownTopic(_) => K::UnknownTopicOrPartition.code(),
        AdminError::InvalidTopicName { .. } => K::InvalidTopicException.code(),
        AdminError::InvalidPartitionCount { .. } => K::InvalidPartitions.code(),
        AdminError::Partition(d) => data_error(d),
        AdminError::Io(_)
        | AdminError::NoSpace { .. }
        | AdminError::TopicOffline { .. }
        | AdminError::DamagedProducerIds { .. }
        | AdminError::DamagedCommittedOffsets { .. } => K::KafkaStorageError.code(),
        AdminError::TooMany { .. } => K::PolicyViolation.code(),
        AdminError::ShuttingDown => K::NotController.code(),
    }
}
