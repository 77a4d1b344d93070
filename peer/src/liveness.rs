//! When a parent has gone silent (sans-IO): the link's driver feeds it the
//! moments it heard from the parent (any control frame or segment data)
//! and the connection's smoothed round trip; it answers when to ping and
//! whether the silence now is longer than this link ever is when alive.
//!
//! A fixed timeout is wrong both ways: 500 ms is slow on loopback and on
//! an office LAN (repair takes at least that long), and too quick on a
//! 200 ms mobile path whose parent queues pongs behind its own uplink.
//! So the limit is the largest of
//! - `floor` (no link is judged on less);
//! - four round trips (a ping and its pong, with room for one loss and a
//!   queue as deep as the path);
//! - twice the longest gap this link has shown between signs of life in
//!   its recent past (the stream's cadence, pings included);
//!
//! and never more than `ceiling`. Pings go every round trip, at least
//! every [`MAX_PING`] and at most every [`MIN_PING`].
//!
//! Silence is counted only while this process runs. The driver polls
//! every [`Liveness::poll_every`]; a poll that comes much later means the
//! process itself was not scheduled (a loaded machine, a laptop waking),
//! and what the parent sent meanwhile may still sit unread in the socket.
//! Such a pause does not count as the parent's silence: without this, a
//! 300 ms stall of a busy viewer's machine ended every link at once, and
//! peers whose parents were all fine switched to their backups.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Longest time between pings.
pub const MAX_PING: Duration = Duration::from_millis(200);
/// Shortest time between pings.
pub const MIN_PING: Duration = Duration::from_millis(30);
/// Recent gaps remembered.
const HISTORY: usize = 32;

/// The detector for one link.
#[derive(Debug, Clone)]
pub struct Liveness {
    floor: Duration,
    ceiling: Duration,
    last_heard: Instant,
    last_ping: Option<Instant>,
    /// The previous poll, to tell when this process was not running.
    last_poll: Option<Instant>,
    /// Time since `last_heard` that this process was not running.
    paused: Duration,
    gaps: VecDeque<Duration>,
}

impl Liveness {
    /// A link that started `now`.
    pub fn new(now: Instant, floor: Duration, ceiling: Duration) -> Self {
        Self {
            floor,
            ceiling: ceiling.max(floor),
            last_heard: now,
            last_ping: None,
            last_poll: None,
            paused: Duration::ZERO,
            gaps: VecDeque::with_capacity(HISTORY),
        }
    }

    /// How often the driver polls ([`Liveness::poll_silent`]): often
    /// enough for the shortest limit.
    pub fn poll_every(&self) -> Duration {
        self.floor / 4
    }

    /// The parent was heard from at `at` (ignored if not newer).
    pub fn handle_heard(&mut self, at: Instant) {
        if at <= self.last_heard {
            return;
        }
        if self.gaps.len() == HISTORY {
            self.gaps.pop_front();
        }
        self.gaps
            .push_back((at - self.last_heard).saturating_sub(self.paused));
        self.last_heard = at;
        self.paused = Duration::ZERO;
    }

    /// Silence longer than this ends the link, given the smoothed RTT.
    pub fn limit(&self, srtt: Duration) -> Duration {
        let cadence = self.gaps.iter().max().copied().unwrap_or_default() * 2;
        self.floor.max(srtt * 4).max(cadence).min(self.ceiling)
    }

    /// True when a ping is due at `now` (and counts it as sent).
    pub fn poll_ping(&mut self, now: Instant, srtt: Duration) -> bool {
        let every = srtt.clamp(MIN_PING, MAX_PING);
        if self
            .last_ping
            .is_some_and(|p| now.saturating_duration_since(p) < every)
        {
            return false;
        }
        self.last_ping = Some(now);
        true
    }

    /// `Some(silence)` when the parent has been silent past the limit,
    /// not counting the time this process was not running.
    pub fn poll_silent(&mut self, now: Instant, srtt: Duration) -> Option<Duration> {
        let every = self.poll_every();
        if let Some(prev) = self.last_poll.replace(now) {
            // A poll overdue by more than another period: the excess is a
            // pause of this process, not of the parent.
            let late = now.saturating_duration_since(prev);
            if late > 2 * every {
                self.paused += late - every;
            }
        }
        let silence = now
            .saturating_duration_since(self.last_heard)
            .saturating_sub(self.paused);
        (silence > self.limit(srtt)).then_some(silence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn link(t: Instant) -> Liveness {
        Liveness::new(t, 100 * MS, 2000 * MS)
    }

    #[test]
    fn a_fast_steady_link_is_judged_quickly() {
        let t = Instant::now();
        let mut l = link(t);
        // Loopback: data every 20 ms, 1 ms round trips.
        for i in 1..=50 {
            l.handle_heard(t + 20 * i * MS);
        }
        let last = t + 1000 * MS;
        assert_eq!(l.limit(MS), 100 * MS, "the floor");
        assert_eq!(l.poll_silent(last + 100 * MS, MS), None);
        assert_eq!(l.poll_silent(last + 101 * MS, MS), Some(101 * MS));
    }

    #[test]
    fn a_pause_of_this_process_is_not_the_parents_silence() {
        let t = Instant::now();
        let paused = |l: &mut Liveness| {
            for i in 1..=10 {
                l.handle_heard(t + 20 * i * MS);
                assert_eq!(l.poll_silent(t + 20 * i * MS, MS), None);
            }
            // Polled on time, then not for 400 ms: the first poll after
            // the pause counts only one period of it.
            assert_eq!(l.poll_silent(t + 225 * MS, MS), None);
            assert_eq!(l.poll_silent(t + 625 * MS, MS), None);
        };
        // What the parent sent meanwhile is read now: the link lives on,
        // and the pause neither counts nor widens the limit.
        let mut l = link(t);
        paused(&mut l);
        l.handle_heard(t + 625 * MS);
        for i in 1..=4 {
            assert_eq!(l.poll_silent(t + (625 + 25 * i) * MS, MS), None);
        }
        assert_eq!(l.poll_silent(t + 750 * MS, MS), Some(125 * MS));
        // Nothing came: silent once the limit has passed while running.
        let mut l = link(t);
        paused(&mut l);
        let mut at = t + 625 * MS;
        let mut silent = None;
        while silent.is_none() {
            at += 25 * MS;
            silent = l.poll_silent(at, MS);
        }
        assert_eq!(at, t + 700 * MS);
    }

    #[test]
    fn a_long_path_and_a_bursty_parent_get_more_time() {
        let t = Instant::now();
        let mut l = link(t);
        assert_eq!(l.limit(150 * MS), 600 * MS, "four round trips");
        // A parent that was once quiet for 400 ms (pongs queued behind
        // its uplink) is given twice that.
        l.handle_heard(t + 100 * MS);
        l.handle_heard(t + 500 * MS);
        assert_eq!(l.limit(10 * MS), 800 * MS);
        assert_eq!(l.poll_silent(t + 1300 * MS, 10 * MS), None);
        assert!(l.poll_silent(t + 1301 * MS, 10 * MS).is_some());
        // Never past the ceiling.
        l.handle_heard(t + 3000 * MS);
        assert_eq!(l.limit(10 * MS), 2000 * MS);
        // Old gaps are forgotten.
        for i in 1..=HISTORY as u32 {
            l.handle_heard(t + 3000 * MS + 10 * i * MS);
        }
        assert_eq!(l.limit(10 * MS), 100 * MS);
    }

    #[test]
    fn pings_follow_the_round_trip_within_bounds() {
        let t = Instant::now();
        let mut l = link(t);
        assert!(l.poll_ping(t, MS));
        assert!(!l.poll_ping(t + 29 * MS, MS));
        assert!(l.poll_ping(t + 30 * MS, MS), "at least 30 ms apart");
        assert!(!l.poll_ping(t + 129 * MS, 100 * MS));
        assert!(l.poll_ping(t + 130 * MS, 100 * MS), "every round trip");
        assert!(
            l.poll_ping(t + 330 * MS, Duration::from_secs(1)),
            "at most 200 ms apart"
        );
        // Stale heard times change nothing.
        l.handle_heard(t);
        assert_eq!(l.poll_silent(t + 100 * MS, MS), None);
    }
}
