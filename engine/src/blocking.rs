//! Waiting for one operation at a time on a shard's disk, for the rare paths that must (opening
//! and recovering a partition). Completions of other operations that arrive meanwhile are kept
//! for the shard's loop.

use std::io;

use crate::aligned::AlignedBuf;
use crate::io::{Block, Completion, Disk, FileId, IoKind, SyncAfter};
use crate::recovery::ReadAt;

/// Borrowed access to a shard's disk for blocking reads and writes.
pub struct BlockingIo<'a, D> {
    /// The shard's disk.
    pub disk: &'a mut D,
    /// Where completions of other operations go.
    pub deferred: &'a mut Vec<Completion>,
    /// Token for the operations issued here (one at a time).
    pub token: u64,
}

impl<D: Disk> BlockingIo<'_, D> {
    fn wait_for(&mut self, kinds: usize) -> Vec<Completion> {
        let mut mine = Vec::new();
        let mut batch = Vec::new();
        while mine.len() < kinds {
            if let Err(e) = self.disk.wait(&mut batch, Block::Yes) {
                mine.push(Completion {
                    token: self.token,
                    kind: IoKind::Sync,
                    result: Err(e),
                    buf: None,
                });
                break;
            }
            for c in batch.drain(..) {
                if c.token == self.token {
                    mine.push(c);
                } else {
                    self.deferred.push(c);
                }
            }
        }
        mine
    }

    /// Writes `buf[..len]` at `pos`, optionally followed by an `fdatasync`, and waits.
    pub fn write(
        &mut self,
        file: FileId,
        pos: u64,
        buf: AlignedBuf,
        len: usize,
        sync: bool,
    ) -> io::Result<()> {
        // Callers rely on the sync covering their earlier unsynced writes too.
        let durable = SyncAfter::file_if(sync);
        self.disk
            .submit_write(file, pos, buf, len, self.token, durable);
        let mut first_err = None;
        for c in self.wait_for(1 + usize::from(sync)) {
            match c.result {
                Ok(n) if c.kind == IoKind::Write && n != len => {
                    first_err
                        .get_or_insert(io::Error::new(io::ErrorKind::WriteZero, "short write"));
                }
                Ok(_) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Blocking positioned reads of one file.
pub struct FileReader<'a, 'b, D> {
    /// The disk access.
    pub io: &'a mut BlockingIo<'b, D>,
    /// The file read.
    pub file: FileId,
}

impl<D: Disk> ReadAt for FileReader<'_, '_, D> {
    fn read_at(
        &mut self,
        pos: u64,
        buf: AlignedBuf,
        len: usize,
    ) -> (AlignedBuf, io::Result<usize>) {
        self.io
            .disk
            .submit_read(self.file, pos, buf, len, self.io.token);
        let mut done = self.io.wait_for(1);
        match done.pop() {
            Some(Completion {
                result,
                buf: Some(buf),
                ..
            }) => (buf, result),
            Some(Completion { result, .. }) => (
                AlignedBuf::zeroed(len),
                result.and(Err(io::Error::other("read completion without its buffer"))),
            ),
            None => (
                AlignedBuf::zeroed(len),
                Err(io::Error::other("read never completed")),
            ),
        }
    }
}
