//! A consumer group while keeld runs: its members and, per partition, who holds which
//! message. Built from the durable state in the offset tables when first used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keel_engine::delivery::{DeliveryCounts, MemberId, PartitionDelivery};
use keel_engine::groups::{GroupStore, StoredGroup};

/// What metrics show of one partition of a group.
#[derive(Debug, Clone, Copy)]
pub struct PartitionMetrics {
    /// Every offset below it is acknowledged.
    pub committed: u64,
    /// Delivered, not yet acknowledged.
    pub in_flight: usize,
    /// New messages wait for the lowest unacknowledged one.
    pub window_full: bool,
    /// Deliveries, redeliveries, dead letters and window-full pauses so far.
    pub counts: DeliveryCounts,
}

/// One member of a group.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// The connection it joined on: it leaves when that closes.
    pub conn: u64,
    /// It leaves when it sends nothing for this long.
    pub session_timeout: Duration,
    /// Deliveries it may hold unacknowledged.
    pub max_unacked: usize,
    /// When it last sent something.
    pub last_seen: Instant,
}

/// A group in memory.
pub struct LiveGroup {
    /// Its durable part.
    pub stored: Arc<StoredGroup>,
    partitions: Vec<Mutex<PartitionDelivery>>,
    members: Mutex<HashMap<MemberId, Member>>,
    /// Bumped whenever something may have become deliverable (an append, an ack, a nack, a
    /// member leaving, a timeout), so a consume that found nothing can tell whether to look
    /// again before it waits.
    generation: AtomicU64,
    /// Consumes waiting for messages.
    pub parked: AtomicUsize,
    /// Where the next consume starts looking, so partitions take turns.
    cursor: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each guarded structure is changed by whole method calls that keep it consistent; a
    // panic inside one (a bug) is not a reason to stop serving the group.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LiveGroup {
    /// Builds the group's delivery state from its durable acknowledgements.
    pub fn load(store: &GroupStore, stored: Arc<StoredGroup>) -> Self {
        let max = stored.settings.max_deliveries;
        let partitions = (0..stored.partitions())
            .map(|p| Mutex::new(PartitionDelivery::new(store.load(&stored, p), max)))
            .collect();
        Self {
            stored,
            partitions,
            members: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Partition count.
    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The delivery state of `partition` (which must exist).
    pub fn partition(&self, partition: u32) -> Option<MutexGuard<'_, PartitionDelivery>> {
        self.partitions.get(partition as usize).map(lock)
    }

    /// The members.
    pub fn members(&self) -> MutexGuard<'_, HashMap<MemberId, Member>> {
        lock(&self.members)
    }

    /// Marks the member as alive; false if it is not a member (any more).
    pub fn touch(&self, member: MemberId) -> bool {
        match self.members().get_mut(&member) {
            Some(m) => {
                m.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Removes `member`; what it held is due for redelivery now.
    pub fn remove_member(&self, member: MemberId) -> bool {
        if self.members().remove(&member).is_none() {
            return false;
        }
        let now = Instant::now();
        for p in &self.partitions {
            lock(p).member_left(member, now);
        }
        self.changed();
        true
    }

    /// Deliveries `member` holds over all partitions.
    pub fn held_by(&self, member: MemberId) -> usize {
        self.partitions
            .iter()
            .map(|p| lock(p).in_flight_of(member))
            .sum()
    }

    /// The partition a consume starts at.
    pub fn next_start(&self) -> u32 {
        (self.cursor.fetch_add(1, Ordering::Relaxed) % self.partitions.len().max(1)) as u32
    }

    /// Something may have become deliverable.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The current generation (see [`LiveGroup::changed`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Removes every member `leaves` picks, logging `why`; returns whether any left.
    pub fn remove_members(&self, leaves: impl Fn(&Member) -> bool, why: &str) -> bool {
        let gone: Vec<MemberId> = self
            .members()
            .iter()
            .filter(|(_, m)| leaves(m))
            .map(|(&id, _)| id)
            .collect();
        let mut any = false;
        for id in gone {
            if self.remove_member(id) {
                log::info!(
                    "group {:?} on {}: member {id} left ({why})",
                    self.stored.group,
                    self.stored.topic
                );
                any = true;
            }
        }
        any
    }

    /// Expires sessions and ack deadlines; returns whether anything became deliverable.
    pub fn expire(&self, now: Instant) -> bool {
        let mut any = self.remove_members(
            |m| now.duration_since(m.last_seen) > m.session_timeout,
            "session timed out",
        );
        for p in &self.partitions {
            let mut d = lock(p);
            if d.expire(now) > 0 || d.has_due(now) {
                any = true;
            }
        }
        if any {
            self.changed();
        }
        any
    }

    /// Per partition, what metrics show of it.
    pub fn partition_metrics(&self) -> Vec<PartitionMetrics> {
        self.partitions
            .iter()
            .map(|p| {
                let d = lock(p);
                PartitionMetrics {
                    committed: d.acks().committed,
                    in_flight: d.in_flight(),
                    window_full: d.window_full(),
                    counts: d.counts(),
                }
            })
            .collect()
    }

    /// Committed offsets per partition.
    pub fn committed(&self) -> Vec<u64> {
        self.partitions
            .iter()
            .map(|p| lock(p).acks().committed)
            .collect()
    }
}
