//! Opening the engine on a test backend (cargo feature `testing`; never in keeld): io_uring
//! with injected failures, or under the power-cut simulator. Kept out of the production
//! configuration, whose `IoMode` names only what keeld can run on.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::OpenError;
use crate::io::{CrashPlan, FaultPlan};
use crate::simulation::Simulation;
use crate::EngineConfig;

/// A test backend over io_uring.
#[derive(Debug, Clone)]
pub enum TestDisk {
    /// Chosen writes, syncs or allocations fail (`io/faulty.rs`).
    Faults(Arc<FaultPlan>),
    /// Power cuts: unsynced writes, directory changes and offset-table sectors can be undone
    /// (`io/crashing.rs`); also the engine's metadata filesystem.
    Crashes(Arc<CrashPlan>),
    /// Both: failures injected over the power-cut simulator, so that a write whose sync
    /// failed is still on the simulated disk, unsynced, when the power is cut.
    FaultsAndCrashes(Arc<FaultPlan>, Arc<CrashPlan>),
    /// The deterministic simulator: no io_uring; shards run in the turns the simulation
    /// gives, over the simulation's fault and power-cut plans.
    Simulated(Arc<Simulation>),
}

impl TestDisk {
    /// The crash simulator's plan, if this backend has one.
    pub(crate) fn crash_plan(&self) -> Option<&Arc<CrashPlan>> {
        match self {
            TestDisk::Faults(_) => None,
            TestDisk::Crashes(plan) | TestDisk::FaultsAndCrashes(_, plan) => Some(plan),
            TestDisk::Simulated(sim) => Some(sim.crashes()),
        }
    }
}

/// Opens the engine with `cfg` on `disk`.
pub fn open(mut cfg: EngineConfig, disk: TestDisk) -> Result<Engine, OpenError> {
    cfg.test_disk = Some(disk);
    Engine::open(cfg)
}
