//! `kill -9` in the middle of a pipelined produce: after a restart, every acknowledged message
//! is there, byte-identical, at the offset it was acknowledged with.

use keel_tests::crash_load::{missing_after_restart, produce_then_kill, Acked};
use keel_tests::data_dir;
use keel_tests::keeld::Keeld;

const PARTITIONS: u32 = 3;

fn sigkill_mid_pipeline(io: &[&str]) {
    let dir = data_dir();
    let mut all_acked = Acked::new();
    for round in 0..3u32 {
        let mut server = Keeld::start(dir.path(), io);
        if round == 0 {
            server.client().create_topic("crash", PARTITIONS).unwrap();
        }
        // Kill at a point that varies with the round, well inside the stream.
        let kill_after = 300 + 250 * round as usize;
        let acked = produce_then_kill(&mut server, "crash", PARTITIONS, round, kill_after);
        all_acked.extend(acked);

        // Restart on the same data and check every message acknowledged in any round so far.
        let server = Keeld::start(dir.path(), io);
        let missing = missing_after_restart(&server, "crash", PARTITIONS, &all_acked);
        assert_eq!(
            missing, 0,
            "acknowledged messages lost after round {round}'s SIGKILL"
        );
    }
}

#[test]
fn sigkill_mid_pipeline_loses_no_acknowledged_message() {
    sigkill_mid_pipeline(&[]);
}

#[test]
fn sigkill_mid_pipeline_loses_no_acknowledged_message_with_portable_io() {
    sigkill_mid_pipeline(&["--portable-io"]);
}
