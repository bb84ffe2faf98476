//! Server settings: defaults, an optional TOML file, and command-line flags over both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keel_engine::{EngineConfig, FlushSync, IoMode, RecoveryMode};
use keel_protocol::JoinSettings;
use keel_protocol::DEFAULT_MAX_FRAME_BYTES;
use serde::Deserialize;

/// Default data directory, relative to where `keeld` starts.
pub const DEFAULT_DATA_DIR: &str = "./keel-data";
/// Default listen address: loopback only, so a fresh install is not exposed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default Kafka-protocol listen address: Kafka's own port, on loopback.
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
/// What `kafka_listen` says to serve no Kafka clients.
pub const KAFKA_OFF: &str = "off";

/// Everything `keeld` runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the metrics endpoint (`GET /metrics`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the Kafka-protocol listener, if it is on.
    pub kafka_listen: Option<SocketAddr>,
    /// Largest request frame accepted; larger ones close the connection.
    pub max_frame_bytes: u32,
    /// Request and response bytes one connection may have in flight before the server stops
    /// reading from it.
    pub connection_inflight_bytes: usize,
    /// Request bytes all connections together may have in flight on one shard.
    pub shard_inflight_bytes: usize,
    /// How long a connection's answers may make no progress (its client stopped reading)
    /// before the connection is dropped.
    pub write_timeout_ms: u64,
    /// Longest a request frame may take to arrive once its first byte has; a slower one closes
    /// its connection.
    pub frame_read_timeout_ms: u64,
    /// A connection with nothing in flight that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Connections served at once; one beyond is answered `Busy` and closed.
    pub max_connections: usize,
    /// Bytes all connections together may hold for request frames still arriving, beyond the
    /// first 256 KiB each; past it, such connections are not read until others finish.
    pub partial_frame_bytes: usize,
    /// Requests each network loop (or, with the portable I/O backend, the whole server) may
    /// have waiting on the engine at once; past it, its connections are not read until
    /// answers come back.
    pub waiting_requests: usize,
    /// Consumer-group defaults and limits.
    pub groups: GroupDefaults,
    /// The storage engine's settings (data directory, shards, segments, I/O backend).
    pub engine: EngineConfig,
}

/// Consumer-group settings used when a join asks for the default (0), and the table size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupDefaults {
    /// A member that sends nothing for this long leaves.
    pub session_timeout_ms: u32,
    /// A delivery not acknowledged within this is redelivered.
    pub ack_timeout_ms: u32,
    /// Deliveries before a message goes to the dead-letter topic.
    pub max_deliveries: u32,
    /// Deliveries a member may hold unacknowledged.
    pub max_unacked: u32,
}

impl Default for GroupDefaults {
    fn default() -> Self {
        Self {
            session_timeout_ms: 10_000,
            ack_timeout_ms: 30_000,
            max_deliveries: 16,
            max_unacked: 1000,
        }
    }
}

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The config file's contents; every key optional. See `deploy/keeld.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Metrics endpoint address (off when missing).
    pub metrics_listen: Option<SocketAddr>,
    /// Kafka-protocol listen address, or "off".
    pub kafka_listen: Option<String>,
    /// Shard threads (default: one per core).
    pub shards: Option<usize>,
    /// Pin shard threads to cores.
    pub pin_shards: Option<bool>,
    /// Largest request frame, bytes.
    pub max_frame_bytes: Option<u32>,
    /// Per-connection in-flight byte limit.
    pub connection_inflight_bytes: Option<usize>,
    /// Per-shard in-flight byte limit.
    pub shard_inflight_bytes: Option<usize>,
    /// Socket write timeout, milliseconds.
    pub write_timeout_ms: Option<u64>,
    /// Longest a request frame may take to arrive, milliseconds.
    pub frame_read_timeout_ms: Option<u64>,
    /// Idle connection timeout, milliseconds.
    pub idle_timeout_ms: Option<u64>,
    /// Connections served at once.
    pub max_connections: Option<usize>,
    /// Bytes held for partial request frames, server-wide.
    pub partial_frame_bytes: Option<usize>,
    /// Requests waiting on the engine per network loop.
    pub waiting_requests: Option<usize>,
    /// Segment size, bytes.
    pub segment_bytes: Option<u64>,
    /// Largest batch, bytes.
    pub max_batch_bytes: Option<usize>,
    /// Zero segments in the background before use.
    pub zero_segments: Option<bool>,
    /// Bytes of log each partition keeps at least (default: everything); older segments are
    /// dropped and their files reused.
    pub retention_bytes: Option<u64>,
    /// Longest a flush waits for the producers the last one answered, microseconds (default
    /// 200; 0: never).
    pub commit_linger_us: Option<u64>,
    /// Flushes a partition may have in flight at once (default 2, 1..=4): produces that arrive
    /// while a flush syncs go out at once in the next, acknowledged in order.
    pub flushes_in_flight: Option<usize>,
    /// How long a partition remembers an idempotent producer it has not heard from,
    /// milliseconds (Kafka's `producer.id.expiration.ms`; default 86400000, one day; 0: no
    /// expiry by time). A batch such a producer sends again afterwards is stored again.
    pub producer_expiry_ms: Option<u64>,
    /// "uring" (default: io_uring for the disk and the connections) or "portable" (pwrite +
    /// fdatasync on a thread per shard, two threads per connection; slower, for hosts that
    /// allow no io_uring).
    pub io: Option<String>,
    /// How a flush is made durable: "auto" (default: an `RWF_DSYNC` write on ext4 and xfs, a
    /// write + linked fdatasync elsewhere), "fdatasync" (always that), or "dsync-write"
    /// (refused where it is not trusted).
    pub flush_sync: Option<String>,
    /// No longer a setting: refused with the reason (connections are served by io_uring
    /// loops, or by threads with `io = "portable"`).
    pub net: Option<String>,
    /// "strict" (default: refuse to open a corrupt partition) or "repair" (truncate it, losing
    /// the data after the corruption).
    pub recovery: Option<String>,
    /// Whether start-up reads every sealed segment whole, checking each flush, rather than the
    /// summary saved when it was sealed (default false: only each partition's last segment is
    /// read; damage in an older one is reported when it is read).
    pub check_sealed_segments: Option<bool>,
    /// Default consumer session timeout, milliseconds.
    pub session_timeout_ms: Option<u32>,
    /// Default ack timeout of a new group, milliseconds.
    pub ack_timeout_ms: Option<u32>,
    /// Default deliveries before dead-lettering, for a new group.
    pub max_deliveries: Option<u32>,
    /// Default prefetch (unacknowledged deliveries per member).
    pub max_unacked: Option<u32>,
    /// Slots per offset table.
    pub group_slots: Option<usize>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Builds the server configuration from this file's values over the defaults.
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut engine = EngineConfig::new(data_dir);
        if let Some(n) = self.shards {
            engine.shards = n;
        }
        if let Some(pin) = self.pin_shards {
            engine.pin_shards = pin;
        }
        if let Some(n) = self.segment_bytes {
            engine.segment_bytes = n;
        }
        if let Some(n) = self.max_batch_bytes {
            engine.max_batch_bytes = n;
        }
        if let Some(z) = self.zero_segments {
            engine.zero_segments = z;
        }
        engine.retention_bytes = self.retention_bytes;
        if let Some(n) = self.group_slots {
            engine.group_slots = n;
        }
        if let Some(us) = self.commit_linger_us {
            engine.commit_linger = std::time::Duration::from_micros(us);
        }
        if let Some(n) = self.flushes_in_flight {
            engine.flushes_in_flight = n;
        }
        if let Some(ms) = self.producer_expiry_ms {
            engine.producer_expiry = (ms > 0).then(|| std::time::Duration::from_millis(ms));
        }
        engine.io = match self.io.as_deref() {
            None | Some("uring") => IoMode::Uring,
            Some("portable") => IoMode::Portable,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "io must be \"uring\" or \"portable\", not {other:?}"
                )))
            }
        };
        engine.flush_sync = match self.flush_sync.as_deref() {
            None | Some("auto") => FlushSync::Auto,
            Some("fdatasync") => FlushSync::Fdatasync,
            Some("dsync-write") => FlushSync::DsyncWrite,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "flush_sync must be \"auto\", \"fdatasync\" or \"dsync-write\", not {other:?}"
                )))
            }
        };
        engine.recovery = match self.recovery.as_deref() {
            None | Some("strict") => RecoveryMode::Strict,
            Some("repair") => RecoveryMode::Repair,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "recovery must be \"strict\" or \"repair\", not {other:?}"
                )))
            }
        };
        if let Some(check) = self.check_sealed_segments {
            engine.check_sealed_segments = check;
        }
        if let Some(net) = &self.net {
            return Err(ConfigError::Invalid(format!(
                "net = {net:?}: the net setting is gone; connections are served by io_uring \
                 loops (by a thread pair each with io = \"portable\"): remove the line"
            )));
        }
        let listen = match self.listen {
            Some(a) => a,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("default listen address: {e}")))?,
        };
        let kafka_listen = match self.kafka_listen.as_deref().unwrap_or(DEFAULT_KAFKA_LISTEN) {
            KAFKA_OFF => None,
            addr => Some(addr.parse().map_err(|e| {
                ConfigError::Invalid(format!(
                    "kafka_listen = {addr:?}: {e} (an address such as 127.0.0.1:9092, or \"off\")"
                ))
            })?),
        };
        let cfg = ServerConfig {
            listen,
            metrics_listen: self.metrics_listen,
            kafka_listen,
            max_frame_bytes: self.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES),
            connection_inflight_bytes: self.connection_inflight_bytes.unwrap_or(64 << 20),
            shard_inflight_bytes: self.shard_inflight_bytes.unwrap_or(256 << 20),
            write_timeout_ms: self.write_timeout_ms.unwrap_or(30_000),
            frame_read_timeout_ms: self.frame_read_timeout_ms.unwrap_or(30_000),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(600_000),
            max_connections: self.max_connections.unwrap_or(4096),
            partial_frame_bytes: self.partial_frame_bytes.unwrap_or(128 << 20),
            waiting_requests: self.waiting_requests.unwrap_or(16 * 1024),
            groups: {
                let d = GroupDefaults::default();
                GroupDefaults {
                    session_timeout_ms: self.session_timeout_ms.unwrap_or(d.session_timeout_ms),
                    ack_timeout_ms: self.ack_timeout_ms.unwrap_or(d.ack_timeout_ms),
                    max_deliveries: self.max_deliveries.unwrap_or(d.max_deliveries),
                    max_unacked: self.max_unacked.unwrap_or(d.max_unacked),
                }
            },
            engine,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl ServerConfig {
    /// Checks the limits against each other and the engine's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if (self.max_frame_bytes as usize) < self.engine.max_batch_bytes + 4096 {
            return invalid(format!(
                "max_frame_bytes ({}) must exceed max_batch_bytes ({}) by at least 4096, so a batch and its answer fit in a frame",
                self.max_frame_bytes, self.engine.max_batch_bytes
            ));
        }
        // A connection must be able to hold one frame of each kind, or a big request would
        // wait forever for room.
        let frame = self.max_frame_bytes as usize;
        if self.connection_inflight_bytes < 2 * frame || self.shard_inflight_bytes < 2 * frame {
            return invalid(format!(
                "connection_inflight_bytes and shard_inflight_bytes must be at least twice max_frame_bytes ({})",
                2 * frame
            ));
        }
        if self.waiting_requests == 0 {
            return invalid("waiting_requests must be positive".into());
        }
        if self.write_timeout_ms == 0
            || self.frame_read_timeout_ms == 0
            || self.idle_timeout_ms == 0
        {
            return invalid(
                "write_timeout_ms, frame_read_timeout_ms and idle_timeout_ms must be positive"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be positive".into());
        }
        let ports = [
            ("listen", Some(self.listen)),
            ("metrics_listen", self.metrics_listen),
            ("kafka_listen", self.kafka_listen),
        ];
        for (i, (a, addr_a)) in ports.iter().enumerate() {
            for (b, addr_b) in &ports[i + 1..] {
                if let (Some(x), Some(y)) = (addr_a, addr_b) {
                    if x.port() != 0 && x.port() == y.port() {
                        return invalid(format!("{a} and {b} both use port {}", x.port()));
                    }
                }
            }
        }
        let g = &self.groups;
        // The defaults stand in for what a join may ask: the same ranges, 0 excluded.
        let as_asked = JoinSettings {
            max_unacked: g.max_unacked,
            session_timeout_ms: g.session_timeout_ms,
            ack_timeout_ms: g.ack_timeout_ms,
            max_deliveries: g.max_deliveries,
        };
        as_asked.check(false).map_err(ConfigError::Invalid)?;
        self.engine
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_a_fresh_machine() {
        let cfg = FileConfig::default().into_config().unwrap();
        assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(cfg.engine.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(cfg.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn the_shipped_config_file_and_its_commented_keys_parse() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/keeld.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        FileConfig::load(&path).unwrap().into_config().unwrap();
        // Every commented-out `key = value` line is a real key with a valid value too.
        let uncommented: String = text
            .lines()
            .map(
                |l| match l.strip_prefix("# ").and_then(|r| r.split_once(" = ")) {
                    Some((key, _)) if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                        &l[2..]
                    }
                    _ => l,
                },
            )
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = toml::from_str::<FileConfig>(&uncommented)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(
            cfg.metrics_listen.map(|a| a.port()),
            Some(9070),
            "metrics_listen is among them"
        );
    }

    #[test]
    fn file_values_override_defaults_and_unknown_keys_are_refused() {
        let f: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nshards = 3\nio = \"portable\"\ncommit_linger_us = 50\n\
             flush_sync = \"fdatasync\"\nproducer_expiry_ms = 0\nflushes_in_flight = 1\n\
             check_sealed_segments = true\n",
        )
        .unwrap();
        let cfg = f.into_config().unwrap();
        assert_eq!(cfg.engine.flush_sync, FlushSync::Fdatasync);
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(
            cfg.engine.commit_linger,
            std::time::Duration::from_micros(50)
        );
        assert_eq!(cfg.engine.shards, 3);
        assert!(matches!(cfg.engine.io, IoMode::Portable));
        assert_eq!(cfg.engine.producer_expiry, None, "0: no expiry by time");
        assert_eq!(cfg.engine.flushes_in_flight, 1);
        assert!(cfg.engine.check_sealed_segments);
        let expiring: FileConfig = toml::from_str("producer_expiry_ms = 60000\n").unwrap();
        assert_eq!(
            expiring.into_config().unwrap().engine.producer_expiry,
            Some(std::time::Duration::from_secs(60))
        );

        let err = toml::from_str::<FileConfig>("shard = 3\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let bad = FileConfig {
            io: Some("mmap".into()),
            ..FileConfig::default()
        };
        assert!(bad.into_config().is_err());
        let bad = FileConfig {
            flush_sync: Some("never".into()),
            ..FileConfig::default()
        };
        assert!(bad.into_config().is_err());
    }

    #[test]
    fn the_net_key_that_is_gone_is_refused_with_what_serves_connections_now() {
        let f: FileConfig = toml::from_str("net = \"shard\"\n").unwrap();
        let err = f.into_config().unwrap_err().to_string();
        assert!(err.contains("net setting is gone"), "{err}");
        assert!(err.contains("io_uring loops"), "{err}");
    }

    #[test]
    fn a_frame_larger_than_the_in_flight_budget_is_refused() {
        let f = FileConfig {
            max_frame_bytes: Some(64 << 20),
            ..FileConfig::default()
        };
        assert!(matches!(f.into_config(), Err(ConfigError::Invalid(_))));
    }
}
