//! Engine configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::aligned::BLOCK_BYTES;
use crate::error::OpenError;
use crate::io::{MappedRecord, MetaFs, SystemFs};
use crate::trailer::PENDING_BLOCKS_MAX;

/// Most flushes a partition may have in flight at once.
pub const FLUSHES_IN_FLIGHT_MAX: usize = 4;
#[cfg(feature = "testing")]
use crate::testing::TestDisk;

/// How the shards reach the disk.
#[derive(Debug, Clone, Default)]
pub enum IoMode {
    /// io_uring with O_DIRECT: production.
    #[default]
    Uring,
    /// `pwrite` + `fdatasync` on one I/O thread per shard: slower, for hosts where io_uring is
    /// blocked (containers with the default seccomp profile, `kernel.io_uring_disabled`).
    Portable,
}

/// How a flush is made durable on the io_uring backend (the portable backend always writes,
/// then calls `fdatasync`). See `filesystem.rs` for which filesystems are trusted with what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FlushSync {
    /// Chosen when the engine opens, from the data directory's filesystem: `DsyncWrite` on ext4
    /// and xfs, `Fdatasync` everywhere else.
    #[default]
    Auto,
    /// One write with `RWF_DSYNC`: the kernel completes it once it is durable, with no separate
    /// sync. Refused on filesystems where that is not known to hold.
    DsyncWrite,
    /// A write, then an `fdatasync` linked after it; the flush is acknowledged on the sync's
    /// completion.
    Fdatasync,
}

/// What recovery does on finding corruption (invalid data followed by durable data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open, naming the file and byte position.
    #[default]
    Strict,
    /// Truncate the log at the first invalid batch, dropping everything after it. Loses
    /// acknowledged data: only on an operator's explicit request.
    Repair,
}

/// Engine settings. [`EngineConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory holding all topics; created if missing. Must support O_DIRECT.
    pub data_dir: PathBuf,
    /// Shard threads; default one per available core.
    pub shards: usize,
    /// Pin each shard thread to a core.
    pub pin_shards: bool,
    /// Size of each segment file, preallocated (default 256 MiB).
    pub segment_bytes: u64,
    /// Largest batch accepted (default 1 MiB).
    pub max_batch_bytes: usize,
    /// Largest single flush (default 4 MiB); appends beyond it wait for the next flush.
    pub max_flush_bytes: usize,
    /// Recently flushed bytes kept in memory per partition to serve tail reads (default 4 MiB).
    pub tail_cache_bytes: usize,
    /// Bytes a partition may hold gathered but not yet flushed before its shard stops taking
    /// new requests (backpressure; default 16 MiB).
    pub max_pending_bytes: usize,
    /// Requests queued per shard before senders block (default 4096; senders arriving at the
    /// same moment may each add one more).
    pub queue_depth: usize,
    /// Overwrite prepared segments with zeros in the background before use, so each
    /// `fdatasync` flushes data only instead of also committing extent changes (default true;
    /// costs one extra sequential write of every segment).
    pub zero_segments: bool,
    /// Bytes of log each partition keeps at least (default `None`: keep everything). Once a
    /// roll leaves more than this in older segments, the oldest whole segments beyond it are
    /// dropped, and a dropped file is reused as the next segment (see `retention.rs`).
    pub retention_bytes: Option<u64>,
    /// Longest a partition's next flush waits for the appenders its last flush answered to
    /// come back, so that one sync carries them all (`linger.rs`; default 200 µs; zero: never
    /// wait). A flush waits only when fewer appends gathered during the last one than it
    /// answered, and never more than half the last flush's own write+sync time.
    pub commit_linger: Duration,
    /// Flushes a partition may have in flight at once (default 2, at most
    /// [`FLUSHES_IN_FLIGHT_MAX`]). With more than one, appends that arrive while a flush
    /// syncs go out in the next one at once instead of waiting for that sync; flushes are
    /// still acknowledged in order, each once it and every earlier one is durable. A crash
    /// can then tear all the flushes in flight, none of them acknowledged; recovery tells that
    /// from corruption by what each flush's trailer says was in flight (`docs/FORMAT.md`).
    pub flushes_in_flight: usize,
    /// How long a partition remembers an idempotent producer it has not heard from (by the
    /// server's clock; Kafka's `producer.id.expiration.ms`, default one day; `None`: until
    /// [`crate::producers::PRODUCERS_MAX`] newer ones push it out). A batch the producer
    /// sends again after that is stored again.
    pub producer_expiry: Option<Duration>,
    /// Disk backend.
    pub io: IoMode,
    /// How a flush is made durable (default `Auto`; [`crate::Engine::config`] gives what
    /// `Auto` resolved to).
    pub flush_sync: FlushSync,
    /// What to do about corruption found when opening.
    pub recovery: RecoveryMode,
    /// Whether opening reads every sealed segment whole, checking each flush, instead of the
    /// summary saved beside it when it was sealed (`summary.rs`). Off by default: start-up then
    /// reads only each partition's last segment, and damage to a sealed segment is reported
    /// when it is read. [`RecoveryMode::Repair`] always reads them all.
    pub check_sealed_segments: bool,
    /// Slots of each shard's offset table: how many (group, partition) pairs it can hold.
    pub group_slots: usize,
    /// A test backend over io_uring, set by `testing::open` alone.
    #[cfg(feature = "testing")]
    pub(crate) test_disk: Option<TestDisk>,
}

impl EngineConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let shards = core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1));
        Self {
            data_dir: data_dir.into(),
            shards,
            pin_shards: true,
            segment_bytes: 256 << 20,
            max_batch_bytes: 1 << 20,
            max_flush_bytes: 4 << 20,
            tail_cache_bytes: 4 << 20,
            max_pending_bytes: 16 << 20,
            queue_depth: 4096,
            zero_segments: true,
            retention_bytes: None,
            commit_linger: Duration::from_micros(200),
            flushes_in_flight: 2,
            producer_expiry: Some(Duration::from_secs(86_400)),
            io: IoMode::Uring,
            flush_sync: FlushSync::Auto,
            recovery: RecoveryMode::Strict,
            check_sealed_segments: false,
            group_slots: 16_384,
            #[cfg(feature = "testing")]
            test_disk: None,
        }
    }

    /// The filesystem of the data directory's metadata files and directories: the system's,
    /// or, under the crash simulator, its plan's record of them.
    pub(crate) fn meta_fs(&self) -> Arc<dyn MetaFs> {
        #[cfg(feature = "testing")]
        if let Some(plan) = self.test_disk.as_ref().and_then(TestDisk::crash_plan) {
            return Arc::clone(plan) as Arc<dyn MetaFs>;
        }
        Arc::new(SystemFs)
    }

    /// The crash simulator's plan, which also records the offset tables' syncs at open, when
    /// the engine runs under one; never for keeld.
    pub(crate) fn crash_plan(&self) -> Option<Arc<MappedRecord>> {
        #[cfg(feature = "testing")]
        if let Some(plan) = self.test_disk.as_ref().and_then(TestDisk::crash_plan) {
            return Some(Arc::clone(plan));
        }
        None
    }

    /// Checks the limits against each other.
    pub fn validate(&self) -> Result<(), OpenError> {
        let block = BLOCK_BYTES as u64;
        let fail = |msg: String| Err(OpenError::InvalidConfig(msg));
        if self.shards == 0 || self.shards > 1024 {
            return fail(format!("shards must be 1..=1024, not {}", self.shards));
        }
        if !self.segment_bytes.is_multiple_of(block) || self.segment_bytes < 16 * block {
            return fail(format!(
                "segment_bytes must be a multiple of {block} and at least {}, not {}",
                16 * block,
                self.segment_bytes
            ));
        }
        if !self.max_flush_bytes.is_multiple_of(BLOCK_BYTES)
            || self.max_flush_bytes < 2 * BLOCK_BYTES
        {
            return fail(format!(
                "max_flush_bytes must be a multiple of {BLOCK_BYTES} and at least two blocks, not {}",
                self.max_flush_bytes
            ));
        }
        // A batch must fit in one flush with its trailer, and in one segment.
        let room = (self.max_flush_bytes - BLOCK_BYTES).min((self.segment_bytes / 2) as usize);
        if self.max_batch_bytes == 0 || self.max_batch_bytes > room {
            return fail(format!(
                "max_batch_bytes must be 1..={room} (a flush less one block, at most half a segment), not {}",
                self.max_batch_bytes
            ));
        }
        if self.commit_linger > Duration::from_secs(1) {
            return fail(format!(
                "commit_linger must be at most 1 s, not {:?}",
                self.commit_linger
            ));
        }
        if self.flushes_in_flight == 0 || self.flushes_in_flight > FLUSHES_IN_FLIGHT_MAX {
            return fail(format!(
                "flushes_in_flight must be 1..={FLUSHES_IN_FLIGHT_MAX}, not {}",
                self.flushes_in_flight
            ));
        }
        // A flush's trailer says in 16 bits how many blocks were in flight before it.
        let behind = (self.flushes_in_flight as u64 - 1) * (self.max_flush_bytes as u64 / block);
        if behind > PENDING_BLOCKS_MAX {
            return fail(format!(
                "flushes_in_flight less one, times max_flush_bytes, must be at most {} bytes",
                PENDING_BLOCKS_MAX * block
            ));
        }
        if self.retention_bytes == Some(0) {
            return fail("retention_bytes must be positive (or unset, to keep everything)".into());
        }
        if self.group_slots == 0 {
            return fail("group_slots must be positive".into());
        }
        if self.max_pending_bytes < self.max_flush_bytes || self.queue_depth == 0 {
            return fail(
                "max_pending_bytes must be at least max_flush_bytes, queue_depth positive".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(cfg: &EngineConfig) -> String {
        match cfg.validate() {
            Err(OpenError::InvalidConfig(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn flushes_in_flight_must_be_one_to_four_and_fit_a_trailer() {
        let mut cfg = EngineConfig::new("/nonexistent");
        assert!(cfg.validate().is_ok(), "the defaults");
        for n in [0, FLUSHES_IN_FLIGHT_MAX + 1] {
            cfg.flushes_in_flight = n;
            assert!(refusal(&cfg).contains("flushes_in_flight must be 1..=4"));
        }
        cfg.flushes_in_flight = FLUSHES_IN_FLIGHT_MAX;
        assert!(cfg.validate().is_ok(), "4 flushes of 4 MiB");
        // Three flushes of 128 MiB behind the newest: more blocks than its trailer can say.
        cfg.max_flush_bytes = 128 << 20;
        cfg.max_pending_bytes = cfg.max_flush_bytes;
        cfg.segment_bytes = 1 << 30;
        assert!(refusal(&cfg).contains("times max_flush_bytes"));
        cfg.flushes_in_flight = 1;
        assert!(
            cfg.validate().is_ok(),
            "one flush at a time has nothing behind it"
        );
    }
}
