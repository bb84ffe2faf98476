//! Awaiting answers instead of blocking on them: a pending produce or group ack is also a
//! future (`pending.await`), woken by the connection's reader thread when its answer comes.
//! It needs no particular async runtime. Unlike the blocking `wait`, an awaited answer has no
//! timeout of its own: put one around it with your runtime's timer. A lost connection ends it
//! with [`ClientError::ConnectionLost`](crate::ClientError::ConnectionLost).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use keel_protocol::Response;

use crate::client::{ack_of, Ack, PendingProduce, PendingReply};
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

/// The acknowledgement of a produce, awaited: [`PendingProduce`] turned into a future.
///
/// ```no_run
/// use keel_client::{Client, Target};
/// # async fn example(client: &Client) -> keel_client::Result<()> {
/// // Many produces in flight on one connection, each acknowledged once durable.
/// let pending: Vec<_> = (0..100)
///     .map(|i| client.send_values("orders", Target::Partition(0), [format!("order #{i}")]))
///     .collect::<Result<_, _>>()?;
/// for p in pending {
///     let ack = p.await?;
///     println!("{} {}", ack.partition, ack.first_offset);
/// }
/// # Ok(()) }
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct ProduceFuture(PendingReply);

impl Future for ProduceFuture {
    type Output = Result<Ack>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_answer(&self.0, cx, ack_of)
    }
}

impl IntoFuture for PendingProduce {
    type Output = Result<Ack>;
    type IntoFuture = ProduceFuture;

    fn into_future(self) -> ProduceFuture {
        ProduceFuture(self.into_reply())
    }
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
