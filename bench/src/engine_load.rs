//! In-process load on the storage engine: many logical appenders, each keeping a window of
//! messages in flight (closed loop) or sending at a fixed total rate (open loop, latency
//! measured from the intended send time so a stall is not hidden).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use keel_engine::histogram::quantile_upper_bound;
use keel_engine::{Answer, BatchBuilder, Completion, CompletionQueue, Engine, Waker};
use slab::Slab;

use crate::figures::{Figures, Percentiles};

/// One workload.
#[derive(Debug, Clone)]
pub struct Load {
    /// Logical appenders.
    pub appenders: usize,
    /// Appends each keeps in flight (closed loop).
    pub window: usize,
    /// Total appends per second (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    /// Bytes of each message value.
    pub message_bytes: usize,
    /// Messages per appended batch.
    pub messages_per_batch: usize,
    /// How long to send.
    pub seconds: f64,
    /// Partitions of the topic written (appender i writes partition i % partitions).
    pub partitions: u32,
    /// Threads driving the appenders.
    pub drivers: usize,
}

/// What a workload achieved.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Messages acknowledged durable.
    pub messages: u64,
    /// Seconds from the first send to the last acknowledgement.
    pub seconds: f64,
    /// `fdatasync`s the engine issued meanwhile.
    pub syncs: u64,
    /// Flushes that waited for the appenders the last one answered (commit linger), and how
    /// many of those waits ran out.
    pub held: [u64; 2],
    /// Append→durable latency.
    pub latency_us: Percentiles,
    /// Failed appends (should be 0).
    pub errors: u64,
    /// Flush I/O (a flush's write and linked sync, from submission to both completing),
    /// microseconds, as power-of-two bucket upper bounds: p50, p99, max.
    pub flush_io_us: [u64; 3],
    /// Open loop: how late the generator sent messages after their intended time, microseconds
    /// (p50, p99, max). Large values mean the generator, not the engine, fell behind; they are
    /// still counted in the latency, as a client would see them.
    pub send_late_us: Option<[u64; 3]>,
    /// CPU seconds this process (engine and generator together) used during the run.
    pub cpu_s: f64,
}

impl Outcome {
    /// Messages per second.
    pub fn messages_per_s(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
    /// Payload megabytes (10^6) per second.
    pub fn mb_per_s(&self, message_bytes: usize) -> f64 {
        self.messages_per_s() * message_bytes as f64 / 1e6
    }
    /// The figures every report shares.
    pub fn figures(&self, message_bytes: usize) -> Figures {
        Figures::new(self.messages, self.seconds, message_bytes, self.latency_us)
    }
    /// Messages sharing each fdatasync.
    pub fn messages_per_sync(&self) -> f64 {
        self.messages as f64 / self.syncs.max(1) as f64
    }
}

/// (appender, intended send time, acknowledged at, succeeded). The acknowledgement time is
/// taken in the engine's callback, so the driver's own scheduling does not add to it.
type Ack = (usize, Instant, Instant, bool);

/// Open loop: how long the driver sleeps between bursts of sends that fell due.
const OPEN_LOOP_TICK: Duration = Duration::from_micros(50);
/// Open loop: the most appends a driver may have in flight.
const OPEN_LOOP_IN_FLIGHT_MAX: usize = 1 << 22;

/// Templates made so far, by (message bytes, messages per batch). Each is made once and lives
/// as long as the process: appends share it as a static slice, so the generator neither copies
/// nor counts references to it per append on the cores it shares with the engine (the engine
/// copies every batch into its flush, as it does a batch keeld received).
static TEMPLATES: Mutex<Vec<(TemplateShape, &'static [u8])>> = Mutex::new(Vec::new());

/// (message bytes, messages per batch).
type TemplateShape = (usize, usize);

/// The batch every append of `load` sends.
fn template(load: &Load) -> Bytes {
    let shape = (load.message_bytes, load.messages_per_batch);
    // A list changed in single steps: consistent after a panic.
    let mut made = TEMPLATES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, t)) = made.iter().find(|(s, _)| *s == shape) {
        return Bytes::from_static(t);
    }
    let mut b = BatchBuilder::new(1_700_000_000_000);
    let value = vec![0x6b; load.message_bytes];
    for _ in 0..load.messages_per_batch {
        b.push(None, &value, &[]);
    }
    let t: &'static [u8] = Box::leak(b.build().into_boxed_slice());
    made.push((shape, t));
    Bytes::from_static(t)
}

/// One driver's appends in flight: the engine answers them into the driver's own completion
/// queue, which the driver drains (the ack's time is when the driver sees it, as a client
/// would).
struct Acks {
    queue: Arc<CompletionQueue>,
    /// (appender, when it was sent) by tag.
    sent: Slab<(usize, Instant)>,
    ready: VecDeque<Completion>,
}

impl Acks {
    fn new(capacity: usize) -> Result<Self, String> {
        let waker = Waker::new().map_err(|e| format!("create an eventfd: {e}"))?;
        Ok(Self {
            queue: CompletionQueue::new(capacity, Arc::new(waker)),
            sent: Slab::new(),
            ready: VecDeque::new(),
        })
    }

    fn send(
        &mut self,
        engine: &Engine,
        (topic, partition): (&str, u32),
        batch: &Bytes,
        appender: usize,
        at: Instant,
    ) -> Result<(), String> {
        let place = self
            .queue
            .reserve()
            .ok_or("more appends in flight than the driver's queue holds")?;
        let tag = self.sent.insert((appender, at)) as u64;
        engine.append(topic, partition, batch.clone(), place.ticket(tag));
        Ok(())
    }

    fn ack(&mut self, c: Completion, acked: Instant) -> Ack {
        let (appender, at) = self.sent.remove(c.tag as usize);
        let ok = matches!(c.answer, Answer::Appended(Ok(_)));
        (appender, at, acked, ok)
    }

    /// An ack that has arrived, without waiting.
    fn try_next(&mut self) -> Option<Ack> {
        if self.ready.is_empty() {
            let mut got = Vec::new();
            self.queue.drain(&mut got);
            self.ready.extend(got);
        }
        let c = self.ready.pop_front()?;
        Some(self.ack(c, Instant::now()))
    }

    /// The next ack: one already there, else the first within 30 s.
    fn next(&mut self) -> Result<Ack, String> {
        if let Some(ack) = self.try_next() {
            return Ok(ack);
        }
        let mut got = Vec::new();
        if self.queue.wait(&mut got, Duration::from_secs(30)) == 0 {
            return Err("no ack within 30 s".to_string());
        }
        self.ready.extend(got);
        self.try_next()
            .ok_or_else(|| "no ack within 30 s".to_string())
    }
}

/// Runs `load` against `topic` (which must have `load.partitions` partitions).
pub fn run(engine: &Arc<Engine>, topic: &str, load: &Load) -> Result<Outcome, String> {
    let before = engine.stats();
    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let drivers: Vec<_> = (0..load.drivers.max(1))
        .map(|d| {
            let (engine, topic, load) = (Arc::clone(engine), topic.to_string(), load.clone());
            std::thread::spawn(move || drive(&engine, &topic, &load, d))
        })
        .collect();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let (mut messages, mut errors, mut last_ack) = (0, 0, started);
    let mut late: Option<Histogram<u64>> = None;
    for d in drivers {
        let part = d
            .join()
            .map_err(|_| "a load driver panicked".to_string())??;
        hist.add(&part.hist).map_err(|e| e.to_string())?;
        if let Some(l) = &part.late {
            match late.as_mut() {
                Some(all) => all.add(l).map_err(|e| e.to_string())?,
                None => late = Some(l.clone()),
            }
        }
        messages += part.messages;
        errors += part.errors;
        last_ack = last_ack.max(part.last_ack);
    }
    let after = engine.stats();
    let cpu_s = process_cpu_s() - cpu_before;
    let syncs = after.syncs - before.syncs;
    let mut io = after.flush_io_us;
    for (a, b) in io.iter_mut().zip(before.flush_io_us) {
        *a -= b;
    }
    let flush_io_us = [0.5, 0.99, 1.0].map(|q| quantile_upper_bound(&io, q));
    Ok(Outcome {
        messages: messages * load.messages_per_batch as u64,
        seconds: (last_ack - started).as_secs_f64(),
        syncs,
        held: [
            after.flushes_held - before.flushes_held,
            after.holds_expired - before.holds_expired,
        ],
        latency_us: Percentiles::of(&hist),
        errors,
        flush_io_us,
        send_late_us: late.map(|l| [l.value_at_quantile(0.5), l.value_at_quantile(0.99), l.max()]),
        cpu_s,
    })
}

struct DriverResult {
    hist: Histogram<u64>,
    late: Option<Histogram<u64>>,
    messages: u64,
    errors: u64,
    last_ack: Instant,
}

fn drive(engine: &Engine, topic: &str, load: &Load, driver: usize) -> Result<DriverResult, String> {
    let batch = template(load);
    let mine: Vec<usize> = (driver..load.appenders)
        .step_by(load.drivers.max(1))
        .collect();
    let partition_of = |a: usize| (a % load.partitions as usize) as u32;
    // Closed loop: never more in flight than the windows. Open loop: whatever falls due
    // while the engine is behind, up to a bound far beyond any run's.
    let mut acks = Acks::new(match load.rate {
        None => mine.len() * load.window,
        Some(_) => OPEN_LOOP_IN_FLIGHT_MAX,
    })?;
    let mut r = DriverResult {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        late: None,
        messages: 0,
        errors: 0,
        last_ack: Instant::now(),
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(load.seconds);
    let mut in_flight = 0usize;
    let on_ack = |(_, at, acked, ok): Ack, r: &mut DriverResult| {
        let _ = r.hist.record((acked - at).as_micros().max(1) as u64);
        r.last_ack = r.last_ack.max(acked);
        if ok {
            r.messages += 1;
        } else {
            r.errors += 1;
        }
    };
    match load.rate {
        None => {
            for &a in &mine {
                for _ in 0..load.window {
                    acks.send(engine, (topic, partition_of(a)), &batch, a, Instant::now())?;
                    in_flight += 1;
                }
            }
            // One clock reading per ack, for both the deadline and the next send's stamp; and
            // a blocking receive (which reads the clock for its timeout) only when none waits.
            while in_flight > 0 {
                let ack = acks.next()?;
                in_flight -= 1;
                let appender = ack.0;
                on_ack(ack, &mut r);
                let now = Instant::now();
                if now < end {
                    let to = (topic, partition_of(appender));
                    acks.send(engine, to, &batch, appender, now)?;
                    in_flight += 1;
                }
            }
        }
        Some(rate) => {
            // Sleep in short ticks and send every message that fell due, stamped with the time
            // it was due; take acks without blocking, so no ack costs a wake-up.
            set_fine_timer_slack();
            let interval = Duration::from_secs_f64(load.drivers.max(1) as f64 / rate);
            let mut next = start;
            let mut k = 0usize;
            let mut late =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            while next < end {
                let now = Instant::now();
                while next <= now && next < end {
                    let _ = late.record((now - next).as_micros().max(1) as u64);
                    let a = mine[k % mine.len()];
                    acks.send(engine, (topic, partition_of(a)), &batch, a, next)?;
                    in_flight += 1;
                    k += 1;
                    next += interval;
                }
                while let Some(ack) = acks.try_next() {
                    in_flight -= 1;
                    on_ack(ack, &mut r);
                }
                // Never shorter than a tick: at a high rate the next message is due within a
                // microsecond, and sleeping until then cost a timer and a wake-up per message
                // (a third of the process's time at 1.2 M msg/s). Messages that fall due
                // meanwhile go out at the next tick, stamped with when they were due.
                std::thread::sleep(
                    OPEN_LOOP_TICK.max(next.saturating_duration_since(Instant::now())),
                );
            }
            r.late = Some(late);
            while in_flight > 0 {
                let ack = acks.next()?;
                in_flight -= 1;
                on_ack(ack, &mut r);
            }
        }
    }
    Ok(r)
}

/// Lets this thread's short sleeps end on time (the default slack is 50 µs).
fn set_fine_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and affects only this thread.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
}

/// CPU seconds (user and system) this process has used, from /proc: its ticks are the
/// kernel's fixed USER_HZ of 100, so this resolves 10 ms.
pub fn process_cpu_s() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) closing with ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
    ticks.unwrap_or(0) as f64 / 100.0
}

/// Resident set size of this process in KiB, from /proc.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Fills every partition of `topic` past the engine's retention size plus two segments,
/// untimed, with `load`'s shape but 8-message batches (it is only filling), so that what is
/// measured next is a log at its retention size: each roll drops the oldest segment and reuses
/// its file. Gives up after two minutes.
pub fn fill_to_retention(engine: &Arc<Engine>, topic: &str, load: &Load) -> Result<(), String> {
    let cfg = engine.config();
    let Some(keep) = cfg.retention_bytes else {
        return Ok(());
    };
    let target = u64::from(load.partitions) * (keep + 2 * cfg.segment_bytes);
    let before = engine.stats().bytes_written;
    let fill = Load {
        rate: None,
        window: (load.window / 8).max(1),
        messages_per_batch: 8,
        seconds: 1.0,
        ..load.clone()
    };
    let written = fill_until(
        topic,
        target,
        Duration::from_secs(120),
        || Ok(engine.stats().bytes_written - before),
        || {
            let out = run(engine, topic, &fill)?;
            if out.errors > 0 {
                return Err(format!(
                    "{} appends failed while filling {topic}",
                    out.errors
                ));
            }
            Ok(())
        },
    )?;
    eprintln!(
        "filled {} MiB past retention ({} MiB per partition); {} segment files reused so far",
        written >> 20,
        keep >> 20,
        engine.stats().segments_recycled
    );
    Ok(())
}

/// Repeats `step` until `written()` reports at least `target` bytes, printing progress;
/// gives up after `patience`. Returns what `written()` last reported.
pub(crate) fn fill_until(
    what: &str,
    target: u64,
    patience: Duration,
    mut written: impl FnMut() -> Result<u64, String>,
    mut step: impl FnMut() -> Result<(), String>,
) -> Result<u64, String> {
    let deadline = Instant::now() + patience;
    loop {
        let now_written = written()?;
        if now_written >= target {
            return Ok(now_written);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "filling {what} to its retention size took over {} s ({} of {} MiB)",
                patience.as_secs(),
                now_written >> 20,
                target >> 20
            ));
        }
        eprintln!(
            "filling {what} to its retention size: {} of {} MiB",
            now_written >> 20,
            target >> 20
        );
        step()?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use keel_engine::BatchView;

    fn closed_loop(appenders: usize, window: usize, messages_per_batch: usize) -> Load {
        Load {
            appenders,
            window,
            rate: None,
            message_bytes: 100,
            messages_per_batch,
            seconds: 0.2,
            partitions: 2,
            drivers: 2,
        }
    }

    #[test]
    fn a_shape_is_built_once_and_shared() {
        let a = template(&closed_loop(1, 1, 3));
        let b = template(&closed_loop(1, 1, 3));
        let c = template(&closed_loop(1, 1, 4));
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same shape is the same bytes");
        assert_ne!(a.as_ptr(), c.as_ptr());
        assert_eq!(BatchView::verify(&a).unwrap().record_count(), 3);
        assert_eq!(BatchView::verify(&c).unwrap().record_count(), 4);
    }

    /// Every acknowledged message is counted once, and the log holds exactly that many, each
    /// batch being the template (the shared bytes reach the disk unchanged).
    #[test]
    fn a_closed_loop_run_counts_what_the_log_holds() {
        let dir = keel_tests::data_dir();
        let engine = Arc::new(Engine::open(keel_tests::small_config(dir.path(), 2)).unwrap());
        engine.create_topic("load", 2).unwrap();
        let load = closed_loop(8, 4, 2);
        let outcome = run(&engine, "load", &load).unwrap();
        assert_eq!(outcome.errors, 0);
        assert!(outcome.messages > 0);
        let template = template(&load);
        let mut stored = 0;
        for partition in 0..2 {
            let mut next = 0;
            for (offset, batch) in keel_tests::read_all(&engine, "load", partition) {
                assert_eq!(offset, next);
                assert_eq!(batch[8..], template[8..], "only the base offset differs");
                next += load.messages_per_batch as u64;
            }
            stored += next;
        }
        assert_eq!(stored, outcome.messages);
    }
}
