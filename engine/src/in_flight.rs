//! The deliveries of one (group, partition) awaiting an ack, by offset. In-flight offsets all
//! lie in the ack window (never below the committed offset, never 4096 above it), so a deque
//! indexed by `offset - base` holds them: an ack of a span costs a slot per offset, not a
//! tree operation, and memory follows the span actually in flight.

use std::collections::VecDeque;

/// A map from offset to `T` for offsets within a bounded span.
#[derive(Debug)]
pub struct OffsetDeque<T> {
    /// Offset of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<T>>,
    len: usize,
}

impl<T> Default for OffsetDeque<T> {
    fn default() -> Self {
        Self {
            base: 0,
            slots: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> OffsetDeque<T> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn index(&self, offset: u64) -> Option<usize> {
        let i = offset.checked_sub(self.base)?;
        (i < self.slots.len() as u64).then_some(i as usize)
    }

    /// The entry of `offset`.
    pub fn get(&self, offset: u64) -> Option<&T> {
        self.slots.get(self.index(offset)?)?.as_ref()
    }

    /// Sets the entry of `offset`, returning the one it replaces.
    pub fn insert(&mut self, offset: u64, value: T) -> Option<T> {
        if self.slots.is_empty() {
            self.base = offset;
        }
        while offset < self.base {
            self.slots.push_front(None);
            self.base -= 1;
        }
        while offset >= self.base + self.slots.len() as u64 {
            self.slots.push_back(None);
        }
        let i = (offset - self.base) as usize;
        let old = self.slots[i].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Takes the entry of `offset` out.
    pub fn remove(&mut self, offset: u64) -> Option<T> {
        let i = self.index(offset)?;
        let old = self.slots[i].take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        while matches!(self.slots.back(), Some(None)) {
            self.slots.pop_back();
        }
        Some(old)
    }

    /// Entries in offset order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        let base = self.base;
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(i, s)| s.as_ref().map(|v| (base + i as u64, v)))
    }

    /// Entries with offsets in `first..=last`, in offset order.
    pub fn range(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, &T)> {
        let base = self.base;
        let from = first.saturating_sub(base).min(self.slots.len() as u64) as usize;
        self.slots
            .iter()
            .enumerate()
            .skip(from)
            .filter_map(move |(i, s)| s.as_ref().map(|v| (base + i as u64, v)))
            .take_while(move |(o, _)| *o <= last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_as_an_ordered_map_under_random_use() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut d = OffsetDeque::default();
        let mut m = BTreeMap::new();
        let mut low = 1000u64;
        for step in 0..20_000u64 {
            let o = low + next() % 300;
            match next() % 3 {
                0 => assert_eq!(d.remove(o), m.remove(&o), "step {step}"),
                _ => assert_eq!(d.insert(o, step), m.insert(o, step), "step {step}"),
            }
            if step % 500 == 0 {
                low += next() % 100;
            }
            assert_eq!(d.len(), m.len());
            assert_eq!(d.get(o), m.get(&o));
        }
        let all: Vec<_> = d.iter().map(|(o, v)| (o, *v)).collect();
        assert_eq!(all, m.iter().map(|(&o, &v)| (o, v)).collect::<Vec<_>>());
        let some: Vec<_> = d.range(1100, 1200).map(|(o, _)| o).collect();
        assert_eq!(
            some,
            m.range(1100..=1200).map(|(&o, _)| o).collect::<Vec<_>>()
        );
    }

    #[test]
    fn memory_follows_the_span_in_flight() {
        let mut d = OffsetDeque::default();
        for o in 0..4096u64 {
            d.insert(1_000_000 + o, ());
        }
        for o in 0..4095u64 {
            d.remove(1_000_000 + o);
        }
        assert_eq!(d.slots.len(), 1);
        assert_eq!(d.iter().map(|(o, _)| o).collect::<Vec<_>>(), [1_004_095]);
        d.remove(1_004_095);
        assert!(d.is_empty() && d.slots.is_empty());
    }
}
