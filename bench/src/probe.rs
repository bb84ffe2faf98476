//! The disk's ceiling: plain O_DIRECT writes each followed by `fdatasync`, one at a time, on the
//! filesystem of the data directory. Everything Keel does is measured against these figures.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keel_engine::aligned::AlignedBuf;

/// File size used by the probe; writes wrap around inside it.
const PROBE_FILE_BYTES: u64 = 1 << 30;

/// What the probe measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    /// 1 MiB write + fdatasync, sequential: MB/s (10^6 bytes).
    pub big_mb_s: f64,
    /// Syncs per second in that run.
    pub big_syncs_s: f64,
    /// 4 KiB write + fdatasync: syncs per second.
    pub small_syncs_s: f64,
    /// 4 KiB write + fdatasync latency percentiles, microseconds: p50, p99, p99.9.
    pub small_us: [u64; 3],
    /// The same into space only reserved with fallocate (never written): p50, p99, p99.9.
    pub small_unwritten_us: [u64; 3],
    /// 1 MiB write made durable by itself (`RWF_DSYNC`, as the engine's flushes are) through
    /// the engine's io_uring backend, one at a time: MB/s.
    pub ring_big_mb_s: f64,
    /// 1 MiB write + fdatasync into fallocated, never-written space (what an append-only log on
    /// fresh space gets): MB/s.
    pub big_unwritten_mb_s: f64,
}

fn open_probe_file(dir: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("keel-probe.tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)?;
    std::fs::remove_file(&path)?; // gone when closed, whatever happens
    Ok(file)
}

/// A probe file whose space is only reserved (unwritten extents), as a fresh log segment's is.
fn open_fallocated_probe_file(dir: &Path) -> io::Result<File> {
    let file = open_probe_file(dir)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: plain syscall on a descriptor we own; result checked.
    if unsafe { libc::fallocate(fd, 0, 0, PROBE_FILE_BYTES as i64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Writes the whole file once, so the timed writes overwrite allocated, written blocks and
/// each `fdatasync` flushes data only: the disk's own ceiling.
fn prefill(file: &File) -> io::Result<()> {
    let buf = AlignedBuf::zeroed(1 << 20);
    let mut at = 0;
    while at < PROBE_FILE_BYTES {
        file.write_all_at(buf.as_slice(), at)?;
        at += 1 << 20;
    }
    file.sync_all()
}

fn timed_writes(
    file: &File,
    block: usize,
    seconds: f64,
    hist: &mut Histogram<u64>,
) -> io::Result<(u64, Duration)> {
    let mut buf = AlignedBuf::zeroed(block);
    buf.as_mut_slice().fill(0x5a);
    let started = Instant::now();
    let mut at = 0u64;
    let mut count = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        file.write_all_at(buf.as_slice(), at)?;
        file.sync_data()?;
        let _ = hist.record(t.elapsed().as_micros() as u64);
        at = (at + block as u64) % PROBE_FILE_BYTES;
        count += 1;
    }
    Ok((count, started.elapsed()))
}

/// Runs the probe for about `2 * seconds` (plus the prefill).
pub fn run(dir: &Path, seconds: f64) -> io::Result<Probe> {
    let file = open_probe_file(dir)?;
    eprintln!(
        "probe: preparing a {} MiB file in {}",
        PROBE_FILE_BYTES >> 20,
        dir.display()
    );
    prefill(&file)?;
    let mut hist = Histogram::<u64>::new(3).map_err(io::Error::other)?;
    eprintln!("probe: 1 MiB write + fdatasync for {seconds} s");
    let (big, big_time) = timed_writes(&file, 1 << 20, seconds, &mut hist)?;
    hist.reset();
    eprintln!("probe: 4 KiB write + fdatasync for {seconds} s");
    let (small, small_time) = timed_writes(&file, 4096, seconds, &mut hist)?;
    let small_us = quantiles(&hist);
    drop(file);
    eprintln!("probe: 4 KiB write + fdatasync into fallocated space for {seconds} s");
    let file = open_fallocated_probe_file(dir)?;
    hist.reset();
    timed_writes(&file, 4096, seconds, &mut hist)?;
    let small_unwritten_us = quantiles(&hist);
    drop(file);
    eprintln!("probe: 1 MiB write + fdatasync into fallocated space for {seconds} s");
    let file = open_fallocated_probe_file(dir)?;
    let (big_unwritten, big_unwritten_time) =
        timed_writes(&file, 1 << 20, seconds.min(0.25), &mut hist)?;
    drop(file);
    eprintln!("probe: 1 MiB write with RWF_DSYNC through io_uring for {seconds} s");
    let ring_big_mb_s = ring_writes(dir, 1 << 20, seconds)?;
    let secs = |d: Duration| d.as_secs_f64();
    Ok(Probe {
        big_mb_s: (big << 20) as f64 / secs(big_time) / 1e6,
        big_syncs_s: big as f64 / secs(big_time),
        small_syncs_s: small as f64 / secs(small_time),
        small_us,
        small_unwritten_us,
        ring_big_mb_s,
        big_unwritten_mb_s: (big_unwritten << 20) as f64 / secs(big_unwritten_time) / 1e6,
    })
}

/// Sequential `block`-byte writes each made durable by itself (`RWF_DSYNC`), through the
/// engine's own io_uring backend into a prewritten file: the ceiling of the engine's flush path.
fn ring_writes(dir: &Path, block: usize, seconds: f64) -> io::Result<f64> {
    RingCeiling::prepare(dir, block)?.measure(seconds)
}

/// The flush path's ceiling, measured again and again on one prepared file: sequential
/// writes each made durable by itself (`RWF_DSYNC`), one at a time, through the engine's own
/// io_uring backend, over a file written once before (as a log at its retention size is).
pub struct RingCeiling {
    disk: keel_engine::io::UringDisk,
    file: keel_engine::io::FileId,
    path: std::path::PathBuf,
    buf: Option<AlignedBuf>,
    block: usize,
    at: u64,
}

impl RingCeiling {
    /// Creates and writes the file (1 GiB) in `dir`; it is removed when this is dropped.
    pub fn prepare(dir: &Path, block: usize) -> io::Result<Self> {
        use keel_engine::io::{Disk, UringDisk};
        let path = dir.join(format!("keel-probe-ring-{}.tmp", std::process::id()));
        let file = open_probe_file(dir)?;
        prefill(&file)?;
        drop(file);
        std::fs::write(&path, [])?;
        let mut disk = UringDisk::new()?;
        let mut ceiling = match disk.open(&path, true) {
            Ok(file) => Self {
                disk,
                file,
                path,
                buf: Some(AlignedBuf::zeroed(block)),
                block,
                at: 0,
            },
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        ceiling.disk.allocate(ceiling.file, PROBE_FILE_BYTES)?;
        while ceiling.at + (block as u64) <= PROBE_FILE_BYTES {
            ceiling.write_next()?;
        }
        Ok(ceiling)
    }

    /// MB/s (10^6 bytes) over `seconds` of writes.
    pub fn measure(&mut self, seconds: f64) -> io::Result<f64> {
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            self.write_next()?;
            count += 1;
        }
        Ok((count * self.block as u64) as f64 / started.elapsed().as_secs_f64() / 1e6)
    }

    fn write_next(&mut self) -> io::Result<()> {
        if self.at + self.block as u64 > PROBE_FILE_BYTES {
            self.at = 0;
        }
        let buf = self
            .buf
            .take()
            .ok_or_else(|| io::Error::other("a write lost its buffer"))?;
        self.buf = Some(write_sync(
            &mut self.disk,
            self.file,
            self.at,
            buf,
            self.block,
        )?);
        self.at += self.block as u64;
        Ok(())
    }
}

impl Drop for RingCeiling {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn write_sync(
    disk: &mut keel_engine::io::UringDisk,
    file: keel_engine::io::FileId,
    at: u64,
    buf: AlignedBuf,
    len: usize,
) -> io::Result<AlignedBuf> {
    use keel_engine::io::{Block, Disk, IoKind, SyncAfter};
    disk.submit_write(file, at, buf, len, 1, SyncAfter::ThisWrite);
    let (mut done, mut back) = (Vec::new(), None);
    let mut seen = 0;
    while seen < 2 {
        disk.wait(&mut done, Block::Yes)?;
        for c in done.drain(..) {
            seen += 1;
            c.result?;
            if c.kind == IoKind::Write {
                back = c.buf;
            }
        }
    }
    back.ok_or_else(|| io::Error::other("write completion without its buffer"))
}

fn quantiles(hist: &Histogram<u64>) -> [u64; 3] {
    [
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
    ]
}

impl Probe {
    /// A markdown table of the figures.
    pub fn table(&self) -> String {
        let [p50, p99, p999] = self.small_us;
        let [u50, u99, u999] = self.small_unwritten_us;
        let mut t = String::from("| disk probe (O_DIRECT, one at a time) | figure |\n|---|---|\n");
        t += &format!(
            "| 1 MiB write + fdatasync | {:.0} MB/s ({:.0} syncs/s) |\n",
            self.big_mb_s, self.big_syncs_s
        );
        t += &format!(
            "| 1 MiB write with RWF_DSYNC, through Keel's io_uring backend | {:.0} MB/s |\n",
            self.ring_big_mb_s
        );
        t += &format!(
            "| 1 MiB write + fdatasync into fallocated, never-written space | {:.0} MB/s |\n",
            self.big_unwritten_mb_s
        );
        t += &format!(
            "| 4 KiB write + fdatasync | {:.0} syncs/s |\n",
            self.small_syncs_s
        );
        t += &format!(
            "| 4 KiB write + fdatasync latency | p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs |\n"
        );
        t += &format!("| the same into fallocated, never-written space | p50 {u50} µs, p99 {u99} µs, p99.9 {u999} µs |\n");
        t
    }
}
