//! Kafka's classic consumer groups: membership and rebalances (the client-side assignment
//! protocol), kept in memory; the offsets they commit are the engine's (`Engine::commit_offsets`,
//! durable).
//!
//! A rebalance: a member joins (or leaves, or its session runs out), the group waits until
//! every member it knows has joined again or the longest rebalance timeout passes (members that
//! did not rejoin are dropped), then starts a new generation with a leader, who computes the
//! assignment and sends it with its SyncGroup; every member's SyncGroup is answered with its
//! part. A JoinGroup or SyncGroup waits on the connection's own thread, so waiting blocks no
//! one else. Sessions are checked whenever the group is touched and while anyone waits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError as K;

/// Groups held at most; a join to a new group beyond it is refused.
pub const GROUPS_MAX: usize = 10_000;
/// Members one group holds at most.
pub const MEMBERS_MAX: usize = 1000;
/// How often a waiting join or sync looks at sessions and deadlines.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// Session timeouts accepted (Kafka's broker defaults: 6 s to 30 min).
const SESSION_MIN: Duration = Duration::from_millis(1000);
const SESSION_MAX: Duration = Duration::from_secs(30 * 60);
/// Longest rebalance timeout honoured.
const REBALANCE_MAX: Duration = Duration::from_secs(5 * 60);

/// Where a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// No members.
    #[default]
    Empty,
    /// Waiting for its members to join again.
    PreparingRebalance,
    /// A new generation, waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl Phase {
    /// Kafka's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// A join request, as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct Join {
    /// Empty for a new member.
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
}

/// What a join is answered.
#[derive(Debug, Clone, Default)]
pub struct Joined {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// (member id, metadata of the chosen protocol): the leader's only.
    pub members: Vec<(String, Bytes)>,
}

/// A member, as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group, as DescribeGroups and ListGroups show it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub phase: Phase,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberView>,
}

struct Member {
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    last_heard: Instant,
    /// Joined the rebalance under way.
    joined: bool,
    /// Its answer, once the rebalance it joined completed.
    answer: Option<Joined>,
    assignment: Bytes,
}

#[derive(Default)]
struct Group {
    phase: Phase,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Option<Instant>,
}

impl Group {
    fn start_rebalance(&mut self, now: Instant) {
        if self.phase == Phase::PreparingRebalance {
            return;
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.phase = Phase::PreparingRebalance;
        self.rebalance_deadline = Some(now + longest);
        for m in self.members.values_mut() {
            m.joined = false;
            m.answer = None;
        }
    }

    /// Drops members whose session ran out (not those waiting in a join); starts a rebalance
    /// if any went.
    fn expire(&mut self, now: Instant) {
        let before = self.members.len();
        self.members
            .retain(|_, m| m.joined || now.duration_since(m.last_heard) <= m.session_timeout);
        if self.members.len() < before {
            self.after_departure(now);
        }
    }

    fn after_departure(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader.clear();
            self.rebalance_deadline = None;
        } else {
            self.start_rebalance(now);
        }
    }

    /// Completes the rebalance under way if every member joined or its deadline passed.
    fn try_complete(&mut self, now: Instant) -> bool {
        if self.phase != Phase::PreparingRebalance {
            return false;
        }
        let all = self.members.values().all(|m| m.joined);
        let late = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !all && !late {
            return false;
        }
        self.members.retain(|_, m| m.joined);
        if self.members.is_empty() {
            self.after_departure(now);
            return true;
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        // The first protocol of the leader's that every member supports.
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        let protocol = self.members.get(&self.leader).and_then(|leader| {
            leader
                .protocols
                .iter()
                .map(|(name, _)| name)
                .find(|name| {
                    self.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
                })
                .cloned()
        });
        self.protocol = protocol.unwrap_or_default();
        let metadata: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == self.protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), meta)
            })
            .collect();
        for (id, m) in &mut self.members {
            m.joined = false;
            m.assignment = Bytes::new();
            m.last_heard = now;
            m.answer = Some(Joined {
                error: 0,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                leader: self.leader.clone(),
                member_id: id.clone(),
                members: if *id == self.leader {
                    metadata.clone()
                } else {
                    Vec::new()
                },
            });
        }
        self.phase = Phase::CompletingRebalance;
        self.rebalance_deadline = None;
        true
    }

    /// The error for a request of `member` at `generation`, if any.
    fn check(&self, member: &str, generation: i32) -> Option<i16> {
        if !self.members.contains_key(member) {
            return Some(K::UnknownMemberId.code());
        }
        if generation != self.generation {
            return Some(K::IllegalGeneration.code());
        }
        None
    }
}

/// Every classic group's membership.
#[derive(Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    changed: Condvar,
    last_member: AtomicU64,
}

impl Coordinator {
    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        // Every change leaves the maps whole: consistent after a panic.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins `group` (creating it), waiting for the rebalance to complete.
    pub fn join(&self, group: &str, join: Join) -> Joined {
        let refuse = |error: i16, member_id: &str| Joined {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..Joined::default()
        };
        if join.protocols.is_empty() || join.protocol_type.is_empty() {
            return refuse(K::InconsistentGroupProtocol.code(), &join.member_id);
        }
        if !(SESSION_MIN..=SESSION_MAX).contains(&join.session_timeout) {
            return refuse(K::InvalidSessionTimeout.code(), &join.member_id);
        }
        let now = Instant::now();
        let mut groups = self.groups();
        if !groups.contains_key(group) && groups.len() >= GROUPS_MAX {
            return refuse(K::GroupMaxSizeReached.code(), &join.member_id);
        }
        let g = groups.entry(group.to_string()).or_default();
        g.expire(now);
        if !g.members.is_empty() {
            let shares_one = join.protocols.iter().any(|(name, _)| {
                g.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
            if join.protocol_type != g.protocol_type || !shares_one {
                return refuse(K::InconsistentGroupProtocol.code(), &join.member_id);
            }
        }
        let id = if join.member_id.is_empty() {
            if g.members.len() >= MEMBERS_MAX {
                return refuse(K::GroupMaxSizeReached.code(), "");
            }
            let n = self.last_member.fetch_add(1, Ordering::Relaxed) + 1;
            format!("{}-{n}", join.client_id)
        } else if g.members.contains_key(&join.member_id) {
            join.member_id.clone()
        } else {
            return refuse(K::UnknownMemberId.code(), &join.member_id);
        };
        g.protocol_type = join.protocol_type.clone();
        g.members.insert(
            id.clone(),
            Member {
                client_id: join.client_id,
                client_host: join.client_host,
                session_timeout: join.session_timeout,
                rebalance_timeout: join.rebalance_timeout.min(REBALANCE_MAX),
                protocols: join.protocols,
                last_heard: now,
                joined: false,
                answer: None,
                assignment: Bytes::new(),
            },
        );
        g.start_rebalance(now);
        if let Some(m) = g.members.get_mut(&id) {
            m.joined = true;
        }
        self.changed.notify_all();
        loop {
            let now = Instant::now();
            let Some(g) = groups.get_mut(group) else {
                return refuse(K::UnknownMemberId.code(), &id);
            };
            if g.try_complete(now) {
                self.changed.notify_all();
            }
            let Some(m) = g.members.get_mut(&id) else {
                return refuse(K::UnknownMemberId.code(), &id);
            };
            if let Some(answer) = m.answer.take() {
                return answer;
            }
            g.expire(now);
            groups = self.wait(groups);
        }
    }

    /// The leader's assignment (or a follower's wait for it): `member`'s part.
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, i16> {
        let mut groups = self.groups();
        let now = Instant::now();
        let Some(g) = groups.get_mut(group) else {
            return Err(K::UnknownMemberId.code());
        };
        g.expire(now);
        if let Some(e) = g.check(member, generation) {
            return Err(e);
        }
        if g.phase == Phase::PreparingRebalance {
            return Err(K::RebalanceInProgress.code());
        }
        let session = g.members.get(member).map(|m| m.session_timeout);
        if let Some(m) = g.members.get_mut(member) {
            m.last_heard = now;
        }
        if g.leader == member && g.phase == Phase::CompletingRebalance {
            for (id, assignment) in assignments {
                if let Some(m) = g.members.get_mut(&id) {
                    m.assignment = assignment;
                }
            }
            g.phase = Phase::Stable;
            self.changed.notify_all();
        }
        let deadline = now + session.unwrap_or(SESSION_MIN);
        loop {
            let Some(g) = groups.get_mut(group) else {
                return Err(K::UnknownMemberId.code());
            };
            if let Some(e) = g.check(member, generation) {
                return Err(e);
            }
            match g.phase {
                Phase::Stable => {
                    return Ok(g
                        .members
                        .get(member)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default())
                }
                Phase::CompletingRebalance if Instant::now() < deadline => {}
                _ => return Err(K::RebalanceInProgress.code()),
            }
            groups = self.wait(groups);
        }
    }

    /// A member's heartbeat: whether it must join again.
    pub fn heartbeat(&self, group: &str, member: &str, generation: i32) -> i16 {
        let mut groups = self.groups();
        let now = Instant::now();
        let Some(g) = groups.get_mut(group) else {
            return K::UnknownMemberId.code();
        };
        g.expire(now);
        if let Some(e) = g.check(member, generation) {
            return e;
        }
        if let Some(m) = g.members.get_mut(member) {
            m.last_heard = now;
        }
        match g.phase {
            Phase::PreparingRebalance => K::RebalanceInProgress.code(),
            _ => 0,
        }
    }

    /// Members leave; each one's error (0 when it left).
    pub fn leave(&self, group: &str, members: &[String]) -> Vec<i16> {
        let mut groups = self.groups();
        let now = Instant::now();
        let Some(g) = groups.get_mut(group) else {
            return vec![K::UnknownMemberId.code(); members.len()];
        };
        let errors = members
            .iter()
            .map(|m| match g.members.remove(m) {
                Some(_) => 0,
                None => K::UnknownMemberId.code(),
            })
            .collect::<Vec<_>>();
        if errors.contains(&0) {
            g.after_departure(now);
            self.changed.notify_all();
        }
        errors
    }

    /// Whether `member` of `group` at `generation` may commit offsets: `None` if so. A commit
    /// from outside any group (generation -1, no member) is allowed while the group has no
    /// members.
    pub fn may_commit(&self, group: &str, member: &str, generation: i32) -> Option<i16> {
        let mut groups = self.groups();
        let now = Instant::now();
        let Some(g) = groups.get_mut(group) else {
            return (generation >= 0).then(|| K::IllegalGeneration.code());
        };
        g.expire(now);
        if generation < 0 && member.is_empty() {
            return (!g.members.is_empty()).then(|| K::UnknownMemberId.code());
        }
        if let Some(e) = g.check(member, generation) {
            return Some(e);
        }
        if let Some(m) = g.members.get_mut(member) {
            m.last_heard = now;
        }
        (g.phase == Phase::PreparingRebalance).then(|| K::RebalanceInProgress.code())
    }

    /// A group's state, if the coordinator holds it.
    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let mut groups = self.groups();
        let g = groups.get_mut(group)?;
        g.expire(Instant::now());
        Some(GroupView {
            phase: g.phase,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == g.protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group held, with its phase and protocol type.
    pub fn list(&self) -> Vec<(String, Phase, String)> {
        self.groups()
            .iter()
            .map(|(name, g)| (name.clone(), g.phase, g.protocol_type.clone()))
            .collect()
    }

    fn wait<'a>(
        &'a self,
        groups: MutexGuard<'a, HashMap<String, Group>>,
    ) -> MutexGuard<'a, HashMap<String, Group>> {
        self.changed
            .wait_timeout(groups, LOOK_EVERY)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn join(member_id: &str, client: &str) -> Join {
        Join {
            member_id: member_id.into(),
            client_id: client.into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(5),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
        }
    }

    #[test]
    fn a_lone_member_leads_its_generation_and_gets_its_assignment() {
        let c = Coordinator::default();
        let j = c.join("g", join("", "a"));
        assert_eq!(j.error, 0);
        assert_eq!(j.generation, 1);
        assert_eq!(j.leader, j.member_id);
        assert_eq!(j.protocol, "range");
        assert_eq!(j.members.len(), 1, "the leader sees every member");
        let mine = Bytes::from_static(b"p0,p1");
        let got = c
            .sync(
                "g",
                &j.member_id,
                1,
                vec![(j.member_id.clone(), mine.clone())],
            )
            .unwrap();
        assert_eq!(got, mine);
        assert_eq!(c.heartbeat("g", &j.member_id, 1), 0);
        assert_eq!(
            c.heartbeat("g", &j.member_id, 0),
            K::IllegalGeneration.code()
        );
        assert_eq!(c.heartbeat("g", "nobody", 1), K::UnknownMemberId.code());
    }

    #[test]
    fn a_second_member_makes_the_first_rejoin_and_both_get_their_parts() {
        let c = Arc::new(Coordinator::default());
        let first = c.join("g", join("", "a"));
        c.sync("g", &first.member_id, 1, vec![]).unwrap();
        let c2 = Arc::clone(&c);
        let second = std::thread::spawn(move || c2.join("g", join("", "b")));
        // The first learns of the rebalance from its heartbeat, and joins again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.heartbeat("g", &first.member_id, 1) != K::RebalanceInProgress.code() {
            assert!(Instant::now() < deadline, "no rebalance");
            std::thread::sleep(Duration::from_millis(5));
        }
        let again = c.join("g", join(&first.member_id, "a"));
        let second = second.join().unwrap();
        assert_eq!(again.generation, 2);
        assert_eq!(second.generation, 2);
        assert_eq!(again.leader, second.leader);
        let (leader, follower) = if again.leader == again.member_id {
            (again, second)
        } else {
            (second, again)
        };
        assert_eq!(leader.members.len(), 2);
        assert!(
            follower.members.is_empty(),
            "only the leader sees the members"
        );
        let c3 = Arc::clone(&c);
        let fid = follower.member_id.clone();
        let waiting = std::thread::spawn(move || c3.sync("g", &fid, 2, vec![]));
        let parts = vec![
            (leader.member_id.clone(), Bytes::from_static(b"L")),
            (follower.member_id.clone(), Bytes::from_static(b"F")),
        ];
        assert_eq!(c.sync("g", &leader.member_id, 2, parts).unwrap(), "L");
        assert_eq!(waiting.join().unwrap().unwrap(), "F");
    }

    #[test]
    fn a_member_that_leaves_or_goes_silent_is_dropped() {
        let c = Coordinator::default();
        let mut quick = join("", "a");
        quick.session_timeout = SESSION_MIN;
        let a = c.join("g", quick);
        c.sync("g", &a.member_id, 1, vec![]).unwrap();
        std::thread::sleep(SESSION_MIN + Duration::from_millis(100));
        let view = c.describe("g").unwrap();
        assert!(view.members.is_empty(), "its session ran out");
        assert_eq!(view.phase, Phase::Empty);
        let b = c.join("g", join("", "b"));
        assert_eq!(c.leave("g", std::slice::from_ref(&b.member_id)), vec![0]);
        assert_eq!(c.describe("g").unwrap().phase, Phase::Empty);
        assert_eq!(
            c.leave("g", &[b.member_id]),
            vec![K::UnknownMemberId.code()]
        );
    }

    #[test]
    fn commits_are_checked_against_membership() {
        let c = Coordinator::default();
        assert_eq!(c.may_commit("g", "", -1), None, "no group: a free commit");
        let a = c.join("g", join("", "a"));
        assert_eq!(
            c.may_commit("g", "", -1),
            Some(K::UnknownMemberId.code()),
            "a group with members takes commits from its members only"
        );
        assert_eq!(c.may_commit("g", &a.member_id, 1), None);
        assert_eq!(
            c.may_commit("g", &a.member_id, 7),
            Some(K::IllegalGeneration.code())
        );
    }

    #[test]
    fn a_join_with_another_protocol_is_refused() {
        let c = Coordinator::default();
        c.join("g", join("", "a"));
        let mut other = join("", "b");
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        assert_eq!(
            c.join("g", other).error,
            K::InconsistentGroupProtocol.code()
        );
    }
}
