//! Consumer groups. Their durable state: group files and memory-mapped offset tables
//! (`store`), synced by the shards owning them on their rings (`shard/tables.rs`). Their live
//! state is shard state: the delivery state of a (group, partition) ([`crate::delivery`])
//! lives on the shard owning the partition, which serves consumes, acks and nacks for it and
//! runs its timers; members are shared records (`members`); a consume goes from shard to shard
//! (`consume`); requests done in parts answer once (`countdown`); a helper thread copies dead
//! letters and records checkpoints (`helper`).

mod consume;
mod countdown;
pub mod dead_letter;
mod helper;
mod members;
mod meta;
mod store;

use std::sync::Arc;

pub use consume::ConsumedPartition;
pub(crate) use consume::{cover, ConsumeDone, ConsumeGather, ConsumeTask, Look, Reading};
pub(crate) use countdown::Countdown;
pub(crate) use countdown::GroupDone;
pub(crate) use helper::{GroupHelper, HelperJob, HelperTx};
pub(crate) use members::Member;
#[cfg(any(test, feature = "testing"))]
pub(crate) use meta::GroupMeta;
pub use meta::{GroupSettings, SlotRef};
/// For tests of the store alone, which read the tables the shards would own.
#[cfg(feature = "testing")]
pub use store::TableMaps;
pub use store::{load_state, GroupStore, StoredGroup, TableRef};

/// A group: its name and the topic it reads.
pub type GroupKey = (Arc<str>, Arc<str>);

/// Offsets of one partition, `(partition, first, last)`, last included: what acks and nacks
/// name.
pub type Span = (u32, u64, u64);
