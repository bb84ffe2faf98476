//! Produce load over the real protocol: N producers, each with its own connection, keeping up
//! to a window of messages in flight in batches, against `keeld` or the null server.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keel_client::{Client, ClientOptions, Target};

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
    /// Messages per produce request.
    pub batch: usize,
    /// Bytes of each message value.
    pub message_bytes: usize,
    /// Partitions to spread producers over (producer i writes partition i % partitions).
    pub partitions: u32,
    /// How long to send.
    pub seconds: f64,
}

/// What a network workload achieved.
#[derive(Debug, Clone)]
pub struct NetOutcome {
    /// Messages acknowledged.
    pub messages: u64,
    /// Seconds from the first send to the last acknowledgement.
    pub seconds: f64,
    /// Produce→ack latency of each message, microseconds: p50, p99, p99.9, max.
    pub latency_us: [u64; 4],
}

impl NetOutcome {
    /// Messages per second.
    pub fn messages_per_s(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
    /// Payload megabytes (10^6) per second.
    pub fn mb_per_s(&self, message_bytes: usize) -> f64 {
        self.messages_per_s() * message_bytes as f64 / 1e6
    }
}

/// Runs the workload: every producer connects first, then all send for `seconds` and wait for
/// what they have in flight.
pub fn run(load: &NetLoad) -> Result<NetOutcome, String> {
    let clients = (0..load.producers)
        .map(|_| {
            let options = ClientOptions {
                request_timeout: Duration::from_secs(60),
                ..ClientOptions::default()
            };
            Client::connect_with(load.server.as_str(), options).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(load.seconds);
    let results: Vec<Result<(u64, Histogram<u64>), String>> = std::thread::scope(|s| {
        let workers: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| s.spawn(move || produce(client, load, i, stop_at)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a producer panicked".into()))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut messages = 0;
    let mut hist = new_histogram()?;
    for r in results {
        let (n, h) = r?;
        messages += n;
        hist.add(&h).map_err(|e| e.to_string())?;
    }
    Ok(NetOutcome {
        messages,
        seconds,
        latency_us: [
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max(),
        ],
    })
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

fn produce(
    client: &Client,
    load: &NetLoad,
    producer: usize,
    stop_at: Instant,
) -> Result<(u64, Histogram<u64>), String> {
    let partition = producer as u32 % load.partitions.max(1);
    let value = vec![0x6bu8; load.message_bytes];
    let values = vec![value.as_slice(); load.batch.max(1)];
    let batches_in_flight = (load.window / load.batch.max(1)).max(1);
    let mut hist = new_histogram()?;
    let mut in_flight = VecDeque::with_capacity(batches_in_flight);
    let mut acked = 0u64;
    loop {
        let sending = Instant::now() < stop_at;
        if sending && in_flight.len() < batches_in_flight {
            let pending = client
                .send_values(&load.topic, Target::Partition(partition), &values)
                .map_err(|e| e.to_string())?;
            in_flight.push_back((Instant::now(), pending));
            continue;
        }
        let Some((sent, pending)) = in_flight.pop_front() else {
            return Ok((acked, hist));
        };
        pending.wait().map_err(|e| format!("produce failed: {e}"))?;
        let us = sent.elapsed().as_micros().max(1) as u64;
        hist.record_n(us.min(60_000_000), values.len() as u64)
            .map_err(|e| e.to_string())?;
        acked += values.len() as u64;
    }
}
