//! The durable side of consumer groups: which groups exist, and their acknowledgement state in
//! the memory-mapped offset tables. Table `n` belongs to shard `n % shards`, which alone stores
//! into it, loads from it and syncs it on its own ring (`shard/tables.rs`): the store hands the
//! mappings over once it has opened and checked them ([`TableMaps`]), and keeps only which
//! slots are in use. A partition's slot is always in a table of the shard owning the partition
//! (moved there at open if the shard count changed).
//!
//! A group is created in an order that a crash cannot get wrong: its slots are written and
//! synced first, its meta file last. A crash before the meta file leaves slots no meta file
//! names, which are free at the next start.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{GroupError, IoFailure, OpenError};
use crate::groups::meta::{owner_tag, GroupMeta, GroupSettings, SlotRef};
use crate::io::{MappedRecord, MetaFs};
use crate::layout::{self, validate_group_name, validate_topic_name, write_atomic};
use crate::offsets::{AckState, Loaded, OffsetTable};
use crate::shard_for;

/// Directory of the group files.
pub fn groups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("groups")
}

fn table_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("offsets-{n}.tbl"))
}

fn meta_path(dir: &Path, topic: &str, group: &str) -> PathBuf {
    dir.join(topic).join(format!("{group}.meta"))
}

struct Table {
    path: PathBuf,
    slots: usize,
    /// Slots some group's meta file names (taken by group creation, which owns no mapping).
    used: Mutex<BTreeSet<usize>>,
}

/// An offset table, as the shard owning it gets it: the mapping is the shard's alone.
pub struct TableRef {
    /// Its number (slots name it).
    pub index: usize,
    /// Its file.
    pub path: PathBuf,
    /// The mapping.
    pub map: OffsetTable,
}

/// The tables' mappings while no shard owns them: from the store's opening until they are
/// handed to their shards ([`GroupStore::hand_out`]), and in tests of the store alone.
pub struct TableMaps(Vec<OffsetTable>);

impl TableMaps {
    /// Stores `state` into `slot`; durable after the next [`GroupStore::flush_all`].
    pub fn store(&mut self, slot: SlotRef, state: &AckState) {
        if let Some(map) = self.0.get_mut(slot.table) {
            map.store(slot.slot, state);
        }
    }
}

impl Table {
    fn used(&self) -> MutexGuard<'_, BTreeSet<usize>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A group known to the store.
pub struct StoredGroup {
    meta: Mutex<GroupMeta>,
    /// Group name.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Settings, fixed at creation.
    pub settings: GroupSettings,
    slots: Vec<SlotRef>,
}

impl StoredGroup {
    /// Partitions the group covers.
    pub fn partitions(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Where partition `p`'s acknowledgement state lives.
    pub fn slot(&self, p: u32) -> Option<SlotRef> {
        self.slots.get(p as usize).copied()
    }

    fn meta(&self) -> MutexGuard<'_, GroupMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partition `p`'s checkpoint: an acknowledged offset to fall back on.
    pub fn checkpoint(&self, p: u32) -> u64 {
        self.meta()
            .partitions
            .get(p as usize)
            .map_or(0, |(_, checkpoint)| *checkpoint)
    }
}

/// Every consumer group's durable state in one data directory.
pub struct GroupStore {
    dir: PathBuf,
    /// The group metadata files and directories (`io/meta.rs`).
    files: Arc<dyn MetaFs>,
    tables: Vec<Table>,
    /// Set in power-loss tests: every table sync is recorded.
    power: Option<Arc<MappedRecord>>,
    slots_per_table: usize,
    groups: Mutex<HashMap<(String, String), Arc<StoredGroup>>>,
    /// Groups whose metadata is damaged, held offline with why.
    damaged: Mutex<HashMap<(String, String), Arc<GroupError>>>,
}

impl GroupStore {
    /// Opens the group files of `data_dir` (which the caller has locked, by opening the
    /// engine on it) for `shards` shards, with at least one offset table of `slots` slots per
    /// shard; every sync is recorded by `power` if given (power-loss tests); metadata files go
    /// through `files`. Returns the tables' mappings apart, to be handed to their shards.
    pub fn open(
        data_dir: &Path,
        shards: usize,
        slots: usize,
        power: Option<Arc<MappedRecord>>,
        files: Arc<dyn MetaFs>,
    ) -> Result<(Self, TableMaps), OpenError> {
        let tables = shards.max(1);
        let dir = groups_dir(data_dir);
        layout::create_dir_durable(&*files, &dir)?;
        let mut metas = Vec::new();
        let mut damaged = Vec::new();
        let mut existing_tables = 0;
        let entries = files
            .list(&dir)
            .map_err(|e| OpenError::io("list groups", &dir, e))?;
        for entry in entries {
            let name = entry.name;
            if let Some(n) = name
                .strip_prefix("offsets-")
                .and_then(|r| r.strip_suffix(".tbl"))
                .and_then(|n| n.parse::<usize>().ok())
            {
                existing_tables = existing_tables.max(n + 1);
            } else if entry.is_dir {
                let (found, bad) = read_metas(&*files, &entry.path, &name)?;
                metas.extend(found);
                damaged.extend(bad);
            }
        }
        let mut store = Self {
            files,
            tables: Vec::new(),
            power: power.clone(),
            slots_per_table: slots,
            groups: Mutex::new(HashMap::new()),
            damaged: Mutex::new(HashMap::new()),
            dir,
        };
        let mut maps = TableMaps(Vec::new());
        for n in 0..tables.max(existing_tables).max(1) {
            let (table, map) = open_table(&table_path(&store.dir, n), slots, power.as_deref())?;
            store.tables.push(table);
            maps.0.push(map);
        }
        for meta in metas {
            let missing = meta.partitions.iter().find(|(slot, _)| {
                store
                    .tables
                    .get(slot.table)
                    .is_none_or(|t| slot.slot >= t.slots)
            });
            if let Some((slot, _)) = missing {
                let path = meta_path(&store.dir, &meta.topic, &meta.group);
                let detail = format!(
                    "names slot {} of table {}, which does not exist",
                    slot.slot, slot.table
                );
                damaged.push((
                    (meta.group, meta.topic),
                    GroupError::DamagedMetadata { path, detail },
                ));
                continue;
            }
            for (slot, _) in &meta.partitions {
                if let Some(t) = store.tables.get(slot.table) {
                    t.used().insert(slot.slot);
                }
            }
            let g = stored(meta);
            store
                .groups()
                .insert((g.group.clone(), g.topic.clone()), Arc::new(g));
        }
        store.move_slots_to_their_shards(&mut maps, tables)?;
        for ((group, topic), cause) in damaged {
            log::error!(
                "group {group:?} on {topic} is offline: {cause}. Every other group is served; \
                 joins to this one are answered Offline. To repair: docs/OPERATIONS.md, \
                 \"Damaged files\""
            );
            store.damaged().insert((group, topic), Arc::new(cause));
        }
        Ok((store, maps))
    }

    fn damaged(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<GroupError>>> {
        // Single inserts and removals: consistent after any panic.
        self.damaged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Groups held offline because their metadata is damaged.
    pub fn offline_count(&self) -> usize {
        self.damaged().len()
    }

    /// Repair: removes the damaged metadata files of offline groups, so that each such group is
    /// created anew by its next join (from where that join asks to start: what the old group
    /// had acknowledged is forgotten). Returns how many were removed.
    pub fn remove_damaged(&self) -> Result<usize, IoFailure> {
        let mut damaged = self.damaged();
        let mut removed = 0;
        for (group, topic) in damaged.keys() {
            let path = meta_path(&self.dir, topic, group);
            match self.files.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(IoFailure::new("remove damaged group", path, e)),
            }
            log::warn!(
                "repair: removed {}; group {group:?} on {topic} starts anew at its next join",
                path.display()
            );
            removed += 1;
            if let Some(dir) = path.parent() {
                layout::sync_dir(&*self.files, dir)?;
            }
        }
        damaged.clear();
        Ok(removed)
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<StoredGroup>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks every group against its partitions' logs, `log_end` giving a partition's end
    /// offset (`None` for a topic that is gone). A committed offset beyond the end means the
    /// log lost messages the group had acknowledged (or the table belongs to another log);
    /// kept as it is, it would mark the messages appended next at those offsets as
    /// acknowledged, never delivering them. Each such partition is reported and brought back
    /// to the log's end. Returns how many were.
    pub fn bring_within_logs(
        &self,
        maps: &mut TableMaps,
        log_end: impl Fn(&str, u32) -> Option<u64>,
    ) -> usize {
        let groups: Vec<Arc<StoredGroup>> = self.groups().values().cloned().collect();
        let mut brought_back = 0;
        for g in groups {
            for p in 0..g.partitions() {
                let Some(end) = log_end(&g.topic, p) else {
                    continue;
                };
                let acks = self.load(maps, &g, p);
                if acks.committed <= end {
                    continue;
                }
                log::error!(
                    "group {:?} on {}/{p}: its committed offset {} lies beyond the partition's \
                     end {end}: the log lost messages the group had acknowledged; the group \
                     goes on from {end}, so messages appended from now on are delivered",
                    g.group,
                    g.topic,
                    acks.committed
                );
                // The checkpoint first: the slot's state is taken back only as far as it.
                if let Err(e) = self.lower_checkpoint(&g, p, end) {
                    log::error!(
                        "group {:?} on {}/{p}: cannot record its new checkpoint: {e}",
                        g.group,
                        g.topic
                    );
                    continue;
                }
                maps.store(g.slots[p as usize], &AckState::new(acks.owner, end));
                brought_back += 1;
            }
        }
        if brought_back > 0 {
            if let Err(e) = self.flush_all(maps) {
                log::error!("cannot sync the offset tables after bringing groups back: {e}");
            }
        }
        brought_back
    }

    /// The group reading `topic`, if it exists.
    pub fn find(&self, group: &str, topic: &str) -> Option<Arc<StoredGroup>> {
        self.groups()
            .get(&(group.to_string(), topic.to_string()))
            .cloned()
    }

    /// The group reading `topic`, created with `settings` and starting at `starts` (one
    /// offset per partition, computed by `starts` only when the group is new) unless it
    /// exists already. `shards` places each partition's slot in the table of the shard
    /// owning the partition; `write` stores each new slot's starting offset and makes it
    /// durable (the shards owning the tables do) before the group's meta file commits it.
    pub fn find_or_create(
        &self,
        group: &str,
        topic: &str,
        settings: GroupSettings,
        shards: usize,
        starts: impl FnOnce() -> Result<Vec<u64>, GroupError>,
        write: impl FnOnce(&[(SlotRef, u64)]) -> Result<(), GroupError>,
    ) -> Result<Arc<StoredGroup>, GroupError> {
        validate_group_name(group).map_err(|reason| GroupError::InvalidGroupName {
            name: group.to_string(),
            reason,
        })?;
        validate_topic_name(topic).map_err(|reason| GroupError::InvalidTopicName {
            name: topic.to_string(),
            reason,
        })?;
        let key = (group.to_string(), topic.to_string());
        if let Some(cause) = self.damaged().get(&key) {
            return Err(GroupError::GroupOffline {
                group: group.to_string(),
                topic: topic.to_string(),
                cause: Arc::clone(cause),
            });
        }
        let mut groups = self.groups();
        if let Some(g) = groups.get(&key) {
            return Ok(Arc::clone(g));
        }
        let starts = starts()?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut partitions = Vec::with_capacity(starts.len());
        let mut taken: Vec<SlotRef> = Vec::new();
        let release = |taken: &[SlotRef]| {
            for s in taken {
                self.tables[s.table].used().remove(&s.slot);
            }
        };
        for (p, &start) in starts.iter().enumerate() {
            let p = p as u32;
            let table = shard_for(topic, p, shards.max(1));
            assert!(table < self.tables.len(), "a table for every shard");
            let Some(slot) = self.take_slot(table) else {
                release(&taken);
                return Err(GroupError::OffsetTableFull {
                    path: self.tables[table].path.clone(),
                    slots: self.slots_per_table,
                });
            };
            let slot = SlotRef {
                table,
                slot,
                owner: owner_tag(group, topic, p, created),
            };
            taken.push(slot);
            partitions.push((slot, start));
        }
        if let Err(e) = write(&partitions) {
            release(&taken);
            return Err(e);
        }
        let meta = GroupMeta {
            group: group.to_string(),
            topic: topic.to_string(),
            created,
            settings,
            partitions,
        };
        let path = meta_path(&self.dir, topic, group);
        let files = &*self.files;
        let written = layout::create_dir_durable(files, path.parent().unwrap_or(&self.dir))
            .and_then(|()| write_atomic(files, &path, meta.encode().as_bytes()));
        if let Err(e) = written {
            release(&taken);
            return Err(e.into());
        }
        let g = Arc::new(stored(meta));
        groups.insert(key, Arc::clone(&g));
        Ok(g)
    }

    fn take_slot(&self, table: usize) -> Option<usize> {
        let t = &self.tables[table];
        let mut used = t.used();
        let free = (0..t.slots).find(|s| !used.contains(s))?;
        used.insert(free);
        Some(free)
    }

    /// The acknowledgement state of a partition of `g`, from `maps` ([`load_state`]).
    pub fn load(&self, maps: &TableMaps, g: &StoredGroup, partition: u32) -> AckState {
        let slot = g.slots[partition as usize];
        match maps.0.get(slot.table) {
            Some(map) => load_state(map, &self.tables[slot.table].path, g, partition),
            None => AckState::new(slot.owner, g.checkpoint(partition)),
        }
    }

    /// Makes every table durable now, from this thread: at open, before the shards own them,
    /// and in tests of the store alone.
    pub fn flush_all(&self, maps: &mut TableMaps) -> Result<(), IoFailure> {
        for map in &mut maps.0 {
            map.flush(self.power.as_deref())?;
        }
        Ok(())
    }

    /// Hands each of `shards` shards the tables it owns (those numbered the shard modulo
    /// `shards`), by shard.
    pub fn hand_out(&self, maps: TableMaps, shards: usize) -> Vec<Vec<TableRef>> {
        let shards = shards.max(1);
        let mut out: Vec<Vec<TableRef>> = (0..shards).map(|_| Vec::new()).collect();
        for (index, (t, map)) in self.tables.iter().zip(maps.0).enumerate() {
            out[index % shards].push(TableRef {
                index,
                path: t.path.clone(),
                map,
            });
        }
        out
    }

    /// Moves each partition's slot into the table of the shard owning the partition, when the
    /// shard count changed since the group was created (a table is stored into and synced by
    /// its owner alone). The new slot is written and synced before the meta file naming it
    /// replaces the old one; a crash in between leaves the old slot in use and the new one free.
    fn move_slots_to_their_shards(
        &self,
        maps: &mut TableMaps,
        shards: usize,
    ) -> Result<(), OpenError> {
        let groups: Vec<Arc<StoredGroup>> = self.groups().values().cloned().collect();
        for g in groups {
            let moves: Vec<(u32, usize)> = (0..g.partitions())
                .map(|p| (p, shard_for(&g.topic, p, shards.max(1))))
                .filter(|&(p, want)| g.slots[p as usize].table != want)
                .collect();
            if moves.is_empty() {
                continue;
            }
            let mut meta = g.meta().clone();
            let mut freed = Vec::new();
            for &(p, want) in &moves {
                let state = self.load(maps, &g, p);
                let Some(slot) = self.take_slot(want) else {
                    return Err(OpenError::OffsetTableFull {
                        path: self.tables[want].path.clone(),
                        slots: self.slots_per_table,
                    });
                };
                let old = meta.partitions[p as usize].0;
                let new = SlotRef {
                    table: want,
                    slot,
                    owner: old.owner,
                };
                maps.store(new, &state);
                meta.partitions[p as usize].0 = new;
                freed.push(old);
            }
            self.flush_all(maps)?;
            write_atomic(
                &*self.files,
                &meta_path(&self.dir, &g.topic, &g.group),
                meta.encode().as_bytes(),
            )?;
            for old in freed {
                self.tables[old.table].used().remove(&old.slot);
            }
            log::info!(
                "group {:?} on {}: {} partitions' acknowledgement state moved to the tables of \
                 the shards now owning them",
                g.group,
                g.topic,
                moves.len()
            );
            let moved = Arc::new(stored(meta));
            self.groups()
                .insert((moved.group.clone(), moved.topic.clone()), moved);
        }
        Ok(())
    }

    /// Takes partition `p`'s checkpoint back to `end` if it is beyond it.
    fn lower_checkpoint(&self, g: &StoredGroup, p: u32, end: u64) -> Result<(), IoFailure> {
        let mut meta = g.meta();
        match meta.partitions.get_mut(p as usize) {
            Some((_, checkpoint)) if *checkpoint > end => *checkpoint = end,
            _ => return Ok(()),
        }
        write_atomic(
            &*self.files,
            &meta_path(&self.dir, &g.topic, &g.group),
            meta.encode().as_bytes(),
        )
    }

    /// Records older committed offsets to fall back on (one per partition) in the group's meta
    /// file. They must be acknowledged already: a fallback redelivers above them.
    pub fn checkpoint(&self, g: &StoredGroup, committed: &[u64]) -> Result<(), IoFailure> {
        let mut meta = g.meta();
        let mut changed = false;
        for ((_, checkpoint), &c) in meta.partitions.iter_mut().zip(committed) {
            if c > *checkpoint {
                *checkpoint = c;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        write_atomic(
            &*self.files,
            &meta_path(&self.dir, &g.topic, &g.group),
            meta.encode().as_bytes(),
        )
    }

    /// Forgets every group of `topic` (the topic is being deleted); their slots become free.
    pub fn remove_topic(&self, topic: &str) -> Result<(), IoFailure> {
        let mut groups = self.groups();
        let doomed: Vec<(String, String)> =
            groups.keys().filter(|(_, t)| t == topic).cloned().collect();
        let dir = self.dir.join(topic);
        if dir.exists() {
            self.files
                .remove_dir_all(&dir)
                .map_err(|e| IoFailure::new("remove", &dir, e))?;
            layout::sync_dir(&*self.files, &self.dir)?;
        }
        for key in doomed {
            if let Some(g) = groups.remove(&key) {
                for s in &g.slots {
                    self.tables[s.table].used().remove(&s.slot);
                }
            }
        }
        Ok(())
    }

    #[cfg(any(test, feature = "testing"))]
    /// The table file holding a partition's slot, and the slot (for tools and tests).
    pub fn slot_of(&self, g: &StoredGroup, partition: u32) -> Option<(PathBuf, usize)> {
        let s = g.slots.get(partition as usize)?;
        Some((self.tables[s.table].path.clone(), s.slot))
    }
}

fn stored(meta: GroupMeta) -> StoredGroup {
    StoredGroup {
        group: meta.group.clone(),
        topic: meta.topic.clone(),
        settings: meta.settings,
        slots: meta.partitions.iter().map(|(s, _)| *s).collect(),
        meta: Mutex::new(meta),
    }
}

fn open_table(
    path: &Path,
    slots: usize,
    power: Option<&MappedRecord>,
) -> Result<(Table, OffsetTable), OpenError> {
    let map = OffsetTable::open(path, slots)?;
    if let Some(p) = power {
        p.register_mapped(path)
            .map_err(|e| OpenError::io("read offset table", path, e))?;
    }
    let table = Table {
        path: path.to_path_buf(),
        slots: map.slots(),
        used: Mutex::new(BTreeSet::new()),
    };
    Ok((table, map))
}

/// The acknowledgement state of a partition of `g` in `map` (the table file `path`): the newest
/// valid copy of its slot, or, when both copies are damaged (or lost), its checkpoint, with a
/// warning: messages acknowledged after the checkpoint are delivered again, none is skipped.
pub fn load_state(map: &OffsetTable, path: &Path, g: &StoredGroup, partition: u32) -> AckState {
    let slot = g.slots[partition as usize];
    let checkpoint = g.checkpoint(partition);
    let table = path.display();
    let (found, problem) = match map.load(slot.slot, slot.owner) {
        Loaded::State(state) => (Some(state), None),
        Loaded::OtherCopyDamaged(state) => (Some(state), Some("one copy of its slot is damaged")),
        Loaded::Nothing { damaged: true } => (None, Some("both copies of its slot are damaged")),
        Loaded::Nothing { damaged: false } => (None, Some("its slot holds nothing for it")),
    };
    // The checkpoint was recorded only once durable in the table, so a slot state older
    // than it is stale (its newer copy was lost): take whichever is newer, so that nothing
    // durably acknowledged is delivered again.
    let state = match found {
        Some(state) if state.committed >= checkpoint => state,
        _ => AckState::new(slot.owner, checkpoint),
    };
    if let Some(problem) = problem {
        log::warn!(
            "group {:?} on {}/{partition}: {problem} (table {table}, slot {}); going on from \
                 committed offset {} (the slot's surviving state, or the group's checkpoint at \
                 {checkpoint} if newer)",
            g.group,
            g.topic,
            slot.slot,
            state.committed,
        );
    }
    state
}

/// Reads every `*.meta` in a topic's group directory, removing temp files a crash left.
/// A damaged group file: (group, topic) and why.
type Damaged = ((String, String), GroupError);

/// The group metadata files of one topic's directory: those that read, and those that do not.
fn read_metas(
    files: &dyn MetaFs,
    dir: &Path,
    topic: &str,
) -> Result<(Vec<GroupMeta>, Vec<Damaged>), OpenError> {
    let mut metas = Vec::new();
    let mut damaged = Vec::new();
    let entries = files
        .list(dir)
        .map_err(|e| OpenError::io("list groups", dir, e))?;
    for entry in entries {
        let (path, name) = (entry.path, entry.name);
        if name.ends_with(".tmp") {
            files
                .remove_file(&path)
                .map_err(|e| OpenError::io("remove", &path, e))?;
            continue;
        }
        let Some(group) = name.strip_suffix(".meta") else {
            log::warn!("ignoring {} in the groups directory", path.display());
            continue;
        };
        let key = (group.to_string(), topic.to_string());
        let text = match files.read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                damaged.push((key, GroupError::io("read group", &path, e)));
                continue;
            }
        };
        match GroupMeta::decode(&text) {
            Some(meta) => metas.push(meta),
            None => damaged.push((
                key,
                GroupError::DamagedMetadata {
                    path,
                    detail: "group metadata fails its checksum".into(),
                },
            )),
        }
    }
    Ok((metas, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SystemFs;
    use std::fs;
    use std::time::Duration;

    fn starts(v: Vec<u64>) -> impl FnOnce() -> Result<Vec<u64>, GroupError> {
        move || Ok(v)
    }

    /// A group's creation writes its new slots through the shards owning the tables; a store
    /// alone has none: these tests write them into the maps, and sync where it matters.
    fn write_into(
        maps: &mut TableMaps,
    ) -> impl FnOnce(&[(SlotRef, u64)]) -> Result<(), GroupError> + '_ {
        move |slots| {
            for &(slot, start) in slots {
                maps.store(slot, &AckState::new(slot.owner, start));
            }
            Ok(())
        }
    }

    fn store_state(maps: &mut TableMaps, g: &StoredGroup, p: u32, state: &AckState) {
        maps.store(g.slot(p).unwrap(), state);
    }

    #[test]
    fn groups_and_their_acks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let settings = GroupSettings {
            ack_timeout: Duration::from_secs(5),
            max_deliveries: 4,
        };
        {
            let (store, mut maps) =
                GroupStore::open(dir.path(), 2, 64, None, Arc::new(SystemFs)).unwrap();
            let g = store
                .find_or_create(
                    "g",
                    "orders",
                    settings,
                    2,
                    starts(vec![0, 10, 20]),
                    write_into(&mut maps),
                )
                .unwrap();
            let mut s = store.load(&maps, &g, 1);
            assert_eq!(s.committed, 10);
            s.ack(10);
            s.ack(12);
            store_state(&mut maps, &g, 1, &s);
            store.flush_all(&mut maps).unwrap();
            let again = store
                .find_or_create(
                    "g",
                    "orders",
                    GroupSettings::default(),
                    2,
                    || panic!("an existing group is not created again"),
                    write_into(&mut maps),
                )
                .unwrap();
            assert_eq!(again.settings, settings, "settings are fixed at creation");
        }
        let (store, maps) = GroupStore::open(dir.path(), 2, 64, None, Arc::new(SystemFs)).unwrap();
        let g = store.find("g", "orders").unwrap();
        assert_eq!(g.partitions(), 3);
        let s = store.load(&maps, &g, 1);
        assert_eq!(s.committed, 11);
        assert!(s.is_acked(12) && !s.is_acked(11));
        assert_eq!(store.load(&maps, &g, 2).committed, 20);
    }

    #[test]
    fn both_copies_damaged_falls_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (path, slot) = synced_group(dir.path(), 50, 30);
        let mut bytes = fs::read(&path).unwrap();
        let at = slot * crate::offsets::SLOT_BYTES;
        bytes[at + 20] ^= 0xff;
        bytes[at + crate::offsets::COPY_BYTES + 20] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let (store, maps) = GroupStore::open(dir.path(), 1, 8, None, Arc::new(SystemFs)).unwrap();
        let g = store.find("g", "t").unwrap();
        assert_eq!(
            store.load(&maps, &g, 0).committed,
            30,
            "the checkpoint, not 0 or 50"
        );
    }

    /// Acknowledges `0..acked` of a new group's partition 0, each stored and synced one state
    /// at a time (so one copy of the slot holds the last state, the other the one before),
    /// checkpoints `checkpoint`, and returns the slot's table file and slot.
    fn synced_group(dir: &Path, acked: u64, checkpoint: u64) -> (PathBuf, usize) {
        let (store, mut maps) = GroupStore::open(dir, 1, 8, None, Arc::new(SystemFs)).unwrap();
        let g = store
            .find_or_create(
                "g",
                "t",
                GroupSettings::default(),
                1,
                starts(vec![0]),
                write_into(&mut maps),
            )
            .unwrap();
        let mut s = store.load(&maps, &g, 0);
        for o in [0, acked] {
            while s.committed < o {
                s.ack(s.committed);
            }
            store_state(&mut maps, &g, 0, &s);
            store.flush_all(&mut maps).unwrap();
        }
        store.checkpoint(&g, &[checkpoint]).unwrap();
        store.slot_of(&g, 0).unwrap()
    }

    #[test]
    fn a_damaged_copy_never_takes_the_group_back_behind_its_checkpoint() {
        for copy in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let (path, slot) = synced_group(dir.path(), 1000, 1000);
            // One copy holds committed 1000, the other 0; damage one of them.
            let mut bytes = fs::read(&path).unwrap();
            bytes[slot * crate::offsets::SLOT_BYTES + copy * crate::offsets::COPY_BYTES + 20] ^=
                0xff;
            fs::write(&path, bytes).unwrap();
            let (store, maps) =
                GroupStore::open(dir.path(), 1, 8, None, Arc::new(SystemFs)).unwrap();
            let g = store.find("g", "t").unwrap();
            assert_eq!(
                store.load(&maps, &g, 0).committed,
                1000,
                "copy {copy} damaged: the newest of slot and checkpoint, never the older copy's 0"
            );
        }
    }

    #[test]
    fn slots_of_a_deleted_topic_s_groups_are_reused_without_reading_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut maps) =
            GroupStore::open(dir.path(), 1, 2, None, Arc::new(SystemFs)).unwrap();
        let g = store
            .find_or_create(
                "g",
                "t",
                GroupSettings::default(),
                1,
                starts(vec![7, 7]),
                write_into(&mut maps),
            )
            .unwrap();
        let mut s = store.load(&maps, &g, 0);
        s.ack(7);
        store_state(&mut maps, &g, 0, &s);
        let full = store.find_or_create(
            "h",
            "t",
            GroupSettings::default(),
            1,
            starts(vec![0]),
            write_into(&mut maps),
        );
        assert!(matches!(full, Err(GroupError::OffsetTableFull { .. })));
        store.remove_topic("t").unwrap();
        assert!(store.find("g", "t").is_none());
        let g2 = store
            .find_or_create(
                "g",
                "t",
                GroupSettings::default(),
                1,
                starts(vec![0, 0]),
                write_into(&mut maps),
            )
            .unwrap();
        assert_eq!(
            store.load(&maps, &g2, 0).committed,
            0,
            "a new group starts afresh"
        );
    }
}
