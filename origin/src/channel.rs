//! A live channel: segmenter events in, a signed, fetchable HLS window out.
//!
//! - an ingest session feeds [`segmenter::Event`]s to [`Channel::apply`];
//! - a segment becomes fetchable the moment it starts (a [`GrowingBody`]
//!   readers stream while it grows, so an edge can start pushing before the
//!   segment is complete), is hashed as it grows, and when it ends is signed
//!   with the origin key and listed in the playlist;
//! - the playlist text is rendered once per change and swapped in whole, so
//!   a reader never sees a half-written playlist;
//! - segments that left the window are kept until the playlist says they
//!   expired, then dropped: memory is bounded by the window plus retention;
//! - the next media sequence number is persisted so a restarted origin
//!   never reuses a segment URL for different bytes.
//!
//! [`segmenter::Event`]: crate::segmenter::Event

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use treecast_proto::body::BodyWriter;
use treecast_proto::{ChannelName, GrowingBody, OriginKey, SegmentRecord};

use crate::metrics::IngestMetrics;
use crate::playlist::{ticks_to_duration, CompletedSegment, Playlist, PlaylistConfig};
use crate::segmenter::{Event, Notice, SegmentStart};

/// What is persisted per channel, in `<data>/channels/<name>.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Media sequence number the next segment will get.
    pub next_seq: u64,
    /// Discontinuity sequence number after every segment so far.
    pub next_discontinuity_sequence: u64,
    /// The target duration chosen for the channel's stream, once chosen;
    /// later sessions and a restarted origin keep it.
    #[serde(default)]
    pub target_duration: Option<u64>,
}

/// Public figures about a channel, for `/api/channels` and the ingest CLI.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChannelStatus {
    /// Channel name.
    pub channel: String,
    /// Whether a publisher is connected.
    pub live: bool,
    /// Segments published since the origin started.
    pub segments_cut: u64,
    /// Media sequence number of the next segment.
    pub next_seq: u64,
    /// Segments listed in the playlist.
    pub window_segments: usize,
    /// Bytes received from publishers since the origin started.
    pub bytes_in: u64,
    /// Problems found in the input since the origin started.
    pub input_errors: u64,
    /// The last problem found, if any.
    pub last_error: Option<String>,
    /// The playlist's target duration, once chosen.
    pub target_duration: Option<u64>,
    /// Media duration of the last segment, in seconds.
    pub last_segment_seconds: Option<f64>,
}

struct OpenSegment {
    seq: u64,
    writer: BodyWriter,
    hasher: blake3::Hasher,
    start: SegmentStart,
    program_date_time: SystemTime,
}

struct Stored {
    body: GrowingBody,
    /// The `.sig` JSON document, once the segment is complete.
    signature: Option<Bytes>,
}

struct State {
    playlist: Playlist,
    rendered: Option<Bytes>,
    segments: BTreeMap<u64, Stored>,
    open: Option<OpenSegment>,
    next_seq: u64,
    /// The target duration, once the first session chose it.
    target_duration: Option<u64>,
    /// PDT and duration of the last completed segment, to continue PDTs.
    last_end: Option<SystemTime>,
    /// The next segment follows a new publishing session or a restart.
    source_discontinuity: bool,
    publisher: Option<u64>,
    status: ChannelStatus,
}

/// A segment as the HTTP layer sees it.
#[derive(Debug, Clone)]
pub enum SegmentLookup {
    /// Started (maybe still growing) and fetchable.
    Found(GrowingBody),
    /// The next segment: not started yet, will be soon.
    Upcoming,
    /// Expired, never existed, or too far ahead.
    Missing,
}

/// One live channel; see the module docs.
pub struct Channel {
    name: ChannelName,
    key: Arc<OriginKey>,
    metrics: IngestMetrics,
    state: Mutex<State>,
    /// Bumped whenever a segment starts or completes.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.name).finish()
    }
}

/// A publisher already holds the channel.
#[derive(Debug, thiserror::Error)]
#[error("channel {0} already has a publisher; stop it first or publish to another channel")]
pub struct ChannelBusy(pub ChannelName);

impl Channel {
    fn new(
        name: ChannelName,
        key: Arc<OriginKey>,
        metrics: IngestMetrics,
        config: PlaylistConfig,
        persisted: Option<PersistedState>,
    ) -> Self {
        let p = persisted.unwrap_or_default();
        let mut playlist = Playlist::new(config, p.next_seq, p.next_discontinuity_sequence);
        if let Some(t) = p.target_duration {
            playlist.set_target_duration(t);
        }
        Self {
            name,
            key,
            metrics,
            state: Mutex::new(State {
                playlist,
                rendered: None,
                target_duration: p.target_duration,
                segments: BTreeMap::new(),
                open: None,
                next_seq: p.next_seq,
                last_end: None,
                source_discontinuity: persisted.is_some(),
                publisher: None,
                status: ChannelStatus {
                    next_seq: p.next_seq,
                    target_duration: p.target_duration,
                    ..Default::default()
                },
            }),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is
        // still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// Claims the channel for publisher `id`.
    pub fn claim(&self, id: u64) -> Result<(), ChannelBusy> {
        let mut s = self.lock();
        if s.publisher.is_some() {
            return Err(ChannelBusy(self.name.clone()));
        }
        s.publisher = Some(id);
        s.status.live = true;
        self.metrics
            .publishers
            .with_label_values(&[self.name.as_str()])
            .set(1);
        Ok(())
    }

    /// Releases the channel after publisher `id`'s session ended. An
    /// unfinished segment is failed (readers see an error, it is never
    /// listed) and the next segment is marked as a discontinuity.
    pub fn release(&self, id: u64) {
        let mut s = self.lock();
        if s.publisher != Some(id) {
            return;
        }
        s.publisher = None;
        s.status.live = false;
        s.source_discontinuity = true;
        if let Some(open) = s.open.take() {
            s.segments.remove(&open.seq);
            open.writer.fail("the publisher went away mid-segment");
        }
        self.metrics
            .publishers
            .with_label_values(&[self.name.as_str()])
            .set(0);
        drop(s);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The target duration the channel's stream was given, if a session
    /// (of this origin run or, persisted, an earlier one) chose it.
    pub fn chosen_target_duration(&self) -> Option<u64> {
        self.lock().target_duration
    }

    /// Counts received bytes.
    pub fn add_bytes_in(&self, n: usize) {
        self.lock().status.bytes_in += n as u64;
        self.metrics
            .bytes
            .with_label_values(&[self.name.as_str()])
            .inc_by(n as u64);
    }

    /// Applies one segmenter event at wall-clock time `now`. Returns state
    /// to persist when a new sequence number was taken.
    pub fn apply(&self, event: Event, now: SystemTime) -> Option<PersistedState> {
        let mut s = self.lock();
        let mut persist = None;
        match event {
            Event::SegmentStart(start) => {
                let discontinuity =
                    start.discontinuity || std::mem::take(&mut s.source_discontinuity);
                let pdt = match (discontinuity, s.last_end) {
                    (false, Some(end)) => end,
                    _ => now,
                };
                let seq = s.next_seq;
                s.next_seq += 1;
                let (writer, body) = GrowingBody::new();
                s.segments.insert(
                    seq,
                    Stored {
                        body,
                        signature: None,
                    },
                );
                if let Some(old) = s.open.replace(OpenSegment {
                    seq,
                    writer,
                    hasher: blake3::Hasher::new(),
                    start: SegmentStart {
                        discontinuity,
                        ..start
                    },
                    program_date_time: pdt,
                }) {
                    // The segmenter always ends a segment before starting one;
                    // if not, the unended one can't be signed.
                    s.segments.remove(&old.seq);
                    old.writer.fail("segment was never completed");
                }
                s.status.next_seq = s.next_seq;
                persist = Some(Self::persisted(&s, u64::from(discontinuity)));
            }
            Event::TargetDuration(secs) => {
                if s.target_duration == Some(secs) {
                    return None;
                }
                s.target_duration = Some(secs);
                s.status.target_duration = Some(secs);
                s.playlist.set_target_duration(secs);
                return Some(Self::persisted(&s, 0));
            }
            Event::Data(bytes) => {
                if let Some(open) = s.open.as_mut() {
                    open.hasher.update(&bytes);
                    open.writer.push(bytes);
                }
                return None;
            }
            Event::SegmentEnd { duration_ticks } => {
                let open = s.open.take()?;
                self.complete(&mut s, open, duration_ticks, now);
            }
            Event::Notice(n) => {
                self.count_problem(&mut s, &n);
                return None;
            }
        }
        drop(s);
        self.changed.send_modify(|v| *v += 1);
        persist
    }

    /// What to persist now; `open_discontinuity` is 1 when the segment just
    /// started is a discontinuity (it is not listed yet).
    fn persisted(s: &State, open_discontinuity: u64) -> PersistedState {
        let listed_disc = s.playlist.entries().filter(|e| e.discontinuity).count() as u64;
        PersistedState {
            next_seq: s.next_seq,
            next_discontinuity_sequence: s.playlist.discontinuity_sequence()
                + listed_disc
                + open_discontinuity,
            target_duration: s.target_duration,
        }
    }

    fn count_problem(&self, s: &mut State, n: &Notice) {
        if n.is_info() {
            return;
        }
        if let Notice::SyncLost { skipped } = n {
            self.metrics
                .skipped_bytes
                .with_label_values(&[self.name.as_str()])
                .inc_by(*skipped as u64);
        }
        self.count(s, n.kind(), n.to_string());
    }

    /// Counts a problem a driver found in the input before the segmenter
    /// (a bad RTMP tag): in the metric and the status, as the segmenter's.
    pub fn count_input_problem(&self, kind: &'static str, message: String) {
        self.count(&mut self.lock(), kind, message);
    }

    fn count(&self, s: &mut State, kind: &'static str, message: String) {
        self.metrics
            .problems
            .with_label_values(&[self.name.as_str(), kind])
            .inc();
        s.status.input_errors += 1;
        s.status.last_error = Some(message);
    }

    fn complete(&self, s: &mut State, open: OpenSegment, duration_ticks: u64, now: SystemTime) {
        let len = open.writer.len() as u64;
        let record = SegmentRecord {
            channel: self.name.clone(),
            seq: open.seq,
            len,
            digest: *open.hasher.finalize().as_bytes(),
            completed_ms: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let signed = self.key.sign(record);
        if let Some(stored) = s.segments.get_mut(&open.seq) {
            stored.signature = Some(Bytes::from(signed.to_json()));
        }
        open.writer.finish();
        s.playlist.handle_segment(
            CompletedSegment {
                seq: open.seq,
                duration_ticks,
                discontinuity: open.start.discontinuity,
                independent: open.start.independent,
                program_date_time: open.program_date_time,
            },
            now,
        );
        s.last_end = Some(open.program_date_time + ticks_to_duration(duration_ticks));
        s.rendered = Some(Bytes::from(s.playlist.render()));
        let secs = duration_ticks as f64 / 90_000.0;
        s.status.segments_cut += 1;
        s.status.last_segment_seconds = Some(secs);
        s.status.window_segments = s.playlist.entries().count();
        let name = self.name.as_str();
        self.metrics.segments.with_label_values(&[name]).inc();
        self.metrics
            .segment_duration
            .with_label_values(&[name])
            .observe(secs);
        self.metrics
            .window_segments
            .with_label_values(&[name])
            .set(s.status.window_segments as i64);
        Self::expire(s, now);
    }

    fn expire(s: &mut State, now: SystemTime) {
        while let Some(seq) = s.playlist.poll_expired(now) {
            s.segments.remove(&seq);
        }
    }

    /// Drops segments whose retention ended (also when no publisher is
    /// feeding the channel).
    pub fn sweep(&self, now: SystemTime) {
        Self::expire(&mut self.lock(), now);
    }

    /// The current playlist text, if any segment is complete.
    pub fn playlist(&self) -> Option<Bytes> {
        self.lock().rendered.clone()
    }

    /// The target duration in seconds.
    pub fn target_duration(&self) -> u64 {
        self.lock().playlist.target_duration()
    }

    /// Finds segment `seq`.
    pub fn segment(&self, seq: u64) -> SegmentLookup {
        let s = self.lock();
        if let Some(stored) = s.segments.get(&seq) {
            return SegmentLookup::Found(stored.body.clone());
        }
        // Only the very next segment of a live channel is worth waiting for.
        if seq == s.next_seq && s.publisher.is_some() {
            SegmentLookup::Upcoming
        } else {
            SegmentLookup::Missing
        }
    }

    /// The `.sig` document of segment `seq`, if it is complete.
    pub fn signature(&self, seq: u64) -> Option<Bytes> {
        self.lock().segments.get(&seq)?.signature.clone()
    }

    /// Waits until segment `seq` starts, up to `timeout`.
    pub async fn wait_for_segment(&self, seq: u64, timeout: Duration) -> SegmentLookup {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                match self.segment(seq) {
                    SegmentLookup::Upcoming => {}
                    other => return other,
                }
                if rx.changed().await.is_err() {
                    return SegmentLookup::Missing;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(SegmentLookup::Missing)
    }

    /// Figures for the status API.
    pub fn status(&self) -> ChannelStatus {
        let mut st = self.lock().status.clone();
        st.channel = self.name.to_string();
        st
    }
}

/// Why a channel could not be opened for publishing.
#[derive(Debug, thiserror::Error)]
pub enum OpenChannelError {
    /// The origin already serves `max_channels` channels.
    #[error("the origin already serves its maximum of {0} channels")]
    TooManyChannels(usize),
    /// The channel's persisted state could not be read.
    #[error("cannot read the state of channel {channel} from {path}: {reason}")]
    State {
        /// The channel.
        channel: ChannelName,
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Every channel of the origin.
#[derive(Debug)]
pub struct Channels {
    map: RwLock<HashMap<ChannelName, Arc<Channel>>>,
    key: Arc<OriginKey>,
    metrics: IngestMetrics,
    playlist: PlaylistConfig,
    state_dir: PathBuf,
    max_channels: usize,
}

impl Channels {
    /// A registry storing channel state under `state_dir`.
    pub fn new(
        key: Arc<OriginKey>,
        metrics: IngestMetrics,
        playlist: PlaylistConfig,
        state_dir: PathBuf,
        max_channels: usize,
    ) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            key,
            metrics,
            playlist,
            state_dir,
            max_channels,
        }
    }

    /// The channel named `name`, if it was ever published since start.
    pub fn get(&self, name: &ChannelName) -> Option<Arc<Channel>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every channel, sorted by name.
    pub fn all(&self) -> Vec<Arc<Channel>> {
        let mut v: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The channel named `name`, created (with its persisted state) if new.
    pub fn open(&self, name: &ChannelName) -> Result<Arc<Channel>, OpenChannelError> {
        if let Some(c) = self.get(name) {
            return Ok(c);
        }
        let persisted = self.load_state(name)?;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        if map.len() >= self.max_channels {
            return Err(OpenChannelError::TooManyChannels(self.max_channels));
        }
        let c = Arc::new(Channel::new(
            name.clone(),
            self.key.clone(),
            self.metrics.clone(),
            self.playlist,
            persisted,
        ));
        map.insert(name.clone(), c.clone());
        Ok(c)
    }

    fn state_path(&self, name: &ChannelName) -> PathBuf {
        self.state_dir.join(format!("{name}.json"))
    }

    fn load_state(&self, name: &ChannelName) -> Result<Option<PersistedState>, OpenChannelError> {
        let path = self.state_path(name);
        let err = |reason: String| OpenChannelError::State {
            channel: name.clone(),
            path: path.clone(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err(format!("{e}; delete the file to start the channel afresh"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes a channel's state atomically (temporary file, then rename).
    pub fn save_state(&self, name: &ChannelName, state: PersistedState) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let path = self.state_path(name);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&state).unwrap_or_default())?;
        std::fs::rename(tmp, path)
    }

    /// Drops expired segments of every channel.
    pub fn sweep(&self, now: SystemTime) {
        for c in self.all() {
            c.sweep(now);
        }
    }
}
