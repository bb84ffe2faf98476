//! Fetch, with long polling: a fetch that finds no data and may wait is parked until a produce
//! to its partition completes or its wait runs out.
//!
//! Why no update is missed: a parked fetch's empty read and every later append of its
//! partition are answered on the same shard thread, in order, and both send on the same
//! channel to the parker. So the parker always sees "park" before the "appended" that should
//! wake it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use keel_engine::{Engine, EngineError, ReadResult};
use keel_protocol::Response;

use crate::budget::BudgetHold;
use crate::reply::Reply;

/// One fetch request on its way.
pub struct Fetch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Byte budget of the answer.
    pub max_bytes: usize,
    /// Until when to wait for data; `None` answers at once.
    pub deadline: Option<Instant>,
    /// Where the answer goes.
    pub reply: Reply,
    /// The shard budget taken for this fetch.
    pub shard_hold: Option<BudgetHold>,
}

enum Event {
    Park(Fetch, ReadResult),
    Appended { topic: String, partition: u32 },
    Stop,
}

/// Long-poll bookkeeping shared by connections and shard callbacks.
pub struct LongPoll {
    /// Weak, so that the server holds the only strong reference and can shut the engine down.
    engine: Weak<Engine>,
    tx: Sender<Event>,
    /// Fetches that may wait and are not answered yet; produces only report appends when
    /// this is non-zero.
    waiting: AtomicUsize,
}

impl LongPoll {
    /// Starts the parker thread.
    pub fn start(engine: &Arc<Engine>) -> std::io::Result<(Arc<Self>, JoinHandle<()>)> {
        let (tx, rx) = unbounded();
        let this = Arc::new(Self {
            engine: Arc::downgrade(engine),
            tx,
            waiting: AtomicUsize::new(0),
        });
        let parker = Arc::clone(&this);
        let thread = std::thread::Builder::new()
            .name("keel-long-poll".into())
            .spawn(move || parker.run(&rx))?;
        Ok((this, thread))
    }

    /// Issues a fetch; it is answered through its reply, now or once data arrives.
    pub fn fetch(self: &Arc<Self>, fetch: Fetch) {
        if fetch.deadline.is_some() {
            self.waiting.fetch_add(1, Ordering::AcqRel);
        }
        self.read(fetch);
    }

    fn read(self: &Arc<Self>, fetch: Fetch) {
        let Some(engine) = self.engine.upgrade() else {
            self.answer(fetch, Err(EngineError::ShuttingDown));
            return;
        };
        let this = Arc::clone(self);
        let (topic, partition, offset, max_bytes) = (
            fetch.topic.clone(),
            fetch.partition,
            fetch.offset,
            fetch.max_bytes,
        );
        engine.read(&topic, partition, offset, max_bytes, move |r| match r {
            Ok(res)
                if res.data.is_empty() && fetch.deadline.is_some_and(|d| Instant::now() < d) =>
            {
                // The parker outlives every shard callback, and a send to it only fails
                // once it stopped, when the fetch is answered as it is dropped below.
                if let Err(e) = this.tx.send(Event::Park(fetch, res)) {
                    if let Event::Park(fetch, res) = e.0 {
                        this.answer(fetch, Ok(res));
                    }
                }
            }
            other => this.answer(fetch, other),
        });
    }

    fn answer(&self, fetch: Fetch, result: Result<ReadResult, EngineError>) {
        if fetch.deadline.is_some() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        drop(fetch.shard_hold);
        match result {
            Ok(res) => fetch.reply.ok(&Response::Fetch {
                high_watermark: res.high_watermark,
                next_offset: res.next_offset,
                batches: &res.data,
            }),
            Err(e) => fetch.reply.engine_error(&e),
        }
    }

    /// Called when an append to the partition became durable: wakes fetches parked on it.
    pub fn appended(&self, topic: &str, partition: u32) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            let _ = self.tx.send(Event::Appended {
                topic: topic.to_string(),
                partition,
            });
        }
    }

    /// Answers every parked fetch with what it has and ends the parker thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Event::Stop);
    }

    fn run(self: &Arc<Self>, rx: &Receiver<Event>) {
        let mut parked: HashMap<(String, u32), Vec<(Fetch, ReadResult)>> = HashMap::new();
        loop {
            let next_deadline = parked
                .values()
                .flatten()
                .filter_map(|(f, _)| f.deadline)
                .min();
            let wait = next_deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(Event::Park(fetch, res)) => parked
                    .entry((fetch.topic.clone(), fetch.partition))
                    .or_default()
                    .push((fetch, res)),
                Ok(Event::Appended { topic, partition }) => {
                    for (fetch, _) in parked.remove(&(topic, partition)).unwrap_or_default() {
                        self.read(fetch);
                    }
                }
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            for list in parked.values_mut() {
                let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(list)
                    .into_iter()
                    .partition(|(f, _)| f.deadline.is_none_or(|d| d <= now));
                *list = keep;
                for (fetch, res) in due {
                    self.answer(fetch, Ok(res));
                }
            }
            parked.retain(|_, list| !list.is_empty());
        }
        for (fetch, res) in parked.into_values().flatten() {
            self.answer(fetch, Ok(res));
        }
    }
}
