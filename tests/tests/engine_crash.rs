//! A real crash: a process appending with hundreds of appends in flight is killed with SIGKILL
//! at a different point in each of three rounds on the same data directory. After each kill the
//! log is reopened and every acknowledged message must be there, at the offset it was
//! acknowledged with, byte for byte, with offsets still dense.
//!
//! A kill does not drop what already reached the device, so this cannot tell an acknowledgement
//! sent before its fdatasync from one sent after: `engine_power_loss.rs` does that, by undoing
//! every write no completed sync covered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_engine::{BatchView, Engine};
use keel_tests::{crash_value, data_dir, read_all, small_config};

/// Kills the child on every path out of the test, so no appender outlives it.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one appender until it has printed `acks` acknowledgements, then SIGKILLs it.
/// Returns (partition, offset) -> (round, seq) of every acknowledged append.
fn run_and_kill(
    dir: &std::path::Path,
    round: u32,
    acks: usize,
) -> BTreeMap<(u32, u64), (u32, u64)> {
    let child = Command::new(env!("CARGO_BIN_EXE_keel-crash-appender"))
        .arg(dir)
        .arg(round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the appender");
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = BTreeMap::new();
    let mut reader = BufReader::new(stdout);
    let take = |line: &str, acked: &mut BTreeMap<_, _>| {
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        let (r, partition, seq, offset) = (f[0] as u32, f[1] as u32, f[2], f[3]);
        assert_eq!(r, round);
        assert!(
            acked.insert((partition, offset), (round, seq)).is_none(),
            "offset acknowledged twice"
        );
    };
    let mut line = String::new();
    while acked.len() < acks {
        assert!(
            Instant::now() < deadline,
            "round {round}: only {} acks within 60 s",
            acked.len()
        );
        line.clear();
        let n = reader.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "the appender exited early");
        take(&line, &mut acked);
    }
    // SIGKILL: no chance to finish in-flight flushes or close anything.
    child.0.kill().expect("kill the appender");
    child.0.wait().expect("reap the appender");
    // Every acknowledgement printed before the kill counts, above all the last ones: they are
    // the appends whose flushes were the most recent. A line cut short by the kill is not one.
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read stdout") == 0 || !line.ends_with('\n') {
            break;
        }
        take(&line, &mut acked);
    }
    acked
}

#[test]
fn every_acknowledged_message_survives_sigkill_byte_for_byte() {
    let dir = data_dir();
    let mut acked = BTreeMap::new();
    for (round, acks) in [(0u32, 700usize), (1, 2500), (2, 5000)] {
        acked.append(&mut run_and_kill(dir.path(), round, acks));

        let engine = Engine::open(small_config(dir.path(), 2)).expect("reopen after SIGKILL");
        let logs = [read_all(&engine, "crash", 0), read_all(&engine, "crash", 1)];
        let stored: BTreeMap<(u32, u64), &Vec<u8>> = logs
            .iter()
            .enumerate()
            .flat_map(|(p, log)| {
                log.iter()
                    .map(move |(offset, bytes)| ((p as u32, *offset), bytes))
            })
            .collect();
        for (&(partition, offset), &(r, seq)) in &acked {
            let bytes = stored.get(&(partition, offset)).unwrap_or_else(|| {
                panic!("round {round}: acknowledged {partition}/{offset} is missing")
            });
            let view = BatchView::verify(bytes).unwrap();
            let record = view.records().next().unwrap().unwrap();
            assert_eq!(
                record.value,
                Some(&crash_value(r, partition, seq)[..]),
                "round {round}: {partition}/{offset} differs from what was acknowledged"
            );
        }
        // Offsets stay dense across the crash: nothing was lost in the middle.
        for log in &logs {
            for (i, (offset, _)) in log.iter().enumerate() {
                assert_eq!(*offset, i as u64);
            }
        }
    }
}
