//! Awaiting answers instead of blocking on them: a pending group ack is also a future
//! (`pending.await`), woken by the connection's reader thread when its answer comes (a
//! producer's `Delivery` is one too, see `producer/delivery.rs`).
//! It needs no particular async runtime. Unlike the blocking `wait`, an awaited answer has no
//! timeout of its own: put one around it with your runtime's timer. A lost connection ends it
//! with [`ClientError::ConnectionLost`](crate::ClientError::ConnectionLost).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use keel_protocol::Response;

use crate::client::PendingReply;
use crate::error::Result;
use crate::groups::{settled, PendingAck};

/// Polls `reply` and turns its answer into `T`.
fn poll_answer<T>(
    reply: &PendingReply,
    cx: &mut Context<'_>,
    convert: fn(Response<'_>) -> Result<T>,
) -> Poll<Result<T>> {
    reply
        .poll_frame(cx)
        .map(|frame| convert(reply.decode(&frame?)?))
}

/// The answer to a consumer group's ack or nack, awaited: [`PendingAck`] turned into a future.
#[must_use = "futures do nothing unless awaited"]
pub struct GroupAckFuture(PendingReply);

impl Future for GroupAckFuture {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_answer(&self.0, cx, settled)
    }
}

impl IntoFuture for PendingAck {
    type Output = Result<()>;
    type IntoFuture = GroupAckFuture;

    fn into_future(self) -> GroupAckFuture {
        GroupAckFuture(self.into_reply())
    }
}
