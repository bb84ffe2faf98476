//! Removing the segment files retention drops, off the shards' threads, a slice at a time.
//!
//! Unlinking a whole 256 MiB segment frees all its extents at once, and on a filesystem mounted
//! with `discard` (as these machines' ext4 is) discards them all at once too: it took up to
//! 40 ms, a shard that unlinked inline stalled that long, and every partition's flushes took
//! 30-40 ms while it ran, even from another thread (docs/BENCHMARKS.md, "Stalls at half
//! load"). Here a file is cut down from its end a slice at a time, each cut made durable by an
//! `fsync` of its own so its freeing is not saved up for a later one, with a pause between
//! slices; then the empty file is unlinked.
//!
//! A dropped file is first renamed by its partition to a `.dropped` name, which recovery never
//! reads as log and removes on open, so a topic deleted and made again meanwhile can never lose
//! a live file here. The rename is made durable before the first cut: a crash must never bring
//! a shortened file back under its segment name.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};

/// Bytes freed at a time: a 4 MiB cut and its fsync took about 1 ms here, against 3-7 ms for
/// 16 MiB, during which flushes slowed.
pub const SLICE_BYTES: u64 = 4 << 20;
/// Pause between two slices, so the flushes have the disk to themselves most of the time; a
/// 256 MiB file goes in about 0.7 s.
pub const SLICE_PAUSE: Duration = Duration::from_millis(10);

/// What a shard holds to hand the janitor files to remove. Sending never blocks.
#[derive(Clone, Debug)]
pub struct JanitorTx(Sender<PathBuf>);

impl JanitorTx {
    /// Queues the removal of the dropped file at `path`. If the janitor is gone (the engine is
    /// closing), it is removed here and now, without pauses, so nothing is left behind.
    pub fn remove(&self, path: PathBuf) {
        if let Err(e) = self.0.send(path) {
            remove(&e.into_inner(), &AtomicBool::new(true));
        }
    }
}

/// The janitor thread.
pub struct Janitor {
    tx: Option<Sender<PathBuf>>,
    hurry: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Janitor {
    /// Starts the thread.
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = unbounded();
        let hurry = Arc::new(AtomicBool::new(false));
        let thread = {
            let hurry = Arc::clone(&hurry);
            std::thread::Builder::new()
                .name("keel-janitor".into())
                .spawn(move || serve(&rx, &hurry))?
        };
        Ok(Self {
            tx: Some(tx),
            hurry,
            thread: Some(thread),
        })
    }

    /// A handle for a shard.
    pub fn handle(&self) -> JanitorTx {
        match &self.tx {
            Some(tx) => JanitorTx(tx.clone()),
            // Only after stop(): a handle whose jobs are done by the sender itself.
            None => JanitorTx(unbounded().0),
        }
    }

    /// Finishes what is queued without pausing, and ends the thread once every handle is gone.
    pub fn stop(&mut self) {
        self.hurry.store(true, Ordering::SeqCst);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the janitor thread panicked");
            }
        }
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(rx: &Receiver<PathBuf>, hurry: &AtomicBool) {
    // Ends when every sender is gone, after the files still queued.
    while let Ok(path) = rx.recv() {
        remove(&path, hurry);
    }
}

fn remove(path: &Path, hurry: &AtomicBool) {
    let done = remove_in_slices(path, SLICE_BYTES, || {
        if !hurry.load(Ordering::SeqCst) {
            std::thread::sleep(SLICE_PAUSE);
        }
    });
    match done {
        Ok(()) => {}
        // Removed already (its topic was deleted, or recovery got there first).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("could not remove {}: {e}", path.display()),
    }
}

/// Makes the name `path` has durable, shortens the file by `slice` bytes at a time from its
/// end, each cut made durable before `between` runs, then unlinks it.
pub fn remove_in_slices(path: &Path, slice: u64, mut between: impl FnMut()) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    let mut len = file.metadata()?.len();
    let slice = slice.max(1);
    while len > slice {
        len -= slice;
        file.set_len(len)?;
        file.sync_all()?;
        between();
    }
    drop(file);
    fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "keel-janitor-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_is_cut_down_a_slice_at_a_time_then_unlinked() {
        let dir = scratch();
        let path = dir.join("00000000000000000007.dropped");
        let mib = 1u64 << 20;
        fs::write(&path, vec![7u8; (5 * mib + 1) as usize]).unwrap();
        let mut seen = Vec::new();
        remove_in_slices(&path, mib, || seen.push(fs::metadata(&path).unwrap().len())).unwrap();
        assert_eq!(seen, [4 * mib + 1, 3 * mib + 1, 2 * mib + 1, mib + 1, 1]);
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn queued_files_are_removed_by_the_time_the_janitor_stops_and_after_it() {
        let dir = scratch();
        let files: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("{i}.dropped"))).collect();
        for f in &files {
            fs::write(f, vec![1u8; (3 * SLICE_BYTES) as usize / 2]).unwrap();
        }
        let mut janitor = Janitor::start().unwrap();
        let handle = janitor.handle();
        handle.remove(files[0].clone());
        handle.remove(files[1].clone());
        handle.remove(dir.join("never-existed.dropped"));
        drop(handle);
        janitor.stop();
        assert!(!files[0].exists() && !files[1].exists());
        // A handle that outlives the thread removes at once.
        janitor.handle().remove(files[2].clone());
        assert!(!files[2].exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
