//! Work hosted on a shard's own thread and ring (how keeld serves connections with
//! `--net shard`): engine calls made from a shard thread never block, even when every queue
//! is full, and keep their order; the shard's waker reaches its guest; only io_uring hosts.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use io_uring::opcode;
use keel_engine::guest::{on_shard_thread, GuestRing, ShardGuest};
use keel_engine::{shard_for, Engine, EngineError, IoMode, OffsetRange};
use keel_tests::{data_dir, one_record, small_config};

const PARTITIONS: u32 = 4;
const APPENDS: usize = 2000;
const PER_COMPLETION: usize = 50;

/// Appends from the shard thread: a burst of appends per completed no-op, far more than the
/// engine's queues hold.
struct Appender {
    engine: Weak<Engine>,
    left: usize,
    next: usize,
    nop_posted: bool,
    started: bool,
    acks: Sender<(u32, usize, Result<OffsetRange, EngineError>)>,
}

impl Appender {
    fn post_nop(&mut self, ring: &mut dyn GuestRing) {
        // SAFETY: a no-op points to no memory.
        unsafe { ring.push(opcode::Nop::new().build(), 7) };
        self.nop_posted = true;
    }
}

impl ShardGuest for Appender {
    fn turn(&mut self, ring: &mut dyn GuestRing) {
        if !self.started {
            self.started = true;
            self.post_nop(ring);
        }
    }

    fn complete(&mut self, token: u64, result: io::Result<usize>, ring: &mut dyn GuestRing) {
        assert_eq!(token, 7);
        assert!(result.is_ok());
        assert!(on_shard_thread());
        self.nop_posted = false;
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        for _ in 0..PER_COMPLETION.min(self.left) {
            let seq = self.next;
            let partition = (seq % PARTITIONS as usize) as u32;
            let acks = self.acks.clone();
            engine.append("t", partition, one_record(&seq.to_le_bytes()), move |r| {
                let _ = acks.send((partition, seq, r));
            });
            self.next += 1;
            self.left -= 1;
        }
        drop(engine);
        if self.left > 0 {
            self.post_nop(ring);
        }
    }

    fn has_work(&self) -> bool {
        false
    }

    fn idle(&self) -> bool {
        !self.nop_posted
    }
}

#[test]
fn appends_from_a_shard_thread_never_block_and_keep_their_order() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 2);
    // A queue far smaller than one burst: a shard sending on the bounded queues would wait
    // for itself (its own partitions) or for a peer that may be waiting for it.
    cfg.queue_depth = 2;
    let engine = Arc::new(Engine::open(cfg).unwrap());
    engine.create_topic("t", PARTITIONS).unwrap();
    assert!(
        (0..PARTITIONS).any(|p| shard_for("t", p, 2) == 0)
            && (0..PARTITIONS).any(|p| shard_for("t", p, 2) == 1),
        "the topic spans both shards, so the guest appends to its own and to the other"
    );
    let (acks, acked) = unbounded();
    let guest = Appender {
        engine: Arc::downgrade(&engine),
        left: APPENDS,
        next: 0,
        nop_posted: false,
        started: false,
        acks,
    };
    engine.host(0, Box::new(guest)).unwrap();
    let mut last = vec![None::<(usize, u64)>; PARTITIONS as usize];
    for i in 0..APPENDS {
        let (partition, seq, result) = acked.recv_timeout(Duration::from_secs(20)).unwrap_or_else(
            |_| {
                panic!("append {i} of {APPENDS} from the shard thread was not answered (deadlock?)")
            },
        );
        let range = result.unwrap();
        let slot = &mut last[partition as usize];
        if let Some((prev_seq, prev_offset)) = *slot {
            assert!(
                seq > prev_seq && range.first == prev_offset + 1,
                "appends to partition {partition} keep the order they were sent in"
            );
        } else {
            assert_eq!(range.first, 0);
        }
        *slot = Some((seq, range.first));
    }
    for p in 0..PARTITIONS {
        let read = engine.read_wait("t", p, 0, 1 << 20).unwrap();
        assert_eq!(read.high_watermark, (APPENDS / PARTITIONS as usize) as u64);
    }
    // The hosted guest is idle: the engine shuts down cleanly with it.
    let engine = Arc::try_unwrap(engine).ok().unwrap();
    engine.shutdown();
}

/// Counts how often another thread handed it work.
struct Counter {
    handed: Arc<AtomicUsize>,
    seen: usize,
    turns: Sender<usize>,
}

impl ShardGuest for Counter {
    fn turn(&mut self, _ring: &mut dyn GuestRing) {
        let now = self.handed.load(Ordering::SeqCst);
        if now > self.seen {
            self.seen = now;
            let _ = self.turns.send(now);
        }
    }

    fn complete(&mut self, _: u64, _: io::Result<usize>, _: &mut dyn GuestRing) {}

    fn has_work(&self) -> bool {
        self.handed.load(Ordering::SeqCst) > self.seen
    }

    fn idle(&self) -> bool {
        true
    }
}

#[test]
fn the_shard_waker_reaches_an_idle_shards_guest() {
    let dir = data_dir();
    let engine = Engine::open(small_config(dir.path(), 2)).unwrap();
    let handed = Arc::new(AtomicUsize::new(0));
    let (turns, seen) = unbounded();
    let guest = Counter {
        handed: Arc::clone(&handed),
        seen: 0,
        turns,
    };
    engine.host(1, Box::new(guest)).unwrap();
    let waker = engine.shard_waker(1).unwrap();
    for round in 1..=20 {
        // Let the shard fall asleep, then hand over work.
        std::thread::sleep(Duration::from_millis(5));
        handed.store(round, Ordering::SeqCst);
        waker.wake(usize::MAX);
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(10))
                .expect("the sleeping shard woke and ran its guest"),
            round
        );
    }
    let again = Counter {
        handed,
        seen: 0,
        turns: unbounded().0,
    };
    assert!(matches!(
        engine.host(1, Box::new(again)),
        Err(EngineError::CannotHost(_))
    ));
}

#[test]
fn only_the_io_uring_backend_hosts() {
    let dir = data_dir();
    let mut cfg = small_config(dir.path(), 1);
    cfg.io = IoMode::Portable;
    let engine = Engine::open(cfg).unwrap();
    let guest = Counter {
        handed: Arc::new(AtomicUsize::new(0)),
        seen: 0,
        turns: unbounded().0,
    };
    let err = engine.host(0, Box::new(guest)).unwrap_err();
    assert!(matches!(err, EngineError::CannotHost(_)), "{err}");
    assert!(err.to_string().contains("io_uring"), "{err}");
}
