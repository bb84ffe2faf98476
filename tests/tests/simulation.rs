//! The deterministic simulator (`keel_tests::simulation`): the whole engine from one seed,
//! under power cuts, injected EIO and ENOSPC, and simulated time, checked against a model
//! after every restart.
//!
//! `KEEL_SIM_SEEDS` runs more seeds (CI runs the default), `KEEL_SIM_SEED` starts elsewhere;
//! a failing seed prints the command that replays it alone.

use keel_tests::simulation;

/// Seeds CI runs.
const CI_SEEDS: u64 = 300;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn every_seed_keeps_every_promise() {
    let first = env_u64("KEEL_SIM_SEED").unwrap_or(1);
    let seeds = env_u64("KEEL_SIM_SEEDS").unwrap_or(CI_SEEDS);
    let (mut lives, mut cuts, mut faults, mut acked, mut acks) = (0, 0, 0, 0, 0);
    for seed in first..first + seeds {
        match simulation::run(seed, false) {
            Ok(r) => {
                lives += r.lives;
                cuts += r.power_cuts;
                faults += r.faults;
                acked += r.acked_appends;
                acks += r.durable_acks;
            }
            Err(e) => panic!(
                "seed {seed}: {e}\nreplay: KEEL_SIM_SEED={seed} KEEL_SIM_SEEDS=1 cargo test \
                 -p keel-tests --test simulation every_seed"
            ),
        }
    }
    println!(
        "{seeds} seeds from {first}: {lives} lives, {cuts} power cuts, {faults} with a failed \
         write or sync, {acked} appends acknowledged, {acks} messages acknowledged durably; \
         every promise kept"
    );
    assert!(cuts > 0, "no seed cut the power");
    assert!(acked > 0, "no append was acknowledged");
    assert!(acks > 0, "no message was acknowledged durably");
}

#[test]
fn a_seed_replays_the_same_history() {
    let seed = env_u64("KEEL_SIM_SEED").unwrap_or(7);
    let first = simulation::run(seed, false).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let again = simulation::run(seed, false).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(first, again, "seed {seed} made two histories");
}

/// An engine that acknowledges appends before their sync completes is caught within the
/// seeds CI runs.
#[test]
fn an_engine_acknowledging_before_syncing_is_caught() {
    for seed in 1..=CI_SEEDS {
        if let Err(e) = simulation::run(seed, true) {
            println!("seed {seed} caught the broken engine: {e}");
            return;
        }
    }
    panic!("no seed of {CI_SEEDS} caught an engine that acknowledges before syncing");
}
