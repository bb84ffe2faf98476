//! Keel's storage engine: durable partition logs on io_uring, O_DIRECT and group commit.
//!
//! An [`Engine`] runs one shard thread per core. Each shard owns an io_uring and the partitions
//! routed to it ([`shard_for`]). An append is answered only after its batch is written with
//! O_DIRECT and covered by a completed `fdatasync`; appends that arrive while a flush is in
//! flight share the next one (group commit). The on-disk format is documented in
//! `docs/FORMAT.md`; the design in `DESIGN.md`.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod aligned;
use keel_format::batch;
mod blocking;
mod config;
pub mod delivery;
mod engine;
mod error;
pub mod filesystem;
mod group_ops;
pub mod groups;
pub mod histogram;
mod in_flight;
mod inbox;
pub mod io;
mod janitor;
pub mod layout;
mod linger;
mod long_poll;
pub mod offsets;
mod open;
mod partition;
mod prepare;
mod read;
pub mod recovery;
mod retention;
mod segment;
mod shard;
mod tail;
mod topic_name;
pub mod trailer;
pub mod xorshift;
mod zeroing;

pub use batch::{BatchBuilder, BatchError, BatchView, Record};
pub use config::{EngineConfig, FlushSync, IoMode, RecoveryMode};
pub use engine::{shard_for, Engine, EngineStats, LOST_HEADER};
pub use error::{EngineError, Result};
pub use group_ops::{ConsumeLimits, GroupMetrics, GroupStart, JoinRequest, Joined};
pub use groups::ConsumedPartition;
pub use io::{CrashPlan, FaultPlan};
pub use read::ReadResult;
pub use shard::GroupPartitionMetrics;

/// The offsets given to one appended batch (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    /// Offset of the first record.
    pub first: u64,
    /// Offset of the last record.
    pub last: u64,
}

/// Called once an append is durable or failed.
pub type AppendDone = Box<dyn FnOnce(Result<OffsetRange>) + Send>;
/// Called with the answer to a read.
pub type ReadDone = Box<dyn FnOnce(Result<ReadResult>) + Send>;
