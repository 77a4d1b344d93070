//! What a player says about its own playback, and who believes it.
//!
//! - the player plugin in the viewer's page counts hls.js buffer stalls
//!   (`BUFFER_STALLED_ERROR`, and the video element's `waiting` → `playing`
//!   with its duration) and posts a [`PlayerReport`] every few seconds to
//!   its local peer (`POST /player/report`), or to the edge when it plays
//!   from the edge directly (`POST /api/v1/player-report`);
//! - reports are cumulative per playback session, so a lost report costs
//!   nothing; [`ReportBook::handle_report`] checks each one against what
//!   that session said before and against the clock, and returns only the
//!   growth since the last accepted report ([`ViewerDelta`]), which the
//!   receiver adds to its counters;
//! - a report that could not be true (a channel not served, more stall than
//!   watch time, watch time growing faster than the wall clock, totals that
//!   shrink, a malformed session id) is refused with a [`ReportRefused`]
//!   and changes nothing; the number of sessions kept is bounded, so a page
//!   inventing sessions costs a fixed amount of memory.
//!
//! The book is sans-IO: the caller passes `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Largest report body accepted, bytes.
pub const MAX_REPORT_BODY: usize = 1024;

/// Slack allowed between a session's claimed watch time and the wall clock
/// between two of its reports (timers in a page are not exact; the first
/// report covers startup).
const CLOCK_SLACK: Duration = Duration::from_secs(10);

/// The most watch time a session's first report may claim.
const FIRST_REPORT_MAX: Duration = Duration::from_secs(60);

/// A session with no report for this long is forgotten when room is needed.
const SESSION_IDLE: Duration = Duration::from_secs(60);

/// At most one stall per this much watch time is believable (hls.js fires
/// `BUFFER_STALLED_ERROR` at most about once a second).
const MIN_MS_PER_STALL: u64 = 100;

/// `POST /player/report`: a playback session's totals so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlayerReport {
    /// Channel being played.
    pub channel: String,
    /// The page's id for this playback session: 1 to 64 characters of
    /// `A-Z a-z 0-9 - _`, random per page load.
    pub session: String,
    /// Buffer stalls since the session started.
    pub stalls: u64,
    /// Milliseconds spent stalled since the session started.
    pub stall_ms: u64,
    /// Milliseconds since playback was first asked for (stalls included).
    pub watched_ms: u64,
}

/// Why a report was refused. Nothing changes when one is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReportRefused {
    /// The receiver does not serve this channel.
    #[error("channel {0:?} is not served here")]
    Channel(String),
    /// The session id is empty, too long or has other characters.
    #[error("malformed session id")]
    Session,
    /// More stall time than watch time, or more stalls than can fit.
    #[error("stall figures exceed the watch time")]
    Impossible,
    /// A total went down since the session's last report.
    #[error("totals went down since the last report")]
    Shrank,
    /// Watch time grew faster than the wall clock.
    #[error("watch time grew faster than the clock")]
    TooFast,
    /// Every session slot is taken by a live session.
    #[error("too many playback sessions")]
    Full,
}

impl ReportRefused {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Channel(_) => "channel",
            Self::Session => "session",
            Self::Impossible => "impossible",
            Self::Shrank => "shrank",
            Self::TooFast => "too_fast",
            Self::Full => "full",
        }
    }
}

/// The growth of one session's figures since its last accepted report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewerDelta {
    /// New stalls.
    pub stalls: u64,
    /// New stall time.
    pub stall: Duration,
    /// New watch time.
    pub watched: Duration,
}

#[derive(Debug)]
struct Session {
    channel: String,
    last: PlayerReport,
    at: Instant,
}

/// The sessions one receiver has heard from; see the module docs.
#[derive(Debug)]
pub struct ReportBook {
    capacity: usize,
    sessions: HashMap<String, Session>,
}

fn valid_session(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ReportBook {
    /// A book keeping at most `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            sessions: HashMap::new(),
        }
    }

    /// Sessions kept now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is kept.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Checks `report`, received at `now`, for a receiver serving the
    /// channels `serves` accepts; returns what is new in it.
    pub fn handle_report(
        &mut self,
        report: PlayerReport,
        serves: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Result<ViewerDelta, ReportRefused> {
        if !serves(&report.channel) {
            return Err(ReportRefused::Channel(
                report.channel.chars().take(64).collect(),
            ));
        }
        if !valid_session(&report.session) {
            return Err(ReportRefused::Session);
        }
        if report.stall_ms > report.watched_ms
            || report.stalls > report.watched_ms / MIN_MS_PER_STALL + 1
        {
            return Err(ReportRefused::Impossible);
        }
        let (before, allowed) = match self.sessions.get(&report.session) {
            Some(s) => {
                if s.channel != report.channel {
                    // One session plays one channel; a page that switches
                    // starts a new session.
                    return Err(ReportRefused::Session);
                }
                let l = &s.last;
                if report.stalls < l.stalls
                    || report.stall_ms < l.stall_ms
                    || report.watched_ms < l.watched_ms
                {
                    return Err(ReportRefused::Shrank);
                }
                (l.clone(), now.saturating_duration_since(s.at) + CLOCK_SLACK)
            }
            None => {
                if self.sessions.len() >= self.capacity && !self.evict_idle(now) {
                    return Err(ReportRefused::Full);
                }
                let zero = PlayerReport {
                    stalls: 0,
                    stall_ms: 0,
                    watched_ms: 0,
                    ..report.clone()
                };
                (zero, FIRST_REPORT_MAX)
            }
        };
        let watched = Duration::from_millis(report.watched_ms - before.watched_ms);
        if watched > allowed {
            return Err(ReportRefused::TooFast);
        }
        let delta = ViewerDelta {
            stalls: report.stalls - before.stalls,
            stall: Duration::from_millis(report.stall_ms - before.stall_ms),
            watched,
        };
        self.sessions.insert(
            report.session.clone(),
            Session {
                channel: report.channel.clone(),
                last: report,
                at: now,
            },
        );
        Ok(delta)
    }

    /// Forgets the session heard from longest ago, if it is idle.
    fn evict_idle(&mut self, now: Instant) -> bool {
        let oldest = self
            .sessions
            .iter()
            .min_by_key(|(_, s)| s.at)
            .filter(|(_, s)| now.saturating_duration_since(s.at) >= SESSION_IDLE)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                self.sessions.remove(&k);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(session: &str, stalls: u64, stall_ms: u64, watched_ms: u64) -> PlayerReport {
        PlayerReport {
            channel: "demo".into(),
            session: session.into(),
            stalls,
            stall_ms,
            watched_ms,
        }
    }

    fn demo(c: &str) -> bool {
        c == "demo"
    }

    #[test]
    fn cumulative_reports_give_their_growth() {
        let t0 = Instant::now();
        let mut book = ReportBook::new(4);
        let d = book
            .handle_report(report("a", 0, 0, 5_000), demo, t0)
            .expect("first");
        assert_eq!(d.watched, Duration::from_secs(5));
        let d = book
            .handle_report(
                report("a", 1, 800, 10_000),
                demo,
                t0 + Duration::from_secs(5),
            )
            .expect("second");
        assert_eq!(
            d,
            ViewerDelta {
                stalls: 1,
                stall: Duration::from_millis(800),
                watched: Duration::from_secs(5),
            }
        );
        // The same report again adds nothing.
        let d = book
            .handle_report(
                report("a", 1, 800, 10_000),
                demo,
                t0 + Duration::from_secs(6),
            )
            .expect("repeat");
        assert_eq!(d, ViewerDelta::default());
    }

    #[test]
    fn impossible_reports_are_refused_and_change_nothing() {
        let t0 = Instant::now();
        let mut book = ReportBook::new(2);
        let mut other = report("a", 0, 0, 1_000);
        other.channel = "other".into();
        assert!(matches!(
            book.handle_report(other, demo, t0),
            Err(ReportRefused::Channel(_))
        ));
        assert_eq!(
            book.handle_report(report("bad id!", 0, 0, 1), demo, t0),
            Err(ReportRefused::Session)
        );
        assert_eq!(
            book.handle_report(report("a", 0, 0, 3_600_000), demo, t0),
            Err(ReportRefused::TooFast)
        );
        assert_eq!(
            book.handle_report(report("a", 1, 2_000, 1_000), demo, t0),
            Err(ReportRefused::Impossible)
        );
        assert_eq!(
            book.handle_report(report("a", 500, 100, 1_000), demo, t0),
            Err(ReportRefused::Impossible)
        );
        assert!(book.is_empty());
        book.handle_report(report("a", 1, 100, 1_000), demo, t0)
            .expect("fine");
        assert_eq!(
            book.handle_report(report("a", 0, 100, 2_000), demo, t0),
            Err(ReportRefused::Shrank)
        );
        // Two seconds of wall clock cannot hold a minute of watching.
        assert_eq!(
            book.handle_report(
                report("a", 1, 100, 61_000),
                demo,
                t0 + Duration::from_secs(2)
            ),
            Err(ReportRefused::TooFast)
        );
    }

    #[test]
    fn sessions_are_bounded_and_idle_ones_make_room() {
        let t0 = Instant::now();
        let mut book = ReportBook::new(2);
        book.handle_report(report("a", 0, 0, 1_000), demo, t0)
            .expect("a");
        book.handle_report(report("b", 0, 0, 1_000), demo, t0)
            .expect("b");
        assert_eq!(
            book.handle_report(report("c", 0, 0, 1_000), demo, t0),
            Err(ReportRefused::Full)
        );
        let later = t0 + SESSION_IDLE;
        book.handle_report(report("c", 0, 0, 1_000), demo, later)
            .expect("room after idle");
        assert_eq!(book.len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn accepted_growth_never_exceeds_the_clock(
            steps in proptest::collection::vec((0u64..5, 0u64..5_000, 0u64..20_000, 0u64..20_000), 1..40)
        ) {
            let t0 = Instant::now();
            let mut book = ReportBook::new(1);
            let (mut s, mut sm, mut w, mut clock) = (0u64, 0u64, 0u64, 0u64);
            let mut total = Duration::ZERO;
            for (ds, dsm, dw, dt) in steps {
                clock += dt;
                let r = report("x", s + ds, sm + dsm, w + dw);
                if let Ok(d) = book.handle_report(r.clone(), demo, t0 + Duration::from_millis(clock)) {
                    s = r.stalls; sm = r.stall_ms; w = r.watched_ms;
                    total += d.watched;
                    proptest::prop_assert!(d.stall <= Duration::from_millis(w));
                }
            }
            proptest::prop_assert!(total <= FIRST_REPORT_MAX + Duration::from_millis(clock) + CLOCK_SLACK * 40);
        }
    }
}
