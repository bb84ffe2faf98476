//! Keel's server, `keeld`: serves the storage engine over Keel's binary protocol
//! (`docs/PROTOCOL.md`).
//!
//! Connections are served by io_uring event loops, one per shard (with the portable I/O
//! backend, by a reader and a writer thread each); requests go to the engine's shards and
//! answers go back as they complete: a produce is answered only once its batch is durable.
//! Per-connection and per-shard byte budgets bound what is in flight; when one is spent the
//! server stops reading that socket.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod answers;
mod budget;
pub mod cli;
pub mod config;
mod conn_limits;
mod connection;

mod frames;
mod handler;
pub mod kafka;
mod log_limit;
pub mod logger;
mod metrics;
mod pending;
mod recv_buf;
mod reply;
mod ring_conns;
mod server;
mod uring_net;

pub use config::{ConfigError, FileConfig, GroupDefaults, ServerConfig};
pub use server::{Server, ServerError, Stopper};
