//! Removing the segment files retention drops, and deleted topics' directories, in the
//! background, a slice at a time.
//!
//! Unlinking a whole 256 MiB segment frees all its extents at once, and on a filesystem mounted
//! with `discard` (as these machines' ext4 is) discards them all at once too: it took up to
//! 40 ms, a shard that unlinked inline stalled that long, and every partition's flushes took
//! 30-40 ms while it ran, even from another thread. Here a file is cut down from its end a slice at a time, each cut made durable by an
//! `fsync` of its own so its freeing is not saved up for a later one, with a pause between
//! slices; then the empty file is unlinked.
//!
//! A dropped file is first renamed by its partition to a `.dropped` name, which recovery never
//! reads as log and removes on open, so a topic deleted and made again meanwhile can never lose
//! a live file here. The rename is made durable before the first cut: a crash must never bring
//! a shortened file back under its segment name. A deleted topic's directory arrives renamed
//! to its `.deleted-` name, durably, by `Engine::delete_topic`.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::io::sync_dir;

/// Bytes freed at a time: a 4 MiB cut and its fsync took about 1 ms here, against 3-7 ms for
/// 16 MiB, during which flushes slowed.
pub const SLICE_BYTES: u64 = 4 << 20;
/// Pause between two slices, so the flushes have the disk to themselves most of the time; a
/// 256 MiB file goes in about 0.7 s.
pub const SLICE_PAUSE: Duration = Duration::from_millis(10);
/// Jobs queued at which the janitor stops pausing: files dropped faster than it removes them
/// (small segments, or a retention that cannot reuse files) must not pile up on the disk.
pub const BACKLOG_MAX: usize = 4;

/// What the janitor removes.
#[derive(Debug)]
enum Job {
    /// A dropped segment file.
    File(PathBuf),
    /// A deleted topic's directory, renamed away already, with everything in it.
    Tree(PathBuf),
}

/// What a shard (or the engine) holds to hand the janitor files to remove. Sending never
/// blocks: the channel has no bound of its own, and needs none, since a job is a file that
/// exists (a dropped segment, or a deleted topic's directory), so no more can be queued than
/// there are such files.
#[derive(Clone, Debug)]
pub struct JanitorTx(Sender<Job>);

impl JanitorTx {
    /// Queues the removal of the dropped file at `path`.
    pub fn remove(&self, path: PathBuf) {
        self.send(Job::File(path));
    }

    /// Queues the removal of the directory `dir` and everything in it.
    pub fn remove_tree(&self, dir: PathBuf) {
        self.send(Job::Tree(dir));
    }

    /// If the janitor is gone (the engine is closing), the job is done here and now, without
    /// pauses, so nothing is left behind.
    fn send(&self, job: Job) {
        if let Err(e) = self.0.send(job) {
            run(e.into_inner(), &AtomicBool::new(true), || 0);
        }
    }
}

/// The janitor thread.
pub struct Janitor {
    tx: Option<Sender<Job>>,
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

    /// A handle for a shard, or for the engine itself.
    pub fn handle(&self) -> JanitorTx {
        match &self.tx {
            Some(tx) => JanitorTx(tx.clone()),
            // Only after stop(): a handle whose jobs are done by the sender itself.
            None => JanitorTx(unbounded().0),
        }
    }

    /// Finishes what is queued at once (whole files, no pauses), and ends the thread once every handle is gone
    /// (so the shards, which hold handles, must have stopped).
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

fn serve(rx: &Receiver<Job>, hurry: &AtomicBool) {
    // Ends when every sender is gone, after the jobs still queued.
    while let Ok(job) = rx.recv() {
        run(job, hurry, || rx.len());
    }
}

/// Whether to pause after a slice: not while closing, and not while the queue holds
/// [`BACKLOG_MAX`] jobs or more, so the disk space of dropped files always comes back about as
/// fast as files are dropped.
fn pause_after_slice(closing: bool, queued: usize) -> bool {
    !closing && queued < BACKLOG_MAX
}

fn run(job: Job, hurry: &AtomicBool, queued: impl Fn() -> usize) {
    let mut pause = || {
        if pause_after_slice(hurry.load(Ordering::SeqCst), queued()) {
            std::thread::sleep(SLICE_PAUSE);
        }
    };
    // Closing: nothing is flushing any more, so each file goes whole.
    let slice = if hurry.load(Ordering::SeqCst) {
        u64::MAX
    } else {
        SLICE_BYTES
    };
    let (path, done) = match job {
        Job::File(path) => {
            let done = remove_in_slices(&path, slice, &mut pause);
            (path, done)
        }
        Job::Tree(dir) => {
            let done = remove_tree_in_slices(&dir, slice, &mut pause);
            (dir, done)
        }
    };
    match done {
        Ok(()) => {}
        // Removed already (its topic was deleted, or recovery got there first).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("could not remove {}: {e}", path.display()),
    }
}

/// Removes `dir` and everything below it, each file as [`remove_in_slices`] does.
pub fn remove_tree_in_slices(dir: &Path, slice: u64, between: &mut dyn FnMut()) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        let removed = if kind.is_dir() {
            remove_tree_in_slices(&path, slice, between)
        } else if kind.is_file() {
            remove_in_slices(&path, slice, &mut *between)
        } else {
            // A link or anything else: only its name goes, never what it points to.
            fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::remove_dir(dir)
}

/// Shortens the file at `path` by `slice` bytes at a time from its end, each cut made durable
/// before `between` runs, then unlinks it. Before the first cut its name is made durable.
pub fn remove_in_slices(path: &Path, slice: u64, mut between: impl FnMut()) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    let slice = slice.max(1);
    if len > slice {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
    }
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
    fn the_janitor_pauses_only_when_not_closing_and_not_behind() {
        assert!(pause_after_slice(false, 0));
        assert!(pause_after_slice(false, BACKLOG_MAX - 1));
        assert!(!pause_after_slice(false, BACKLOG_MAX));
        assert!(!pause_after_slice(true, 0));
    }

    #[test]
    fn a_tree_is_removed_file_by_file_and_a_link_never_followed() {
        let dir = scratch();
        let outside = dir.join("outside");
        fs::write(&outside, vec![3u8; 3 << 19]).unwrap();
        let tree = dir.join(".deleted-t-1");
        for p in ["0", "1"] {
            fs::create_dir_all(tree.join(p)).unwrap();
            fs::write(tree.join(p).join("a.seg"), vec![1u8; 2 << 20]).unwrap();
        }
        fs::write(tree.join("meta"), b"keel-topic 1\n").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        let mut cuts = 0;
        remove_tree_in_slices(&tree, 1 << 20, &mut || cuts += 1).unwrap();
        assert!(!tree.exists());
        assert_eq!(cuts, 2, "each 2 MiB file cut once before its unlink");
        assert_eq!(
            fs::read(&outside).unwrap().len(),
            3 << 19,
            "a link's target is left alone"
        );
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
        let tree = dir.join(".deleted-x-1");
        fs::create_dir_all(tree.join("0")).unwrap();
        fs::write(tree.join("0").join("s.seg"), vec![1u8; 1 << 20]).unwrap();
        handle.remove_tree(tree.clone());
        drop(handle);
        janitor.stop();
        assert!(!files[0].exists() && !files[1].exists() && !tree.exists());
        // A handle that outlives the thread removes at once.
        janitor.handle().remove(files[2].clone());
        assert!(!files[2].exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
