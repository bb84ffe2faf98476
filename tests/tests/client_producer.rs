//! The `Producer` against a real keeld: one message per call comes out batched, every delivery
//! names the offset its message was stored at, keys and keyless messages spread over
//! partitions as Kafka's would, a message that cannot be sent fails at once, a server that
//! stops answering is waited out, a batch the server refuses for good fails alone (the
//! producer moves to a new epoch so that the batches after it are stored), and a producer that
//! is not idempotent fails, rather than resends, what was in flight when its connection was
//! lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_client::{ClientError, ClientOptions, ErrorCode, Producer, ProducerOptions, Record};
use keel_tests::data_dir;
use keel_tests::keeld::{values, Keeld};

const PATIENCE: Duration = Duration::from_secs(20);

fn options(request_timeout: Duration) -> ProducerOptions {
    ProducerOptions {
        connection: ClientOptions {
            request_timeout,
            ..ClientOptions::default()
        },
        delivery_timeout: Duration::from_secs(60),
        ..ProducerOptions::default()
    }
}

/// Stores one message, so that the producer knows the topic (a first send waits for its
/// partition count) before the server is stopped or killed.
fn warm_up(producer: &Producer, topic: &str) {
    let d = producer.send(Record::new(topic, b"warm")).unwrap();
    d.wait().unwrap();
}

#[test]
fn one_message_per_call_is_batched_and_each_delivery_names_where_it_was_stored() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("owned", 2).unwrap();
    let producer = server.producer(PATIENCE);
    let messages = 5_000u32;
    let sent: Vec<(u32, Vec<u8>)> = (0..messages)
        .map(|i| {
            let value = format!("owned {i} {}", "x".repeat((i % 41) as usize)).into_bytes();
            (i % 2, value)
        })
        .collect();
    let deliveries: Vec<_> = sent
        .iter()
        .map(|(p, v)| {
            producer
                .send(Record::new("owned", v).partition(*p))
                .unwrap()
        })
        .collect();
    let mut stored: [Vec<(u64, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
    for (d, (p, v)) in deliveries.into_iter().zip(sent) {
        let at = d.wait().unwrap();
        assert_eq!(at.partition, p);
        stored[p as usize].push((at.offset, v));
    }
    let stats = producer.stats();
    assert_eq!(stats.messages, u64::from(messages));
    assert!(
        stats.requests * 10 <= u64::from(messages),
        "one message per call should travel in batches: {stats:?}"
    );
    for (partition, want) in stored.into_iter().enumerate() {
        // Offsets in sending order from 0 with no gap, each holding the value its delivery
        // said.
        assert!(want.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
        assert!(values(&client, "owned", partition as u32) == want);
    }
}

#[test]
fn keyed_messages_go_to_their_keys_partition_and_keyless_ones_spread() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("spread", 3).unwrap();
    let producer = server.producer(PATIENCE);
    let value = vec![1u8; 1000];
    let keyed: Vec<_> = (0..30)
        .map(|i| {
            let key = format!("customer-{i}");
            let d = producer
                .send(Record::new("spread", &value).key(key.as_bytes()))
                .unwrap();
            (key, d)
        })
        .collect();
    for (key, d) in keyed {
        let want = keel_protocol::partition_for_key(key.as_bytes(), 3);
        assert_eq!(d.wait().unwrap().partition, want, "{key}");
    }
    // Keyless messages stick to a partition for a batch's worth (64 KiB), then move on.
    let keyless: Vec<_> = (0..300)
        .map(|_| producer.send(Record::new("spread", &value)).unwrap())
        .collect();
    let mut per_partition = HashMap::new();
    for d in keyless {
        *per_partition
            .entry(d.wait().unwrap().partition)
            .or_insert(0) += 1;
    }
    assert_eq!(per_partition.len(), 3, "{per_partition:?}");
    assert!(
        per_partition.values().all(|&n| n >= 30),
        "{per_partition:?}"
    );
}

#[test]
fn a_message_that_cannot_be_sent_fails_at_once_and_the_producer_goes_on() {
    let dir = data_dir();
    let server = Keeld::start_with_config(dir.path(), "max_frame_bytes = 270336\n", &[]);
    server.client().create_topic("t", 1).unwrap();
    let producer = server.producer(PATIENCE);
    match producer.send(Record::new("no-such-topic", b"lost")) {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}"),
        Ok(d) => panic!("sent to a missing topic: {d:?}"),
    }
    match producer.send(Record::new("t", b"x").partition(1)) {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::UnknownPartition), "{e}"),
        Ok(d) => panic!("sent to a missing partition: {d:?}"),
    }
    // Over the server's largest batch (256 KiB in the tests' config), though within its frame.
    let huge = vec![7u8; 263_000];
    match producer.send(Record::new("t", &huge)) {
        Err(ClientError::MessageTooLarge { limit, .. }) => assert_eq!(limit, 262_144),
        other => panic!("a message over the server's batch limit: {other:?}"),
    }
    let fine = producer.send(Record::new("t", b"fine")).unwrap();
    assert_eq!(fine.wait().unwrap().offset, 0);
}

#[test]
fn batches_stay_within_the_servers_limit_whatever_batch_bytes_says() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("t", 1).unwrap();
    let producer = Producer::connect_with(
        server.addr,
        ProducerOptions {
            batch_bytes: 16 << 20,
            buffer_bytes: 32 << 20,
            linger: Duration::from_millis(200),
            ..options(PATIENCE)
        },
    )
    .unwrap();
    assert_eq!(producer.server_info().max_batch_bytes, 262_144);
    // 2 MiB of 1 KiB messages sent at once: eight times what one batch may carry.
    let value = [5u8; 1024];
    let deliveries: Vec<_> = (0..2048)
        .map(|_| producer.send(Record::new("t", &value)).unwrap())
        .collect();
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.wait().unwrap().offset, i as u64);
    }
    assert!(producer.stats().requests >= 8, "{:?}", producer.stats());
}

#[test]
fn a_batch_refused_for_good_fails_alone_and_the_ones_after_it_are_stored_in_a_new_epoch() {
    let dir = data_dir();
    // The producer meets a server that takes batches of 512 KiB; the one it reconnects to takes
    // 256 KiB (the tests' config), and refuses a batch between the two.
    let config = "max_batch_bytes = 524288\nmax_frame_bytes = 1048576\n";
    let mut server = Keeld::start_with_config(dir.path(), config, &[]);
    let addr = server.addr.to_string();
    server.client().create_topic("t", 1).unwrap();
    let producer = Producer::connect_with(server.addr, options(PATIENCE)).unwrap();
    let (_, epoch) = producer.identity().unwrap();
    let big = vec![9u8; 300_000];
    warm_up(&producer, "t");
    server.kill();
    // All sent at once on the new connection: the batches after the refused one arrive with
    // sequences the server cannot accept.
    let before = producer.send(Record::new("t", b"before")).unwrap();
    let refused = producer.send(Record::new("t", &big)).unwrap();
    let after: Vec<_> = (0..50)
        .map(|i| {
            let v = format!("after {i}");
            producer.send(Record::new("t", v.as_bytes())).unwrap()
        })
        .collect();
    let server = Keeld::start(dir.path(), &["--listen", &addr]);
    let client = server.client();
    assert_eq!(before.wait().unwrap().offset, 1);
    match refused.wait() {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::BatchTooLarge), "{e}"),
        Ok(s) => panic!("a batch over the server's limit was stored: {s:?}"),
    }
    for (i, d) in after.into_iter().enumerate() {
        assert_eq!(d.wait().unwrap().offset, 2 + i as u64);
    }
    assert_eq!(producer.identity().unwrap().1, epoch + 1, "a new epoch");
    let stored: Vec<Vec<u8>> = values(&client, "t", 0)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let want: Vec<Vec<u8>> = [b"warm".to_vec(), b"before".to_vec()]
        .into_iter()
        .chain((0..50).map(|i| format!("after {i}").into_bytes()))
        .collect();
    assert!(stored == want, "each once, in order");
}

#[test]
fn a_server_that_stops_answering_is_waited_out_and_each_message_stored_once() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("t", 1).unwrap();
    // A short request timeout: while keeld is stopped the producer gives the connection up,
    // connects again (its handshake waits too), and resends.
    let producer =
        Producer::connect_with(server.addr, options(Duration::from_millis(300))).unwrap();
    warm_up(&producer, "t");
    server.signal("STOP");
    let deliveries: Vec<_> = (0..20)
        .map(|i| {
            let v = format!("late {i}");
            producer.send(Record::new("t", v.as_bytes())).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!deliveries[0].is_finished(), "nothing can be stored yet");
    server.signal("CONT");
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.wait().unwrap().offset, 1 + i as u64);
    }
    assert!(
        producer.stats().reconnections >= 1,
        "{:?}",
        producer.stats()
    );
    let stored = values(&client, "t", 0);
    assert_eq!(stored.len(), 21, "resent batches are not stored twice");
}

#[test]
fn without_idempotence_a_lost_connection_fails_what_was_in_flight() {
    let dir = data_dir();
    let mut server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("t", 1).unwrap();
    let producer = Producer::connect_with(
        server.addr,
        ProducerOptions {
            idempotence: false,
            ..options(PATIENCE)
        },
    )
    .unwrap();
    assert_eq!(producer.identity(), None);
    warm_up(&producer, "t");
    server.signal("STOP");
    let d = producer.send(Record::new("t", b"never answered")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.kill();
    let started = Instant::now();
    match d.wait() {
        Err(ClientError::ConnectionLost(why)) => assert!(why.contains("unknown"), "{why}"),
        other => panic!("expected the connection's loss, got {other:?}"),
    }
    assert!(started.elapsed() < PATIENCE);
}

#[test]
fn an_idempotent_producer_whose_server_never_returns_gives_up_after_its_delivery_timeout() {
    let dir = data_dir();
    let mut server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("gone", 1).unwrap();
    let producer = Producer::connect_with(
        server.addr,
        ProducerOptions {
            delivery_timeout: Duration::from_secs(1),
            ..options(PATIENCE)
        },
    )
    .unwrap();
    warm_up(&producer, "gone");
    server.kill();
    let started = Instant::now();
    let d = producer.send(Record::new("gone", b"lost?")).unwrap();
    match d.wait() {
        Err(ClientError::DeliveryTimeout { why, .. }) => {
            assert!(why.contains("connection"), "{why}")
        }
        other => panic!("expected to give up, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "tried for its timeout: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "then gave up: {waited:?}");
}

/// Round trips of one message each, where the sender waiting for its delivery reads answers
/// itself and the producer's thread reads too: no wait lasts until the wait's own bound (as a
/// waiter polling for an answer another thread had just read would, if nothing woke it). A
/// round trip here takes milliseconds; the bound is 20 s; a wait of 3 s is a stall.
#[test]
fn one_message_round_trips_never_stall() {
    const STALL: Duration = Duration::from_secs(3);
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("t", 2).unwrap();
    let options = ProducerOptions {
        delivery_timeout: Duration::from_secs(10),
        ..options(Duration::from_secs(5))
    };
    let producer = Producer::connect_with(server.addr, options).unwrap();
    for i in 0..3000u32 {
        let v = format!("m{i}");
        // A burst now and then, so that the producer's own thread also reads.
        let burst = if i % 100 == 0 { 20 } else { 1 };
        let deliveries: Vec<_> = (0..burst)
            .map(|_| {
                producer
                    .send(Record::new("t", v.as_bytes()).partition(i % 2))
                    .unwrap()
            })
            .collect();
        // Waits that begin around the moment the answer arrives: then the producer's thread
        // may read it just before this one takes over the reading.
        std::thread::sleep(Duration::from_micros(u64::from(i % 60) * 10));
        for d in deliveries {
            let started = Instant::now();
            d.wait()
                .unwrap_or_else(|e| panic!("round trip {i}: {e} after {:?}", started.elapsed()));
            let waited = started.elapsed();
            assert!(waited < STALL, "round trip {i} stalled for {waited:?}");
        }
    }
}
