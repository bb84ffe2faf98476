//! The producer: send one message per call, from any number of threads or async tasks; the
//! producer batches them per partition, sends the batches while earlier ones are in flight,
//! and numbers them, so that a batch sent again after a lost connection or a refusal for a
//! passing reason is stored once. Each message's [`Delivery`] says where it was stored once it
//! is durable.
//!
//! One thread of the producer's own does its network work (`io.rs`): callers only add to the
//! accumulator (`accumulator.rs`) under a lock, and wake that thread only when it has
//! something to do sooner than it planned.

mod accumulator;
mod answers;
mod delivery;
mod io;
mod link;
mod options;
mod reading;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use delivery::Outcome;
pub use delivery::{Delivery, Stored};
pub use options::{ProducerOptions, IDEMPOTENT_IN_FLIGHT_MAX};

use accumulator::{Message, Rules, TopicQueues};
use io::Io;

use crate::error::{ClientError, Result};
use crate::ServerInfo;

/// A message to send: a value, and optionally a key, headers, and the partition.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The topic it goes to.
    pub topic: &'a str,
    /// Its value.
    pub value: &'a [u8],
    /// Its key: the partition is the key's (Kafka's murmur2 partitioner), unless
    /// [`Record::partition`] is set.
    pub key: Option<&'a [u8]>,
    /// Its headers, as (name, value) pairs.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// The partition, if the application chooses it. Without it or a key, messages stick to
    /// one partition for a batch's worth of bytes, then move to the next.
    pub partition: Option<u32>,
}

impl<'a> Record<'a> {
    /// A message with this value, no key, no headers.
    pub fn new(topic: &'a str, value: &'a [u8]) -> Self {
        Self {
            topic,
            value,
            key: None,
            headers: &[],
            partition: None,
        }
    }

    /// With this key.
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// With these headers.
    pub fn headers(mut self, headers: &'a [(&'a [u8], &'a [u8])]) -> Self {
        self.headers = headers;
        self
    }

    /// To this partition.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// What a producer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Messages handed to [`Producer::send`].
    pub messages: u64,
    /// Produce requests sent, resends included.
    pub requests: u64,
    /// Batches sent again after a refusal for a passing reason or a lost connection.
    pub resends: u64,
    /// Connections opened again after one was lost.
    pub reconnections: u64,
}

/// A topic as the producer knows it.
pub(crate) enum TopicState {
    Known(TopicQueues),
    /// Its partition count is to be asked for (`sent`: the request is out).
    Asking {
        sent: bool,
    },
    /// Asking failed; the first sender to see it takes the error, the next asks again.
    Failed(ClientError),
}

/// What the callers and the network thread share, under one lock.
pub(crate) struct State {
    pub topics: HashMap<String, TopicState>,
    /// Message bytes held, waiting or in flight.
    pub buffered: usize,
    /// No more sends; the network thread sends what is left and stops.
    pub closing: bool,
    /// Flushes under way: batches go without lingering.
    pub hurry: u32,
    /// Why the producer cannot go on, once it cannot.
    pub stopped: Option<ClientError>,
    /// The network thread waits in `poll` until `io_wake_at` (or an answer): a sender wakes
    /// it only for something due sooner.
    pub io_parked: bool,
    pub io_wake_at: Option<Instant>,
    /// Senders waiting for room or a topic's partition count.
    pub senders_waiting: u32,
    pub stats: ProducerStats,
    /// Where each topic's keyless messages go first: spread between producers.
    pub sticky_seed: u32,
    /// The producer id and epoch, when idempotent.
    pub identity: Option<(i64, i16)>,
    /// The connection's writing end and the requests in flight.
    pub sending: link::Sending,
    /// The connection's reading end, when no thread is reading it.
    pub read_slot: reading::ReadSlot,
}

impl State {
    /// The queues of the partitions that may hold batches, in every known topic.
    pub fn queues(&self) -> impl Iterator<Item = &accumulator::PartitionQueue> {
        self.topics
            .values()
            .filter_map(|t| match t {
                TopicState::Known(t) => Some(t),
                _ => None,
            })
            .flat_map(|t| t.active().map(|(_, q)| q))
    }

    /// The queue of `partition` of `topic` and the place in it of the batch in flight as
    /// request `id`.
    pub fn in_flight_batch(
        &mut self,
        topic: &str,
        partition: u32,
        id: u32,
    ) -> Option<(&mut accumulator::PartitionQueue, usize)> {
        let Some(TopicState::Known(t)) = self.topics.get_mut(topic) else {
            return None;
        };
        let q = t.partitions.get_mut(partition as usize)?;
        let at = q.find(id)?;
        Some((q, at))
    }
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Signalled when room is freed, a topic's partition count is known, or the producer
    /// stops.
    pub changed: Condvar,
    pub waker: mio::Waker,
    /// The poll's registry, for whichever thread writes to change the socket's interest.
    pub registry: mio::Registry,
    pub options: ProducerOptions,
    pub rules: Rules,
    pub info: ServerInfo,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        // Every update is finished before the lock is let go; a panic cannot leave half of
        // one behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a delivery can take at most: its delivery timeout, and the answer to the
    /// request in flight then.
    fn delivery_limit(&self) -> Duration {
        self.options.delivery_timeout + self.options.connection.request_timeout * 2
    }
}

/// Kafka's producer for Keel: one message per [`Producer::send`], batched, numbered and
/// retried by the producer, each message's [`Delivery`] finished once it is durable. Share
/// it between threads (`&Producer` sends); await deliveries in any async runtime.
///
/// ```no_run
/// use keel_client::{Producer, Record};
/// # fn main() -> Result<(), keel_client::ClientError> {
/// let producer = Producer::connect("127.0.0.1:7070")?;
/// let deliveries: Vec<_> = (0..1000)
///     .map(|i| producer.send(Record::new("events", format!("event {i}").as_bytes())))
///     .collect::<Result<_, _>>()?;
/// // Sent in a few batches while the first was in flight; each stored exactly once.
/// for d in deliveries {
///     let stored = d.wait()?;
///     println!("partition {} offset {}", stored.partition, stored.offset);
/// }
/// # Ok(()) }
/// ```
pub struct Producer {
    shared: Arc<Shared>,
    io: Option<JoinHandle<()>>,
}

impl Producer {
    /// Connects with the default settings: idempotent, 5 ms linger, 64 KiB batches.
    pub fn connect(addr: impl std::net::ToSocketAddrs + std::fmt::Display) -> Result<Self> {
        Self::connect_with(addr, ProducerOptions::default())
    }

    /// Connects, shakes hands and, when idempotent, gets a producer id from the server; then
    /// starts the producer's network thread.
    pub fn connect_with(
        addr: impl std::net::ToSocketAddrs + std::fmt::Display,
        options: ProducerOptions,
    ) -> Result<Self> {
        options.check().map_err(ClientError::Protocol)?;
        let (io, shared) = Io::connect(&addr, options)?;
        let io = std::thread::Builder::new()
            .name("keel-producer".into())
            .spawn(move || io.run())
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("start the producer's thread: {e}"),
            })?;
        Ok(Self {
            shared,
            io: Some(io),
        })
    }

    /// Adds `record` to its partition's batch and returns at once, unless the producer holds
    /// [`ProducerOptions::buffer_bytes`] already or the topic's partition count is not known
    /// yet: then it waits for either, at most [`ProducerOptions::max_block`].
    ///
    /// Fails at once if the message cannot be sent at all (a batch of its own would exceed
    /// the largest batch the server takes: [`ClientError::MessageTooLarge`]; an unknown topic
    /// or partition) or the producer stopped; everything else that happens
    /// to the message is in its [`Delivery`].
    pub fn send(&self, record: Record<'_>) -> Result<Delivery> {
        let m = Message {
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        let size = m.size();
        let alone = keel_format::batch::HEADER_BYTES + size;
        let limit = io::batch_limit(&self.shared.info);
        if alone > limit {
            return Err(ClientError::MessageTooLarge { size: alone, limit });
        }
        let shared = &*self.shared;
        // One clock read serves the wait's deadline and the batch's time, unless it waits.
        let mut now = Instant::now();
        let deadline = now + shared.options.max_block;
        let mut st = shared.state();
        loop {
            if let Some(e) = &st.stopped {
                return Err(e.clone());
            }
            if st.closing {
                return Err(ClientError::ProducerStopped("it was closed".into()));
            }
            match st.topics.get(record.topic) {
                Some(TopicState::Known(_)) => {
                    // A message larger than the whole buffer still goes, alone.
                    if st.buffered == 0 || st.buffered + size <= shared.options.buffer_bytes {
                        break;
                    }
                }
                Some(TopicState::Failed(_)) => {
                    if let Some(TopicState::Failed(e)) = st.topics.remove(record.topic) {
                        return Err(e);
                    }
                }
                Some(TopicState::Asking { .. }) => {}
                None => {
                    st.topics
                        .insert(record.topic.to_string(), TopicState::Asking { sent: false });
                    st.io_parked = false;
                    let _ = shared.waker.wake();
                }
            }
            now = Instant::now();
            if now >= deadline {
                let what = if matches!(st.topics.get(record.topic), Some(TopicState::Known(_))) {
                    "room in the producer's buffer"
                } else {
                    "the topic's partition count"
                };
                return Err(ClientError::ProducerStopped(format!(
                    "waited {:?} (max_block) for {what}",
                    shared.options.max_block
                )));
            }
            st.senders_waiting += 1;
            let (back, _) = shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner());
            st = back;
            st.senders_waiting -= 1;
            now = Instant::now();
        }
        let (delivery, wake) = {
            let state = &mut *st;
            let Some(TopicState::Known(topic)) = state.topics.get_mut(record.topic) else {
                return Err(ClientError::ProducerStopped(
                    "the topic was forgotten".into(),
                ));
            };
            let rules = &shared.rules;
            let partition = topic.choose(&m, record.partition, rules)?;
            topic.list_active(partition);
            let Some(q) = topic.partitions.get_mut(partition as usize) else {
                return Err(ClientError::Protocol(format!("no partition {partition}")));
            };
            let delivery = q.append(&m, rules, now, || {
                Outcome::new(Arc::downgrade(&self.shared), shared.delivery_limit())
            });
            state.buffered += size;
            state.stats.messages += 1;
            let due = q.next_due(rules);
            let mut wake = state.io_parked
                && due.is_some_and(|due| state.io_wake_at.is_none_or(|planned| due < planned));
            if wake && due.is_some_and(|due| due <= now) && state.sending.open_for_batches() {
                // The batch can go now and the producer's thread is parked: it goes from
                // here, instead of after a wake-up of that thread.
                let sending = &mut state.sending;
                let (sent, resent) = sending.send_partition(
                    &topic.name,
                    partition,
                    q,
                    rules,
                    now,
                    false,
                    state.identity,
                );
                state.stats.requests += sent;
                state.stats.resends += resent;
                // What the socket does not take now, the producer's thread writes when the
                // poll says it has room; a failed write is that thread's to handle.
                wake = match sending.write(&shared.registry) {
                    Ok(()) => false,
                    Err(why) => {
                        sending.broken = Some(why);
                        true
                    }
                };
            }
            if wake {
                // One wake-up is enough: the thread looks at every partition when it wakes.
                state.io_parked = false;
            }
            (delivery, wake)
        };
        drop(st);
        if wake {
            let _ = shared.waker.wake();
        }
        Ok(delivery)
    }

    /// Sends every message handed over so far without lingering, and waits until each is
    /// stored or given up on (see each [`Delivery`]). Fails only if the producer stopped.
    pub fn flush(&self) -> Result<()> {
        let shared = &*self.shared;
        let mut st = shared.state();
        st.hurry += 1;
        let outcomes: Vec<_> = st
            .queues()
            .flat_map(|q| q.batches.iter().map(|b| Arc::clone(&b.outcome)))
            .collect();
        st.io_parked = false;
        drop(st);
        let _ = shared.waker.wake();
        for o in outcomes {
            let _ = Delivery::new(o, 0).wait();
        }
        let mut st = shared.state();
        st.hurry -= 1;
        match &st.stopped {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// What the producer has done so far.
    pub fn stats(&self) -> ProducerStats {
        self.shared.state().stats
    }

    /// The producer id and epoch the server gave, when idempotent.
    pub fn identity(&self) -> Option<(i64, i16)> {
        self.shared.state().identity
    }

    /// What the server said about itself when the producer connected.
    pub fn server_info(&self) -> &ServerInfo {
        &self.shared.info
    }

    /// Sends what is left, waits for it (each message at most its delivery timeout), and
    /// stops the producer's thread. Dropping the producer does the same.
    pub fn close(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        let Some(io) = self.io.take() else {
            return Ok(());
        };
        {
            let mut st = self.shared.state();
            st.closing = true;
            st.io_parked = false;
        }
        self.shared.changed.notify_all();
        let _ = self.shared.waker.wake();
        if io.join().is_err() {
            return Err(ClientError::ProducerStopped(
                "its network thread panicked".into(),
            ));
        }
        match &self.shared.state().stopped {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("server", &self.shared.info.server)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
