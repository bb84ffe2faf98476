//! Per-message delivery for one (group, partition): which offset goes to which member, what
//! is redelivered and when, and when a message is dead-lettered. Pure state, no I/O and no
//! clock of its own (callers pass `now`), so every rule is testable; the acknowledgement state
//! it keeps is the part stored durably in the offset tables ([`crate::offsets`]).
//!
//! Rules (`docs/CONSUMERS.md` will spell them out for users):
//! - a message is delivered to one member at a time and stays in flight until acknowledged;
//! - it is redelivered, marked as such with its delivery count, when its member leaves, its
//!   ack deadline passes, or its member nacks it (after an optional delay);
//! - a message due for a delivery beyond `max_deliveries` is handed back for dead-lettering
//!   instead; the caller copies it to the dead-letter topic, then acknowledges it;
//! - new offsets are delivered only within the ack window above the committed offset.

use std::collections::{BTreeMap, HashMap};

use std::time::{Duration, Instant};

use crate::in_flight::OffsetDeque;
use crate::offsets::{AckState, WINDOW};

/// How long a redelivery waits for another member before the member that had it may take
/// it back (see [`PartitionDelivery::next`]).
pub const HAND_OFF: Duration = Duration::from_secs(1);

/// A member of a group, as the caller numbers them.
pub type MemberId = u64;

/// One message handed to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Its offset.
    pub offset: u64,
    /// 1 on the first delivery.
    pub delivery_count: u32,
}

impl Delivery {
    /// Whether it was delivered before.
    pub fn redelivered(&self) -> bool {
        self.delivery_count > 1
    }
}

/// What [`PartitionDelivery::next`] hands out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Messages for the member.
    pub deliveries: Vec<Delivery>,
    /// Offsets that were delivered `max_deliveries` times without an ack: copy each to the
    /// dead-letter topic, then [`PartitionDelivery::ack`] it. (Until acknowledged it is
    /// neither in flight nor due: if the copy fails, a restart delivers it again.)
    pub dead_letters: Vec<u64>,
    /// New messages wait because the ack window is full (the lowest unacknowledged message
    /// holds it back): worth a metric.
    pub window_full: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    member: MemberId,
    deadline: Instant,
    count: u32,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    ready_at: Instant,
    count: u32,
    /// The member that had it (timed out or nacked): while others are there, it goes to one
    /// of them first.
    from: Option<MemberId>,
}

/// What one (group, partition) handed out since it was loaded, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Messages handed to members, first deliveries and redeliveries.
    pub deliveries: u64,
    /// Of those, redeliveries.
    pub redeliveries: u64,
    /// Messages sent to the dead-letter topic after `max_deliveries`.
    pub dead_letters: u64,
    /// Times new messages were held back because the ack window was full.
    pub window_full_pauses: u64,
}

/// Delivery state of one (group, partition).
#[derive(Debug)]
pub struct PartitionDelivery {
    acks: AckState,
    /// The lowest offset never delivered since this state was built.
    next_new: u64,
    /// Within the ack window, always: no lower than the committed offset, and new offsets
    /// are delivered only below `committed + WINDOW`.
    in_flight: OffsetDeque<InFlight>,
    redeliver: BTreeMap<u64, Waiting>,
    /// Messages in flight per member (the prefetch limit is checked per request).
    held: HashMap<MemberId, usize>,
    /// Deliveries that left flight since [`Self::take_released`] was last called, per member:
    /// what a caller counting each member's deliveries over many partitions gives back.
    released: HashMap<MemberId, usize>,
    max_deliveries: u32,
    counts: DeliveryCounts,
}

impl PartitionDelivery {
    /// Starts from durable acknowledgement state (after a restart: every offset it does not
    /// show acknowledged is delivered again, as a first delivery of this run).
    pub fn new(acks: AckState, max_deliveries: u32) -> Self {
        Self {
            next_new: acks.committed,
            acks,
            in_flight: OffsetDeque::default(),
            redeliver: BTreeMap::new(),
            held: HashMap::new(),
            released: HashMap::new(),
            max_deliveries: max_deliveries.max(1),
            counts: DeliveryCounts::default(),
        }
    }

    /// What was handed out since this state was built.
    pub fn counts(&self) -> DeliveryCounts {
        self.counts
    }

    /// Messages delivered and not yet acknowledged (or given back).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the ack window is full: no new message is delivered until the lowest
    /// unacknowledged one is acknowledged.
    pub fn window_full(&self) -> bool {
        self.next_new >= self.acks.committed + WINDOW as u64
    }

    /// The acknowledgement state to store durably.
    pub fn acks(&self) -> &AckState {
        &self.acks
    }

    /// Messages `member` holds unacknowledged (for its prefetch limit).
    #[cfg(any(test, feature = "testing"))]
    pub fn in_flight_of(&self, member: MemberId) -> usize {
        self.held.get(&member).copied().unwrap_or(0)
    }

    /// The lowest offset [`Self::next`] could hand out at `now`: where a read for it starts.
    pub fn next_wanted(&self, now: Instant) -> u64 {
        self.redeliver
            .iter()
            .find(|(_, w)| w.ready_at <= now)
            .map_or(self.next_new, |(&o, _)| o.min(self.next_new))
    }

    /// Whether a redelivery is due at `now`.
    pub fn has_due(&self, now: Instant) -> bool {
        self.redeliver.values().any(|w| w.ready_at <= now)
    }

    fn take_in_flight(&mut self, offset: u64) -> Option<InFlight> {
        let f = self.in_flight.remove(offset)?;
        if let Some(n) = self.held.get_mut(&f.member) {
            assert!(*n > 0, "a member holds what it was handed");
            *n -= 1;
            if *n == 0 {
                self.held.remove(&f.member);
            }
        }
        *self.released.entry(f.member).or_insert(0) += 1;
        Some(f)
    }

    /// Per member, the deliveries that left flight (acknowledged, given back, redelivered,
    /// dead-lettered) since the last call.
    pub fn take_released(&mut self) -> HashMap<MemberId, usize> {
        std::mem::take(&mut self.released)
    }

    /// Whether any delivery left flight since [`Self::take_released`] was last called.
    pub fn has_released(&self) -> bool {
        !self.released.is_empty()
    }

    /// The earliest moment something held here comes due by itself: an ack deadline, or a
    /// nacked message's delay (its hand-off second included), if any.
    pub fn next_due(&self) -> Option<Instant> {
        let deadlines = self.in_flight.iter().map(|(_, f)| f.deadline);
        let ready = self.redeliver.values().map(|w| {
            if w.from.is_some() {
                w.ready_at + HAND_OFF
            } else {
                w.ready_at
            }
        });
        deadlines.chain(ready).min()
    }

    /// Up to `max` messages for `member`, all below `end` (at most the log's high watermark):
    /// due redeliveries first (lowest offset first), then new offsets, each due back by
    /// `now + ack_timeout`. With `others`
    /// (the group has other members), a message that timed out or was nacked is not handed
    /// back to the member that had it until [`HAND_OFF`] after it came due, so another member
    /// gets it first if one asks; after that anyone may take it, so it never waits for a
    /// member that does not come.
    pub fn next(
        &mut self,
        member: MemberId,
        others: bool,
        max: usize,
        end: u64,
        now: Instant,
        ack_timeout: Duration,
    ) -> Batch {
        let mut batch = Batch::default();
        let kept_from =
            |w: &Waiting| others && w.from == Some(member) && now < w.ready_at + HAND_OFF;
        let due: Vec<(u64, Waiting)> = self
            .redeliver
            .range(..end)
            .filter(|(_, w)| w.ready_at <= now && !kept_from(w))
            .map(|(&o, &w)| (o, w))
            .collect();
        for (offset, waiting) in due {
            if batch.deliveries.len() >= max {
                return batch;
            }
            self.redeliver.remove(&offset);
            if waiting.count >= self.max_deliveries {
                batch.dead_letters.push(offset);
                continue;
            }
            self.hand_out(
                &mut batch,
                member,
                offset,
                waiting.count + 1,
                now + ack_timeout,
            );
        }
        while batch.deliveries.len() < max && self.next_new < end {
            let offset = self.next_new;
            if offset >= self.acks.committed + WINDOW as u64 {
                batch.window_full = true;
                self.counts.window_full_pauses += 1;
                break;
            }
            self.next_new += 1;
            if self.acks.is_acked(offset) {
                continue;
            }
            self.hand_out(&mut batch, member, offset, 1, now + ack_timeout);
        }
        batch
    }

    fn hand_out(
        &mut self,
        batch: &mut Batch,
        member: MemberId,
        offset: u64,
        count: u32,
        deadline: Instant,
    ) {
        // The delivery rules, checked where they act: a message is with one member at a time,
        // and nothing acknowledged is handed out.
        assert!(
            offset >= self.acks.committed,
            "{offset} is below the committed offset"
        );
        assert!(!self.acks.is_acked(offset), "{offset} is acknowledged");
        assert!(
            !self.redeliver.contains_key(&offset),
            "{offset} is also waiting"
        );
        let before = self.in_flight.insert(
            offset,
            InFlight {
                member,
                deadline,
                count,
            },
        );
        assert!(before.is_none(), "{offset} was in flight already");
        *self.held.entry(member).or_insert(0) += 1;
        self.counts.deliveries += 1;
        if count > 1 {
            self.counts.redeliveries += 1;
        }
        batch.deliveries.push(Delivery {
            offset,
            delivery_count: count,
        });
    }

    /// Acknowledges `offset` (from whichever member: a late ack after a redelivery still means
    /// the message was processed). Returns false for an offset never delivered, which an ack
    /// cannot skip over.
    pub fn ack(&mut self, offset: u64) -> bool {
        if offset >= self.next_new {
            return false;
        }
        self.take_in_flight(offset);
        self.redeliver.remove(&offset);
        self.acks.ack(offset)
    }

    #[cfg(any(test, feature = "testing"))]
    /// Acknowledges `first..=last`, skipping what is acknowledged already or was never
    /// delivered (so a huge span costs no more than the ack window); returns how many offsets
    /// it acknowledged.
    pub fn ack_span(&mut self, first: u64, last: u64) -> usize {
        self.ack_spans([(first, last)])
    }

    /// [`Self::ack_span`] for many spans, moving the committed offset once at the end (an ack
    /// request may name each message on its own).
    pub fn ack_spans(&mut self, spans: impl IntoIterator<Item = (u64, u64)>) -> usize {
        let mut n = 0;
        for (first, last) in spans {
            let from = first.max(self.acks.committed);
            let to = last.min(self.next_new.saturating_sub(1));
            if self.next_new == 0 || from > to {
                continue;
            }
            for o in from..=to {
                if !self.acks.is_acked(o) {
                    self.take_in_flight(o);
                    self.redeliver.remove(&o);
                    if self.acks.mark(o) {
                        n += 1;
                    }
                }
            }
        }
        if n > 0 {
            self.acks.advance();
        }
        n
    }

    /// The log no longer holds anything below `start` (retention dropped it), so nothing
    /// below it can be delivered again: it counts as acknowledged. Returns how many of those
    /// offsets had not been acknowledged.
    pub fn skip_below(&mut self, start: u64) -> u64 {
        let gone: Vec<u64> = self
            .in_flight
            .iter()
            .map(|(o, _)| o)
            .take_while(|&o| o < start)
            .collect();
        for o in gone {
            self.take_in_flight(o);
        }
        self.redeliver.retain(|&o, _| o >= start);
        self.next_new = self.next_new.max(start);
        self.acks.skip_to(start)
    }

    /// `offset` was copied to the dead-letter topic: it counts as acknowledged.
    pub fn dead_lettered(&mut self, offset: u64) {
        if self.ack(offset) {
            self.counts.dead_letters += 1;
        }
    }

    /// [`Self::nack`] for `first..=last`, bounded as [`Self::ack_span`] is.
    pub fn nack_span(
        &mut self,
        member: MemberId,
        first: u64,
        last: u64,
        delay: Duration,
        now: Instant,
    ) {
        let held: Vec<u64> = self
            .in_flight
            .range(first, last)
            .filter(|(_, f)| f.member == member)
            .map(|(o, _)| o)
            .collect();
        for offset in held {
            self.nack(member, offset, delay, now);
        }
    }

    /// `member` gives `offset` back: it is redelivered once `delay` has passed. A nack for a
    /// message the member does not hold is ignored.
    pub fn nack(&mut self, member: MemberId, offset: u64, delay: Duration, now: Instant) {
        self.take_back(member, offset, now + delay, 0);
    }

    /// Takes back a delivery `member` was never sent (its answer had no room for it): it is due
    /// again at once, and this delivery does not count.
    pub fn give_back(&mut self, member: MemberId, offset: u64, now: Instant) {
        self.take_back(member, offset, now, 1);
    }

    /// Moves `member`'s delivery of `offset` (if it holds it) to the redelivery queue, due at
    /// `ready_at`, its count lowered by `uncount`.
    fn take_back(&mut self, member: MemberId, offset: u64, ready_at: Instant, uncount: u32) {
        let held = self
            .in_flight
            .get(offset)
            .is_some_and(|f| f.member == member);
        if let Some(f) = held.then(|| self.take_in_flight(offset)).flatten() {
            let count = f.count - uncount;
            let from = (uncount == 0).then_some(member);
            self.redeliver.insert(
                offset,
                Waiting {
                    ready_at,
                    count,
                    from,
                },
            );
        }
    }

    /// A dead letter could not be copied: it is handed back for dead-lettering again (by the
    /// next [`Self::next`] at or after `at`).
    pub fn retry_dead_letter(&mut self, offset: u64, at: Instant) {
        if offset < self.next_new && !self.acks.is_acked(offset) {
            self.redeliver.insert(
                offset,
                Waiting {
                    ready_at: at,
                    count: self.max_deliveries,
                    from: None,
                },
            );
        }
    }

    /// `member` left (disconnected, or its session expired): everything it held is due for
    /// redelivery now.
    pub fn member_left(&mut self, member: MemberId, now: Instant) {
        let held: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.member == member)
            .map(|(o, _)| o)
            .collect();
        for offset in held {
            self.requeue(offset, now, false);
        }
    }

    /// Messages whose ack deadline passed become due for redelivery; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        if self.in_flight.is_empty() {
            return 0;
        }
        let late: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(o, _)| o)
            .collect();
        for &offset in &late {
            self.requeue(offset, now, true);
        }
        late.len()
    }

    /// Moves `offset` from in flight to due now; `hand_off`: to another member first.
    fn requeue(&mut self, offset: u64, now: Instant, hand_off: bool) {
        if let Some(f) = self.take_in_flight(offset) {
            self.redeliver.insert(
                offset,
                Waiting {
                    ready_at: now,
                    count: f.count,
                    from: hand_off.then_some(f.member),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn offsets(b: &Batch) -> Vec<u64> {
        b.deliveries.iter().map(|d| d.offset).collect()
    }

    #[test]
    fn a_leaving_member_s_messages_go_to_the_other_marked_redelivered() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 16);
        let a = p.next(1, false, 5, 100, now, T);
        let b = p.next(2, false, 5, 100, now, T);
        assert_eq!(offsets(&a), [0, 1, 2, 3, 4]);
        assert_eq!(offsets(&b), [5, 6, 7, 8, 9]);
        assert!(p.ack(0) && p.ack(2));
        p.member_left(1, now);
        let again = p.next(2, false, 10, 10, now, T);
        assert_eq!(
            offsets(&again),
            [1, 3, 4],
            "exactly what member 1 held unacknowledged"
        );
        assert!(again
            .deliveries
            .iter()
            .all(|d| d.redelivered() && d.delivery_count == 2));
        assert_eq!(p.in_flight_of(2), 8);
        assert_eq!(p.acks().committed, 1);
    }

    #[test]
    fn ack_timeouts_and_nacks_redeliver_acks_never_do() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 10), 16);
        assert_eq!(offsets(&p.next(1, false, 3, 13, now, T)), [10, 11, 12]);
        p.ack(11);
        assert_eq!(p.expire(now + T / 2), 0);
        assert_eq!(p.expire(now + T), 2, "10 and 12, not the acknowledged 11");
        let later = now + T;
        let d = p.next(1, false, 10, 13, later, T);
        assert_eq!(offsets(&d), [10, 12]);
        p.nack(1, 12, Duration::from_secs(5), later);
        p.nack(2, 10, Duration::ZERO, later); // not member 2's: ignored
        assert!(
            offsets(&p.next(1, false, 10, 13, later, T)).is_empty(),
            "the nack delay holds 12 back"
        );
        let d = p.next(1, false, 10, 13, later + Duration::from_secs(5), T);
        assert_eq!(
            d.deliveries,
            [Delivery {
                offset: 12,
                delivery_count: 3
            }]
        );
    }

    #[test]
    fn after_max_deliveries_a_message_is_handed_back_for_the_dead_letter_topic() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 3);
        for round in 1..=3 {
            let d = p.next(1, false, 1, 1, now, T);
            assert_eq!(
                d.deliveries,
                [Delivery {
                    offset: 0,
                    delivery_count: round
                }]
            );
            p.nack(1, 0, Duration::ZERO, now);
        }
        let d = p.next(1, false, 1, 1, now, T);
        assert!(d.deliveries.is_empty());
        assert_eq!(d.dead_letters, [0]);
        assert!(
            !p.acks().is_acked(0),
            "acknowledged only once the caller has copied it"
        );
        p.retry_dead_letter(0, now);
        assert_eq!(
            p.next(1, false, 1, 1, now, T).dead_letters,
            [0],
            "a failed copy is tried again"
        );
        p.ack(0);
        assert_eq!(p.acks().committed, 1);
        assert!(p.next(1, false, 1, 1, now, T).dead_letters.is_empty());
    }

    #[test]
    fn a_delivery_given_back_unsent_does_not_count() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 16);
        p.next(1, false, 2, 10, now, T);
        p.give_back(1, 1, now);
        p.give_back(2, 0, now); // not member 2's
        assert_eq!(p.in_flight_of(1), 1);
        let again = p.next(1, false, 1, 10, now, T);
        assert_eq!(
            again.deliveries,
            [Delivery {
                offset: 1,
                delivery_count: 1
            }]
        );
    }

    #[test]
    fn new_messages_wait_while_the_window_is_full() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 16);
        let hw = WINDOW as u64 + 10;
        let first = p.next(1, false, WINDOW + 10, hw, now, T);
        assert_eq!(first.deliveries.len(), WINDOW);
        assert!(first.window_full);
        for o in 1..WINDOW as u64 {
            p.ack(o);
        }
        assert!(
            p.next(1, false, 10, hw, now, T).window_full,
            "offset 0 still holds the window"
        );
        p.ack(0);
        let more = p.next(1, false, 100, hw, now, T);
        assert_eq!(offsets(&more), (WINDOW as u64..hw).collect::<Vec<_>>());
        assert!(!more.window_full);
    }

    #[test]
    fn spans_ack_only_delivered_offsets_and_counts_follow_members() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 16);
        p.next(1, false, 3, 100, now, T);
        p.next(2, false, 2, 100, now, T);
        assert_eq!((p.in_flight_of(1), p.in_flight_of(2)), (3, 2));
        assert_eq!(p.ack_span(0, u64::MAX), 5, "only the five delivered");
        assert_eq!(p.acks().committed, 5);
        assert!(
            !p.acks().is_acked(5),
            "never delivered, so never acknowledged"
        );
        assert_eq!((p.in_flight_of(1), p.in_flight_of(2)), (0, 0));
        p.next(1, false, 4, 100, now, T);
        assert_eq!(p.next_wanted(now), 9);
        p.nack_span(1, 0, 6, Duration::ZERO, now);
        assert_eq!(p.in_flight_of(1), 2);
        assert!(p.has_due(now));
        assert_eq!(p.next_wanted(now), 5);
    }

    #[test]
    fn a_timed_out_or_nacked_message_goes_to_another_member_first() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 16);
        assert_eq!(offsets(&p.next(1, true, 2, 10, now, T)), [0, 1]);
        let later = now + T;
        p.nack(1, 0, Duration::ZERO, later);
        assert_eq!(p.expire(later), 1, "offset 1 timed out");
        assert!(
            offsets(&p.next(1, true, 10, 2, later, T)).is_empty(),
            "member 1 had both; another member is there"
        );
        let other = p.next(2, true, 10, 2, later, T);
        assert_eq!(offsets(&other), [0, 1]);
        assert!(other.deliveries.iter().all(|d| d.delivery_count == 2));

        // Alone, or once nobody else took it within HAND_OFF, the same member gets it back.
        p.nack(2, 0, Duration::ZERO, later);
        assert_eq!(offsets(&p.next(2, false, 10, 2, later, T)), [0]);
        p.nack(2, 0, Duration::ZERO, later);
        assert!(offsets(&p.next(2, true, 10, 2, later, T)).is_empty());
        assert_eq!(offsets(&p.next(2, true, 10, 2, later + HAND_OFF, T)), [0]);
    }

    #[test]
    fn many_spans_at_once_ack_what_each_would_alone() {
        let now = Instant::now();
        let mut one = PartitionDelivery::new(AckState::new(1, 0), 16);
        let mut many = PartitionDelivery::new(AckState::new(1, 0), 16);
        for p in [&mut one, &mut many] {
            p.next(1, false, 50, 100, now, T);
        }
        let spans = [(3, 3), (0, 1), (10, 20), (2, 2), (60, 70), (5, 5)];
        let alone: usize = spans.iter().map(|&(f, l)| one.ack_span(f, l)).sum();
        assert_eq!(many.ack_spans(spans), alone);
        assert_eq!(many.acks(), one.acks());
        assert_eq!(many.acks().committed, 4, "0 to 3 acknowledged, 4 not");
        assert_eq!(many.in_flight(), 50 - alone);
    }

    #[test]
    fn after_a_restart_only_durably_unacknowledged_messages_come_back() {
        let now = Instant::now();
        let mut acks = AckState::new(1, 100);
        acks.ack(101);
        acks.ack(103);
        let mut p = PartitionDelivery::new(acks, 16);
        assert_eq!(offsets(&p.next(1, false, 10, 105, now, T)), [100, 102, 104]);
    }

    #[test]
    fn nothing_at_or_above_the_end_asked_is_handed_out_and_what_leaves_flight_is_counted() {
        let now = Instant::now();
        let mut p = PartitionDelivery::new(AckState::new(1, 0), 16);
        assert_eq!(offsets(&p.next(1, false, 10, 4, now, T)), [0, 1, 2, 3]);
        p.nack(1, 1, Duration::ZERO, now);
        p.nack(1, 3, Duration::ZERO, now);
        // Read from 1 up to 3: the redelivery of 3 and new offsets wait for a later read.
        assert_eq!(offsets(&p.next(2, false, 10, 3, now, T)), [1]);
        assert_eq!(offsets(&p.next(2, false, 10, 6, now, T)), [3, 4, 5]);
        assert!(p.ack(0) && p.ack(4));
        let released = p.take_released();
        assert_eq!(
            released.get(&1),
            Some(&3),
            "1 and 3 given back, 0 acknowledged"
        );
        assert_eq!(released.get(&2), Some(&1), "4 acknowledged");
        assert!(!p.has_released());
        assert_eq!(
            p.next_due(),
            Some(now + T),
            "the ack deadlines of what is in flight"
        );
    }
}
