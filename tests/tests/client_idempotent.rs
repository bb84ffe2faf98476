//! The default (idempotent) `Producer` streaming one message per call while keeld is killed
//! (`SIGKILL`) and restarted, and while its connections are cut, many times: it connects
//! again, resends what was in flight in order, and in the end every message is in the log
//! exactly once, in the order it was sent, at the offset its delivery named. (With the
//! server's duplicate check taken out, these fail: resent batches are stored twice.) The same
//! holds when some of its requests are refused as `Busy`.

use std::time::{Duration, Instant};

use keel_client::{ClientOptions, Delivery, Producer, ProducerOptions, Record};
use keel_tests::cutter::Cutter;
use keel_tests::data_dir;
use keel_tests::exactly_once::{self, Sent};
use keel_tests::keeld::Keeld;
use keel_tests::refuser::Refuser;

fn options() -> ProducerOptions {
    ProducerOptions {
        connection: ClientOptions {
            request_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        },
        delivery_timeout: Duration::from_secs(60),
        ..ProducerOptions::default()
    }
}

/// Message `i` of a run, and the partition it goes to.
fn message(i: usize) -> (u32, String) {
    ((i % 2) as u32, format!("m{i}"))
}

/// Every delivery succeeded at the offset its partition's log holds its message at, and each
/// partition holds exactly its messages, once each, in sending order.
fn check_exactly_once(client: &keel_client::Client, topic: &str, deliveries: Vec<Delivery>) {
    let sent = deliveries
        .into_iter()
        .enumerate()
        .map(|(i, delivery)| {
            let (partition, value) = message(i);
            Sent {
                partition,
                value: value.into_bytes(),
                delivery,
            }
        })
        .collect();
    exactly_once::check(client, topic, 2, sent);
}

#[test]
fn across_kills_each_message_is_stored_once_in_order() {
    const MESSAGES: usize = 3000;
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    let addr = keeld.addr.to_string();
    keeld.client().create_topic("exact", 2).unwrap();
    let producer = Producer::connect_with(&*addr, options()).unwrap();
    let mut keeld = Some(keeld);
    let mut restarting = None;
    let mut deliveries = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        if i % 700 == 350 {
            // Killed with produces in flight; back on the same address a moment later, while
            // the producer keeps trying.
            if let Some(handle) = restarting.take() {
                keeld = Some(std::thread::JoinHandle::join(handle).unwrap());
            }
            // Each kill finds the producer connected to the keeld it kills.
            let kills = (i / 700) as u64;
            let deadline = Instant::now() + Duration::from_secs(20);
            while producer.stats().reconnections < kills && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut k = keeld.take().expect("keeld runs");
            k.kill();
            let (dir, addr) = (dir.path().to_path_buf(), addr.clone());
            restarting = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                Keeld::start(&dir, &["--listen", &addr])
            }));
        }
        let (partition, value) = message(i);
        let record = Record::new("exact", value.as_bytes()).partition(partition);
        deliveries.push(producer.send(record).unwrap());
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    producer.flush().unwrap();
    let keeld = match keeld {
        Some(k) => k,
        None => restarting.expect("a restart").join().unwrap(),
    };
    assert!(
        producer.stats().reconnections >= 3,
        "{:?}",
        producer.stats()
    );
    check_exactly_once(&keeld.client(), "exact", deliveries);
}

#[test]
fn across_cut_connections_each_message_is_stored_once_in_order() {
    const MESSAGES: usize = 6000;
    const CUTS: usize = 25;
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    keeld.client().create_topic("cut", 2).unwrap();
    let relay = Cutter::start(keeld.addr);
    let producer = Producer::connect_with(relay.addr, options()).unwrap();
    let mut deliveries = Vec::with_capacity(MESSAGES);
    let mut cut = 0;
    for i in 0..MESSAGES {
        // Cuts at uneven points, while batches are being filled, sent and answered.
        if i % (MESSAGES / CUTS) == (i / 7) % 97 && relay.cut() > 0 {
            cut += 1;
        }
        let (partition, value) = message(i);
        let record = Record::new("cut", value.as_bytes()).partition(partition);
        deliveries.push(producer.send(record).unwrap());
        if i % 40 == 39 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    producer.flush().unwrap();
    let stats = producer.stats();
    assert!(cut >= CUTS / 2, "cut {cut} times");
    assert!(stats.reconnections >= cut as u64 / 2, "{stats:?}");
    assert!(
        stats.resends > 0,
        "something was in flight at a cut: {stats:?}"
    );
    check_exactly_once(&keeld.client(), "cut", deliveries);
}

/// keeld (here a relay in front of it) refuses one produce request in five with `Busy`, as an
/// overloaded server would: the request never reached keeld, and the ones the producer sent
/// after it on the same partition arrive with a gap in their numbers. The producer sends the
/// refused batch again after its back-off, in its place, and every message is stored once, in
/// order.
#[test]
fn refused_as_busy_each_message_is_stored_once_in_order() {
    const MESSAGES: usize = 3000;
    let dir = data_dir();
    let keeld = Keeld::start(dir.path(), &[]);
    keeld.client().create_topic("busy", 2).unwrap();
    let relay = Refuser::start(keeld.addr, 5);
    let producer = Producer::connect_with(
        relay.addr,
        ProducerOptions {
            retry_backoff: Duration::from_millis(5),
            // Small batches: many requests, so many refusals.
            batch_bytes: 400,
            ..options()
        },
    )
    .unwrap();
    let mut deliveries = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let (partition, value) = message(i);
        let record = Record::new("busy", value.as_bytes()).partition(partition);
        deliveries.push(producer.send(record).unwrap());
        if i % 40 == 39 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    producer.flush().unwrap();
    let stats = producer.stats();
    assert!(
        relay.refused() >= 10,
        "refused {}; {stats:?}",
        relay.refused()
    );
    assert!(stats.resends >= relay.refused(), "{stats:?}");
    assert_eq!(stats.reconnections, 0, "{stats:?}");
    check_exactly_once(&keeld.client(), "busy", deliveries);
}
