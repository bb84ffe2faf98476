//! `keel-bench consume`: a backlog of messages drained two ways from the same keeld in one
//! run: by plain fetches (the read path's speed), and by a consumer group acknowledging every
//! message individually, with durable acks. Reports both rates, their ratio, and the
//! ack→durable latency.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use keel_client::{FetchOptions, JoinSettings, OffsetSpan, PendingAck, Producer, Record, StartAt};

use crate::figures::{write_json, Figures, Percentiles};
use crate::net_load::connect;
use crate::server_suite::{keeld_binary, start_keeld};

/// What to drain.
#[derive(Args, Debug, Clone)]
pub struct Backlog {
    /// Messages in the backlog.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Bytes of each message value.
    #[arg(long, default_value_t = 1024)]
    pub message_bytes: usize,
    /// Consumers (and fetchers), each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Messages asked for per consume request.
    #[arg(long, default_value_t = 256)]
    pub per_request: u32,
}

/// Produces the backlog with the client's producer: runs of 64 messages to each partition in
/// turn, every delivery checked.
pub(crate) fn fill(addr: &str, topic: &str, partitions: u32, b: &Backlog) -> Result<(), String> {
    let producer = Producer::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    let value = vec![b'x'; b.message_bytes];
    let mut unchecked = VecDeque::new();
    for sent in 0..b.messages {
        let p = ((sent / 64) % u64::from(partitions)) as u32;
        let record = Record::new(topic, &value).partition(p);
        unchecked.push_back(producer.send(record).map_err(|e| format!("produce: {e}"))?);
        // Checked a little behind the sends, so that at most this many are held.
        if unchecked.len() > 8192 {
            if let Some(d) = unchecked.pop_front() {
                d.wait().map_err(|e| format!("produce: {e}"))?;
            }
        }
    }
    for d in unchecked {
        d.wait().map_err(|e| format!("produce: {e}"))?;
    }
    Ok(())
}

/// Drains every partition with fetches (fetcher i reads partitions i, i + n, ...); returns
/// seconds.
fn fetch_drain(addr: &str, topic: &str, partitions: u32, b: &Backlog) -> Result<f64, String> {
    let start = Instant::now();
    let read = AtomicU64::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..b.consumers.min(partitions as usize))
            .map(|i| {
                let read = &read;
                s.spawn(move || -> Result<(), String> {
                    let c = connect(addr)?;
                    for p in (i as u32..partitions).step_by(b.consumers) {
                        let mut offset = 0;
                        loop {
                            let f = c
                                .fetch(topic, p, offset, FetchOptions::default())
                                .map_err(|e| format!("fetch: {e}"))?;
                            let n = f.messages(offset).map_err(|e| e.to_string())?.len();
                            read.fetch_add(n as u64, Ordering::Relaxed);
                            offset = f.next_offset;
                            if f.at_end() {
                                break;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a fetcher panicked".to_string())?)
    })?;
    let got = read.load(Ordering::Relaxed);
    if got != b.messages {
        return Err(format!("fetched {got} messages, expected {}", b.messages));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Drains the backlog as a group, acknowledging every message on its own (one span per
/// message) with durable acks, up to 8 ack requests in flight per consumer; returns seconds
/// and the ack→durable latency histogram (µs).
pub(crate) fn group_drain(
    addr: &str,
    topic: &str,
    b: &Backlog,
) -> Result<(f64, Histogram<u64>), String> {
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let hists = std::thread::scope(|s| {
        let handles: Vec<_> = (0..b.consumers)
            .map(|_| {
                let done = &done;
                s.spawn(move || -> Result<Histogram<u64>, String> {
                    let c = connect(addr)?;
                    let settings = JoinSettings {
                        max_unacked: b.per_request * 8,
                        ..JoinSettings::default()
                    };
                    let m = c
                        .join_group("bench", topic, StartAt::Earliest, settings)
                        .map_err(|e| format!("join: {e}"))?;
                    // Acks are waited for on a thread of their own, so each latency ends when
                    // its answer arrives; at most 8 are in flight.
                    let (tx, rx) = crossbeam_channel::bounded::<(Instant, PendingAck, u64)>(8);
                    let waiter = s.spawn(move || -> Result<Histogram<u64>, String> {
                        let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
                        for (sent, ack, n) in rx {
                            ack.wait().map_err(|e| format!("ack: {e}"))?;
                            let _ = hist.record(sent.elapsed().as_micros() as u64);
                            done.fetch_add(n, Ordering::Relaxed);
                        }
                        Ok(hist)
                    });
                    while done.load(Ordering::Relaxed) < b.messages {
                        let got = c
                            .consume(&m, b.per_request, Duration::from_millis(20))
                            .map_err(|e| format!("consume: {e}"))?;
                        if got.is_empty() {
                            continue;
                        }
                        let spans: Vec<OffsetSpan> = got.iter().map(|d| d.span()).collect();
                        let sent = Instant::now();
                        let ack = c.send_ack(&m, &spans, true).map_err(|e| e.to_string())?;
                        if tx.send((sent, ack, got.len() as u64)).is_err() {
                            break;
                        }
                    }
                    drop(tx);
                    let hist = waiter
                        .join()
                        .map_err(|_| "an ack waiter panicked".to_string())??;
                    let _ = c.leave_group(&m);
                    Ok(hist)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a consumer panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for h in hists {
        all.add(h).map_err(|e| e.to_string())?;
    }
    let got = done.load(Ordering::Relaxed);
    if got != b.messages {
        return Err(format!(
            "acknowledged {got} messages, expected {}",
            b.messages
        ));
    }
    Ok((seconds, all))
}

/// Runs both drains against one keeld and prints a markdown report.
pub fn run(
    dir: &Path,
    b: &Backlog,
    keeld: Option<PathBuf>,
    json: Option<&Path>,
) -> Result<(), String> {
    let keeld = keeld_binary(keeld)?;
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    let partitions = shards as u32;
    let (server, data) = start_keeld(&keeld, dir, &[])?;
    let outcome = (|| {
        let c = connect(&server.addr)?;
        c.create_topic("drain", partitions)
            .map_err(|e| format!("create topic: {e}"))?;
        eprintln!("filling a backlog of {} messages", b.messages);
        fill(&server.addr, "drain", partitions, b)?;
        eprintln!("draining with fetches");
        let fetch_s = fetch_drain(&server.addr, "drain", partitions, b)?;
        eprintln!("draining as a group with per-message durable acks");
        let (group_s, hist) = group_drain(&server.addr, "drain", b)?;
        Ok::<_, String>((fetch_s, group_s, hist))
    })();
    let stopped = server.stop();
    let _ = std::fs::remove_dir_all(&data);
    let (fetch_s, group_s, hist) = outcome?;
    stopped?;
    let rate = |s: f64| b.messages as f64 / s;
    let ratio = rate(group_s) / rate(fetch_s);
    println!(
        "{} messages of {} B, {partitions} partitions, {} consumers, {} per consume request\n",
        b.messages, b.message_bytes, b.consumers, b.per_request
    );
    println!("| drain | msg/s | MB/s |\n|---|---|---|");
    for (name, s) in [
        ("fetch (no acks)", fetch_s),
        ("group, every message acked durably", group_s),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} |",
            rate(s),
            rate(s) * b.message_bytes as f64 / 1e6
        );
    }
    println!(
        "\n| ratio | measured | target | |\n|---|---|---|---|\n| group / fetch | {ratio:.2} | >= 0.50 | {} |",
        if ratio >= 0.5 { "met" } else { "**missed**" }
    );
    let q = |p: f64| hist.value_at_quantile(p);
    println!(
        "\nack→durable latency (an ack request of up to {} spans, sent → answered): p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        b.per_request,
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max()
    );
    if let Some(path) = json {
        #[derive(serde::Serialize)]
        struct Drains {
            fetch: Figures,
            group: Figures,
            group_over_fetch: f64,
        }
        let drains = Drains {
            fetch: Figures::new(b.messages, fetch_s, b.message_bytes, Percentiles::default()),
            group: Figures::new(b.messages, group_s, b.message_bytes, Percentiles::of(&hist)),
            group_over_fetch: ratio,
        };
        write_json(path, &drains)?;
    }
    Ok(())
}
