//! Produce: the reader hands every partition's batches to the shards at once ([`submit`]), so
//! that they and the requests pipelined behind them share group commits; the writer answers
//! once they are durable ([`answer`]), in request order.

use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;
use keel_engine::Answer as EngineAnswer;

use super::apis::topic_name;
use super::errors::data_error;
use super::session::{Session, Waiter, ENGINE_PATIENCE};

/// A produce handed to the engine: per partition, its appends' tags or why it was refused.
pub struct Submitted {
    /// Whether the client wants no answer (`acks=0`).
    pub silent: bool,
    parts: Vec<(String, i32, Result<Vec<u64>, i16>)>,
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

/// Hands every partition's batches to the engine (on the reader).
pub fn submit(s: &Session, r: ProduceRequest) -> Submitted {
    let acks_ok = matches!(r.acks, -1..=1);
    let mut parts = Vec::new();
    for topic in r.topic_data {
        let name = topic.name.0.to_string();
        for p in topic.partition_data {
            let refused = |code: i16| (name.clone(), p.index, Err(code));
            let Ok(partition) = u32::try_from(p.index) else {
                parts.push(refused(K::UnknownTopicOrPartition.code()));
                continue;
            };
            if !acks_ok {
                parts.push(refused(K::InvalidRequiredAcks.code()));
                continue;
            }
            let Some(batches) = p.records.and_then(batches) else {
                parts.push(refused(K::CorruptMessage.code()));
                continue;
            };
            let mut tags = Vec::new();
            for batch in batches {
                let Some((tag, ticket)) = s.ticket() else {
                    break;
                };
                s.engine.append(&name, partition, batch, ticket);
                tags.push(tag);
            }
            parts.push((name.clone(), p.index, Ok(tags)));
        }
    }
    Submitted {
        silent: r.acks == 0,
        parts,
    }
}

/// The answer, once every append is durable or failed (on the writer).
pub fn answer(w: &mut Waiter, sub: Submitted) -> ProduceResponse {
    let all: Vec<u64> = sub
        .parts
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok())
        .flatten()
        .copied()
        .collect();
    w.wait_for(&all, Instant::now() + ENGINE_PATIENCE, |_| false);
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for (topic, index, outcome) in sub.parts {
        let answer = PartitionProduceResponse::default()
            .with_index(index)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1);
        let answer = match outcome {
            Err(code) => answer.with_error_code(code).with_base_offset(-1),
            Ok(tags) => produced(w, &topic, answer, &tags),
        };
        match responses.iter_mut().find(|t| *t.name.0 == *topic) {
            Some(t) => t.partition_responses.push(answer),
            None => responses.push(
                TopicProduceResponse::default()
                    .with_name(topic_name(&topic))
                    .with_partition_responses(vec![answer]),
            ),
        }
    }
    ProduceResponse::default().with_responses(responses)
}

/// A partition's answer from its batches' appends: the first one's offset, or the first
/// error. Every tag's answer is taken, so none is left behind.
fn produced(
    w: &mut Waiter,
    topic: &str,
    answer: PartitionProduceResponse,
    tags: &[u64],
) -> PartitionProduceResponse {
    let mut base = None;
    let mut failed = None;
    for &tag in tags {
        match w.take(tag) {
            Some(EngineAnswer::Appended(Ok(range))) => {
                base.get_or_insert(range.first);
            }
            Some(EngineAnswer::Appended(Err(e))) => {
                log::debug!("Kafka produce to {topic} refused: {e}");
                failed.get_or_insert((data_error(&e), Some(e.to_string())));
            }
            Some(_) | None => {
                failed.get_or_insert((K::RequestTimedOut.code(), None));
            }
        }
    }
    match (failed, base) {
        (Some((code, message)), _) => answer
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string))
            .with_base_offset(-1),
        (None, Some(first)) => answer.with_base_offset(first as i64),
        // The ticket queue stayed full: nothing was sent.
        (None, None) => answer
            .with_error_code(K::RequestTimedOut.code())
            .with_base_offset(-1),
    }
}
