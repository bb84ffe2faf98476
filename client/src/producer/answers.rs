//! What the server's answers do to the producer's state, whichever thread read them: the
//! producer's own thread, or a sender waiting for its delivery (`reading.rs`). Deliveries
//! decided under the lock are told after it is let go ([`Told`]).

use std::sync::Arc;
use std::time::Instant;

use keel_protocol::{
    decode_response, response_correlation_id, ApiKey, ErrorCode, FrameBuffer, Response,
    RESPONSE_HEADER_BYTES,
};

use super::accumulator::{Batch, Stage};
use super::delivery::Outcome;
use super::link::{Asked, Bump};
use super::{Shared, State, TopicQueues, TopicState};
use crate::client::{ack_of, refusal, unexpected};
use crate::error::{ClientError, Result};
use crate::Ack;

/// The producer's answers are small; a larger size prefix is a broken peer, not a reason to
/// allocate.
pub(crate) const MAX_ANSWER_BYTES: u32 = 1 << 20;

/// Deliveries finished under the lock, to be told once it is let go.
#[derive(Default)]
pub(crate) struct Told {
    done: Vec<(Arc<Outcome>, Result<Ack>)>,
    /// Senders wait for room or a partition count that is now there.
    notify: bool,
}

impl Told {
    /// Takes `b`'s bytes off the buffer and keeps its answer for [`Told::tell`].
    pub fn finish(&mut self, st: &mut State, b: Batch, answer: Result<Ack>) {
        st.buffered = st.buffered.saturating_sub(b.bytes);
        if st.senders_waiting > 0 {
            self.notify = true;
        }
        self.done.push((b.outcome, answer));
    }

    /// Waiting senders are to be woken.
    pub fn wake_senders(&mut self) {
        self.notify = true;
    }

    /// Finishes the deliveries decided under the lock, and wakes waiting senders.
    pub fn tell(&mut self, shared: &Shared) {
        for (outcome, answer) in self.done.drain(..) {
            outcome.finish(answer);
        }
        if std::mem::take(&mut self.notify) {
            shared.changed.notify_all();
        }
    }
}

/// Handles every whole answer `input` holds; `Err`: why the connection cannot go on.
pub(crate) fn handle_answers(
    st: &mut State,
    shared: &Shared,
    input: &mut FrameBuffer,
    told: &mut Told,
) -> std::result::Result<(), String> {
    while let Some(len) = input
        .next_frame_len(RESPONSE_HEADER_BYTES, MAX_ANSWER_BYTES)
        .map_err(|e| format!("bad answer: {e}"))?
    {
        let frame = &input.pending()[..len];
        if let Some(why) = refusal(frame) {
            return Err(why);
        }
        let id = response_correlation_id(frame).map_err(|e| format!("bad answer: {e}"))?;
        let asked = st
            .sending
            .asked
            .remove(&id)
            .ok_or_else(|| format!("an answer to no request in flight ({id})"))?;
        answer(st, shared, id, asked, frame, told)?;
        input.consume(len);
    }
    Ok(())
}

/// Handles the answer `frame` to request `id`, which asked `asked`.
fn answer(
    st: &mut State,
    shared: &Shared,
    id: u32,
    asked: Asked,
    frame: &[u8],
    told: &mut Told,
) -> std::result::Result<(), String> {
    match asked {
        Asked::Produce {
            topic, partition, ..
        } => {
            let answer = match decode_response(frame, ApiKey::Produce) {
                Ok((_, Ok(r))) => Ok(ack_of(r).map_err(|e| e.to_string())?),
                Ok((_, Err(e))) => Err((e.code, e.message)),
                Err(e) => return Err(format!("bad produce answer: {e}")),
            };
            produce_answered(st, shared, &topic, partition, id, answer, told);
        }
        Asked::Metadata { topic, .. } => {
            let known = match decode_response(frame, ApiKey::Metadata) {
                Ok((_, Ok(Response::Metadata { partitions }))) => Ok(partitions),
                Ok((_, Ok(other))) => return Err(unexpected(&other).to_string()),
                Ok((_, Err(e))) => Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                }),
                Err(e) => return Err(format!("bad metadata answer: {e}")),
            };
            let state = match known {
                Ok(n) => TopicState::Known(TopicQueues::new(&topic, n, st.sticky_seed)),
                Err(e) => TopicState::Failed(e),
            };
            st.topics.insert(topic, state);
            told.wake_senders();
        }
        Asked::InitProducer { .. } => match init_producer_answer(frame) {
            Ok(Ok(identity)) => {
                st.identity = Some(identity);
                for t in st.topics.values_mut() {
                    if let TopicState::Known(t) = t {
                        t.partitions.iter_mut().for_each(|q| q.renumber());
                    }
                }
                st.sending.bump = None;
            }
            Ok(Err(e)) => st.stopped = Some(e),
            Err(why) => return Err(why),
        },
    }
    Ok(())
}

/// A produce answer: the batch is finished, waits to be sent again, or fails.
fn produce_answered(
    st: &mut State,
    shared: &Shared,
    topic: &str,
    partition: u32,
    id: u32,
    answer: std::result::Result<Ack, (ErrorCode, String)>,
    told: &mut Told,
) {
    let now = Instant::now();
    let idempotent = shared.options.idempotence;
    let backoff = shared.options.retry_backoff;
    let Some((q, at)) = st.in_flight_batch(topic, partition, id) else {
        return;
    };
    let (code, message) = match answer {
        Ok(ack) => {
            if let Some(b) = q.batches.remove(at) {
                told.finish(st, b, Ok(ack));
            }
            return;
        }
        Err(refused) => refused,
    };
    let b = &mut q.batches[at];
    b.maybe_stored = false;
    b.last_refusal = Some(format!("the server refused it ({code:?}): {message}"));
    if retriable(code) {
        b.stage = Stage::Waiting;
        b.retry_at = Some(now + backoff);
        return;
    }
    if code == ErrorCode::OutOfOrderSequence && idempotent {
        // Nothing of it was stored. It goes again after the batch before it, if that one is
        // to be sent again; otherwise that one is lost for good, and a new epoch lets this one
        // be stored.
        b.stage = Stage::Waiting;
        b.retry_at = Some(now + backoff);
        let seq = b.sequence.unwrap_or(0);
        if !q.earlier_pending(seq, at) {
            st.sending.bump.get_or_insert(Bump::Due);
        }
        return;
    }
    if code == ErrorCode::ProducerFenced {
        st.stopped = Some(ClientError::Server {
            code,
            message: format!(
                "{message} (another producer took over this producer id; this one stops)"
            ),
        });
        return;
    }
    let numbered = b.sequence.is_some();
    if let Some(b) = q.batches.remove(at) {
        if idempotent && numbered {
            st.sending.bump.get_or_insert(Bump::Due);
        }
        told.finish(st, b, Err(ClientError::Server { code, message }));
    }
}

/// Refusals that a later try may not get: the server is busy, stopping, or out of space
/// (retention or an operator may free some within the delivery timeout).
fn retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Busy | ErrorCode::ShuttingDown | ErrorCode::NoSpace
    )
}

/// The producer id and epoch an InitProducer answer gives, or the server's refusal.
pub(crate) fn init_producer_answer(
    frame: &[u8],
) -> std::result::Result<Result<(i64, i16)>, String> {
    match decode_response(frame, ApiKey::InitProducer) {
        Ok((_, Ok(Response::InitProducer { producer_id, epoch }))) => Ok(Ok((producer_id, epoch))),
        Ok((_, Ok(other))) => Err(unexpected(&other).to_string()),
        Ok((_, Err(e))) => Ok(Err(ClientError::Server {
            code: e.code,
            message: e.message,
        })),
        Err(e) => Err(format!("bad producer id answer: {e}")),
    }
}
