//! Offsets committed by consumer groups that keep their own place (Kafka's classic groups,
//! which assign partitions on the client and commit the next offset to read): for each group,
//! each partition's committed offset and the client's metadata string.
//!
//! `DATA/committed/<group, hex>` holds one group's offsets, sealed with a CRC and replaced
//! atomically at every commit (`layout::write_atomic`), so a commit that returned is durable
//! and a crash leaves the old set or the new one, never a mix. Groups are read when first
//! asked for and kept in memory; their number and size are bounded.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{AdminError, IoFailure};
use crate::io::MetaFs;
use crate::layout::{seal_text, unseal_text, write_atomic};

/// The directory's name in the data directory.
pub const DIR_NAME: &str = "committed";
/// Groups with committed offsets, at most.
pub const GROUPS_MAX: usize = 10_000;
/// Partitions one group may hold offsets for, at most.
pub const PARTITIONS_PER_GROUP_MAX: usize = 100_000;
/// Bytes of a committed offset's metadata, at most (Kafka's default).
pub const METADATA_BYTES_MAX: usize = 4096;

/// A partition's committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group reads.
    pub offset: i64,
    /// What the client stored with it.
    pub metadata: String,
}

/// A group's committed offsets, by (topic, partition).
pub type GroupOffsets = BTreeMap<(String, u32), CommittedOffset>;

/// The committed offsets of every group.
pub struct Committed {
    dir: PathBuf,
    /// Groups read so far.
    groups: Mutex<HashMap<String, GroupOffsets>>,
}

impl Committed {
    /// The store of the data directory `data_dir`; nothing is read until a group is asked for.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR_NAME),
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, group: &str) -> PathBuf {
        self.dir.join(hex(group.as_bytes()))
    }

    /// Commits `offsets` for `group` durably (other partitions keep theirs).
    pub fn commit(
        &self,
        files: &dyn MetaFs,
        group: &str,
        offsets: &[(String, u32, CommittedOffset)],
    ) -> Result<(), AdminError> {
        // Maps changed by whole insertions: consistent after a panic.
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = match groups.get(group) {
            Some(current) => current.clone(),
            None if groups.len() >= GROUPS_MAX => {
                return Err(AdminError::TooMany {
                    what: "consumer groups with committed offsets",
                    max: GROUPS_MAX,
                })
            }
            None => self.read(files, group)?,
        };
        for (topic, partition, c) in offsets {
            if c.metadata.len() > METADATA_BYTES_MAX {
                return Err(AdminError::TooMany {
                    what: "bytes of metadata in a committed offset",
                    max: METADATA_BYTES_MAX,
                });
            }
            next.insert((topic.clone(), *partition), c.clone());
        }
        if next.len() > PARTITIONS_PER_GROUP_MAX {
            return Err(AdminError::TooMany {
                what: "partitions with offsets committed by one group",
                max: PARTITIONS_PER_GROUP_MAX,
            });
        }
        self.ensure_dir(files)?;
        write_atomic(files, &self.path(group), encode(&next).as_bytes()).map_err(AdminError::Io)?;
        groups.insert(group.to_string(), next);
        Ok(())
    }

    /// `group`'s committed offsets (none for a group that never committed).
    pub fn fetch(&self, files: &dyn MetaFs, group: &str) -> Result<GroupOffsets, AdminError> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.get(group) {
            return Ok(g.clone());
        }
        let read = self.read(files, group)?;
        if groups.len() < GROUPS_MAX {
            groups.insert(group.to_string(), read.clone());
        }
        Ok(read)
    }

    /// Every group that committed offsets.
    pub fn groups(&self, files: &dyn MetaFs) -> Result<Vec<String>, AdminError> {
        let entries = match files.list(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AdminError::Io(IoFailure::new("list", &self.dir, e))),
        };
        Ok(entries
            .iter()
            .filter_map(|e| unhex(&e.name))
            .filter_map(|name| String::from_utf8(name).ok())
            .collect())
    }

    fn ensure_dir(&self, files: &dyn MetaFs) -> Result<(), AdminError> {
        match files.create_dir(&self.dir) {
            Ok(()) => {
                let parent = self.dir.parent().unwrap_or(Path::new("."));
                crate::layout::sync_dir(files, parent).map_err(AdminError::Io)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(AdminError::Io(IoFailure::new("create", &self.dir, e))),
        }
    }

    fn read(&self, files: &dyn MetaFs, group: &str) -> Result<GroupOffsets, AdminError> {
        let path = self.path(group);
        let bytes = match files.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(GroupOffsets::new()),
            Err(e) => return Err(AdminError::Io(IoFailure::new("read", &path, e))),
        };
        let damaged = |detail: &str| AdminError::DamagedCommittedOffsets {
            path: path.clone(),
            detail: detail.to_string(),
        };
        let text = String::from_utf8(bytes).map_err(|_| damaged("not text"))?;
        let body = unseal_text(&text).ok_or_else(|| damaged("its CRC does not match"))?;
        decode(body).ok_or_else(|| damaged("a line is not topic, partition, offset, metadata"))
    }
}

/// One line per partition: topic (hex), partition, offset, metadata (hex), tab-separated.
fn encode(offsets: &GroupOffsets) -> String {
    let mut body = String::new();
    for ((topic, partition), c) in offsets {
        body.push_str(&format!(
            "{}\t{partition}\t{}\t{}\n",
            hex(topic.as_bytes()),
            c.offset,
            hex(c.metadata.as_bytes())
        ));
    }
    seal_text(body)
}

fn decode(body: &str) -> Option<GroupOffsets> {
    let mut out = GroupOffsets::new();
    for line in body.lines() {
        let mut fields = line.split('\t');
        let topic = String::from_utf8(unhex(fields.next()?)?).ok()?;
        let partition = fields.next()?.parse().ok()?;
        let offset = fields.next()?.parse().ok()?;
        let metadata = String::from_utf8(unhex(fields.next()?)?).ok()?;
        if fields.next().is_some() {
            return None;
        }
        out.insert((topic, partition), CommittedOffset { offset, metadata });
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SystemFs;

    fn offset(offset: i64, metadata: &str) -> CommittedOffset {
        CommittedOffset {
            offset,
            metadata: metadata.into(),
        }
    }

    #[test]
    fn commits_merge_and_survive_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Committed::new(dir.path());
        let fs = SystemFs;
        assert!(store.fetch(&fs, "g").unwrap().is_empty());
        store
            .commit(&fs, "g", &[("t".into(), 0, offset(5, "a\tb"))])
            .unwrap();
        store
            .commit(&fs, "g", &[("t".into(), 1, offset(7, ""))])
            .unwrap();
        store
            .commit(&fs, "g", &[("t".into(), 0, offset(3, "back"))])
            .unwrap();
        let again = Committed::new(dir.path());
        let got = again.fetch(&fs, "g").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[&("t".to_string(), 0)], offset(3, "back"));
        assert_eq!(got[&("t".to_string(), 1)], offset(7, ""));
        assert_eq!(again.groups(&fs).unwrap(), vec!["g".to_string()]);
    }

    #[test]
    fn a_damaged_file_is_named_not_taken_for_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Committed::new(dir.path());
        let fs = SystemFs;
        store
            .commit(&fs, "g", &[("t".into(), 0, offset(5, ""))])
            .unwrap();
        let path = store.path("g");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let fresh = Committed::new(dir.path());
        match fresh.fetch(&fs, "g") {
            Err(AdminError::DamagedCommittedOffsets { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metadata_beyond_its_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Committed::new(dir.path());
        let big = "x".repeat(METADATA_BYTES_MAX + 1);
        let err = store
            .commit(&SystemFs, "g", &[("t".into(), 0, offset(1, &big))])
            .unwrap_err();
        assert!(matches!(err, AdminError::TooMany { .. }), "{err:?}");
        assert!(store.fetch(&SystemFs, "g").unwrap().is_empty());
    }
}
