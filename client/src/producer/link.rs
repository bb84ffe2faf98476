//! The sending half of the producer's connection and what is in flight on it, kept under the
//! producer's lock, so that whichever thread holds the lock can send: the producer's own
//! thread (after answers, timers, a flush), or a sender whose message can go at once — nothing
//! in flight to its partition and the producer's thread parked. A lone message then leaves
//! from the thread that sent it, without waking another one first.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::sync::Arc;
use std::time::Instant;

use keel_protocol::{encode_produce_request, encode_request, PartitionTarget, Request};
use mio::{Interest, Registry, Token};

use super::accumulator::{PartitionQueue, Rules, Stage};
use super::{State, TopicState};

/// The poll's token for the connection.
pub(crate) const SOCKET: Token = Token(1);

/// What a request in flight asked.
pub(crate) enum Asked {
    Produce {
        topic: Arc<str>,
        partition: u32,
        sent: Instant,
    },
    Metadata {
        topic: String,
        sent: Instant,
    },
    InitProducer {
        sent: Instant,
    },
}

impl Asked {
    pub fn sent(&self) -> Instant {
        match self {
            Asked::Produce { sent, .. }
            | Asked::Metadata { sent, .. }
            | Asked::InitProducer { sent } => *sent,
        }
    }
}

/// The producer's epoch is to change (after a batch left a gap in a partition's sequences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bump {
    /// Once nothing whose outcome is unknown is in flight or waiting.
    Due,
    /// The request is out.
    Asked,
}

/// The connection's writing end: the socket as registered with the producer's poll (the
/// reading end is a clone of it, `reading.rs`).
pub(crate) struct Link {
    stream: mio::net::TcpStream,
    /// Requests encoded and not yet written in full.
    output: Vec<u8>,
    written: usize,
    /// The socket took only part of `output`: the poll is to say when it has room.
    want_write: bool,
    /// A sender reads the answers: the poll is not to say when they arrive.
    reading_elsewhere: bool,
    /// What the socket is registered for in the producer's poll, if anything.
    registered: Option<Interest>,
}

impl Link {
    /// The writing end of `stream`, registered with `registry` for readability.
    pub fn new(mut stream: mio::net::TcpStream, registry: &Registry) -> Result<Self, String> {
        registry
            .register(&mut stream, SOCKET, Interest::READABLE)
            .map_err(|e| format!("poll the socket: {e}"))?;
        Ok(Self {
            stream,
            output: Vec::new(),
            written: 0,
            want_write: false,
            reading_elsewhere: false,
            registered: Some(Interest::READABLE),
        })
    }

    /// Takes the socket out of the producer's poll for good and shuts it down: the reading
    /// end, wherever it is, sees the end.
    pub fn close(mut self, registry: &Registry) {
        if self.registered.is_some() {
            let _ = registry.deregister(&mut self.stream);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// A sender reads the answers from now on (`true`), or no longer (`false`).
    pub fn read_elsewhere(&mut self, elsewhere: bool, registry: &Registry) -> Result<(), String> {
        self.reading_elsewhere = elsewhere;
        self.register(registry)
    }

    /// Registers the socket for what the producer's thread is to be told of now.
    fn register(&mut self, registry: &Registry) -> Result<(), String> {
        let wanted = match (!self.reading_elsewhere, self.want_write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        if wanted == self.registered {
            return Ok(());
        }
        let done = match (self.registered, wanted) {
            (Some(_), Some(i)) => registry.reregister(&mut self.stream, SOCKET, i),
            (None, Some(i)) => registry.register(&mut self.stream, SOCKET, i),
            (Some(_), None) => registry.deregister(&mut self.stream),
            (None, None) => Ok(()),
        };
        done.map_err(|e| format!("poll the socket: {e}"))?;
        self.registered = wanted;
        Ok(())
    }
}

/// Everything about sending, under the producer's lock.
pub(crate) struct Sending {
    /// The connection, while there is one.
    pub link: Option<Link>,
    pub asked: HashMap<u32, Asked>,
    next_id: u32,
    pub bump: Option<Bump>,
    /// Why a write made by a sender failed, for the producer's thread to give the connection
    /// up (only it reconnects).
    pub broken: Option<String>,
}

impl Sending {
    /// Sending on `link`, whose ids up to `last_id` were used (the handshake's and the
    /// producer id's).
    pub fn new(link: Link, last_id: u32) -> Self {
        Self {
            link: Some(link),
            asked: HashMap::new(),
            next_id: last_id + 1,
            bump: None,
            broken: None,
        }
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        // Id 0 is the server's own (an unasked refusal): never a request's.
        self.next_id = id.checked_add(1).unwrap_or(1);
        id
    }

    /// Connected, and nothing stands in the way of sending a new batch.
    pub fn open_for_batches(&self) -> bool {
        self.link.is_some() && self.bump.is_none() && self.broken.is_none()
    }

    /// Asks for the partition counts of the topics that want one.
    pub fn ask_partition_counts(&mut self, topics: &mut HashMap<String, TopicState>, now: Instant) {
        for (name, t) in topics.iter_mut() {
            if !matches!(t, TopicState::Asking { sent: false }) || self.link.is_none() {
                continue;
            }
            let id = self.take_id();
            let Some(link) = self.link.as_mut() else {
                return;
            };
            let asked = Request::Metadata {
                topic: name.clone(),
            };
            encode_request(id, &asked, &mut link.output);
            self.asked.insert(
                id,
                Asked::Metadata {
                    topic: name.clone(),
                    sent: now,
                },
            );
            *t = TopicState::Asking { sent: true };
        }
    }

    /// Asks for the next epoch once every batch whose outcome is unknown has been answered
    /// (`unknown_waiting`: a batch sent before a lost connection still waits to go again).
    pub fn bump_epoch_when_due(
        &mut self,
        identity: Option<(i64, i16)>,
        unknown_waiting: bool,
        now: Instant,
    ) {
        let in_flight = self
            .asked
            .values()
            .any(|a| matches!(a, Asked::Produce { .. }));
        if self.bump != Some(Bump::Due) || in_flight || unknown_waiting {
            return;
        }
        let Some(identity) = identity else { return };
        let id = self.take_id();
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let asked = Request::InitProducer {
            producer_id: identity.0,
            epoch: identity.1,
        };
        encode_request(id, &asked, &mut link.output);
        self.asked.insert(id, Asked::InitProducer { sent: now });
        self.bump = Some(Bump::Asked);
    }

    /// Encodes every batch of partition `p` of `topic` that may go now; returns how many,
    /// and how many of them were sent before.
    #[allow(clippy::too_many_arguments)]
    pub fn send_partition(
        &mut self,
        topic: &Arc<str>,
        p: u32,
        q: &mut PartitionQueue,
        rules: &Rules,
        now: Instant,
        hurry: bool,
        identity: Option<(i64, i16)>,
    ) -> (u64, u64) {
        let (mut sent, mut resent) = (0, 0);
        while let Some(at) = q.next_waiting() {
            if self.link.is_none() || !q.sendable(at, rules, now, hurry) {
                break;
            }
            // While the epoch changes only what may have been stored goes: it keeps its
            // number, which the server may know.
            if self.bump.is_some() && !q.batches[at].maybe_stored {
                break;
            }
            let (producer_id, sequence) = match identity {
                Some((producer_id, epoch)) => {
                    let sequence = q.number(at).unwrap_or(0);
                    q.batches[at]
                        .builder
                        .set_producer(producer_id, epoch, sequence);
                    (producer_id, sequence)
                }
                None => (-1, -1),
            };
            let id = self.take_id();
            let Some(link) = self.link.as_mut() else {
                break;
            };
            let b = &mut q.batches[at];
            encode_produce_request(
                id,
                topic,
                &PartitionTarget::Partition(p),
                producer_id,
                sequence,
                &b.builder,
                &mut link.output,
            );
            b.stage = Stage::InFlight(id);
            b.closed = true;
            b.retry_at = None;
            b.sends += 1;
            sent += 1;
            if b.sends > 1 {
                resent += 1;
            }
            self.asked.insert(
                id,
                Asked::Produce {
                    topic: Arc::clone(topic),
                    partition: p,
                    sent: now,
                },
            );
        }
        (sent, resent)
    }

    /// Writes what is encoded, as far as the socket takes it; the rest is written when the
    /// poll says the socket has room.
    pub fn write(&mut self, registry: &Registry) -> Result<(), String> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        while link.written < link.output.len() {
            match link.stream.write(&link.output[link.written..]) {
                Ok(0) => return Err("the connection closed while writing".into()),
                Ok(n) => link.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("send failed: {e}")),
            }
        }
        let unwritten = link.written < link.output.len();
        if !unwritten {
            link.output.clear();
            link.written = 0;
        }
        if unwritten != link.want_write {
            link.want_write = unwritten;
            link.register(registry)?;
        }
        Ok(())
    }
}

/// Encodes every batch that may go now, on every partition.
pub(crate) fn send_due(st: &mut State, rules: &Rules, now: Instant) {
    let hurry = st.hurry > 0 || st.closing;
    let (mut sent, mut resent) = (0, 0);
    let identity = st.identity;
    let sending = &mut st.sending;
    for t in st.topics.values_mut() {
        let TopicState::Known(t) = t else { continue };
        let name = Arc::clone(&t.name);
        t.each_active(|p, q| {
            let (s, r) = sending.send_partition(&name, p, q, rules, now, hurry, identity);
            sent += s;
            resent += r;
        });
        t.prune();
    }
    st.stats.requests += sent;
    st.stats.resends += resent;
}
