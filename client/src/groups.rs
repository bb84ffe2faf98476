//! Consumer groups from the client's side: join, consume, ack, nack, heartbeat, leave.

use std::collections::HashMap;
use std::time::Duration;

use keel_protocol::{
    decode_response, ApiKey, JoinSettings, OffsetSpan, Request, Response, StartAt,
};

use crate::client::{unexpected, Client, PendingReply};
use crate::error::{ClientError, Result};
use crate::message::{messages_in, Message};

/// A member's place in a group, returned by [`Client::join_group`]. Any request naming it
/// renews its session; send one (or [`Client::heartbeat`]) more often than
/// `session_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Group name.
    pub group: String,
    /// Topic the group reads.
    pub topic: String,
    /// This member's id.
    pub member: u64,
    /// Partitions of the topic.
    pub partitions: u32,
    /// The member leaves after this long without a request.
    pub session_timeout: Duration,
}

/// A message delivered to a member: process it, then [`Client::ack`] it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Partition it is in.
    pub partition: u32,
    /// 1 on the first delivery.
    pub delivery_count: u32,
    /// The message.
    pub message: Message,
}

impl Delivered {
    /// Whether it was delivered before (to this or another member).
    pub fn redelivered(&self) -> bool {
        self.delivery_count > 1
    }

    /// The span acknowledging just this message.
    pub fn span(&self) -> OffsetSpan {
        OffsetSpan {
            partition: self.partition,
            first: self.message.offset,
            last: self.message.offset,
        }
    }
}

/// Spans covering `delivered` messages, adjacent offsets of a partition merged.
pub fn spans_of(delivered: &[Delivered]) -> Vec<OffsetSpan> {
    let mut by_partition: HashMap<u32, Vec<u64>> = HashMap::new();
    for d in delivered {
        by_partition
            .entry(d.partition)
            .or_default()
            .push(d.message.offset);
    }
    let mut spans = Vec::new();
    let mut partitions: Vec<_> = by_partition.into_iter().collect();
    partitions.sort_unstable_by_key(|(p, _)| *p);
    for (partition, mut offsets) in partitions {
        offsets.sort_unstable();
        for o in offsets {
            match spans.last_mut() {
                Some(OffsetSpan {
                    partition: p, last, ..
                }) if *p == partition && *last + 1 == o => *last = o,
                _ => spans.push(OffsetSpan {
                    partition,
                    first: o,
                    last: o,
                }),
            }
        }
    }
    spans
}

/// An ack sent and not yet answered.
#[must_use = "an ack is only known to be applied (or durable) once waited for"]
pub struct PendingAck(PendingReply);

impl PendingAck {
    /// Waits for the answer (at most the client's request timeout). To `.await` it instead,
    /// see [`crate::GroupAckFuture`].
    pub fn wait(self) -> Result<()> {
        settled(self.0.wait()?)
    }

    pub(crate) fn into_reply(self) -> PendingReply {
        self.0
    }
}

/// The answer to an ack or nack.
pub(crate) fn settled(response: Response<'_>) -> Result<()> {
    match response {
        Response::Ack => Ok(()),
        other => Err(unexpected(&other)),
    }
}

impl Client {
    /// Joins `group` reading `topic`, creating the group (starting at `start`) if it does not
    /// exist. Zero settings ask for the server's defaults.
    pub fn join_group(
        &self,
        group: &str,
        topic: &str,
        start: StartAt,
        settings: JoinSettings,
    ) -> Result<Membership> {
        match self.call(&Request::JoinGroup {
            group: group.into(),
            topic: topic.into(),
            start,
            settings,
        })? {
            Response::JoinGroup {
                member,
                partitions,
                session_timeout_ms,
            } => Ok(Membership {
                group: group.into(),
                topic: topic.into(),
                member,
                partitions,
                session_timeout: Duration::from_millis(u64::from(session_timeout_ms)),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Up to `max` messages for the member, waiting up to `wait` for the first (empty when
    /// none came; the server caps the wait at half the session timeout).
    pub fn consume(&self, m: &Membership, max: u32, wait: Duration) -> Result<Vec<Delivered>> {
        let request = Request::Consume {
            group: m.group.clone(),
            topic: m.topic.clone(),
            member: m.member,
            max_messages: max,
            max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let frame = self.send(&request, wait)?.wait_frame()?;
        let (_, answer) = decode_response(&frame, ApiKey::Consume)
            .map_err(|e| ClientError::Protocol(format!("consume answer: {e}")))?;
        let partitions = match answer {
            Ok(Response::Consume { partitions }) => partitions,
            Ok(other) => return Err(unexpected(&other)),
            Err(e) => {
                return Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                })
            }
        };
        let mut out = Vec::new();
        for p in partitions {
            let counts: HashMap<u64, u32> = p
                .deliveries
                .iter()
                .map(|d| (d.offset, d.delivery_count))
                .collect();
            let messages = messages_in(p.batches, |o| counts.contains_key(&o))?;
            if messages.len() != counts.len() {
                return Err(ClientError::Protocol(format!(
                    "consume answer for partition {} lists {} deliveries but carries {} of them",
                    p.partition,
                    counts.len(),
                    messages.len()
                )));
            }
            for message in messages {
                out.push(Delivered {
                    partition: p.partition,
                    delivery_count: counts.get(&message.offset).copied().unwrap_or(1),
                    message,
                });
            }
        }
        Ok(out)
    }

    /// Sends an ack of `spans` without waiting. With `durable`, the answer comes only once
    /// the acknowledgement is on stable storage: a restart will not deliver them again.
    pub fn send_ack(
        &self,
        m: &Membership,
        spans: &[OffsetSpan],
        durable: bool,
    ) -> Result<PendingAck> {
        let request = Request::Ack {
            group: m.group.clone(),
            topic: m.topic.clone(),
            member: m.member,
            durable,
            spans: spans.to_vec(),
        };
        self.send(&request, Duration::ZERO).map(PendingAck)
    }

    /// Acknowledges `spans` and waits for the answer (see [`Client::send_ack`]).
    pub fn ack(&self, m: &Membership, spans: &[OffsetSpan], durable: bool) -> Result<()> {
        self.send_ack(m, spans, durable)?.wait()
    }

    /// Gives the messages back: they are redelivered (to any member) after `delay`.
    pub fn nack(&self, m: &Membership, spans: &[OffsetSpan], delay: Duration) -> Result<()> {
        match self.call(&Request::Nack {
            group: m.group.clone(),
            topic: m.topic.clone(),
            member: m.member,
            delay_ms: u32::try_from(delay.as_millis()).unwrap_or(u32::MAX),
            spans: spans.to_vec(),
        })? {
            Response::Nack => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Renews the member's session.
    pub fn heartbeat(&self, m: &Membership) -> Result<()> {
        match self.call(&Request::Heartbeat {
            group: m.group.clone(),
            topic: m.topic.clone(),
            member: m.member,
        })? {
            Response::Heartbeat => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Leaves the group: what the member holds unacknowledged is redelivered at once.
    pub fn leave_group(&self, m: &Membership) -> Result<()> {
        match self.call(&Request::LeaveGroup {
            group: m.group.clone(),
            topic: m.topic.clone(),
            member: m.member,
        })? {
            Response::LeaveGroup => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(partition: u32, offset: u64) -> Delivered {
        Delivered {
            partition,
            delivery_count: 1,
            message: Message {
                offset,
                timestamp_ms: 0,
                key: None,
                value: None,
                headers: Vec::new(),
            },
        }
    }

    #[test]
    fn adjacent_offsets_merge_into_spans_per_partition() {
        let spans = spans_of(&[d(1, 5), d(0, 3), d(0, 1), d(0, 2), d(1, 7), d(0, 9)]);
        let flat: Vec<(u32, u64, u64)> = spans
            .iter()
            .map(|s| (s.partition, s.first, s.last))
            .collect();
        assert_eq!(flat, [(0, 1, 3), (0, 9, 9), (1, 5, 5), (1, 7, 7)]);
    }
}
