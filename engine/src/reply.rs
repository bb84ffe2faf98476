//! Waiting for a shard's reply, where the engine's caller may wait (creating and deleting
//! topics, loading groups, the `_wait` calls). In keeld that is a plain blocking receive.
//! Under the deterministic simulator the shards run only when the simulator gives them a turn,
//! and the thread that waits here is the one driving them: it gives the turns itself until
//! the reply is there, so the wait stays deterministic.

use crossbeam_channel::{Receiver, RecvError};

/// The reply on `rx`; fails once the shard is gone without answering.
#[cfg(not(feature = "testing"))]
pub(crate) fn wait_reply<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    rx.recv()
}

/// The reply on `rx`; fails once the shard is gone without answering.
#[cfg(feature = "testing")]
pub(crate) fn wait_reply<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    match crate::simulation::driven_here() {
        Some(sim) => sim
            .run_until(|| match rx.try_recv() {
                Ok(v) => Some(Ok(v)),
                Err(crossbeam_channel::TryRecvError::Empty) => None,
                Err(crossbeam_channel::TryRecvError::Disconnected) => Some(Err(RecvError)),
            })
            .unwrap_or(Err(RecvError)),
        None => rx.recv(),
    }
}
