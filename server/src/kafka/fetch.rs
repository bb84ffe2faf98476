//! Fetch: reads of every partition asked for at once, and, when none has data, a long poll
//! that ends as soon as one of them brings some. Answered on the writer, in request order.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use keel_engine::{Answer as EngineAnswer, DataError};

use super::apis::topic_name;
use super::errors::data_error;
use super::session::{Session, Waiter, ENGINE_PATIENCE};

/// Longest long poll a fetch may ask for.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(60);
/// Most record bytes one fetch answer carries, whatever the client asks.
const FETCH_ANSWER_BYTES_MAX: usize = 32 << 20;

/// One partition of a fetch, as it is answered.
struct FetchedPartition {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    outcome: Result<keel_engine::ReadResult, DataError>,
}

/// The answer to a fetch (on the writer).
pub fn answer(s: &Session, w: &mut Waiter, r: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(r.max_wait_ms).unwrap_or(0)).min(MAX_FETCH_WAIT);
    let budget = usize::try_from(r.max_bytes)
        .unwrap_or(0)
        .clamp(1, FETCH_ANSWER_BYTES_MAX);
    let mut parts: Vec<FetchedPartition> = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            parts.push(FetchedPartition {
                topic: t.topic.0.to_string(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes)
                    .unwrap_or(0)
                    .clamp(1, budget),
                outcome: Err(DataError::ShuttingDown),
            });
        }
    }
    read_all(s, w, &mut parts, None);
    let found: usize = parts
        .iter()
        .filter_map(|p| p.outcome.as_ref().ok())
        .map(|r| r.data.len())
        .sum();
    if found == 0 && !wait.is_zero() && r.min_bytes > 0 {
        read_all(s, w, &mut parts, Some(Instant::now() + wait));
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
        match responses.iter_mut().find(|t| *t.topic.0 == *p.topic) {
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
fn read_all(s: &Session, w: &mut Waiter, parts: &mut [FetchedPartition], until: Option<Instant>) {
    let engine = &s.engine;
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
        let Some((tag, ticket)) = w.ticket(s) else {
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
    let any_data = |w: &Waiter| {
        until.is_some()
            && all.iter().any(
                |&t| matches!(w.peek(t), Some(EngineAnswer::Read(Ok(r))) if !r.data.is_empty()),
            )
    };
    w.wait_for(&all, deadline, any_data);
    for (i, tag) in tags {
        // Not answered (abandoned by `take`), or not a read's answer: the first look stays.
        if let Some(EngineAnswer::Read(outcome)) = w.take(tag) {
            // A long poll that found nothing keeps the first look's answer.
            let empty = matches!(&outcome, Ok(r) if r.data.is_empty());
            if until.is_none() || !empty {
                parts[i].outcome = outcome;
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
