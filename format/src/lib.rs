//! The bytes that are both on Keel's disk and on its wire: Apache Kafka's RecordBatch v2
//! ([`batch`]), the CRC-32C that checks batches, flush trailers and metadata files ([`crc`]),
//! and the zig-zag varints of the record format. Pure codecs, no I/O: the engine stores these
//! bytes and the protocols carry them, and neither needs to know the other.
//!
//! The layout is documented byte by byte in `docs/FORMAT.md`.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod compression;
pub mod crc;
mod varint;
