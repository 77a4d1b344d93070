//! The live sliding-window media playlist of one channel.
//!
//! - completed segments come in through [`Playlist::handle_segment`], with
//!   the wall-clock time `now` passed in (no clock of its own);
//! - the window keeps at least `window_segments` segments *and* at least
//!   three target durations of media; older segments leave the head, each
//!   one advancing EXT-X-MEDIA-SEQUENCE by one (and EXT-X-DISCONTINUITY-
//!   SEQUENCE by one if it carried a discontinuity);
//! - a segment that left stays *retained* (still fetchable) for its own
//!   duration plus the playlist's duration at removal, as RFC 8216 §6.2.2
//!   asks; [`Playlist::poll_expired`] says when it may be deleted;
//! - [`Playlist::render`] writes the playlist with m3u8-rs.
//!
//! EXTINF values are cumulative-rounded to milliseconds (each is the
//! difference of the rounded start and end times since the channel began),
//! so their sum never drifts from media time by more than a millisecond.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use m3u8_rs::{MediaPlaylist, MediaSegment};
use treecast_proto::SegmentFile;

use crate::ts::TICKS_PER_SECOND;

/// Fewest segments a live playlist lists (the HLS authoring guidelines ask
/// for at least six for live).
pub const MIN_WINDOW_SEGMENTS: usize = 6;

/// Shape of the playlist.
#[derive(Debug, Clone, Copy)]
pub struct PlaylistConfig {
    /// EXT-X-TARGETDURATION in seconds until the segmenter chooses one
    /// ([`Playlist::set_target_duration`]); fixed for the life of the channel.
    pub target_duration: u64,
    /// Fewest segments listed once the stream has that many.
    pub window_segments: usize,
}

/// One listed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Media sequence number (also its file name, `<seq>.ts`).
    pub seq: u64,
    /// Media duration in 90 kHz ticks.
    pub duration_ticks: u64,
    /// EXTINF in milliseconds (cumulative-rounded).
    pub extinf_ms: u64,
    /// Preceded by EXT-X-DISCONTINUITY.
    pub discontinuity: bool,
    /// Starts on a random access point.
    pub independent: bool,
    /// EXT-X-PROGRAM-DATE-TIME: wall-clock time of the segment's first frame.
    pub program_date_time: SystemTime,
}

/// A completed segment as the segmenter reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedSegment {
    /// Media sequence number.
    pub seq: u64,
    /// Media duration in 90 kHz ticks.
    pub duration_ticks: u64,
    /// Follows a discontinuity.
    pub discontinuity: bool,
    /// Starts on a random access point.
    pub independent: bool,
    /// Wall-clock time of its first frame.
    pub program_date_time: SystemTime,
}

#[derive(Debug, Clone, Copy)]
struct Retired {
    seq: u64,
    until: SystemTime,
}

/// The sliding window; see the module docs.
#[derive(Debug)]
pub struct Playlist {
    config: PlaylistConfig,
    media_sequence: u64,
    discontinuity_sequence: u64,
    entries: VecDeque<Entry>,
    retired: VecDeque<Retired>,
    /// Media ticks since the channel began, for cumulative EXTINF rounding.
    total_ticks: u64,
}

impl Playlist {
    /// An empty playlist whose first segment will be `first_seq`.
    pub fn new(config: PlaylistConfig, first_seq: u64, discontinuity_sequence: u64) -> Self {
        Self {
            config,
            media_sequence: first_seq,
            discontinuity_sequence,
            entries: VecDeque::new(),
            retired: VecDeque::new(),
            total_ticks: 0,
        }
    }

    /// Adds a completed segment and slides the window.
    pub fn handle_segment(&mut self, seg: CompletedSegment, now: SystemTime) {
        let start_ms = ticks_to_ms(self.total_ticks);
        self.total_ticks += seg.duration_ticks;
        let extinf_ms = ticks_to_ms(self.total_ticks) - start_ms;
        if self.entries.is_empty() {
            self.media_sequence = seg.seq;
        }
        self.entries.push_back(Entry {
            seq: seg.seq,
            duration_ticks: seg.duration_ticks,
            extinf_ms,
            discontinuity: seg.discontinuity,
            independent: seg.independent,
            program_date_time: seg.program_date_time,
        });
        let min_ticks = 3 * self.config.target_duration * TICKS_PER_SECOND;
        while self.entries.len() > self.config.window_segments {
            let head = self.entries[0].duration_ticks;
            if self.listed_ticks() - head < min_ticks {
                break;
            }
            let Some(gone) = self.entries.pop_front() else {
                break;
            };
            self.media_sequence += 1;
            if gone.discontinuity {
                self.discontinuity_sequence += 1;
            }
            let keep = ticks_to_duration(gone.duration_ticks + self.listed_ticks());
            self.retired.push_back(Retired {
                seq: gone.seq,
                until: now + keep,
            });
        }
    }

    /// A retired segment whose retention has ended at `now`, to delete.
    pub fn poll_expired(&mut self, now: SystemTime) -> Option<u64> {
        if self.retired.front()?.until <= now {
            self.retired.pop_front().map(|r| r.seq)
        } else {
            None
        }
    }

    /// Whether `seq` may still be served (listed or retained).
    pub fn is_fetchable(&self, seq: u64) -> bool {
        self.entries.iter().any(|e| e.seq == seq) || self.retired.iter().any(|r| r.seq == seq)
    }

    /// The listed segments, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// EXT-X-MEDIA-SEQUENCE.
    pub fn media_sequence(&self) -> u64 {
        self.media_sequence
    }

    /// EXT-X-DISCONTINUITY-SEQUENCE.
    pub fn discontinuity_sequence(&self) -> u64 {
        self.discontinuity_sequence
    }

    /// The target duration in seconds.
    pub fn target_duration(&self) -> u64 {
        self.config.target_duration
    }

    /// Sets the target duration, as the segmenter chose it for the stream.
    /// HLS fixes it for the life of a playlist: a channel sets it once,
    /// before its first segment, and passes it to every later session.
    pub fn set_target_duration(&mut self, secs: u64) {
        self.config.target_duration = secs;
    }

    /// Media listed, in ticks.
    pub fn listed_ticks(&self) -> u64 {
        self.entries.iter().map(|e| e.duration_ticks).sum()
    }

    /// Writes the playlist text.
    pub fn render(&self) -> String {
        let segments = self
            .entries
            .iter()
            .map(|e| MediaSegment {
                uri: SegmentFile::Segment(e.seq).file_name(),
                duration: e.extinf_ms as f32 / 1000.0,
                discontinuity: e.discontinuity,
                program_date_time: Some(DateTime::<Utc>::from(e.program_date_time).fixed_offset()),
                ..Default::default()
            })
            .collect();
        let playlist = MediaPlaylist {
            // Version 3: floating-point EXTINF.
            version: Some(3),
            target_duration: self.config.target_duration,
            media_sequence: self.media_sequence,
            discontinuity_sequence: self.discontinuity_sequence,
            segments,
            independent_segments: !self.entries.is_empty()
                && self.entries.iter().all(|e| e.independent),
            ..Default::default()
        };
        let mut out = Vec::with_capacity(256 + 96 * self.entries.len());
        // Writing to a Vec cannot fail.
        let _ = playlist.write_to(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn ticks_to_ms(ticks: u64) -> u64 {
    (ticks * 1000 + TICKS_PER_SECOND / 2) / TICKS_PER_SECOND
}

/// Converts 90 kHz ticks to a `Duration`.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    // 1 tick = 100_000 / 9 ns.
    Duration::from_nanos(ticks.saturating_mul(100_000) / 9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: u64 = TICKS_PER_SECOND;

    fn config() -> PlaylistConfig {
        PlaylistConfig {
            target_duration: 3,
            window_segments: 6,
        }
    }

    fn seg(seq: u64, ticks: u64, disc: bool, at: SystemTime) -> CompletedSegment {
        CompletedSegment {
            seq,
            duration_ticks: ticks,
            discontinuity: disc,
            independent: true,
            program_date_time: at,
        }
    }

    #[test]
    fn renders_a_live_playlist() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut p = Playlist::new(config(), 10, 0);
        for i in 0..8u64 {
            p.handle_segment(
                seg(10 + i, 2 * T, i == 7, t0 + Duration::from_secs(2 * i)),
                t0,
            );
        }
        let text = p.render();
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("parses back");
        assert_eq!(parsed.target_duration, 3);
        assert_eq!(parsed.media_sequence, 12);
        assert_eq!(parsed.segments.len(), 6);
        assert_eq!(parsed.segments[0].uri, "12.ts");
        assert!(parsed.segments[5].discontinuity);
        assert!(parsed.independent_segments);
        assert!(parsed
            .segments
            .iter()
            .all(|s| s.program_date_time.is_some()));
        assert!(!parsed.end_list);
    }

    #[test]
    fn retention_outlives_removal_by_segment_plus_playlist_duration() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut p = Playlist::new(config(), 0, 0);
        for i in 0..7u64 {
            p.handle_segment(seg(i, 2 * T, false, t0), t0);
        }
        // Segment 0 left at t0; it stays 2 s + 12 s.
        assert!(p.is_fetchable(0));
        assert_eq!(p.poll_expired(t0 + Duration::from_millis(13_999)), None);
        assert_eq!(p.poll_expired(t0 + Duration::from_secs(14)), Some(0));
        assert!(!p.is_fetchable(0));
    }

    proptest! {
        /// The window rules hold for any sequence of segment durations and
        /// discontinuities.
        #[test]
        fn window_invariants(durs in proptest::collection::vec((1u64..=3 * T, any::<bool>()), 1..80)) {
            let t0 = SystemTime::UNIX_EPOCH;
            let mut p = Playlist::new(config(), 100, 5);
            let mut last_ms = p.media_sequence();
            let mut last_ds = p.discontinuity_sequence();
            let mut total_ticks = 0u64;
            let mut total_extinf_ms = 0u64;
            for (i, (d, disc)) in durs.iter().enumerate() {
                let now = t0 + Duration::from_secs(i as u64);
                p.handle_segment(seg(100 + i as u64, *d, *disc, now), now);
                total_ticks += d;
                total_extinf_ms += p.entries().last().map(|e| e.extinf_ms).unwrap_or(0);
                // Media sequence and discontinuity sequence only grow.
                prop_assert!(p.media_sequence() >= last_ms);
                prop_assert!(p.discontinuity_sequence() >= last_ds);
                // One per segment removed from the head.
                let listed = p.entries().count() as u64;
                prop_assert_eq!(p.media_sequence() + listed, 101 + i as u64);
                last_ms = p.media_sequence();
                last_ds = p.discontinuity_sequence();
                // Enough listed: 6 segments and 3 target durations, unless
                // the stream has not produced that much yet.
                if (i + 1) as u64 > listed {
                    prop_assert!(listed >= 6);
                    prop_assert!(p.listed_ticks() >= 9 * T);
                }
                // EXTINF sum tracks media time within a millisecond.
                prop_assert!((total_extinf_ms as i64 - (total_ticks * 1000 / T) as i64).abs() <= 1);
                // Rendered EXTINF never rounds above the target duration.
                for e in p.entries() {
                    prop_assert!((e.extinf_ms + 500) / 1000 <= 3);
                }
            }
            // Retained segments eventually expire, in order, and nothing listed does.
            let far = t0 + Duration::from_secs(10_000);
            let mut prev = None;
            while let Some(seq) = p.poll_expired(far) {
                prop_assert!(seq < p.media_sequence());
                prop_assert!(prev.is_none_or(|p| p < seq));
                prev = Some(seq);
            }
        }
    }
}
