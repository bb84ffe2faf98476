//! The record compression Kafka producers use: a compressed RecordBatch v2 keeps its header
//! as is and compresses the records after it, with the codec named in the attributes' low
//! three bits. Keel stores such batches as they came and decompresses them where it must read
//! single records (checking a produce, delivering to its own consumers, copying a dead
//! letter).
//!
//! The framings are Kafka's: gzip streams; snappy in xerial-snappy's blocks (what Kafka's own
//! client writes) or as one raw snappy block; LZ4 frames; zstd frames. Decompression stops at
//! [`DECOMPRESSED_BYTES_MAX`], so a small batch cannot make the server hold gigabytes.

use std::io::Read;

/// Most bytes a batch's records may take once decompressed.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

/// xerial-snappy's stream header: magic, then version and compatible version (both 1).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// A batch's record compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// LZ4 frames.
    Lz4,
    /// zstd.
    Zstd,
}

impl Codec {
    /// The codec of attribute bits `bits` (the low three); `None` for the undefined 5 to 7.
    pub fn from_bits(bits: i16) -> Option<Self> {
        match bits & 0x07 {
            0 => Some(Codec::None),
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Snappy),
            3 => Some(Codec::Lz4),
            4 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Its attribute bits.
    pub fn bits(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    /// Its name, as Kafka's configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// Why compressed records could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// The codec's stream is damaged.
    #[error("{codec} data does not decompress: {reason}")]
    Damaged {
        /// The codec.
        codec: &'static str,
        /// What its decoder said.
        reason: String,
    },
    /// More than [`DECOMPRESSED_BYTES_MAX`] once decompressed.
    #[error("{codec} data decompresses to more than {max} bytes")]
    TooLarge {
        /// The codec.
        codec: &'static str,
        /// The limit.
        max: usize,
    },
}

/// Decompresses `input`, compressed with `codec`.
pub fn decompress(codec: Codec, input: &[u8]) -> Result<Vec<u8>, DecompressError> {
    let damaged = |reason: String| DecompressError::Damaged {
        codec: codec.name(),
        reason,
    };
    match codec {
        Codec::None => Ok(input.to_vec()),
        Codec::Gzip => read_bounded(codec, flate2::read::GzDecoder::new(input)),
        Codec::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input)),
        Codec::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(input).map_err(|e| damaged(e.to_string()))?;
            read_bounded(codec, decoder)
        }
        Codec::Snappy => {
            let mut out = Vec::new();
            if input.starts_with(XERIAL_MAGIC) {
                // Blocks after the header: a big-endian length, then a raw snappy block.
                let mut rest = input.get(XERIAL_HEADER_BYTES..).unwrap_or_default();
                while !rest.is_empty() {
                    let (len, after) = rest
                        .split_first_chunk::<4>()
                        .ok_or_else(|| damaged("a block length is cut short".into()))?;
                    let len = u32::from_be_bytes(*len) as usize;
                    let block = after
                        .get(..len)
                        .ok_or_else(|| damaged("a block is cut short".into()))?;
                    snappy_block(block, &mut out).map_err(damaged)?;
                    rest = &after[len..];
                }
            } else {
                snappy_block(input, &mut out).map_err(damaged)?;
            }
            Ok(out)
        }
    }
}

/// Appends raw snappy block `block`, decompressed, to `out`, within the limit.
fn snappy_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if out.len() + len > DECOMPRESSED_BYTES_MAX {
        return Err(format!(
            "it decompresses to more than {DECOMPRESSED_BYTES_MAX} bytes"
        ));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads `decoder` whole, refusing more than [`DECOMPRESSED_BYTES_MAX`] bytes.
fn read_bounded(codec: Codec, decoder: impl Read) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let limit = DECOMPRESSED_BYTES_MAX as u64 + 1;
    decoder
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| DecompressError::Damaged {
            codec: codec.name(),
            reason: e.to_string(),
        })?;
    if out.len() > DECOMPRESSED_BYTES_MAX {
        return Err(DecompressError::TooLarge {
            codec: codec.name(),
            max: DECOMPRESSED_BYTES_MAX,
        });
    }
    Ok(out)
}

/// Compresses `input` with `codec` (snappy in xerial blocks, as Kafka's client writes it).
/// For tests and tools: Keel stores what producers send.
pub fn compress(codec: Codec, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Codec::None => input.to_vec(),
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing to a Vec cannot fail.
            let _ = e.write_all(input);
            e.finish().unwrap_or_default()
        }
        Codec::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            let _ = e.write_all(input);
            e.finish().unwrap_or_default()
        }
        Codec::Zstd => zstd::stream::encode_all(input, 0).unwrap_or_default(),
        Codec::Snappy => {
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend([0, 0, 0, 1, 0, 0, 0, 1]);
            for chunk in input.chunks(32 * 1024) {
                let block = snap::raw::Encoder::new()
                    .compress_vec(chunk)
                    .unwrap_or_default();
                out.extend((block.len() as u32).to_be_bytes());
                out.extend(block);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Codec; 4] = [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

    #[test]
    fn every_codec_round_trips() {
        let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for codec in ALL {
            let packed = compress(codec, &input);
            assert!(packed.len() < input.len(), "{codec:?} compresses");
            assert_eq!(decompress(codec, &packed).unwrap(), input, "{codec:?}");
            assert_eq!(Codec::from_bits(codec.bits()), Some(codec));
        }
        assert_eq!(Codec::from_bits(5), None);
    }

    #[test]
    fn raw_snappy_is_read_too() {
        let input = b"raw snappy, as some clients write it".repeat(10);
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert_eq!(decompress(Codec::Snappy, &raw).unwrap(), input);
    }

    #[test]
    fn damaged_data_is_an_error_not_a_panic() {
        let input = b"some records".repeat(100);
        for codec in ALL {
            let mut packed = compress(codec, &input);
            let mid = packed.len() / 2;
            packed.truncate(mid);
            assert!(decompress(codec, &packed).is_err(), "{codec:?} cut short");
            assert!(
                decompress(codec, b"\xff\xfe garbage").is_err(),
                "{codec:?} garbage"
            );
        }
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        let zeros = vec![0u8; DECOMPRESSED_BYTES_MAX + 1];
        for codec in ALL {
            let packed = compress(codec, &zeros);
            match decompress(codec, &packed) {
                Err(DecompressError::TooLarge { .. }) | Err(DecompressError::Damaged { .. }) => {}
                Ok(v) => panic!("{codec:?}: {} bytes let through", v.len()),
            }
        }
    }
}
