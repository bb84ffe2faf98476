//! The offset tables a shard owns, and their group commit on the shard's own ring. Acks store
//! into the memory-mapped table as they come; an ack asking for durability waits for the next
//! `fdatasync` of the table, submitted through the ring like a flush's write: while one sync is
//! in flight, every ack that asks gathers for the next, and one sync answers them all. Without
//! waiters, a dirty table is still synced every `PERIODIC_SYNC`, bounding how much acknowledged
//! state a crash can take back. After a failed sync the table takes no more durable acks: the
//! file's state is unknown.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::GroupError;
use std::collections::BTreeMap;

use crate::groups::{load_state, Countdown, GroupDone, SlotRef, StoredGroup, TableRef};
use crate::io::{Completion, Disk, FileId};
use crate::offsets::AckState;
use crate::offsets::OffsetTable;

use super::{Owner, Shard};

/// How often a dirty table is synced when no ack waits for it.
pub const PERIODIC_SYNC: Duration = Duration::from_millis(200);

/// One table, as its shard keeps it.
pub(super) struct ShardTable {
    index: usize,
    path: std::path::PathBuf,
    /// The mapping: this shard's alone.
    map: OffsetTable,
    file: FileId,
    /// Stores since the last sync started.
    dirty: bool,
    last_sync: Instant,
    /// Acks waiting for a sync not started yet.
    waiting: Vec<GroupDone>,
    /// The sync in flight: who it answers.
    syncing: Option<Vec<GroupDone>>,
    poisoned: Option<Arc<io::Error>>,
}

impl ShardTable {
    fn poisoned_error(&self, e: &Arc<io::Error>) -> GroupError {
        GroupError::OffsetTablePoisoned {
            path: self.path.clone(),
            source: Arc::clone(e),
        }
    }

    /// Whether a sync should start now.
    fn wants_sync(&self, now: Instant, stopping: bool) -> bool {
        if self.syncing.is_some() || self.poisoned.is_some() {
            return false;
        }
        !self.waiting.is_empty()
            || (self.dirty && (stopping || now >= self.last_sync + PERIODIC_SYNC))
    }

    /// Whether anything is left to make durable or in flight.
    pub fn busy(&self) -> bool {
        self.syncing.is_some()
            || (self.poisoned.is_none() && (self.dirty || !self.waiting.is_empty()))
    }
}

/// Stores `state` into `slot` (of one of `tables`, this shard's): durable after the table's
/// next sync.
pub(super) fn store_into(
    tables: &mut BTreeMap<usize, ShardTable>,
    slot: SlotRef,
    state: &AckState,
) {
    match tables.get_mut(&slot.table) {
        Some(t) => {
            t.map.store(slot.slot, state);
            t.dirty = true;
        }
        // Slots are placed in their shard's table at creation and moved there at open.
        None => log::error!(
            "slot {} of offset table {} is not this shard's to store into",
            slot.slot,
            slot.table
        ),
    }
}

impl<D: Disk> Shard<D> {
    /// Takes the tables this shard owns.
    pub(super) fn attach_tables(&mut self, tables: Vec<TableRef>) {
        for t in tables {
            match self.disk.open(&t.path, false) {
                Ok(file) => {
                    self.groups.tables.insert(
                        t.index,
                        ShardTable {
                            index: t.index,
                            path: t.path,
                            map: t.map,
                            file,
                            dirty: false,
                            last_sync: crate::clock::now(),
                            waiting: Vec::new(),
                            syncing: None,
                            poisoned: None,
                        },
                    );
                }
                Err(e) => log::error!(
                    "cannot open offset table {} for its syncs: {e}; durable acks of its groups fail",
                    t.path.display()
                ),
            }
        }
    }

    /// The durable acknowledgement state of each partition of `g` this shard owns, from its
    /// tables.
    pub(super) fn load_states(&self, g: &StoredGroup) -> Vec<(u32, AckState)> {
        let shards = self.cfg.shards.max(1);
        (0..g.partitions())
            .filter(|&p| crate::shard_for(&g.topic, p, shards) == self.id)
            .filter_map(|p| {
                let slot = g.slot(p)?;
                let state = match self.groups.tables.get(&slot.table) {
                    Some(t) => load_state(&t.map, &t.path, g, p),
                    // Slots are placed in their shard's table at creation and moved there at
                    // open; a table that failed to open for its syncs falls back to the
                    // checkpoint (redelivering, never skipping).
                    None => {
                        log::error!(
                            "group {:?} on {}/{p}: offset table {} is not this shard's; going \
                             on from its checkpoint",
                            g.group,
                            g.topic,
                            slot.table
                        );
                        AckState::new(slot.owner, g.checkpoint(p))
                    }
                };
                Some((p, state))
            })
            .collect()
    }

    /// Calls `done` once every store made so far to these tables is durable.
    pub(super) fn tables_durable(&mut self, tables: &[usize], done: GroupDone) {
        match tables {
            [] => done(Ok(())),
            [one] => self.table_durable(*one, done),
            many => {
                let countdown = Countdown::new(many.len(), done);
                for &t in many {
                    let c = Arc::clone(&countdown);
                    self.table_durable(t, Box::new(move |r| c.part_done(r)));
                }
            }
        }
    }

    /// Calls `done` once every store made so far to `table` is durable.
    fn table_durable(&mut self, table: usize, done: GroupDone) {
        let Some(t) = self.groups.tables.get_mut(&table) else {
            return done(Err(GroupError::OffsetTableUnavailable { table }));
        };
        if let Some(e) = &t.poisoned {
            let err = t.poisoned_error(e);
            return done(Err(err));
        }
        t.waiting.push(done);
    }

    /// Starts the syncs that are due.
    pub(super) fn tables_turn(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .groups
            .tables
            .values()
            .filter(|t| t.wants_sync(now, self.stopping))
            .map(|t| t.index)
            .collect();
        for index in due {
            self.start_table_sync(index, now);
        }
    }

    fn start_table_sync(&mut self, index: usize, now: Instant) {
        let token = self.token();
        let Some(t) = self.groups.tables.get_mut(&index) else {
            return;
        };
        // After the sync starts, stores go to the copy it does not cover (`offsets.rs`).
        t.map.sync_starting();
        t.dirty = false;
        t.last_sync = now;
        t.syncing = Some(std::mem::take(&mut t.waiting));
        let file = t.file;
        self.disk.submit_sync(file, token);
        self.ops.insert(token, Owner::TableSync(index));
    }

    /// A table's sync completed: its waiters are answered.
    pub(super) fn on_table_sync(&mut self, index: usize, c: Completion) {
        let Some(t) = self.groups.tables.get_mut(&index) else {
            return;
        };
        let Some(covered) = t.syncing.take() else {
            return;
        };
        match c.result {
            Ok(_) => {
                t.map.sync_done();
                for done in covered {
                    done(Ok(()));
                }
            }
            Err(e) => {
                t.syncing = Some(covered);
                self.table_sync_failed(index, e);
            }
        }
    }

    /// A sync failed: the table takes no more durable acks (the file's state is unknown).
    fn table_sync_failed(&mut self, index: usize, e: io::Error) {
        let Some(t) = self.groups.tables.get_mut(&index) else {
            return;
        };
        log::error!(
            "sync of offset table {} failed: {e}; durable acks of its groups fail until restart",
            t.path.display()
        );
        let e = Arc::new(e);
        let err = t.poisoned_error(&e);
        t.poisoned = Some(e);
        let covered = t.syncing.take().unwrap_or_default();
        for done in covered.into_iter().chain(std::mem::take(&mut t.waiting)) {
            done(Err(err.clone()));
        }
    }

    /// When the shard must wake to sync a dirty table.
    pub(super) fn tables_wake_at(&self) -> Option<Instant> {
        self.groups
            .tables
            .values()
            .filter(|t| t.syncing.is_none() && t.poisoned.is_none())
            .filter_map(|t| {
                if !t.waiting.is_empty() {
                    Some(crate::clock::now())
                } else {
                    t.dirty.then_some(t.last_sync + PERIODIC_SYNC)
                }
            })
            .min()
    }

    /// Whether a table still has something to make durable (a stopping shard waits for it).
    pub(super) fn tables_busy(&self) -> bool {
        self.groups.tables.values().any(ShardTable::busy)
    }

    /// Closes the tables' files.
    pub(super) fn close_tables(&mut self) {
        for (_, t) in std::mem::take(&mut self.groups.tables) {
            self.disk.close(t.file);
        }
    }
}
