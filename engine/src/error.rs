//! Engine errors, one enum per layer, so that a signature says what can fail: opening the
//! engine ([`OpenError`]), topic administration ([`AdminError`]), appends and reads
//! ([`DataError`]), consumer groups ([`GroupError`]). None is `#[non_exhaustive]`: the server
//! maps every variant to a wire code, and a new one must not fall through to a default there.
//! Every error that comes from the OS keeps the `io::Error` and the path ([`IoFailure`]).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::BatchError;

/// An OS error, with what was done and where.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct IoFailure {
    /// What was being done ("open segment", "sync directory", ...).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: Arc<io::Error>,
}

impl IoFailure {
    /// `source`, met doing `op` on `path`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// Errors of opening the engine: the data directory, the backend, recovery as a whole. (A
/// partition, topic or group that cannot be recovered is held offline instead: the engine
/// opens, and requests for it answer with why.)
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// A filesystem or disk operation failed.
    #[error(transparent)]
    Io(IoFailure),
    /// No space left on the device.
    #[error("no space left on device for {}", path.display())]
    NoSpace {
        /// The file or directory being written.
        path: PathBuf,
    },
    /// io_uring could not be set up; the message says the likely cause and the fix.
    #[error("io_uring is unavailable: {advice} ({source}); or select the portable backend (IoMode::Portable), which is slower")]
    UringUnavailable {
        /// Likely cause and fix.
        advice: String,
        /// The OS error from io_uring_setup.
        #[source]
        source: Arc<io::Error>,
    },
    /// The data directory is on a filesystem without O_DIRECT (some FUSE mounts).
    #[error("data directory {} does not support O_DIRECT: use a directory on ext4 or xfs ({source})", path.display())]
    DirectIoUnsupported {
        /// The data directory.
        path: PathBuf,
        /// The open error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The data directory is on a filesystem that keeps data in memory only (tmpfs, ramfs):
    /// nothing acknowledged there would survive a reboot.
    #[error("data directory {} is on {fs}, which keeps data in memory only: nothing stored there survives a reboot; use a directory on ext4 or xfs", path.display())]
    VolatileFilesystem {
        /// The data directory.
        path: PathBuf,
        /// The filesystem type.
        fs: &'static str,
    },
    /// Another process holds the data directory.
    #[error("data directory {} is locked by another process (lock file {})", dir.display(), lock.display())]
    DataDirLocked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The offset tables have no free slot to move a group's partition into (the shard count
    /// changed and the new owner's table is full).
    #[error("offset table {} is full ({slots} slots); raise group_slots", path.display())]
    OffsetTableFull {
        /// The table file.
        path: PathBuf,
        /// Its slots.
        slots: usize,
    },
    /// Opening needed a log operation that failed: filling the offsets a repair cut out, or
    /// reading where a partition ends to check the groups against it.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Errors of topic administration: creating, deleting, looking topics up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// A filesystem or disk operation failed.
    #[error(transparent)]
    Io(IoFailure),
    /// No space left on the device.
    #[error("no space left on device for {}", path.display())]
    NoSpace {
        /// The file or directory being written.
        path: PathBuf,
    },
    /// A topic name that cannot be used.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A partition count that cannot be used.
    #[error("a topic has 1 to {max} partitions, not {asked}")]
    InvalidPartitionCount {
        /// The count asked for.
        asked: u32,
        /// The most allowed.
        max: u32,
    },
    /// A topic with this name exists already.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No topic with this name.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic's metadata is damaged: the whole topic is held offline.
    #[error("topic {topic:?} is offline: {cause}")]
    TopicOffline {
        /// Topic name.
        topic: String,
        /// Why.
        cause: Arc<DataError>,
    },
    /// A partition of the new topic could not be opened.
    #[error(transparent)]
    Partition(DataError),
    /// The file recording which producer ids were handed out is damaged: no id is handed out
    /// (one could be handed out twice) until it is repaired (`docs/OPERATIONS.md`).
    #[error("damaged producer id file {}: {detail}", path.display())]
    DamagedProducerIds {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A group's committed offsets file is damaged: that group's offsets are neither read nor
    /// replaced until the file is removed (the group then starts where its clients say).
    #[error("damaged committed offsets file {}: {detail}", path.display())]
    DamagedCommittedOffsets {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// More than a limit allows.
    #[error("at most {max} {what}")]
    TooMany {
        /// What is limited.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Errors of appends and reads.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataError {
    /// A filesystem or disk operation failed.
    #[error(transparent)]
    Io(IoFailure),
    /// No space left to start a new segment; nothing of this append was written.
    #[error("no space left on device for {}", path.display())]
    NoSpace {
        /// The segment being prepared.
        path: PathBuf,
    },
    /// No topic with this name.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic exists but has no such partition.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// The topic was deleted while this request waited.
    #[error("topic {0:?} was deleted")]
    TopicDeleted(String),
    /// The batch is malformed.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch exceeds the configured maximum.
    #[error("batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge {
        /// Batch size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A read asked for an offset the log does not have.
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// First offset kept.
        start: u64,
        /// Next offset to be written (the high watermark).
        end: u64,
    },
    /// A write or sync failed earlier; the partition takes no more writes until reopened
    /// (after an fsync error the file's contents are unknown, so retrying cannot be trusted).
    #[error("partition {topic}/{partition} stopped taking writes after a failed write or sync of {}: {source}", path.display())]
    Poisoned {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// Segment whose write or sync failed.
        path: PathBuf,
        /// The OS error of that write or sync.
        #[source]
        source: Arc<io::Error>,
    },
    /// Something the engine's own code must guarantee did not hold (a bug), caught before
    /// anything was written: the partition takes no more writes.
    #[error("partition {topic}/{partition}: broken invariant: {what}")]
    BrokenInvariant {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// Which rule, with the figures.
        what: String,
    },
    /// A segment holds an invalid batch followed by data that was durable later: not a torn
    /// tail. The partition refuses to open unless repair is asked for.
    #[error("corrupt segment {} at byte {position}: {detail}", path.display())]
    Corruption {
        /// Segment file.
        path: PathBuf,
        /// Byte position of the first invalid data.
        position: u64,
        /// What was found.
        detail: String,
    },
    /// A topic's metadata file fails its checksum or does not parse.
    #[error("damaged metadata file {}: {detail}", path.display())]
    DamagedMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The partition could not be recovered at start (a damaged segment, say) and is held
    /// offline; the rest of the server runs. `cause` names the file and byte.
    #[error("partition {topic}/{partition} is offline: {cause}")]
    PartitionOffline {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// Why it could not be opened.
        cause: Arc<DataError>,
    },
    /// The topic's metadata is damaged: the whole topic is held offline.
    #[error("topic {topic:?} is offline: {cause}")]
    TopicOffline {
        /// Topic name.
        topic: String,
        /// Why.
        cause: Arc<DataError>,
    },
    /// An idempotent producer's batch does not follow its last one on this partition (a batch
    /// was lost between them, or the producer restarted its sequences without a new epoch).
    /// Nothing of it was written.
    #[error("producer {producer_id}: batch starts at sequence {got}, expected {expected}")]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// The sequence the batch had to start at.
        expected: i32,
        /// The sequence it starts at.
        got: i32,
    },
    /// An idempotent producer's batch carries an epoch older than one the partition has seen
    /// from it: a newer instance of the producer took over. Nothing of it was written.
    #[error("producer {producer_id} is fenced: epoch {epoch} is older than {current}")]
    ProducerFenced {
        /// Producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The producer's current epoch.
        current: i16,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Errors of consumer-group requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// A filesystem or disk operation failed (creating a group writes files).
    #[error(transparent)]
    Io(IoFailure),
    /// No space left on the device.
    #[error("no space left on device for {}", path.display())]
    NoSpace {
        /// The file or directory being written.
        path: PathBuf,
    },
    /// A consumer-group name that cannot be used.
    #[error("invalid group name {name:?}: {reason}")]
    InvalidGroupName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A topic name that cannot be used.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The member is not in the group: it never joined, it left, or its session ended.
    #[error("member {member} is not in group {group:?} (its session ended); join again")]
    UnknownMember {
        /// Group name.
        group: String,
        /// The member id given.
        member: u64,
    },
    /// The group's metadata is damaged: the group is held offline.
    #[error("group {group:?} on {topic} is offline: {cause}")]
    GroupOffline {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Why.
        cause: Arc<GroupError>,
    },
    /// A group's metadata file fails its checksum, does not parse, or names slots that do
    /// not exist.
    #[error("damaged metadata file {}: {detail}", path.display())]
    DamagedMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Every slot of an offset table is taken: no more (group, partition) pairs fit.
    #[error("offset table {} is full ({slots} slots); raise group_slots", path.display())]
    OffsetTableFull {
        /// The table file.
        path: PathBuf,
        /// Its slots.
        slots: usize,
    },
    /// A sync of an offset table failed earlier: acknowledgements cannot be made durable
    /// until the server restarts (after an fsync error the file's contents are unknown).
    #[error("offset table {} stopped taking durable acks after a failed sync: {source}", path.display())]
    OffsetTablePoisoned {
        /// The table file.
        path: PathBuf,
        /// The OS error of that sync.
        #[source]
        source: Arc<io::Error>,
    },
    /// The group was created for another partition count than its topic has now.
    #[error("group {group:?} covers {covered} partitions but topic {topic:?} has {partitions}")]
    PartitionsChanged {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Partitions the group covers.
        covered: u32,
        /// Partitions the topic has.
        partitions: u32,
    },
    /// The offset table holding the partition's slot could not be opened for its syncs when
    /// the engine started (the log says why): its durable acks fail until a restart.
    #[error("offset table {table} could not be opened for its syncs at start (see the log); its durable acks fail until restart")]
    OffsetTableUnavailable {
        /// The table's number.
        table: usize,
    },
    /// The group's topic, or a log operation on it (finding where a new group starts, reading
    /// messages for a consume).
    #[error(transparent)]
    Data(DataError),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// A request could not be queued: the engine is shutting down.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShuttingDown;

impl From<ShuttingDown> for DataError {
    fn from(_: ShuttingDown) -> Self {
        Self::ShuttingDown
    }
}

impl From<DataError> for GroupError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::ShuttingDown => Self::ShuttingDown,
            e => Self::Data(e),
        }
    }
}

impl From<ShuttingDown> for GroupError {
    fn from(_: ShuttingDown) -> Self {
        Self::ShuttingDown
    }
}

/// A partition's error met by topic administration (opening a new topic's partitions): the
/// disk's own errors keep their names, the rest is the partition's.
impl From<DataError> for AdminError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Io(f) => Self::Io(f),
            DataError::NoSpace { path } => Self::NoSpace { path },
            DataError::ShuttingDown => Self::ShuttingDown,
            e => Self::Partition(e),
        }
    }
}

impl From<ShuttingDown> for AdminError {
    fn from(_: ShuttingDown) -> Self {
        Self::ShuttingDown
    }
}

impl From<ShuttingDown> for OpenError {
    fn from(_: ShuttingDown) -> Self {
        Self::Data(DataError::ShuttingDown)
    }
}

/// `io()` (an OS error with what and where; ENOSPC becomes `NoSpace`) for each layer's error.
macro_rules! io_constructors {
    ($($layer:ident),*) => {$(
        impl $layer {
            /// Wraps an OS error with what was done and where; a full disk is `NoSpace`.
            pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
                Self::from(IoFailure::new(op, path, source))
            }
        }

        impl From<IoFailure> for $layer {
            fn from(f: IoFailure) -> Self {
                if f.source.raw_os_error() == Some(libc::ENOSPC) {
                    return Self::NoSpace { path: f.path };
                }
                Self::Io(f)
            }
        }
    )*};
}
io_constructors!(OpenError, AdminError, DataError, GroupError);

impl OpenError {
    /// Explains why io_uring_setup failed.
    pub fn uring_unavailable(source: io::Error) -> Self {
        let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .ok()
            .map(|s| s.trim().to_string());
        let advice = match source.raw_os_error() {
            Some(libc::EPERM) if disabled.as_deref().is_some_and(|d| d != "0") => format!(
                "the sysctl kernel.io_uring_disabled is {}; set it to 0 (sysctl -w kernel.io_uring_disabled=0)",
                disabled.unwrap_or_default()
            ),
            Some(libc::EPERM) => "the process may not create rings: a seccomp filter (containers block io_uring by default; allow io_uring_setup/enter/register) or kernel.io_uring_disabled=2".to_string(),
            Some(libc::ENOMEM) => "not enough locked memory: raise RLIMIT_MEMLOCK (ulimit -l, or LimitMEMLOCK= in the systemd unit)".to_string(),
            Some(libc::ENOSYS) => "the kernel has no io_uring (Linux 5.6 or later is needed)".to_string(),
            _ => "io_uring_setup failed".to_string(),
        };
        Self::UringUnavailable {
            advice,
            source: Arc::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_failures_come_with_the_likely_cause_and_fix() {
        let advice =
            |errno| OpenError::uring_unavailable(io::Error::from_raw_os_error(errno)).to_string();
        assert!(
            advice(libc::ENOMEM).contains("RLIMIT_MEMLOCK"),
            "{}",
            advice(libc::ENOMEM)
        );
        assert!(advice(libc::ENOMEM).contains("LimitMEMLOCK"));
        let eperm = advice(libc::EPERM);
        assert!(
            eperm.contains("seccomp") || eperm.contains("io_uring_disabled"),
            "{eperm}"
        );
        assert!(advice(libc::ENOSYS).contains("5.6"));
    }

    #[test]
    fn a_full_disk_is_named_as_such() {
        let e = DataError::io(
            "write",
            "/data/x",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, DataError::NoSpace { .. }));
        let e = GroupError::io("write", "/data/x", io::Error::from_raw_os_error(libc::EIO));
        assert!(e.to_string().contains("/data/x"), "the path is kept: {e}");
    }

    #[test]
    fn a_partition_error_keeps_its_meaning_in_the_layer_above() {
        let full = DataError::NoSpace {
            path: "/data/t/0/next.prep".into(),
        };
        assert!(matches!(
            AdminError::from(full.clone()),
            AdminError::NoSpace { .. }
        ));
        assert!(matches!(
            GroupError::from(full),
            GroupError::Data(DataError::NoSpace { .. })
        ));
        assert!(matches!(
            GroupError::from(DataError::ShuttingDown),
            GroupError::ShuttingDown
        ));
        assert!(matches!(
            AdminError::from(DataError::ShuttingDown),
            AdminError::ShuttingDown
        ));
        let corrupt = DataError::Corruption {
            path: "/data/t/0/0.seg".into(),
            position: 4096,
            detail: "bad crc".into(),
        };
        assert!(matches!(
            AdminError::from(corrupt),
            AdminError::Partition(DataError::Corruption { position: 4096, .. })
        ));
    }
}
