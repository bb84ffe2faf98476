//! Frames: a u32 size prefix, a header, a body. See `docs/PROTOCOL.md`.

/// Bytes of the size prefix.
pub const SIZE_PREFIX_BYTES: usize = 4;
/// Bytes of a request header after the size: api key u16, api version u16, correlation id u32.
pub const REQUEST_HEADER_BYTES: usize = 8;
/// Bytes of a response header after the size: correlation id u32, error code u16.
pub const RESPONSE_HEADER_BYTES: usize = 6;
/// Default largest frame (size field value) a peer accepts.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame ends before the named field does.
    #[error("frame truncated in {0}")]
    Truncated(&'static str),
    /// The named field holds an impossible value.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A string longer than the protocol allows.
    #[error("{what} of {len} bytes is longer than the {max} bytes a string may hold", max = crate::wire::MAX_STRING_BYTES)]
    StringTooLong {
        /// The field.
        what: &'static str,
        /// Its declared length.
        len: usize,
    },
    /// Bytes left over after the body.
    #[error("{0} bytes after the end of the body")]
    TrailingBytes(usize),
    /// The size prefix exceeds the limit (or is smaller than a header).
    #[error("frame of {size} bytes is outside the allowed {min}..={max}")]
    FrameSize {
        /// Declared size.
        size: u32,
        /// Smallest valid size (a header).
        min: u32,
        /// Configured maximum.
        max: u32,
    },
    /// An api key this server does not know.
    #[error("unknown api key {0}")]
    UnknownApi(u16),
    /// A version of a known api that is not supported.
    #[error("api key {api} has no version {version}")]
    UnsupportedVersion {
        /// The api.
        api: u16,
        /// The version asked for.
        version: u16,
    },
}

/// Looks at the head of a stream buffer: `Ok(Some(n))` when a whole frame of `n` bytes
/// (prefix included) is there, `Ok(None)` when more bytes are needed, an error when the size
/// prefix is out of bounds (the connection cannot be resynchronised and should be closed).
pub fn frame_len(
    buf: &[u8],
    min_size: usize,
    max_frame_bytes: u32,
) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..SIZE_PREFIX_BYTES) else {
        return Ok(None);
    };
    let size = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if size > max_frame_bytes || (size as usize) < min_size {
        return Err(DecodeError::FrameSize {
            size,
            min: min_size as u32,
            max: max_frame_bytes,
        });
    }
    let total = SIZE_PREFIX_BYTES + size as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Starts a frame in `out`: reserves the size prefix; returns where it is for [`end_frame`].
pub(crate) fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; SIZE_PREFIX_BYTES]);
    at
}

/// Fills in the size prefix reserved by [`begin_frame`].
pub(crate) fn end_frame(out: &mut [u8], at: usize) {
    let size = (out.len() - at - SIZE_PREFIX_BYTES) as u32;
    out[at..at + SIZE_PREFIX_BYTES].copy_from_slice(&size.to_le_bytes());
}
