//! Micro-benchmarks of the hot paths' per-byte and per-message work, for tuning: CRC-32C,
//! batch build and verify, the frame codec, group commit's gather step, the recovery scan, and
//! the consumer-group ack path (window update and offset-table store).
//! Run: `cargo bench -p keel-bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};

use keel_engine::aligned::AlignedBuf;
use keel_engine::delivery::PartitionDelivery;
use keel_engine::offsets::{AckState, OffsetTable};
use keel_engine::recovery::{scan, ReadAt};
use keel_engine::trailer::{flush_end, unchecked_prefix, CrcScope, Trailer, TRAILER_BYTES};
use keel_format::batch::{set_base_offset, BatchBuilder, BatchView};
use keel_protocol::{
    decode_request, encode_request, encode_response, ConsumedPartition, DeliveryInfo,
    PartitionTarget, Request, Response,
};

fn batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    let value = vec![0x42; value_bytes];
    for _ in 0..records {
        b.push(Some(b"key"), &value, &[]);
    }
    b.build()
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [1024usize, 64 << 10, 1 << 20] {
        let data = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| keel_format::crc::crc32c(black_box(d)))
        });
    }
    // A flush trailer's CRC runs over each batch's first 21 bytes (its unchecked prefix).
    let prefix = [7u8; 21];
    g.bench_function("append 21 B", |b| {
        b.iter(|| keel_format::crc::crc32c_append(black_box(0x1234_5678), black_box(&prefix)))
    });
    g.finish();
}

fn batch_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for (records, value) in [(1usize, 1024usize), (8, 1024), (100, 100)] {
        let bytes = batch(records, value);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let id = format!("{records}x{value}B");
        g.bench_function(BenchmarkId::new("build", &id), |b| {
            b.iter(|| black_box(batch(records, value)))
        });
        // What an append does to every batch: verify (CRC + record walk), then set the offset.
        g.bench_function(BenchmarkId::new("verify", &id), |b| {
            b.iter(|| BatchView::verify(black_box(&bytes)).map(|v| v.record_count()))
        });
    }
    g.finish();
}

/// The gather step of group commit: copy batches into an aligned buffer, stamp offsets, then
/// pad and seal the flush with its trailer.
fn gather(c: &mut Criterion) {
    let one = batch(1, 1024);
    let mut g = c.benchmark_group("gather");
    for batches in [32usize, 512] {
        g.throughput(Throughput::Bytes((one.len() * batches) as u64));
        g.bench_function(BenchmarkId::from_parameter(batches), |b| {
            let mut buf = AlignedBuf::zeroed(8 << 20);
            b.iter(|| {
                let (mut len, mut prefix_crc) = (0, 0);
                for i in 0..batches {
                    let out = &mut buf.as_mut_slice()[len..len + one.len()];
                    out.copy_from_slice(&one);
                    set_base_offset(out, i as u64);
                    prefix_crc = keel_format::crc::crc32c_append(prefix_crc, unchecked_prefix(out));
                    len += one.len();
                }
                let end = flush_end(len as u64) as usize;
                let bytes = buf.as_mut_slice();
                bytes[len..end - TRAILER_BYTES].fill(0);
                let crc =
                    keel_format::crc::crc32c_append(prefix_crc, &bytes[len..end - TRAILER_BYTES]);
                let t = Trailer::alone(0, batches as u64, crc, CrcScope::Headers);
                t.encode(&mut bytes[end - TRAILER_BYTES..end]);
                black_box(end)
            })
        });
    }
    g.finish();
}

struct Mem(Vec<u8>);

impl ReadAt for &Mem {
    fn read_at(
        &mut self,
        pos: u64,
        mut buf: AlignedBuf,
        len: usize,
    ) -> (AlignedBuf, std::io::Result<usize>) {
        let start = (pos as usize).min(self.0.len());
        let n = len.min(self.0.len() - start);
        buf.as_mut_slice()[..n].copy_from_slice(&self.0[start..start + n]);
        (buf, Ok(n))
    }
}

/// Recovery's scan of an 8 MiB segment written as 64 KiB flushes of 1 KiB batches.
fn recovery_scan(c: &mut Criterion) {
    let one = batch(1, 1024);
    let mut seg = vec![0u8; 8 << 20];
    let (mut pos, mut next) = (0usize, 0u64);
    while pos + (64 << 10) < seg.len() - (64 << 10) {
        let (start, mut prefix_crc) = (pos, 0);
        while pos - start + one.len() < (64 << 10) - TRAILER_BYTES {
            seg[pos..pos + one.len()].copy_from_slice(&one);
            set_base_offset(&mut seg[pos..pos + one.len()], next);
            prefix_crc = keel_format::crc::crc32c_append(prefix_crc, unchecked_prefix(&seg[pos..]));
            next += 1;
            pos += one.len();
        }
        let end = flush_end(pos as u64) as usize;
        let crc = keel_format::crc::crc32c_append(prefix_crc, &seg[pos..end - TRAILER_BYTES]);
        let t = Trailer::alone(start as u64, next, crc, CrcScope::Headers);
        t.encode(&mut seg[end - TRAILER_BYTES..end]);
        pos = end;
    }
    let mem = Mem(seg);
    let mut g = c.benchmark_group("recovery");
    g.throughput(Throughput::Bytes(mem.0.len() as u64));
    g.sample_size(20);
    g.bench_function("scan 8 MiB", |b| {
        b.iter(|| scan(&mem, mem.0.len() as u64, 0, 1 << 20).map(|s| s.next_offset))
    });
    g.finish();
}

/// What keeld does per produce request and per consume answer: decode a request frame, encode
/// a response frame around borrowed batches.
fn frame_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let one = batch(8, 1024);
    let request = Request::Produce {
        topic: "orders".into(),
        target: PartitionTarget::Partition(3),
        producer_id: -1,
        base_sequence: -1,
        batch: &one,
    };
    let mut frame = Vec::new();
    encode_request(7, &request, &mut frame);
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("produce request encode", |b| {
        let mut out = Vec::with_capacity(frame.len());
        b.iter(|| {
            out.clear();
            encode_request(7, black_box(&request), &mut out);
        })
    });
    g.bench_function("produce request decode", |b| {
        b.iter(|| decode_request(black_box(&frame)).map(|(h, _)| h.correlation_id))
    });
    let batches: Vec<u8> = (0..32).flat_map(|_| one.clone()).collect();
    let response = Response::Consume {
        partitions: vec![ConsumedPartition {
            partition: 0,
            deliveries: (0..256)
                .map(|o| DeliveryInfo {
                    offset: o,
                    delivery_count: 1,
                })
                .collect(),
            batches: &batches,
        }],
    };
    g.throughput(Throughput::Bytes(batches.len() as u64));
    g.bench_function("consume answer encode (256 messages)", |b| {
        let mut out = Vec::with_capacity(batches.len() + 8192);
        b.iter(|| {
            out.clear();
            encode_response(7, black_box(&response), &mut out);
        })
    });
    g.finish();
}

/// The ack path of a consumer group, per ack request of 256 single-message spans: mark the
/// offsets, move the window, store the slot into the mapped table.
fn group_ack(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("keel-bench-ack-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let Ok(mut table) = OffsetTable::open(&dir.join("offsets"), 4) else {
        eprintln!("group_ack: cannot create a table in {}", dir.display());
        return;
    };
    let mut g = c.benchmark_group("group ack");
    g.throughput(Throughput::Elements(256));
    g.bench_function("256 spans: deliver, ack, store", |b| {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 16);
        b.iter(|| {
            let batch = p.next(1, false, 256, u64::MAX, now, Duration::from_secs(30));
            let spans = batch.deliveries.iter().map(|d| (d.offset, d.offset));
            black_box(p.ack_spans(spans));
            table.store(0, p.acks());
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(
    benches,
    crc,
    batch_codec,
    frame_codec,
    gather,
    recovery_scan,
    group_ack
);
criterion_main!(benches);
