//! The simulator's event queue: a calendar of 1 ms slots over the next
//! ~8 s, and a heap for what lies further out (session ends, arrivals).
//!
//! Written here rather than taken from a crate because the one property
//! that matters, a fixed order for events of the same time (time, then
//! insertion), is what makes a seed repeat its report, and a binary heap
//! alone costs several times more per event at 100k viewers (a heartbeat
//! per viewer every 2 s is most of the work).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Width of one slot, ms. Event times are whole ms, so a slot's events
/// share their time and arrive in it already in scheduling order: none
/// needs sorting (wider slots spent a twentieth of the simulator's time
/// sorting them).
const SLOT_MS: u64 = 1;
/// Slots in the ring: past the longest a heartbeat, a liveness check or a
/// join's retry waits.
const RING: usize = 1 << 13;

/// Events ordered by time, then by the order they were scheduled.
#[derive(Debug)]
pub struct Calendar<E> {
    ring: Vec<Vec<(u64, u64, E)>>,
    later: BinaryHeap<Reverse<(u64, u64, E)>>,
    /// The slot being worked on.
    current: u64,
    /// Its events, sorted, next last.
    due: Vec<(u64, u64, E)>,
    seq: u64,
    len: usize,
    /// Events in the ring (not `due`, not `later`).
    in_ring: usize,
}

impl<E: Ord> Calendar<E> {
    /// An empty calendar at time 0.
    pub fn new() -> Self {
        Self {
            ring: (0..RING).map(|_| Vec::new()).collect(),
            later: BinaryHeap::new(),
            current: 0,
            due: Vec::new(),
            seq: 0,
            len: 0,
            in_ring: 0,
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `e` at `at` ms; a time already past runs next.
    pub fn push(&mut self, at: u64, e: E) {
        let seq = self.seq;
        self.seq += 1;
        self.len += 1;
        let slot = (at / SLOT_MS).max(self.current);
        if slot == self.current {
            // Into the sorted run being worked on, at its place.
            let key = (at, seq);
            let pos = self.due.partition_point(|d| (d.0, d.1) > key);
            self.due.insert(pos, (at, seq, e));
        } else if slot < self.current + RING as u64 {
            self.ring[(slot % RING as u64) as usize].push((at, seq, e));
            self.in_ring += 1;
        } else {
            self.later.push(Reverse((at, seq, e)));
        }
    }

    /// The event `k` places after the next one, if it is due in the same
    /// millisecond (for prefetching what it will touch; a look further
    /// ahead would cost more than it saves).
    pub fn peek(&self, k: usize) -> Option<&E> {
        let i = self.due.len().checked_sub(k + 1)?;
        Some(&self.due[i].2)
    }

    /// The next event and its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        if self.len == 0 {
            return None;
        }
        while self.due.is_empty() {
            if self.in_ring == 0 {
                // Nothing near: jump to the slot before the next far event.
                if let Some(Reverse((at, _, _))) = self.later.peek() {
                    self.current = self.current.max((at / SLOT_MS).saturating_sub(1));
                }
            }
            self.current += 1;
            let horizon = self.current + RING as u64;
            while self
                .later
                .peek()
                .is_some_and(|Reverse((at, _, _))| at / SLOT_MS < horizon)
            {
                let Some(Reverse((at, seq, e))) = self.later.pop() else {
                    break;
                };
                let slot = (at / SLOT_MS).max(self.current);
                self.ring[(slot % RING as u64) as usize].push((at, seq, e));
                self.in_ring += 1;
            }
            let i = (self.current % RING as u64) as usize;
            std::mem::swap(&mut self.due, &mut self.ring[i]);
            self.in_ring -= self.due.len();
            // In order already (see `SLOT_MS`): what came from the heap
            // first, by time and sequence, then what was pushed straight
            // into the slot, by sequence. Checked, as it is cheap.
            self.due.reverse();
            if !self.due.is_sorted_by_key(|d| std::cmp::Reverse((d.0, d.1))) {
                self.due
                    .sort_unstable_by_key(|d| std::cmp::Reverse((d.0, d.1)));
            }
        }
        self.len -= 1;
        self.due.pop().map(|(at, _, e)| (at, e))
    }
}

impl<E: Ord> Default for Calendar<E> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_by_scheduling_order() {
        let mut c = Calendar::new();
        let times = [5u64, 70_000, 3, 3, 41_000, 12, 0, 3, 999_999, 40_950];
        for (k, &t) in times.iter().enumerate() {
            c.push(t, k);
        }
        let mut expected: Vec<(u64, usize)> =
            times.iter().enumerate().map(|(k, &t)| (t, k)).collect();
        expected.sort();
        let mut got = Vec::new();
        while let Some(e) = c.pop() {
            got.push(e);
            // Scheduling from inside the run keeps the order.
            if got.len() == 3 {
                c.push(4, 100);
                expected.push((4, 100));
                expected.sort();
            }
        }
        assert_eq!(got, expected);
        assert!(c.is_empty());
    }

    #[test]
    fn peek_sees_the_events_after_the_next_in_the_same_millisecond() {
        let mut c = Calendar::new();
        for (t, e) in [(7, 'a'), (7, 'b'), (7, 'c'), (8, 'd')] {
            c.push(t, e);
        }
        assert_eq!(c.pop(), Some((7, 'a')));
        assert_eq!((c.peek(0), c.peek(1)), (Some(&'b'), Some(&'c')));
        assert_eq!(c.peek(2), None, "8 ms is not looked at");
        assert_eq!(c.pop(), Some((7, 'b')));
        assert_eq!(c.peek(0), Some(&'c'));
    }

    #[test]
    fn a_time_in_the_past_runs_next() {
        let mut c = Calendar::new();
        c.push(50_000, 'b');
        assert_eq!(c.pop(), Some((50_000, 'b')));
        c.push(10, 'a');
        c.push(60_000, 'c');
        assert_eq!(c.pop(), Some((10, 'a')));
        assert_eq!(c.pop(), Some((60_000, 'c')));
        assert_eq!(c.pop(), None);
    }
}
