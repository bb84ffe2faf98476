//! The Kafka APIs served, each turned into engine calls: a produce into appends (every
//! partition's batches at once, answered once durable), a fetch into reads (a long poll when
//! nothing is there yet), and the metadata and admin requests into their engine calls.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, RequestHeader, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;
use keel_engine::ProducerIdentity;

use super::configs;
use super::errors::{admin_error, data_error};
use super::group_apis;
use super::session::{Session, Waiter};
use super::{fetch, produce};

/// This server's broker id: Keel is one node.
const NODE: i32 = 0;
/// ListOffsets' timestamps that name a position, not a time.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// The versions of an API this listener serves.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    min: i16,
    max: i16,
}

impl Served {
    /// Whether `version` is served.
    pub fn contains(self, version: i16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// Every API served and its versions. Produce and Fetch stop before the versions that name
/// topics by id only (13), which Keel does not give.
const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
];

/// The versions of `api` served; `None` for an API not served.
pub fn served(api: ApiKey) -> Option<Served> {
    SERVED
        .iter()
        .find(|(a, _, _)| *a == api)
        .map(|&(_, min, max)| Served { min, max })
}

/// An answer to one request.
pub struct Answer {
    /// The request's API.
    pub api: ApiKey,
    /// The version it was asked at (and is answered at).
    pub version: i16,
    /// The request's correlation id.
    pub correlation_id: i32,
    /// The response.
    pub body: ResponseKind,
}

/// The versions served, as ApiVersions gives them.
fn api_keys() -> Vec<ApiVersion> {
    SERVED
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// The answer to an ApiVersions request at a version not served: v0, with the error and the
/// versions served.
pub fn api_versions_unsupported(correlation_id: i32) -> Answer {
    Answer {
        api: ApiKey::ApiVersions,
        version: 0,
        correlation_id,
        body: ResponseKind::ApiVersions(
            ApiVersionsResponse::default()
                .with_error_code(K::UnsupportedVersion.code())
                .with_api_keys(api_keys()),
        ),
    }
}

/// Which request an answer answers.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    api: ApiKey,
    version: i16,
    correlation_id: i32,
}

impl Head {
    fn answer(self, body: ResponseKind) -> Answer {
        Answer {
            api: self.api,
            version: self.version,
            correlation_id: self.correlation_id,
            body,
        }
    }
}

/// A request handled by the reader, its answer ready or to come.
pub enum Pending {
    /// Answered already.
    Ready(Box<Answer>),
    /// A produce in the engine's hands.
    Produce(Head, produce::Submitted),
    /// A fetch, read on the writer in its turn.
    Fetch(Head, Box<FetchRequest>),
}

/// The answer to a pending request, once it is there (on the writer); `None` for a produce
/// with `acks=0`, which is answered with nothing.
pub fn finish(s: &Session, w: &mut Waiter, pending: Pending) -> Option<Answer> {
    match pending {
        Pending::Ready(answer) => Some(*answer),
        Pending::Produce(head, submitted) => {
            let silent = submitted.silent;
            let answer = produce::answer(w, submitted);
            (!silent).then(|| head.answer(ResponseKind::Produce(answer)))
        }
        Pending::Fetch(head, r) => Some(head.answer(ResponseKind::Fetch(fetch::answer(s, w, *r)))),
    }
}

/// Handles one request on the reader: answered at once, or handed on to the writer. `None`
/// for a request that reached no handler (`served` lets none through).
pub fn handle(s: &Session, header: &RequestHeader, request: RequestKind) -> Option<Pending> {
    let head = Head {
        api: ApiKey::try_from(header.request_api_key).ok()?,
        version: header.request_api_version,
        correlation_id: header.correlation_id,
    };
    let body = match request {
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(ApiVersionsResponse::default().with_api_keys(api_keys()))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata(s, r)),
        RequestKind::Produce(r) => return Some(Pending::Produce(head, produce::submit(s, r))),
        RequestKind::Fetch(r) => return Some(Pending::Fetch(head, Box::new(r))),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets(s, r)),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(create_topics(s, r)),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(delete_topics(s, r)),
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(init_producer_id(s, &r)),
        RequestKind::FindCoordinator(r) => {
            let version = header.request_api_version;
            ResponseKind::FindCoordinator(group_apis::find_coordinator(s, &r, version))
        }
        RequestKind::JoinGroup(r) => {
            let client = header.client_id.as_ref().map(|c| c.to_string());
            let client = client.unwrap_or_default();
            ResponseKind::JoinGroup(group_apis::join_group(s, r, &client))
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(group_apis::sync_group(s, r)),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(group_apis::heartbeat(s, &r)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(group_apis::leave_group(s, &r)),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(group_apis::offset_commit(s, &r))
        }
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(group_apis::offset_fetch(s, &r)),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(group_apis::list_groups(s, &r)),
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(s, &r))
        }
        RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(configs::alter_configs(s, &r)),
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(configs::incremental_alter_configs(s, &r))
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(group_apis::describe_groups(s, &r))
        }
        other => {
            // `served` lets through only the requests above.
            log::error!("Kafka request {other:?} reached no handler");
            return None;
        }
    };
    Some(Pending::Ready(Box::new(head.answer(body))))
}

fn name(topic: &TopicName) -> &str {
    &topic.0
}

/// `name` as Kafka's messages carry it.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn metadata(s: &Session, r: MetadataRequest) -> MetadataResponse {
    let wanted: Vec<String> = match r.topics {
        None => s.engine.list_topics().into_iter().map(|(n, _)| n).collect(),
        Some(topics) => topics
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|topic| {
            let t = MetadataResponseTopic::default().with_name(Some(topic_name(&topic)));
            match s.engine.partitions(&topic) {
                Ok(n) => t.with_partitions(
                    (0..n)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p as i32)
                                .with_leader_id(BrokerId(NODE))
                                // No epochs: clients then skip leader-epoch validation, an API
                                // a single node has no use for.
                                .with_leader_epoch(-1)
                                .with_replica_nodes(vec![BrokerId(NODE)])
                                .with_isr_nodes(vec![BrokerId(NODE)])
                        })
                        .collect(),
                ),
                Err(e) => t.with_error_code(data_error(&e)),
            }
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE))
            .with_host(StrBytes::from_string(s.advertised.ip().to_string()))
            .with_port(i32::from(s.advertised.port()))])
        .with_cluster_id(Some(StrBytes::from_static_str("keel")))
        .with_controller_id(BrokerId(NODE))
        .with_topics(topics)
}

fn list_offsets(s: &Session, r: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_leader_epoch(-1);
                    let Ok(partition) = u32::try_from(p.partition_index) else {
                        return answer.with_error_code(K::UnknownTopicOrPartition.code());
                    };
                    let bounds = match s.engine.log_bounds(name(&t.name), partition) {
                        Ok(b) => b,
                        Err(e) => return answer.with_error_code(data_error(&e)).with_offset(-1),
                    };
                    match p.timestamp {
                        LATEST => answer.with_offset(bounds.end as i64),
                        EARLIEST => answer.with_offset(bounds.start as i64),
                        ts if ts >= 0 => {
                            match s.engine.offset_at_time(name(&t.name), partition, ts) {
                                Ok(Some((offset, at))) => {
                                    answer.with_offset(offset as i64).with_timestamp(at)
                                }
                                // Kafka's answer when no record is that late.
                                Ok(None) => answer.with_offset(-1),
                                Err(e) => answer.with_error_code(data_error(&e)).with_offset(-1),
                            }
                        }
                        _ => answer
                            .with_error_code(K::InvalidRequest.code())
                            .with_offset(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn create_topics(s: &Session, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let topic = name(&t.name);
            let partitions = if t.num_partitions == -1 {
                1
            } else {
                t.num_partitions
            };
            let answer = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(partitions)
                .with_replication_factor(1);
            let refuse = |code: i16, why: String| {
                log::info!("Kafka CreateTopics {topic:?} refused: {why}");
                answer
                    .clone()
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(why)))
            };
            if !matches!(t.replication_factor, -1 | 1) {
                return refuse(
                    K::InvalidReplicationFactor.code(),
                    format!(
                        "replication factor {} asked; Keel is one node (1, or -1 for the default)",
                        t.replication_factor
                    ),
                );
            }
            let Ok(partitions) = u32::try_from(partitions) else {
                return refuse(
                    K::InvalidPartitions.code(),
                    format!("{partitions} partitions"),
                );
            };
            if r.validate_only {
                return answer;
            }
            match s.engine.create_topic(topic, partitions) {
                Ok(()) => {
                    log::info!("created topic {topic:?} with {partitions} partitions (Kafka)");
                    answer
                }
                Err(e) => refuse(admin_error(&e), e.to_string()),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn delete_topics(s: &Session, r: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let names = r
        .topic_names
        .iter()
        .cloned()
        .chain(r.topics.iter().filter_map(|t| t.name.clone()));
    let responses = names
        .map(|t| {
            let answer = DeletableTopicResult::default().with_name(Some(t.clone()));
            match s.engine.delete_topic(name(&t)) {
                Ok(()) => {
                    log::info!("deleted topic {:?} (Kafka)", name(&t));
                    answer
                }
                Err(e) => answer
                    .with_error_code(admin_error(&e))
                    .with_error_message(Some(StrBytes::from_string(e.to_string()))),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

fn init_producer_id(s: &Session, r: &InitProducerIdRequest) -> InitProducerIdResponse {
    let answer = InitProducerIdResponse::default();
    if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        log::warn!(
            "a Kafka client asked for a transactional producer: transactions are not supported"
        );
        return answer
            .with_error_code(K::UnsupportedVersion.code())
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
    }
    let current = (r.producer_id.0 >= 0).then_some(ProducerIdentity {
        id: r.producer_id.0,
        epoch: r.producer_epoch,
    });
    match s.engine.init_producer(current) {
        Ok(p) => answer
            .with_producer_id(p.id.into())
            .with_producer_epoch(p.epoch),
        Err(e) => answer
            .with_error_code(admin_error(&e))
            .with_producer_id((-1).into())
            .with_producer_epoch(-1),
    }
}
