//! Test helper, not a tool: appends to an engine as fast as it can, with many appends in
//! flight, and prints `ACK round partition seq offset` for each acknowledged one, until it is
//! killed. `tests/engine_crash.rs` kills it with SIGKILL and checks what survived.
//!
//! Usage: keel-crash-appender DATA_DIR ROUND

use std::io::Write;

use keel_engine::Engine;
use keel_tests::answers::{appended, Answers};
use keel_tests::{crash_value, one_record, small_config};

const IN_FLIGHT: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(round)) = (args.get(1), args.get(2).and_then(|r| r.parse::<u32>().ok()))
    else {
        eprintln!("usage: keel-crash-appender DATA_DIR ROUND");
        std::process::exit(2);
    };
    let engine = match Engine::open(small_config(std::path::Path::new(dir), 2)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("open: {e}");
            std::process::exit(1);
        }
    };
    if engine.partitions("crash").is_err() {
        if let Err(e) = engine.create_topic("crash", 2) {
            eprintln!("create topic: {e}");
            std::process::exit(1);
        }
    }
    let answers = Answers::new();
    let send = |seq: u64| {
        let partition = (seq % 2) as u32;
        let record = one_record(&crash_value(round, partition, seq));
        engine.append("crash", partition, record, answers.ticket(seq));
    };
    let mut next = 0;
    for _ in 0..IN_FLIGHT {
        send(next);
        next += 1;
    }
    let mut out = std::io::stdout().lock();
    loop {
        let c = answers.expect(std::time::Duration::from_secs(60));
        let seq = c.tag;
        let partition = (seq % 2) as u32;
        match appended(c.answer) {
            Ok(range) => {
                // Printed only after the engine said the append is durable.
                if writeln!(out, "ACK {round} {partition} {seq} {}", range.first)
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                eprintln!("append failed: {e}");
                std::process::exit(1);
            }
        }
        send(next);
        next += 1;
    }
}
