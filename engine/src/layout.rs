//! Where things live in the data directory, and the small durable files beside the segments.
//!
//! ```text
//! DATA/LOCK                                  flock'ed while an engine has the directory
//! DATA/topics/NAME/meta                      topic metadata, replaced atomically
//! DATA/topics/NAME/PARTITION/BASE.seg        segments, BASE = 20-digit first offset
//! DATA/topics/NAME/PARTITION/BASE.sum        a sealed segment's summary (`summary.rs`)
//! DATA/topics/NAME/PARTITION/next.prep       the next segment, allocated ahead of need
//! DATA/topics/NAME/PARTITION/lost            offsets a repair cut away, until filled
//! DATA/groups/offsets-N.tbl                  consumer-group offset table N (docs/FORMAT.md)
//! DATA/groups/TOPIC/GROUP.meta               a group's settings and slots, replaced atomically
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{DataError, IoFailure, OpenError};
use crate::io::MetaFs;

const META_HEADER: &str = "keel-topic 1";
/// Name of the prepared, not yet used, next segment of a partition.
pub const PREPARED_SEGMENT: &str = "next.prep";
const SEGMENT_SUFFIX: &str = ".seg";
const SUMMARY_SUFFIX: &str = ".sum";
/// Suffix of a segment file retention dropped, waiting for the janitor (`janitor.rs`).
pub const DROPPED_SUFFIX: &str = ".dropped";
/// Longest topic name (as Kafka's).
pub const MAX_TOPIC_NAME_BYTES: usize = 249;
/// Most partitions per topic.
pub const MAX_PARTITIONS: u32 = 4096;

/// Directory holding all topics.
pub fn topics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("topics")
}

/// Directory of one topic.
pub fn topic_dir(data_dir: &Path, topic: &str) -> PathBuf {
    topics_dir(data_dir).join(topic)
}

/// Directory of one partition.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topic_dir(data_dir, topic).join(partition.to_string())
}

/// File name of the segment whose first offset is `base_offset`.
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}{SEGMENT_SUFFIX}")
}

/// Name a dropped segment file waits under until the janitor removes it.
pub fn dropped_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}{DROPPED_SUFFIX}")
}

/// File name of the summary of the segment whose first offset is `base_offset`.
pub fn summary_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}{SUMMARY_SUFFIX}")
}

/// The base offset of a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_base(name.strip_suffix(SEGMENT_SUFFIX)?)
}

/// The base offset of a segment summary's file name, if it is one.
pub fn parse_summary_file_name(name: &str) -> Option<u64> {
    parse_base(name.strip_suffix(SUMMARY_SUFFIX)?)
}

fn parse_base(digits: &str) -> Option<u64> {
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks a topic name: 1..=249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`, not starting with
/// `.` (reserved for the engine's own entries).
pub fn validate_topic_name(name: &str) -> Result<(), &'static str> {
    name_problem(name).map_or(Ok(()), Err)
}

/// Checks a consumer-group name, under the same rules as topic names (it names a file).
pub fn validate_group_name(name: &str) -> Result<(), &'static str> {
    name_problem(name).map_or(Ok(()), Err)
}

fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_TOPIC_NAME_BYTES {
        Some("longer than 249 bytes")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    }
}

/// Durable topic metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMeta {
    /// Number of partitions.
    pub partitions: u32,
}

impl TopicMeta {
    pub(crate) fn encode(&self) -> String {
        seal_text(format!("{META_HEADER}\npartitions {}\n", self.partitions))
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        let mut lines = unseal_text(text)?.lines();
        if lines.next()? != META_HEADER {
            return None;
        }
        let partitions = lines.next()?.strip_prefix("partitions ")?.parse().ok()?;
        Some(Self { partitions })
    }

    /// Reads `dir/meta`; `Ok(None)` when it does not exist (an interrupted creation).
    pub fn read(fs: &dyn MetaFs, dir: &Path) -> Result<Option<Self>, DataError> {
        let path = dir.join("meta");
        match read_text(fs, &path) {
            Ok(text) => Self::decode(&text)
                .map(Some)
                .ok_or(DataError::DamagedMetadata {
                    detail: "topic metadata fails its checksum".into(),
                    path,
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DataError::io("read topic metadata", path, e)),
        }
    }

    /// Replaces `dir/meta` atomically.
    pub fn write(&self, fs: &dyn MetaFs, dir: &Path) -> Result<(), IoFailure> {
        write_atomic(fs, &dir.join("meta"), self.encode().as_bytes())
    }
}

/// Offsets a repair cut out of a partition's log, recorded (`PARTITION/lost`) before the cut
/// so that they are never handed out again: at its next open the engine fills them with
/// marker records (`Engine::open`), then removes the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostOffsets {
    /// One past the last offset the log kept: the first one lost.
    pub from: u64,
    /// One past the highest offset handed out before the cut.
    pub to: u64,
}

const LOST_HEADER: &str = "keel-lost 1";
/// Name of the file recording [`LostOffsets`] in a partition's directory.
pub const LOST_FILE: &str = "lost";

impl LostOffsets {
    /// Reads `dir/lost`; `Ok(None)` when there is none.
    pub fn read(fs: &dyn MetaFs, dir: &Path) -> Result<Option<Self>, DataError> {
        let path = dir.join(LOST_FILE);
        let text = match read_text(fs, &path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DataError::io("read lost offsets", path, e)),
        };
        let parsed = unseal_text(&text).and_then(|body| {
            let mut lines = body.lines();
            (lines.next()? == LOST_HEADER).then_some(())?;
            let from = lines.next()?.strip_prefix("from ")?.parse().ok()?;
            let to = lines.next()?.strip_prefix("to ")?.parse().ok()?;
            Some(Self { from, to })
        });
        parsed.map(Some).ok_or(DataError::DamagedMetadata {
            path,
            detail: "the record of offsets lost in a repair fails its checksum".into(),
        })
    }

    /// Writes `dir/lost` atomically and durably.
    pub fn write(&self, fs: &dyn MetaFs, dir: &Path) -> Result<(), IoFailure> {
        let body = format!("{LOST_HEADER}\nfrom {}\nto {}\n", self.from, self.to);
        write_atomic(fs, &dir.join(LOST_FILE), seal_text(body).as_bytes())
    }

    /// Removes `dir/lost`, durably.
    pub fn remove(fs: &dyn MetaFs, dir: &Path) -> Result<(), IoFailure> {
        let path = dir.join(LOST_FILE);
        fs.remove_file(&path)
            .map_err(|e| IoFailure::new("remove", &path, e))?;
        sync_dir(fs, dir)
    }
}

/// Appends a `crc XXXXXXXX` line (CRC-32C of everything before it) to a small text file's body.
pub fn seal_text(body: String) -> String {
    let crc = keel_format::crc::crc32c(body.as_bytes());
    format!("{body}crc {crc:08x}\n")
}

/// The body of text sealed by [`seal_text`], if its CRC checks.
pub fn unseal_text(text: &str) -> Option<&str> {
    let (body, crc_line) = text.rsplit_once("crc ")?;
    let crc = u32::from_str_radix(crc_line.trim(), 16).ok()?;
    (keel_format::crc::crc32c(body.as_bytes()) == crc).then_some(body)
}

/// A small text file, read whole.
fn read_text(fs: &dyn MetaFs, path: &Path) -> io::Result<String> {
    String::from_utf8(fs.read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Replaces `path` atomically: a temp file beside it, fsync, rename, fsync of the directory.
/// A crash leaves the old file or the new one, never a mix.
pub fn write_atomic(fs: &dyn MetaFs, path: &Path, bytes: &[u8]) -> Result<(), IoFailure> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    fs.write_synced(&tmp, bytes)
        .map_err(|e| IoFailure::new("write", &tmp, e))?;
    fs.rename(&tmp, path)
        .map_err(|e| IoFailure::new("rename", path, e))?;
    match path.parent() {
        Some(dir) => sync_dir(fs, dir),
        None => Ok(()),
    }
}

/// fsync of a directory, so entries created, renamed or removed in it are durable.
pub fn sync_dir(fs: &dyn MetaFs, dir: &Path) -> Result<(), IoFailure> {
    fs.sync_dir(dir)
        .map_err(|e| IoFailure::new("sync directory", dir, e))
}

/// Creates a directory and its missing parents, each made durable in its own parent.
pub fn create_dir_durable(fs: &dyn MetaFs, dir: &Path) -> Result<(), IoFailure> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs.create_dir(d) {
            Ok(()) => {}
            // Made meanwhile by another thread: its creator makes it durable.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(IoFailure::new("create directory", d, e)),
        }
        if let Some(parent) = d.parent() {
            sync_dir(fs, parent)?;
        }
    }
    Ok(())
}

/// An exclusive `flock` on `DATA/LOCK`, held for the engine's lifetime.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock or fails at once if another process has it.
    pub fn acquire(data_dir: &Path) -> Result<Self, OpenError> {
        let path = data_dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| OpenError::io("open lock file", &path, e))?;
        // SAFETY: flock on a descriptor we own; result checked.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(OpenError::DataDirLocked {
                    dir: data_dir.to_path_buf(),
                    lock: path,
                });
            }
            return Err(OpenError::io("lock data directory", &path, err));
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SystemFs;
    use std::fs;

    #[test]
    fn segment_names_round_trip_and_reject_others() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX / 2)),
            Some(u64::MAX / 2)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("next.prep"), None);
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(validate_topic_name("orders.v2_eu-1").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "sp ace", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn topic_meta_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TopicMeta::read(&SystemFs, dir.path()).unwrap(), None);
        TopicMeta { partitions: 12 }
            .write(&SystemFs, dir.path())
            .unwrap();
        assert_eq!(
            TopicMeta::read(&SystemFs, dir.path()).unwrap(),
            Some(TopicMeta { partitions: 12 })
        );
        let text = fs::read_to_string(dir.path().join("meta")).unwrap();
        fs::write(dir.path().join("meta"), text.replace("12", "13")).unwrap();
        assert!(matches!(
            TopicMeta::read(&SystemFs, dir.path()),
            Err(DataError::DamagedMetadata { .. })
        ));
    }

    #[test]
    fn second_lock_on_a_data_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(OpenError::DataDirLocked { .. })
        ));
    }
}
