//! Group commit for one offset table: acknowledgements stored into the mapping are made
//! durable together. While one sync runs, every ack that asks for durability gathers for the
//! next; one sync answers them all. Without waiters, a dirty table is still synced every
//! `interval`, bounding how much acknowledged state a crash can take back.
//!
//! The sync is `fdatasync` of the mapped file. On Linux `msync(MS_SYNC)` is that same call
//! (`vfs_fsync_range` with datasync) limited to a range; calling it on the file lets the
//! syncing thread run without holding the table, so acks keep being stored meanwhile.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};
use crate::groups::power_cut::TablePowerCut;
use crate::offsets::OffsetTable;

/// Called once the acks stored before [`TableSync::when_durable`] are durable, or the sync
/// failed.
pub type SyncDone = Box<dyn FnOnce(Result<()>) + Send>;

struct State {
    /// Waiters so far (each numbered in order).
    requested: u64,
    /// Waiters covered by completed syncs.
    durable: u64,
    waiters: Vec<(u64, SyncDone)>,
    /// Stores since the last sync started.
    dirty: bool,
    last_sync: Instant,
    poisoned: Option<Arc<io::Error>>,
    stop: bool,
    syncs: u64,
}

struct Shared {
    path: PathBuf,
    file: File,
    /// Told when each sync starts and completes, so that it never overwrites what a sync
    /// is writing back or has made durable.
    table: Arc<Mutex<OffsetTable>>,
    interval: Duration,
    /// Set in power-loss tests: records what each sync made durable.
    power: Option<Arc<TablePowerCut>>,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Counters and a list changed in single steps: consistent even after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn table(&self) -> MutexGuard<'_, OffsetTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poisoned_error(&self, e: &Arc<io::Error>) -> EngineError {
        EngineError::OffsetTablePoisoned {
            path: self.path.clone(),
            source: Arc::clone(e),
        }
    }
}

/// The syncing thread of one table.
pub struct TableSync {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TableSync {
    /// Starts syncing `table` (the file at `path`), through `power` when a test simulates
    /// power loss.
    pub fn start(
        path: PathBuf,
        table: Arc<Mutex<OffsetTable>>,
        interval: Duration,
        power: Option<Arc<TablePowerCut>>,
    ) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| EngineError::io("open offset table", &path, e))?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            file,
            table,
            interval,
            power,
            state: Mutex::new(State {
                requested: 0,
                durable: 0,
                waiters: Vec::new(),
                dirty: false,
                last_sync: Instant::now(),
                poisoned: None,
                stop: false,
                syncs: 0,
            }),
            wake: Condvar::new(),
        });
        let runner = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("keel-table-sync".into())
            .spawn(move || run(&runner))
            .map_err(|e| EngineError::io("start the offset table sync thread", &path, e))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Notes that something was stored: the periodic sync will cover it.
    pub fn note_store(&self) {
        self.shared.state().dirty = true;
    }

    /// Calls `done` once everything stored before this call is durable.
    pub fn when_durable(&self, done: SyncDone) {
        let mut st = self.shared.state();
        if let Some(e) = &st.poisoned {
            let err = self.shared.poisoned_error(e);
            drop(st);
            return done(Err(err));
        }
        st.requested += 1;
        let n = st.requested;
        st.waiters.push((n, done));
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Syncs completed so far (for tests and stats).
    pub fn syncs(&self) -> u64 {
        self.shared.state().syncs
    }
}

impl Drop for TableSync {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            // Dropped by a callback running on the sync thread itself (it held the last
            // reference): that thread sees `stop` once the callback returns, and ends alone.
            if t.thread().id() == std::thread::current().id() {
                return;
            }
            if t.join().is_err() {
                log::error!("the offset table sync thread panicked");
            }
        }
    }
}

fn run(shared: &Shared) {
    let mut st = shared.state();
    loop {
        let wanted = st.requested > st.durable;
        let periodic = st.dirty && st.last_sync.elapsed() >= shared.interval;
        if st.poisoned.is_none() && (wanted || periodic || (st.stop && st.dirty)) {
            let target = st.requested;
            st.dirty = false;
            st.last_sync = Instant::now();
            drop(st);
            // After `target` is read: a store for a waiter beyond it may be held back.
            shared.table().sync_starting();
            let outcome = match &shared.power {
                None => shared.file.sync_data(),
                Some(p) => p.sync(&shared.path, &shared.file, || shared.file.sync_data()),
            };
            if outcome.is_ok() {
                shared.table().sync_done();
            }
            st = shared.state();
            st.syncs += 1;
            let answered: Vec<(u64, SyncDone)>;
            let result = match outcome {
                Ok(()) => {
                    st.durable = target;
                    let (due, keep) = std::mem::take(&mut st.waiters)
                        .into_iter()
                        .partition(|(n, _)| *n <= target);
                    st.waiters = keep;
                    answered = due;
                    Ok(())
                }
                Err(e) => {
                    log::error!(
                        "sync of offset table {} failed: {e}; durable acks fail until restart",
                        shared.path.display()
                    );
                    let e = Arc::new(e);
                    st.poisoned = Some(Arc::clone(&e));
                    answered = std::mem::take(&mut st.waiters);
                    Err(e)
                }
            };
            drop(st);
            for (_, done) in answered {
                done(result.clone().map_err(|e| shared.poisoned_error(&e)));
            }
            st = shared.state();
            continue;
        }
        if st.stop {
            break;
        }
        st = shared
            .wake
            .wait_timeout(st, shared.interval)
            .map(|(s, _)| s)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    // Stopped while poisoned: answer whoever still waits.
    let left = std::mem::take(&mut st.waiters);
    let poisoned = st.poisoned.clone();
    drop(st);
    for (_, done) in left {
        let e = poisoned
            .as_ref()
            .map_or(EngineError::ShuttingDown, |e| shared.poisoned_error(e));
        done(Err(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn waiters_arriving_together_share_syncs_and_all_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let table = Arc::new(Mutex::new(OffsetTable::open(&path, 4).unwrap()));
        let sync = TableSync::start(path, table, Duration::from_secs(60), None).unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..200 {
            let tx = tx.clone();
            sync.note_store();
            sync.when_durable(Box::new(move |r| tx.send(r.is_ok()).unwrap()));
        }
        for _ in 0..200 {
            assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        assert!(sync.syncs() >= 1);
        assert!(
            sync.syncs() < 200,
            "waiters gathered while a sync ran share the next"
        );
    }

    #[test]
    fn the_last_reference_dropped_by_a_callback_on_the_sync_thread_is_no_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let table = Arc::new(Mutex::new(OffsetTable::open(&path, 4).unwrap()));
        let sync = Arc::new(TableSync::start(path, table, Duration::from_secs(60), None).unwrap());
        let (tx, rx) = mpsc::channel();
        let held = Arc::clone(&sync);
        sync.when_durable(Box::new(move |r| {
            // Dropped here, after the test let go of its own reference.
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
            tx.send(r.is_ok()).unwrap();
        }));
        drop(sync);
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }

    #[test]
    fn a_dirty_table_is_synced_without_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let table = Arc::new(Mutex::new(OffsetTable::open(&path, 4).unwrap()));
        let sync = TableSync::start(path, table, Duration::from_millis(20), None).unwrap();
        sync.note_store();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sync.syncs() == 0 {
            assert!(Instant::now() < deadline, "no periodic sync");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
