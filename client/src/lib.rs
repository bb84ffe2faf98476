//! Keel's Rust client: a blocking connection to `keeld` with pipelining (many requests in
//! flight, answers matched by correlation id), produce acknowledged only after durability,
//! fetch with long polling, topic administration, and consumer groups (join, consume, ack,
//! nack). See [`Client`]; to produce, use [`Producer`]: one message per call, batched,
//! numbered and retried by the producer, stored exactly once. A delivery can be waited for or
//! awaited from any async runtime, as can group acks ([`GroupAckFuture`]).
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod awaiting;
pub mod cli;
mod client;
mod error;
mod groups;
mod message;
mod producer;

pub use awaiting::GroupAckFuture;
pub use client::{Ack, Client, ClientOptions, FetchOptions, PendingProduce, ServerInfo, Target};
pub use error::{ClientError, Result};
pub use groups::{spans_of, Delivered, Membership, PendingAck};
pub use keel_format::batch::BatchBuilder;
pub use keel_protocol::{ErrorCode, JoinSettings, OffsetSpan, StartAt, TopicInfo};
pub use message::{Fetched, Message};
pub use producer::{
    Delivery, Producer, ProducerOptions, ProducerStats, Record, Stored, IDEMPOTENT_IN_FLIGHT_MAX,
};
