//! Kafka RecordBatch v2 ("magic 2"): the unit producers send and the engine stores unchanged.
//!
//! Layout (big-endian): base offset i64 | batch length i32 | partition leader epoch i32 |
//! magic i8 = 2 | CRC-32C u32 over everything after it | attributes i16 | last offset delta i32 |
//! base timestamp i64 | max timestamp i64 | producer id i64 | producer epoch i16 |
//! base sequence i32 | record count i32 | records. The engine writes the base offset and nothing
//! else, which is why the CRC does not cover it. See `docs/FORMAT.md`.

use std::borrow::Cow;

use crate::compression::{decompress, Codec, DecompressError};
use crate::varint::{get_varint, put_varint, varint_len};

/// Bytes before the first record.
pub const HEADER_BYTES: usize = 61;
/// Bytes of base offset + batch length: the prefix not counted in "batch length".
pub const LOG_OVERHEAD_BYTES: usize = 12;
const MAGIC: i8 = 2;
/// Where the part covered by the batch's CRC starts: the base offset, batch length, leader
/// epoch, magic and the CRC itself come before it.
pub const CRC_START: usize = 21;
const COMPRESSION_MASK: i16 = 0x07;
/// Attribute bits of a transactional batch (bit 4) and of a control batch (bit 5).
const TRANSACTIONAL_OR_CONTROL: i16 = 0x30;

/// The name of a RecordBatch compression codec (attribute bits 0–2, not 0: uncompressed).
fn codec_name(codec: i16) -> &'static str {
    match codec {
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "an undefined codec",
    }
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a batch header, or a length field that disagrees with the bytes given.
    #[error("batch length mismatch: header says {declared} bytes, {actual} given")]
    Length {
        /// Total bytes the header declares (including the 12-byte prefix).
        declared: i64,
        /// Bytes actually present.
        actual: usize,
    },
    /// Magic byte other than 2.
    #[error("unsupported batch magic {0} (only RecordBatch v2, magic 2, is stored)")]
    Magic(i8),
    /// CRC-32C over the batch body does not match.
    #[error("batch CRC mismatch: header {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Record count not positive, or disagreeing with the last offset delta.
    #[error("batch declares {count} records but last offset delta {last_offset_delta}")]
    RecordCount {
        /// Declared record count.
        count: i32,
        /// Declared last offset delta.
        last_offset_delta: i32,
    },
    /// The records of a compressed batch read as if they were not: they are read through
    /// [`BatchView::decoded`].
    #[error("the records of a {codec} batch are read decompressed (BatchView::decoded)")]
    Compressed {
        /// The codec the attributes name.
        codec: &'static str,
    },
    /// Attribute bits naming no codec (5 to 7).
    #[error(
        "batch compression codec {0} is not defined (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)"
    )]
    UndefinedCodec(i16),
    /// Compressed records that do not decompress, or decompress to too much.
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    /// A transactional or control batch: transactions are not supported.
    #[error("transactional and control batches are not supported (attributes {attributes:#06x})")]
    Transactional {
        /// The batch's attributes.
        attributes: i16,
    },
    /// An uncompressed record that does not parse.
    #[error("malformed record {index}: {reason}")]
    Record {
        /// Index of the record in the batch.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Total size of the batch whose first 12 bytes are `prefix` (base offset + length), if sane.
pub fn declared_len(prefix: &[u8]) -> Option<u64> {
    if prefix.len() < LOG_OVERHEAD_BYTES {
        return None;
    }
    let body = be_i32(prefix, 8);
    let total = i64::from(body) + LOG_OVERHEAD_BYTES as i64;
    (total >= HEADER_BYTES as i64).then_some(total as u64)
}

/// Why a record cannot be read.
const RECORD_UNREADABLE: &str = "truncated or bad varint";

/// A read-only view of one verified batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Checks length, magic, CRC and record count (and, for uncompressed batches, that every
    /// record parses) and returns a view of exactly the batch's bytes.
    pub fn verify(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let declared = declared_len(bytes).map_or(-1, |n| n as i64);
        if declared < HEADER_BYTES as i64 || declared as usize != bytes.len() {
            return Err(BatchError::Length {
                declared,
                actual: bytes.len(),
            });
        }
        let magic = bytes[16] as i8;
        if magic != MAGIC {
            return Err(BatchError::Magic(magic));
        }
        let stored = u32::from_be_bytes([bytes[17], bytes[18], bytes[19], bytes[20]]);
        let computed = crate::crc::crc32c(&bytes[CRC_START..]);
        if stored != computed {
            return Err(BatchError::Crc { stored, computed });
        }
        let view = Self { bytes };
        let count = view.record_count();
        let last_offset_delta = be_i32(bytes, 23);
        if count <= 0 || last_offset_delta != count - 1 {
            return Err(BatchError::RecordCount {
                count,
                last_offset_delta,
            });
        }
        // Compressed records are decompressed and checked the same way.
        check_records(&view.decoded()?.bytes, count as usize)?;
        Ok(view)
    }

    /// Refuses what a producer may send in a valid batch but the server does not take yet:
    /// transactions. Stored batches are never checked against it, so a log written by a later
    /// version stays readable.
    pub fn check_appendable(&self) -> Result<(), BatchError> {
        let attributes = self.attributes();
        if attributes & TRANSACTIONAL_OR_CONTROL != 0 {
            return Err(BatchError::Transactional { attributes });
        }
        Ok(())
    }

    /// The batch's bytes, exactly as stored.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        be_i64(self.bytes, 0)
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.record_count()) - 1
    }
    /// Number of records.
    pub fn record_count(&self) -> i32 {
        be_i32(self.bytes, 57)
    }
    /// Attributes (compression in the low 3 bits, timestamp type, transactional, control).
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, 21)
    }
    /// Producer id (-1 when the producer is not idempotent).
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, 43)
    }
    /// Base timestamp in milliseconds.
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, 27)
    }
    /// Base sequence of the idempotent producer.
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, 53)
    }
    /// Epoch of the idempotent producer.
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, 51)
    }
    /// Largest record timestamp in milliseconds.
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, 35)
    }
    /// The codec its records are compressed with.
    pub fn codec(&self) -> Result<Codec, BatchError> {
        let bits = self.attributes() & COMPRESSION_MASK;
        Codec::from_bits(bits).ok_or(BatchError::UndefinedCodec(bits))
    }

    /// Its records, decompressed if they are compressed (borrowed if not), to read with
    /// [`DecodedRecords::iter`].
    pub fn decoded(&self) -> Result<DecodedRecords<'a>, BatchError> {
        let records = &self.bytes[HEADER_BYTES..];
        let bytes = match self.codec()? {
            Codec::None => Cow::Borrowed(records),
            codec => Cow::Owned(decompress(codec, records)?),
        };
        Ok(DecodedRecords {
            bytes,
            count: self.record_count().max(0) as usize,
        })
    }

    /// The records of an uncompressed batch, decoded lazily. A compressed batch yields one
    /// error instead of reading compressed bytes as records ([`BatchView::decoded`] reads
    /// both).
    pub fn records(&self) -> Records<'a> {
        let codec = self.attributes() & COMPRESSION_MASK;
        Records {
            rest: &self.bytes[HEADER_BYTES..],
            index: 0,
            remaining: self.record_count().max(0) as usize,
            refused: (codec != 0).then(|| BatchError::Compressed {
                codec: codec_name(codec),
            }),
        }
    }
}

/// `batch` (uncompressed, as [`BatchBuilder`] builds it) with its records compressed with
/// `codec`, as a Kafka producer compresses them: the header kept, its attributes, length and
/// CRC set anew.
pub fn compress_batch(batch: &[u8], codec: Codec) -> Vec<u8> {
    let mut out = batch[..HEADER_BYTES].to_vec();
    out.extend(crate::compression::compress(codec, &batch[HEADER_BYTES..]));
    let len = i32::try_from(out.len() - LOG_OVERHEAD_BYTES).unwrap_or(i32::MAX);
    out[8..12].copy_from_slice(&len.to_be_bytes());
    let attributes = (be_i16(&out, 21) & !COMPRESSION_MASK) | codec.bits();
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crate::crc::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Writes the engine-assigned base offset into a batch (the only field the engine changes).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
}

/// A batch's records, decompressed where they were compressed.
pub struct DecodedRecords<'a> {
    bytes: Cow<'a, [u8]>,
    count: usize,
}

impl DecodedRecords<'_> {
    /// The records, decoded lazily.
    pub fn iter(&self) -> Records<'_> {
        Records {
            rest: &self.bytes,
            index: 0,
            remaining: self.count,
            refused: None,
        }
    }
}

/// One decoded record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset relative to the batch's base offset.
    pub offset_delta: i64,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Key, `None` when null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` when null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers as (key, value) pairs.
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Iterator over the records of a batch.
pub struct Records<'a> {
    rest: &'a [u8],
    index: usize,
    remaining: usize,
    /// Why the records cannot be read at all (compression), reported by the first `next`.
    refused: Option<BatchError>,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(refused) = self.refused.take() {
            self.remaining = 0;
            return Some(Err(refused));
        }
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let index = self.index;
        self.index += 1;
        let fail = |reason| BatchError::Record { index, reason };
        let parsed = parse_record(self.rest).ok_or_else(|| fail(RECORD_UNREADABLE));
        match parsed {
            Ok((record, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(record))
            }
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Option<i64> {
        let (v, used) = get_varint(self.bytes.get(self.at..)?)?;
        self.at += used;
        Some(v)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }
    /// A varint length followed by that many bytes; -1 means null.
    fn nullable_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.varint()? {
            -1 => Some(None),
            // Any other negative length fails the conversion.
            n => Some(Some(self.take(usize::try_from(n).ok()?)?)),
        }
    }
}

/// One record's fields besides its headers, borrowed from the batch.
struct RecordFields<'a> {
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
}

/// Reads the record at the front of `input`, handing each header to `header`; returns its
/// other fields and the bytes it takes. The one parser behind both reading records and
/// checking them.
#[inline(always)]
fn walk_record<'a>(
    input: &'a [u8],
    mut header: impl FnMut(&'a [u8], Option<&'a [u8]>),
) -> Option<(RecordFields<'a>, usize)> {
    let mut outer = Cursor {
        bytes: input,
        at: 0,
    };
    let len = usize::try_from(outer.varint()?).ok()?;
    let body = outer.take(len)?;
    let mut c = Cursor { bytes: body, at: 0 };
    let _attributes = c.take(1)?;
    let timestamp_delta = c.varint()?;
    let offset_delta = c.varint()?;
    let key = c.nullable_bytes()?;
    let value = c.nullable_bytes()?;
    let header_count = usize::try_from(c.varint()?).ok()?;
    // Each header needs at least two bytes, so a count beyond that is a lie.
    if header_count > body.len() / 2 {
        return None;
    }
    for _ in 0..header_count {
        let hkey = c.nullable_bytes()??;
        header(hkey, c.nullable_bytes()?);
    }
    if c.at != body.len() {
        return None;
    }
    let fields = RecordFields {
        timestamp_delta,
        offset_delta,
        key,
        value,
    };
    Some((fields, outer.at))
}

fn parse_record(input: &[u8]) -> Option<(Record<'_>, usize)> {
    let mut headers = Vec::new();
    let (f, used) = walk_record(input, |k, v| headers.push((k, v)))?;
    let record = Record {
        offset_delta: f.offset_delta,
        timestamp_delta: f.timestamp_delta,
        key: f.key,
        value: f.value,
        headers,
    };
    Some((record, used))
}

/// Checks that `count` records parse, one after another, from the front of `records`, without
/// building them: every append does this, and building each [`Record`] only to drop it cost
/// it more than the walk itself.
fn check_records(mut records: &[u8], count: usize) -> Result<(), BatchError> {
    for index in 0..count {
        match walk_record(records, |_, _| {}) {
            Some((_, used)) => records = &records[used..],
            None => {
                return Err(BatchError::Record {
                    index,
                    reason: RECORD_UNREADABLE,
                })
            }
        }
    }
    Ok(())
}

/// Builds an uncompressed RecordBatch v2, as a Kafka producer would.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    records: Vec<u8>,
    count: i32,
    base_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl BatchBuilder {
    /// A batch with no producer identity (producer id -1), timestamped `base_timestamp_ms`.
    pub fn new(base_timestamp_ms: i64) -> Self {
        Self {
            records: Vec::new(),
            count: 0,
            base_timestamp_ms,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// Sets the idempotent producer identity.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.set_producer(id, epoch, base_sequence);
        self
    }

    /// Sets (or changes) the idempotent producer identity of a batch being built: a producer
    /// numbers a batch when it first sends it, and again if its epoch changes before the
    /// batch was stored.
    pub fn set_producer(&mut self, id: i64, epoch: i16, base_sequence: i32) {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
    }

    /// Adds a record with optional key and headers.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], headers: &[(&[u8], &[u8])]) {
        self.push_parts(key, Some(value), headers.iter().map(|&(k, v)| (k, Some(v))));
    }

    /// Adds a record exactly as a batch may hold it: a null value (a tombstone) and null
    /// header values included. Used to copy a record read back from a batch.
    pub fn push_record(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        self.push_parts(key, value, headers.iter().copied());
    }

    fn push_parts<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'h [u8], Option<&'h [u8]>)> + Clone,
    ) {
        // Written straight into the batch: the record's length comes first, so it is
        // counted before anything is copied.
        let nullable_len =
            |b: Option<&[u8]>| b.map_or(varint_len(-1), |b| varint_len(b.len() as i64) + b.len());
        let body = 1
            + varint_len(0)
            + varint_len(i64::from(self.count))
            + nullable_len(key)
            + nullable_len(value)
            + varint_len(headers.len() as i64)
            + headers
                .clone()
                .map(|(hk, hv)| nullable_len(Some(hk)) + nullable_len(hv))
                .sum::<usize>();
        let out = &mut self.records;
        out.reserve(varint_len(body as i64) + body);
        put_varint(out, body as i64);
        out.push(0); // record attributes: unused by magic 2
        put_varint(out, 0); // timestamp delta
        put_varint(out, i64::from(self.count));
        put_nullable(out, key);
        put_nullable(out, value);
        put_varint(out, headers.len() as i64);
        for (hk, hv) in headers {
            put_nullable(out, Some(hk));
            put_nullable(out, hv);
        }
        self.count += 1;
    }

    /// Makes room for `bytes` more of record keys, values and headers, so pushing them does
    /// not grow the batch step by step.
    pub fn reserve(&mut self, bytes: usize) {
        self.records.reserve(bytes);
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the encoded batch takes.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.records.len()
    }

    /// Encodes the batch with base offset 0 (the engine assigns the real one).
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.build_into(&mut out);
        out
    }

    /// Appends the encoded batch ([`BatchBuilder::build`]'s bytes) to `out`, for a caller
    /// that frames it without copying it again.
    pub fn build_into(&self, out: &mut Vec<u8>) {
        let total = self.encoded_len();
        let start = out.len();
        out.reserve(total);
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
        out.push(MAGIC as u8);
        out.extend_from_slice(&[0; 4]); // CRC, filled below
        out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression
        out.extend_from_slice(&(self.count - 1).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.records);
        let batch = &mut out[start..];
        let crc = crate::crc::crc32c(&batch[CRC_START..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Iterates over the whole batches packed in `bytes` (as returned by a read), verifying each.
pub fn batches(bytes: &[u8]) -> impl Iterator<Item = Result<BatchView<'_>, BatchError>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = declared_len(rest).map_or(rest.len(), |n| n as usize);
        let len = len.min(rest.len());
        let (this, tail) = rest.split_at(len);
        rest = tail;
        Some(BatchView::verify(this))
    })
}

/// Walks batches that were verified earlier (by the engine, when they were appended), trusting
/// their length fields and skipping the CRC. Stops at the first length that is impossible or
/// runs past the bytes. For bytes from anywhere else use [`batches`].
pub fn trusted_batches(bytes: &[u8]) -> impl Iterator<Item = BatchView<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let len = declared_len(rest)? as usize;
        if len > rest.len() {
            return None;
        }
        let (this, tail) = rest.split_at(len);
        rest = tail;
        Some(BatchView { bytes: this })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new(1_700_000_000_000).producer(7, 1, 42);
        b.push(Some(b"k1"), b"hello", &[(b"h", b"v")]);
        b.push(None, b"", &[]);
        b.push(Some(b""), &[0xff; 300], &[]);
        b.build()
    }

    #[test]
    fn built_batch_verifies_and_decodes() {
        let mut bytes = sample();
        set_base_offset(&mut bytes, 1000);
        let view = BatchView::verify(&bytes).unwrap();
        assert_eq!(view.base_offset(), 1000);
        assert_eq!(view.last_offset(), 1002);
        assert_eq!(view.producer_id(), 7);
        assert_eq!(view.base_sequence(), 42);
        assert_eq!(view.producer_epoch(), 1);
        let records: Vec<_> = view.records().map(Result::unwrap).collect();
        assert_eq!(records[0].key, Some(&b"k1"[..]));
        assert_eq!(records[0].value, Some(&b"hello"[..]));
        assert_eq!(records[0].headers, vec![(&b"h"[..], Some(&b"v"[..]))]);
        assert_eq!(records[1].key, None);
        assert_eq!(records[2].value.map(<[u8]>::len), Some(300));
        assert_eq!(records[2].offset_delta, 2);
    }

    #[test]
    fn push_record_keeps_null_values_and_null_header_values() {
        let mut b = BatchBuilder::new(5);
        b.push_record(Some(b"gone"), None, &[(b"h", None), (b"i", Some(b""))]);
        let bytes = b.build();
        let view = BatchView::verify(&bytes).unwrap();
        let r = view.records().next().unwrap().unwrap();
        assert_eq!((r.key, r.value), (Some(&b"gone"[..]), None));
        assert_eq!(
            r.headers,
            vec![(&b"h"[..], None), (&b"i"[..], Some(&b""[..]))]
        );
    }

    #[test]
    fn every_single_byte_flip_from_the_magic_on_is_caught() {
        // The leader epoch (bytes 12..16) is outside Kafka's CRC by design; on disk the flush
        // trailer's CRC covers it (see trailer.rs).
        let bytes = sample();
        for i in (8..12).chain(16..bytes.len()) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                BatchView::verify(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn truncation_and_garbage_are_refused_without_panicking() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(BatchView::verify(&bytes[..cut]).is_err());
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in [0usize, 12, 61, 100, 4096] {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(BatchView::verify(&garbage).is_err());
        }
    }

    /// `batch` with its attributes set to `attributes` and its CRC made to match.
    fn with_attributes(batch: &[u8], attributes: i16) -> Vec<u8> {
        let mut b = batch.to_vec();
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        let crc = crate::crc::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn compressed_batches_are_appendable_and_false_or_undefined_codecs_are_refused() {
        let mut builder = BatchBuilder::new(0);
        builder.push(None, b"plain text", &[]);
        let plain = builder.build();
        assert!(BatchView::verify(&plain)
            .unwrap()
            .check_appendable()
            .is_ok());
        let gzip = compress_batch(&plain, Codec::Gzip);
        assert!(BatchView::verify(&gzip).unwrap().check_appendable().is_ok());
        // Plain records under a codec's bits do not decompress; an undefined codec is named.
        for (attributes, codec) in [(4, "zstd"), (1, "gzip"), (3, "lz4")] {
            let bytes = with_attributes(&plain, attributes);
            match BatchView::verify(&bytes) {
                Err(BatchError::Decompress(DecompressError::Damaged { codec: c, .. })) => {
                    assert_eq!(c, codec);
                }
                other => panic!("{codec}: {other:?}"),
            }
        }
        assert_eq!(
            BatchView::verify(&with_attributes(&plain, 7)).err(),
            Some(BatchError::UndefinedCodec(7))
        );
        for attributes in [0x10, 0x20] {
            let bytes = with_attributes(&plain, attributes);
            let view = BatchView::verify(&bytes).unwrap();
            assert_eq!(
                view.check_appendable(),
                Err(BatchError::Transactional { attributes })
            );
        }
    }

    #[test]
    fn packed_batches_are_walked_whole_and_a_cut_one_is_not_taken() {
        let one = sample();
        let mut two = BatchBuilder::new(5);
        two.push(None, b"second", &[]);
        let two = two.build();
        let packed = [one.clone(), two.clone()].concat();
        let walked: Vec<&[u8]> = batches(&packed).map(|b| b.unwrap().bytes()).collect();
        assert_eq!(walked, [&one[..], &two[..]]);
        let trusted: Vec<&[u8]> = trusted_batches(&packed).map(|b| b.bytes()).collect();
        assert_eq!(
            trusted,
            [&one[..], &two[..]],
            "the last one ends exactly at the end"
        );
        // The second cut short: verified, it is an error; trusted, the walk stops before it.
        let cut = &packed[..packed.len() - 1];
        let walked: Vec<_> = batches(cut).collect();
        assert_eq!(walked.len(), 2);
        assert!(walked[0].is_ok() && walked[1].is_err());
        assert_eq!(trusted_batches(cut).count(), 1);
    }

    #[test]
    fn every_header_field_reads_from_its_place() {
        let mut b = BatchBuilder::new(1_700_000_000_123).producer(99, 3, 7);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0, "nothing pushed");
        b.push(None, b"a", &[]);
        assert!(!b.is_empty());
        assert_eq!(b.len(), 1);
        b.push(None, b"b", &[]);
        assert_eq!(b.len(), 2);
        let bytes = b.build();
        assert_eq!(
            be_i32(&bytes, 12),
            -1,
            "no partition leader epoch, as Kafka writes it"
        );
        let view = BatchView::verify(&bytes).unwrap();
        assert_eq!(view.bytes(), &bytes[..]);
        assert_eq!(view.base_timestamp(), 1_700_000_000_123);
        assert_eq!(view.max_timestamp(), 1_700_000_000_123);
        assert_eq!(
            (
                view.producer_id(),
                view.producer_epoch(),
                view.base_sequence()
            ),
            (99, 3, 7)
        );
        assert_eq!(
            declared_len(&bytes[..LOG_OVERHEAD_BYTES]),
            Some(bytes.len() as u64)
        );
        assert_eq!(declared_len(&bytes[..LOG_OVERHEAD_BYTES - 1]), None);
        assert_eq!(
            BatchView::verify(&[0u8; 5]).err(),
            Some(BatchError::Length {
                declared: -1,
                actual: 5
            }),
            "no length to read: declared -1"
        );
    }

    #[test]
    fn each_codec_is_named_and_a_bad_record_by_its_index() {
        let mut builder = BatchBuilder::new(0);
        builder.push(None, b"x", &[]);
        let plain = builder.build();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let bytes = compress_batch(&plain, codec);
            let view = BatchView::verify(&bytes).unwrap();
            assert_eq!(view.codec(), Ok(codec));
            assert_eq!(
                view.records().next(),
                Some(Err(BatchError::Compressed {
                    codec: codec.name()
                }))
            );
        }
        assert_eq!(
            BatchView::verify(&with_attributes(&plain, 5)).err(),
            Some(BatchError::UndefinedCodec(5))
        );
        // Three records; the third's length is made to run past the batch (and the batch
        // re-signed): the records before it read, it is named by its index.
        let mut b = BatchBuilder::new(0);
        for v in [b"one", b"two", b"six"] {
            b.push(None, v, &[]);
        }
        let mut bytes = b.build();
        let records: Vec<(usize, usize)> = {
            let view = BatchView::verify(&bytes).unwrap();
            let mut at = HEADER_BYTES;
            view.records()
                .map(|_| {
                    let (_, used) = parse_record(&bytes[at..]).unwrap();
                    at += used;
                    (at - used, used)
                })
                .collect()
        };
        let (third, _) = records[2];
        bytes[third] = 100; // its length varint: 50, past the end
        let crc = crate::crc::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let view = BatchView { bytes: &bytes };
        let read: Vec<_> = view.records().collect();
        assert!(read[0].is_ok() && read[1].is_ok());
        assert!(
            matches!(read[2], Err(BatchError::Record { index: 2, .. })),
            "{:?}",
            read[2]
        );
    }

    #[test]
    fn a_record_count_that_disagrees_with_the_last_offset_delta_is_refused() {
        // These two fields say how many offsets the batch takes: a batch they disagree on
        // would overlap the next one. Checked before the records, compressed or not.
        let gzip = compress_batch(&sample(), Codec::Gzip);
        let with = |count: i32, delta: i32| {
            let mut b = gzip.clone();
            b[23..27].copy_from_slice(&delta.to_be_bytes());
            b[57..61].copy_from_slice(&count.to_be_bytes());
            let crc = crate::crc::crc32c(&b[CRC_START..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        assert!(BatchView::verify(&with(3, 2)).is_ok(), "as built");
        // A batch of no records at all: its header alone, as long as it says.
        let mut empty = with(0, -1)[..HEADER_BYTES].to_vec();
        let body = (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
        empty[8..12].copy_from_slice(&body.to_be_bytes());
        let crc = crate::crc::crc32c(&empty[CRC_START..]);
        empty[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            BatchView::verify(&empty).err(),
            Some(BatchError::RecordCount {
                count: 0,
                last_offset_delta: -1
            }),
            "its length is right; its count is not"
        );
        for (count, delta) in [(3, 5), (3, 1), (0, -1), (-1, -2), (1, 1)] {
            let bytes = with(count, delta);
            assert_eq!(
                BatchView::verify(&bytes).err(),
                Some(BatchError::RecordCount {
                    count,
                    last_offset_delta: delta
                }),
                "count {count}, last offset delta {delta}"
            );
        }
    }

    /// What reading the first `count` records of `area` says: the index of the first that
    /// cannot be read, if any.
    fn first_unreadable(area: &[u8], count: usize) -> Option<usize> {
        let records = Records {
            rest: area,
            index: 0,
            remaining: count,
            refused: None,
        };
        records
            .enumerate()
            .find(|(_, r)| r.is_err())
            .map(|(i, _)| i)
    }

    proptest::proptest! {
        #[test]
        fn checking_records_agrees_with_reading_them(
            values in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), 1..6),
            flip_at in proptest::prelude::any::<usize>(),
            flip_to in proptest::prelude::any::<u8>(),
            cut in proptest::prelude::any::<usize>(),
            extra in 0usize..3,
        ) {
            let mut b = BatchBuilder::new(0);
            for (i, v) in values.iter().enumerate() {
                let key = (i % 2 == 0).then_some(&v[..v.len().min(3)]);
                b.push(key, v, if i % 3 == 0 { &[(b"h", b"v")] } else { &[] });
            }
            let mut area = b.build()[HEADER_BYTES..].to_vec();
            let at = flip_at % area.len();
            area[at] = flip_to;
            area.truncate(area.len() - cut % 4.min(area.len()));
            let count = values.len() + extra;
            let checked = check_records(&area, count);
            let checked_index = match checked {
                Ok(()) => None,
                Err(BatchError::Record { index, .. }) => Some(index),
                Err(other) => return Err(proptest::test_runner::TestCaseError::fail(other.to_string())),
            };
            proptest::prop_assert_eq!(checked_index, first_unreadable(&area, count));
        }
    }

    #[test]
    fn records_with_a_lying_length_are_refused() {
        let mut b = BatchBuilder::new(0);
        b.push(None, b"abc", &[]);
        let mut bytes = b.build();
        // Make the first record's value length claim 60 bytes and re-sign the batch, so only
        // the record walk can catch it.
        let value_len_at = HEADER_BYTES + 1 + 1 + 1 + 1 + 1;
        bytes[value_len_at] = 120;
        let crc = crate::crc::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            BatchView::verify(&bytes),
            Err(BatchError::Record { index: 0, .. })
        ));
    }

    #[test]
    fn compressed_batches_verify_and_decode_with_every_codec() {
        let mut b = BatchBuilder::new(1_000);
        b.push(Some(b"k1"), b"first value", &[(b"h", b"v")]);
        b.push(None, &[7u8; 3000], &[]);
        b.push(Some(b"k3"), b"", &[]);
        let plain = b.build();
        let want: Vec<_> = BatchView::verify(&plain)
            .unwrap()
            .records()
            .map(|r| format!("{:?}", r.unwrap()))
            .collect();
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let packed = compress_batch(&plain, codec);
            let view = BatchView::verify(&packed).unwrap();
            assert_eq!(view.codec().unwrap(), codec);
            assert!(packed.len() < plain.len(), "{codec:?} made it smaller");
            let decoded = view.decoded().unwrap();
            let got: Vec<_> = decoded
                .iter()
                .map(|r| format!("{:?}", r.unwrap()))
                .collect();
            assert_eq!(got, want, "{codec:?}");
            assert!(
                matches!(
                    view.records().next(),
                    Some(Err(BatchError::Compressed { .. }))
                ),
                "records() does not read compressed bytes as records"
            );
        }
    }

    #[test]
    fn a_compressed_batch_holding_fewer_records_than_it_declares_is_refused() {
        let mut b = BatchBuilder::new(0);
        b.push(None, b"one", &[]);
        b.push(None, b"two", &[]);
        let plain = b.build();
        let mut packed = compress_batch(&plain, Codec::Lz4);
        // Declare three records (count and last offset delta), and seal the CRC again.
        packed[23..27].copy_from_slice(&2i32.to_be_bytes());
        packed[57..61].copy_from_slice(&3i32.to_be_bytes());
        let crc = crate::crc::crc32c(&packed[CRC_START..]);
        packed[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(
            matches!(
                BatchView::verify(&packed),
                Err(BatchError::Record { index: 2, .. })
            ),
            "{:?}",
            BatchView::verify(&packed).err()
        );
        let mut undefined = compress_batch(&plain, Codec::Gzip);
        undefined[22] |= 0x07;
        let crc = crate::crc::crc32c(&undefined[CRC_START..]);
        undefined[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            BatchView::verify(&undefined).err(),
            Some(BatchError::UndefinedCodec(7))
        );
    }
}
