//! A simulated HLS player that follows a peer's local playlist in real time
//! the way hls.js does: it starts a few segments behind the end of the
//! playlist, fetches every segment as soon as it is listed, starts playing
//! once it holds [`START_BEHIND`] segments, plays media in real time from
//! what it fetched, and counts a stall whenever playback reaches the end of
//! what it has.
//!
//! It also measures its **delay behind live**: when each segment starts
//! playing, the wall clock minus the segment's `EXT-X-PROGRAM-DATE-TIME`
//! (the origin's clock for the segment's first frame), plus nothing else:
//! the position in the stream against real time.
//!
//! The playback model is pure ([`Playback`], times passed in); [`play`] is
//! the driver that polls the proxy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use m3u8_rs::Playlist;
use tokio::sync::watch;
use treecast_peer::edge_client::EdgeClient;

/// Segments behind the end of the playlist where playback starts (hls.js's
/// `liveSyncDurationCount`).
pub const START_BEHIND: u64 = 3;

/// How often the playlist is reloaded (hls.js reloads a live playlist about
/// every target duration; twice as often here).
const RELOAD: Duration = Duration::from_millis(500);

/// The playback state, without IO.
#[derive(Debug, Default)]
pub struct Playback {
    /// When playback started (first segment in hand).
    pub started: Option<Instant>,
    /// Media buffered until this instant.
    buffered_until: Option<Instant>,
    /// Stalls (buffer ran dry).
    pub stalls: u64,
    /// Time spent stalled.
    pub rebuffer: Duration,
    /// Each stall: when it ended and how long it was.
    pub stall_log: Vec<(Instant, Duration)>,
}

impl Playback {
    /// A segment of `duration` arrived at `now`; returns when it starts
    /// playing.
    pub fn segment(&mut self, duration: Duration, now: Instant) -> Instant {
        match self.buffered_until {
            None => {
                self.started = Some(now);
                self.buffered_until = Some(now + duration);
                now
            }
            Some(until) if now > until => {
                self.stalls += 1;
                self.rebuffer += now - until;
                self.stall_log.push((now, now - until));
                self.buffered_until = Some(now + duration);
                now
            }
            Some(until) => {
                self.buffered_until = Some(until + duration);
                until
            }
        }
    }

    /// Playback ends at `now`; a dry buffer then is a stall too.
    pub fn finish(&mut self, now: Instant) {
        if let Some(until) = self.buffered_until {
            if now > until {
                self.stalls += 1;
                self.rebuffer += now - until;
                self.stall_log.push((now, now - until));
                self.buffered_until = Some(now);
            }
        }
    }

    /// Time since playback started, stalls included.
    pub fn watched(&self, now: Instant) -> Duration {
        self.started.map_or(Duration::ZERO, |s| now - s)
    }
}

/// What one player saw.
#[derive(Debug, Default)]
pub struct PlayerReport {
    /// Segments in hand before playback starts (duration, PDT).
    held: Vec<(Duration, Option<i64>)>,
    /// Peer start to playback start.
    pub startup: Option<Duration>,
    /// Playback figures.
    pub playback: Playback,
    /// Time watched (stalls included).
    pub watched: Duration,
    /// BLAKE3 of every segment fetched, by sequence number.
    pub segments: BTreeMap<u64, blake3::Hash>,
    /// Bytes and media duration of the segments fetched.
    pub bytes: u64,
    /// Media duration fetched.
    pub media: Duration,
    /// Requests that failed.
    pub errors: u64,
    /// Delay behind live at the start of each segment played, ms.
    pub delays_ms: Vec<f64>,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl PlayerReport {
    /// Takes a segment fetched at `now` into the playback model (once
    /// three are in hand) and records its delay behind live.
    fn take(&mut self, d: Duration, pdt_ms: Option<i64>, since: Instant, now: Instant) {
        if self.startup.is_some() {
            let at = self.playback.segment(d, now);
            self.delay(pdt_ms, at, now);
        } else {
            self.held.push((d, pdt_ms));
            if self.held.len() as u64 >= START_BEHIND {
                self.startup = Some(now - since);
                for (d, pdt) in std::mem::take(&mut self.held) {
                    let at = self.playback.segment(d, now);
                    self.delay(pdt, at, now);
                }
            }
        }
    }

    fn delay(&mut self, pdt_ms: Option<i64>, plays_at: Instant, now: Instant) {
        if let Some(pdt) = pdt_ms {
            let wall = unix_ms() + plays_at.saturating_duration_since(now).as_millis() as i64;
            self.delays_ms.push((wall - pdt) as f64);
        }
    }
}

/// Plays `channel` from the proxy behind `client` until `stop` changes;
/// `since` is when the peer was started (for the startup time). Each
/// segment fetched is announced on `progress` (its sequence number).
pub async fn play(
    client: EdgeClient,
    channel: String,
    since: Instant,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<u64>,
) -> PlayerReport {
    let mut report = PlayerReport::default();
    let mut next: Option<u64> = None;
    let playlist_path = format!("/live/{channel}/index.m3u8");
    loop {
        if *stop.borrow() {
            break;
        }
        match client
            .get(&playlist_path, 1 << 20, Duration::from_secs(10))
            .await
            .ok()
            .and_then(|b| match m3u8_rs::parse_playlist_res(&b) {
                Ok(Playlist::MediaPlaylist(p)) => Some(p),
                _ => None,
            }) {
            None => report.errors += 1,
            Some(p) => {
                let first = p.media_sequence;
                let count = p.segments.len() as u64;
                if count > 0 {
                    let last = first + count - 1;
                    let mut seq =
                        *next.get_or_insert(last.saturating_sub(START_BEHIND - 1).max(first));
                    if seq < first {
                        // Fell out of the window: jump to live, as hls.js does.
                        seq = first;
                    }
                    while seq <= last {
                        if *stop.borrow() {
                            break;
                        }
                        let segment = &p.segments[(seq - first) as usize];
                        let duration = segment.duration;
                        let pdt = segment.program_date_time.map(|t| t.timestamp_millis());
                        let path = format!("/live/{channel}/{seq}.ts");
                        match client.get(&path, 64 << 20, Duration::from_secs(10)).await {
                            Ok(bytes) => {
                                let now = Instant::now();
                                let d = Duration::from_secs_f32(duration.max(0.0));
                                report.take(d, pdt, since, now);
                                report.segments.insert(seq, blake3::hash(&bytes));
                                report.bytes += bytes.len() as u64;
                                report.media += d;
                                progress.send_replace(seq);
                                seq += 1;
                            }
                            Err(_) => {
                                report.errors += 1;
                                break;
                            }
                        }
                    }
                    next = Some(seq);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RELOAD) => {}
            _ = stop.changed() => break,
        }
    }
    let now = Instant::now();
    report.playback.finish(now);
    report.watched = report.playback.watched(now);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_buffer_is_a_stall_with_its_duration() {
        let t0 = Instant::now();
        let two = Duration::from_secs(2);
        let mut p = Playback::default();
        assert_eq!(p.segment(two, t0), t0);
        // Plays once the first has.
        assert_eq!(p.segment(two, t0 + Duration::from_millis(100)), t0 + two);
        // Buffered until t0 + 4 s; the next arrives at 5 s and plays at once.
        let late = t0 + Duration::from_secs(5);
        assert_eq!(p.segment(two, late), late);
        assert_eq!(p.stalls, 1);
        assert_eq!(p.rebuffer, Duration::from_secs(1));
        // Buffered until 7 s; stopping at 6 s is no stall.
        p.finish(t0 + Duration::from_secs(6));
        assert_eq!(p.stalls, 1);
        p.finish(t0 + Duration::from_secs(8));
        assert_eq!(p.stalls, 2);
    }
}
