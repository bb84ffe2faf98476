//! The Kafka-protocol listener: Kafka clients (librdkafka, kafka-python, kcat) talk to the same
//! engine as Keel's own protocol, with Keel's durability: a produce with `acks=1` or
//! `acks=all` is answered only once its batches are durable. `docs/KAFKA.md` lists what is
//! served.
//!
//! Kafka's wire format comes from the `kafka-protocol` crate, generated from Kafka's own
//! message schemas. The server's main thread accepts Kafka connections beside its own; each is
//! served by a thread of its own, one request at a time and
//! in order, as Kafka requires of answers; the requests of one connection that write go to
//! the shards together (every partition of a produce at once), so they share group commits.

mod apis;
mod configs;
mod conn;
mod coordinator;
mod errors;
mod fetch;
mod group_apis;
mod produce;
mod session;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::Engine;

use crate::server::Registry;
pub(crate) use coordinator::Coordinator;

/// What every Kafka connection needs.
pub(crate) struct KafkaContext {
    /// The engine, shared with the native protocol's connections.
    pub engine: Arc<Engine>,
    /// The classic consumer groups' membership.
    pub coordinator: Arc<Coordinator>,
    /// Connections open, of both protocols, and how shutdown waits for them.
    pub registry: Arc<Registry>,
    /// Largest request accepted.
    pub max_frame_bytes: u32,
    /// Request bytes one connection may have read and not yet answered; past it the reader
    /// waits, and the client's sends slow down.
    pub connection_inflight_bytes: usize,
    /// Connections served at once, both protocols together.
    pub max_connections: usize,
    /// A connection sending nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a request may take to arrive once it has begun.
    pub frame_read_timeout: Duration,
    /// How long an answer may take to write.
    pub write_timeout: Duration,
}

/// Decodes a Kafka request frame (without its 4-byte size) as the listener does, and says why
/// it cannot be served; for the fuzzer (`server/fuzz`), which checks that no input panics.
pub fn decode_request(frame: &[u8]) -> Result<(), String> {
    conn::decode(bytes::Bytes::copy_from_slice(frame))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Serves `stream`, a new Kafka connection (accepted by the server's main thread beside the
/// native protocol's), on a thread of its own; refuses it past `max_connections`.
pub(crate) fn serve(stream: TcpStream, ctx: &Arc<KafkaContext>) {
    if ctx.registry.open_connections() >= ctx.max_connections {
        log::warn!(
            "refused a Kafka connection: {} connections open (max_connections)",
            ctx.max_connections
        );
        return;
    }
    if let Err(e) = conn::spawn(stream, ctx) {
        log::error!("cannot serve a new Kafka connection: {e}");
    }
}
