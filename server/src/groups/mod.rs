//! Consumer groups over the network: joining and leaving, sessions, consume with long
//! polling, acks (optionally answered once durable), nacks, and dead-lettering. The rules
//! are in `docs/CONSUMERS.md`; per-partition delivery is `keel_engine::delivery`, the durable
//! state `keel_engine::groups`.

mod consume;
mod dead_letter;
mod live;
mod waiting;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_engine::delivery::MemberId;
use keel_engine::groups::{GroupSettings, GroupStore};
use keel_engine::{Engine, EngineError, RecoveryMode};
use keel_protocol::{ErrorCode, JoinSettings, OffsetSpan, Response, StartAt};

use crate::config::GroupDefaults;
use crate::reply::Reply;
pub use live::{LiveGroup, Member, PartitionMetrics};
use waiting::Waiting;

/// How often sessions and ack deadlines are checked, and parked consumes looked at again
/// when a nack delay or timeout has made something due.
pub const TICK: Duration = Duration::from_millis(50);
/// How often each group's committed offsets are recorded as its fallback checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// How long a graceful stop waits for the groups' last checkpoints (a table sync and a small
/// file write each).
const STOP_CHECKPOINT_PATIENCE: Duration = Duration::from_secs(10);

/// What metrics show of one group.
pub struct GroupMetrics {
    /// Group name.
    pub group: String,
    /// The topic it reads.
    pub topic: String,
    /// Members now.
    pub members: usize,
    /// Per partition.
    pub partitions: Vec<PartitionMetrics>,
}

/// A consume request on its way.
pub struct ConsumeJob {
    group: Arc<LiveGroup>,
    member: MemberId,
    max: usize,
    deadline: Option<Instant>,
    reply: Reply,
    /// The group's generation when it was last found empty.
    seen: u64,
}

/// A join request on its way (it may create the group, which reads and writes files).
pub struct JoinJob {
    /// Group name.
    pub group: String,
    /// Topic the group reads.
    pub topic: String,
    /// Where a new group starts.
    pub start: StartAt,
    /// The member's settings.
    pub settings: JoinSettings,
    /// The connection it came on (the member leaves when it closes).
    pub conn: u64,
    /// Where the answer goes.
    pub reply: Reply,
}

/// Every group of the server.
pub struct Groups {
    engine: Weak<Engine>,
    store: Arc<GroupStore>,
    live: RwLock<HashMap<(String, String), Arc<LiveGroup>>>,
    /// Held while a group is created or loaded.
    creating: Mutex<()>,
    next_member: AtomicU64,
    defaults: GroupDefaults,
    /// Most batch bytes one consume answer carries.
    answer_bytes: usize,
    waiting: Waiting,
}

impl Groups {
    /// Opens the groups' durable state and starts the consume workers and the ticker.
    pub fn start(
        engine: &Arc<Engine>,
        defaults: GroupDefaults,
        answer_bytes: usize,
    ) -> Result<(Arc<Self>, Vec<JoinHandle<()>>), EngineError> {
        let cfg = engine.config();
        let store = GroupStore::open(&cfg.data_dir, cfg.shards, defaults.slots)?;
        if cfg.recovery == RecoveryMode::Repair {
            store.remove_damaged()?;
        }
        // Before anything is appended: a message appended now could not be told from one the
        // group acknowledged before the log lost it.
        store.bring_within_logs(|topic, p| {
            engine
                .read_wait(topic, p, 0, 1)
                .ok()
                .map(|r| r.high_watermark)
        });
        // Member ids from the clock: an id from before a restart is not taken for a new one.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let (waiting, rx) = Waiting::new();
        let this = Arc::new(Self {
            engine: Arc::downgrade(engine),
            store: Arc::new(store),
            live: RwLock::new(HashMap::new()),
            creating: Mutex::new(()),
            next_member: AtomicU64::new(seed),
            defaults,
            answer_bytes,
            waiting,
        });
        let threads = waiting::start_threads(&this, rx)
            .map_err(|e| EngineError::io("start the consumer-group threads", "", e))?;
        Ok((this, threads))
    }

    fn live(&self) -> RwLockReadGuard<'_, HashMap<(String, String), Arc<LiveGroup>>> {
        // Inserts and removals are single steps; the map is consistent after any panic.
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    fn engine(&self) -> Result<Arc<Engine>, EngineError> {
        self.engine.upgrade().ok_or(EngineError::ShuttingDown)
    }

    fn find(&self, group: &str, topic: &str) -> Option<Arc<LiveGroup>> {
        self.live()
            .get(&(group.to_string(), topic.to_string()))
            .cloned()
    }

    /// Queues a join (answered from a worker thread).
    pub fn join(&self, job: JoinJob) {
        self.waiting.join(job);
    }

    fn do_join(&self, job: JoinJob) {
        let JoinJob {
            group,
            topic,
            start,
            settings,
            conn,
            reply,
        } = job;
        let live = match self.load_or_create(&group, &topic, start, settings) {
            Ok(g) => g,
            Err(e) => return reply.engine_error(&e),
        };
        // Each setting was checked against its range before the join was queued.
        let session_timeout_ms = asked_or(
            settings.session_timeout_ms,
            self.defaults.session_timeout_ms,
        );
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        live.members().insert(
            member,
            Member {
                conn,
                session_timeout: Duration::from_millis(u64::from(session_timeout_ms)),
                max_unacked: asked_or(settings.max_unacked, self.defaults.max_unacked) as usize,
                last_seen: Instant::now(),
            },
        );
        log::info!("group {group:?} on {topic}: member {member} joined");
        reply.ok(&Response::JoinGroup {
            member,
            partitions: live.partition_count(),
            session_timeout_ms,
        });
    }

    fn load_or_create(
        &self,
        group: &str,
        topic: &str,
        start: StartAt,
        settings: JoinSettings,
    ) -> Result<Arc<LiveGroup>, EngineError> {
        if let Some(g) = self.find(group, topic) {
            return Ok(g);
        }
        let engine = self.engine()?;
        let partitions = engine.partitions(topic)?;
        // Creations one at a time, without holding the map: creating reads partitions and
        // syncs files, and shard threads read the map (on every durable produce), so they
        // must never wait behind that.
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = self.find(group, topic) {
            return Ok(g);
        }
        let key = (group.to_string(), topic.to_string());
        let group_settings = GroupSettings {
            ack_timeout: Duration::from_millis(u64::from(asked_or(
                settings.ack_timeout_ms,
                self.defaults.ack_timeout_ms,
            ))),
            max_deliveries: asked_or(settings.max_deliveries, self.defaults.max_deliveries),
        };
        let stored = self.store.find_or_create(
            group,
            topic,
            group_settings,
            engine.config().shards,
            || consume::start_offsets(&engine, topic, partitions, start),
        )?;
        if stored.partitions() != partitions {
            return Err(EngineError::InvalidConfig(format!(
                "group {group:?} covers {} partitions but topic {topic:?} has {partitions}",
                stored.partitions()
            )));
        }
        let g = Arc::new(LiveGroup::load(&self.store, stored));
        log::info!(
            "group {group:?} on {topic}: loaded, committed offsets {:?}",
            g.committed()
        );
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::clone(&g));
        Ok(g)
    }

    fn member_group(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
    ) -> Result<Arc<LiveGroup>, ()> {
        match self.find(group, topic) {
            Some(g) if g.touch(member) => Ok(g),
            _ => Err(()),
        }
    }

    /// Leaves: what the member holds is redelivered.
    pub fn leave(&self, group: &str, topic: &str, member: MemberId, reply: Reply) {
        match self.find(group, topic) {
            Some(g) if g.remove_member(member) => {
                log::info!("group {group:?} on {topic}: member {member} left");
                self.waiting.wake(&g);
                reply.ok(&Response::LeaveGroup);
            }
            _ => unknown_member(reply, group, member),
        }
    }

    /// Renews a session.
    pub fn heartbeat(&self, group: &str, topic: &str, member: MemberId, reply: Reply) {
        match self.member_group(group, topic, member) {
            Ok(_) => reply.ok(&Response::Heartbeat),
            Err(()) => unknown_member(reply, group, member),
        }
    }

    /// Queues a consume (answered from a worker thread, at once or when messages arrive).
    pub fn consume(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
        max: u32,
        wait: Duration,
        reply: Reply,
    ) {
        let Ok(g) = self.member_group(group, topic, member) else {
            return unknown_member(reply, group, member);
        };
        // A waiting consume must not outlast the session it keeps alive.
        let session = g
            .members()
            .get(&member)
            .map_or(Duration::ZERO, |m| m.session_timeout);
        let wait = wait.min(session / 2);
        self.waiting.consume(ConsumeJob {
            seen: g.generation(),
            group: g,
            member,
            max: max as usize,
            deadline: (!wait.is_zero()).then(|| Instant::now() + wait),
            reply,
        });
    }

    /// Acknowledges spans. An ack from a member whose session ended still counts (the message
    /// was processed); an ack for a group not loaded is refused, as its member ids are gone.
    pub fn ack(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
        durable: bool,
        spans: &[OffsetSpan],
        reply: Reply,
    ) {
        let Some(g) = self.find(group, topic) else {
            return unknown_member(reply, group, member);
        };
        g.touch(member);
        if let Some(bad) = spans.iter().find(|s| s.partition >= g.partition_count()) {
            return reply.error(
                ErrorCode::UnknownPartition,
                &format!("topic {topic:?} has no partition {}", bad.partition),
            );
        }
        // One lock, one window move and one store per partition, however many spans name it.
        let mut partitions: Vec<u32> = spans.iter().map(|s| s.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut touched = Vec::new();
        for p in partitions {
            let Some(mut d) = g.partition(p) else {
                continue;
            };
            let mine = spans
                .iter()
                .filter(|s| s.partition == p)
                .map(|s| (s.first, s.last));
            if d.ack_spans(mine) > 0 {
                // Stored under the partition's lock, so stores of one slot never go back in time.
                self.store.store(&g.stored, p, d.acks());
                touched.push(p);
            }
        }
        if !touched.is_empty() {
            // Acks free prefetch room and the ack window.
            self.waiting.wake(&g);
        }
        if !durable {
            return reply.ok(&Response::Ack);
        }
        self.store.when_durable(
            &g.stored,
            &touched,
            Box::new(move |r| match r {
                Ok(()) => reply.ok(&Response::Ack),
                Err(e) => reply.engine_error(&e),
            }),
        );
    }

    /// Gives messages back for redelivery after `delay`.
    pub fn nack(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
        delay: Duration,
        spans: &[OffsetSpan],
        reply: Reply,
    ) {
        let Ok(g) = self.member_group(group, topic, member) else {
            return unknown_member(reply, group, member);
        };
        let now = Instant::now();
        for span in spans {
            let Some(mut d) = g.partition(span.partition) else {
                return reply.error(
                    ErrorCode::UnknownPartition,
                    &format!("topic {topic:?} has no partition {}", span.partition),
                );
            };
            d.nack_span(member, span.first, span.last, delay, now);
        }
        self.waiting.wake(&g);
        reply.ok(&Response::Nack);
    }

    /// Groups held offline because their metadata is damaged.
    pub fn offline_count(&self) -> usize {
        self.store.offline_count()
    }

    /// What metrics show of every group loaded since keeld started, sorted by name.
    pub fn metrics(&self) -> Vec<GroupMetrics> {
        let mut out: Vec<_> = self
            .live()
            .iter()
            .map(|((group, topic), g)| GroupMetrics {
                group: group.clone(),
                topic: topic.clone(),
                members: g.members().len(),
                partitions: g.partition_metrics(),
            })
            .collect();
        out.sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
        out
    }

    /// A connection closed: its members leave.
    pub fn connection_closed(&self, conn: u64) {
        for g in self.live().values() {
            if g.remove_members(|m| m.conn == conn, "its connection closed") {
                self.waiting.wake(g);
            }
        }
    }

    /// An append to `topic` became durable: consumes waiting on its groups look again.
    pub fn appended(&self, topic: &str) {
        for ((_, t), g) in self.live().iter() {
            if t == topic {
                self.waiting.wake(g);
            }
        }
    }

    /// The topic is being deleted: its groups go with it.
    pub fn topic_deleted(&self, topic: &str) -> Result<(), EngineError> {
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        self.live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, t), _| t != topic);
        self.store.remove_topic(topic)
    }

    /// Answers every waiting consume, stops the threads, and records every group's committed
    /// offsets as its checkpoint (no acks arrive any more: connections stopped reading).
    pub fn stop(&self) {
        self.waiting.stop();
        let groups: Vec<Arc<LiveGroup>> = self.live().values().cloned().collect();
        let (tx, rx) = std::sync::mpsc::channel();
        for g in &groups {
            let tx = tx.clone();
            self.checkpoint(
                g,
                Box::new(move || {
                    let _ = tx.send(());
                }),
            );
        }
        drop(tx);
        let deadline = Instant::now() + STOP_CHECKPOINT_PATIENCE;
        for _ in &groups {
            if rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                log::warn!("not every group's checkpoint was written before stopping");
                break;
            }
        }
    }

    fn tick(&self, now: Instant, checkpoint: bool) {
        let groups: Vec<Arc<LiveGroup>> = self.live().values().cloned().collect();
        for g in groups {
            if g.expire(now) {
                self.waiting.wake(&g);
            }
            if checkpoint {
                self.checkpoint(&g, Box::new(|| ()));
            }
        }
    }

    /// Records the group's committed offsets as its fallback, once they are durable in the
    /// table (a checkpoint must never be ahead of what the table holds durably); then calls
    /// `then`.
    fn checkpoint(&self, g: &Arc<LiveGroup>, then: Box<dyn FnOnce() + Send>) {
        let committed = g.committed();
        let partitions: Vec<u32> = (0..g.partition_count()).collect();
        let store = Arc::clone(&self.store);
        let stored = Arc::clone(&g.stored);
        self.store.when_durable(
            &g.stored,
            &partitions,
            Box::new(move |r| {
                let result = r.and_then(|()| store.checkpoint(&stored, &committed));
                if let Err(e) = result {
                    log::warn!("group {:?}: checkpoint failed: {e}", stored.group);
                }
                // Let go of the store before saying so: whoever waits may then drop the
                // last other reference, and the store must not be dropped here, on the
                // table's own sync thread.
                drop((store, stored));
                then();
            }),
        );
    }
}

/// A join's setting, or the server's default where it asked for one (0).
fn asked_or(asked: u32, default: u32) -> u32 {
    if asked == 0 {
        default
    } else {
        asked
    }
}

fn unknown_member(reply: Reply, group: &str, member: MemberId) {
    reply.error(
        ErrorCode::UnknownMember,
        &format!("member {member} is not in group {group:?} (its session ended); join again"),
    );
}
