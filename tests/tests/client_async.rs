//! Deliveries awaited as futures: woken once their message is stored, in order, and ended by a
//! lost connection (without idempotence) rather than left pending. A paused keeld (`SIGSTOP`) makes the first poll
//! pending for certain, so the wake-up itself is what these tests see.

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use keel_client::{ClientError, Producer, ProducerOptions, Record};
use keel_tests::data_dir;
use keel_tests::keeld::{values, Keeld};

/// Wakes the test thread, counting the wake-ups.
struct Unpark {
    thread: Thread,
    wakes: AtomicUsize,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// A one-future executor on the test thread.
struct Runner {
    unpark: Arc<Unpark>,
    waker: Waker,
}

impl Runner {
    fn new() -> Self {
        let unpark = Arc::new(Unpark {
            thread: std::thread::current(),
            wakes: AtomicUsize::new(0),
        });
        let waker = Waker::from(Arc::clone(&unpark));
        Self { unpark, waker }
    }

    fn poll<F: Future>(&self, f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(&self.waker))
    }

    /// Polls `f` each time it is woken, until it is ready; fails the test after `within`.
    fn run<F: Future>(&self, f: F, within: Duration) -> F::Output {
        let mut f = pin!(f);
        let deadline = Instant::now() + within;
        loop {
            if let Poll::Ready(out) = self.poll(f.as_mut()) {
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the future was not woken within {within:?}"
            );
            std::thread::park_timeout(left);
        }
    }

    fn wakes(&self) -> usize {
        self.unpark.wakes.load(Ordering::SeqCst)
    }
}

const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn many_awaited_deliveries_are_stored_in_order() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("async", 2).unwrap();
    let producer = server.producer(PATIENCE);
    let sent: Vec<_> = (0..400u32)
        .map(|i| {
            let value = format!("async {i} {}", "v".repeat((i % 53) as usize));
            let record = Record::new("async", value.as_bytes()).partition(i % 2);
            let d = producer.send(record).unwrap();
            (i, value, d)
        })
        .collect();
    let runner = Runner::new();
    let mut next = [0u64; 2];
    let mut expected: [Vec<(u64, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
    for (i, value, d) in sent {
        let stored = runner.run(d.into_future(), PATIENCE).unwrap();
        let partition = (i % 2) as usize;
        assert_eq!(stored.partition as usize, partition);
        assert_eq!(stored.offset, next[partition], "message {i}");
        next[partition] += 1;
        expected[partition].push((stored.offset, value.into_bytes()));
    }
    for (partition, want) in expected.iter().enumerate() {
        assert!(values(&client, "async", partition as u32) == *want);
    }
}

#[test]
fn without_idempotence_an_awaited_delivery_ends_when_the_connection_is_lost() {
    let dir = data_dir();
    let mut server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("async", 1).unwrap();
    let producer = Producer::connect_with(
        server.addr,
        ProducerOptions {
            idempotence: false,
            ..ProducerOptions::default()
        },
    )
    .unwrap();
    let warm = producer.send(Record::new("async", b"warm")).unwrap();
    let runner = Runner::new();
    assert_eq!(runner.run(warm, PATIENCE).unwrap().offset, 0);
    server.signal("STOP");
    let d = producer
        .send(Record::new("async", b"never answered"))
        .unwrap();
    let mut stored = pin!(d.into_future());
    assert!(runner.poll(stored.as_mut()).is_pending());
    server.kill();
    match runner.run(stored, PATIENCE) {
        Err(ClientError::ConnectionLost(_)) => {}
        other => panic!("expected a lost connection, got {other:?}"),
    }
    assert!(runner.wakes() >= 1, "ready without being woken");
}

#[test]
fn an_awaited_delivery_is_woken_once_its_message_is_stored() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("async", 1).unwrap();
    let producer = server.producer(PATIENCE);
    // The producer learns the topic's partitions before keeld pauses.
    let first = producer.send(Record::new("async", b"first")).unwrap();
    let runner = Runner::new();
    assert_eq!(runner.run(first, PATIENCE).unwrap().offset, 0);
    server.signal("STOP");
    let deliveries: Vec<_> = (0..3)
        .map(|i| {
            let v = format!("awaited {i}");
            producer.send(Record::new("async", v.as_bytes())).unwrap()
        })
        .collect();
    let mut last = pin!(async {
        let mut offsets = Vec::new();
        for d in deliveries {
            offsets.push(d.await.map(|s| s.offset));
        }
        offsets
    });
    assert!(runner.poll(last.as_mut()).is_pending(), "keeld is paused");
    let before = runner.wakes();
    server.signal("CONT");
    let offsets = runner.run(last, PATIENCE);
    assert!(runner.wakes() > before, "woken by the producer");
    let offsets: Vec<u64> = offsets.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(values(&client, "async", 0).len(), 4);
}
