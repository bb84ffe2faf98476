//! The consumer groups' helper thread: the work a shard must not wait for. It copies dead
//! letters to their dead-letter topic `TOPIC.dlq` (creating it with the topic's partition count
//! on first use, then an append to whichever shard owns that partition; the outcome goes back
//! to the group's shard) and records each group's committed offsets as its fallback checkpoint
//! every `CHECKPOINT_EVERY` and when the engine stops. Shards hand it work through a bounded
//! queue and never wait for room: a dead letter that finds the queue full is tried again later.
//! It reaches the engine weakly: the engine stops it before anything else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::engine::EngineCore;
use crate::error::{AdminError, DataError};
use crate::groups::GroupKey;
use crate::shard::{Command, GroupCmd};

/// Jobs queued for the helper at most; a shard finding it full tries again later.
const QUEUE_JOBS_MAX: usize = 4096;
/// How often each group's committed offsets are recorded as its fallback checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// How long the helper waits for a shard's answer before giving up on it for this round.
const SHARD_PATIENCE: Duration = Duration::from_secs(30);

/// Work for the helper.
pub enum HelperJob {
    /// Copy one message to its group's dead-letter topic, then tell the group's shard.
    DeadLetter {
        /// The group.
        key: GroupKey,
        /// Partition of the message (and of its copy).
        partition: u32,
        /// Its offset.
        offset: u64,
        /// The dead-letter topic.
        dlq: Arc<str>,
        /// The copy, a batch of one record.
        batch: Vec<u8>,
        /// The shard to tell.
        from_shard: usize,
    },
    /// Record the last checkpoints and end.
    Stop,
}

/// How shards hand the helper work.
#[derive(Clone)]
pub struct HelperTx(Sender<HelperJob>);

impl HelperTx {
    /// Queues `job` unless the queue is full (then the job comes back).
    pub fn try_send(&self, job: HelperJob) -> std::result::Result<(), HelperJob> {
        self.0.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }
}

/// The running helper.
pub struct GroupHelper {
    tx: HelperTx,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupHelper {
    /// Starts the helper, reaching the engine through `core`.
    pub fn start(core: Weak<EngineCore>) -> std::io::Result<Self> {
        let (tx, rx) = bounded(QUEUE_JOBS_MAX);
        let thread = std::thread::Builder::new()
            .name("keel-groups".into())
            .spawn(move || run(&core, &rx))?;
        Ok(Self {
            tx: HelperTx(tx),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// How shards hand it work.
    pub fn sender(&self) -> HelperTx {
        self.tx.clone()
    }

    /// Records the last checkpoints and ends the thread (before the shards stop: it asks them
    /// for their committed offsets).
    pub fn stop(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(thread) = thread else {
            return;
        };
        // Past the queue's bound if need be: the stop must get in.
        if self.tx.0.send(HelperJob::Stop).is_ok() && thread.join().is_err() {
            log::error!("the consumer-group helper thread panicked");
        }
    }
}

fn run(core: &Weak<EngineCore>, rx: &Receiver<HelperJob>) {
    let mut next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
    loop {
        let wait = next_checkpoint.saturating_duration_since(Instant::now());
        let job = rx.recv_timeout(wait);
        let Some(core) = core.upgrade() else {
            return;
        };
        match job {
            Ok(HelperJob::DeadLetter {
                key,
                partition,
                offset,
                dlq,
                batch,
                from_shard,
            }) => {
                let copied = copy(&core, &key.1, &dlq, partition, batch);
                match &copied {
                    Ok(to) => log::warn!(
                        "group {:?}: {}/{partition} offset {offset} was delivered its maximum \
                         number of times without an ack; copied to {dlq} offset {to}",
                        key.0,
                        key.1
                    ),
                    Err(e) => log::error!(
                        "group {:?}: copying {}/{partition} offset {offset} to {dlq} failed: \
                         {e}; trying again later",
                        key.0,
                        key.1
                    ),
                }
                let cmd = GroupCmd::DeadLettered {
                    key,
                    partition,
                    offset,
                    copied: copied.is_ok(),
                };
                let _ = core.send_to_shard(from_shard, Command::Group(cmd));
            }
            Ok(HelperJob::Stop) | Err(RecvTimeoutError::Disconnected) => {
                checkpoint(&core);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                checkpoint(&core);
                next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
            }
        }
    }
}

/// Appends the copy to partition `partition` of `dlq`, creating `dlq` with `topic`'s partition
/// count if it does not exist; the copy's offset once durable.
fn copy(
    core: &EngineCore,
    topic: &str,
    dlq: &str,
    partition: u32,
    batch: Vec<u8>,
) -> Result<u64, CopyError> {
    if let Err(DataError::UnknownTopic(_)) = core.partitions(dlq) {
        let partitions = core.partitions(topic)?;
        match core.create_topic(dlq, partitions) {
            Ok(()) => log::info!("created dead-letter topic {dlq:?} with {partitions} partitions"),
            Err(AdminError::TopicExists(_)) => {}
            Err(e) => return Err(CopyError::Create(e)),
        }
    }
    Ok(core.append_wait(dlq, partition, batch)?.first)
}

/// Why a dead letter could not be copied (it is tried again later).
#[derive(Debug, thiserror::Error)]
enum CopyError {
    /// The dead-letter topic could not be created.
    #[error("cannot create the dead-letter topic: {0}")]
    Create(AdminError),
    /// The source topic's partitions, or the append to the dead-letter topic.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Records every loaded group's committed offsets as its checkpoint; each shard reports them
/// once its tables hold them durably (a checkpoint must never be ahead of the table).
fn checkpoint(core: &EngineCore) {
    let Some(groups) = core.groups.get() else {
        return;
    };
    let mut replies = Vec::new();
    for shard in 0..core.shard_count() {
        let (reply, rx) = bounded(1);
        let cmd = Command::Group(GroupCmd::Committed { reply });
        if core.send_to_shard(shard, cmd).is_ok() {
            replies.push(rx);
        }
    }
    let mut committed: HashMap<GroupKey, Vec<(u32, u64)>> = HashMap::new();
    for rx in replies {
        let Ok(found) = rx.recv_timeout(SHARD_PATIENCE) else {
            log::warn!("a shard did not report its groups' committed offsets in time");
            continue;
        };
        for (key, partition, offset) in found {
            committed.entry(key).or_default().push((partition, offset));
        }
    }
    for ((group, topic), offsets) in committed {
        let Some(g) = groups.store.find(&group, &topic) else {
            continue;
        };
        let mut all = vec![0; g.partitions() as usize];
        for (p, c) in &offsets {
            if let Some(slot) = all.get_mut(*p as usize) {
                *slot = *c;
            }
        }
        // The shards reported these only once durable in their tables.
        if let Err(e) = groups.store.checkpoint(&g, &all) {
            log::warn!("group {group:?} on {topic}: checkpoint failed: {e}");
        }
    }
}
