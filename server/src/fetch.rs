//! Fetch, with long polling: a fetch that finds no data and may wait is parked by the shard
//! owning its partition until a flush makes more of it durable or its wait runs out
//! ([`Engine::read_waiting`]).

use std::time::Instant;

use keel_engine::{Engine, EngineError, ReadResult};

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
    /// The shard budget taken for this fetch, held until it is answered (a waiting fetch
    /// included: that bounds what waits on a shard).
    pub shard_hold: Option<BudgetHold>,
}

/// Issues `fetch`; it is answered through its reply, now or once data arrives.
pub fn fetch(engine: &Engine, fetch: Fetch) {
    let Fetch {
        topic,
        partition,
        offset,
        max_bytes,
        deadline,
        reply,
        shard_hold,
    } = fetch;
    let answer = move |result: Result<ReadResult, EngineError>| {
        drop(shard_hold);
        match result {
            Ok(res) => reply.fetched(res),
            Err(e) => reply.engine_error(&e),
        }
    };
    match deadline {
        Some(until) => engine.read_waiting(&topic, partition, offset, max_bytes, until, answer),
        None => engine.read(&topic, partition, offset, max_bytes, answer),
    }
}
