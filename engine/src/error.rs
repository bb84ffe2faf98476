//! Engine errors. Every variant that comes from the OS keeps the `io::Error` and the path.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::BatchError;

/// Errors of the storage engine. Not `#[non_exhaustive]`: the server maps every variant to a
/// wire code, and a new variant must not fall through to a default there.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// A filesystem or disk operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open segment", "sync directory", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
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
    /// A topic name that cannot be used.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A consumer-group name that cannot be used.
    #[error("invalid group name {name:?}: {reason}")]
    InvalidGroupName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
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
    /// A topic with this name exists already.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
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
    /// No space left to start a new segment; nothing of this append was written.
    #[error("no space left on device for {}", path.display())]
    NoSpace {
        /// The segment being prepared.
        path: PathBuf,
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
    /// A small metadata file (a topic's `meta`, a group's `.meta`) fails its checksum or does
    /// not parse.
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
        cause: Arc<EngineError>,
    },
    /// The topic's metadata is damaged: the whole topic is held offline.
    #[error("topic {topic:?} is offline: {cause}")]
    TopicOffline {
        /// Topic name.
        topic: String,
        /// Why.
        cause: Arc<EngineError>,
    },
    /// The group's metadata is damaged: the group is held offline.
    #[error("group {group:?} on {topic} is offline: {cause}")]
    GroupOffline {
        /// Group name.
        group: String,
        /// Topic.
        topic: String,
        /// Why.
        cause: Arc<EngineError>,
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
    /// The member is not in the group: it never joined, it left, or its session ended.
    #[error("member {member} is not in group {group:?} (its session ended); join again")]
    UnknownMember {
        /// Group name.
        group: String,
        /// The member id given.
        member: u64,
    },
    /// The topic was deleted while this request waited.
    #[error("topic {0:?} was deleted")]
    TopicDeleted(String),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl EngineError {
    /// Wraps an OS error with what was done and where.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Self::NoSpace { path };
        }
        Self::Io {
            op,
            path,
            source: Arc::new(source),
        }
    }

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

/// Result of engine operations.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_failures_come_with_the_likely_cause_and_fix() {
        let advice =
            |errno| EngineError::uring_unavailable(io::Error::from_raw_os_error(errno)).to_string();
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
        let e = EngineError::io(
            "write",
            "/data/x",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, EngineError::NoSpace { .. }));
        let e = EngineError::io("write", "/data/x", io::Error::from_raw_os_error(libc::EIO));
        assert!(e.to_string().contains("/data/x"), "the path is kept: {e}");
    }
}
