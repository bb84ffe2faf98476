//! The classic consumer-group APIs: FindCoordinator (this node), JoinGroup, SyncGroup,
//! Heartbeat and LeaveGroup (the coordinator, `coordinator.rs`), OffsetCommit and OffsetFetch
//! (the engine's durable committed offsets), ListGroups and DescribeGroups.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as Found;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;
use keel_engine::CommittedOffset;

use super::coordinator::{Join, Phase};
use super::errors::admin_error;
use super::session::Session;

fn text(s: &StrBytes) -> String {
    s.to_string()
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn find_coordinator(
    s: &Session,
    r: &FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let host = str_bytes(&s.advertised.ip().to_string());
    let port = i32::from(s.advertised.port());
    // Group coordinators only (key type 0); transactions have none.
    let error = if r.key_type == 0 {
        0
    } else {
        K::CoordinatorNotAvailable.code()
    };
    // v4 on asks for several keys at once and is answered with a list only.
    if version >= 4 {
        let coordinators = r
            .coordinator_keys
            .iter()
            .map(|key| {
                Found::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(0))
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(error)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_node_id(BrokerId(0))
        .with_host(host)
        .with_port(port)
}

pub fn join_group(s: &Session, r: JoinGroupRequest, client_id: &str) -> JoinGroupResponse {
    let ms = |v: i32| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    // v0 has no rebalance timeout: the session timeout stands in, as in Kafka.
    let rebalance = if r.rebalance_timeout_ms > 0 {
        r.rebalance_timeout_ms
    } else {
        r.session_timeout_ms
    };
    let joined = s.coordinator.join(
        &r.group_id.0,
        Join {
            member_id: text(&r.member_id),
            client_id: client_id.to_string(),
            client_host: format!("/{}", s.peer.ip()),
            session_timeout: ms(r.session_timeout_ms),
            rebalance_timeout: ms(rebalance),
            protocol_type: text(&r.protocol_type),
            protocols: r
                .protocols
                .into_iter()
                .map(|p| (text(&p.name), p.metadata))
                .collect(),
        },
    );
    JoinGroupResponse::default()
        .with_error_code(joined.error)
        .with_generation_id(joined.generation)
        .with_protocol_type(Some(str_bytes(&joined.protocol_type)))
        .with_protocol_name(Some(str_bytes(&joined.protocol)))
        .with_leader(str_bytes(&joined.leader))
        .with_member_id(str_bytes(&joined.member_id))
        .with_members(
            joined
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&id))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

pub fn sync_group(s: &Session, r: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = r
        .assignments
        .into_iter()
        .map(|a| (text(&a.member_id), a.assignment))
        .collect();
    let answer = SyncGroupResponse::default()
        .with_protocol_type(r.protocol_type)
        .with_protocol_name(r.protocol_name);
    match s.coordinator.sync(
        &r.group_id.0,
        &text(&r.member_id),
        r.generation_id,
        assignments,
    ) {
        Ok(assignment) => answer.with_assignment(assignment),
        Err(code) => answer.with_error_code(code).with_assignment(Bytes::new()),
    }
}

pub fn heartbeat(s: &Session, r: &HeartbeatRequest) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(s.coordinator.heartbeat(
        &r.group_id.0,
        &text(&r.member_id),
        r.generation_id,
    ))
}

pub fn leave_group(s: &Session, r: &LeaveGroupRequest) -> LeaveGroupResponse {
    // v0–2 name one member; v3 on, a list.
    let ids: Vec<String> = if r.members.is_empty() {
        vec![text(&r.member_id)]
    } else {
        r.members.iter().map(|m| text(&m.member_id)).collect()
    };
    let errors = s.coordinator.leave(&r.group_id.0, &ids);
    if r.members.is_empty() {
        return LeaveGroupResponse::default().with_error_code(errors.first().copied().unwrap_or(0));
    }
    LeaveGroupResponse::default().with_members(
        ids.iter()
            .zip(&errors)
            .map(|(id, e)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(id))
                    .with_error_code(*e)
            })
            .collect(),
    )
}

pub fn offset_commit(s: &Session, r: &OffsetCommitRequest) -> OffsetCommitResponse {
    let group = &r.group_id.0;
    let refused =
        s.coordinator
            .may_commit(group, &text(&r.member_id), r.generation_id_or_member_epoch);
    let mut offsets = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            if let Ok(partition) = u32::try_from(p.partition_index) {
                offsets.push((
                    t.name.0.to_string(),
                    partition,
                    CommittedOffset {
                        offset: p.committed_offset,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    },
                ));
            }
        }
    }
    let error = match refused {
        Some(code) => code,
        None => match s.engine.commit_offsets(group, &offsets) {
            Ok(()) => 0,
            Err(e) => {
                log::warn!("Kafka group {group:?}: commit failed: {e}");
                admin_error(&e)
            }
        },
    };
    let topics = r
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let code = if p.partition_index < 0 {
                                K::UnknownTopicOrPartition.code()
                            } else {
                                error
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub fn offset_fetch(s: &Session, r: &OffsetFetchRequest) -> OffsetFetchResponse {
    let group = &r.group_id.0;
    let committed = match s.engine.committed_offsets(group) {
        Ok(c) => c,
        Err(e) => return OffsetFetchResponse::default().with_error_code(admin_error(&e)),
    };
    // Topics asked for, or (null) every topic the group committed for.
    let asked: Vec<(String, Vec<i32>)> = match &r.topics {
        Some(topics) => topics
            .iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect(),
        None => {
            let mut all: Vec<(String, Vec<i32>)> = Vec::new();
            for (topic, partition) in committed.keys() {
                let p = i32::try_from(*partition).unwrap_or(i32::MAX);
                match all.iter_mut().find(|(t, _)| t == topic) {
                    Some((_, ps)) => ps.push(p),
                    None => all.push((topic.clone(), vec![p])),
                }
            }
            all
        }
    };
    let topics = asked
        .into_iter()
        .map(|(topic, partitions)| {
            let parts = partitions
                .iter()
                .map(|&p| {
                    let found = u32::try_from(p)
                        .ok()
                        .and_then(|p| committed.get(&(topic.clone(), p)));
                    let answer = OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_leader_epoch(-1);
                    match found {
                        Some(c) => answer
                            .with_committed_offset(c.offset)
                            .with_metadata(Some(str_bytes(&c.metadata))),
                        None => answer
                            .with_committed_offset(-1)
                            .with_metadata(Some(StrBytes::default())),
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(super::apis::topic_name(&topic))
                .with_partitions(parts)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

pub fn list_groups(s: &Session, r: &ListGroupsRequest) -> ListGroupsResponse {
    let mut groups: Vec<(String, Phase, String)> = s.coordinator.list();
    // Groups that committed offsets but have no members now are Empty.
    match s.engine.committed_groups() {
        Ok(committed) => {
            for g in committed {
                if !groups.iter().any(|(name, _, _)| *name == g) {
                    groups.push((g, Phase::Empty, "consumer".into()));
                }
            }
        }
        Err(e) => return ListGroupsResponse::default().with_error_code(admin_error(&e)),
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let listed = groups
        .into_iter()
        .filter(|(_, phase, _)| {
            r.states_filter.is_empty() || r.states_filter.iter().any(|s| **s == *phase.name())
        })
        .map(|(name, phase, protocol_type)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&name)))
                .with_protocol_type(str_bytes(&protocol_type))
                .with_group_state(str_bytes(phase.name()))
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

pub fn describe_groups(s: &Session, r: &DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .iter()
        .map(|g| {
            let answer = DescribedGroup::default().with_group_id(g.clone());
            match s.coordinator.describe(&g.0) {
                None => answer
                    .with_group_state(str_bytes(Phase::Empty.name()))
                    .with_protocol_type(StrBytes::default()),
                Some(view) => answer
                    .with_group_state(str_bytes(view.phase.name()))
                    .with_protocol_type(str_bytes(&view.protocol_type))
                    .with_protocol_data(str_bytes(&view.protocol))
                    .with_members(
                        view.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&m.member_id))
                                    .with_client_id(str_bytes(&m.client_id))
                                    .with_client_host(str_bytes(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
