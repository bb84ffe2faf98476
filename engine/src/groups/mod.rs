//! Consumer groups' durable state: group files, memory-mapped offset tables and their
//! group-committed syncs. Delivery itself (who holds what, redelivery) is
//! [`crate::delivery`]; the acknowledgement state it keeps is what is stored here.

mod meta;
mod power_cut;
mod store;
mod table_sync;

pub use meta::{owner_tag, GroupMeta, GroupSettings, SlotRef};
pub use power_cut::TablePowerCut;
pub use store::{groups_dir, GroupStore, StoredGroup, PERIODIC_SYNC};
pub use table_sync::{SyncDone, TableSync};
