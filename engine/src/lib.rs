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

use keel_format::batch;
mod blocking;
mod committed;
mod completions;
mod config;
mod engine;
mod error;
mod group_ops;
mod in_flight;
mod inbox;
mod janitor;
mod linger;
mod long_poll;
mod open;
mod partition;
mod prepare;
mod producer_ids;
mod producers;
mod read;
mod read_ahead;
mod reply;
mod retention;
mod segment;
mod shard;
mod tail;
mod topic_name;
mod zeroing;
// Modules the server has no business with: public to the tests and benchmarks only (cargo
// feature `testing`), private otherwise. The public declarations are written out, so that
// tools reading the module tree (cargo-mutants) find each file once; the private ones come
// from a macro.
macro_rules! private_unless_testing {
    ($($module:ident;)*) => {$(
        #[cfg(not(feature = "testing"))]
        mod $module;
    )*};
}
private_unless_testing! {
    aligned;
    clock;
    delivery;
    filesystem;
    groups;
    histogram;
    io;
    layout;
    offsets;
    recovery;
    summary;
    trailer;
}
#[cfg(feature = "testing")]
pub mod aligned;
#[cfg(feature = "testing")]
pub mod clock;
#[cfg(feature = "testing")]
pub mod delivery;
#[cfg(feature = "testing")]
pub mod filesystem;
/// What fuzzing checks of the decoders of what the engine reads from disk.
#[cfg(any(test, feature = "testing"))]
pub mod fuzz_checks;
#[cfg(feature = "testing")]
pub mod groups;
#[cfg(feature = "testing")]
pub mod histogram;
#[cfg(feature = "testing")]
pub mod io;
#[cfg(feature = "testing")]
pub mod layout;
#[cfg(feature = "testing")]
pub mod offsets;
#[cfg(feature = "testing")]
pub mod recovery;
/// The deterministic simulator's engine side: shards that run one turn at a time, a
/// simulated disk, and simulated time.
#[cfg(feature = "testing")]
pub mod simulation;
#[cfg(feature = "testing")]
pub mod summary;
/// Opening the engine on a test backend.
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod trailer;
/// A deterministic pseudo-random sequence, for tests and simulated faults.
#[cfg(any(test, feature = "testing"))]
pub mod xorshift;

pub use batch::{BatchBuilder, BatchError, BatchView, Record};
pub use committed::{CommittedOffset, GroupOffsets};
pub use completions::{Answer, Completion, CompletionQueue, Reservation, Ticket};
pub use config::{EngineConfig, FlushSync, IoMode, RecoveryMode};
pub use engine::{shard_for, Engine, EngineStats, LOST_HEADER};
pub use error::{AdminError, DataError, GroupError, IoFailure, OpenError};
pub use group_ops::{ConsumeLimits, GroupMetrics, GroupStart, JoinRequest, Joined};
pub use groups::{ConsumedPartition, GroupSettings};
pub use io::Waker;
pub use producer_ids::ProducerIdentity;
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

/// Where a partition's log begins and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The first offset kept (retention moves it on).
    pub start: u64,
    /// One past the last durable record: the next offset to be written.
    pub end: u64,
}

/// The engine's own continuation of an append, run on the shard once it is durable or failed
/// (a caller's append is answered through its [`Ticket`]).
pub(crate) type AppendDone = Box<dyn FnOnce(Result<OffsetRange, DataError>) + Send>;
/// The engine's own continuation of a read.
pub(crate) type ReadDone = Box<dyn FnOnce(Result<ReadResult, DataError>) + Send>;
