//! A parent's uplink: when it is saturated, and which child it lets go.
//!
//! Every live segment a parent forwards is timed per child, from the moment
//! the parent held all of it to the moment the child had acknowledged all
//! of it ([`Uplink::handle_delivered`]). On an uplink with room that is
//! about a round trip: the bytes leave as they arrive. On a saturated one
//! the queue grows segment by segment and every child is late together,
//! long before any of them stalls (the child's player is seconds behind
//! live; its fallback to the edge asks after a grace period). So a
//! parent that sees two segments delivered late to most of its children,
//! or one very late, sheds its newest child ([`Uplink::poll_shed`]): closes it with
//! [`CLOSE_SHED`](crate::tree::CLOSE_SHED), and the child switches to its
//! warm backup at once and tells the tracker, which counts one slot less
//! for this parent. Segments already queued when a child was shed are
//! late through no fault of the children left, so they are not counted;
//! nor are deliveries in a new child's first [`JOIN_GRACE`], while its
//! connection starts and its backfill goes out.
//!
//! Sans-IO: [`Uplink`] takes `now` and observations and answers decisions;
//! [`Shedder`] is the thin shared driver the push tasks of one parent use
//! (found in the network lab: 1 Mb/s uplinks given two children on
//! probation fed both late for a whole 10 s window before the tracker
//! could tell).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How late a segment may reach a child before it counts against the
/// uplink: well above a round trip and a lost packet's recovery on a home
/// link, well below the fallback's grace period (1 s).
pub const LATE: Duration = Duration::from_millis(500);

/// A delivery this late counts on its own ([`Uplink::handle_delivered`]);
/// the push reports it at this moment rather than waiting for the child.
pub const VERY_LATE: Duration = Duration::from_millis(LATE.as_millis() as u64 * 2 + 1);

/// Two late segments count together only this many segments apart or
/// closer: a hiccup now and then is not saturation.
const REMEMBERED: u64 = 3;

/// How long after a child comes late deliveries do not count. A new
/// child's connection starts its congestion control from scratch and
/// takes its backfill at once; for a moment every child of the parent is
/// late, and the uplink is not full for that. In the network lab (100
/// peers, `residential`) most sheds came 1 to 3 s after the shed child
/// connected, on 5 Mb/s uplinks with their one child of a 2.7 Mb/s
/// stream and on 20 Mb/s ones below their cap. Six seconds only moved the
/// 5 Mb/s uplinks' sheds later (6 to 14 s after the child came: one such
/// child is more than those uplinks carry once the stream peaks), and
/// repairs took longer (p95 2.3 s against 0.9 and 1.7 s).
pub const JOIN_GRACE: Duration = Duration::from_secs(3);

/// Children that got one segment late.
#[derive(Debug, Default)]
struct Late {
    children: Vec<u64>,
    worst: Duration,
}

/// The decisions of one parent's uplink over its children.
#[derive(Debug)]
pub struct Uplink {
    /// Children in the order they came: the newest is last.
    children: Vec<u64>,
    /// Newest live segment the parent started forwarding.
    newest_seq: Option<u64>,
    /// Segments at or below this were queued before the last shed.
    ignore_through: Option<u64>,
    /// Recent live segments that reached children late: which children,
    /// and the worst lag.
    late_seqs: BTreeMap<u64, Late>,
    /// The child to let go, once decided.
    shed: Option<u64>,
    /// Late deliveries reported before this do not count ([`JOIN_GRACE`]).
    grace_until: Option<Instant>,
}

impl Default for Uplink {
    fn default() -> Self {
        Self::new()
    }
}

impl Uplink {
    /// An uplink that counts a delivery slower than [`LATE`] against itself.
    pub fn new() -> Self {
        Self {
            children: Vec::new(),
            newest_seq: None,
            ignore_through: None,
            late_seqs: BTreeMap::new(),
            shed: None,
            grace_until: None,
        }
    }

    /// A child was admitted at `now`.
    pub fn handle_child(&mut self, now: Instant, child: u64) {
        self.children.retain(|&c| c != child);
        self.children.push(child);
        self.grace_until = Some(now + JOIN_GRACE);
    }

    /// A child is gone (shed, left or failed).
    pub fn handle_child_gone(&mut self, child: u64) {
        self.children.retain(|&c| c != child);
        if self.shed == Some(child) {
            self.shed = None;
        }
    }

    /// The parent started forwarding live segment `seq` (still growing).
    pub fn handle_segment(&mut self, seq: u64) {
        self.newest_seq = Some(self.newest_seq.map_or(seq, |n| n.max(seq)));
    }

    /// Live segment `seq` reached `child` `lag` after the parent held all
    /// of it (a delivery abandoned at its deadline counts with the
    /// deadline).
    pub fn handle_delivered(&mut self, now: Instant, child: u64, seq: u64, lag: Duration) {
        if lag <= LATE
            || self.grace_until.is_some_and(|t| now < t)
            || self.ignore_through.is_some_and(|t| seq <= t)
            || !self.children.contains(&child)
        {
            return;
        }
        // Counted against the newest late delivery, not the newest segment
        // started: on a full uplink deliveries end many segments after
        // they started.
        let newest = self
            .late_seqs
            .keys()
            .next_back()
            .map_or(seq, |&n| n.max(seq));
        self.late_seqs.retain(|&s, _| s + REMEMBERED >= newest);
        let entry = self.late_seqs.entry(seq).or_default();
        if !entry.children.contains(&child) {
            entry.children.push(child);
        }
        entry.worst = entry.worst.max(lag);
        // A full uplink makes every child late together; one child late
        // alone has a poor path of its own, which shedding it would not
        // mend, so a segment counts only when most children got it late.
        let most = self.children.len() / 2 + 1;
        let saturating: Vec<Duration> = self
            .late_seqs
            .values()
            .filter(|l| l.children.len() >= most)
            .map(|l| l.worst)
            .collect();
        let saturated = saturating.len() >= 2 || saturating.iter().any(|&w| w > 2 * LATE);
        if saturated && self.shed.is_none() {
            if let Some(&newest_child) = self.children.last() {
                self.shed = Some(newest_child);
                self.ignore_through = self.newest_seq.max(Some(seq));
                self.late_seqs.clear();
            }
        }
    }

    /// The child to let go now, if any (each decision is answered once).
    pub fn poll_shed(&mut self, _now: Instant) -> Option<u64> {
        let c = self.shed.take()?;
        self.children.retain(|&x| x != c);
        Some(c)
    }

    /// Children counted now.
    pub fn children(&self) -> usize {
        self.children.len()
    }
}

/// One parent's [`Uplink`], shared by the push tasks of its children:
/// each registers its child ([`Shedder::join`]), reports what it forwards
/// and when it arrived, and waits to be told to let its child go.
#[derive(Debug)]
pub struct Shedder {
    state: Mutex<ShedState>,
}

#[derive(Debug)]
struct ShedState {
    uplink: Uplink,
    next: u64,
    kicks: HashMap<u64, Arc<Notify>>,
}

impl Shedder {
    /// A shedder that counts deliveries slower than [`LATE`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ShedState {
                uplink: Uplink::new(),
                next: 0,
                kicks: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, ShedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new child; the handle unregisters it when dropped.
    pub fn join(self: &Arc<Self>) -> ChildHandle {
        let mut st = self.state();
        st.next += 1;
        let id = st.next;
        let kick = Arc::new(Notify::new());
        st.kicks.insert(id, kick.clone());
        st.uplink.handle_child(Instant::now(), id);
        ChildHandle {
            shedder: self.clone(),
            id,
            kick,
        }
    }
}

/// A child as its parent's [`Shedder`] knows it.
#[derive(Debug)]
pub struct ChildHandle {
    shedder: Arc<Shedder>,
    id: u64,
    kick: Arc<Notify>,
}

impl ChildHandle {
    /// The parent started forwarding live segment `seq`.
    pub fn segment(&self, seq: u64) {
        self.shedder.state().uplink.handle_segment(seq);
    }

    /// Live segment `seq` reached this child `lag` after the parent had it.
    pub fn delivered(&self, seq: u64, lag: Duration) {
        let now = Instant::now();
        let mut st = self.shedder.state();
        st.uplink.handle_delivered(now, self.id, seq, lag);
        if let Some(c) = st.uplink.poll_shed(now) {
            if let Some(k) = st.kicks.get(&c) {
                k.notify_one();
            }
        }
    }

    /// Completes when the parent lets this child go.
    pub async fn shed(&self) {
        self.kick.notified().await;
    }
}

impl Drop for ChildHandle {
    fn drop(&mut self) {
        let mut st = self.shedder.state();
        st.kicks.remove(&self.id);
        st.uplink.handle_child_gone(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// An uplink whose `children` came long enough ago to count.
    fn uplink(children: &[u64]) -> Uplink {
        let mut u = Uplink::new();
        let then = Instant::now().checked_sub(2 * JOIN_GRACE).expect("uptime");
        for &c in children {
            u.handle_child(then, c);
        }
        u
    }

    #[test]
    fn a_new_childs_first_seconds_do_not_count() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2]);
        u.handle_child(now, 3);
        for seq in 1..=3 {
            u.handle_segment(seq);
            for c in [1, 2, 3] {
                u.handle_delivered(now + MS(900), c, seq, MS(1_500));
            }
        }
        assert_eq!(u.poll_shed(now), None, "the newcomer's backfill and start");
        let later = now + JOIN_GRACE;
        u.handle_segment(4);
        for c in [1, 2, 3] {
            u.handle_delivered(later, c, 4, MS(1_500));
        }
        assert_eq!(u.poll_shed(later), Some(3), "still late after it: full");
    }

    #[test]
    fn deliveries_within_the_limit_shed_no_one() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2, 3]);
        for seq in 10..30 {
            u.handle_segment(seq);
            for c in [1, 2, 3] {
                u.handle_delivered(now, c, seq, MS(450));
            }
        }
        assert_eq!(u.poll_shed(now), None);
    }

    #[test]
    fn one_late_segment_is_forgiven_two_shed_the_newest_child() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2, 3]);
        u.handle_segment(10);
        u.handle_delivered(now, 1, 10, MS(700));
        u.handle_delivered(now, 2, 10, MS(800));
        assert_eq!(u.poll_shed(now), None, "a single late segment is a hiccup");
        u.handle_segment(11);
        u.handle_delivered(now, 1, 11, MS(600));
        assert_eq!(u.poll_shed(now), None, "one child of three is not most");
        u.handle_delivered(now, 3, 11, MS(650));
        assert_eq!(u.poll_shed(now), Some(3));
        assert_eq!(u.poll_shed(now), None, "a decision is answered once");
        assert_eq!(u.children(), 2);
    }

    #[test]
    fn deliveries_that_end_many_segments_after_they_started_still_count() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2]);
        for seq in 1..=8 {
            u.handle_segment(seq);
        }
        u.handle_delivered(now, 1, 3, MS(9_000));
        u.handle_delivered(now, 2, 3, MS(9_000));
        assert_eq!(u.poll_shed(now), Some(2));
    }

    #[test]
    fn a_child_late_alone_has_a_poor_path_not_a_full_uplink() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2, 3]);
        for seq in 1..=10 {
            u.handle_segment(seq);
            u.handle_delivered(now, 2, seq, MS(3_000));
            u.handle_delivered(now, 1, seq, MS(100));
            u.handle_delivered(now, 3, seq, MS(100));
        }
        assert_eq!(u.poll_shed(now), None);
    }

    #[test]
    fn late_segments_far_apart_are_hiccups() {
        let now = Instant::now();
        let mut u = uplink(&[1]);
        for seq in 1..=20 {
            u.handle_segment(seq);
            let lag = if seq % 5 == 0 { MS(900) } else { MS(100) };
            u.handle_delivered(now, 1, seq, lag);
            assert_eq!(u.poll_shed(now), None, "seq {seq}");
        }
    }

    #[test]
    fn one_very_late_segment_sheds_at_once() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2]);
        u.handle_segment(5);
        u.handle_delivered(now, 1, 5, MS(1_100));
        assert_eq!(u.poll_shed(now), None, "one of two is not most");
        u.handle_delivered(now, 2, 5, MS(1_300));
        assert_eq!(u.poll_shed(now), Some(2));
    }

    #[test]
    fn segments_queued_before_a_shed_do_not_count_against_the_rest() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2, 3]);
        u.handle_segment(10);
        u.handle_segment(11);
        u.handle_delivered(now, 1, 10, MS(1_500));
        u.handle_delivered(now, 2, 10, MS(1_500));
        assert_eq!(u.poll_shed(now), Some(3));
        // 10 and 11 were already queued behind the shed child's data.
        u.handle_delivered(now, 1, 11, MS(2_000));
        u.handle_delivered(now, 2, 11, MS(2_000));
        assert_eq!(u.poll_shed(now), None);
        // The next segment is still very late to both: still saturated.
        u.handle_segment(12);
        u.handle_delivered(now, 1, 12, MS(1_200));
        u.handle_delivered(now, 2, 12, MS(1_200));
        assert_eq!(u.poll_shed(now), Some(2));
    }

    #[test]
    fn a_child_that_left_is_never_shed_and_its_reports_do_not_count() {
        let now = Instant::now();
        let mut u = uplink(&[1, 2]);
        u.handle_child_gone(2);
        u.handle_segment(3);
        u.handle_delivered(now, 2, 3, MS(5_000));
        assert_eq!(u.poll_shed(now), None);
        u.handle_delivered(now, 1, 3, MS(5_000));
        assert_eq!(u.poll_shed(now), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_shedder_kicks_the_newest_child_and_forgets_dropped_ones() {
        let s = Shedder::new();
        let first = s.join();
        let second = s.join();
        let third = s.join();
        drop(third);
        tokio::time::advance(JOIN_GRACE).await;
        first.segment(7);
        first.delivered(7, MS(2_000));
        second.delivered(7, MS(2_000));
        tokio::time::timeout(Duration::from_secs(1), second.shed())
            .await
            .expect("the newest child still registered is kicked");
        assert_eq!(s.state().uplink.children(), 1);
    }
}
