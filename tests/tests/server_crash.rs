//! `kill -9` in the middle of a pipelined produce: after a restart, every acknowledged message
//! is there, byte-identical, at the offset it was acknowledged with.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientError, Target};
use keel_tests::keeld::{values, Keeld, PATIENCE};
use keel_tests::{data_dir, Rng};

const PARTITIONS: u32 = 3;

/// The value of message `i` of `round`: recognisable, varied in size.
fn value(round: u32, i: u64) -> Vec<u8> {
    let mut rng = Rng(u64::from(round) << 32 | i | 1);
    let mut v = format!("r{round}-m{i}-").into_bytes();
    let len = rng.below(2000) as usize;
    v.extend(rng.bytes(len));
    v
}

/// Sends batches of 1..=8 messages with up to 64 batches in flight until the connection dies;
/// returns (partition, offset) -> value of every acknowledged message.
fn produce_until_killed(
    client: &Client,
    round: u32,
    acked: &AtomicUsize,
) -> HashMap<(u32, u64), Vec<u8>> {
    let mut rng = Rng(u64::from(round) + 7);
    let mut in_flight = VecDeque::new();
    let mut out = HashMap::new();
    let mut next = 0u64;
    let mut dead = false;
    loop {
        if !dead && in_flight.len() < 64 {
            let n = 1 + rng.below(8);
            let values: Vec<_> = (next..next + n).map(|i| value(round, i)).collect();
            let partition = (next % u64::from(PARTITIONS)) as u32;
            next += n;
            match client.send_values("crash", Target::Partition(partition), &values) {
                Ok(p) => in_flight.push_back((values, p)),
                Err(_) => dead = true,
            }
            continue;
        }
        let Some((values, p)) = in_flight.pop_front() else {
            return out;
        };
        match p.wait() {
            Ok(ack) => {
                for (k, v) in values.into_iter().enumerate() {
                    out.insert((ack.partition, ack.first_offset + k as u64), v);
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(ClientError::ConnectionLost(_)) => dead = true,
            Err(e) => panic!("unexpected produce outcome: {e}"),
        }
    }
}

fn sigkill_mid_pipeline(net: &str) {
    let dir = data_dir();
    let mut all_acked: HashMap<(u32, u64), Vec<u8>> = HashMap::new();
    for round in 0..3u32 {
        let mut server = Keeld::start(dir.path(), &["--net", net]);
        let client = server.client();
        if round == 0 {
            client.create_topic("crash", PARTITIONS).unwrap();
        }
        let acked_batches = AtomicUsize::new(0);
        let acked = std::thread::scope(|s| {
            let producer = s.spawn(|| produce_until_killed(&client, round, &acked_batches));
            // Kill at a point that varies with the round, well inside the stream.
            let target = 300 + 250 * round as usize;
            let deadline = Instant::now() + PATIENCE;
            while acked_batches.load(Ordering::Relaxed) < target {
                assert!(
                    Instant::now() < deadline,
                    "produces are not being acknowledged"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            server.kill();
            producer.join().unwrap()
        });
        assert!(!acked.is_empty());
        all_acked.extend(acked);

        // Restart on the same data and check every message acknowledged in any round so far.
        let server = Keeld::start(dir.path(), &["--net", net]);
        let client = server.client();
        let mut stored = HashMap::new();
        for p in 0..PARTITIONS {
            let log = values(&client, "crash", p);
            // Offsets are dense: nothing torn or doubled shows up as a message.
            for (i, (offset, _)) in log.iter().enumerate() {
                assert_eq!(*offset, i as u64, "partition {p}");
            }
            stored.extend(log.into_iter().map(|(o, v)| ((p, o), v)));
        }
        let mut missing = 0;
        for (at, v) in &all_acked {
            match stored.get(at) {
                Some(s) if s == v => {}
                Some(_) => panic!("message at {at:?} differs from what was acknowledged"),
                None => missing += 1,
            }
        }
        assert_eq!(
            missing, 0,
            "acknowledged messages lost after round {round}'s SIGKILL"
        );
        // Whatever else is stored is a message that was sent (just not acknowledged in time).
        for (at, v) in &stored {
            assert!(v.starts_with(b"r"), "unexpected bytes at {at:?}");
        }
        drop(client);
        drop(server);
    }
}

#[test]
fn sigkill_mid_pipeline_loses_no_acknowledged_message_with_uring_loops() {
    sigkill_mid_pipeline("uring");
}

#[test]
fn sigkill_mid_pipeline_loses_no_acknowledged_message_with_connection_threads() {
    sigkill_mid_pipeline("threads");
}

#[test]
fn sigkill_mid_pipeline_loses_no_acknowledged_message_on_the_shards_rings() {
    sigkill_mid_pipeline("shard");
}
