//! Reads that wait at a partition's end (long polls) are shard state: answered by the flush that
//! makes data durable, by the shard's own clock at their deadline, with an error when their
//! topic goes, and with what they have when the engine stops.

use std::time::{Duration, Instant};

use keel_engine::{BatchView, DataError, Engine, ReadResult};
use keel_tests::answers::{read, Answers};
use keel_tests::{data_dir, one_record, small_config};

const PATIENCE: Duration = Duration::from_secs(10);

/// A read waiting on the engine.
struct Waiting(Answers);

impl Waiting {
    fn recv_timeout(&self, timeout: Duration) -> Result<Result<ReadResult, DataError>, ()> {
        self.0.recv_timeout(timeout).map(read)
    }
}

fn wait_at_end(engine: &Engine, topic: &str, from: u64, until: Instant) -> Waiting {
    let answers = Answers::new();
    engine.read_waiting(topic, 0, from, 1 << 20, until, answers.ticket(0));
    Waiting(answers)
}

fn values(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let view = BatchView::verify(rest).unwrap();
        let len = view.bytes().len();
        for r in view.records() {
            out.push(r.unwrap().value.unwrap().to_vec());
        }
        rest = &rest[len..];
    }
    out
}

#[test]
fn a_read_waiting_at_the_end_is_answered_by_the_flush_that_makes_data_durable() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    engine.create_topic("t", 1).unwrap();
    engine.append_wait("t", 0, one_record(b"before")).unwrap();
    let waiting = wait_at_end(&engine, "t", 1, Instant::now() + Duration::from_secs(60));
    assert!(
        waiting.recv_timeout(Duration::from_millis(200)).is_err(),
        "a read at the end with time to wait is not answered with nothing"
    );
    let range = engine.append_wait("t", 0, one_record(b"after")).unwrap();
    let answer = waiting.recv_timeout(PATIENCE).unwrap().unwrap();
    assert_eq!(values(&answer.data), vec![b"after".to_vec()]);
    assert_eq!(answer.next_offset, range.last + 1);
    assert_eq!(answer.high_watermark, range.last + 1);
}

#[test]
fn a_read_waiting_at_the_end_is_answered_empty_at_its_deadline_by_the_shard_clock() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    engine.create_topic("t", 1).unwrap();
    let start = Instant::now();
    let wait = Duration::from_millis(300);
    let first = wait_at_end(&engine, "t", 0, start + wait);
    // A later deadline behind an earlier one: each is answered at its own.
    let second = wait_at_end(&engine, "t", 0, start + 2 * wait);
    let answer = first.recv_timeout(PATIENCE).unwrap().unwrap();
    let first_at = start.elapsed();
    assert!(answer.data.is_empty());
    assert_eq!((answer.next_offset, answer.high_watermark), (0, 0));
    assert!(
        first_at >= wait,
        "answered before its deadline: {first_at:?}"
    );
    let answer = second.recv_timeout(PATIENCE).unwrap().unwrap();
    let second_at = start.elapsed();
    assert!(answer.data.is_empty());
    assert!(
        second_at >= 2 * wait,
        "answered before its deadline: {second_at:?}"
    );
}

#[test]
fn a_read_with_its_deadline_passed_or_data_there_is_answered_at_once() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 1)).unwrap();
    engine.create_topic("t", 1).unwrap();
    let past = wait_at_end(&engine, "t", 0, Instant::now() - Duration::from_millis(1));
    assert!(past
        .recv_timeout(PATIENCE)
        .unwrap()
        .unwrap()
        .data
        .is_empty());
    engine.append_wait("t", 0, one_record(b"there")).unwrap();
    let there = wait_at_end(&engine, "t", 0, Instant::now() + Duration::from_secs(60));
    let answer = there.recv_timeout(PATIENCE).unwrap().unwrap();
    assert_eq!(values(&answer.data), vec![b"there".to_vec()]);
    let beyond = wait_at_end(&engine, "t", 5, Instant::now() + Duration::from_secs(60));
    assert!(matches!(
        beyond.recv_timeout(PATIENCE).unwrap(),
        Err(DataError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn waiting_reads_are_answered_when_their_topic_is_deleted_or_the_engine_stops() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    engine.create_topic("doomed", 1).unwrap();
    engine.create_topic("kept", 1).unwrap();
    let far = Instant::now() + Duration::from_secs(60);
    let doomed = wait_at_end(&engine, "doomed", 0, far);
    let kept = wait_at_end(&engine, "kept", 0, far);
    engine.delete_topic("doomed").unwrap();
    assert!(matches!(
        doomed.recv_timeout(PATIENCE).unwrap(),
        Err(DataError::TopicDeleted(_))
    ));
    assert!(kept.recv_timeout(Duration::from_millis(100)).is_err());
    let stopping = Instant::now();
    engine.shutdown();
    let answer = kept.recv_timeout(PATIENCE).unwrap().unwrap();
    assert!(answer.data.is_empty());
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "the stop did not wait for the read's deadline"
    );
}
