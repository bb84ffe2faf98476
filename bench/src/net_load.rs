//! Load over the real protocol: N producers (`keel_client::Producer`, each with its own
//! connection), each sending one message per call and keeping up to a window of them
//! unconfirmed, closed loop or at a target rate (open loop); the producer batches them itself.
//! For end-to-end runs, M consumers in a group read and acknowledge what is produced.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keel_client::{
    Client, ClientOptions, Delivery, JoinSettings, Membership, Producer, ProducerOptions, Record,
    StartAt,
};

use crate::figures::{latency_histogram, record, Figures, Percentiles};

/// One network workload.
#[derive(Debug, Clone)]
pub struct NetLoad {
    /// Server address.
    pub server: String,
    /// Topic produced to (it must exist).
    pub topic: String,
    /// Producers, each with its own connection and thread.
    pub producers: usize,
    /// Messages each producer keeps in flight.
    pub window: usize,
    /// Messages a producer's batch holds at most (its `batch_bytes` is set to hold this
    /// many); 0: the producer's default `batch_bytes`.
    pub batch: usize,
    /// Bytes of each message value.
    pub message_bytes: usize,
    /// Partitions to spread producers over (producer i writes partition i % partitions).
    pub partitions: u32,
    /// How long to send.
    pub seconds: f64,
    /// Total messages per second, open loop: each batch has an intended send time and its
    /// latency is measured from it, so a stalled server cannot hide its stall by slowing the
    /// generator down (no coordinated omission). `None`: closed loop, as fast as the window
    /// allows.
    pub rate: Option<f64>,
    /// Messages to send in all, instead of sending for `seconds`.
    pub messages: Option<u64>,
    /// Consumers in one group reading the topic while it is produced to (end to end); each
    /// message carries its intended send time, and produce→consume latency is reported.
    pub consumers: usize,
    /// Producers are idempotent (the client's default: a producer id, numbered batches, at
    /// most five requests in flight per partition).
    pub idempotent: bool,
}

/// When to stop waiting for consumers to catch up once producing has ended.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A client with a request timeout long enough for any benchmark's queueing.
pub(crate) fn connect(addr: &str) -> Result<Client, String> {
    Client::connect_with(addr, options()).map_err(|e| format!("connect to {addr}: {e}"))
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    }
}

/// Bytes a message takes in a batch besides its value (no key, no headers), at most.
const RECORD_OVERHEAD_BYTES: usize = 24;

/// A producer with the load's settings.
fn open_producer(load: &NetLoad) -> Result<Producer, String> {
    let defaults = ProducerOptions::default();
    let options = ProducerOptions {
        connection: options(),
        idempotence: load.idempotent,
        batch_bytes: match load.batch {
            0 => defaults.batch_bytes,
            n => n * (load.message_bytes + RECORD_OVERHEAD_BYTES),
        },
        ..defaults
    };
    Producer::connect_with(load.server.as_str(), options)
        .map_err(|e| format!("connect to {}: {e}", load.server))
}

/// What the threads of one run share.
struct Shared {
    /// The clock every timestamp in a message is relative to.
    base: Instant,
    acked: AtomicU64,
    consumed: AtomicU64,
    producing: AtomicBool,
}

/// Runs the workload: every producer (and consumer) connects first, then producers send for
/// `seconds` and wait for what they have in flight; consumers go on until they have read every
/// acknowledged message.
pub fn run(load: &NetLoad) -> Result<Figures, String> {
    if load.consumers > 0 && load.message_bytes < 8 {
        return Err("end-to-end runs need messages of at least 8 bytes (a timestamp)".into());
    }
    if load.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    let producers = (0..load.producers)
        .map(|_| open_producer(load))
        .collect::<Result<Vec<_>, _>>()?;
    let group = format!("keel-bench-e2e-{}-{}", std::process::id(), nanos_now());
    let consumers = (0..load.consumers)
        .map(|_| {
            let c = connect(&load.server)?;
            let settings = JoinSettings {
                max_unacked: 4096,
                ..JoinSettings::default()
            };
            let m = c
                .join_group(&group, &load.topic, StartAt::Latest, settings)
                .map_err(|e| format!("join group: {e}"))?;
            Ok((c, m))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let shared = Shared {
        base: Instant::now(),
        acked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        producing: AtomicBool::new(true),
    };
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(load.seconds);
    let (produced, consumed, produced_by) = std::thread::scope(|s| {
        let shared = &shared;
        let consumer_threads: Vec<_> = consumers
            .iter()
            .map(|(c, m)| s.spawn(move || consume(c, m, shared)))
            .collect();
        let progress = s.spawn(move || progress(load, shared, start));
        let producer_threads: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(i, producer)| {
                s.spawn(move || match load.rate {
                    None => produce(producer, load, i, stop_at, shared),
                    Some(_) => produce_at_rate(producer, load, i, stop_at, shared),
                })
            })
            .collect();
        let produced = join_all(producer_threads, "producer");
        let produced_by = Instant::now();
        shared.producing.store(false, Ordering::Release);
        let consumed = join_all(consumer_threads, "consumer");
        let _ = progress.join();
        (produced, consumed, produced_by)
    });
    let produced = produced?;
    // Throughput is what producing achieved; consumers catching up afterwards do not count.
    let seconds = produced_by.duration_since(start).as_secs_f64();
    let mut messages = 0;
    let mut acks = latency_histogram()?;
    for (n, h) in produced {
        messages += n;
        acks.add(&h).map_err(|e| e.to_string())?;
    }
    let mut figures = Figures::new(
        messages,
        seconds,
        load.message_bytes,
        Percentiles::of(&acks),
    );
    if load.consumers > 0 {
        let mut e2e = latency_histogram()?;
        for h in consumed? {
            e2e.add(&h).map_err(|e| e.to_string())?;
        }
        let read = shared.consumed.load(Ordering::Acquire);
        if read < messages {
            return Err(format!(
                "consumers read {read} of {messages} acknowledged messages within {} s of the end",
                CATCH_UP.as_secs()
            ));
        }
        figures.end_to_end_us = Some(Percentiles::of(&e2e));
    }
    Ok(figures)
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn join_all<T>(
    threads: Vec<std::thread::ScopedJoinHandle<'_, Result<T, String>>>,
    what: &str,
) -> Result<Vec<T>, String> {
    threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| Err(format!("a {what} panicked")))
        })
        .collect()
}

/// Prints the rate so far once a second (on a terminal, in place; otherwise every 5 s).
fn progress(load: &NetLoad, shared: &Shared, start: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { 1 } else { 5 };
    let mut last = (start, 0u64);
    let mut tick = 0u64;
    while shared.producing.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        tick += 1;
        if !tick.is_multiple_of(10 * every) {
            continue;
        }
        let now = Instant::now();
        let acked = shared.acked.load(Ordering::Relaxed);
        let rate = (acked - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let of = load.messages.map_or_else(
            || format!(" of {} s", load.seconds),
            |m| format!(", {m} to send"),
        );
        let mut line = format!(
            "  {:>5.1} s{of}: {acked} acknowledged, {rate:.0} msg/s",
            now.duration_since(start).as_secs_f64()
        );
        if load.consumers > 0 {
            line += &format!(", {} consumed", shared.consumed.load(Ordering::Relaxed));
        }
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
        last = (now, acked);
    }
    if tty && tick >= 10 {
        eprint!("\r{:80}\r", "");
    }
}

/// Producer `i`'s part of `total` messages spread over `producers`.
fn share(total: u64, producers: usize, i: usize) -> u64 {
    let producers = producers.max(1) as u64;
    total / producers + u64::from((i as u64) < total % producers)
}

/// The intended send time of message `k` of a producer sending `per_s` messages a second.
fn intended(start: Instant, k: u64, per_s: f64) -> Instant {
    start + Duration::from_secs_f64(k as f64 / per_s)
}

/// Closed loop: the producer keeps its window of unconfirmed messages full, one message per
/// call, and takes each confirmation as it comes (with the others already there).
fn produce(
    p: Producer,
    load: &NetLoad,
    producer: usize,
    stop_at: Instant,
    shared: &Shared,
) -> Result<(u64, Histogram<u64>), String> {
    let failed = |e: keel_client::ClientError| format!("produce failed: {e}");
    let partition = producer as u32 % load.partitions.max(1);
    let mut value = vec![0x6bu8; load.message_bytes];
    let window = load.window.max(1);
    let quota = load.messages.map(|m| share(m, load.producers, producer));
    let mut hist = latency_histogram()?;
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut in_flight: VecDeque<(Delivery, Instant)> = VecDeque::with_capacity(window);
    let mut sending = true;
    loop {
        let now = Instant::now();
        while sending && in_flight.len() < window {
            if quota.is_some_and(|q| sent >= q) || (quota.is_none() && now >= stop_at) {
                sending = false;
                break;
            }
            stamp(&mut value, load, shared, now);
            let record = Record::new(&load.topic, &value).partition(partition);
            in_flight.push_back((p.send(record).map_err(failed)?, now));
            sent += 1;
        }
        let Some((first, sent_at)) = in_flight.pop_front() else {
            p.close().map_err(failed)?;
            return Ok((acked, hist));
        };
        first.wait().map_err(failed)?;
        record(&mut hist, sent_at.elapsed().as_micros() as u64, 1);
        let mut confirmed = 1;
        while let Some((next, sent_at)) = in_flight.pop_front_if(|(d, _)| d.is_finished()) {
            next.wait().map_err(failed)?;
            record(&mut hist, sent_at.elapsed().as_micros() as u64, 1);
            confirmed += 1;
        }
        acked += confirmed;
        shared.acked.fetch_add(confirmed, Ordering::Relaxed);
    }
}

/// End-to-end runs: each message carries its intended send time, for the consumers.
fn stamp(value: &mut [u8], load: &NetLoad, shared: &Shared, sent_for: Instant) {
    if load.consumers > 0 {
        let stamp = sent_for.duration_since(shared.base).as_nanos() as u64;
        value[..8].copy_from_slice(&stamp.to_le_bytes());
    }
}

/// Open loop: each message goes at its intended time, and its latency is measured from then.
fn produce_at_rate(
    p: Producer,
    load: &NetLoad,
    producer: usize,
    stop_at: Instant,
    shared: &Shared,
) -> Result<(u64, Histogram<u64>), String> {
    let partition = producer as u32 % load.partitions.max(1);
    let mut value = vec![0x6bu8; load.message_bytes];
    let window = load.window.max(1);
    let per_producer = load.rate.unwrap_or(1.0) / load.producers.max(1) as f64;
    // The window is a pool of tokens: one is taken before each send and given back once its
    // confirmation arrived, so at most `window` messages are unconfirmed.
    let (give_token, take_token) = crossbeam_channel::bounded::<()>(window);
    for _ in 0..window {
        let _ = give_token.send(());
    }
    // Confirmations are waited for on a thread of their own, in order, so each latency ends
    // when its confirmation arrives rather than when the sender next looks.
    let (to_waiter, in_flight) = crossbeam_channel::bounded::<(Instant, Delivery)>(window);
    std::thread::scope(|s| {
        let waiter = s.spawn(move || -> Result<(u64, Histogram<u64>), String> {
            let mut hist = latency_histogram()?;
            let mut acked = 0u64;
            for (sent_for, delivery) in in_flight {
                delivery
                    .wait()
                    .map_err(|e| format!("produce failed: {e}"))?;
                record(&mut hist, sent_for.elapsed().as_micros() as u64, 1);
                acked += 1;
                shared.acked.fetch_add(1, Ordering::Relaxed);
                let _ = give_token.send(());
            }
            Ok((acked, hist))
        });
        let start = Instant::now();
        let quota = load.messages.map(|m| share(m, load.producers, producer));
        let mut failed = None;
        for k in 0u64.. {
            let due = intended(start, k, per_producer);
            if quota.is_some_and(|q| k >= q) || (quota.is_none() && due >= stop_at) {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            // Fails only once the waiter has stopped, which it says why.
            if take_token.recv().is_err() {
                break;
            }
            stamp(&mut value, load, shared, due);
            match p.send(Record::new(&load.topic, &value).partition(partition)) {
                Ok(delivery) => {
                    if to_waiter.send((due, delivery)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(format!("produce failed: {e}"));
                    break;
                }
            }
        }
        drop(to_waiter);
        let waited = waiter
            .join()
            .unwrap_or_else(|_| Err("a confirmation waiter panicked".into()));
        let closed = p.close().map_err(|e| format!("produce failed: {e}"));
        match failed {
            Some(e) => Err(e),
            None => closed.and(waited),
        }
    })
}

/// Reads the group's deliveries until producing has ended and every acknowledged message has
/// been read (or `CATCH_UP` has passed), acknowledging each request's deliveries.
fn consume(client: &Client, m: &Membership, shared: &Shared) -> Result<Histogram<u64>, String> {
    let mut hist = latency_histogram()?;
    let mut acks = VecDeque::new();
    let mut caught_up_by = None;
    loop {
        if !shared.producing.load(Ordering::Acquire) {
            let deadline = *caught_up_by.get_or_insert_with(|| Instant::now() + CATCH_UP);
            let done =
                shared.consumed.load(Ordering::Acquire) >= shared.acked.load(Ordering::Acquire);
            if done || Instant::now() > deadline {
                break;
            }
        }
        let got = client
            .consume(m, 256, Duration::from_millis(50))
            .map_err(|e| format!("consume: {e}"))?;
        if got.is_empty() {
            continue;
        }
        let now_ns = shared.base.elapsed().as_nanos() as u64;
        for d in &got {
            let stamp = d
                .message
                .value
                .as_deref()
                .and_then(|v| v.get(..8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .ok_or("a consumed message has no timestamp")?;
            record(&mut hist, now_ns.saturating_sub(stamp) / 1000, 1);
        }
        shared
            .consumed
            .fetch_add(got.len() as u64, Ordering::AcqRel);
        let spans = keel_client::spans_of(&got);
        acks.push_back(
            client
                .send_ack(m, &spans, false)
                .map_err(|e| e.to_string())?,
        );
        if acks.len() > 8 {
            if let Some(a) = acks.pop_front() {
                a.wait().map_err(|e| format!("ack: {e}"))?;
            }
        }
    }
    for a in acks {
        a.wait().map_err(|e| format!("ack: {e}"))?;
    }
    let _ = client.leave_group(m);
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total() {
        for (total, producers) in [(10, 3), (2, 5), (0, 4), (1_000_001, 16)] {
            let parts: Vec<u64> = (0..producers).map(|i| share(total, producers, i)).collect();
            assert_eq!(parts.iter().sum::<u64>(), total);
            assert!(parts.iter().max().unwrap_or(&0) - parts.iter().min().unwrap_or(&0) <= 1);
        }
    }

    #[test]
    fn open_loop_send_times_follow_the_rate_not_the_answers() {
        let t0 = Instant::now();
        // 1000 messages/s: one every millisecond, however slow answers are.
        assert_eq!(intended(t0, 0, 1000.0), t0);
        assert_eq!(intended(t0, 50, 1000.0) - t0, Duration::from_millis(50));
        assert_eq!(intended(t0, 1000, 1000.0) - t0, Duration::from_secs(1));
    }
}
