//! Producer ids, handed out by the server and never reused: `DATA/producer-ids` holds the
//! first id not yet reserved, and ids are reserved durably a block at a time (the file is
//! replaced atomically before any id of a new block is handed out), so a crash can skip ids
//! but never hand one out twice.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::AdminError;
use crate::io::MetaFs;
use crate::layout::{seal_text, unseal_text, write_atomic};

/// Ids reserved per write of the file.
const BLOCK: i64 = 1024;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "producer-ids";

/// An idempotent producer's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// Producer id, never handed out twice.
    pub id: i64,
    /// Epoch: a bump fences batches carrying an older one.
    pub epoch: i16,
}

/// Hands out producer ids.
pub struct ProducerIds {
    path: PathBuf,
    /// `None` until the file is first read.
    state: Mutex<Option<IdBlock>>,
}

struct IdBlock {
    next: i64,
    reserved_end: i64,
}

impl ProducerIds {
    /// The allocator of the data directory `dir`; nothing is read until an id is asked for.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE_NAME),
            state: Mutex::new(None),
        }
    }

    /// A new identity, or, for `current` (an identity this server handed out), the same id
    /// with the next epoch: batches with an older epoch are refused from then on.
    pub fn init(
        &self,
        files: &dyn MetaFs,
        current: Option<ProducerIdentity>,
    ) -> Result<ProducerIdentity, AdminError> {
        // A counter changed by whole assignments: consistent after a panic.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let block = match &mut *state {
            Some(block) => block,
            None => {
                let first = self.read_first_free(files)?;
                state.insert(IdBlock {
                    next: first,
                    reserved_end: first,
                })
            }
        };
        if let Some(c) = current {
            let known = c.id >= 0 && c.id < block.next;
            if known && c.epoch >= 0 && c.epoch < i16::MAX {
                return Ok(ProducerIdentity {
                    id: c.id,
                    epoch: c.epoch + 1,
                });
            }
        }
        if block.next == block.reserved_end {
            let end = block.reserved_end + BLOCK;
            write_atomic(
                files,
                &self.path,
                seal_text(format!("next {end}\n")).as_bytes(),
            )?;
            block.reserved_end = end;
        }
        let id = block.next;
        block.next += 1;
        Ok(ProducerIdentity { id, epoch: 0 })
    }

    /// With `--recovery repair`: a damaged file is written again, with a first free id past
    /// any this server can have handed out (`now_ms` x 1024: ids are handed out one at a time
    /// from 0, and never a thousand a millisecond since 1970). Returns that id when it repaired
    /// the file, `None` when it was sound.
    pub fn repair(&self, files: &dyn MetaFs, now_ms: i64) -> Result<Option<i64>, AdminError> {
        match self.read_first_free(files) {
            Ok(_) => Ok(None),
            Err(AdminError::DamagedProducerIds { .. }) => {
                let next = now_ms.max(1).saturating_mul(BLOCK);
                write_atomic(
                    files,
                    &self.path,
                    seal_text(format!("next {next}\n")).as_bytes(),
                )?;
                // Read again when an id is first asked for.
                *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(Some(next))
            }
            Err(e) => Err(e),
        }
    }

    /// The first id never reserved, from the file (0 when there is none yet).
    fn read_first_free(&self, files: &dyn MetaFs) -> Result<i64, AdminError> {
        let bytes = match files.read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(crate::error::IoFailure::new("read", &self.path, e).into()),
        };
        let damaged = |detail: &str| AdminError::DamagedProducerIds {
            path: self.path.clone(),
            detail: detail.to_string(),
        };
        let text = String::from_utf8(bytes).map_err(|_| damaged("not text"))?;
        let body = unseal_text(&text).ok_or_else(|| damaged("checksum does not match"))?;
        body.trim()
            .strip_prefix("next ")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|&n| n >= 0)
            .ok_or_else(|| damaged("no \"next N\" line"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SystemFs;

    #[test]
    fn ids_are_never_handed_out_twice_across_restarts_and_bumps_keep_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SystemFs;
        let ids = ProducerIds::new(dir.path());
        let a = ids.init(&fs, None).unwrap();
        let b = ids.init(&fs, None).unwrap();
        assert_eq!((a, b.id), (ProducerIdentity { id: 0, epoch: 0 }, 1));
        let bumped = ids.init(&fs, Some(a)).unwrap();
        assert_eq!(bumped, ProducerIdentity { id: 0, epoch: 1 });
        let stranger = ids
            .init(&fs, Some(ProducerIdentity { id: 5000, epoch: 3 }))
            .unwrap();
        assert_eq!(
            stranger,
            ProducerIdentity { id: 2, epoch: 0 },
            "not ours: a new id"
        );
        // A restart (a new allocator over the same directory) goes on past the reserved block.
        let again = ProducerIds::new(dir.path()).init(&fs, None).unwrap();
        assert_eq!(
            again,
            ProducerIdentity {
                id: BLOCK,
                epoch: 0
            }
        );
    }

    #[test]
    fn repair_rewrites_a_damaged_file_past_every_id_handed_out_and_leaves_a_sound_one() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::new(dir.path());
        for _ in 0..3000 {
            ids.init(&SystemFs, None).unwrap();
        }
        assert_eq!(ids.repair(&SystemFs, 1_700_000_000_000).unwrap(), None);
        assert_eq!(
            ids.init(&SystemFs, None).unwrap().id,
            3000,
            "sound: untouched"
        );
        std::fs::write(dir.path().join(FILE_NAME), "next 12\ncrc 00000000\n").unwrap();
        let ids = ProducerIds::new(dir.path());
        let next = ids.repair(&SystemFs, 1_700_000_000_000).unwrap();
        assert_eq!(next, Some(1_700_000_000_000 * BLOCK));
        let id = ids.init(&SystemFs, None).unwrap().id;
        assert_eq!(id, 1_700_000_000_000 * BLOCK, "past the 3001 handed out");
        let reopened = ProducerIds::new(dir.path());
        assert!(
            reopened.init(&SystemFs, None).unwrap().id > id,
            "and durable"
        );
    }

    #[test]
    fn a_damaged_file_is_named_and_nothing_is_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "next 12\ncrc 00000000\n").unwrap();
        match ProducerIds::new(dir.path()).init(&SystemFs, None) {
            Err(AdminError::DamagedProducerIds { path, .. }) => {
                assert_eq!(path, dir.path().join(FILE_NAME));
            }
            other => panic!("expected the damaged file named, got {other:?}"),
        }
    }
}
