//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: the settings that shape a topic, under Kafka's names.
//! Keel's are keeld's own (its configuration file), the same for every topic, so they are
//! described as read-only broker settings and cannot be altered through Kafka.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;
use keel_engine::EngineConfig;

use super::errors::data_error;
use super::session::Session;

/// Kafka's resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// Kafka's config sources.
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// A setting: its Kafka name, its value, and whether keeld's configuration sets it.
type Setting = (&'static str, String, i8);

/// The settings of every topic.
fn topic_settings(cfg: &EngineConfig) -> Vec<Setting> {
    vec![
        ("cleanup.policy", "delete".into(), DEFAULT_CONFIG),
        ("compression.type", "producer".into(), DEFAULT_CONFIG),
        (
            "max.message.bytes",
            cfg.max_batch_bytes.to_string(),
            STATIC_BROKER_CONFIG,
        ),
        (
            "message.timestamp.type",
            "CreateTime".into(),
            DEFAULT_CONFIG,
        ),
        ("min.insync.replicas", "1".into(), DEFAULT_CONFIG),
        // Keel's retention is one limit for all topics together, not Kafka's per partition:
        // under its own name, so that nobody reads it as Kafka's.
        ("retention.bytes", "-1".into(), DEFAULT_CONFIG),
        ("retention.ms", "-1".into(), DEFAULT_CONFIG),
        (
            "keel.retention.bytes.all.topics",
            cfg.retention_bytes.map_or("-1".into(), |b| b.to_string()),
            STATIC_BROKER_CONFIG,
        ),
        (
            "segment.bytes",
            cfg.segment_bytes.to_string(),
            STATIC_BROKER_CONFIG,
        ),
    ]
}

/// The broker's settings.
fn broker_settings(cfg: &EngineConfig) -> Vec<Setting> {
    vec![
        ("auto.create.topics.enable", "false".into(), DEFAULT_CONFIG),
        ("default.replication.factor", "1".into(), DEFAULT_CONFIG),
        (
            "log.segment.bytes",
            cfg.segment_bytes.to_string(),
            STATIC_BROKER_CONFIG,
        ),
        (
            "message.max.bytes",
            cfg.max_batch_bytes.to_string(),
            STATIC_BROKER_CONFIG,
        ),
        ("num.partitions", "1".into(), DEFAULT_CONFIG),
    ]
}

pub fn describe_configs(s: &Session, r: &DescribeConfigsRequest) -> DescribeConfigsResponse {
    let cfg = s.engine.config();
    let results = r
        .resources
        .iter()
        .map(|res| {
            let answer = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let settings = match res.resource_type {
                TOPIC => match s.engine.partitions(&res.resource_name) {
                    Ok(_) => topic_settings(cfg),
                    Err(e) => {
                        return answer
                            .with_error_code(data_error(&e))
                            .with_error_message(Some(StrBytes::from_string(e.to_string())))
                    }
                },
                BROKER => broker_settings(cfg),
                other => {
                    return answer
                        .with_error_code(K::InvalidRequest.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "resource type {other}: Keel describes topics (2) and its broker (4)"
                        ))))
                }
            };
            // No keys (null, or an empty list as some clients send) asks for all.
            let wanted = |name: &str| {
                res.configuration_keys
                    .as_ref()
                    .filter(|keys| !keys.is_empty())
                    .is_none_or(|keys| keys.iter().any(|k| **k == *name))
            };
            answer.with_configs(
                settings
                    .into_iter()
                    .filter(|(name, _, _)| wanted(name))
                    .map(|(name, value, source)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_static_str(name))
                            .with_value(Some(StrBytes::from_string(value)))
                            .with_read_only(true)
                            .with_config_source(source)
                    })
                    .collect(),
            )
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

pub fn alter_configs(s: &Session, r: &AlterConfigsRequest) -> AlterConfigsResponse {
    let responses = r
        .resources
        .iter()
        .map(|res| {
            let names = res.configs.iter().map(|c| c.name.to_string());
            let (code, message) = refuse_alter(s, res.resource_type, &res.resource_name, names);
            AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub fn incremental_alter_configs(
    s: &Session,
    r: &IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let responses = r
        .resources
        .iter()
        .map(|res| {
            let names = res.configs.iter().map(|c| c.name.to_string());
            let (code, message) = refuse_alter(s, res.resource_type, &res.resource_name, names);
            IncrementalResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Why a change of settings `names` of a resource is refused: Keel's settings are keeld's.
fn refuse_alter(
    s: &Session,
    resource_type: i8,
    resource_name: &str,
    names: impl Iterator<Item = String>,
) -> (i16, Option<StrBytes>) {
    if resource_type == TOPIC {
        if let Err(e) = s.engine.partitions(resource_name) {
            return (data_error(&e), Some(StrBytes::from_string(e.to_string())));
        }
    }
    let names: Vec<String> = names.collect();
    let message = format!(
        "{} cannot be changed through Kafka: Keel's settings are keeld's (segment_bytes, \
         max_batch_bytes, retention_bytes in its configuration file), the same for every topic",
        names.join(", ")
    );
    (
        K::InvalidConfig.code(),
        Some(StrBytes::from_string(message)),
    )
}
