//! Many requests in flight on one connection: every answer finds its request.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keel_client::{FetchOptions, Target};
use keel_protocol::{decode_response, encode_request, ApiKey, PartitionTarget, Request, Response};
use keel_tests::keeld::Keeld;
use keel_tests::raw_produce::{batch_of, produce, send_values};
use keel_tests::{data_dir, read_frame};

fn thousand_in_flight(io: &[&str]) {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), io);
    let client = server.client();
    client.create_topic("pipe", 2).unwrap();
    // All 1,000 are sent before the first answer is awaited.
    let pending: Vec<_> = (0..1000u32)
        .map(|i| {
            let value = format!("message {i:04} {}", "p".repeat((i % 97) as usize));
            let p = send_values(
                &client,
                "pipe",
                Target::Partition(i % 2),
                [value.as_bytes()],
            )
            .unwrap();
            (i, value, p)
        })
        .collect();
    let mut by_partition: [Vec<(u64, String)>; 2] = [Vec::new(), Vec::new()];
    for (i, value, p) in pending {
        let ack = p.wait().unwrap();
        assert_eq!(ack.partition, i % 2);
        assert_eq!(ack.first_offset, ack.last_offset);
        by_partition[ack.partition as usize].push((ack.first_offset, value));
    }
    for (partition, acked) in by_partition.iter_mut().enumerate() {
        // 500 distinct offsets, 0..500: nothing lost, nothing doubled.
        acked.sort();
        let offsets: Vec<u64> = acked.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..500).collect::<Vec<_>>(),
            "partition {partition}"
        );
        let mut offset = 0;
        while offset < 500 {
            let fetched = client
                .fetch("pipe", partition as u32, offset, FetchOptions::default())
                .unwrap();
            for m in fetched.messages(offset).unwrap() {
                assert_eq!(
                    m.value.as_deref(),
                    Some(acked[m.offset as usize].1.as_bytes())
                );
            }
            offset = fetched.next_offset;
        }
    }
}

/// Eight connections pipelining 64 KiB produces into one partition, against a shard budget of
/// 528 KiB: connections keep finding it spent, stop reading, and must be resumed when bytes come
/// back (a network loop never waits for it: it serves its other connections meanwhile).
fn spent_shard_budget(io: &[&str]) {
    let dir = data_dir();
    let config = "max_frame_bytes = 270336
connection_inflight_bytes = 540672
shard_inflight_bytes = 540672
";
    let server = Keeld::start_with_config(dir.path(), config, io);
    server.client().create_topic("tight", 1).unwrap();
    let value = vec![7u8; 64 * 1024];
    let acked: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (server, value) = (&server, &value);
                s.spawn(move || {
                    let client = server.client();
                    let pending: Vec<_> = (0..100)
                        .map(|_| {
                            send_values(&client, "tight", Target::Partition(0), [value]).unwrap()
                        })
                        .collect();
                    let offsets: Vec<u64> = pending
                        .into_iter()
                        .map(|p| p.wait().unwrap().first_offset)
                        .collect();
                    offsets
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut all = acked;
    all.sort();
    assert_eq!(all, (0..800).collect::<Vec<_>>());
}

#[test]
fn a_spent_shard_budget_holds_connections_back_and_lets_them_go() {
    spent_shard_budget(&[]);
}

#[test]
fn many_connections_produce_at_once() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    server.client().create_topic("shared", 1).unwrap();
    let acks: Vec<Vec<u64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let server = &server;
                s.spawn(move || {
                    let client = server.client();
                    let pending: Vec<_> = (0..100)
                        .map(|i| {
                            send_values(
                                &client,
                                "shared",
                                Target::Partition(0),
                                [format!("{w}:{i}")],
                            )
                            .unwrap()
                        })
                        .collect();
                    pending
                        .into_iter()
                        .map(|p| p.wait().unwrap().first_offset)
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = acks.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all, (0..800).collect::<Vec<_>>());
}

#[test]
fn a_thousand_produces_in_flight_on_one_connection_are_each_acknowledged() {
    thousand_in_flight(&[]);
}

#[test]
fn a_thousand_produces_in_flight_on_one_connection_are_each_acknowledged_with_portable_io() {
    thousand_in_flight(&["--portable-io"]);
}

/// Produce requests written to the socket all at once (one write holding 50 frames, together
/// more than a frame may hold, each well within one) are each answered, with consecutive
/// offsets, and stored byte for byte.
#[test]
fn batches_sent_with_one_write_are_each_acknowledged_and_stored() {
    let dir = data_dir();
    let server = Keeld::start_with_config(dir.path(), "max_frame_bytes = 270336\n", &[]);
    let client = server.client();
    client.create_topic("many", 1).unwrap();
    // 50 batches of 1-8 messages of 2 KiB: about 450 KiB.
    let batches: Vec<Vec<String>> = (0..50)
        .map(|b| {
            (0..=b % 7)
                .map(|i| format!("batch {b} message {i} {}", "p".repeat(2048)))
                .collect()
        })
        .collect();
    let mut frames = Vec::new();
    for (id, values) in batches.iter().enumerate() {
        let batch = batch_of(Target::Partition(0), values);
        let produce = Request::Produce {
            topic: "many".into(),
            target: PartitionTarget::Partition(0),
            producer_id: -1,
            base_sequence: -1,
            batch: &batch,
        };
        encode_request(id as u32, &produce, &mut frames);
    }
    assert!(frames.len() > 270_336);
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(&frames).unwrap();
    let mut next = 0;
    for (id, values) in batches.iter().enumerate() {
        let frame = read_frame(&mut conn);
        let (answered, answer) = decode_response(&frame, ApiKey::Produce).unwrap();
        assert_eq!(
            answered, id as u32,
            "answers come in order on one connection"
        );
        let Ok(Response::Produce {
            first_offset,
            last_offset,
            ..
        }) = answer
        else {
            panic!("batch {id}: {answer:?}");
        };
        let n = values.len() as u64;
        assert_eq!((first_offset, last_offset), (next, next + n - 1));
        next += n;
    }
    let mut stored = Vec::new();
    while (stored.len() as u64) < next {
        let offset = stored.len() as u64;
        let fetched = client
            .fetch("many", 0, offset, FetchOptions::default())
            .unwrap();
        for m in fetched.messages(offset).unwrap() {
            stored.push(String::from_utf8(m.value.unwrap().to_vec()).unwrap());
        }
    }
    assert_eq!(stored, batches.concat());
}

/// With room for two requests waiting on the engine, six long polls pipelined on one connection
/// are let in two at a time: each pair waits out its 400 ms at the partition's end before the
/// connection is read again, so the six take at least three waits; every one is answered, and
/// the server goes on serving. (Without the bound, all six would wait at once: one wait.)
fn bounded_waiting_requests(io: &[&str]) {
    const WAIT_MS: u32 = 400;
    let dir = data_dir();
    let server = Keeld::start_with_config(dir.path(), "waiting_requests = 2\n", io);
    let client = server.client();
    client.create_topic("quiet", 1).unwrap();
    let mut requests = Vec::new();
    for id in 0..6 {
        let fetch = Request::Fetch {
            topic: "quiet".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            max_wait_ms: WAIT_MS,
        };
        encode_request(id, &fetch, &mut requests);
    }
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    conn.write_all(&requests).unwrap();
    let mut answered = Vec::new();
    for _ in 0..6 {
        let frame = read_frame(&mut conn);
        let (id, answer) = decode_response(&frame, ApiKey::Fetch).unwrap();
        assert!(answer.is_ok(), "fetch {id}: {answer:?}");
        answered.push(id);
    }
    let took = started.elapsed();
    answered.sort();
    assert_eq!(answered, (0..6).collect::<Vec<_>>());
    let three_waits = Duration::from_millis(3 * u64::from(WAIT_MS));
    assert!(
        took >= three_waits - Duration::from_millis(50),
        "six long polls answered in {took:?} with room for two at a time"
    );
    let ack = produce(&client, "quiet", Target::Partition(0), ["after"]).unwrap();
    assert_eq!(ack.first_offset, 0);
}

#[test]
fn requests_waiting_on_the_engine_are_bounded_per_network_loop() {
    bounded_waiting_requests(&[]);
}

#[test]
fn requests_waiting_on_the_engine_are_bounded_with_portable_io() {
    bounded_waiting_requests(&["--portable-io"]);
}
