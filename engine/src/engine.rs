//! The engine: starts the shards, routes requests to them, and keeps the topic catalog.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender};
use keel_format::batch::trusted_batches;

use crate::committed::{Committed, CommittedOffset, GroupOffsets};
use crate::completions::{Answer, Kind, Ticket};
use crate::config::{EngineConfig, FlushSync, IoMode, RecoveryMode};
use crate::error::{AdminError, DataError, IoFailure, OpenError, ShuttingDown};
use crate::filesystem::{self, Filesystem};
use crate::group_ops::Groups;
use crate::groups::{GroupHelper, GroupStore};
use crate::histogram::LOG2_BUCKETS;
use crate::inbox::{inbox, InboxSender};
#[cfg(feature = "testing")]
use crate::io::{CrashingDisk, FaultyDisk};
use crate::io::{Disk, MetaFs, PortableDisk, UringDisk, Waker};
use crate::janitor::{Janitor, JanitorTx};
use crate::layout::{self, topic_dir, topics_dir, DataDirLock, LostOffsets, TopicMeta};
use crate::producer_ids::{ProducerIdentity, ProducerIds};
use crate::shard::{Command, GroupCmd, Opening, Shard, ShardLinks, ShardStats};
#[cfg(feature = "testing")]
use crate::testing::TestDisk;
use crate::topic_name::{fnv1a, TopicName};
use crate::BatchBuilder;
use crate::{AppendDone, LogBounds, OffsetRange, ReadDone, ReadResult};

struct ShardHandle {
    tx: InboxSender<Command>,
    waker: Arc<Waker>,
    stats: Arc<ShardStats>,
    /// Taken (and joined) when the engine stops.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Totals over all shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Flush I/O time (submission to write and sync completed), microseconds, by power-of-two
    /// bucket; read it with [`crate::histogram::quantile_upper_bound`].
    pub flush_io_us: [u64; LOG2_BUCKETS],
    /// Appends acknowledged (durable).
    pub appends: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Syncs made by flushes: `RWF_DSYNC` writes, or `fdatasync`s on the portable backend.
    pub syncs: u64,
    /// Bytes written by flushes.
    pub bytes_written: u64,
    /// Flushes that failed.
    pub failed_flushes: u64,
    /// Disk reads issued by the read path.
    pub disk_reads: u64,
    /// Segment files deleted by retention.
    pub segments_deleted: u64,
    /// Segment files retention reused as a partition's next segment.
    pub segments_recycled: u64,
    /// Flushes that waited for the appenders the last flush answered (`commit_linger`).
    pub flushes_held: u64,
    /// Of those, the ones that went when their wait ran out, not all of them back.
    pub holds_expired: u64,
    /// Flushes written while an earlier flush of their partition was still in flight
    /// (`flushes_in_flight`).
    pub flushes_overlapped: u64,
    /// Partitions held offline because they could not be recovered at start (those of offline
    /// topics not counted).
    pub partitions_offline: u64,
    /// Topics held offline because their metadata is damaged.
    pub topics_offline: u64,
}

/// What an [`Engine`] handle reaches: every operation of the engine. It lives behind the
/// handle (and, weakly, the consumer groups' helper thread, which creates dead-letter topics
/// and appends to them); the handle stops it.
pub struct EngineCore {
    cfg: Arc<EngineConfig>,
    /// The data directory's metadata files and directories (`io/meta.rs`).
    files: Arc<dyn MetaFs>,
    shards: Vec<ShardHandle>,
    catalog: Mutex<BTreeMap<String, TopicMeta>>,
    /// Topics whose metadata is damaged, held offline with the reason.
    offline_topics: Mutex<BTreeMap<String, Arc<DataError>>>,
    /// Held through a whole topic creation or deletion, which waits for every shard; the
    /// catalog's own lock is only held for a look-up or a change, so that shard threads
    /// looking a topic up never wait behind an administration waiting for them.
    admin: Mutex<()>,
    closed: AtomicBool,
    /// Removes dropped segment files and deleted topics; stopped (finishing them) before the
    /// lock is let go.
    janitor: Janitor,
    /// Consumer groups (`group_ops.rs`); set once, as the engine opens.
    pub(crate) groups: OnceLock<Groups>,
    /// Idempotent producers' ids (`producer_ids.rs`).
    producer_ids: ProducerIds,
    /// Offsets committed by groups that keep their own place (`committed.rs`).
    committed: Committed,
    _lock: DataDirLock,
}

/// A running storage engine over one data directory.
///
/// ```no_run
/// use keel_engine::{BatchBuilder, Engine, EngineConfig};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::open(EngineConfig::new("/var/lib/keel"))?;
/// engine.create_topic("orders", 4)?;
/// let mut batch = BatchBuilder::new(0);
/// batch.push(Some(b"customer-7"), b"order #1", &[]);
/// let offsets = engine.append_wait("orders", 0, batch.build())?; // returns once durable
/// let read = engine.read_wait("orders", 0, offsets.first, 1 << 20)?;
/// # Ok(()) }
/// ```
pub struct Engine {
    core: Arc<EngineCore>,
}

impl Deref for Engine {
    type Target = EngineCore;

    fn deref(&self) -> &EngineCore {
        &self.core
    }
}

/// Header of the records that fill offsets lost in a repair.
pub const LOST_HEADER: &[u8] = b"keel.lost";

/// Batch bytes one read asks for while [`Engine::offset_at_time`] scans.
const TIME_SCAN_READ_BYTES: usize = 256 << 10;

/// The start-up line saying how flushes are made durable on this data directory, and why.
fn describe_durability(cfg: &EngineConfig, filesystem: &Filesystem) -> String {
    let dir = cfg.data_dir.display();
    let fs = &filesystem.kind;
    match (&cfg.io, cfg.flush_sync) {
        (IoMode::Portable, _) => {
            format!("data directory {dir} on {fs}: flushes are pwrite + fdatasync (portable I/O)")
        }
        (_, FlushSync::DsyncWrite) => format!(
            "data directory {dir} on {fs}: flushes are io_uring writes with RWF_DSYNC, durable on \
             completion ({fs} honours it)"
        ),
        (_, _) if filesystem.trusts_dsync_writes() => format!(
            "data directory {dir} on {fs}: flushes are io_uring writes each followed by a linked \
             fdatasync (flush_sync = \"fdatasync\")"
        ),
        (_, _) => format!(
            "data directory {dir} on {fs}: flushes are io_uring writes each followed by a linked \
             fdatasync (RWF_DSYNC through io_uring is trusted only on ext4 and xfs)"
        ),
    }
}

/// The shard owning `partition` of `topic`: a pure function of the two and the shard count.
pub fn shard_for(topic: &str, partition: u32, shards: usize) -> usize {
    // FNV-1a: stable across runs and versions, unlike the std hasher.
    let h = fnv1a(topic.as_bytes());
    (h.wrapping_add(u64::from(partition)) % shards as u64) as usize
}

impl Engine {
    /// Opens the data directory (creating it if needed), starts the shards and recovers every
    /// partition. Fails if the directory is locked, io_uring is unavailable, or the filesystem
    /// is in memory or lacks O_DIRECT. A partition, topic or group whose files are damaged is
    /// held offline instead (see [`crate::RecoveryMode`]).
    pub fn open(mut cfg: EngineConfig) -> Result<Self, OpenError> {
        cfg.validate()?;
        let dir = cfg.data_dir.clone();
        let files = cfg.meta_fs();
        layout::create_dir_durable(&*files, &dir)?;
        let lock = DataDirLock::acquire(&dir)?;
        let filesystem = filesystem::check_data_dir(&dir)?;
        cfg.flush_sync = filesystem.resolve(cfg.flush_sync, &dir)?;
        log::info!("{}", describe_durability(&cfg, &filesystem));
        layout::create_dir_durable(&*files, &topics_dir(&dir))?;
        let (topics, damaged) = load_catalog(&cfg, &*files)?;
        let cfg = Arc::new(cfg);
        let mut core = EngineCore {
            shards: Vec::new(),
            catalog: Mutex::new(BTreeMap::new()),
            offline_topics: Mutex::new(BTreeMap::new()),
            admin: Mutex::new(()),
            closed: AtomicBool::new(false),
            janitor: Janitor::start()
                .map_err(|e| OpenError::io("start the janitor thread", "", e))?,
            _lock: lock,
            groups: OnceLock::new(),
            producer_ids: ProducerIds::new(&cfg.data_dir),
            committed: Committed::new(&cfg.data_dir),
            cfg: Arc::clone(&cfg),
            files,
        };
        for id in 0..cfg.shards {
            let shard = start_shard(&cfg, id, &core.janitor.handle())?;
            core.shards.push(shard);
        }
        let engine = Engine {
            core: Arc::new(core),
        };
        for (name, meta) in topics {
            engine
                .add_topic_to_shards(&name, meta.partitions, &Opening::Recover)
                .map_err(OpenError::Data)?;
            engine.catalog().insert(name, meta);
        }
        let healthy: Vec<(String, u32)> = engine.list_topics();
        for (name, partitions) in healthy {
            for p in 0..partitions {
                engine.fill_lost_offsets(&name, p)?;
            }
        }
        engine.core.open_groups(Arc::downgrade(&engine.core))?;
        if cfg.recovery == RecoveryMode::Repair {
            engine.core.repair_producer_ids();
        }
        for (name, cause) in damaged {
            log::error!(
                "topic {name:?} is offline: {cause}. Every other topic is served; requests for \
                 this one are answered TopicOffline. To repair: docs/OPERATIONS.md, \"Damaged files\""
            );
            let cause = Arc::new(cause);
            engine
                .add_topic_to_shards(&name, 0, &Opening::Damaged(Arc::clone(&cause)))
                .map_err(OpenError::Data)?;
            engine.offline_topics().insert(name, cause);
        }
        Ok(engine)
    }

    /// Stops taking requests, lets every shard finish and answer what is in flight, and waits
    /// for them. Dropping the engine does the same.
    pub fn shutdown(self) {
        self.core.stop_shards();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.core.stop_shards();
    }
}

impl EngineCore {
    /// Opens the consumer groups' durable state, checks it against the logs, starts their
    /// helper (which reaches the engine through `core`) and hands the shards what they serve
    /// groups with.
    /// `--recovery repair`: a damaged `producer-ids` file is written again past every id it
    /// can have handed out; one that cannot be keeps refusing new producers, named.
    fn repair_producer_ids(&self) {
        match self
            .producer_ids
            .repair(&*self.files, crate::producers::now_ms())
        {
            Ok(Some(next)) => log::warn!(
                "repair: {} was damaged; rewrote it to hand out producer ids from {next} on, \
                 past any handed out before",
                self.cfg
                    .data_dir
                    .join(crate::producer_ids::FILE_NAME)
                    .display()
            ),
            Ok(None) => {}
            Err(e) => log::error!("repair: {e}"),
        }
    }

    fn open_groups(&self, core: Weak<EngineCore>) -> Result<(), OpenError> {
        let cfg = Arc::clone(&self.cfg);
        let (store, mut maps) = GroupStore::open(
            &cfg.data_dir,
            cfg.shards,
            cfg.group_slots,
            cfg.crash_plan(),
            Arc::clone(&self.files),
        )?;
        if cfg.recovery == RecoveryMode::Repair {
            store.remove_damaged()?;
        }
        // Before anything is appended: a message appended now could not be told from one the
        // group acknowledged before the log lost it.
        store.bring_within_logs(&mut maps, |topic, p| {
            self.read_wait(topic, p, 0, 1)
                .ok()
                .map(|r| r.high_watermark)
        });
        let links = ShardLinks {
            txs: self.shards.iter().map(|s| s.tx.clone()).collect(),
            wakers: self.shards.iter().map(|s| Arc::clone(&s.waker)).collect(),
        };
        let helper = GroupHelper::start(core)
            .map_err(|e| OpenError::io("start the consumer-group helper thread", "", e))?;
        let tables = store.hand_out(maps, self.shards.len());
        for (shard, tables) in tables.into_iter().enumerate() {
            let cmd = GroupCmd::Attach {
                tables,
                helper: helper.sender(),
                peers: links.clone(),
            };
            self.send_to_shard(shard, Command::Group(cmd))?;
        }
        let _ = self.groups.set(Groups::new(Arc::new(store), helper));
        Ok(())
    }

    /// Shards.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends `cmd` to shard `shard` and wakes it at once: a group request is answered in the
    /// shard's next turn (appends may instead wait for a batch of them, or for the completion
    /// the shard expects anyway).
    pub(crate) fn send_to_shard(&self, shard: usize, cmd: Command) -> Result<(), ShuttingDown> {
        self.send_to_shard_or_return(shard, cmd)
            .map_err(|_| ShuttingDown)
    }

    /// [`Engine::send_to_shard`], returning the command when it cannot be sent.
    pub(crate) fn send_to_shard_or_return(
        &self,
        shard: usize,
        cmd: Command,
    ) -> std::result::Result<(), crossbeam_channel::SendError<Command>> {
        let Some(handle) = self.shards.get(shard) else {
            return Err(crossbeam_channel::SendError(cmd));
        };
        self.queue(handle, cmd)?;
        handle.waker.wake(usize::MAX);
        Ok(())
    }

    fn catalog(&self) -> MutexGuard<'_, BTreeMap<String, TopicMeta>> {
        // A panic while holding this lock cannot leave the map half-changed (each change is one
        // insert or remove), so a poisoned lock is still safe to use.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills the offsets a repair cut out of a partition (`layout::LostOffsets`) with records
    /// marked lost (no key, no value, header `keel.lost: repair`), so that they are never
    /// handed out again, and readers see where the hole is. Done at open, before anyone else
    /// can append; a crash part way leaves the record, and the next open goes on.
    fn fill_lost_offsets(&self, topic: &str, partition: u32) -> Result<(), DataError> {
        let dir = layout::partition_dir(&self.cfg.data_dir, topic, partition);
        let Some(lost) = LostOffsets::read(&*self.files, &dir)? else {
            return Ok(());
        };
        let mut end = match self.read_wait(topic, partition, 0, 1) {
            Ok(r) => r.high_watermark,
            Err(DataError::OffsetOutOfRange { end, .. }) => end,
            // Held offline: filled once it opens.
            Err(DataError::PartitionOffline { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let filled_from = end;
        // A marker record takes at most 32 bytes.
        let per_batch = ((self.cfg.max_batch_bytes.saturating_sub(256)) / 32).max(1) as u64;
        while end < lost.to {
            let n = (lost.to - end).min(per_batch);
            let mut batch = BatchBuilder::new(0);
            for _ in 0..n {
                batch.push_record(None, None, &[(LOST_HEADER, Some(b"repair"))]);
            }
            end = self.append_wait(topic, partition, batch.build())?.last + 1;
        }
        if filled_from < end {
            log::warn!(
                "{topic}/{partition}: offsets {filled_from}..{end}, lost in a repair, now hold \
                 records marked lost (header keel.lost); new messages go on from {end}"
            );
        }
        Ok(LostOffsets::remove(&*self.files, &dir)?)
    }

    fn offline_topics(&self) -> MutexGuard<'_, BTreeMap<String, Arc<DataError>>> {
        // Single inserts and removals: consistent after any panic.
        self.offline_topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Why an offline topic is offline, if `name` is one.
    fn offline_cause(&self, name: &str) -> Option<Arc<DataError>> {
        self.offline_topics().get(name).cloned()
    }

    fn admin(&self) -> MutexGuard<'_, ()> {
        // Guards no data of its own.
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// An identity for an idempotent producer: a producer id never handed out before (epoch
    /// 0), or, given one this server handed out, the same id with the next epoch (batches
    /// with an older epoch are then refused as `ProducerFenced`). Durable before it returns.
    pub fn init_producer(
        &self,
        current: Option<ProducerIdentity>,
    ) -> Result<ProducerIdentity, AdminError> {
        self.producer_ids.init(&*self.files, current)
    }

    /// Commits `offsets` (topic, partition, offset and metadata) for `group`, a group that
    /// keeps its own place (Kafka's classic groups); durable before it returns.
    pub fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, CommittedOffset)],
    ) -> Result<(), AdminError> {
        self.committed.commit(&*self.files, group, offsets)
    }

    /// The offsets `group` committed.
    pub fn committed_offsets(&self, group: &str) -> Result<GroupOffsets, AdminError> {
        self.committed.fetch(&*self.files, group)
    }

    /// Every group that committed offsets.
    pub fn committed_groups(&self) -> Result<Vec<String>, AdminError> {
        self.committed.groups(&*self.files)
    }

    /// Creates a topic with `partitions` partitions, durably. All or nothing, across errors
    /// and crashes: its metadata file, renamed into place and synced, is the commit point; a
    /// directory without it is an unfinished creation, removed at the next start; and a
    /// creation that fails after that point (no space for a partition's first segment) is
    /// taken back durably before the error is returned.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), AdminError> {
        layout::validate_topic_name(name).map_err(|reason| AdminError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })?;
        if partitions == 0 || partitions > layout::MAX_PARTITIONS {
            return Err(AdminError::InvalidPartitionCount {
                asked: partitions,
                max: layout::MAX_PARTITIONS,
            });
        }
        let _admin = self.admin();
        if self.catalog().contains_key(name) {
            return Err(AdminError::TopicExists(name.to_string()));
        }
        if let Some(cause) = self.offline_cause(name) {
            return Err(AdminError::TopicOffline {
                topic: name.to_string(),
                cause,
            });
        }
        let dir = topic_dir(&self.cfg.data_dir, name);
        let meta = TopicMeta { partitions };
        if let Err(e) = write_topic_dir(&*self.files, &dir, meta) {
            // Nothing is committed without the metadata file: what is there can simply go.
            if let Err(cleanup) = self.files.remove_dir_all(&dir) {
                log::warn!(
                    "{}: cannot remove the unfinished topic ({cleanup}); the next start will",
                    dir.display()
                );
            }
            return Err(e.into());
        }
        if let Err(e) = self.add_topic_to_shards(name, partitions, &Opening::Create) {
            self.take_back_creation(name, &dir);
            return Err(e.into());
        }
        self.catalog().insert(name.to_string(), meta);
        Ok(())
    }

    /// Undoes a creation whose metadata was committed but whose partitions could not all be
    /// opened: the shards close what they opened, and the directory goes the way a deleted
    /// topic's does, so it does not come back at the next start.
    fn take_back_creation(&self, name: &str, dir: &Path) {
        let topic: Arc<str> = Arc::from(name);
        if let Ok(replies) = self.broadcast(|reply| Command::RemoveTopic {
            topic: Arc::clone(&topic),
            reply,
        }) {
            for reply in replies {
                let _ = crate::reply::wait_reply(&reply);
            }
        }
        if let Err(e) = self.discard_topic_dir(name, dir) {
            log::error!(
                "topic {name:?}: its creation failed and cannot be taken back ({e}); it will \
                 be there after a restart: delete it then"
            );
        }
    }

    /// Renames a topic's directory out of the catalog's way, durably, and hands it to the
    /// janitor to remove in the background.
    fn discard_topic_dir(&self, name: &str, dir: &Path) -> Result<(), IoFailure> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let doomed = topics_dir(&self.cfg.data_dir).join(format!(".deleted-{name}-{nanos}"));
        // Rename first, durably: a crash mid-removal leaves a directory startup finishes off,
        // never a half-deleted topic. The files go in the background, a slice at a time, so
        // other topics' flushes do not stall behind them (`janitor.rs`).
        self.files
            .rename(dir, &doomed)
            .map_err(|e| IoFailure::new("rename deleted topic", dir, e))?;
        layout::sync_dir(&*self.files, &topics_dir(&self.cfg.data_dir))?;
        self.janitor.handle().remove_tree(doomed);
        Ok(())
    }

    /// Deletes a topic: pending appends fail, in-flight flushes finish, then its files go. The
    /// durable rename of its directory is the commit point: if it fails, the topic stays.
    pub fn delete_topic(&self, name: &str) -> Result<(), AdminError> {
        let _admin = self.admin();
        let offline = self.offline_topics().contains_key(name);
        if !offline && !self.catalog().contains_key(name) {
            return Err(AdminError::UnknownTopic(name.to_string()));
        }
        let topic: Arc<str> = Arc::from(name);
        let replies = self
            .broadcast(|reply| Command::RemoveTopic {
                topic: Arc::clone(&topic),
                reply,
            })
            .map_err(|ShuttingDown| AdminError::ShuttingDown)?;
        for reply in replies {
            crate::reply::wait_reply(&reply).map_err(|_| AdminError::ShuttingDown)??;
        }
        let dir = topic_dir(&self.cfg.data_dir, name);
        if let Err(e) = self.discard_topic_dir(name, &dir) {
            // Still durable where it was: serve it again rather than lose it from view.
            let opening = match self.offline_topics().get(name) {
                Some(cause) => Opening::Damaged(Arc::clone(cause)),
                None => Opening::Recover,
            };
            let partitions = self.catalog().get(name).map_or(0, |m| m.partitions);
            self.add_topic_to_shards(name, partitions, &opening)?;
            return Err(e.into());
        }
        self.catalog().remove(name);
        self.offline_topics().remove(name);
        match self.groups.get() {
            Some(groups) => Ok(groups.remove_topic(name)?),
            None => Ok(()),
        }
    }

    /// Topics and their partition counts, by name.
    pub fn list_topics(&self) -> Vec<(String, u32)> {
        self.catalog()
            .iter()
            .map(|(name, meta)| (name.clone(), meta.partitions))
            .collect()
    }

    /// Number of partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32, DataError> {
        if let Some(cause) = self.offline_cause(topic) {
            return Err(DataError::TopicOffline {
                topic: topic.to_string(),
                cause,
            });
        }
        self.catalog()
            .get(topic)
            .map(|m| m.partitions)
            .ok_or_else(|| DataError::UnknownTopic(topic.to_string()))
    }

    fn add_topic_to_shards(
        &self,
        name: &str,
        partitions: u32,
        opening: &Opening,
    ) -> Result<(), DataError> {
        let topic: Arc<str> = Arc::from(name);
        let n = self.shards.len();
        // Every shard learns the partition count (to tell an unknown partition from one owned
        // elsewhere); each opens only the partitions it owns.
        let mut waits = Vec::new();
        for (id, shard) in self.shards.iter().enumerate() {
            let owned = (0..partitions)
                .filter(|&p| shard_for(name, p, n) == id)
                .collect();
            let (reply, rx) = bounded(1);
            let cmd = Command::AddTopic {
                topic: Arc::clone(&topic),
                partitions,
                owned,
                opening: opening.clone(),
                reply,
            };
            self.send(shard, cmd)
                .map_err(|ShuttingDown| DataError::ShuttingDown)?;
            waits.push(rx);
        }
        let mut first_err = None;
        for rx in waits {
            if let Err(e) = crate::reply::wait_reply(&rx)
                .map_err(|_| DataError::ShuttingDown)
                .and_then(|r| r)
            {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn broadcast(
        &self,
        make: impl Fn(Sender<Result<(), DataError>>) -> Command,
    ) -> Result<Vec<crossbeam_channel::Receiver<Result<(), DataError>>>, ShuttingDown> {
        let mut replies = Vec::new();
        for shard in &self.shards {
            let (reply, rx) = bounded(1);
            self.send(shard, make(reply))?;
            replies.push(rx);
        }
        Ok(replies)
    }

    fn send(&self, shard: &ShardHandle, cmd: Command) -> Result<(), ShuttingDown> {
        self.send_or_return(shard, cmd).map_err(|_| ShuttingDown)
    }

    /// Appends a RecordBatch v2 to a partition. `ticket` is answered with
    /// [`Answer::Appended`] once the batch is durable (with the offsets it was given), or with
    /// the error. Blocks only when the shard's queue is full (backpressure).
    pub fn append(&self, topic: &str, partition: u32, batch: impl Into<Bytes>, ticket: Ticket) {
        let ticket = ticket.taken_for(Kind::Append);
        self.append_then(
            topic,
            partition,
            batch.into(),
            Box::new(move |r| ticket.answer(Answer::Appended(r))),
        );
    }

    /// [`Engine::append`] for the engine's own use: `done` runs on the shard thread.
    fn append_then(&self, topic: &str, partition: u32, batch: Bytes, done: AppendDone) {
        let shard = &self.shards[shard_for(topic, partition, self.shards.len())];
        let cmd = Command::Append {
            topic: TopicName::new(topic),
            partition,
            batch,
            done,
        };
        if let Err(crossbeam_channel::SendError(Command::Append { done, .. })) =
            self.send_or_return(shard, cmd)
        {
            done(Err(DataError::ShuttingDown));
        }
    }

    /// Queues `cmd` and wakes the shard once enough is queued (`Waker::wake`).
    fn send_or_return(
        &self,
        shard: &ShardHandle,
        cmd: Command,
    ) -> Result<(), crossbeam_channel::SendError<Command>> {
        self.queue(shard, cmd)?;
        shard.waker.wake(shard.tx.len());
        Ok(())
    }

    /// Queues `cmd` for `shard` (waiting for room) without waking it.
    fn queue(
        &self,
        shard: &ShardHandle,
        cmd: Command,
    ) -> Result<(), crossbeam_channel::SendError<Command>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(crossbeam_channel::SendError(cmd));
        }
        shard.tx.send(cmd)
    }

    /// [`Engine::append`], waiting for the outcome.
    pub fn append_wait(
        &self,
        topic: &str,
        partition: u32,
        batch: impl Into<Bytes>,
    ) -> Result<OffsetRange, DataError> {
        let (tx, rx) = bounded(1);
        self.append_then(
            topic,
            partition,
            batch.into(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        crate::reply::wait_reply(&rx).map_err(|_| DataError::ShuttingDown)?
    }

    /// Reads whole batches from `from` on, up to `max_bytes` (at least one batch when any is
    /// there). Only durable data is returned. `ticket` is answered with [`Answer::Read`].
    pub fn read(&self, topic: &str, partition: u32, from: u64, max_bytes: usize, ticket: Ticket) {
        let read = ReadRequest {
            from,
            max_bytes,
            until: None,
        };
        self.send_read(topic, partition, read, read_answer(ticket));
    }

    /// [`Engine::read`], except that a read finding nothing (`from` is the partition's end)
    /// waits on the shard until a flush makes more durable, then answers with it, or until
    /// `until` passes, then answers with nothing (a long poll). A stopping engine answers
    /// waiting reads with what they have.
    pub fn read_waiting(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
        until: Instant,
        ticket: Ticket,
    ) {
        let read = ReadRequest {
            from,
            max_bytes,
            until: Some(until),
        };
        self.send_read(topic, partition, read, read_answer(ticket));
    }

    fn send_read(&self, topic: &str, partition: u32, read: ReadRequest, done: ReadDone) {
        let shard = &self.shards[shard_for(topic, partition, self.shards.len())];
        let cmd = Command::Read {
            topic: Arc::from(topic),
            partition,
            from: read.from,
            max_bytes: read.max_bytes,
            until: read.until,
            done,
        };
        if let Err(crossbeam_channel::SendError(Command::Read { done, .. })) =
            self.send_or_return(shard, cmd)
        {
            done(Err(DataError::ShuttingDown));
        }
    }

    /// [`Engine::read`], waiting for the answer.
    pub fn read_wait(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadResult, DataError> {
        let (tx, rx) = bounded(1);
        let read = ReadRequest {
            from,
            max_bytes,
            until: None,
        };
        self.send_read(
            topic,
            partition,
            read,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        crate::reply::wait_reply(&rx).map_err(|_| DataError::ShuttingDown)?
    }

    /// Where partition `partition` of `topic` begins and ends now.
    pub fn log_bounds(&self, topic: &str, partition: u32) -> Result<LogBounds, DataError> {
        // A read from past any end reads nothing and is refused with both bounds.
        match self.read_wait(topic, partition, u64::MAX, 0) {
            Err(DataError::OffsetOutOfRange { start, end, .. }) => Ok(LogBounds { start, end }),
            Err(e) => Err(e),
            // Only a log ending at u64::MAX, which offsets never reach.
            Ok(r) => Ok(LogBounds {
                start: r.next_offset,
                end: r.high_watermark,
            }),
        }
    }

    /// The first record of `partition` whose timestamp is at or after `ts` (milliseconds since
    /// the Unix epoch): its offset and timestamp; `None` when no record is that late. A scan
    /// from the log's start: there is no time index.
    pub fn offset_at_time(
        &self,
        topic: &str,
        partition: u32,
        ts: i64,
    ) -> Result<Option<(u64, i64)>, DataError> {
        let bounds = self.log_bounds(topic, partition)?;
        let mut from = bounds.start;
        while from < bounds.end {
            let read = self.read_wait(topic, partition, from, TIME_SCAN_READ_BYTES)?;
            for b in trusted_batches(&read.data) {
                // Batches are whole: the first may begin before `from`.
                let base = b.base_offset() as u64;
                // A batch whose records do not decompress is skipped: stored data was
                // checked when it came, so this is damage, named where it is read.
                let Ok(records) = b.decoded() else { continue };
                for r in records.iter().flatten() {
                    let at = b.base_timestamp() + r.timestamp_delta;
                    let offset = base + r.offset_delta as u64;
                    if offset >= from && at >= ts {
                        return Ok(Some((offset, at)));
                    }
                }
            }
            if read.next_offset <= from {
                break;
            }
            from = read.next_offset;
        }
        Ok(None)
    }

    /// Counters summed over the shards.
    pub fn stats(&self) -> EngineStats {
        let mut total = EngineStats::default();
        for s in &self.shards {
            let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            total.appends += get(&s.stats.appends);
            total.flushes += get(&s.stats.flushes);
            total.syncs += get(&s.stats.syncs);
            total.bytes_written += get(&s.stats.bytes_written);
            total.failed_flushes += get(&s.stats.failed_flushes);
            total.disk_reads += get(&s.stats.disk_reads);
            total.segments_deleted += get(&s.stats.segments_deleted);
            total.segments_recycled += get(&s.stats.segments_recycled);
            total.flushes_held += get(&s.stats.flushes_held);
            total.flushes_overlapped += get(&s.stats.flushes_overlapped);
            total.holds_expired += get(&s.stats.holds_expired);
            total.partitions_offline += get(&s.stats.partitions_offline);
            s.stats.flush_io_us.add_to(&mut total.flush_io_us);
        }
        total.topics_offline = self.offline_topics().len() as u64;
        total
    }

    fn stop_shards(&self) {
        // Stopping waits on threads a simulation does not drive: its shards run free now.
        #[cfg(feature = "testing")]
        if let Some(sim) = crate::simulation::driven_here() {
            sim.run_free();
        }
        // First the groups' helper, which asks the shards for the last checkpoints.
        if let Some(groups) = self.groups.get() {
            groups.helper.stop();
        }
        self.closed.store(true, Ordering::Release);
        for shard in &self.shards {
            if shard.tx.send_now(Command::Stop).is_ok() {
                shard.waker.signal();
            }
        }
        for shard in &self.shards {
            let thread = shard
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(t) = thread {
                if t.join().is_err() {
                    log::error!("a shard thread panicked");
                }
            }
        }
    }
}

fn start_shard(
    cfg: &Arc<EngineConfig>,
    id: usize,
    janitor: &JanitorTx,
) -> Result<ShardHandle, OpenError> {
    let uring = || UringDisk::new().map_err(OpenError::uring_unavailable);
    #[cfg(feature = "testing")]
    match &cfg.test_disk {
        Some(TestDisk::Faults(plan)) => {
            let disk = FaultyDisk::new(uring()?, Arc::clone(plan));
            return spawn_shard(cfg, id, disk, janitor);
        }
        Some(TestDisk::Crashes(plan)) => {
            let disk = CrashingDisk::new(uring()?, Arc::clone(plan));
            return spawn_shard(cfg, id, disk, janitor);
        }
        Some(TestDisk::FaultsAndCrashes(faults, crashes)) => {
            let crashing = CrashingDisk::new(uring()?, Arc::clone(crashes));
            let disk = FaultyDisk::new(crashing, Arc::clone(faults));
            return spawn_shard(cfg, id, disk, janitor);
        }
        Some(TestDisk::Simulated(sim)) => {
            let simulated = crate::simulation::SimDisk::new(sim)
                .map_err(|e| OpenError::io("make a simulated disk", "", e))?;
            let crashing = CrashingDisk::new(simulated, Arc::clone(sim.crashes()));
            let disk = FaultyDisk::new(crashing, Arc::clone(sim.faults()));
            if sim.acks_before_sync() {
                let disk = crate::simulation::EarlySyncDisk::new(disk);
                return spawn_shard(cfg, id, disk, janitor);
            }
            return spawn_shard(cfg, id, disk, janitor);
        }
        None => {}
    }
    match &cfg.io {
        IoMode::Uring => spawn_shard(cfg, id, uring()?, janitor),
        IoMode::Portable => {
            let disk = PortableDisk::new()
                .map_err(|e| OpenError::io("start the portable I/O thread", "", e))?;
            spawn_shard(cfg, id, disk, janitor)
        }
    }
}

fn spawn_shard<D: Disk + Send + 'static>(
    cfg: &Arc<EngineConfig>,
    id: usize,
    disk: D,
    janitor: &JanitorTx,
) -> Result<ShardHandle, OpenError> {
    let (tx, rx) = inbox(cfg.queue_depth);
    let stats = Arc::new(ShardStats::default());
    let waker = disk.waker();
    let shard = Shard::new(
        id,
        disk,
        rx,
        Arc::clone(cfg),
        Arc::clone(&stats),
        janitor.clone(),
    );
    let core = cfg
        .pin_shards
        .then(core_affinity::get_core_ids)
        .flatten()
        .and_then(|ids| ids.get(id % ids.len().max(1)).copied());
    let thread = std::thread::Builder::new()
        .name(format!("keel-shard-{id}"))
        .spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            shard.run();
        })
        .map_err(|e| OpenError::io("spawn shard thread", "", e))?;
    Ok(ShardHandle {
        tx,
        waker,
        stats,
        thread: Mutex::new(Some(thread)),
    })
}

/// Writes a new topic's directory: partition directories, then the metadata file that
/// commits them. A directory left from an interrupted creation (no metadata) is replaced.
fn write_topic_dir(files: &dyn MetaFs, dir: &Path, meta: TopicMeta) -> Result<(), IoFailure> {
    if dir.exists() {
        files
            .remove_dir_all(dir)
            .map_err(|e| IoFailure::new("remove", dir, e))?;
    }
    layout::create_dir_durable(files, dir)?;
    for p in 0..meta.partitions {
        let partition = dir.join(p.to_string());
        files
            .create_dir(&partition)
            .map_err(|e| IoFailure::new("create partition directory", &partition, e))?;
    }
    // Its rename and the directory sync also make the partition directories' entries durable.
    meta.write(files, dir)
}

/// Topics by name.
type Catalog = BTreeMap<String, TopicMeta>;
/// Topics whose metadata is damaged, by name, with why.
type Damaged = BTreeMap<String, DataError>;

/// Reads every topic's metadata, finishing interrupted creations and deletions: the topics of
/// the data directory, and those whose metadata is damaged. In repair mode a damaged metadata
/// file is rebuilt from the partition directories beside it.
fn load_catalog(cfg: &EngineConfig, files: &dyn MetaFs) -> Result<(Catalog, Damaged), OpenError> {
    let dir = topics_dir(&cfg.data_dir);
    let mut topics = BTreeMap::new();
    let mut damaged = BTreeMap::new();
    let entries = files
        .list(&dir)
        .map_err(|e| OpenError::io("list topics", &dir, e))?;
    for entry in entries {
        let (name, path) = (entry.name, entry.path);
        if name.starts_with(".deleted-") {
            files
                .remove_dir_all(&path)
                .map_err(|e| OpenError::io("remove", &path, e))?;
            continue;
        }
        if layout::validate_topic_name(&name).is_err() || !entry.is_dir {
            log::warn!("ignoring {} in the topics directory", path.display());
            continue;
        }
        match TopicMeta::read(files, &path) {
            Ok(Some(meta)) => {
                topics.insert(name, meta);
            }
            Ok(None) => {
                log::warn!("removing {}: its creation was interrupted", path.display());
                files
                    .remove_dir_all(&path)
                    .map_err(|e| OpenError::io("remove", &path, e))?;
            }
            Err(e) if cfg.recovery == RecoveryMode::Repair => {
                match rebuild_topic_meta(files, &path) {
                    Ok(meta) => {
                        log::warn!(
                            "repair: {e}; rewrote it from the {} partition directories beside it",
                            meta.partitions
                        );
                        topics.insert(name, meta);
                    }
                    Err(why) => {
                        log::error!("repair: {e}; cannot rebuild it: {why}");
                        damaged.insert(name, e);
                    }
                }
            }
            Err(e) => {
                damaged.insert(name, e);
            }
        }
    }
    Ok((topics, damaged))
}

/// A topic's metadata rebuilt from its partition directories `0`, `1`, … (they are created
/// before the metadata, so a committed topic has each of them), written in place.
fn rebuild_topic_meta(files: &dyn MetaFs, dir: &Path) -> std::result::Result<TopicMeta, String> {
    let mut ids = Vec::new();
    for entry in files.list(dir).map_err(|e| e.to_string())? {
        if let Ok(id) = entry.name.parse::<u32>() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let dense = ids.iter().enumerate().all(|(i, &id)| id as usize == i);
    if ids.is_empty() || !dense || ids.len() > layout::MAX_PARTITIONS as usize {
        return Err(format!("its partition directories are not 0..N: {ids:?}"));
    }
    let meta = TopicMeta {
        partitions: ids.len() as u32,
    };
    meta.write(files, dir).map_err(|e| e.to_string())?;
    Ok(meta)
}

/// Where a read starts, how much it takes, and whether it waits for data.
struct ReadRequest {
    from: u64,
    max_bytes: usize,
    until: Option<Instant>,
}

fn read_answer(ticket: Ticket) -> ReadDone {
    let ticket = ticket.taken_for(Kind::Read);
    Box::new(move |r| ticket.answer(Answer::Read(r)))
}
