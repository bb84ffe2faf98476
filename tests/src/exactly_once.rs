//! The producer's promise, checked against the log: every message it was told is stored is in
//! its partition exactly once, at the offset its delivery named, in the order it was sent.

use keel_client::{Client, Delivery};

use crate::keeld::values;

/// A message sent: its partition, its value, and what the producer said of it.
pub struct Sent {
    /// The partition it was sent to.
    pub partition: u32,
    /// Its value, unique within the run.
    pub value: Vec<u8>,
    /// Its delivery.
    pub delivery: Delivery,
}

/// Waits for every delivery (each must succeed) and checks partitions `0..partitions` of
/// `topic` hold exactly the messages sent to them, once each, in sending order, each at its
/// delivery's offset. Returns how many messages it checked.
pub fn check(client: &Client, topic: &str, partitions: u32, sent: Vec<Sent>) -> usize {
    let logs: Vec<Vec<(u64, Vec<u8>)>> =
        (0..partitions).map(|p| values(client, topic, p)).collect();
    let mut stored: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions as usize];
    let count = sent.len();
    for (i, s) in sent.into_iter().enumerate() {
        let at = s
            .delivery
            .wait()
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(at.partition, s.partition, "message {i}");
        let log = &logs[s.partition as usize];
        let found = log
            .iter()
            .find(|(o, _)| *o == at.offset)
            .map(|(_, v)| v.as_slice());
        assert_eq!(
            found,
            Some(&s.value[..]),
            "message {i}: its delivery's offset"
        );
        stored[s.partition as usize].push(s.value);
    }
    for (p, want) in stored.iter().enumerate() {
        let got: Vec<&Vec<u8>> = logs[p].iter().map(|(_, v)| v).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "partition {p}: none twice, none lost"
        );
        assert!(
            got.iter().zip(want).all(|(g, w)| *g == w),
            "partition {p}: in order"
        );
    }
    count
}
