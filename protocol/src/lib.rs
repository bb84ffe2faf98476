//! Keel's binary protocol: length-prefixed, little-endian, versioned frames, and pure codecs
//! for them (no I/O). Every frame is documented byte by byte in `docs/PROTOCOL.md`.
//!
//! Decoding never panics, never reads past its input, and never allocates more than the input
//! could justify; a frame's size is checked against a limit before anything is buffered
//! ([`frame_len`]). Requests that fail to decode report whether their header was readable, so
//! the server can answer with an error instead of dropping the connection.
//!
//! ```
//! use keel_protocol::{decode_request, encode_request, frame_len, Request, DEFAULT_MAX_FRAME_BYTES, REQUEST_HEADER_BYTES};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut wire = Vec::new();
//! encode_request(7, &Request::CreateTopic { topic: "orders".into(), partitions: 4 }, &mut wire);
//! // A stream reader asks how long the frame at its head is, once the size prefix is in.
//! let Some(len) = frame_len(&wire, REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES)? else {
//!     return Ok(()); // need more bytes
//! };
//! let (header, request) = decode_request(&wire[..len])?;
//! assert_eq!(header.correlation_id, 7);
//! assert_eq!(request, Request::CreateTopic { topic: "orders".into(), partitions: 4 });
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod frame;
mod frame_buffer;
mod partitioner;
mod request;
mod response;
mod wire;

pub use api::{ApiKey, ErrorCode};
pub use frame::{
    frame_len, DecodeError, DEFAULT_MAX_FRAME_BYTES, REQUEST_HEADER_BYTES, RESPONSE_HEADER_BYTES,
    SIZE_PREFIX_BYTES,
};
pub use frame_buffer::{read_room, FrameBuffer};
pub use partitioner::partition_for_key;
pub use request::{
    decode_request, encode_produce_request, encode_request, BadRequest, JoinSettings, OffsetSpan,
    PartitionTarget, Request, RequestHeader, StartAt, MAX_NACK_DELAY_MS,
};
pub use response::{
    decode_response, encode_error, encode_response, response_correlation_id, ApiVersions,
    ConsumedPartition, DeliveryInfo, ErrorReply, Response, TopicInfo,
};
pub use wire::MAX_STRING_BYTES;
