//! Graceful stops (SIGTERM) and restarts: data intact, in-flight produces answered.

use std::process::Command;

use keel_client::{Client, ClientError, ErrorCode, FetchOptions, Target};
use keel_tests::data_dir;
use keel_tests::keeld::{package_bin, values, Keeld};
use keel_tests::raw_produce::{produce, send_values};

#[test]
fn a_restarted_server_has_every_topic_and_message() {
    let dir = data_dir();
    let mut server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    client.create_topic("a", 2).unwrap();
    client.create_topic("b", 1).unwrap();
    for i in 0..200u32 {
        let topic = if i % 3 == 0 { "b" } else { "a" };
        // Values up to 9 KiB: the log spans several 1 MiB segments.
        let value = format!("{i}:{}", "v".repeat((i as usize * 37) % 9000));
        produce(
            &client,
            topic,
            Target::Partition(i % 2 % client.partitions(topic).unwrap()),
            [value],
        )
        .unwrap();
    }
    let before: Vec<_> = [("a", 0), ("a", 1), ("b", 0)]
        .iter()
        .map(|&(t, p)| values(&client, t, p))
        .collect();
    drop(client);
    assert!(server.terminate().success(), "SIGTERM exits 0");

    let server = Keeld::start(dir.path(), &[]);
    let client = server.client();
    let mut topics = client.list_topics().unwrap();
    topics.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        topics
            .iter()
            .map(|t| (t.name.as_str(), t.partitions))
            .collect::<Vec<_>>(),
        [("a", 2), ("b", 1)]
    );
    let after: Vec<_> = [("a", 0), ("a", 1), ("b", 0)]
        .iter()
        .map(|&(t, p)| values(&client, t, p))
        .collect();
    assert_eq!(before, after);
    // Appends continue where the log ended.
    let ack = produce(&client, "b", Target::Partition(0), ["next"]).unwrap();
    assert_eq!(ack.first_offset, before[2].len() as u64);
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = data_dir();
    let server = Keeld::start(dir.path(), &[]);
    let out = Command::new(package_bin("test-keeld"))
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--shards",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("locked by another process"), "{stderr}");
    // The first one is unharmed.
    server.client().create_topic("still-here", 1).unwrap();
}

/// Produces to `topic` with up to `window` requests in flight until the connection ends;
/// returns the acknowledged (ack, value) pairs and how many ended otherwise. Panics on any
/// outcome other than an ack, a ShuttingDown answer, or a lost connection.
fn produce_until_stopped(
    client: &Client,
    topic: &str,
    window: usize,
    acked_count: &std::sync::atomic::AtomicUsize,
) -> (Vec<(keel_client::Ack, String)>, usize) {
    use std::collections::VecDeque;
    use std::sync::atomic::Ordering;
    let mut in_flight = VecDeque::new();
    let mut acked = Vec::new();
    let mut ended = 0;
    let mut stopped = false;
    for i in 0u64.. {
        if !stopped {
            let value = format!("{topic}-{i}-{}", "z".repeat((i % 50) as usize * 20));
            match send_values(
                client,
                topic,
                Target::Partition((i % 2) as u32),
                [value.as_bytes()],
            ) {
                Ok(p) => in_flight.push_back((value, p)),
                Err(_) => stopped = true,
            }
        }
        if in_flight.len() >= window || (stopped && !in_flight.is_empty()) {
            let (value, p) = in_flight.pop_front().unwrap();
            match p.wait() {
                Ok(ack) => {
                    acked.push((ack, value));
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
                Err(ClientError::Server {
                    code: ErrorCode::ShuttingDown,
                    ..
                })
                | Err(ClientError::ConnectionLost(_)) => {
                    ended += 1;
                    stopped = true;
                }
                Err(e) => panic!("unexpected outcome of an in-flight produce: {e}"),
            }
        }
        if stopped && in_flight.is_empty() {
            break;
        }
    }
    (acked, ended)
}

fn sigterm_in_flight(io: &[&str]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = data_dir();
    let mut server = Keeld::start(dir.path(), io);
    let client = server.client();
    client.create_topic("busy", 2).unwrap();
    client.create_topic("quiet", 1).unwrap();
    let waiter = server.client();
    let acked_count = AtomicUsize::new(0);
    let (acked, ended) = std::thread::scope(|s| {
        let producer = s.spawn(|| produce_until_stopped(&client, "busy", 256, &acked_count));
        // A fetch parked at the end of an empty topic is answered when the server stops.
        let parked = s.spawn(|| {
            let options = FetchOptions {
                max_wait: std::time::Duration::from_secs(55),
                ..FetchOptions::default()
            };
            waiter.fetch("quiet", 0, 0, options)
        });
        let deadline = std::time::Instant::now() + keel_tests::keeld::PATIENCE;
        while acked_count.load(Ordering::Relaxed) < 2000 {
            assert!(
                std::time::Instant::now() < deadline,
                "produces are not being acknowledged"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let status = server.terminate();
        assert!(status.success(), "graceful stop exits 0, not {status}");
        let parked = parked
            .join()
            .unwrap()
            .expect("the parked fetch is answered, not dropped");
        assert!(parked.batches.is_empty());
        producer.join().unwrap()
    });
    let server = Keeld::start(dir.path(), io);
    let client = server.client();
    let stored: Vec<_> = (0..2).map(|p| values(&client, "busy", p)).collect();
    for (ack, value) in &acked {
        let log = &stored[ack.partition as usize];
        assert_eq!(
            log.get(ack.first_offset as usize)
                .map(|(o, v)| (*o, v.as_slice())),
            Some((ack.first_offset, value.as_bytes())),
            "acknowledged message missing after a graceful stop"
        );
    }
    eprintln!(
        "{} acknowledged, {ended} refused or unanswered",
        acked.len()
    );
}

#[test]
fn sigterm_answers_what_is_in_flight_and_loses_nothing_acknowledged() {
    sigterm_in_flight(&[]);
}

#[test]
fn sigterm_answers_what_is_in_flight_and_loses_nothing_acknowledged_with_portable_io() {
    sigterm_in_flight(&["--portable-io"]);
}
