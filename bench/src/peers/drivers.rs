//! The peer drivers proper: one tokio runtime per measurement, one connection per publisher or
//! consumer, latency measured as Keel's load generator measures it (a waiter per publisher
//! awaits confirms in order, a window of permits bounds what is unconfirmed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};

use super::{Peer, PeerAddrs, PeerBacklog, PeerLoad};
use crate::figures::{latency_histogram, record, Figures, Percentiles};

/// The longest a drain may take before it is reported as failed.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))
}

pub fn produce(peer: Peer, addrs: &PeerAddrs, load: &PeerLoad) -> Result<Figures, String> {
    runtime()?.block_on(async {
        let target = Target::prepare(peer, addrs, "keel-bench-produce").await?;
        let out = publish_for(&target, load).await;
        target.remove().await;
        out
    })
}

pub fn drain(peer: Peer, addrs: &PeerAddrs, backlog: &PeerBacklog) -> Result<Figures, String> {
    runtime()?.block_on(async {
        let target = Target::prepare(peer, addrs, "keel-bench-drain").await?;
        let out = fill_and_drain(&target, backlog).await;
        target.remove().await;
        out
    })
}

/// A fresh queue or stream on one peer.
#[derive(Clone)]
struct Target {
    peer: Peer,
    addrs: PeerAddrs,
    name: String,
}

/// One publishing connection.
enum Publisher {
    Rabbit(lapin::Connection, lapin::Channel),
    Nats(async_nats::jetstream::Context),
}

/// A publish sent and not yet confirmed.
enum Confirm {
    Rabbit(lapin::PublisherConfirm),
    Nats(async_nats::jetstream::context::PublishAckFuture),
}

impl Confirm {
    async fn wait(self) -> Result<(), String> {
        match self {
            Confirm::Rabbit(c) => match c.await {
                Ok(c) if c.is_ack() => Ok(()),
                Ok(_) => Err("RabbitMQ refused a publish (nack)".into()),
                Err(e) => Err(format!("RabbitMQ confirm: {e}")),
            },
            Confirm::Nats(c) => c
                .await
                .map(|_| ())
                .map_err(|e| format!("JetStream publish ack: {e}")),
        }
    }
}

async fn rabbit_channel(addrs: &PeerAddrs) -> Result<(lapin::Connection, lapin::Channel), String> {
    let conn = lapin::Connection::connect(&addrs.rabbitmq, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to RabbitMQ at {}: {e}", addrs.rabbitmq))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| format!("RabbitMQ channel: {e}"))?;
    Ok((conn, channel))
}

async fn nats_stream(addrs: &PeerAddrs) -> Result<async_nats::jetstream::Context, String> {
    let client = async_nats::connect(&addrs.nats)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", addrs.nats))?;
    Ok(async_nats::jetstream::new(client))
}

impl Target {
    /// Deletes what an earlier run may have left and creates the queue or stream afresh.
    async fn prepare(peer: Peer, addrs: &PeerAddrs, name: &str) -> Result<Self, String> {
        let name = match peer {
            Peer::RabbitQuorum => format!("{name}-quorum"),
            Peer::RabbitClassic => format!("{name}-classic"),
            // Stream names may not contain dots; subjects follow the name.
            Peer::NatsJetStream => name.replace('-', "_").to_uppercase(),
        };
        let target = Self {
            peer,
            addrs: addrs.clone(),
            name,
        };
        target.remove().await;
        match peer {
            Peer::RabbitQuorum | Peer::RabbitClassic => {
                let (conn, channel) = rabbit_channel(addrs).await?;
                let mut args = lapin::types::FieldTable::default();
                if peer == Peer::RabbitQuorum {
                    args.insert(
                        "x-queue-type".into(),
                        lapin::types::AMQPValue::LongString("quorum".into()),
                    );
                }
                channel
                    .queue_declare(
                        target.name.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        args,
                    )
                    .await
                    .map_err(|e| format!("declare {}: {e}", target.name))?;
                let _ = conn.close(200, "declared".into()).await;
            }
            Peer::NatsJetStream => {
                let js = nats_stream(addrs).await?;
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: target.name.clone(),
                    subjects: vec![target.name.clone()],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("create stream {}: {e}", target.name))?;
            }
        }
        Ok(target)
    }

    /// Deletes the queue or stream (errors ignored: it may not exist).
    async fn remove(&self) {
        match self.peer {
            Peer::RabbitQuorum | Peer::RabbitClassic => {
                if let Ok((conn, channel)) = rabbit_channel(&self.addrs).await {
                    let _ = channel
                        .queue_delete(self.name.as_str().into(), Default::default())
                        .await;
                    let _ = conn.close(200, "deleted".into()).await;
                }
            }
            Peer::NatsJetStream => {
                if let Ok(js) = nats_stream(&self.addrs).await {
                    let _ = js.delete_stream(&self.name).await;
                }
            }
        }
    }

    async fn publisher(&self) -> Result<Publisher, String> {
        match self.peer {
            Peer::RabbitQuorum | Peer::RabbitClassic => {
                let (conn, channel) = rabbit_channel(&self.addrs).await?;
                channel
                    .confirm_select(Default::default())
                    .await
                    .map_err(|e| format!("confirm_select: {e}"))?;
                Ok(Publisher::Rabbit(conn, channel))
            }
            Peer::NatsJetStream => Ok(Publisher::Nats(nats_stream(&self.addrs).await?)),
        }
    }

    async fn publish(&self, p: &Publisher, payload: &bytes::Bytes) -> Result<Confirm, String> {
        match p {
            Publisher::Rabbit(_, channel) => channel
                .basic_publish(
                    "".into(),
                    self.name.as_str().into(),
                    Default::default(),
                    payload,
                    // Persistent (delivery mode 2), as a durable queue needs to keep it.
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map(Confirm::Rabbit)
                .map_err(|e| format!("RabbitMQ publish: {e}")),
            Publisher::Nats(js) => js
                .publish(self.name.clone(), payload.clone())
                .await
                .map(Confirm::Nats)
                .map_err(|e| format!("JetStream publish: {e}")),
        }
    }
}

/// One publisher: sends while `keep_going` says so, with at most `window` unconfirmed; returns
/// the confirmed count and latency histogram.
async fn publisher_task(
    target: Arc<Target>,
    publisher: Publisher,
    window: usize,
    payload: bytes::Bytes,
    keep_going: impl Fn(u64) -> bool,
) -> Result<(u64, hdrhistogram::Histogram<u64>), String> {
    let permits = Arc::new(Semaphore::new(window.max(1)));
    let (tx, mut rx) =
        mpsc::unbounded_channel::<(Instant, Confirm, tokio::sync::OwnedSemaphorePermit)>();
    let waiter = tokio::spawn(async move {
        let mut hist = latency_histogram()?;
        let mut confirmed = 0u64;
        while let Some((sent, confirm, permit)) = rx.recv().await {
            confirm.wait().await?;
            record(&mut hist, sent.elapsed().as_micros() as u64, 1);
            confirmed += 1;
            drop(permit);
        }
        Ok::<_, String>((confirmed, hist))
    });
    let mut sent = 0u64;
    let mut failed = None;
    while keep_going(sent) {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        match target.publish(&publisher, &payload).await {
            Ok(confirm) => {
                if tx.send((Instant::now(), confirm, permit)).is_err() {
                    break;
                }
                sent += 1;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let waited = waiter
        .await
        .map_err(|e| format!("a confirm waiter failed: {e}"))?;
    if let Publisher::Rabbit(conn, _) = publisher {
        let _ = conn.close(200, "done".into()).await;
    }
    match failed {
        Some(e) => Err(e),
        None => waited,
    }
}

async fn publish_for(target: &Target, load: &PeerLoad) -> Result<Figures, String> {
    let target = Arc::new(target.clone());
    let mut publishers = Vec::new();
    for _ in 0..load.publishers {
        publishers.push(target.publisher().await?);
    }
    let payload = bytes::Bytes::from(vec![0x6bu8; load.message_bytes]);
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(load.seconds);
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|p| {
            tokio::spawn(publisher_task(
                target.clone(),
                p,
                load.window,
                payload.clone(),
                move |_| Instant::now() < stop_at,
            ))
        })
        .collect();
    let mut messages = 0;
    let mut hist = latency_histogram()?;
    for t in tasks {
        let (n, h) = t.await.map_err(|e| format!("a publisher failed: {e}"))??;
        messages += n;
        hist.add(&h).map_err(|e| e.to_string())?;
    }
    Ok(Figures::new(
        messages,
        start.elapsed().as_secs_f64(),
        load.message_bytes,
        Percentiles::of(&hist),
    ))
}

async fn fill_and_drain(target: &Target, b: &PeerBacklog) -> Result<Figures, String> {
    let shared = Arc::new(target.clone());
    // The backlog: 4 publishers share the count, 256 unconfirmed each.
    let claimed = Arc::new(AtomicU64::new(0));
    let payload = bytes::Bytes::from(vec![0x78u8; b.message_bytes]);
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let p = shared.publisher().await?;
        let claimed = claimed.clone();
        let total = b.messages;
        fillers.push(tokio::spawn(publisher_task(
            shared.clone(),
            p,
            256,
            payload.clone(),
            move |_| claimed.fetch_add(1, Ordering::Relaxed) < total,
        )));
    }
    let mut filled = 0;
    for f in fillers {
        filled += f.await.map_err(|e| format!("a filler failed: {e}"))??.0;
    }
    if filled != b.messages {
        return Err(format!("filled {filled} of {} messages", b.messages));
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut consumers = Vec::new();
    for i in 0..b.consumers.max(1) {
        consumers.push(tokio::spawn(consume_until(
            shared.clone(),
            i,
            done.clone(),
            b.messages,
        )));
    }
    for c in consumers {
        c.await.map_err(|e| format!("a consumer failed: {e}"))??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let got = done.load(Ordering::Acquire);
    if got < b.messages {
        return Err(format!("drained {got} of {} messages", b.messages));
    }
    Ok(Figures::new(
        b.messages,
        seconds,
        b.message_bytes,
        Percentiles::default(),
    ))
}

/// Consumes and acknowledges each message on its own until `done` reaches `total`.
async fn consume_until(
    target: Arc<Target>,
    index: usize,
    done: Arc<AtomicU64>,
    total: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let finished = || done.load(Ordering::Acquire) >= total || Instant::now() > deadline;
    match target.peer {
        Peer::RabbitQuorum | Peer::RabbitClassic => {
            let (conn, channel) = rabbit_channel(&target.addrs).await?;
            channel
                .basic_qos(256, Default::default())
                .await
                .map_err(|e| format!("basic_qos: {e}"))?;
            let mut consumer = channel
                .basic_consume(
                    target.name.as_str().into(),
                    format!("keel-bench-{index}").into(),
                    Default::default(),
                    Default::default(),
                )
                .await
                .map_err(|e| format!("basic_consume: {e}"))?;
            let drained = ack_each(
                &mut consumer,
                &finished,
                &done,
                |d: lapin::message::Delivery| async move {
                    d.ack(Default::default())
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("RabbitMQ ack: {e}"))
                },
            )
            .await;
            let _ = conn.close(200, "drained".into()).await;
            drained?;
        }
        Peer::NatsJetStream => {
            use async_nats::jetstream::consumer::{pull, AckPolicy};
            let js = nats_stream(&target.addrs).await?;
            let stream = js
                .get_stream(&target.name)
                .await
                .map_err(|e| format!("get stream {}: {e}", target.name))?;
            let consumer = stream
                .get_or_create_consumer(
                    "drain",
                    pull::Config {
                        durable_name: Some("drain".into()),
                        ack_policy: AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("create consumer: {e}"))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| format!("JetStream pull: {e}"))?;
            ack_each(
                &mut messages,
                &finished,
                &done,
                |m: async_nats::jetstream::Message| async move {
                    m.ack().await.map_err(|e| format!("JetStream ack: {e}"))
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// Takes deliveries from `stream` and acknowledges each on its own with `ack`, counting them in
/// `done`, until `finished` says so or the stream ends.
async fn ack_each<S, T, E, A, F>(
    stream: &mut S,
    finished: &(dyn Fn() -> bool + Sync),
    done: &AtomicU64,
    ack: A,
) -> Result<(), String>
where
    S: futures_util::Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Display,
    A: Fn(T) -> F,
    F: std::future::Future<Output = Result<(), String>>,
{
    while !finished() {
        // A bounded wait, so that `finished` is looked at even when nothing comes.
        let Ok(next) = tokio::time::timeout(Duration::from_millis(100), stream.next()).await else {
            continue;
        };
        let Some(delivery) = next else { break };
        ack(delivery.map_err(|e| format!("delivery: {e}"))?).await?;
        done.fetch_add(1, Ordering::AcqRel);
    }
    Ok(())
}
