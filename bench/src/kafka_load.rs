//! `keel-bench kafka`: the same workload over keeld's Kafka listener, driven by librdkafka (the
//! C client most Kafka clients wrap), and over Keel's own protocol with Keel's producer, in one
//! run: producers sending one message per call (each client batching by itself), acks after
//! durability, then a drain of what they wrote. The Kafka path's target is 0.8x the native one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::figures::{Figures, Percentiles};
use crate::server_suite::{self, Shape};

/// How long a producer waits for room in its window before it looks again.
const POLL_WAIT: Duration = Duration::from_micros(50);

/// What every librdkafka producer of a run records.
struct Deliveries {
    /// Send times are kept as nanoseconds after this, in each message's delivery opaque.
    base: Instant,
    acked: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Histogram<u64>>,
}

/// One producer's context: the run's records, and its own count of acknowledged messages
/// (its window is counted against it).
#[derive(Clone)]
struct Counting(Arc<Deliveries>, Arc<AtomicU64>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        let d = &self.0;
        if result.is_err() {
            d.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        d.acked.fetch_add(1, Ordering::Relaxed);
        self.1.fetch_add(1, Ordering::Relaxed);
        let now = d.base.elapsed().as_nanos() as u64;
        let us = now.saturating_sub(sent_ns as u64) / 1000;
        if let Ok(mut h) = d.latencies_us.lock() {
            let _ = h.record(us.max(1));
        }
    }
}

/// librdkafka producers, each on its own connection, writing partition i % partitions, with at
/// most `shape.window` messages unacknowledged each, for `seconds`.
fn kafka_produce(
    kafka: &str,
    topic: &str,
    seconds: f64,
    shape: &Shape,
    partitions: u32,
    batch_bytes: usize,
) -> Result<Figures, String> {
    let deliveries = Arc::new(Deliveries {
        base: Instant::now(),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies_us: Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        ),
    });
    let value = vec![b'k'; shape.message_bytes];
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..shape.producers)
        .map(|i| {
            let ctx = Counting(Arc::clone(&deliveries), Arc::new(AtomicU64::new(0)));
            let (kafka, topic, value) = (kafka.to_string(), topic.to_string(), value.clone());
            let window = shape.window;
            let partition = (i as u32 % partitions) as i32;
            let idempotence = !shape.no_idempotence;
            std::thread::spawn(move || -> Result<(), String> {
                // librdkafka's delivery reports are taken by rdkafka's own polling thread.
                let producer: ThreadedProducer<Counting> = ClientConfig::new()
                    .set("bootstrap.servers", &kafka)
                    .set("acks", "all")
                    .set("enable.idempotence", idempotence.to_string())
                    // Keel's producer's linger (Kafka's); the batch size is the caller's.
                    .set("linger.ms", "5")
                    .set("batch.size", batch_bytes.to_string())
                    .create_with_context(ctx.clone())
                    .map_err(|e| format!("librdkafka producer: {e}"))?;
                // At most `window` sent and not yet acknowledged, as the delivery reports
                // taken so far say (polled every 64 sends, or when the window is full).
                let mut sent_count = 0u64;
                while Instant::now() < until {
                    let acked = ctx.1.load(Ordering::Relaxed);
                    if sent_count.saturating_sub(acked) >= window as u64 {
                        std::thread::sleep(POLL_WAIT);
                        continue;
                    }
                    let sent = ctx.0.base.elapsed().as_nanos() as usize;
                    let record = BaseRecord::with_opaque_to(&topic, sent)
                        .partition(partition)
                        .payload(&value[..]);
                    match producer.send::<[u8], [u8]>(record) {
                        Ok(()) => sent_count += 1,
                        Err(_) => std::thread::sleep(POLL_WAIT),
                    }
                }
                producer
                    .flush(Duration::from_secs(60))
                    .map_err(|e| format!("librdkafka flush: {e}"))
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "a librdkafka producer thread panicked".to_string())??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} messages were not delivered over Kafka"));
    }
    let latency = deliveries
        .latencies_us
        .lock()
        .map(|h| Percentiles::of(&h))
        .map_err(|_| "latency histogram poisoned".to_string())?;
    Ok(Figures::new(
        deliveries.acked.load(Ordering::Relaxed),
        elapsed,
        shape.message_bytes,
        latency,
    ))
}

/// Reads `topic`'s partitions from the start with a librdkafka consumer until `messages` came.
fn kafka_drain(kafka: &str, topic: &str, partitions: u32, messages: u64) -> Result<f64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", "keel-bench")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("librdkafka consumer: {e}"))?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p as i32, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&list).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut got = 0u64;
    let give_up = start + Duration::from_secs(120);
    while got < messages {
        if Instant::now() > give_up {
            return Err(format!("the Kafka drain read {got} of {messages} messages"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.payload().is_some() => got += 1,
            Some(Err(e)) => return Err(format!("librdkafka consume: {e}")),
            _ => {}
        }
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

/// Reads `topic`'s partitions from the start with Keel's client until `messages` came.
fn native_drain(server: &str, topic: &str, partitions: u32, messages: u64) -> Result<f64, String> {
    let client = crate::net_load::connect(server)?;
    let start = Instant::now();
    let mut got = 0u64;
    for p in 0..partitions {
        let mut offset = 0;
        loop {
            let options = keel_client::FetchOptions {
                max_bytes: 1 << 20,
                ..Default::default()
            };
            let f = client
                .fetch(topic, p, offset, options)
                .map_err(|e| format!("fetch: {e}"))?;
            got += f.messages(offset).map_err(|e| e.to_string())?.len() as u64;
            offset = f.next_offset;
            if f.at_end() {
                break;
            }
        }
    }
    if got < messages {
        return Err(format!(
            "the native drain read {got} of {messages} messages"
        ));
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

/// The whole comparison; prints a table and returns (native, Kafka) produce figures.
/// `batch_bytes` is librdkafka's `batch.size`.
pub fn run(
    server: &str,
    kafka: &str,
    seconds: f64,
    shape: &Shape,
    partitions: u32,
    batch_bytes: usize,
) -> Result<(Figures, Figures), String> {
    let run_id = std::process::id();
    let native_topic = format!("bench-native-{run_id}");
    let kafka_topic = format!("bench-kafka-{run_id}");
    server_suite::create_topic(server, &kafka_topic, partitions)?;
    let native =
        server_suite::produce_once(server, &native_topic, seconds, shape, partitions, None, 0)?;
    let over_kafka = kafka_produce(kafka, &kafka_topic, seconds, shape, partitions, batch_bytes)?;
    let native_drain = native_drain(server, &native_topic, partitions, native.messages)?;
    let kafka_drain = kafka_drain(kafka, &kafka_topic, partitions, over_kafka.messages)?;
    // Each run's topics take their segments' space: gone with the run.
    let client = crate::net_load::connect(server)?;
    for topic in [&native_topic, &kafka_topic] {
        client
            .delete_topic(topic)
            .map_err(|e| format!("delete topic {topic}: {e}"))?;
    }
    println!(
        "\n{} producers x {} messages of {} B in flight, one per call, {partitions} partitions, \
         acks after durability; librdkafka batch.size {batch_bytes}\n",
        shape.producers, shape.window, shape.message_bytes
    );
    println!("| path | produce msg/s | produce→ack p50 / p99 µs | drain msg/s |");
    println!("|---|---|---|---|");
    for (name, f, drain) in [
        ("Keel's protocol, Keel's producer", &native, native_drain),
        ("Kafka protocol, librdkafka", &over_kafka, kafka_drain),
    ] {
        println!(
            "| {name} | {:.0} | {} / {} | {drain:.0} |",
            f.msgs_per_s, f.latency_us.p50, f.latency_us.p99
        );
    }
    println!(
        "\nKafka / native: produce {:.2}x (target 0.8x), drain {:.2}x",
        over_kafka.msgs_per_s / native.msgs_per_s.max(1.0),
        kafka_drain / native_drain.max(1.0)
    );
    Ok((native, over_kafka))
}
