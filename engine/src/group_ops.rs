//! Consumer groups as engine operations. Joining (which may create or load a group), leaving
//! and heartbeats go through the engine's list of members; consumes, acks and nacks go
//! straight to the shards owning the partitions (every shard for a consume), which hold the
//! delivery state and answer (`shard/groups.rs`, `shard/consume.rs`). The rules are
//! `docs/CONSUMERS.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::bounded;

use crate::completions::{Answer, Kind, Ticket};
use crate::delivery::MemberId;
use crate::engine::{shard_for, EngineCore};
use crate::error::{GroupError, IoFailure};
use crate::groups::{
    ConsumeDone, ConsumeGather, Countdown, GroupDone, GroupHelper, GroupKey, GroupSettings,
    GroupStore, Member, SlotRef, Span, StoredGroup,
};
use crate::shard::{Command, GroupCmd, GroupPartitionMetrics};

/// Where a new group starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    /// Offset 0.
    Earliest,
    /// Each partition's end when the group is created: only later messages.
    Latest,
    /// This offset, or the end if it is beyond.
    Offset(u64),
    /// The first message at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

/// A join.
#[derive(Debug, Clone, Copy)]
pub struct JoinRequest<'a> {
    /// Group name.
    pub group: &'a str,
    /// The topic it reads.
    pub topic: &'a str,
    /// Where a group created by this join starts.
    pub start: GroupStart,
    /// Settings of a group created by this join (fixed at creation).
    pub settings: GroupSettings,
    /// The member leaves when it sends nothing for this long.
    pub session_timeout: Duration,
    /// Deliveries the member may hold unacknowledged.
    pub max_unacked: usize,
    /// The connection it joins on: it leaves when that closes.
    pub conn: u64,
}

/// What a join gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The new member's id.
    pub member: MemberId,
    /// Partitions of the topic.
    pub partitions: u32,
}

/// How much one consume may take, and how long it may wait for the first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeLimits {
    /// Messages at most.
    pub max_messages: usize,
    /// Batch bytes at most (a batch larger than this alone still goes).
    pub max_bytes: usize,
    /// With nothing there, wait until then for something.
    pub until: Option<Instant>,
}

/// What metrics show of one group.
#[derive(Debug, Clone)]
pub struct GroupMetrics {
    /// Group name.
    pub group: String,
    /// The topic it reads.
    pub topic: String,
    /// Members now.
    pub members: usize,
    /// Per partition, ascending.
    pub partitions: Vec<GroupPartitionMetrics>,
}

/// A group loaded on the shards, and its members.
struct LoadedGroup {
    members: HashMap<MemberId, Arc<Member>>,
}

/// The engine's part of consumer groups: their durable store, their helper, and who is a
/// member of what (the shards keep their own copies of the member lists).
pub(crate) struct Groups {
    pub store: Arc<GroupStore>,
    pub helper: GroupHelper,
    loaded: Mutex<HashMap<GroupKey, LoadedGroup>>,
    /// Held while a group is created or loaded (file writes, a wait for every shard).
    creating: Mutex<()>,
    next_member: AtomicU64,
    /// Which shard takes the next consume first.
    consume_turn: AtomicUsize,
}

impl Groups {
    pub fn new(store: Arc<GroupStore>, helper: GroupHelper) -> Self {
        // Member ids from the clock: an id from before a restart is not taken for a new one.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self {
            store,
            helper,
            loaded: Mutex::new(HashMap::new()),
            creating: Mutex::new(()),
            next_member: AtomicU64::new(seed),
            consume_turn: AtomicUsize::new(0),
        }
    }

    fn loaded(&self) -> MutexGuard<'_, HashMap<GroupKey, LoadedGroup>> {
        // Inserts and removals are single steps: consistent after any panic.
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member `member` of `key`, if it is one and has not left.
    fn member(&self, key: &GroupKey, member: MemberId) -> Option<Arc<Member>> {
        let loaded = self.loaded();
        let m = loaded.get(key)?.members.get(&member)?;
        (!m.is_gone()).then(|| Arc::clone(m))
    }

    /// Forgets the groups of a deleted topic.
    pub fn remove_topic(&self, topic: &str) -> Result<(), IoFailure> {
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        self.loaded().retain(|(_, t), _| &**t != topic);
        self.store.remove_topic(topic)
    }
}

fn key_of(group: &str, topic: &str) -> GroupKey {
    (Arc::from(group), Arc::from(topic))
}

impl EngineCore {
    fn groups(&self) -> Result<&Groups, GroupError> {
        self.groups.get().ok_or(GroupError::ShuttingDown)
    }

    /// Joins a group, creating it (durably) or loading it first if it is not served yet. Waits for file writes when it creates one: call it where
    /// waiting is allowed.
    pub fn join_group(&self, req: JoinRequest<'_>) -> Result<Joined, GroupError> {
        let groups = self.groups()?;
        let key = key_of(req.group, req.topic);
        let partitions = self.partitions(req.topic)?;
        self.load_group(groups, &key, req, partitions)?;
        let id = groups.next_member.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member::new(
            id,
            req.conn,
            req.session_timeout,
            req.max_unacked,
        ));
        member.touch(crate::clock::now());
        if let Some(g) = groups.loaded().get_mut(&key) {
            g.members.retain(|_, m| !m.is_gone());
            g.members.insert(id, Arc::clone(&member));
        }
        self.tell_shards(|| GroupCmd::Joined {
            key: key.clone(),
            member: Arc::clone(&member),
        });
        log::info!("group {:?} on {}: member {id} joined", req.group, req.topic);
        Ok(Joined {
            member: id,
            partitions,
        })
    }

    /// Makes sure `key` is served by the shards: loads it from the store, creating it first
    /// if it does not exist.
    fn load_group(
        &self,
        groups: &Groups,
        key: &GroupKey,
        req: JoinRequest<'_>,
        partitions: u32,
    ) -> Result<(), GroupError> {
        if groups.loaded().contains_key(key) {
            return Ok(());
        }
        let _creating = groups.creating.lock().unwrap_or_else(|p| p.into_inner());
        if groups.loaded().contains_key(key) {
            return Ok(());
        }
        let stored = groups.store.find_or_create(
            req.group,
            req.topic,
            req.settings,
            self.config().shards,
            || self.start_offsets(req.topic, partitions, req.start),
            |slots| self.write_new_slots(slots),
        )?;
        if stored.partitions() != partitions {
            return Err(GroupError::PartitionsChanged {
                group: req.group.to_string(),
                topic: req.topic.to_string(),
                covered: stored.partitions(),
                partitions,
            });
        }
        self.load_on_shards(key, &stored)?;
        groups.loaded().insert(
            key.clone(),
            LoadedGroup {
                members: HashMap::new(),
            },
        );
        Ok(())
    }

    /// Hands each shard the group's partitions it owns, from their durable state, and waits
    /// until every shard serves it (every shard serves every group: a consume goes to all).
    fn load_on_shards(&self, key: &GroupKey, stored: &Arc<StoredGroup>) -> Result<(), GroupError> {
        let n = self.shard_count();
        let mut waits = Vec::new();
        let mut committed = Vec::new();
        for shard in 0..n {
            let (reply, rx) = bounded(1);
            let cmd = GroupCmd::Load {
                key: key.clone(),
                stored: Arc::clone(stored),
                reply,
            };
            self.send_to_shard(shard, Command::Group(cmd))?;
            waits.push(rx);
        }
        for rx in waits {
            committed.extend(crate::reply::wait_reply(&rx).map_err(|_| GroupError::ShuttingDown)??);
        }
        committed.sort_unstable();
        log::info!(
            "group {:?} on {}: loaded, committed offsets {:?}",
            key.0,
            key.1,
            committed.iter().map(|(_, c)| *c).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Stores a new group's slots (each with its starting offset) and makes them durable, each
    /// by the shard owning its table.
    fn write_new_slots(&self, slots: &[(SlotRef, u64)]) -> Result<(), GroupError> {
        let n = self.shard_count();
        let mut waits = Vec::new();
        for shard in 0..n {
            let mine: Vec<(SlotRef, u64)> = slots
                .iter()
                .copied()
                .filter(|(s, _)| s.table % n == shard)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (reply, rx) = bounded(1);
            let cmd = GroupCmd::WriteSlots { slots: mine, reply };
            self.send_to_shard(shard, Command::Group(cmd))?;
            waits.push(rx);
        }
        for rx in waits {
            crate::reply::wait_reply(&rx).map_err(|_| GroupError::ShuttingDown)??;
        }
        Ok(())
    }

    /// Where a new group starts in each partition.
    fn start_offsets(
        &self,
        topic: &str,
        partitions: u32,
        start: GroupStart,
    ) -> Result<Vec<u64>, GroupError> {
        (0..partitions)
            .map(|p| {
                let bounds = self.log_bounds(topic, p)?;
                Ok(match start {
                    GroupStart::Earliest => 0,
                    GroupStart::Latest => bounds.end,
                    GroupStart::Offset(o) => o.min(bounds.end),
                    GroupStart::Timestamp(ts) => self
                        .offset_at_time(topic, p, ts)?
                        .map_or(bounds.end, |(offset, _)| offset),
                })
            })
            .collect()
    }

    /// Leaves a group: what the member holds is redelivered.
    pub fn leave_group(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
    ) -> Result<(), GroupError> {
        let groups = self.groups()?;
        let key = key_of(group, topic);
        let removed = groups
            .loaded()
            .get_mut(&key)
            .and_then(|g| g.members.remove(&member));
        match removed {
            Some(m) if m.leave() => {
                self.tell_shards(|| GroupCmd::Left {
                    key: key.clone(),
                    member,
                });
                log::info!("group {group:?} on {topic}: member {member} left");
                Ok(())
            }
            _ => Err(GroupError::UnknownMember {
                group: group.to_string(),
                member,
            }),
        }
    }

    /// Renews a member's session.
    pub fn heartbeat(&self, group: &str, topic: &str, member: MemberId) -> Result<(), GroupError> {
        let m = self
            .groups()?
            .member(&key_of(group, topic), member)
            .ok_or_else(|| GroupError::UnknownMember {
                group: group.to_string(),
                member,
            })?;
        m.touch(crate::clock::now());
        Ok(())
    }

    /// The members that joined on connection `conn` leave (it closed).
    pub fn connection_closed(&self, conn: u64) {
        let Ok(groups) = self.groups() else {
            return;
        };
        let mut gone = Vec::new();
        for (key, g) in groups.loaded().iter_mut() {
            g.members.retain(|&id, m| {
                if m.conn != conn {
                    return true;
                }
                if m.leave() {
                    gone.push((key.clone(), id));
                }
                false
            });
        }
        for (key, member) in gone {
            log::info!(
                "group {:?} on {}: member {member} left (its connection closed)",
                key.0,
                key.1
            );
            self.tell_shards(|| GroupCmd::Left {
                key: key.clone(),
                member,
            });
        }
    }

    /// Hands `member` messages of the group's partitions within `limits`, partitions taking
    /// turns, waiting for the first until `limits.until` if none is there. `ticket` is
    /// answered with [`Answer::Consumed`].
    pub fn consume(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
        limits: ConsumeLimits,
        ticket: Ticket,
    ) {
        let ticket = ticket.taken_for(Kind::Consume);
        let done: ConsumeDone = Box::new(move |r| ticket.answer(Answer::Consumed(r)));
        let Ok(groups) = self.groups() else {
            return done(Err(GroupError::ShuttingDown));
        };
        let n = self.shard_count();
        let gather =
            ConsumeGather::new(limits.max_messages, limits.max_bytes, n, limits.until, done);
        // Shards take turns being first, so one partition's shard does not always fill the
        // answers; each hands the request on while the answer has room.
        let first = groups.consume_turn.fetch_add(1, Ordering::Relaxed) % n;
        let chain: Vec<usize> = (1..n).map(|i| (first + i) % n).collect();
        let cmd = GroupCmd::Consume {
            key: key_of(group, topic),
            member,
            gather,
            chain,
        };
        if let Err(crossbeam_channel::SendError(Command::Group(cmd))) =
            self.send_to_shard_or_return(first, Command::Group(cmd))
        {
            cmd.refuse(&GroupError::ShuttingDown);
        }
    }

    /// Acknowledges spans `(partition, first, last)`; `ticket` is answered with
    /// [`Answer::Settled`], with `durable` only once the acknowledgements are durable.
    pub fn ack(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
        spans: &[Span],
        durable: bool,
        ticket: Ticket,
    ) {
        let key = key_of(group, topic);
        self.per_shard(&key.1, spans, settled(ticket), |spans, done| {
            GroupCmd::Ack {
                key: key.clone(),
                member,
                spans,
                durable,
                done,
            }
        });
    }

    /// Gives spans back for redelivery after `delay`; `ticket` is answered with
    /// [`Answer::Settled`].
    pub fn nack(
        &self,
        group: &str,
        topic: &str,
        member: MemberId,
        spans: &[Span],
        delay: Duration,
        ticket: Ticket,
    ) {
        let key = key_of(group, topic);
        self.per_shard(&key.1, spans, settled(ticket), |spans, done| {
            GroupCmd::Nack {
                key: key.clone(),
                member,
                spans,
                delay,
                done,
            }
        });
    }

    /// Sends each shard owning a partition the spans name its part (a request naming none goes
    /// to one shard, which checks the member), answering once through `done`.
    fn per_shard(
        &self,
        topic: &str,
        spans: &[Span],
        done: GroupDone,
        make: impl Fn(Vec<Span>, Arc<Countdown>) -> GroupCmd,
    ) {
        let n = self.shard_count();
        let mut by_shard: Vec<Vec<Span>> = vec![Vec::new(); n];
        for &s in spans {
            by_shard[shard_for(topic, s.0, n)].push(s);
        }
        let mut parts: Vec<(usize, Vec<Span>)> = by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .collect();
        if parts.is_empty() {
            parts.push((shard_for(topic, 0, n), Vec::new()));
        }
        let countdown = Countdown::new(parts.len(), done);
        for (shard, spans) in parts {
            let cmd = make(spans, Arc::clone(&countdown));
            if let Err(e) = self.send_to_shard(shard, Command::Group(cmd)) {
                countdown.part_done(Err(e.into()));
            }
        }
    }

    /// What metrics show of every group served since the engine started, by name.
    pub fn group_metrics(&self) -> Vec<GroupMetrics> {
        let Ok(groups) = self.groups() else {
            return Vec::new();
        };
        let mut replies = Vec::new();
        for shard in 0..self.shard_count() {
            let (reply, rx) = bounded(1);
            if self
                .send_to_shard(shard, Command::Group(GroupCmd::Metrics { reply }))
                .is_ok()
            {
                replies.push(rx);
            }
        }
        let mut by_group: HashMap<GroupKey, Vec<GroupPartitionMetrics>> = groups
            .loaded()
            .keys()
            .map(|k| (k.clone(), Vec::new()))
            .collect();
        for rx in replies {
            for m in crate::reply::wait_reply(&rx).unwrap_or_default() {
                by_group.entry(m.key.clone()).or_default().push(m);
            }
        }
        let loaded = groups.loaded();
        let mut out: Vec<GroupMetrics> = by_group
            .into_iter()
            .map(|(key, mut partitions)| {
                partitions.sort_by_key(|m| m.partition);
                GroupMetrics {
                    members: loaded
                        .get(&key)
                        .map_or(0, |g| g.members.values().filter(|m| !m.is_gone()).count()),
                    group: key.0.to_string(),
                    topic: key.1.to_string(),
                    partitions,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
        out
    }

    /// Groups held offline because their metadata is damaged.
    pub fn groups_offline(&self) -> usize {
        self.groups().map_or(0, |g| g.store.offline_count())
    }

    /// Sends every shard the command `make` makes (members joining and leaving; no answer).
    fn tell_shards(&self, make: impl Fn() -> GroupCmd) {
        for shard in 0..self.shard_count() {
            let _ = self.send_to_shard(shard, Command::Group(make()));
        }
    }
}

fn settled(ticket: Ticket) -> GroupDone {
    let ticket = ticket.taken_for(Kind::Settle);
    Box::new(move |r| ticket.answer(Answer::Settled(r)))
}
