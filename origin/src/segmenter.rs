//! The segmenter: a live MPEG-TS byte stream in, HLS segments out.
//!
//! - bytes in through [`Segmenter::handle_input`] (any chunking), end of the
//!   feed through [`Segmenter::handle_end_of_input`];
//! - the framer cuts packets, PAT/PMT are tracked, each elementary stream's
//!   packets are collected into whole PES packets (access units);
//! - the *driving* stream (the first H.264/H.265 video, else the first audio)
//!   decides where segments start: on a random access point read from the NAL
//!   units, once at least `segment_ticks` of media has gone by;
//! - events out through [`Segmenter::poll_event`]: a segment starts, its bytes
//!   (whole PES packets, continuity counters rewritten so they run on across
//!   segments), it ends with its duration; and notices about bad input.
//!
//! Rules this keeps (see `docs/segmenting.md`):
//!
//! - every segment opens with a PAT and PMT, then the driving stream's random
//!   access point; no PES straddles a segment boundary (other streams' PES
//!   go into the segment that is open when they complete);
//! - durations are measured in 90 kHz ticks from cut PTS to next cut PTS, on
//!   a timeline unwrapped across the 33-bit PTS wrap;
//! - a segment's EXTINF, rounded, is never above the target duration: if the
//!   GOP is longer, the segment is cut at the first frame at or past the
//!   target and the next segment is marked not independent
//!   ([`SegmentStart::independent`] false);
//! - a timestamp jump (looped or restarted source) or a changed PMT ends the
//!   segment and marks the next one as a discontinuity;
//! - damaged PES (continuity gap, transport error, bad header, oversized) are
//!   dropped, and after a video loss everything up to the next random access
//!   point is dropped too, so no undecodable frame is published.
//!
//! Nothing here does IO or reads a clock; time is the stream's own PTS.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::ts::framer::{Framed, Framer};
use crate::ts::nal::{AccessUnitKind, NalScanner, VideoCodec};
use crate::ts::packet::{carries_payload, set_continuity, PacketError, PacketHeader, PAT_PID};
use crate::ts::pes::{PesError, PesHeader};
use crate::ts::psi::{section_packets, Pat, Pmt, PsiError, SectionAssembler};
use crate::ts::timestamp::{distance, Unwrapped, Unwrapper};
use crate::ts::{PACKET_LEN, TICKS_PER_SECOND};

/// How the playlist's target duration is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRule {
    /// This many seconds, whatever the input.
    Fixed(u64),
    /// Learned from the input's first GOP before anything is published (see
    /// [`target_for_gop`]), at most `max` seconds.
    Learn {
        /// The largest target chosen; a stream without a second random
        /// access point within this much media gets it.
        max: u64,
    },
}

/// Tunables of one segmenter.
#[derive(Debug, Clone)]
pub struct SegmenterConfig {
    /// Media per segment to aim for, in 90 kHz ticks: a segment is cut at the
    /// first random access point at or after this much media.
    pub segment_ticks: u64,
    /// How the target duration (the hard upper bound on a segment's media)
    /// is chosen.
    pub target: TargetRule,
    /// Largest PES packet accepted, in bytes of TS packets; larger ones are
    /// dropped (a PES that never ends must not grow memory without bound).
    pub max_pes_bytes: usize,
    /// Most bytes of other streams held back while waiting for the driving
    /// stream to open a segment.
    pub max_held_bytes: usize,
}

impl SegmenterConfig {
    /// A config for `segment_secs` aimed and a fixed target of `target_secs`.
    pub fn new(segment_secs: f64, target_secs: u64) -> Self {
        Self::with_target(segment_secs, TargetRule::Fixed(target_secs))
    }

    /// A config for `segment_secs` aimed, the target learned from the
    /// input's GOP up to `max_target_secs`.
    pub fn learning(segment_secs: f64, max_target_secs: u64) -> Self {
        Self::with_target(
            segment_secs,
            TargetRule::Learn {
                max: max_target_secs,
            },
        )
    }

    fn with_target(segment_secs: f64, target: TargetRule) -> Self {
        Self {
            segment_ticks: (segment_secs * TICKS_PER_SECOND as f64) as u64,
            target,
            max_pes_bytes: 16 << 20,
            max_held_bytes: 8 << 20,
        }
    }
}

/// The target duration for a stream whose GOP lasts `gop_ticks` when
/// segments aim at `segment_ticks`: the longer of the two rounded up with
/// half a second to spare, so that GOPs a little longer than the first (an
/// encoder's rate control, frame timing jitter) still fit, and capped at
/// `max` seconds. A 2 s GOP gets 3 s, OBS's default 250 frames at 30 fps
/// (8.33 s) gets 9 s.
pub fn target_for_gop(gop_ticks: u64, segment_ticks: u64, max: u64) -> u64 {
    let longest = gop_ticks.max(segment_ticks) as f64 / TICKS_PER_SECOND as f64;
    let floor = (segment_ticks as f64 / TICKS_PER_SECOND as f64).ceil() as u64;
    ((longest + 0.5).ceil() as u64).clamp(floor.max(1), max.max(floor).max(1))
}

/// What the segmenter tells its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new segment begins; [`Event::Data`] that follows belongs to it.
    SegmentStart(SegmentStart),
    /// Bytes appended to the open segment.
    Data(Bytes),
    /// The open segment is complete.
    SegmentEnd {
        /// Media duration in 90 kHz ticks.
        duration_ticks: u64,
    },
    /// Something about the input worth a log line and a metric.
    Notice(Notice),
    /// The playlist's target duration in seconds; comes once, before the
    /// first [`Event::SegmentStart`], and holds for the whole stream.
    TargetDuration(u64),
}

/// How a segment begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStart {
    /// The stream's timeline or program changed since the last segment.
    pub discontinuity: bool,
    /// The segment starts on a random access point (false only after a
    /// forced cut in a GOP longer than the target duration).
    pub independent: bool,
}

/// Problems and changes found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Bytes skipped to find packet sync again (garbage, truncated packets).
    SyncLost {
        /// Bytes thrown away.
        skipped: usize,
    },
    /// A packet with an impossible header.
    BadPacket(PacketError),
    /// A continuity counter gap: packets were lost on this PID.
    ContinuityError {
        /// The PID.
        pid: u16,
    },
    /// The sender flagged a packet as damaged.
    TransportError {
        /// The PID.
        pid: u16,
    },
    /// A PAT or PMT section was damaged or malformed.
    BadSection {
        /// The PID.
        pid: u16,
        /// What was wrong.
        error: PsiError,
    },
    /// A PES packet was thrown away.
    PesDropped {
        /// The PID.
        pid: u16,
        /// Why.
        reason: DropReason,
    },
    /// The PMT's list of streams changed mid-stream.
    ProgramChanged,
    /// A stream of a type the segmenter does not carry.
    UnsupportedStream {
        /// The PID.
        pid: u16,
        /// Its `stream_type`.
        stream_type: u8,
    },
    /// The program has no video or audio stream to segment on.
    NoPlayableStream,
    /// Timestamps jumped (looped or restarted source).
    TimelineJump {
        /// The PID whose timestamps jumped.
        pid: u16,
    },
    /// A GOP ran past the target duration and the segment was cut on a
    /// frame that is not a random access point.
    ForcedCut {
        /// Media in the cut segment, in ticks.
        elapsed_ticks: u64,
    },
    /// No random access point has arrived for this long.
    WaitingForKeyframe {
        /// Media dropped while waiting, in ticks.
        waited_ticks: u64,
    },
    /// A keyframe arrived without its parameter sets (SPS/PPS/VPS), so it
    /// cannot start a segment.
    KeyframeWithoutParameterSets,
    /// Held-back data of other streams was dropped to stay within bounds.
    HeldDataDropped {
        /// Bytes dropped.
        bytes: usize,
    },
    /// The target duration was chosen before publishing the first segment.
    TargetChosen {
        /// Seconds.
        target_secs: u64,
        /// The first GOP, in ticks, if one was seen.
        gop_ticks: Option<u64>,
        /// The GOP in frames the encoder declared, if it did.
        encoder_keyint: Option<u32>,
    },
}

impl Notice {
    /// Whether this is news rather than a problem with the input.
    pub fn is_info(&self) -> bool {
        matches!(self, Notice::TargetChosen { .. })
    }

    /// A short stable name, used as the `kind` label of the problems metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::SyncLost { .. } => "sync_lost",
            Notice::BadPacket(_) => "bad_packet",
            Notice::ContinuityError { .. } => "continuity_error",
            Notice::TransportError { .. } => "transport_error",
            Notice::BadSection { .. } => "bad_section",
            Notice::PesDropped { .. } => "pes_dropped",
            Notice::ProgramChanged => "program_changed",
            Notice::UnsupportedStream { .. } => "unsupported_stream",
            Notice::NoPlayableStream => "no_playable_stream",
            Notice::TimelineJump { .. } => "timeline_jump",
            Notice::ForcedCut { .. } => "forced_cut",
            Notice::WaitingForKeyframe { .. } => "waiting_for_keyframe",
            Notice::KeyframeWithoutParameterSets => "keyframe_without_parameter_sets",
            Notice::HeldDataDropped { .. } => "held_data_dropped",
            Notice::TargetChosen { .. } => "target_chosen",
        }
    }
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::SyncLost { skipped } => write!(f, "lost packet sync, skipped {skipped} bytes"),
            Notice::BadPacket(e) => write!(f, "bad packet: {e}"),
            Notice::ContinuityError { pid } => write!(f, "continuity counter gap on PID {pid:#x}: packets lost"),
            Notice::TransportError { pid } => write!(f, "packet on PID {pid:#x} flagged as damaged by the sender"),
            Notice::BadSection { pid, error } => write!(f, "bad PSI section on PID {pid:#x}: {error}"),
            Notice::PesDropped { pid, reason } => write!(f, "dropped a PES on PID {pid:#x}: {reason:?}"),
            Notice::ProgramChanged => write!(f, "the PMT's streams changed mid-stream; starting a discontinuity"),
            Notice::UnsupportedStream { pid, stream_type } => write!(f, "stream type {stream_type:#04x} on PID {pid:#x} is not supported (use H.264 or H.265 video); not carried"),
            Notice::NoPlayableStream => write!(f, "the program has no H.264/H.265 video or audio stream to segment"),
            Notice::TimelineJump { pid } => write!(f, "timestamps on PID {pid:#x} jumped (source looped or restarted); marking a discontinuity"),
            Notice::ForcedCut { elapsed_ticks } => write!(f, "no keyframe within the target duration ({:.2} s); cut on a non-keyframe. Set the encoder's GOP to at most the segment duration", *elapsed_ticks as f64 / 90_000.0),
            Notice::WaitingForKeyframe { waited_ticks } => write!(f, "no keyframe for {:.1} s of media; nothing is published until one arrives", *waited_ticks as f64 / 90_000.0),
            Notice::KeyframeWithoutParameterSets => write!(f, "keyframe without in-band SPS/PPS cannot start a segment; have the encoder repeat headers"),
            Notice::HeldDataDropped { bytes } => write!(f, "dropped {bytes} bytes of audio/data held while waiting for video"),
            Notice::TargetChosen { target_secs, gop_ticks, encoder_keyint } => {
                write!(f, "target duration {target_secs} s")?;
                match gop_ticks {
                    Some(g) => write!(f, " for a GOP of {:.2} s", *g as f64 / 90_000.0)?,
                    None => write!(f, " (no second keyframe within it)")?,
                }
                match encoder_keyint {
                    Some(k) => write!(f, "; the encoder declares keyint={k}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Why a PES was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Part of it was lost or flagged as damaged.
    Damaged,
    /// Its header could not be parsed.
    BadHeader(PesError),
    /// It grew past `max_pes_bytes`.
    TooLarge,
    /// Video after a loss, before the next random access point.
    AwaitingKeyframe,
}

/// Counters a driver can show (the ingest CLI, metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes fed in.
    pub bytes_in: u64,
    /// Packets framed.
    pub packets: u64,
    /// Segments started.
    pub segments: u64,
    /// Ticks between the last two random access points of the driving stream.
    pub last_gop_ticks: Option<u64>,
    /// Frames (driving stream PES) in that GOP.
    pub last_gop_frames: u32,
    /// Video codec of the driving stream, if it is video.
    pub video_codec: Option<VideoCodec>,
    /// Number of audio streams carried.
    pub audio_streams: u32,
    /// The target duration, once chosen.
    pub target_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EsKind {
    Video(VideoCodec),
    Audio,
    Data,
}

#[derive(Debug)]
struct Pes {
    buf: Vec<u8>,
    header: Option<PesHeader>,
    payload_len: usize,
    scanner: Option<NalScanner>,
    damaged: Option<DropReason>,
}

#[derive(Debug)]
struct Es {
    pid: u16,
    kind: EsKind,
    cc_in: Option<u8>,
    cc_out: u8,
    pes: Option<Pes>,
    unwrap: Unwrapper,
    frame_ticks: i64,
    /// The shortest frame step seen: the nominal frame rate of a stream
    /// whose frame rate varies.
    min_frame_ticks: Option<i64>,
    last_decode: Option<i64>,
    /// Video only: drop until the next random access point.
    after_loss: bool,
    /// Follower only: hold PES until the driver opens the next segment.
    holding: bool,
    last_pes_size: usize,
}

#[derive(Debug)]
struct Held {
    es: usize,
    pts_raw: Option<u64>,
    buf: Vec<u8>,
}

/// While the target duration is being learned: segment events are kept
/// here, not published, until the first GOP is known.
#[derive(Debug, Default)]
struct Learning {
    events: VecDeque<Event>,
    bytes: usize,
    first_rap: Option<i64>,
    longest_segment: i64,
}

/// Most bytes of segments kept while learning the GOP; past this the target
/// is chosen from what was seen.
const MAX_LEARNING_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Copy)]
struct OpenSegment {
    start: i64,
    start_raw: u64,
    max_end: i64,
}

/// Cuts a live MPEG-TS stream into HLS segments; see the module docs.
#[derive(Debug)]
pub struct Segmenter {
    config: SegmenterConfig,
    framer: Framer,
    pat_asm: SectionAssembler,
    pat: Option<Pat>,
    pmt_asm: SectionAssembler,
    pmt_section: Option<Vec<u8>>,
    streams: Vec<Es>,
    driver: Option<usize>,
    cc_pat: u8,
    cc_pmt: u8,
    segment: Option<OpenSegment>,
    pending_discontinuity: bool,
    held: VecDeque<Held>,
    held_bytes: usize,
    events: VecDeque<Event>,
    stats: Stats,
    last_rap: Option<i64>,
    frames_since_rap: u32,
    waiting_from: Option<i64>,
    /// The target in effect, in ticks (while learning: the largest allowed).
    target_ticks: i64,
    learning: Option<Learning>,
    encoder_keyint: Option<u32>,
}

/// Steps larger than these (in ticks) between consecutive timestamps of one
/// stream are timeline jumps, not playback: 1 s backward (B-frames reorder by
/// a few frames only), 10 s forward.
const MAX_BACKWARD: i64 = TICKS_PER_SECOND as i64;
const MAX_FORWARD: i64 = 10 * TICKS_PER_SECOND as i64;
/// Other streams' data may start this far before the segment's cut point.
const LEAD_TOLERANCE: i64 = TICKS_PER_SECOND as i64 / 10;
const HALF_SECOND: i64 = TICKS_PER_SECOND as i64 / 2;
/// Assumed frame duration until one is measured (30 fps).
const DEFAULT_FRAME_TICKS: i64 = 3000;

impl Segmenter {
    /// A segmenter waiting for its first PAT.
    pub fn new(config: SegmenterConfig) -> Self {
        let (target, learning) = match config.target {
            TargetRule::Fixed(t) => (t, None),
            TargetRule::Learn { max } => (max, Some(Learning::default())),
        };
        let mut events = VecDeque::new();
        let fixed = learning.is_none().then_some(target);
        if let Some(t) = fixed {
            events.push_back(Event::TargetDuration(t));
        }
        Self {
            target_ticks: (target * TICKS_PER_SECOND) as i64,
            learning,
            encoder_keyint: None,
            config,
            framer: Framer::new(),
            pat_asm: SectionAssembler::default(),
            pat: None,
            pmt_asm: SectionAssembler::default(),
            pmt_section: None,
            streams: Vec::new(),
            driver: None,
            cc_pat: 0,
            cc_pmt: 0,
            segment: None,
            pending_discontinuity: false,
            held: VecDeque::new(),
            held_bytes: 0,
            events,
            stats: Stats {
                target_secs: fixed,
                ..Stats::default()
            },
            last_rap: None,
            frames_since_rap: 0,
            waiting_from: None,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn handle_input(&mut self, input: &[u8]) {
        self.stats.bytes_in += input.len() as u64;
        let mut framer = std::mem::take(&mut self.framer);
        framer.feed(input, |f| self.handle_framed(f));
        self.framer = framer;
    }

    /// The feed ended: completes what is pending and closes the open segment.
    pub fn handle_end_of_input(&mut self) {
        let mut framer = std::mem::take(&mut self.framer);
        framer.finish(|f| self.handle_framed(f));
        self.framer = framer;
        // Followers first, so their last PES still land in the open segment.
        let driver = self.driver;
        let order: Vec<usize> = (0..self.streams.len())
            .filter(|&i| Some(i) != driver)
            .chain(driver)
            .collect();
        for i in order {
            if let Some(pes) = self.streams[i].pes.take() {
                self.complete_pes(i, pes);
            }
        }
        self.flush_held();
        self.end_segment_at_last_frame();
        self.drop_held();
        if self.learning.is_some() {
            self.choose_target(None);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn notice(&mut self, n: Notice) {
        self.events.push_back(Event::Notice(n));
    }

    fn handle_framed(&mut self, framed: Framed<'_>) {
        match framed {
            Framed::Packet(p) => self.handle_packet(p),
            Framed::Lost(skipped) => self.notice(Notice::SyncLost { skipped }),
        }
    }

    fn handle_packet(&mut self, packet: &[u8; PACKET_LEN]) {
        self.stats.packets += 1;
        let header = match PacketHeader::parse(packet) {
            Ok(h) => h,
            Err(e) => return self.notice(Notice::BadPacket(e)),
        };
        let es = self.streams.iter().position(|s| s.pid == header.pid);
        if header.transport_error {
            if let Some(i) = es {
                if let Some(pes) = self.streams[i].pes.as_mut() {
                    pes.damaged = Some(DropReason::Damaged);
                }
            }
            return self.notice(Notice::TransportError { pid: header.pid });
        }
        let payload = &packet[header.payload_offset..];
        if let Some(i) = es {
            self.es_packet(i, &header, packet);
        } else if header.pid == PAT_PID {
            if let Some(section) = self.pat_asm.push(header.payload_start, payload) {
                self.handle_pat(section);
            }
        } else if self.pat.is_some_and(|p| p.pmt_pid == header.pid) {
            if let Some(section) = self.pmt_asm.push(header.payload_start, payload) {
                self.handle_pmt(header.pid, section);
            }
        }
    }

    fn handle_pat(&mut self, section: Result<Vec<u8>, PsiError>) {
        let pat = match section.and_then(|s| Pat::parse(&s)) {
            Ok(Some(pat)) => pat,
            Ok(None) => return self.notice(Notice::NoPlayableStream),
            Err(error) => {
                return self.notice(Notice::BadSection {
                    pid: PAT_PID,
                    error,
                })
            }
        };
        if self.pat.is_some_and(|old| old.pmt_pid != pat.pmt_pid) {
            self.pmt_asm = SectionAssembler::default();
        }
        self.pat = Some(pat);
    }

    fn handle_pmt(&mut self, pid: u16, section: Result<Vec<u8>, PsiError>) {
        let section = match section {
            Ok(s) => s,
            Err(error) => return self.notice(Notice::BadSection { pid, error }),
        };
        if self.pmt_section.as_deref() == Some(&section[..]) {
            return;
        }
        let pmt = match Pmt::parse(&section) {
            Ok(p) => p,
            Err(error) => return self.notice(Notice::BadSection { pid, error }),
        };
        let new_streams = self.classify(&pmt);
        let same = new_streams.len() == self.streams.len()
            && new_streams
                .iter()
                .zip(&self.streams)
                .all(|(a, b)| a.0 == b.pid && a.1 == b.kind);
        self.pmt_section = Some(section);
        if same {
            return;
        }
        if !self.streams.is_empty() {
            self.notice(Notice::ProgramChanged);
            self.end_segment_at_last_frame();
            self.drop_held();
            self.pending_discontinuity = true;
            self.last_rap = None;
        }
        // Output continuity counters run on per PID, even across a program change.
        let old_cc: Vec<(u16, u8)> = self.streams.iter().map(|s| (s.pid, s.cc_out)).collect();
        self.streams = new_streams
            .into_iter()
            .map(|(pid, kind)| Es {
                pid,
                kind,
                cc_in: None,
                cc_out: old_cc.iter().find(|c| c.0 == pid).map_or(0, |c| c.1),
                pes: None,
                unwrap: Unwrapper::new(MAX_BACKWARD, MAX_FORWARD),
                frame_ticks: DEFAULT_FRAME_TICKS,
                min_frame_ticks: None,
                last_decode: None,
                after_loss: false,
                holding: false,
                last_pes_size: 4 * PACKET_LEN,
            })
            .collect();
        self.driver = self
            .streams
            .iter()
            .position(|s| matches!(s.kind, EsKind::Video(_)))
            .or_else(|| self.streams.iter().position(|s| s.kind == EsKind::Audio));
        self.stats.video_codec = self.driver.and_then(|d| match self.streams[d].kind {
            EsKind::Video(c) => Some(c),
            _ => None,
        });
        self.stats.audio_streams = self
            .streams
            .iter()
            .filter(|s| s.kind == EsKind::Audio)
            .count() as u32;
        if self.driver.is_none() {
            self.notice(Notice::NoPlayableStream);
        }
    }

    /// Which streams to carry, and as what.
    fn classify(&mut self, pmt: &Pmt) -> Vec<(u16, EsKind)> {
        let mut out = Vec::new();
        for s in &pmt.streams {
            let kind = match s.stream_type {
                0x1B => EsKind::Video(VideoCodec::H264),
                0x24 => EsKind::Video(VideoCodec::H265),
                // AAC (ADTS, LATM), MPEG-1/2 audio, AC-3, E-AC-3.
                0x0F | 0x11 | 0x03 | 0x04 | 0x81 | 0x87 => EsKind::Audio,
                // Video codecs whose random access points we cannot find.
                0x01 | 0x02 | 0x10 | 0x1E..=0x23 | 0x33 | 0xEA => {
                    self.notice(Notice::UnsupportedStream {
                        pid: s.pid,
                        stream_type: s.stream_type,
                    });
                    continue;
                }
                // Timed metadata, private data, SCTE-35: carried along.
                _ => EsKind::Data,
            };
            out.push((s.pid, kind));
        }
        out
    }

    fn es_packet(&mut self, i: usize, header: &PacketHeader, packet: &[u8; PACKET_LEN]) {
        let max_pes = self.config.max_pes_bytes;
        let es = &mut self.streams[i];
        if header.has_payload {
            if let Some(prev) = es.cc_in {
                if header.continuity == prev {
                    // A duplicate packet (allowed once by the standard).
                    return;
                }
                if header.continuity != (prev + 1) & 0x0F && !header.discontinuity {
                    if let Some(pes) = es.pes.as_mut() {
                        pes.damaged = Some(DropReason::Damaged);
                    } else if matches!(es.kind, EsKind::Video(_)) {
                        es.after_loss = true;
                    }
                    let pid = es.pid;
                    es.cc_in = Some(header.continuity);
                    self.notice(Notice::ContinuityError { pid });
                    if !header.payload_start {
                        return;
                    }
                }
            }
            self.streams[i].cc_in = Some(header.continuity);
        }
        let es = &mut self.streams[i];
        let payload = &packet[header.payload_offset..];
        if header.payload_start {
            if let Some(pes) = es.pes.take() {
                self.complete_pes(i, pes);
            }
            let es = &mut self.streams[i];
            let mut buf = Vec::with_capacity(es.last_pes_size + PACKET_LEN);
            buf.extend_from_slice(packet);
            let (header, damaged, scanner) = match PesHeader::parse(payload) {
                Ok(h) => {
                    let scanner = match es.kind {
                        EsKind::Video(codec) => {
                            let mut s = NalScanner::new(codec);
                            s.feed(payload.get(h.data_offset..).unwrap_or_default());
                            Some(s)
                        }
                        _ => None,
                    };
                    (Some(h), None, scanner)
                }
                Err(e) => (None, Some(DropReason::BadHeader(e)), None),
            };
            es.pes = Some(Pes {
                buf,
                header,
                payload_len: payload.len(),
                scanner,
                damaged,
            });
        } else {
            let Some(pes) = es.pes.as_mut() else {
                // Joined mid-PES, or after a dropped start: nothing to add to.
                return;
            };
            if pes.damaged.is_none() {
                if pes.buf.len() + PACKET_LEN > max_pes {
                    pes.damaged = Some(DropReason::TooLarge);
                    pes.buf = Vec::new();
                } else {
                    pes.buf.extend_from_slice(packet);
                    if let Some(s) = pes.scanner.as_mut() {
                        if s.result().is_none() {
                            s.feed(payload);
                        }
                    }
                }
            }
            pes.payload_len += payload.len();
        }
        // A PES that states its length is complete as soon as it has it all.
        let es = &mut self.streams[i];
        let complete = es.pes.as_ref().is_some_and(|p| {
            p.header
                .and_then(|h| h.total_len)
                .is_some_and(|total| p.payload_len >= total)
        });
        if complete {
            if let Some(pes) = es.pes.take() {
                self.complete_pes(i, pes);
            }
        }
    }

    fn complete_pes(&mut self, i: usize, pes: Pes) {
        let is_driver = self.driver == Some(i);
        let es = &mut self.streams[i];
        let pid = es.pid;
        let (Some(header), None) = (pes.header, pes.damaged.clone()) else {
            if is_driver && matches!(es.kind, EsKind::Video(_)) {
                es.after_loss = true;
            }
            let reason = pes.damaged.unwrap_or(DropReason::Damaged);
            return self.notice(Notice::PesDropped { pid, reason });
        };
        es.last_pes_size = pes.buf.len();
        let pts = header.pts.map(|raw| (raw, es.unwrap.unwrap(raw)));
        if let Some((raw, pts)) = pts {
            // Frame duration from decode order: DTS if present, else PTS.
            let decode = header
                .dts
                .map_or(pts.ticks, |d| pts.ticks + distance(raw, d));
            if let Some(last) = es.last_decode {
                let step = decode - last;
                if step > 0 && step <= TICKS_PER_SECOND as i64 && !pts.jump {
                    es.frame_ticks = step;
                    es.min_frame_ticks = Some(es.min_frame_ticks.map_or(step, |m| m.min(step)));
                }
            }
            es.last_decode = Some(decode);
            if pts.jump {
                self.notice(Notice::TimelineJump { pid });
            }
        }
        if is_driver {
            self.driver_pes(i, pes, pts);
        } else {
            self.follower_pes(i, pes, pts);
        }
    }

    fn driver_pes(&mut self, i: usize, pes: Pes, pts: Option<(u64, Unwrapped)>) {
        let es = &mut self.streams[i];
        let kind = match (&es.kind, &pes.scanner) {
            (EsKind::Video(_), Some(s)) => s.result().unwrap_or(AccessUnitKind::Other),
            _ => AccessUnitKind::RandomAccess,
        };
        if kind == AccessUnitKind::KeyframeWithoutParameterSets {
            self.notice(Notice::KeyframeWithoutParameterSets);
        }
        let es = &mut self.streams[i];
        let is_rap = kind == AccessUnitKind::RandomAccess;
        let frame = es.frame_ticks;
        let pid = es.pid;
        if es.after_loss {
            if !is_rap {
                if let Some((_, pts)) = pts {
                    match self.segment {
                        None => self.wait_for_keyframe(pts.ticks),
                        // The open segment carries only other streams now;
                        // it still may not outgrow the target. What follows
                        // has a hole in its video: a discontinuity.
                        Some(seg) if self.breaks_timeline(&seg, &pts) => {
                            self.end_segment(seg.max_end - seg.start);
                            self.pending_discontinuity = true;
                        }
                        Some(seg) if pts.ticks - seg.start >= self.target_ticks => {
                            self.end_segment(pts.ticks - seg.start);
                            self.pending_discontinuity = true;
                        }
                        Some(_) => {}
                    }
                }
                return self.notice(Notice::PesDropped {
                    pid,
                    reason: DropReason::AwaitingKeyframe,
                });
            }
            es.after_loss = false;
        }
        let Some((raw, pts)) = pts else {
            // No timestamp: cannot be a cut point; ride along if a segment is open.
            if self.segment.is_some() {
                self.append(i, pes.buf);
            }
            return;
        };
        match self.segment {
            None => {
                if !is_rap {
                    return self.wait_for_keyframe(pts.ticks);
                }
                self.start_segment(pts.ticks, raw, true);
            }
            Some(seg) if self.breaks_timeline(&seg, &pts) => {
                self.end_segment(seg.max_end - seg.start);
                self.pending_discontinuity = true;
                if !is_rap {
                    self.streams[i].after_loss = true;
                    return self.wait_for_keyframe(pts.ticks);
                }
                self.start_segment(pts.ticks, raw, true);
            }
            Some(seg) => {
                let elapsed = pts.ticks - seg.start;
                if is_rap && elapsed + frame / 2 >= self.config.segment_ticks as i64 {
                    self.end_segment(elapsed);
                    self.start_segment(pts.ticks, raw, true);
                } else if elapsed >= self.target_ticks {
                    self.notice(Notice::ForcedCut {
                        elapsed_ticks: elapsed as u64,
                    });
                    self.end_segment(elapsed);
                    self.start_segment(pts.ticks, raw, false);
                }
            }
        }
        if let Some(k) = pes.scanner.as_ref().and_then(NalScanner::encoder_keyint) {
            self.encoder_keyint = Some(k);
        }
        if is_rap {
            if let Some(last) = self.last_rap {
                let gop = (pts.ticks - last).max(0) as u64;
                self.stats.last_gop_ticks = Some(gop);
                self.stats.last_gop_frames = self.frames_since_rap;
                if self.learning.is_some() {
                    self.choose_target(Some(gop));
                }
            }
            self.last_rap = Some(pts.ticks);
            self.frames_since_rap = 0;
        }
        if let Some(first) = self
            .learning
            .as_mut()
            .map(|l| *l.first_rap.get_or_insert(pts.ticks))
        {
            if pts.ticks - first >= self.target_ticks {
                self.choose_target(None);
            }
        }
        self.frames_since_rap += 1;
        if let Some(seg) = self.segment.as_mut() {
            seg.max_end = seg.max_end.max(pts.ticks + frame);
        }
        self.append(i, pes.buf);
    }

    /// Whether `pts` cannot belong to the open segment: a jump, or a step
    /// so far past the target that the segment could not be cut within it
    /// (a hole from lost frames or a damaged timestamp), which is treated
    /// the same way. The margin is HLS's own: an EXTINF that rounds to the
    /// target is allowed, and it also covers B-frame reordering, whose
    /// timestamps run a few frames ahead of decode order.
    fn breaks_timeline(&self, seg: &OpenSegment, pts: &Unwrapped) -> bool {
        let elapsed = pts.ticks - seg.start;
        pts.jump || elapsed >= self.target_ticks + HALF_SECOND || elapsed < -MAX_BACKWARD
    }

    /// Fixes the target duration from the first GOP (`None`: none was seen
    /// within the largest target, or the feed ended first) and publishes
    /// what was kept while learning.
    fn choose_target(&mut self, gop: Option<u64>) {
        let Some(learning) = self.learning.take() else {
            return;
        };
        let TargetRule::Learn { max } = self.config.target else {
            return;
        };
        let segment = self.config.segment_ticks;
        // The encoder's own statement of its GOP, when it made one, is the
        // longest GOP it will send (a scene cut only shortens one).
        let declared = self.encoder_keyint.and_then(|k| {
            let ticks = u64::from(k) * self.nominal_frame_ticks() as u64;
            (ticks <= max * TICKS_PER_SECOND).then_some(ticks)
        });
        let target = match gop {
            Some(g) => target_for_gop(
                g.max(declared.unwrap_or(0))
                    .max(learning.longest_segment.max(0) as u64),
                segment,
                max,
            ),
            None if learning.events.is_empty() => max,
            None => target_for_gop(learning.longest_segment.max(0) as u64, segment, max).max(
                self.open_ticks()
                    .map_or(0, |t| target_for_gop(t, segment, max)),
            ),
        };
        self.target_ticks = (target * TICKS_PER_SECOND) as i64;
        self.stats.target_secs = Some(target);
        self.notice(Notice::TargetChosen {
            target_secs: target,
            gop_ticks: gop,
            encoder_keyint: self.encoder_keyint,
        });
        self.events.push_back(Event::TargetDuration(target));
        self.events.extend(learning.events);
    }

    /// Media in the open segment so far.
    fn open_ticks(&self) -> Option<u64> {
        self.segment.map(|s| (s.max_end - s.start).max(0) as u64)
    }

    fn nominal_frame_ticks(&self) -> i64 {
        self.driver
            .and_then(|d| self.streams[d].min_frame_ticks)
            .unwrap_or(DEFAULT_FRAME_TICKS)
    }

    /// Queues a segment event, or keeps it while the target is learned.
    fn emit(&mut self, event: Event) {
        let Some(learning) = self.learning.as_mut() else {
            return self.events.push_back(event);
        };
        match &event {
            Event::Data(b) => learning.bytes += b.len(),
            Event::SegmentEnd { duration_ticks } => {
                learning.longest_segment = learning.longest_segment.max(*duration_ticks as i64);
            }
            _ => {}
        }
        let full = learning.bytes > MAX_LEARNING_BYTES;
        learning.events.push_back(event);
        if full {
            self.choose_target(None);
        }
    }

    fn wait_for_keyframe(&mut self, ticks: i64) {
        let from = *self.waiting_from.get_or_insert(ticks);
        let waited = ticks - from;
        if waited >= self.target_ticks {
            self.notice(Notice::WaitingForKeyframe {
                waited_ticks: waited as u64,
            });
            self.waiting_from = Some(ticks);
        }
    }

    fn follower_pes(&mut self, i: usize, pes: Pes, pts: Option<(u64, Unwrapped)>) {
        let es = &mut self.streams[i];
        if pts.is_some_and(|(_, p)| p.jump) {
            es.holding = true;
        }
        if self.segment.is_none() || es.holding {
            self.hold(i, pts.map(|(raw, _)| raw), pes.buf);
        } else {
            self.append(i, pes.buf);
        }
    }

    fn hold(&mut self, es: usize, pts_raw: Option<u64>, buf: Vec<u8>) {
        self.held_bytes += buf.len();
        self.held.push_back(Held { es, pts_raw, buf });
        let mut dropped = 0;
        while self.held_bytes > self.config.max_held_bytes {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= h.buf.len();
            dropped += h.buf.len();
        }
        if dropped > 0 {
            self.notice(Notice::HeldDataDropped { bytes: dropped });
        }
    }

    fn drop_held(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
        for s in &mut self.streams {
            s.holding = false;
        }
    }

    /// Moves held data into the just-opened segment, dropping what starts
    /// well before the segment's cut point.
    fn flush_held(&mut self) {
        let Some(seg) = self.segment else { return };
        for h in std::mem::take(&mut self.held) {
            let early = h
                .pts_raw
                .is_some_and(|p| distance(seg.start_raw, p) < -LEAD_TOLERANCE);
            if !early {
                self.append(h.es, h.buf);
            }
        }
        self.held_bytes = 0;
        for s in &mut self.streams {
            s.holding = false;
        }
    }

    fn start_segment(&mut self, start: i64, start_raw: u64, independent: bool) {
        self.waiting_from = None;
        let start_event = Event::SegmentStart(SegmentStart {
            discontinuity: std::mem::take(&mut self.pending_discontinuity),
            independent,
        });
        self.emit(start_event);
        let mut header = Vec::with_capacity(2 * PACKET_LEN);
        if let (Some(pat), Some(pmt)) = (self.pat, self.pmt_section.as_ref()) {
            section_packets(PAT_PID, &pat.to_section(), &mut self.cc_pat, &mut header);
            section_packets(pat.pmt_pid, pmt, &mut self.cc_pmt, &mut header);
        }
        self.emit(Event::Data(Bytes::from(header)));
        self.segment = Some(OpenSegment {
            start,
            start_raw,
            max_end: start,
        });
        self.stats.segments += 1;
        self.flush_held();
    }

    fn end_segment(&mut self, duration: i64) {
        if self.segment.take().is_some() {
            self.emit(Event::SegmentEnd {
                duration_ticks: duration.max(0) as u64,
            });
        }
    }

    fn end_segment_at_last_frame(&mut self) {
        if let Some(seg) = self.segment {
            self.end_segment(seg.max_end - seg.start);
        }
    }

    fn append(&mut self, es: usize, mut buf: Vec<u8>) {
        if self.segment.is_none() || buf.is_empty() {
            return;
        }
        let es = &mut self.streams[es];
        for p in buf.chunks_exact_mut(PACKET_LEN) {
            if carries_payload(p) {
                set_continuity(p, es.cc_out);
                es.cc_out = (es.cc_out + 1) & 0x0F;
            }
        }
        self.emit(Event::Data(Bytes::from(buf)));
    }
}
