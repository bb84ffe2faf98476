//! Keel's Rust client: a blocking connection to `keeld` with pipelining (many requests in
//! flight, answers matched by correlation id), produce acknowledged only after durability,
//! fetch with long polling, topic administration, and consumer groups (join, consume, ack,
//! nack). See [`Client`]; a thread that only produces can use [`Producer`], which reads its own
//! acks. Produce acks and group acks can also be awaited from any async
//! runtime ([`ProduceFuture`]).
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod awaiting;
pub mod cli;
mod client;
mod error;
mod groups;
mod idempotence;
mod message;
mod producer;

pub use awaiting::{GroupAckFuture, ProduceFuture};
pub use client::{Ack, Client, ClientOptions, FetchOptions, PendingProduce, ServerInfo, Target};
pub use error::{ClientError, Result};
pub use groups::{spans_of, Delivered, Membership, PendingAck};
pub use idempotence::Idempotence;
pub use keel_format::batch::BatchBuilder;
pub use keel_protocol::{ErrorCode, JoinSettings, OffsetSpan, StartAt, TopicInfo};
pub use message::{Fetched, Message};
pub use producer::Producer;
