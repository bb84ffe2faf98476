//! The single-thread `Producer`: requests queued and written together, acks read on the
//! caller's thread and matched to their requests by id, a server error answering only its
//! own request, and a lost or silent server ending the wait instead of hanging it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_client::{ClientError, ErrorCode, Target};
use keel_tests::data_dir;
use keel_tests::keeld::{values, Keeld};

const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn a_pipelined_producer_gets_every_ack_with_the_offsets_its_messages_were_stored_at() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("owned", 2).unwrap();
    let mut producer = server.producer(PATIENCE);
    let window = 200;
    let mut sent: HashMap<u32, (u32, Vec<Vec<u8>>)> = HashMap::new();
    let mut stored: [Vec<(u64, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
    let mut most_in_flight = 0;
    for i in 0..1_000u32 {
        let partition = i % 2;
        let batch: Vec<Vec<u8>> = (0..1 + i % 3)
            .map(|j| format!("owned {i}.{j} {}", "x".repeat((i % 41) as usize)).into_bytes())
            .collect();
        let id = producer
            .queue_values("owned", Target::Partition(partition), &batch)
            .unwrap();
        assert!(
            sent.insert(id, (partition, batch)).is_none(),
            "id {id} reused"
        );
        most_in_flight = most_in_flight.max(producer.in_flight());
        if producer.in_flight() >= window {
            // Take what arrived, waiting for one answer at least.
            let mut next = Some(producer.next_ack().unwrap());
            while let Some((id, ack)) = next {
                take(&mut sent, &mut stored, id, ack.unwrap());
                next = producer.ready_ack().unwrap();
            }
        }
    }
    while producer.in_flight() > 0 {
        let (id, ack) = producer.next_ack().unwrap();
        take(&mut sent, &mut stored, id, ack.unwrap());
    }
    assert!(sent.is_empty(), "{} requests never answered", sent.len());
    assert_eq!(most_in_flight, window, "the window was never filled");
    for (partition, mut want) in stored.into_iter().enumerate() {
        want.sort();
        // Offsets from 0 with no gap, each holding the value its ack said.
        assert!(want.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
        assert!(values(&client, "owned", partition as u32) == want);
    }
}

/// Checks an ack against its request and records where its messages went.
fn take(
    sent: &mut HashMap<u32, (u32, Vec<Vec<u8>>)>,
    stored: &mut [Vec<(u64, Vec<u8>)>; 2],
    id: u32,
    ack: keel_client::Ack,
) {
    let (partition, batch) = sent.remove(&id).expect("an ack for a request in flight");
    assert_eq!(ack.partition, partition);
    assert_eq!(ack.last_offset - ack.first_offset + 1, batch.len() as u64);
    for (k, v) in batch.into_iter().enumerate() {
        stored[partition as usize].push((ack.first_offset + k as u64, v));
    }
}

#[test]
fn a_server_error_answers_only_its_own_request() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("real", 1).unwrap();
    let mut producer = server.producer(PATIENCE);
    let before = producer
        .queue_values("real", Target::Partition(0), ["before"])
        .unwrap();
    let bad = producer
        .queue_values("no-such-topic", Target::Partition(0), ["lost"])
        .unwrap();
    let after = producer
        .send_values("real", Target::Partition(0), ["after"])
        .unwrap();
    let mut outcomes = HashMap::new();
    while producer.in_flight() > 0 {
        let (id, outcome) = producer.next_ack().unwrap();
        outcomes.insert(id, outcome);
    }
    assert_eq!(outcomes.remove(&before).unwrap().unwrap().first_offset, 0);
    assert_eq!(outcomes.remove(&after).unwrap().unwrap().first_offset, 1);
    match outcomes.remove(&bad) {
        Some(Err(e)) => assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}"),
        other => panic!("expected the unknown topic's error, got {other:?}"),
    }
}

#[test]
fn a_produce_that_cannot_be_sent_is_refused_before_it_is_queued() {
    let dir = data_dir();
    let server = Keeld::start_with_config(dir.path(), "max_frame_bytes = 270336\n", &[]);
    server.client().create_topic("t", 1).unwrap();
    let mut producer = server.producer(PATIENCE);
    let empty: [&[u8]; 0] = [];
    assert!(matches!(
        producer.queue_values("t", Target::Partition(0), empty),
        Err(ClientError::Protocol(_))
    ));
    let huge = vec![7u8; 300_000];
    assert!(matches!(
        producer.queue_values("t", Target::Partition(0), [&huge]),
        Err(ClientError::TooLarge { max: 270_336, .. })
    ));
    assert_eq!(producer.in_flight(), 0);
    assert!(matches!(producer.next_ack(), Err(ClientError::Protocol(_))));
    // Neither refusal left bytes behind: the next request is read as a whole one.
    let id = producer
        .send_values("t", Target::Partition(0), ["fine"])
        .unwrap();
    let (answered, ack) = producer.next_ack().unwrap();
    assert_eq!((answered, ack.unwrap().first_offset), (id, 0));
}

#[test]
fn a_silent_server_times_the_wait_out_and_the_ack_still_comes_later() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("t", 1).unwrap();
    let mut producer = server.producer(Duration::from_millis(300));
    server.signal("STOP");
    let id = producer
        .send_values("t", Target::Partition(0), ["late"])
        .unwrap();
    assert!(producer.ready_ack().unwrap().is_none());
    let started = Instant::now();
    assert!(matches!(producer.next_ack(), Err(ClientError::Timeout(_))));
    assert!(started.elapsed() < PATIENCE);
    assert_eq!(
        producer.in_flight(),
        1,
        "a timed-out request is still in flight"
    );
    server.signal("CONT");
    let deadline = Instant::now() + PATIENCE;
    let (answered, ack) = loop {
        match producer.next_ack() {
            Err(ClientError::Timeout(_)) if Instant::now() < deadline => continue,
            other => break other.unwrap(),
        }
    };
    assert_eq!((answered, ack.unwrap().first_offset), (id, 0));
}

#[test]
fn a_lost_connection_ends_the_wait_and_every_later_call() {
    let dir = data_dir();
    let mut server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("t", 1).unwrap();
    let mut producer = server.producer(PATIENCE);
    server.signal("STOP");
    producer
        .send_values("t", Target::Partition(0), ["never answered"])
        .unwrap();
    server.kill();
    assert!(matches!(
        producer.next_ack(),
        Err(ClientError::ConnectionLost(_))
    ));
    assert!(matches!(
        producer.queue_values("t", Target::Partition(0), ["after"]),
        Err(ClientError::ConnectionLost(_))
    ));
    assert!(matches!(
        producer.ready_ack(),
        Err(ClientError::ConnectionLost(_))
    ));
}

#[test]
fn a_write_the_server_never_reads_ends_the_connection_instead_of_hanging() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("t", 1).unwrap();
    let mut producer = server.producer(Duration::from_millis(300));
    server.signal("STOP");
    // Far more than the two sockets' buffers hold: the write has to wait for keeld.
    let value = vec![3u8; 256 << 10];
    for _ in 0..128 {
        producer
            .queue_values("t", Target::Partition(0), [&value])
            .unwrap();
    }
    let started = Instant::now();
    // keeld resumes after a while whatever happens, so a write with no timeout would finish
    // (and fail this test) rather than hang it.
    let flushed = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(3));
            server.signal("CONT");
        });
        let flushed = producer.flush();
        (flushed, started.elapsed())
    });
    assert!(
        matches!(flushed.0, Err(ClientError::ConnectionLost(_))),
        "{flushed:?}"
    );
    assert!(flushed.1 < Duration::from_secs(3), "{flushed:?}");
    assert!(matches!(
        producer.next_ack(),
        Err(ClientError::ConnectionLost(_))
    ));
}
