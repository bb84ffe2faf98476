//! The Kafka APIs served, each turned into engine calls: a produce into appends (every
//! partition's batches at once, answered once durable), a fetch into reads (a long poll when
//! nothing is there yet), and the metadata and admin requests into their engine calls.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, RequestKind, ResponseKind,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;
use keel_engine::{
    Answer as EngineAnswer, CompletionQueue, DataError, Engine, ProducerIdentity, Ticket, Waker,
};

use super::configs;
use super::coordinator::Coordinator;
use super::errors::{admin_error, data_error};
use super::group_apis;

/// This server's broker id: Keel is one node.
const NODE: i32 = 0;
/// Requests of one connection waiting on the engine at once.
const IN_FLIGHT_MAX: usize = 4096;
/// Longest a request waits for the engine before its missing parts are answered as timed out
/// (the engine answers every request; this bounds a wait on a stalled disk).
const ENGINE_PATIENCE: Duration = Duration::from_secs(120);
/// Longest long poll a fetch may ask for.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(60);
/// Most record bytes one fetch answer carries, whatever the client asks.
const FETCH_ANSWER_BYTES_MAX: usize = 32 << 20;
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

/// One connection's state.
pub struct Session {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The address the client reached: the one given to it as the broker's.
    pub advertised: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
    /// The classic consumer groups' membership.
    pub coordinator: Arc<Coordinator>,
    /// Where the engine answers this connection's appends and reads.
    queue: Arc<CompletionQueue>,
    next_tag: u64,
    /// Answers arrived, not taken yet.
    arrived: HashMap<u64, EngineAnswer>,
    /// Long polls no longer waited for: their answers are dropped when they come.
    abandoned: HashSet<u64>,
}

impl Session {
    /// A connection's state.
    pub fn new(
        engine: Arc<Engine>,
        coordinator: Arc<Coordinator>,
        advertised: SocketAddr,
        peer: SocketAddr,
    ) -> std::io::Result<Self> {
        Ok(Self {
            engine,
            advertised,
            peer,
            coordinator,
            queue: CompletionQueue::new(IN_FLIGHT_MAX, Arc::new(Waker::new()?)),
            next_tag: 0,
            arrived: HashMap::new(),
            abandoned: HashSet::new(),
        })
    }

    /// A ticket for one engine call, and its tag; waits for room among the calls in flight.
    fn ticket(&mut self) -> Option<(u64, Ticket)> {
        let deadline = Instant::now() + ENGINE_PATIENCE;
        loop {
            if let Some(place) = self.queue.reserve() {
                self.next_tag += 1;
                return Some((self.next_tag, place.ticket(self.next_tag)));
            }
            if !self.take_arrivals(deadline) {
                return None;
            }
        }
    }

    /// Waits for answers until `deadline`; false if none came.
    fn take_arrivals(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut got = Vec::new();
        if self.queue.wait(&mut got, left) == 0 {
            return false;
        }
        for c in got {
            if !self.abandoned.remove(&c.tag) {
                self.arrived.insert(c.tag, c.answer);
            }
        }
        true
    }

    /// Waits until every call in `tags` is answered, or until `done` says enough is there,
    /// or `deadline`.
    fn wait_for(&mut self, tags: &[u64], deadline: Instant, done: impl Fn(&Self) -> bool) {
        while !tags.iter().all(|t| self.arrived.contains_key(t)) && !done(self) {
            if !self.take_arrivals(deadline) {
                return;
            }
        }
    }
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

/// Handles one request; `None` when it gets no answer (a produce with `acks=0`).
pub fn handle(s: &mut Session, header: &RequestHeader, request: RequestKind) -> Option<Answer> {
    let body = match request {
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(ApiVersionsResponse::default().with_api_keys(api_keys()))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata(s, r)),
        RequestKind::Produce(r) => {
            let acks = r.acks;
            let answer = produce(s, r);
            if acks == 0 {
                return None;
            }
            ResponseKind::Produce(answer)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch(s, r)),
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
    Some(Answer {
        api: ApiKey::try_from(header.request_api_key).ok()?,
        version: header.request_api_version,
        correlation_id: header.correlation_id,
        body,
    })
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

/// Splits a produce's records into their RecordBatches; `None` if the lengths do not add up
/// (the engine checks each batch itself).
fn batches(mut records: Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    while !records.is_empty() {
        // Base offset (8 bytes), then the length of the rest.
        let len = records.get(8..12)?;
        let rest = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let whole = rest.checked_add(12)?;
        if whole > records.len() {
            return None;
        }
        out.push(records.split_to(whole));
    }
    (!out.is_empty()).then_some(out)
}

fn produce(s: &mut Session, r: ProduceRequest) -> ProduceResponse {
    let acks_ok = matches!(r.acks, -1..=1);
    let engine = Arc::clone(&s.engine);
    // Every partition's batches go to the shards before any answer is awaited: they share
    // the shards' group commits.
    let mut parts = Vec::new();
    for topic in &r.topic_data {
        for p in &topic.partition_data {
            let index = p.index;
            let fail = |code: i16| (index, Err(code));
            let Ok(partition) = u32::try_from(p.index) else {
                parts.push((name(&topic.name), fail(K::UnknownTopicOrPartition.code())));
                continue;
            };
            if !acks_ok {
                parts.push((name(&topic.name), fail(K::InvalidRequiredAcks.code())));
                continue;
            }
            let Some(batches) = p.records.clone().and_then(batches) else {
                parts.push((name(&topic.name), fail(K::CorruptMessage.code())));
                continue;
            };
            let mut tags = Vec::new();
            for batch in batches {
                let Some((tag, ticket)) = s.ticket() else {
                    break;
                };
                engine.append(name(&topic.name), partition, batch, ticket);
                tags.push(tag);
            }
            parts.push((name(&topic.name), (index, Ok(tags))));
        }
    }
    let all: Vec<u64> = parts
        .iter()
        .filter_map(|(_, (_, r))| r.as_ref().ok())
        .flatten()
        .copied()
        .collect();
    s.wait_for(&all, Instant::now() + ENGINE_PATIENCE, |_| false);
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for (topic, (index, outcome)) in parts {
        let answer = PartitionProduceResponse::default()
            .with_index(index)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1);
        let answer = match outcome {
            Err(code) => answer.with_error_code(code).with_base_offset(-1),
            Ok(tags) => produced(s, topic, answer, &tags),
        };
        match responses.iter_mut().find(|t| name(&t.name) == topic) {
            Some(t) => t.partition_responses.push(answer),
            None => responses.push(
                TopicProduceResponse::default()
                    .with_name(topic_name(topic))
                    .with_partition_responses(vec![answer]),
            ),
        }
    }
    ProduceResponse::default().with_responses(responses)
}

/// A partition's produce answer from its batches' appends: the first one's offset, or the
/// first error.
fn produced(
    s: &mut Session,
    topic: &str,
    answer: PartitionProduceResponse,
    tags: &[u64],
) -> PartitionProduceResponse {
    let mut base = None;
    for tag in tags {
        match s.arrived.remove(tag) {
            Some(EngineAnswer::Appended(Ok(range))) => {
                base.get_or_insert(range.first);
            }
            Some(EngineAnswer::Appended(Err(e))) => {
                log::debug!("Kafka produce to {topic} refused: {e}");
                return answer
                    .with_error_code(data_error(&e))
                    .with_error_message(Some(StrBytes::from_string(e.to_string())))
                    .with_base_offset(-1);
            }
            Some(_) | None => {
                s.abandoned.insert(*tag);
                return answer
                    .with_error_code(K::RequestTimedOut.code())
                    .with_base_offset(-1);
            }
        }
    }
    match base {
        Some(first) => answer.with_base_offset(first as i64),
        // The ticket queue stayed full: nothing was sent.
        None => answer
            .with_error_code(K::RequestTimedOut.code())
            .with_base_offset(-1),
    }
}

/// One partition of a fetch, as it is answered.
struct FetchedPartition {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    outcome: Result<keel_engine::ReadResult, DataError>,
}

fn fetch(s: &mut Session, r: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(r.max_wait_ms).unwrap_or(0)).min(MAX_FETCH_WAIT);
    let budget = usize::try_from(r.max_bytes)
        .unwrap_or(0)
        .clamp(1, FETCH_ANSWER_BYTES_MAX);
    let mut parts: Vec<FetchedPartition> = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            parts.push(FetchedPartition {
                topic: name(&t.topic).to_string(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes)
                    .unwrap_or(0)
                    .clamp(1, budget),
                outcome: Err(DataError::ShuttingDown),
            });
        }
    }
    read_all(s, &mut parts, None);
    let found: usize = parts
        .iter()
        .filter_map(|p| p.outcome.as_ref().ok())
        .map(|r| r.data.len())
        .sum();
    if found == 0 && !wait.is_zero() && r.min_bytes > 0 {
        read_all(s, &mut parts, Some(Instant::now() + wait));
    }
    let mut used = 0usize;
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    for p in parts {
        let mut answer = PartitionData::default()
            .with_partition_index(p.partition)
            .with_log_start_offset(-1)
            .with_preferred_read_replica(BrokerId(-1))
            .with_aborted_transactions(Some(Vec::new()));
        match p.outcome {
            Ok(read) => {
                let hw = read.high_watermark as i64;
                answer = answer.with_high_watermark(hw).with_last_stable_offset(hw);
                // At least one partition's data, past the budget if need be (as Kafka does),
                // so that a batch larger than the budget still moves the consumer on.
                if !read.data.is_empty() && (used == 0 || used + read.data.len() <= budget) {
                    used += read.data.len();
                    answer = answer.with_records(Some(Bytes::from(read.data)));
                } else {
                    answer = answer.with_records(Some(Bytes::new()));
                }
            }
            Err(e) => {
                answer = answer
                    .with_error_code(data_error(&e))
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_records(Some(Bytes::new()));
            }
        }
        match responses.iter_mut().find(|t| name(&t.topic) == p.topic) {
            Some(t) => t.partitions.push(answer),
            None => responses.push(
                FetchableTopicResponse::default()
                    .with_topic(topic_name(&p.topic))
                    .with_partitions(vec![answer]),
            ),
        }
    }
    FetchResponse::default().with_responses(responses)
}

/// Reads every partition of `parts` that has nothing yet, at once: without waiting, or, with
/// `until`, as a long poll that ends as soon as one of them brings data (the others are
/// abandoned: the engine answers them at `until`, and their answers are dropped).
fn read_all(s: &mut Session, parts: &mut [FetchedPartition], until: Option<Instant>) {
    let engine = Arc::clone(&s.engine);
    let mut tags = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let has_data = matches!(&p.outcome, Ok(r) if !r.data.is_empty());
        let failed = until.is_some() && p.outcome.is_err();
        if has_data || failed {
            continue;
        }
        let (Ok(partition), Ok(from)) = (u32::try_from(p.partition), u64::try_from(p.offset))
        else {
            continue;
        };
        let Some((tag, ticket)) = s.ticket() else {
            break;
        };
        match until {
            None => engine.read(&p.topic, partition, from, p.max_bytes, ticket),
            Some(until) => {
                engine.read_waiting(&p.topic, partition, from, p.max_bytes, until, ticket);
            }
        }
        tags.push((i, tag));
    }
    let all: Vec<u64> = tags.iter().map(|(_, t)| *t).collect();
    let deadline = until.unwrap_or_else(Instant::now) + ENGINE_PATIENCE;
    let any_data = |s: &Session| {
        until.is_some()
            && all.iter().any(|t| {
                matches!(s.arrived.get(t), Some(EngineAnswer::Read(Ok(r))) if !r.data.is_empty())
            })
    };
    s.wait_for(&all, deadline, any_data);
    for (i, tag) in tags {
        match s.arrived.remove(&tag) {
            Some(EngineAnswer::Read(outcome)) => {
                // A long poll that found nothing keeps the first look's answer.
                let empty = matches!(&outcome, Ok(r) if r.data.is_empty());
                if until.is_none() || !empty {
                    parts[i].outcome = outcome;
                }
            }
            Some(_) | None => {
                s.abandoned.insert(tag);
            }
        }
    }
    // Bad partition numbers and offsets never reached the engine.
    for p in parts.iter_mut() {
        if u32::try_from(p.partition).is_err() {
            p.outcome = Err(DataError::UnknownPartition {
                topic: p.topic.clone(),
                partition: u32::MAX,
            });
        } else if p.offset < 0 {
            p.outcome = Err(DataError::OffsetOutOfRange {
                offset: 0,
                start: 0,
                end: 0,
            });
        }
    }
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
