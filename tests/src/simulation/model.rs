//! What the simulator expects of the engine: every acknowledged append and every record a
//! read or consume showed (the engine shows only durable data), per topic incarnation and
//! partition; every message a group acknowledged durably; and the values it ever sent, to
//! recognise a record the engine made up, misplaced or duplicated.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keel_engine::delivery::MemberId;

/// Bytes before the filler of every value: magic, incarnation, partition, serial.
const HEADER_BYTES: usize = 20;
const MAGIC: &[u8; 4] = b"KSIM";

/// A value the simulator sends: a header naming where it goes, then filler derived from the
/// serial, `len` bytes in all.
pub fn value(incarnation: u32, partition: u32, serial: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(HEADER_BYTES));
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&incarnation.to_be_bytes());
    v.extend_from_slice(&partition.to_be_bytes());
    v.extend_from_slice(&serial.to_be_bytes());
    let mut x = serial | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// Where a value says it was sent: (incarnation, partition, serial).
pub fn origin(value: &[u8]) -> Option<(u32, u32, u64)> {
    if value.len() < HEADER_BYTES || &value[..4] != MAGIC {
        return None;
    }
    let u32_at =
        |i: usize| u32::from_be_bytes([value[i], value[i + 1], value[i + 2], value[i + 3]]);
    let mut serial = [0u8; 8];
    serial.copy_from_slice(&value[12..20]);
    Some((u32_at(4), u32_at(8), u64::from_be_bytes(serial)))
}

/// One consumer group on a topic (each simulated topic has at most one, named `g`).
#[derive(Debug, Default)]
pub struct GroupModel {
    /// Members joined and not known to be gone.
    pub members: Vec<MemberId>,
    /// (partition, offset) acknowledged durably: never to be delivered again to a consume
    /// asked for after the ack's answer (the number of answers taken before it; one asked
    /// for earlier may have been handed the message before the ack took it).
    pub durable: BTreeMap<(u32, u64), u64>,
    /// (partition, offset) acknowledged without waiting for durability: may come again after
    /// a crash, or not.
    pub maybe: BTreeSet<(u32, u64)>,
    /// Delivered and not acknowledged: (partition, offset) → member.
    pub held: BTreeMap<(u32, u64), MemberId>,
}

/// One partition of one topic incarnation.
#[derive(Debug, Default)]
pub struct PartitionModel {
    /// Offset → value of every record acknowledged, read or consumed: durable, so there
    /// for good (unless retention dropped it).
    pub durable: BTreeMap<u64, Vec<u8>>,
}

/// A topic as the simulator made it.
#[derive(Debug)]
pub struct TopicModel {
    /// Told apart from an earlier topic of the same name (deleted since).
    pub incarnation: u32,
    pub partitions: Vec<PartitionModel>,
    pub group: Option<GroupModel>,
}

/// Everything the simulator expects.
#[derive(Debug, Default)]
pub struct Model {
    pub topics: BTreeMap<String, TopicModel>,
    /// Serial → (incarnation, partition, length) of every value sent.
    pub sent: HashMap<u64, (u32, u32, usize)>,
    pub next_serial: u64,
    pub next_incarnation: u32,
    /// Appends acknowledged, over the whole run.
    pub acked_appends: usize,
    /// Messages acknowledged durably by groups, over the whole run.
    pub durable_acks: usize,
}

impl Model {
    /// Notes a new value for (`incarnation`, `partition`) of `len` bytes; returns it.
    pub fn new_value(&mut self, incarnation: u32, partition: u32, len: usize) -> Vec<u8> {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.sent.insert(serial, (incarnation, partition, len));
        value(incarnation, partition, serial, len)
    }

    /// Checks that `v`, found at `offset` of `partition` of `topic`, is a value sent there,
    /// and that `offset` holds what the engine showed there before. With `durable`, notes it
    /// as durable from now on.
    pub fn saw(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        v: &[u8],
        durable: bool,
    ) -> Result<(), String> {
        let Some((inc, p, serial)) = origin(v) else {
            return Err(format!(
                "{topic}/{partition}@{offset}: a value the simulator never sent"
            ));
        };
        let Some(t) = self.topics.get_mut(topic) else {
            return Ok(()); // deleted meanwhile
        };
        let Some(&(sent_inc, sent_p, len)) = self.sent.get(&serial) else {
            return Err(format!(
                "{topic}/{partition}@{offset}: unknown serial {serial}"
            ));
        };
        if inc != t.incarnation || sent_inc != inc || p != partition || sent_p != p {
            return Err(format!(
                "{topic}/{partition}@{offset}: holds a value sent to incarnation {sent_inc} \
                 partition {sent_p} (this is incarnation {})",
                t.incarnation
            ));
        }
        if v != value(inc, p, serial, len).as_slice() {
            return Err(format!(
                "{topic}/{partition}@{offset}: value {serial} is damaged"
            ));
        }
        let Some(part) = t.partitions.get_mut(partition as usize) else {
            return Err(format!("{topic}/{partition}: no such partition"));
        };
        match part.durable.get(&offset) {
            Some(before) if before.as_slice() != v => Err(format!(
                "{topic}/{partition}@{offset}: offset reused: it held serial {:?}, now {serial}",
                origin(before).map(|o| o.2)
            )),
            Some(_) => Ok(()),
            None => {
                if durable {
                    part.durable.insert(offset, v.to_vec());
                }
                Ok(())
            }
        }
    }
}
