//! How long orphans wait (sans-IO): the tree's `Orphaned` and `Moved`
//! events and `now` in, the wait of an orphan placed at last out.
//!
//! An orphan plays from the edge over HTTP until the tracker finds it a
//! parent; the orphans gauge shows how many wait now, not how long each
//! waited. A long wait is where an audience's tree has run out of room
//! (in the network lab's `mobile-heavy` profile, one peer waited 45 s and
//! nothing in the edge's logs said so), so the driver logs the waits of
//! at least [`LONG_WAIT`] and counts all of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::core::PeerId;

/// An orphan placed after waiting this long is logged.
pub const LONG_WAIT: Duration = Duration::from_secs(2);

/// Orphans waiting now, since when.
#[derive(Debug, Default)]
pub struct OrphanWaits {
    since: HashMap<PeerId, Instant>,
}

impl OrphanWaits {
    /// `id` lost its parent at `now` and no slot was free (an orphan
    /// already waiting keeps its first moment).
    pub fn handle_orphaned(&mut self, id: PeerId, now: Instant) {
        self.since.entry(id).or_insert(now);
    }

    /// `id` was given a parent at `now`: how long it waited, if it was
    /// an orphan.
    pub fn handle_placed(&mut self, id: PeerId, now: Instant) -> Option<Duration> {
        let since = self.since.remove(&id)?;
        Some(now.saturating_duration_since(since))
    }

    /// `id` left the tree.
    pub fn forget(&mut self, id: PeerId) {
        self.since.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_placed_later_reports_its_whole_wait_once() {
        let t = Instant::now();
        let (a, b) = (PeerId(1), PeerId(2));
        let mut w = OrphanWaits::default();
        w.handle_orphaned(a, t);
        // Orphaned again at a later tick: still waiting since the first.
        w.handle_orphaned(a, t + Duration::from_secs(1));
        w.handle_orphaned(b, t);
        assert_eq!(
            w.handle_placed(a, t + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(w.handle_placed(a, t + Duration::from_secs(4)), None);
        // A peer moved that was never an orphan.
        assert_eq!(w.handle_placed(PeerId(3), t), None);
        // One that left while waiting is not reported.
        w.forget(b);
        assert_eq!(w.handle_placed(b, t + Duration::from_secs(5)), None);
    }
}
