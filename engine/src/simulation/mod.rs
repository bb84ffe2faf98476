//! The engine side of the deterministic simulator (`tests/src/simulation/`): the real engine,
//! its shards and consumer groups, on a simulated disk whose operations complete only when
//! the simulator gives a shard a turn, with simulated time ([`crate::clock::simulated`]).
//!
//! Each shard's disk ([`SimDisk`]) parks the shard whenever it waits for completions. The
//! thread driving the simulation grants one parked shard a turn at a time: the shard takes
//! some of its queued operations' completions (all, or a random subset drawn from the seed),
//! does everything that follows from them and from its queue, and parks again. Nothing runs
//! beside the driver, so one seed gives one history. Below the simulated disk is the power-cut
//! simulator ([`CrashPlan`]) and the fault injector ([`FaultPlan`]): the same ones the other
//! power-loss tests use, one model of durability for all of them.
//!
//! When the engine itself must wait for a shard's reply on the driving thread (creating a
//! topic, loading a group), it gives the turns itself (`reply.rs`), so those waits stay
//! deterministic too. When the engine stops, the simulation is let run free
//! ([`Simulation::run_free`]): stopping waits on threads the simulation does not drive.

mod disk;
mod early_sync;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub(crate) use disk::SimDisk;
pub(crate) use early_sync::EarlySyncDisk;

use crate::io::{CrashPlan, FaultPlan};

/// How long the driver waits for a shard to park before it calls the simulation stuck: far
/// more than any turn takes (a turn never waits for time or for other threads).
const PATIENCE: Duration = Duration::from_secs(60);
/// Turns the engine may give while it waits for one reply before it calls the simulation
/// stuck: a reply that needs more never comes.
const TURNS_PER_REPLY_MAX: usize = 100_000;
/// Shards a simulation can have.
const SHARDS_MAX: usize = 64;

/// Which queued operations complete in a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completing {
    /// Every queued operation, with the sync linked to a write.
    All,
    /// Each queued operation or not, at random from the disk's seed; a linked sync only
    /// after its write, in a later turn.
    Random,
}

/// Where one shard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Running: between turns only before its first park.
    Running,
    /// Waiting in its disk for a turn.
    Parked,
    /// Given a turn it has not begun yet.
    Granted(Completing),
    /// Its disk is gone: the shard has stopped.
    Exited,
}

#[derive(Debug, Default)]
struct Turns {
    shards: Vec<Turn>,
    /// Shards no longer wait for turns (shutting down).
    free: bool,
}

/// One engine's run under the simulator: its disks, their turns, its crash and fault plans.
/// A new one for each engine opened.
pub struct Simulation {
    seed: u64,
    crashes: Arc<CrashPlan>,
    faults: Arc<FaultPlan>,
    /// A deliberately broken engine, to prove the checks can fail: appends acknowledged when
    /// their write completes, before its sync.
    ack_before_sync: bool,
    turns: Mutex<Turns>,
    /// Where each shard waits for its turn (one each: a grant wakes only its shard).
    to_shard: Vec<Condvar>,
    /// Where the driver waits for a shard to park.
    to_driver: Condvar,
    disks: Mutex<Vec<Arc<Mutex<disk::DiskState>>>>,
    /// A shard never parked again, or a reply never came.
    stuck: AtomicBool,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("seed", &self.seed)
            .field("turns", &*self.turns())
            .finish()
    }
}

thread_local! {
    /// The simulation the current thread drives.
    static DRIVING: RefCell<Option<Arc<Simulation>>> = const { RefCell::new(None) };
}

/// The simulation the current thread drives, while its shards wait for turns.
pub(crate) fn driven_here() -> Option<Arc<Simulation>> {
    DRIVING
        .with(|d| d.borrow().clone())
        .filter(|sim| !sim.turns().free)
}

/// While alive, the current thread drives its simulation (see [`Simulation::drive`]).
#[derive(Debug)]
pub struct Driving(());

impl Drop for Driving {
    fn drop(&mut self) {
        DRIVING.with(|d| d.borrow_mut().take());
    }
}

impl Simulation {
    /// A simulation drawing its choices from `seed`; `ack_before_sync` breaks the engine on
    /// purpose (see the field).
    pub fn new(seed: u64, ack_before_sync: bool) -> Arc<Self> {
        Arc::new(Self {
            seed,
            crashes: CrashPlan::new(),
            faults: FaultPlan::new(),
            ack_before_sync,
            turns: Mutex::new(Turns::default()),
            to_shard: (0..SHARDS_MAX).map(|_| Condvar::new()).collect(),
            to_driver: Condvar::new(),
            disks: Mutex::new(Vec::new()),
            stuck: AtomicBool::new(false),
        })
    }

    /// The power-cut simulator under the disks (also the engine's metadata filesystem).
    pub fn crashes(&self) -> &Arc<CrashPlan> {
        &self.crashes
    }

    /// The fault injector over the disks.
    pub fn faults(&self) -> &Arc<FaultPlan> {
        &self.faults
    }

    /// Whether the engine acknowledges before syncing (broken on purpose).
    pub(crate) fn acks_before_sync(&self) -> bool {
        self.ack_before_sync
    }

    /// Makes the current thread the one that drives this simulation: the engine's own waits
    /// for shard replies on it give turns. Open the engine after this.
    pub fn drive(self: &Arc<Self>) -> Driving {
        DRIVING.with(|d| *d.borrow_mut() = Some(Arc::clone(self)));
        Driving(())
    }

    /// Whether a shard stopped parking or a reply never came: the simulation cannot go on.
    pub fn is_stuck(&self) -> bool {
        self.stuck.load(Ordering::SeqCst)
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shards whose disks were made.
    pub fn shards(&self) -> usize {
        self.turns().shards.len()
    }

    /// A new shard's disk: its number, in the order the shards are made.
    fn register(&self, state: Arc<Mutex<disk::DiskState>>) -> std::io::Result<usize> {
        let mut turns = self.turns();
        if turns.shards.len() >= SHARDS_MAX {
            return Err(std::io::Error::other(format!(
                "the simulator runs at most {SHARDS_MAX} shards"
            )));
        }
        self.disks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(state);
        turns.shards.push(Turn::Running);
        Ok(turns.shards.len() - 1)
    }

    /// Called by shard `shard`'s disk when it waits: parks until it is given a turn (or the
    /// simulation runs free), and says which completions to take.
    fn park(&self, shard: usize) -> Completing {
        let mut turns = self.turns();
        turns.shards[shard] = Turn::Parked;
        self.to_driver.notify_all();
        loop {
            if turns.free {
                turns.shards[shard] = Turn::Running;
                return Completing::All;
            }
            if let Turn::Granted(how) = turns.shards[shard] {
                turns.shards[shard] = Turn::Running;
                return how;
            }
            turns = self.to_shard[shard]
                .wait(turns)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Called when shard `shard`'s disk is dropped.
    fn exited(&self, shard: usize) {
        let mut turns = self.turns();
        turns.shards[shard] = Turn::Exited;
        self.to_driver.notify_all();
    }

    /// Waits until `shard` is parked or gone; false if it never gets there.
    fn wait_parked<'a>(
        &'a self,
        mut turns: MutexGuard<'a, Turns>,
        shard: usize,
    ) -> (MutexGuard<'a, Turns>, bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if turns.free || matches!(turns.shards[shard], Turn::Parked | Turn::Exited) {
                return (turns, true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.stuck.store(true, Ordering::SeqCst);
                return (turns, false);
            }
            turns = self
                .to_driver
                .wait_timeout(turns, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Gives shard `shard` one turn, taking `how` of its completions, and waits until it has
    /// done everything that follows and parked again.
    pub fn turn(&self, shard: usize, how: Completing) {
        let (mut turns, parked) = self.wait_parked(self.turns(), shard);
        if !parked || turns.free || turns.shards[shard] == Turn::Exited {
            return;
        }
        turns.shards[shard] = Turn::Granted(how);
        self.to_shard[shard].notify_one();
        // Granted, then running, then parked again: wait past the grant.
        let deadline = Instant::now() + PATIENCE;
        while matches!(turns.shards[shard], Turn::Granted(_)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.stuck.store(true, Ordering::SeqCst);
                return;
            }
            turns = self
                .to_driver
                .wait_timeout(turns, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(self.wait_parked(turns, shard));
    }

    /// One turn for every shard, in order.
    pub fn turn_all(&self, how: Completing) {
        for shard in 0..self.shards() {
            self.turn(shard, how);
        }
    }

    /// Gives turns (random completions) until `done` gives a value; `None` if the simulation
    /// is stuck.
    pub(crate) fn run_until<T>(&self, mut done: impl FnMut() -> Option<T>) -> Option<T> {
        for _ in 0..TURNS_PER_REPLY_MAX {
            if let Some(v) = done() {
                return Some(v);
            }
            if self.is_stuck() {
                return None;
            }
            self.turn_all(Completing::Random);
        }
        log::error!("simulation: a reply never came; the simulation is stuck");
        self.stuck.store(true, Ordering::SeqCst);
        None
    }

    /// Operations queued on shard `shard`'s disk, not completed yet.
    pub fn queued(&self, shard: usize) -> usize {
        self.disks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(shard)
            .map_or(0, |d| disk::lock(d).queued.len())
    }

    /// Cuts the power between turns: each write still in flight reaches the disk (the power-cut
    /// simulator then keeps, loses or tears it like any write no sync covered), the disks stop
    /// doing anything, and from now on every operation fails.
    pub fn cut_power(&self) {
        for d in self
            .disks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            disk::lock(d).power_off();
        }
        self.crashes.crash();
    }

    /// Lets every shard run without waiting for turns, for the engine to shut down: its
    /// shutdown waits on threads the simulation does not drive.
    pub fn run_free(&self) {
        self.turns().free = true;
        for shard in &self.to_shard {
            shard.notify_all();
        }
    }
}
