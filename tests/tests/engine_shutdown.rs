//! Shutting down answers every append in flight, and everything it acknowledged is there
//! after a restart.

use keel_engine::Engine;
use keel_tests::answers::{appended, Tagged};
use keel_tests::{data_dir, one_record, read_all, small_config};

#[test]
fn shutdown_answers_every_append_and_keeps_every_acknowledged_one() {
    let dir = data_dir();
    let cfg = small_config(dir.path(), 2);
    let engine = Engine::open(cfg.clone()).unwrap();
    engine.create_topic("s", 2).unwrap();
    let tickets = Tagged::new();
    for i in 0..2000u32 {
        let value = format!("message {i}");
        let record = one_record(value.as_bytes());
        engine.append("s", i % 2, record, tickets.ticket((i, value)));
    }
    drop(engine); // stops taking requests, finishes what is in flight
    let mut answers = Vec::new();
    for _ in 0..2000 {
        let Ok(((i, value), r)) = tickets.recv_timeout(std::time::Duration::from_secs(10)) else {
            break;
        };
        answers.push((i, value, appended(r)));
    }
    assert_eq!(
        answers.len(),
        2000,
        "every append is answered, none is dropped silently"
    );
    let engine = Engine::open(cfg).unwrap();
    let logs = [read_all(&engine, "s", 0), read_all(&engine, "s", 1)];
    let mut acked = 0;
    for (i, value, r) in answers {
        let Ok(range) = r else { continue };
        acked += 1;
        let (base, bytes) = &logs[(i % 2) as usize][range.first as usize];
        assert_eq!(*base, range.first);
        let view = keel_engine::BatchView::verify(bytes).unwrap();
        assert_eq!(
            view.records().next().unwrap().unwrap().value,
            Some(value.as_bytes())
        );
    }
    assert!(acked > 0);
}
