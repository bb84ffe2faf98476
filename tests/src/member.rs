//! Consumer groups driven through a `keel_client::Client` against a real keeld: joins, drains
//! and the set of messages each brought.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use keel_client::{spans_of, Client, Delivered, JoinSettings, Membership, StartAt, Target};

use crate::keeld::PATIENCE;
use crate::raw_produce;

/// A message: (partition, offset).
pub type Key = (u32, u64);

/// Joins group "g" on `topic` from the earliest offset.
pub fn join(client: &Client, topic: &str, settings: JoinSettings) -> Membership {
    client
        .join_group("g", topic, StartAt::Earliest, settings)
        .unwrap()
}

/// Consumes until `want` messages came (or, with `want` 0, until a wait of `quiet` brings
/// nothing), acknowledging each durably when `ack`.
pub fn drain(
    client: &Client,
    m: &Membership,
    want: usize,
    quiet: Duration,
    ack: bool,
) -> Vec<Delivered> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while want == 0 || got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} messages came",
            got.len()
        );
        let batch = client.consume(m, 100, quiet).unwrap();
        if batch.is_empty() && want == 0 {
            break;
        }
        if ack && !batch.is_empty() {
            client.ack(m, &spans_of(&batch), true).unwrap();
        }
        got.extend(batch);
    }
    got
}

/// The messages delivered.
pub fn keys(d: &[Delivered]) -> BTreeSet<Key> {
    d.iter().map(|d| (d.partition, d.message.offset)).collect()
}

/// Produces `n` messages round-robin over the topic's partitions, one request each; returns
/// key -> value.
pub fn produce(client: &Client, topic: &str, partitions: u32, n: u64) -> HashMap<Key, Vec<u8>> {
    let mut sent = HashMap::new();
    for i in 0..n {
        let p = (i % u64::from(partitions)) as u32;
        let value = format!("{topic}-{i}").into_bytes();
        let ack = raw_produce::produce(client, topic, Target::Partition(p), [&value]).unwrap();
        sent.insert((p, ack.first_offset), value);
    }
    sent
}
