//! Retention: dropping a partition's oldest segments once the log holds more than it keeps,
//! and reusing a dropped file as the next segment.
//!
//! Reuse is what makes a log at its retention size write at the disk's overwrite speed: every
//! block of a used segment file is a written extent, so a flush into it is not followed by an
//! extent conversion the `fdatasync` would have to commit to the journal. What the file held before are offsets below the log's new start, which
//! recovery never takes for the log (docs/FORMAT.md, "Recycled segments").

use std::path::PathBuf;

use crate::io::Disk;
use crate::layout::{dropped_file_name, PREPARED_SEGMENT};
use crate::partition::Partition;
use crate::prepare::NextSegment;
use crate::summary;

/// Segments retention has dropped, by what became of their files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retired {
    /// Files kept as the next segment.
    pub recycled: u64,
    /// Files to delete, renamed to their dropped names, for the janitor to remove.
    pub dropped: Vec<PathBuf>,
}

/// How many of the oldest segments can go while the rest still hold `keep` bytes. `sizes` runs
/// oldest first and ends with the segment being written, which never goes.
pub fn oldest_to_drop(sizes: &[u64], keep: u64) -> usize {
    let mut kept = 0u64;
    for (i, size) in sizes.iter().enumerate().rev() {
        kept = kept.saturating_add(*size);
        if kept >= keep {
            return i;
        }
    }
    0
}

impl Partition {
    /// Drops the oldest segments beyond the retention size. The first dropped file becomes the
    /// prepared next segment if none is prepared yet; the others are deleted. Waits (stays
    /// due) while disk reads are in flight, since one of them may be reading a file it would
    /// drop. Failures only cost disk space, so they are logged, not returned.
    pub(crate) fn enforce_retention<D: Disk>(&mut self, disk: &mut D) {
        let Some(keep) = self.limits.retention_bytes else {
            self.retention_due = false;
            return;
        };
        if !self.retention_due || self.reads_in_flight > 0 {
            return;
        }
        self.retention_due = false;
        let sizes: Vec<u64> = self.segments.iter().map(|s| s.durable_end).collect();
        let drop = oldest_to_drop(&sizes, keep);
        if drop == 0 {
            return;
        }
        let mut renamed = false;
        for segment in self.segments.drain(..drop).collect::<Vec<_>>() {
            // Its summary goes first: a summary left behind is removed at the next open anyway.
            if let Err(e) = summary::remove(&*self.files, &self.dir, segment.base_offset) {
                log::warn!(
                    "{}/{}: could not remove the summary of segment {}: {e}",
                    self.topic,
                    self.id,
                    segment.base_offset
                );
            }
            let full = disk
                .len(segment.file)
                .is_ok_and(|len| len == self.limits.segment_bytes);
            if self.next_segment.is_none() && full {
                let path = self.dir.join(PREPARED_SEGMENT);
                match disk.rename(&segment.path, &path) {
                    Ok(()) => {
                        let size = self.limits.segment_bytes;
                        self.next_segment = Some(NextSegment::recycled(segment.file, path, size));
                        self.need_prepare = false;
                        self.retired.recycled += 1;
                        renamed = true;
                        continue;
                    }
                    Err(e) => log::warn!(
                        "{}/{}: could not reuse {} as the next segment ({e}); deleting it",
                        self.topic,
                        self.id,
                        segment.path.display()
                    ),
                }
            }
            disk.close(segment.file);
            // Renamed now (a crash before the rename is durable only brings a dropped segment
            // back, which is still a valid log); removed by the janitor, off this thread.
            let dropped = self.dir.join(dropped_file_name(segment.base_offset));
            match disk.rename(&segment.path, &dropped) {
                Ok(()) => {
                    self.retired.dropped.push(dropped);
                    renamed = true;
                }
                Err(e) => log::warn!(
                    "{}/{}: retention could not drop {}: {e}",
                    self.topic,
                    self.id,
                    segment.path.display()
                ),
            }
        }
        // The new names durable through the disk before anyone acts on them: the janitor
        // shortens a dropped file, and a crash must never bring a shortened file back under
        // its segment name.
        if renamed {
            if let Err(e) = disk.sync_dir(&self.dir) {
                log::warn!(
                    "{}/{}: cannot sync {} after dropping segments: {e}",
                    self.topic,
                    self.id,
                    self.dir.display()
                );
            }
        }
    }

    /// Segments dropped since the last call.
    pub(crate) fn take_retired(&mut self) -> Retired {
        std::mem::take(&mut self.retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_least_the_retention_size_and_never_the_active_segment() {
        let full = 100;
        // Four full sealed segments and an empty active one.
        let sizes = [full, full, full, full, 0];
        assert_eq!(oldest_to_drop(&sizes, 250), 1, "three left hold 300 >= 250");
        assert_eq!(oldest_to_drop(&sizes, 300), 1);
        assert_eq!(
            oldest_to_drop(&sizes, 301),
            0,
            "dropping one would leave 300"
        );
        assert_eq!(oldest_to_drop(&sizes, 100), 3);
        assert_eq!(oldest_to_drop(&sizes, 1), 3);
        assert_eq!(oldest_to_drop(&[full, 0], 1), 0, "0 < 1 after dropping");
        assert_eq!(oldest_to_drop(&[full, 5], 1), 1);
        assert_eq!(oldest_to_drop(&[7], 1), 0, "the active segment stays");
        assert_eq!(oldest_to_drop(&[], 1), 0);
    }
}
