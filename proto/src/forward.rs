//! Which segments a parent sends one child, from which byte, and how
//! urgently (sans-IO).
//!
//! In: the child's `Hello` (the first segment it needs, and how much of
//! that one it holds already), then each segment the parent's feed offers:
//! its recent ones when the child arrives, then every new one as it
//! starts, each with its publication number and whether it is still
//! growing. Out: a [`Send`] for the driver ([`crate::tree::push`]), which
//! opens the stream and writes it; a send then ends by itself (delivered,
//! stopped by a child that has the segment, or abandoned at the deadline).
//!
//! The policy:
//! - nothing before the child's `next_seq` (it holds those);
//! - each publication once: the recent segments and the broadcast overlap
//!   when a child arrives, but a segment published again (a second attempt
//!   after the first copy failed upstream) goes again;
//! - a child that lost its parent mid-segment asked to resume at the byte
//!   it holds: that segment starts there, once; a later copy of it starts
//!   at 0, as the child then no longer holds the part it asked about;
//! - live segments (still growing) go before backfill: a child's first
//!   seconds of backfill never delay the segment being cut.

use std::collections::VecDeque;

/// Priority of a live segment's stream.
pub const LIVE_PRIORITY: i32 = 1;
/// Priority of a backfill segment's stream.
pub const BACKFILL_PRIORITY: i32 = 0;

/// Publications remembered as sent: more than the feed's recent segments
/// plus the broadcast's depth, so an overlap is always recognised.
const SENT: usize = 16;

/// A segment the feed offers this child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Media sequence number.
    pub seq: u64,
    /// The feed's number for this copy (a second attempt gets a new one).
    pub publication: u64,
    /// Whether the whole segment is here already (backfill) or still
    /// arriving (live).
    pub complete: bool,
}

/// A segment stream to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    /// Media sequence number.
    pub seq: u64,
    /// First byte to send.
    pub offset: u64,
    /// Stream priority ([`LIVE_PRIORITY`] or [`BACKFILL_PRIORITY`]).
    pub priority: i32,
    /// Still growing: its delivery says something about the uplink.
    pub live: bool,
}

/// One child's forwarding state; see the module docs.
#[derive(Debug)]
pub struct Forwarding {
    next_seq: u64,
    /// The segment and byte the child asked to resume at, until used.
    resume: Option<(u64, u64)>,
    sent: VecDeque<u64>,
}

impl Forwarding {
    /// A child whose `Hello` asked for `next_seq` on, holding
    /// `resume_offset` bytes of that segment.
    pub fn new(next_seq: u64, resume_offset: u64) -> Self {
        Self {
            next_seq,
            resume: (resume_offset > 0).then_some((next_seq, resume_offset)),
            sent: VecDeque::with_capacity(SENT),
        }
    }

    /// The feed offers a segment: the stream to open for it, if any.
    pub fn handle_offer(&mut self, offer: Offer) -> Option<Send> {
        if offer.seq < self.next_seq || self.sent.contains(&offer.publication) {
            return None;
        }
        if self.sent.len() == SENT {
            self.sent.pop_front();
        }
        self.sent.push_back(offer.publication);
        let offset = match self.resume {
            Some((seq, offset)) if seq == offer.seq => {
                self.resume = None;
                offset
            }
            _ => 0,
        };
        let live = !offer.complete;
        Some(Send {
            seq: offer.seq,
            offset,
            priority: if live {
                LIVE_PRIORITY
            } else {
                BACKFILL_PRIORITY
            },
            live,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(seq: u64, publication: u64, complete: bool) -> Offer {
        Offer {
            seq,
            publication,
            complete,
        }
    }

    #[test]
    fn backfill_from_next_seq_then_live_each_publication_once() {
        let mut f = Forwarding::new(11, 0);
        // The recent segments when the child arrives: 10 it holds.
        assert_eq!(f.handle_offer(offer(10, 1, true)), None);
        let backfill = f.handle_offer(offer(11, 2, true)).expect("11");
        assert_eq!(
            (backfill.priority, backfill.live),
            (BACKFILL_PRIORITY, false)
        );
        let live = f.handle_offer(offer(12, 3, false)).expect("12");
        assert_eq!(
            (live.priority, live.live, live.offset),
            (LIVE_PRIORITY, true, 0)
        );
        // The broadcast repeats 12: not twice. A second attempt at 12 (a
        // new publication) goes again.
        assert_eq!(f.handle_offer(offer(12, 3, false)), None);
        assert!(f.handle_offer(offer(12, 4, false)).is_some());
    }

    #[test]
    fn a_resumed_segment_starts_at_the_childs_byte_once() {
        let mut f = Forwarding::new(20, 300_000);
        let first = f.handle_offer(offer(20, 7, false)).expect("20");
        assert_eq!(first.offset, 300_000);
        // The next segment, and another copy of 20, start at 0.
        assert_eq!(
            f.handle_offer(offer(21, 8, false)).map(|s| s.offset),
            Some(0)
        );
        assert_eq!(
            f.handle_offer(offer(20, 9, false)).map(|s| s.offset),
            Some(0)
        );
    }

    #[test]
    fn an_old_publication_is_recognised_long_after() {
        let mut f = Forwarding::new(0, 0);
        for p in 0..SENT as u64 {
            assert!(f.handle_offer(offer(p, p, false)).is_some());
        }
        assert_eq!(f.handle_offer(offer(1, 1, false)), None);
    }
}
