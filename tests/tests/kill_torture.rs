//! Kill torture: keeld is killed (`SIGKILL`) at random moments and started again, over and
//! over, while an idempotent, retrying producer streams, a consumer group acknowledges what it
//! is given durably, another producer fills a topic fast enough to roll segments and run
//! retention, and topics are created and deleted. Afterwards:
//! - every message the producer was told is stored is in the log exactly once, in order, at
//!   the offset it was told;
//! - the group is given every stored message it did not durably acknowledge, and none it did
//!   (an ack whose answer was lost to a kill may go either way).
//!
//! It prints its cycles, messages and lost messages. `KEEL_TORTURE_CYCLES` sets the number of
//! kills (default 50, about half a minute); `KEEL_TORTURE_SEED` the seed of the kill times.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_client::{
    spans_of, Client, ClientOptions, ErrorCode, FetchOptions, JoinSettings, Producer,
    ProducerOptions, Record, StartAt, Target,
};
use keel_tests::exactly_once::{self, Sent};
use keel_tests::keeld::{values, Keeld};
use keel_tests::member::{drain, join, keys, Key};
use keel_tests::raw_produce::produce;
use keel_tests::{data_dir, Rng};

const TOPIC: &str = "torture";
const PARTITIONS: u32 = 2;
/// Small segments, so rolls (and summaries) come often; retention, which the busy "churn"
/// topic reaches within seconds and the torture topic, sent in bursts so that each burst takes
/// a few flushes (a flush takes at least a 4 KiB block), never does. Per kill cycle the churn
/// topic grows by about 3.5 MB and each torture partition by about 0.15 MB, so retention grows
/// with the cycles.
fn config(cycles: u64) -> String {
    let retention = (cycles * (640 << 10)).max(32 << 20);
    format!("segment_bytes = 524288\nretention_bytes = {retention}\n")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn connect(addr: SocketAddr) -> Option<Client> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    Client::connect_with(addr, options).ok()
}

/// What the group was told of its acks.
#[derive(Default)]
struct Acks {
    /// Answered: durable.
    durable: BTreeSet<Key>,
    /// Sent, but the answer was lost with the connection: durable or not.
    unknown: BTreeSet<Key>,
}

/// Consumes and durably acknowledges until `stop`, connecting and joining again after each
/// kill.
fn consume(addr: SocketAddr, stop: Arc<AtomicBool>, acks: Arc<Mutex<Acks>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Some(client) = connect(addr) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let Ok(m) = client.join_group("g", TOPIC, StartAt::Earliest, JoinSettings::default())
            else {
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                let Ok(batch) = client.consume(&m, 50, Duration::from_millis(100)) else {
                    break;
                };
                if batch.is_empty() {
                    continue;
                }
                let answered = client.ack(&m, &spans_of(&batch), true);
                let mut acks = acks.lock().unwrap();
                match answered {
                    Ok(()) => acks.durable.extend(keys(&batch)),
                    Err(_) => {
                        acks.unknown.extend(keys(&batch));
                        break;
                    }
                }
            }
        }
    })
}

/// Until `stop`: a topic created, written to and deleted, again and again.
fn churn_topics(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut deleted = 0;
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let Some(client) = connect(addr) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                let name = format!("scratch-{i}");
                i += 1;
                if client.create_topic(&name, 1).is_err() {
                    break;
                }
                let _ = produce(&client, &name, Target::Partition(0), [b"x"]);
                if client.delete_topic(&name).is_err() {
                    break;
                }
                deleted += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        deleted
    })
}

#[test]
fn every_acknowledged_message_and_ack_survives_random_kills() {
    let cycles = env_u64("KEEL_TORTURE_CYCLES", 50);
    let seed = env_u64("KEEL_TORTURE_SEED", 0x70_27_0e);
    let mut rng = Rng(seed);
    let dir = data_dir();
    let config = config(cycles);
    let first = Keeld::start_with_config(dir.path(), &config, &[]);
    let addr = first.addr;
    let listen = addr.to_string();
    first.client().create_topic(TOPIC, PARTITIONS).unwrap();
    first.client().create_topic("churn", 1).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let consumer = consume(addr, Arc::clone(&stop), Arc::clone(&acks));
    let topics = churn_topics(addr, Arc::clone(&stop));
    let options = ProducerOptions {
        connection: ClientOptions {
            request_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        },
        delivery_timeout: Duration::from_secs(120),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect_with(&*listen, options.clone()).unwrap();
    let churn = Producer::connect_with(&*listen, options).unwrap();
    let producing = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut i = 0u64;
            let filler = vec![b'c'; 4000];
            while !stop.load(Ordering::SeqCst) {
                let partition = (i % u64::from(PARTITIONS)) as u32;
                let value = format!("torture-{i}").into_bytes();
                let record = Record::new(TOPIC, &value).partition(partition);
                let delivery = producer.send(record).unwrap();
                sent.push(Sent {
                    partition,
                    value,
                    delivery,
                });
                // The churn topic's deliveries are not checked: it is there to roll segments
                // and drop old ones.
                let _ = churn.send(Record::new("churn", &filler));
                i += 1;
                // Bursts of 50, 40 a second.
                if i.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
            producer.flush().unwrap();
            sent
        })
    };

    let mut keeld = first;
    let started = Instant::now();
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
        keeld.kill();
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        keeld = Keeld::start_with_config(dir.path(), &config, &["--listen", &listen]);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let sent = producing.join().unwrap();
    consumer.join().unwrap();
    let topics_deleted = topics.join().unwrap();

    // The producer's messages: each stored once, in order, where it was told.
    let client = keeld.client();
    let messages = exactly_once::check(&client, TOPIC, PARTITIONS, sent);
    assert!(messages > 1000, "only {messages} messages were sent");

    // The group: given again exactly what it did not durably acknowledge.
    let stored: BTreeSet<Key> = (0..PARTITIONS)
        .flat_map(|p| {
            values(&client, TOPIC, p)
                .into_iter()
                .map(move |(o, _)| (p, o))
        })
        .collect();
    // Acknowledging as it goes, or the member's prefetch limit would stop the drain.
    let m = join(&client, TOPIC, JoinSettings::default());
    let again = drain(&client, &m, 0, Duration::from_millis(500), true);
    let came = keys(&again);
    let acks = acks.lock().unwrap();
    let redelivered: Vec<&Key> = came.intersection(&acks.durable).collect();
    let lost: Vec<&Key> = stored
        .iter()
        .filter(|k| !came.contains(k) && !acks.durable.contains(k) && !acks.unknown.contains(k))
        .collect();
    assert!(
        redelivered.is_empty(),
        "{} durably acknowledged, yet given again, first {:?}",
        redelivered.len(),
        &redelivered[..redelivered.len().min(10)]
    );
    assert!(
        lost.is_empty(),
        "{} never acknowledged, yet not given again, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_eq!(came.len(), again.len(), "each given once");
    assert!(came.is_subset(&stored), "only stored messages are given");
    assert!(!acks.durable.is_empty(), "the group acknowledged nothing");
    let churn_start = client
        .fetch("churn", 0, 0, FetchOptions::default())
        .err()
        .and_then(|e| e.code());
    assert_eq!(
        churn_start,
        Some(ErrorCode::OffsetOutOfRange),
        "retention dropped the churn topic's first segments"
    );
    let _ = writeln!(
        std::io::stderr(),
        "kill torture (seed {seed}): {cycles} cycles in {:.1} s, {messages} messages, {} acked \
         by the group, {topics_deleted} topics deleted, lost 0",
        started.elapsed().as_secs_f64(),
        acks.durable.len()
    );
}
