//! The peers under the workloads Keel is measured with, driven over their own protocols:
//! RabbitMQ (durable quorum and classic queues, persistent messages, publisher confirms, manual
//! consumer acks) and NATS JetStream (a file-storage stream, publish acks, explicit consumer
//! acks). The drivers are built only with the `peers` feature (their crates are heavy); without
//! it every peer is reported as not measured, with the reason.

use crate::figures::Figures;

/// Where the peers listen.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerAddrs {
    /// RabbitMQ's AMQP address.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub rabbitmq: String,
    /// NATS's address.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
}

/// A peer configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    RabbitQuorum,
    RabbitClassic,
    NatsJetStream,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::RabbitQuorum, Peer::RabbitClassic, Peer::NatsJetStream];

    pub fn name(self) -> &'static str {
        match self {
            Peer::RabbitQuorum => "RabbitMQ quorum queue",
            Peer::RabbitClassic => "RabbitMQ classic queue",
            Peer::NatsJetStream => "NATS JetStream",
        }
    }

    /// What the peer promises when it acknowledges a publish, for the report.
    pub fn promise(self) -> &'static str {
        match self {
            Peer::RabbitQuorum => "confirm after the Raft log is fsynced (one node)",
            Peer::RabbitClassic => "confirm after the message store is fsynced (batched)",
            Peer::NatsJetStream => {
                "ack once written, before fsync (sync_interval defaults to 2 min): promises less than Keel"
            }
        }
    }
}

/// Publishers, each with its own connection, each keeping `window` unconfirmed messages.
#[derive(Debug, Clone)]
pub struct PeerLoad {
    pub publishers: usize,
    pub window: usize,
    pub message_bytes: usize,
    pub seconds: f64,
}

/// A backlog of `messages` filled, then drained by `consumers` acknowledging each message.
#[derive(Debug, Clone)]
pub struct PeerBacklog {
    pub messages: u64,
    pub message_bytes: usize,
    pub consumers: usize,
}

#[cfg(feature = "peers")]
mod drivers;

/// Publishes for `load.seconds` and reports confirmed messages and publish→confirm latency.
pub fn produce(peer: Peer, addrs: &PeerAddrs, load: &PeerLoad) -> Result<Figures, String> {
    #[cfg(feature = "peers")]
    {
        drivers::produce(peer, addrs, load)
    }
    #[cfg(not(feature = "peers"))]
    {
        let _ = (peer, addrs, load);
        Err(NOT_BUILT.into())
    }
}

/// Fills a backlog, then drains it with per-message acks; reports the drain.
pub fn drain(peer: Peer, addrs: &PeerAddrs, backlog: &PeerBacklog) -> Result<Figures, String> {
    #[cfg(feature = "peers")]
    {
        drivers::drain(peer, addrs, backlog)
    }
    #[cfg(not(feature = "peers"))]
    {
        let _ = (peer, addrs, backlog);
        Err(NOT_BUILT.into())
    }
}

#[cfg(not(feature = "peers"))]
const NOT_BUILT: &str = "keel-bench was built without the `peers` feature \
     (cargo build --release -p keel-bench --features peers)";

/// `keel-bench peers`: every peer under the produce workload and the drain, as a table.
pub fn run(addrs: &PeerAddrs, load: &PeerLoad, backlog: &PeerBacklog) -> Result<(), String> {
    println!(
        "{} publishers x {} unconfirmed messages of {} B, {} s; a backlog of {} messages of {} B drained by {} consumers acking each message\n",
        load.publishers,
        load.window,
        load.message_bytes,
        load.seconds,
        backlog.messages,
        backlog.message_bytes,
        backlog.consumers
    );
    println!("| peer | publish msg/s | publish→confirm p50 / p90 / p99 / p99.9 / max | drain msg/s |\n|---|---|---|---|");
    for peer in Peer::ALL {
        eprintln!("{}: publishing for {} s", peer.name(), load.seconds);
        let produced = produce(peer, addrs, load);
        eprintln!("{}: draining {} messages", peer.name(), backlog.messages);
        let drained = drain(peer, addrs, backlog);
        let cell = |r: &Result<Figures, String>, f: &dyn Fn(&Figures) -> String| match r {
            Ok(x) => f(x),
            Err(e) => format!("not measured: {e}"),
        };
        println!(
            "| {} | {} | {} | {} |",
            peer.name(),
            cell(&produced, &|f| format!("{:.0}", f.msgs_per_s)),
            cell(&produced, &|f| f.latency_us.cells()),
            cell(&drained, &|f| format!("{:.0}", f.msgs_per_s)),
        );
    }
    Ok(())
}
