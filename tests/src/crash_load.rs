//! A produce load for crash tests: pipelined batches until the server dies, keeping what was
//! acknowledged, and the checks a restarted server must pass.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientError, Target};

use crate::keeld::{values, Keeld, PATIENCE};
use crate::raw_produce::send_values;
use crate::Rng;

/// Messages acknowledged so far: (partition, offset) -> value.
pub type Acked = HashMap<(u32, u64), Vec<u8>>;

/// The value of message `i` of `round`: recognisable (it starts with `r`), varied in size.
pub fn value(round: u32, i: u64) -> Vec<u8> {
    let mut rng = Rng(u64::from(round) << 32 | i | 1);
    let mut v = format!("r{round}-m{i}-").into_bytes();
    let len = rng.below(2000) as usize;
    v.extend(rng.bytes(len));
    v
}

/// Sends batches of 1..=8 messages to `topic`'s `partitions`, round robin, with up to 64
/// batches in flight, until the connection dies; counts acknowledged batches in `acked` and
/// returns every acknowledged message.
pub fn produce_until_killed(
    client: &Client,
    topic: &str,
    partitions: u32,
    round: u32,
    acked: &AtomicUsize,
) -> Acked {
    let mut rng = Rng(u64::from(round) + 7);
    let mut in_flight = VecDeque::new();
    let mut out = HashMap::new();
    let mut next = 0u64;
    let mut dead = false;
    loop {
        if !dead && in_flight.len() < 64 {
            let n = 1 + rng.below(8);
            let values: Vec<_> = (next..next + n).map(|i| value(round, i)).collect();
            let partition = (next % u64::from(partitions)) as u32;
            next += n;
            match send_values(client, topic, Target::Partition(partition), &values) {
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

/// Streams [`produce_until_killed`] into `server` and kills it with `SIGKILL` once
/// `kill_after` batches were acknowledged; returns every acknowledged message.
pub fn produce_then_kill(
    server: &mut Keeld,
    topic: &str,
    partitions: u32,
    round: u32,
    kill_after: usize,
) -> Acked {
    let client = server.client();
    let acked_batches = AtomicUsize::new(0);
    let acked = std::thread::scope(|s| {
        let producer =
            s.spawn(|| produce_until_killed(&client, topic, partitions, round, &acked_batches));
        let deadline = Instant::now() + PATIENCE;
        while acked_batches.load(Ordering::Relaxed) < kill_after {
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
    acked
}

/// Checks a restarted server against everything acknowledged before: each message present,
/// byte-identical, at its offset; offsets dense; nothing stored that was never sent; its log
/// says where it recovered each partition's log to. Returns how many acknowledged messages are
/// missing (the caller asserts none are, naming the round).
pub fn missing_after_restart(server: &Keeld, topic: &str, partitions: u32, acked: &Acked) -> usize {
    let client = server.client();
    let mut stored = HashMap::new();
    for p in 0..partitions {
        let log = values(&client, topic, p);
        let recovered = format!("{topic}/{p}: recovered offsets 0..{}", log.len());
        assert!(
            server.log_shows(&recovered),
            "no \"{recovered}\" in keeld's log:\n{}",
            server.stderr()
        );
        // Offsets are dense: nothing torn or doubled shows up as a message.
        for (i, (offset, _)) in log.iter().enumerate() {
            assert_eq!(*offset, i as u64, "partition {p}");
        }
        stored.extend(log.into_iter().map(|(o, v)| ((p, o), v)));
    }
    let mut missing = 0;
    for (at, v) in acked {
        match stored.get(at) {
            Some(s) if s == v => {}
            Some(_) => panic!("message at {at:?} differs from what was acknowledged"),
            None => missing += 1,
        }
    }
    // Whatever else is stored is a message that was sent (just not acknowledged in time).
    for (at, v) in &stored {
        assert!(v.starts_with(b"r"), "unexpected bytes at {at:?}");
    }
    missing
}
