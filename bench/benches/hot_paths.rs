//! Micro-benchmarks of the write path's per-byte and per-batch work, for tuning.
//! Run: `cargo bench -p keel-bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel_engine::aligned::AlignedBuf;
use keel_engine::batch::{set_base_offset, BatchBuilder, BatchView};
use keel_engine::recovery::{scan, ReadAt};
use keel_engine::trailer::{flush_end, Trailer, TRAILER_BYTES};

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
            b.iter(|| crc32c::crc32c(black_box(d)))
        });
    }
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
                let mut len = 0;
                for i in 0..batches {
                    let out = &mut buf.as_mut_slice()[len..len + one.len()];
                    out.copy_from_slice(&one);
                    set_base_offset(out, i as u64);
                    len += one.len();
                }
                let end = flush_end(len as u64) as usize;
                let bytes = buf.as_mut_slice();
                bytes[len..end - TRAILER_BYTES].fill(0);
                let t = Trailer {
                    flush_start: 0,
                    next_offset: batches as u64,
                    flush_crc: crc32c::crc32c(&bytes[..end - TRAILER_BYTES]),
                };
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
        let start = pos;
        while pos - start + one.len() < (64 << 10) - TRAILER_BYTES {
            seg[pos..pos + one.len()].copy_from_slice(&one);
            set_base_offset(&mut seg[pos..pos + one.len()], next);
            next += 1;
            pos += one.len();
        }
        let end = flush_end(pos as u64) as usize;
        let t = Trailer {
            flush_start: start as u64,
            next_offset: next,
            flush_crc: crc32c::crc32c(&seg[start..end - TRAILER_BYTES]),
        };
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

criterion_group!(benches, crc, batch_codec, gather, recovery_scan);
criterion_main!(benches);
