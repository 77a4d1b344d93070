//! How the viewer's playback is going, as the peer can tell.
//!
//! Two observers of the same player:
//! - **inferred**, from the player's own requests to the local proxy
//!   ([`PlayerWatch`]): every segment served adds its duration to the media
//!   the player holds; the player plays it in real time from the first
//!   segment on. When the player, still asking (it re-polls the playlist),
//!   has been given less media than the time that passed, its buffer ran
//!   dry: that is a stall, and it lasts until the next new segment is
//!   served. A player that stops asking for [`IDLE`] has gone away: its
//!   session ends without a stall. The model assumes continuous playback:
//!   a player paused for longer than its buffer shows up as a stall.
//! - **reported**, by the player plugin ([`treecast_proto::viewer`]):
//!   hls.js's own buffer stalls with their durations, posted to
//!   `/player/report`.
//!
//! [`Viewer`] keeps both, exports them as `treecast_peer_viewer_*{source}`,
//! and gives the tracker the larger of the two for each heartbeat interval
//! ([`Viewer::totals`]), so a player without the plugin is still seen and a
//! plugin that sees more than the requests show is believed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use treecast_proto::viewer::{PlayerReport, ReportBook, ReportRefused, ViewerDelta};

use crate::metrics::PeerMetrics;

/// A player that sends no request for this long has stopped playing.
pub const IDLE: Duration = Duration::from_secs(15);

/// Media a player may lack before it counts as dry: segment durations in
/// playlists are rounded, and a player starts playing a little after its
/// first segment arrived.
pub const TOLERANCE: Duration = Duration::from_millis(250);

/// Segments a player holds before it starts playing; startup before that
/// is not a stall.
pub const START_SEGMENTS: u32 = 3;

/// Playback sessions the plugin may report for at once.
pub const REPORT_SESSIONS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Session {
    /// The last request of any kind.
    last_request: Instant,
    /// Media served covers playback until here, once playing.
    buffered_until: Option<Instant>,
    /// Before playing: segments and media held.
    held: (u32, Duration),
    /// Newest segment served.
    last_seq: u64,
    /// Since when the buffer has been dry, when it is.
    dry_since: Option<Instant>,
}

/// The inference from requests; see the module docs. Sans-IO.
#[derive(Debug, Default)]
pub struct PlayerWatch {
    session: Option<Session>,
}

impl PlayerWatch {
    /// The player asked for the playlist at `now`.
    pub fn handle_playlist_request(&mut self, now: Instant) -> ViewerDelta {
        let mut delta = ViewerDelta::default();
        if let Some(s) = self.active(now) {
            advance(s, now, &mut delta);
        }
        delta
    }

    /// Segment `seq`, `duration` long, was served to the player at `now`.
    pub fn handle_segment_served(
        &mut self,
        seq: u64,
        duration: Duration,
        now: Instant,
    ) -> ViewerDelta {
        let mut delta = ViewerDelta::default();
        let s = match self.active(now) {
            Some(s) => {
                advance(s, now, &mut delta);
                if seq <= s.last_seq {
                    // Asked again (a retry, a seek back): no new media.
                    return delta;
                }
                s
            }
            None => self.session.insert(Session {
                last_request: now,
                buffered_until: None,
                held: (0, Duration::ZERO),
                last_seq: seq,
                dry_since: None,
            }),
        };
        s.last_seq = seq;
        s.buffered_until = match (s.buffered_until, s.dry_since.take()) {
            (None, _) => {
                s.held = (s.held.0 + 1, s.held.1 + duration);
                (s.held.0 >= START_SEGMENTS).then_some(now + s.held.1)
            }
            (Some(_), Some(_)) => Some(now + duration),
            (Some(until), None) => Some(until.max(now) + duration),
        };
        delta
    }

    /// The session, unless the player went away.
    fn active(&mut self, now: Instant) -> Option<&mut Session> {
        if self
            .session
            .is_some_and(|s| now.saturating_duration_since(s.last_request) > IDLE)
        {
            self.session = None;
        }
        self.session.as_mut()
    }
}

/// A request at `now`: time watched since the last one, and the stall it
/// reveals or continues.
fn advance(s: &mut Session, now: Instant, delta: &mut ViewerDelta) {
    delta.watched += now.saturating_duration_since(s.last_request);
    let Some(until) = s.buffered_until else {
        // Still starting.
        s.last_request = now;
        return;
    };
    if s.dry_since.is_none() && now > until + TOLERANCE {
        delta.stalls += 1;
        s.dry_since = Some(until);
    }
    if let Some(since) = s.dry_since {
        delta.stall += now.saturating_duration_since(since.max(s.last_request));
    }
    s.last_request = now;
}

/// Stall figures, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewerTotals {
    /// Stalls.
    pub stalls: u64,
    /// Milliseconds stalled.
    pub stall_ms: u64,
    /// Milliseconds watched (stalls included).
    pub watched_ms: u64,
}

impl ViewerTotals {
    fn add(&mut self, d: ViewerDelta) {
        self.stalls += d.stalls;
        self.stall_ms += d.stall.as_millis() as u64;
        self.watched_ms += d.watched.as_millis() as u64;
    }

    /// Growth since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            stalls: self.stalls.saturating_sub(before.stalls),
            stall_ms: self.stall_ms.saturating_sub(before.stall_ms),
            watched_ms: self.watched_ms.saturating_sub(before.watched_ms),
        }
    }

    /// The larger of each figure.
    pub fn max(&self, other: &Self) -> Self {
        Self {
            stalls: self.stalls.max(other.stalls),
            stall_ms: self.stall_ms.max(other.stall_ms),
            watched_ms: self.watched_ms.max(other.watched_ms),
        }
    }

    /// Time stalled over time watched.
    pub fn rebuffer_ratio(&self) -> f64 {
        if self.watched_ms == 0 {
            0.0
        } else {
            self.stall_ms as f64 / self.watched_ms as f64
        }
    }
}

#[derive(Debug, Default)]
struct State {
    watch: PlayerWatch,
    inferred: ViewerTotals,
    reported: ViewerTotals,
}

/// Both observers of one peer's player; see the module docs.
#[derive(Debug)]
pub struct Viewer {
    state: Mutex<State>,
    book: Mutex<ReportBook>,
    metrics: PeerMetrics,
}

/// Both figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewerFigures {
    /// Inferred from the player's requests.
    pub inferred: ViewerTotals,
    /// Reported by the player plugin.
    pub reported: ViewerTotals,
}

impl Viewer {
    /// A viewer with nothing seen yet, counting into `metrics`.
    pub fn new(metrics: PeerMetrics) -> Self {
        Self {
            state: Mutex::new(State::default()),
            book: Mutex::new(ReportBook::new(REPORT_SESSIONS)),
            metrics,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Each update is one call; a panic elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, source: &str, d: ViewerDelta) {
        let m = &self.metrics;
        m.viewer_stalls
            .with_label_values(&[source])
            .inc_by(d.stalls);
        m.viewer_stall_seconds
            .with_label_values(&[source])
            .inc_by(d.stall.as_secs_f64());
        m.viewer_watch_seconds
            .with_label_values(&[source])
            .inc_by(d.watched.as_secs_f64());
    }

    fn inferred(&self, f: impl FnOnce(&mut PlayerWatch) -> ViewerDelta) {
        let d = {
            let mut s = self.state();
            let d = f(&mut s.watch);
            s.inferred.add(d);
            d
        };
        if d.stalls > 0 {
            let s = self.state();
            let seq = s.watch.session.map(|x| x.last_seq);
            tracing::info!(
                last_segment = seq,
                "the player's buffer ran dry (inferred from its requests)"
            );
        }
        self.count("inferred", d);
    }

    /// The player asked for the playlist.
    pub fn playlist_requested(&self, now: Instant) {
        self.inferred(|w| w.handle_playlist_request(now));
    }

    /// A segment was served to the player.
    pub fn segment_served(&self, seq: u64, duration: Duration, now: Instant) {
        self.inferred(|w| w.handle_segment_served(seq, duration, now));
    }

    /// A report from the plugin; refused ones are counted and change
    /// nothing.
    pub fn report(
        &self,
        report: PlayerReport,
        channel: &str,
        now: Instant,
    ) -> Result<(), ReportRefused> {
        let result = self
            .book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle_report(report, |c| c == channel, now);
        match result {
            Ok(d) => {
                self.state().reported.add(d);
                self.count("player", d);
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .player_reports_refused
                    .with_label_values(&[e.label()])
                    .inc();
                Err(e)
            }
        }
    }

    /// Both figures so far.
    pub fn figures(&self) -> ViewerFigures {
        let s = self.state();
        ViewerFigures {
            inferred: s.inferred,
            reported: s.reported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: Duration = Duration::from_secs(2);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_player_that_keeps_up_never_stalls() {
        let t0 = Instant::now();
        let mut w = PlayerWatch::default();
        let mut total = ViewerDelta::default();
        // Three segments at start, then one every 2 s as it is listed,
        // playlist polls in between.
        for seq in 0..3 {
            w.handle_segment_served(seq, TWO, at(t0, seq * 10));
        }
        for seq in 3..30u64 {
            let t = 2_000 * (seq - 2);
            let d = w.handle_playlist_request(at(t0, t - 1_000));
            total.stalls += d.stalls;
            total.watched += d.watched;
            let d = w.handle_segment_served(seq, TWO, at(t0, t));
            total.stalls += d.stalls;
            total.watched += d.watched;
        }
        assert_eq!(total.stalls, 0);
        assert!(total.watched >= Duration::from_secs(50));
    }

    #[test]
    fn a_player_polling_with_nothing_new_stalls_until_the_next_segment() {
        let t0 = Instant::now();
        let mut w = PlayerWatch::default();
        w.handle_segment_served(0, TWO, t0);
        w.handle_segment_served(1, TWO, t0);
        // Playing from the third on, with 4 s of media; polls keep coming,
        // nothing new.
        w.handle_segment_served(2, Duration::ZERO, t0);
        let mut stalls = 0;
        let mut stall = Duration::ZERO;
        for ms in [1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000] {
            let d = w.handle_playlist_request(at(t0, ms));
            stalls += d.stalls;
            stall += d.stall;
        }
        // Dry at 4 s, counted once the tolerance passed.
        assert_eq!(stalls, 1);
        assert_eq!(stall, Duration::from_secs(3));
        let d = w.handle_segment_served(3, TWO, at(t0, 7_500));
        assert_eq!(d.stalls, 0);
        assert_eq!(d.stall, Duration::from_millis(500));
        // Refilled: the next segment on time is no stall.
        let d = w.handle_segment_served(4, TWO, at(t0, 9_000));
        assert_eq!(d.stalls, 0);
        assert_eq!(d.stall, Duration::ZERO);
    }

    #[test]
    fn startup_is_no_stall() {
        let t0 = Instant::now();
        let mut w = PlayerWatch::default();
        // One segment listed, then a long wait for the next two: the
        // player has not started playing yet.
        w.handle_segment_served(0, TWO, t0);
        for ms in [1_000, 3_000, 5_000] {
            assert_eq!(w.handle_playlist_request(at(t0, ms)).stalls, 0);
        }
        w.handle_segment_served(1, TWO, at(t0, 5_500));
        w.handle_segment_served(2, TWO, at(t0, 6_000));
        // Plays from 6 s with 6 s in hand.
        assert_eq!(w.handle_playlist_request(at(t0, 11_900)).stalls, 0);
        assert_eq!(w.handle_playlist_request(at(t0, 12_400)).stalls, 1);
    }

    #[test]
    fn a_player_that_went_away_is_no_stall() {
        let t0 = Instant::now();
        let mut w = PlayerWatch::default();
        w.handle_segment_served(0, TWO, t0);
        // Nothing for longer than IDLE, then a new session.
        let d = w.handle_segment_served(1, TWO, t0 + IDLE + Duration::from_secs(1));
        assert_eq!(d, ViewerDelta::default());
        let d = w.handle_segment_served(2, TWO, t0 + IDLE + Duration::from_secs(2));
        assert_eq!(d.stalls, 0);
    }

    #[test]
    fn a_repeated_request_adds_no_media() {
        let t0 = Instant::now();
        let mut w = PlayerWatch::default();
        for seq in 3..6 {
            w.handle_segment_served(seq, Duration::from_millis(500), t0);
        }
        w.handle_segment_served(5, TWO, at(t0, 100));
        w.handle_segment_served(5, TWO, at(t0, 200));
        let d = w.handle_playlist_request(at(t0, 3_000));
        assert_eq!(d.stalls, 1);
    }

    #[test]
    fn heartbeat_figures_take_the_larger_observer() {
        let a = ViewerTotals {
            stalls: 1,
            stall_ms: 500,
            watched_ms: 10_000,
        };
        let b = ViewerTotals {
            stalls: 2,
            stall_ms: 300,
            watched_ms: 9_000,
        };
        assert_eq!(
            a.max(&b),
            ViewerTotals {
                stalls: 2,
                stall_ms: 500,
                watched_ms: 10_000
            }
        );
        assert_eq!(a.since(&b).stalls, 0);
        assert!((a.rebuffer_ratio() - 0.05).abs() < 1e-9);
    }
}
