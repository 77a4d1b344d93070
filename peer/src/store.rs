//! The peer's segments and the player's playlist, without IO.
//!
//! - live playlists come in (from the parent, or polled from the edge when
//!   the tree is silent) with the time they arrived: each listed segment's
//!   tags and first-seen time are remembered;
//! - segment bytes come in with the origin's `.sig` document: they are
//!   verified and kept, or refused with the reason (nothing unverified is
//!   ever kept);
//! - [`Store::poll_fallback`] names a segment the player will need that the
//!   tree did not deliver within the grace period: the driver fetches it
//!   from the edge and hands it back like any other;
//! - [`Store::refresh`] moves the local playlist forward and
//!   [`Store::playlist`] renders it: it ends `buffer` behind the live edge,
//!   lists only verified segments, never loses a segment at its end and
//!   never lowers its media sequence (RFC 8216 6.2.1), so any HLS player
//!   follows it unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use m3u8_rs::{MediaPlaylist, MediaSegment, Playlist};
use treecast_proto::{ChannelName, OriginPublicKey, SignedSegment, VerifyError};

/// Segments a player's first local playlist holds when they come from the
/// edge: hls.js and most players start three target durations from a live
/// playlist's end, so with fewer they start on a thin buffer and stall.
pub const START_SEGMENTS: u64 = 3;

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How far behind the live edge the local playlist ends.
    pub buffer: Duration,
    /// How long the tree has to deliver a listed segment before the edge is
    /// asked.
    pub grace: Duration,
    /// Segments in the local playlist.
    pub window: usize,
    /// A player is waiting (the channel was opened by its request): while
    /// no parent streams, fetch its whole first buffer
    /// ([`START_SEGMENTS`]) from the edge at once. Otherwise the tree has
    /// the grace period to bring it (a parent's backfill) before the
    /// edge is asked.
    pub first_buffer_from_edge: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            buffer: Duration::from_secs(2),
            grace: Duration::from_secs(1),
            window: 6,
            first_buffer_from_edge: false,
        }
    }
}

/// A live playlist that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaylistError {
    /// Not a playlist at all.
    #[error("unparsable playlist: {0}")]
    Parse(String),
    /// A master playlist where a media playlist belongs.
    #[error("expected a media playlist, got a master playlist")]
    Master,
}

/// What a live playlist did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaylistUpdate {
    /// It listed segments not seen before.
    Advanced,
    /// Nothing new.
    Same,
    /// Older than one already seen (a stale copy): ignored.
    Stale,
}

#[derive(Debug)]
struct Meta {
    segment: MediaSegment,
    /// Discontinuity sequence number of this segment.
    disc_seq: u64,
    /// When a live playlist first listed it.
    seen: Instant,
}

#[derive(Debug)]
struct Live {
    version: Option<usize>,
    target_duration: u64,
    first: u64,
    /// Last listed segment; `None` for an empty playlist.
    last: Option<u64>,
}

/// Where the local playlist stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyWindow {
    /// First listed segment.
    pub first: u64,
    /// Last listed segment.
    pub last: u64,
}

/// The store; see the module docs.
#[derive(Debug)]
pub struct Store {
    channel: ChannelName,
    key: OriginPublicKey,
    config: StoreConfig,
    live: Option<Live>,
    metas: BTreeMap<u64, Meta>,
    verified: BTreeMap<u64, Bytes>,
    fetching: BTreeSet<u64>,
    window: Option<ProxyWindow>,
}

/// Segments kept beyond the local playlist, for children that join late.
const EXTRA_KEPT: u64 = 4;

impl Store {
    /// An empty store for `channel`, verifying with `key`.
    pub fn new(channel: ChannelName, key: OriginPublicKey, config: StoreConfig) -> Self {
        Self {
            channel,
            key,
            config,
            live: None,
            metas: BTreeMap::new(),
            verified: BTreeMap::new(),
            fetching: BTreeSet::new(),
            window: None,
        }
    }

    /// Takes in a live playlist received at `now`.
    pub fn handle_playlist(
        &mut self,
        text: &[u8],
        now: Instant,
    ) -> Result<PlaylistUpdate, PlaylistError> {
        let p = match m3u8_rs::parse_playlist_res(text) {
            Ok(Playlist::MediaPlaylist(p)) => p,
            Ok(Playlist::MasterPlaylist(_)) => return Err(PlaylistError::Master),
            Err(e) => return Err(PlaylistError::Parse(short(&e.to_string()))),
        };
        let last = (!p.segments.is_empty()).then(|| p.media_sequence + p.segments.len() as u64 - 1);
        if let Some(live) = &self.live {
            if p.media_sequence < live.first || last < live.last {
                return Ok(PlaylistUpdate::Stale);
            }
        }
        let mut update = PlaylistUpdate::Same;
        let mut disc_seq = p.discontinuity_sequence;
        for (i, seg) in p.segments.iter().enumerate() {
            if seg.discontinuity {
                disc_seq += 1;
            }
            let seq = p.media_sequence + i as u64;
            self.metas.entry(seq).or_insert_with(|| {
                update = PlaylistUpdate::Advanced;
                Meta {
                    segment: seg.clone(),
                    disc_seq,
                    seen: now,
                }
            });
        }
        self.live = Some(Live {
            version: p.version,
            target_duration: p.target_duration,
            first: p.media_sequence,
            last,
        });
        self.prune();
        Ok(update)
    }

    /// True when `seq` is not verified yet: a stream bringing it is useful.
    pub fn wants(&self, seq: u64) -> bool {
        !self.verified.contains_key(&seq) && self.live.as_ref().is_none_or(|l| seq >= l.first)
    }

    /// Verifies a segment against the origin's signature document and keeps
    /// it. `Ok(Some(t))`: newly verified, complete at the origin at `t`
    /// (Unix milliseconds, signed); `Ok(None)`: it was already there.
    pub fn handle_segment(
        &mut self,
        seq: u64,
        bytes: Bytes,
        signature: &[u8],
    ) -> Result<Option<u64>, VerifyError> {
        if self.verified.contains_key(&seq) {
            return Ok(None);
        }
        let signed = SignedSegment::from_json(signature)?;
        self.key
            .verify_segment(&signed, &self.channel, seq, &bytes)?;
        self.fetching.remove(&seq);
        self.verified.insert(seq, bytes);
        self.prune();
        Ok(Some(signed.record.completed_ms))
    }

    /// The first segment a new parent should send. Before the local
    /// playlist opens, the first of the player's first buffer not held
    /// (so a parent's backfill brings what it opens on, and nothing older
    /// than it); after, the one after the newest verified (older holes are
    /// the fallback's). 0 when neither is known: all the parent holds.
    pub fn next_wanted(&self) -> u64 {
        match self.window {
            None => self.first_buffer_missing(),
            Some(_) => None,
        }
        .unwrap_or_else(|| self.verified.last_key_value().map_or(0, |(&s, _)| s + 1))
    }

    /// The first segment of the player's first buffer not verified yet.
    fn first_buffer_missing(&self) -> Option<u64> {
        let end = self.listable_end()?;
        (self.first_buffer_start()?..=end).find(|seq| !self.verified.contains_key(seq))
    }

    /// A verified segment.
    pub fn segment(&self, seq: u64) -> Option<Bytes> {
        self.verified.get(&seq).cloned()
    }

    /// The duration a live playlist gave segment `seq`.
    pub fn duration(&self, seq: u64) -> Option<Duration> {
        let d = self.metas.get(&seq)?.segment.duration;
        Some(Duration::from_secs_f32(d.max(0.0)))
    }

    /// True when a live playlist listed `seq` (so the edge has it).
    pub fn is_listed(&self, seq: u64) -> bool {
        self.metas.contains_key(&seq)
    }

    /// The next segment to fetch from the edge: listed live for longer than
    /// the grace period (no grace while no parent streams, `tree_up`
    /// false: nothing is on its way; the first buffer excepted, see
    /// below), needed by the local playlist, neither verified nor being
    /// fetched. The caller must report the fetch's end with
    /// [`fallback_done`](Self::fallback_done).
    pub fn poll_fallback(&mut self, now: Instant, tree_up: bool) -> Option<u64> {
        let live_last = self.live.as_ref()?.last?;
        // Nothing listed yet: the local playlist opens on the player's
        // whole first buffer ([`Self::refresh`]).
        let start = match self.window {
            Some(w) => w.last + 1,
            None => self.first_buffer_start()?,
        };
        // The tree has its grace while a parent streams. With none, a
        // player waiting (a channel it just asked for) gets its first
        // buffer from the edge at once; a peer no player waits for gives
        // the tree its grace for the first buffer too (its parent is
        // usually a handshake away, and a backfill starts after the
        // newest segment verified, so fetching the end first would leave
        // the rest to the edge).
        let first_buffer_waits = self.window.is_none() && !self.config.first_buffer_from_edge;
        let grace = if tree_up || first_buffer_waits {
            self.config.grace
        } else {
            Duration::ZERO
        };
        let seq = (start..=live_last).find(|seq| {
            !self.verified.contains_key(seq)
                && !self.fetching.contains(seq)
                && self
                    .metas
                    .get(seq)
                    .is_some_and(|m| now.saturating_duration_since(m.seen) >= grace)
        })?;
        self.fetching.insert(seq);
        Some(seq)
    }

    /// The first of the [`START_SEGMENTS`] segments ending at the listable
    /// end (fewer when the live playlist holds fewer).
    fn first_buffer_start(&self) -> Option<u64> {
        let end = self.listable_end()?;
        let live_first = self.live.as_ref()?.first;
        let mut first = end;
        while first > live_first
            && end - first + 1 < START_SEGMENTS
            && self.metas.contains_key(&(first - 1))
        {
            first -= 1;
        }
        Some(first)
    }

    /// Claims `seq` for a fetch from the edge outside the fallback's
    /// schedule (a site leader takes the segment being cut over HTTP):
    /// false when it is verified or already being fetched. The fetch's
    /// end is reported with [`fallback_done`](Self::fallback_done).
    pub fn claim(&mut self, seq: u64) -> bool {
        !self.verified.contains_key(&seq) && self.fetching.insert(seq)
    }

    /// A fallback fetch ended (verified or not); the segment may be asked
    /// for again if it is still missing.
    pub fn fallback_done(&mut self, seq: u64) {
        self.fetching.remove(&seq);
    }

    /// Last segment the local playlist may list: `buffer` behind the live
    /// edge.
    fn listable_end(&self) -> Option<u64> {
        let live = self.live.as_ref()?;
        let mut seq = live.last?;
        let mut held = Duration::ZERO;
        while held < self.config.buffer {
            let d = self.metas.get(&seq)?.segment.duration;
            held += Duration::from_secs_f32(d.max(0.0));
            seq = seq.checked_sub(1)?;
            if seq < live.first {
                return None;
            }
        }
        Some(seq)
    }

    /// Moves the local playlist forward over verified segments; true when
    /// it changed.
    pub fn refresh(&mut self) -> bool {
        let Some(end) = self.listable_end() else {
            return false;
        };
        let before = self.window;
        let mut w = match self.window {
            Some(w) => w,
            None => {
                // The window opens on the player's whole first buffer
                // (fewer segments only where the live playlist has
                // fewer): opened on less, a player starting three
                // segments from the end waits out a segment's duration
                // for each one missing.
                if self.first_buffer_missing().is_some() {
                    return false;
                }
                // Every verified segment before it too (up to the
                // window), for a player that starts further back.
                let mut first = self.first_buffer_start().unwrap_or(end);
                while first > 0
                    && end - first + 1 < self.config.window as u64
                    && self.verified.contains_key(&(first - 1))
                    && self.metas.contains_key(&(first - 1))
                {
                    first -= 1;
                }
                ProxyWindow { first, last: end }
            }
        };
        while w.last < end {
            let next = w.last + 1;
            if !self.metas.contains_key(&next) {
                // Never listed live (a gap in the origin's numbering).
                w.last = next;
                continue;
            }
            if !self.verified.contains_key(&next) {
                break;
            }
            w.last = next;
        }
        let keep = self.config.window.max(1) as u64;
        w.first = w.first.max(w.last.saturating_sub(keep - 1));
        while w.first < w.last && !self.verified.contains_key(&w.first) {
            w.first += 1;
        }
        self.window = Some(w);
        self.prune();
        before != self.window
    }

    /// The local playlist, once it has a segment.
    pub fn playlist(&self) -> Option<String> {
        let live = self.live.as_ref()?;
        let w = self.window?;
        let mut segments = Vec::new();
        let mut gap = false;
        let mut disc_seq = None;
        for seq in w.first..=w.last {
            let (Some(m), true) = (self.metas.get(&seq), self.verified.contains_key(&seq)) else {
                gap = true;
                continue;
            };
            let mut s = m.segment.clone();
            if disc_seq.is_none() {
                // Discontinuities before the first listed segment.
                disc_seq = Some(m.disc_seq - u64::from(s.discontinuity));
            } else if gap {
                s.discontinuity = true;
            }
            gap = false;
            s.uri = format!("{seq}.ts");
            segments.push(s);
        }
        let p = MediaPlaylist {
            version: live.version.or(Some(3)),
            target_duration: live.target_duration,
            media_sequence: w.first,
            discontinuity_sequence: disc_seq.unwrap_or(0),
            segments,
            ..MediaPlaylist::default()
        };
        let mut out = Vec::new();
        p.write_to(&mut out).ok()?;
        String::from_utf8(out).ok()
    }

    /// Where the local playlist stands.
    pub fn window(&self) -> Option<ProxyWindow> {
        self.window
    }

    /// Media time between the end of the local playlist and the live edge.
    pub fn behind_live(&self) -> Duration {
        let (Some(w), Some(last)) = (self.window, self.live.as_ref().and_then(|l| l.last)) else {
            return Duration::ZERO;
        };
        self.metas
            .range(w.last + 1..=last)
            .map(|(_, m)| Duration::from_secs_f32(m.segment.duration.max(0.0)))
            .sum()
    }

    /// The live playlist's target duration.
    pub fn target_duration(&self) -> Option<Duration> {
        self.live
            .as_ref()
            .map(|l| Duration::from_secs(l.target_duration))
    }

    /// Last segment the live playlist lists.
    pub fn live_last(&self) -> Option<u64> {
        self.live.as_ref().and_then(|l| l.last)
    }

    /// Verified segments held.
    pub fn verified_count(&self) -> usize {
        self.verified.len()
    }

    /// Drops what neither the local playlist nor a late child can need.
    fn prune(&mut self) {
        let Some(live) = &self.live else { return };
        let keep_from = self
            .window
            .map_or(live.first, |w| w.first.min(live.first))
            .min(live.last.unwrap_or(live.first).saturating_sub(EXTRA_KEPT));
        self.metas = self.metas.split_off(&keep_from);
        self.verified = self.verified.split_off(&keep_from);
        self.fetching = self.fetching.split_off(&keep_from);
        // Segments ahead of the live playlist (arriving cut-through) are
        // few; a bound keeps a confused parent from growing memory.
        let ahead_limit = live.last.unwrap_or(live.first) + 2 * EXTRA_KEPT;
        self.verified.retain(|&s, _| s <= ahead_limit);
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use treecast_proto::{OriginKey, SegmentRecord};

    fn key() -> OriginKey {
        OriginKey::from_seed([7; 32])
    }

    fn store(buffer_secs: u64) -> Store {
        Store::new(
            ChannelName::new("demo").expect("name"),
            key().public(),
            StoreConfig {
                buffer: Duration::from_secs(buffer_secs),
                grace: Duration::from_secs(1),
                window: 4,
                first_buffer_from_edge: false,
            },
        )
    }

    fn live(first: u64, last: u64, disc_at: &[u64]) -> Vec<u8> {
        let mut s = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-DISCONTINUITY-SEQUENCE:5\n"
        );
        for seq in first..=last {
            if disc_at.contains(&seq) {
                s.push_str("#EXT-X-DISCONTINUITY\n");
            }
            s.push_str(&format!("#EXTINF:2.000,\n{seq}.ts\n"));
        }
        s.into_bytes()
    }

    fn segment(seq: u64) -> (Bytes, Vec<u8>) {
        let bytes = Bytes::from(vec![seq as u8; 1000 + seq as usize]);
        let sig = key()
            .sign(SegmentRecord::for_bytes(
                ChannelName::new("demo").expect("name"),
                seq,
                &bytes,
                1_000 * seq,
            ))
            .to_json()
            .into_bytes();
        (bytes, sig)
    }

    fn deliver(s: &mut Store, seq: u64) {
        let (b, sig) = segment(seq);
        s.handle_segment(seq, b, &sig).expect("verifies");
    }

    fn parse(text: &str) -> MediaPlaylist {
        match m3u8_rs::parse_playlist_res(text.as_bytes()) {
            Ok(Playlist::MediaPlaylist(p)) => p,
            other => panic!("not a media playlist: {other:?}"),
        }
    }

    #[test]
    fn the_local_playlist_trails_live_by_the_buffer_and_lists_only_verified_segments() {
        let mut s = store(4);
        let t0 = Instant::now();
        s.handle_playlist(&live(10, 15, &[]), t0).expect("playlist");
        // 4 s behind 15 (2 s segments) is 13; not verified yet.
        assert!(!s.refresh());
        assert_eq!(s.playlist(), None);
        for seq in 12..=16 {
            deliver(&mut s, seq);
        }
        // A player's first buffer is 11 to 13: 11 is still missing.
        assert!(!s.refresh());
        assert_eq!(s.playlist(), None);
        deliver(&mut s, 11);
        assert!(s.refresh());
        let p = parse(&s.playlist().expect("playlist"));
        assert_eq!(p.media_sequence, 11);
        assert_eq!(p.segments.len(), 3);
        assert_eq!(p.segments[2].uri, "13.ts");
        assert_eq!(s.behind_live(), Duration::from_secs(4));
        // Live moves on; 16 is verified, 17 is not: the list stops at 16
        // until 17 arrives.
        s.handle_playlist(&live(12, 19, &[]), t0).expect("playlist");
        s.refresh();
        let w = s.window().expect("window");
        assert_eq!((w.first, w.last), (13, 16), "a window of 4");
        deliver(&mut s, 17);
        s.refresh();
        assert_eq!(s.window().expect("window").last, 17);
    }

    #[test]
    fn the_window_slides_without_lowering_the_media_sequence() {
        let mut s = store(0);
        let t0 = Instant::now();
        let mut last_first = 0;
        // The first buffer before the first end.
        deliver(&mut s, 3);
        deliver(&mut s, 4);
        for end in 5u64..30 {
            s.handle_playlist(&live(end.saturating_sub(5), end, &[]), t0)
                .expect("playlist");
            deliver(&mut s, end);
            s.refresh();
            let p = parse(&s.playlist().expect("playlist"));
            assert!(p.media_sequence >= last_first);
            assert!(p.segments.len() <= 4);
            assert_eq!(
                p.segments.last().map(|x| x.uri.clone()),
                Some(format!("{end}.ts"))
            );
            last_first = p.media_sequence;
        }
        assert!(s.verified_count() <= 4 + 2 * EXTRA_KEPT as usize);
    }

    #[test]
    fn discontinuities_are_counted_for_segments_that_slid_out() {
        let mut s = store(0);
        let t0 = Instant::now();
        s.handle_playlist(&live(1, 3, &[2]), t0).expect("playlist");
        for seq in 1..=3 {
            deliver(&mut s, seq);
        }
        s.refresh();
        let p = parse(&s.playlist().expect("playlist"));
        assert_eq!(p.media_sequence, 1);
        assert_eq!(p.discontinuity_sequence, 5);
        assert!(p.segments[1].discontinuity);
        s.handle_playlist(&live(2, 6, &[2]), t0).expect("playlist");
        for seq in 4..=6 {
            deliver(&mut s, seq);
        }
        s.refresh();
        let p = parse(&s.playlist().expect("playlist"));
        assert_eq!(p.media_sequence, 3);
        // 5 before the live window, one more at 2 which slid out.
        assert_eq!(p.discontinuity_sequence, 6);
        assert!(!p.segments[0].discontinuity);
    }

    #[test]
    fn a_tampered_or_truncated_segment_is_refused_and_not_kept() {
        let mut s = store(0);
        s.handle_playlist(&live(1, 3, &[]), Instant::now())
            .expect("playlist");
        let (b, sig) = segment(3);
        let mut bad = b.to_vec();
        bad[10] ^= 1;
        assert_eq!(
            s.handle_segment(3, bad.into(), &sig),
            Err(VerifyError::DigestMismatch)
        );
        assert!(matches!(
            s.handle_segment(3, b.slice(..100), &sig),
            Err(VerifyError::LengthMismatch { .. })
        ));
        assert!(matches!(
            s.handle_segment(2, b.clone(), &sig),
            Err(VerifyError::WrongSequence { .. })
        ));
        assert!(s.segment(3).is_none());
        assert_eq!(s.handle_segment(3, b.clone(), &sig), Ok(Some(3_000)));
        assert_eq!(s.handle_segment(3, b, &sig), Ok(None));
    }

    #[test]
    fn the_edge_is_asked_only_after_the_grace_period_and_once() {
        let mut s = store(2);
        let t0 = Instant::now();
        s.handle_playlist(&live(1, 6, &[]), t0).expect("playlist");
        assert_eq!(s.poll_fallback(t0, true), None);
        let later = t0 + Duration::from_millis(1500);
        // The local playlist will open on 3 to 5 (ending 2 s behind 6).
        for seq in 3..=6 {
            assert_eq!(s.poll_fallback(later, true), Some(seq));
        }
        assert_eq!(s.poll_fallback(later, true), None);
        s.fallback_done(6);
        assert_eq!(s.poll_fallback(later, true), Some(6));
        for seq in 3..=5 {
            deliver(&mut s, seq);
        }
        s.refresh();
        assert_eq!(s.window().expect("window").last, 5);
    }

    #[test]
    fn while_no_parent_streams_the_edge_is_asked_at_once_after_the_first_buffer() {
        let mut s = store(2);
        let t0 = Instant::now();
        s.handle_playlist(&live(1, 6, &[]), t0).expect("playlist");
        assert_eq!(s.poll_fallback(t0, true), None, "a parent gets its grace");
        // No player waiting and no parent yet: the first buffer waits
        // the grace too (the parent's backfill brings it).
        assert_eq!(s.poll_fallback(t0, false), None);
        for seq in 3..=5 {
            deliver(&mut s, seq);
        }
        assert!(s.refresh());
        let t1 = t0 + Duration::from_millis(100);
        s.handle_playlist(&live(1, 7, &[]), t1).expect("playlist");
        assert_eq!(s.poll_fallback(t1, true), None, "a parent gets its grace");
        assert_eq!(s.poll_fallback(t1, false), Some(6), "none is streaming");
        assert_eq!(s.poll_fallback(t1, false), Some(7));
    }

    #[test]
    fn a_partial_backfill_opens_no_playlist_and_the_edge_completes_it_after_the_grace() {
        let mut s = store(2);
        let t0 = Instant::now();
        s.handle_playlist(&live(1, 6, &[]), t0).expect("playlist");
        // The parent's backfill brings 5 and 4; 3 is late.
        for seq in [5, 4] {
            deliver(&mut s, seq);
            assert!(!s.refresh(), "a player would start on less than three");
        }
        assert_eq!(s.playlist(), None);
        assert_eq!(s.poll_fallback(t0, true), None, "the parent gets its grace");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(s.poll_fallback(later, true), Some(3));
        deliver(&mut s, 3);
        s.fallback_done(3);
        assert!(s.refresh());
        let p = parse(&s.playlist().expect("playlist"));
        assert_eq!((p.media_sequence, p.segments.len()), (3, 3));
    }

    #[test]
    fn a_waiting_player_gets_its_first_buffer_from_the_edge() {
        let mut s = store(2);
        s.config.first_buffer_from_edge = true;
        let t0 = Instant::now();
        s.handle_playlist(&live(1, 6, &[]), t0).expect("playlist");
        assert_eq!(s.poll_fallback(t0, true), None, "a parent gets its grace");
        // The local playlist will end at 5; the player's first buffer is
        // the three segments up to it, then what follows.
        for seq in 3..=6 {
            assert_eq!(s.poll_fallback(t0, false), Some(seq), "none is streaming");
        }
        assert_eq!(s.poll_fallback(t0, false), None);
        // The last arrives first: nothing is listed until the rest has.
        deliver(&mut s, 5);
        assert!(!s.refresh());
        assert!(s.window().is_none());
        s.fallback_done(5);
        for seq in [4, 3] {
            deliver(&mut s, seq);
            s.fallback_done(seq);
        }
        s.refresh();
        let w = s.window().expect("window");
        assert_eq!((w.first, w.last), (3, 5), "the player starts on a buffer");
    }

    #[test]
    fn a_new_parent_is_asked_from_the_first_buffer_then_from_the_newest() {
        let mut s = store(2);
        assert_eq!(s.next_wanted(), 0, "no live playlist: all it holds");
        s.handle_playlist(&live(1, 6, &[]), Instant::now())
            .expect("playlist");
        // The first buffer is 3 to 5: nothing older is of use.
        assert_eq!(s.next_wanted(), 3);
        deliver(&mut s, 5);
        assert_eq!(s.next_wanted(), 3, "the first buffer's hole first");
        deliver(&mut s, 3);
        assert_eq!(s.next_wanted(), 4);
        deliver(&mut s, 4);
        assert!(s.refresh());
        assert_eq!(s.next_wanted(), 6, "once open, after the newest");
    }

    #[test]
    fn stale_and_broken_playlists_change_nothing() {
        let mut s = store(0);
        let t0 = Instant::now();
        s.handle_playlist(&live(5, 9, &[]), t0).expect("playlist");
        assert_eq!(
            s.handle_playlist(&live(4, 8, &[]), t0),
            Ok(PlaylistUpdate::Stale)
        );
        assert!(s.handle_playlist(b"garbage", t0).is_err());
        assert_eq!(
            s.handle_playlist(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nx.m3u8\n", t0),
            Err(PlaylistError::Master)
        );
        assert_eq!(s.live_last(), Some(9));
    }
}
