//! Consumer groups driven through the engine directly: joins, consumes and acks waited for.

use std::time::{Duration, Instant};

use keel_engine::{
    ConsumeLimits, ConsumedPartition, Engine, GroupError, GroupSettings, GroupStart, JoinRequest,
    Ticket,
};

use crate::answers::{consumed, settled, Answers};

/// How long a test waits for any answer.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A join request with the given timeouts (everything else as keeld's defaults).
pub fn join<'a>(
    group: &'a str,
    topic: &'a str,
    ack_timeout: Duration,
    session_timeout: Duration,
) -> JoinRequest<'a> {
    JoinRequest {
        group,
        topic,
        start: GroupStart::Earliest,
        settings: GroupSettings {
            ack_timeout,
            max_deliveries: 16,
        },
        session_timeout,
        max_unacked: 1000,
        conn: 1,
    }
}

/// A consume, waited for: (partition, offset, delivery count) of each message, in answer order.
pub fn consume(
    engine: &Engine,
    group: &str,
    topic: &str,
    member: u64,
    max: usize,
    wait: Duration,
) -> Result<Vec<(u32, u64, u32)>, GroupError> {
    let answers = Answers::new();
    let limits = ConsumeLimits {
        max_messages: max,
        max_bytes: 4 << 20,
        until: (!wait.is_zero()).then(|| Instant::now() + wait),
    };
    engine.consume(group, topic, member, limits, answers.ticket(0));
    let parts: Vec<ConsumedPartition> = consumed(answers.expect(PATIENCE + wait).answer)?;
    Ok(parts
        .iter()
        .flat_map(|p| {
            p.deliveries
                .iter()
                .map(move |d| (p.partition, d.offset, d.delivery_count))
        })
        .collect())
}

/// The answer to a group request on single offsets, waited for: `send` makes the request with
/// the spans and the ticket.
fn wait_for(
    offsets: &[(u32, u64)],
    send: impl FnOnce(&[(u32, u64, u64)], Ticket),
) -> Result<(), GroupError> {
    let spans: Vec<(u32, u64, u64)> = offsets.iter().map(|&(p, o)| (p, o, o)).collect();
    let answers = Answers::new();
    send(&spans, answers.ticket(0));
    settled(answers.expect(PATIENCE).answer)
}

/// An ack of single offsets, waited for.
pub fn ack(
    engine: &Engine,
    group: &str,
    topic: &str,
    member: u64,
    offsets: &[(u32, u64)],
    durable: bool,
) -> Result<(), GroupError> {
    wait_for(offsets, |spans, done| {
        engine.ack(group, topic, member, spans, durable, done)
    })
}

/// A nack of single offsets, waited for.
pub fn nack(
    engine: &Engine,
    group: &str,
    topic: &str,
    member: u64,
    offsets: &[(u32, u64)],
    delay: Duration,
) -> Result<(), GroupError> {
    wait_for(offsets, |spans, done| {
        engine.nack(group, topic, member, spans, delay, done)
    })
}
