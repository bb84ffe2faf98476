//! Serving connections from the engine's shards themselves (`--net shard`): each shard hosts
//! a share of the connections on its own thread and ring ([`keel_engine::guest`]). A request
//! for a partition the connection's shard owns is handled without any thread hop, and the
//! shard waits for socket and disk completions in one place.
//!
//! What makes this safe on a shard thread (see `docs/OPERATIONS.md`): engine calls from a
//! shard never block; shard budgets are never waited for (a connection whose request does not
//! fit is parked until bytes come back); topic administration, which waits for every shard,
//! runs on the administration thread.

use std::io;
use std::sync::Arc;

use keel_engine::guest::{GuestEntry, GuestRing, ShardGuest};
use keel_engine::{Engine, EngineError};

use crate::conn_limits::ConnLimits;
use crate::handler::Handler;
use crate::ring_conns::{Conns, Inbox, Submit};

/// The connections one shard hosts.
struct ShardNet {
    conns: Conns,
}

/// A shard's ring, as the connections see it.
struct HostRing<'a>(&'a mut dyn GuestRing);

impl Submit for HostRing<'_> {
    unsafe fn submit(&mut self, entry: GuestEntry, token: u64) {
        // SAFETY: Submit::submit's contract is GuestRing::push's.
        unsafe { self.0.push(entry, token) };
    }

    fn cancel(&mut self, token: u64) {
        self.0.cancel(token);
    }
}

impl ShardGuest for ShardNet {
    fn turn(&mut self, ring: &mut dyn GuestRing) {
        self.conns.turn(&mut HostRing(ring));
    }

    fn complete(&mut self, token: u64, result: io::Result<usize>, ring: &mut dyn GuestRing) {
        let res = match result {
            Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        };
        self.conns.complete(token, res, &mut HostRing(ring));
    }

    fn has_work(&self) -> bool {
        self.conns.has_work()
    }

    fn idle(&self) -> bool {
        self.conns.idle()
    }
}

/// Hosts connection serving on every shard of `engine`; returns the inboxes, one per shard.
/// Fails with [`EngineError::CannotHost`] when the engine's backend has no ring to share.
pub fn host(
    engine: &Engine,
    handler: &Arc<Handler>,
    limits: &Arc<ConnLimits>,
) -> Result<Vec<Arc<Inbox>>, EngineError> {
    let mut inboxes = Vec::new();
    for shard in 0..engine.config().shards {
        let waker = engine
            .shard_waker(shard)
            .ok_or(EngineError::CannotHost("no such shard"))?;
        let inbox = Inbox::new(handler, waker, true);
        let conns = Conns::new(Arc::clone(&inbox), Arc::clone(limits));
        engine.host(shard, Box::new(ShardNet { conns }))?;
        inboxes.push(inbox);
    }
    Ok(inboxes)
}
