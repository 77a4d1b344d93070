//! FLV audio and video tag bodies (what RTMP carries) remuxed into an MPEG
//! transport stream for the segmenter.
//!
//! Tags in, transport stream packets out:
//!
//! - video: H.264 (FLV codec 7). The sequence header's
//!   `AVCDecoderConfigurationRecord` gives the NAL length size and the
//!   SPS/PPS; each frame's length-prefixed NAL units become an Annex B
//!   access unit with an access unit delimiter, and the SPS/PPS in front of
//!   every keyframe, so each segment decodes from its first frame. The
//!   composition time offset gives PTS = DTS + offset.
//! - audio: AAC (FLV sound format 10) gets an ADTS header per frame, built
//!   from the sequence header's `AudioSpecificConfig`; MP3 (format 2) is
//!   self-framing and passes as is.
//! - timestamps: RTMP's 32-bit milliseconds are unwrapped and moved to
//!   90 kHz, plus one second so the PCR (which runs behind decode time)
//!   never starts below zero.
//!
//! The program is written once every stream the publisher announced (in
//! `onMetaData`; without it, video and audio) has its sequence header;
//! frames before that are held, at most [`HOLD_MS`] of them, after which
//! the program starts with the streams it has. A stream that shows up later
//! is added with a new PMT version, which the segmenter reads as a program
//! change.
//!
//! Sans-IO: bytes in, bytes out, no clock.

use crate::ts::mux::{Frame, StreamKind, TsMuxer};

/// Added to every timestamp, in 90 kHz ticks.
const BASE_TICKS: u64 = 90_000;
/// Longest span of frames held while waiting for a sequence header, in ms.
pub const HOLD_MS: u32 = 1_000;
/// Most tags held while waiting for a sequence header.
const HOLD_TAGS: usize = 512;

/// A tag that cannot be remuxed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemuxError {
    /// A video codec other than H.264 (FLV codec id, or enhanced RTMP's FourCC).
    #[error("video codec {0} is not supported over RTMP (send H.264, or HEVC over SRT or HTTP)")]
    UnsupportedVideo(String),
    /// An audio format other than AAC or MP3 (FLV sound format).
    #[error("audio format {0} is not supported over RTMP (send AAC or MP3); audio is left out")]
    UnsupportedAudio(u8),
    /// A tag shorter than its own header.
    #[error("truncated {0} tag")]
    Truncated(&'static str),
    /// A sequence header that does not parse.
    #[error("bad {0} sequence header")]
    BadConfig(&'static str),
    /// A frame before its stream's sequence header.
    #[error("{0} frame before its sequence header; dropped")]
    NoConfig(&'static str),
    /// An AAC frame too large for an ADTS header (13-bit length).
    #[error("AAC frame of {0} bytes is too large for ADTS; dropped")]
    AacFrameTooLarge(usize),
}

impl RemuxError {
    /// Whether the publisher's stream cannot be published at all.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::UnsupportedVideo(_))
    }

    /// A short name for metrics and rate-limited logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnsupportedVideo(_) => "rtmp_unsupported_video",
            Self::UnsupportedAudio(_) => "rtmp_unsupported_audio",
            Self::Truncated(_) => "rtmp_truncated_tag",
            Self::BadConfig(_) => "rtmp_bad_sequence_header",
            Self::NoConfig(_) => "rtmp_frame_before_sequence_header",
            Self::AacFrameTooLarge(_) => "rtmp_aac_frame_too_large",
        }
    }
}

/// H.264 decoder configuration from the sequence header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AvcConfig {
    length_size: usize,
    /// SPS and PPS NAL units, in Annex B with start codes.
    parameter_sets: Vec<u8>,
}

/// What an ADTS header needs from the `AudioSpecificConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AacConfig {
    profile: u8,
    frequency_index: u8,
    channels: u8,
}

/// Unwraps RTMP's 32-bit millisecond timestamps.
#[derive(Debug, Clone, Copy, Default)]
struct MsClock {
    last: Option<u32>,
    extended: i64,
}

impl MsClock {
    fn ticks(&mut self, ms: u32) -> u64 {
        match self.last {
            None => self.extended = i64::from(ms),
            // Tags of two streams interleave slightly out of order: a
            // signed step, not a wrap.
            Some(last) => self.extended += i64::from(ms.wrapping_sub(last) as i32),
        }
        self.last = Some(ms);
        (self.extended.max(0) as u64) * 90 + BASE_TICKS
    }
}

/// The remuxer; see the module docs.
#[derive(Debug, Default)]
pub struct FlvRemuxer {
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    mp3: bool,
    audio_refused: bool,
    muxer: Option<TsMuxer>,
    version: u8,
    clock: MsClock,
    annexb: Vec<u8>,
    /// The streams `onMetaData` announced: (video, audio).
    announced: Option<(bool, bool)>,
    /// Frames held until the program can start: (video, ms, tag body).
    held: Vec<(bool, u32, Vec<u8>)>,
    started: bool,
}

const AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xF0];
const START_CODE: [u8; 4] = [0, 0, 0, 1];

impl FlvRemuxer {
    /// A remuxer that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records which streams the publisher's `onMetaData` announced, so
    /// the program starts as soon as those have their sequence headers.
    pub fn announce(&mut self, video: bool, audio: bool) {
        self.announced = Some((video, audio));
    }

    /// Whether the program can start: every announced stream configured,
    /// or frames held for long enough.
    fn ready(&mut self, ms: u32) -> bool {
        if !self.started {
            let (video, audio) = self.announced.unwrap_or((true, true));
            let configured =
                (!video || self.avc.is_some()) && (!audio || self.aac.is_some() || self.mp3);
            let waited = self
                .held
                .first()
                .is_some_and(|h| ms.wrapping_sub(h.1) as i32 >= HOLD_MS as i32)
                || self.held.len() >= HOLD_TAGS;
            self.started = configured || waited;
        }
        self.started
    }

    /// Holds a frame if the program cannot start yet; once it can, writes
    /// what was held first. `true`: `data` was held.
    fn hold(&mut self, video: bool, ms: u32, data: &[u8], out: &mut Vec<u8>) -> bool {
        if self.started {
            return false;
        }
        if !self.ready(ms) {
            self.held.push((video, ms, data.to_vec()));
            return true;
        }
        for (video, ms, tag) in std::mem::take(&mut self.held) {
            // Each was reported (or not) when it first came; no second time.
            let _ = if video {
                self.video(ms, &tag, out)
            } else {
                self.audio(ms, &tag, out)
            };
        }
        false
    }

    /// Handles one video tag body; transport stream bytes go to `out`.
    pub fn video(&mut self, ms: u32, data: &[u8], out: &mut Vec<u8>) -> Result<(), RemuxError> {
        let Some(&first) = data.first() else {
            return Err(RemuxError::Truncated("video"));
        };
        if first & 0x80 != 0 {
            // Enhanced RTMP: a FourCC names the codec.
            let fourcc = data.get(1..5).map_or_else(
                || "?".to_owned(),
                |f| String::from_utf8_lossy(f).into_owned(),
            );
            return Err(RemuxError::UnsupportedVideo(format!("'{fourcc}'")));
        }
        let frame_type = first >> 4;
        let codec = first & 0x0F;
        if codec != 7 {
            return Err(RemuxError::UnsupportedVideo(format!("id {codec}")));
        }
        if frame_type == 5 {
            // A video info/command frame: nothing to decode.
            return Ok(());
        }
        let Some(head) = data.get(..5) else {
            return Err(RemuxError::Truncated("video"));
        };
        let body = &data[5..];
        match head[1] {
            0 => {
                self.avc = Some(parse_avc_config(body)?);
                Ok(())
            }
            1 => {
                if self.avc.is_some() && self.hold(true, ms, data, out) {
                    return Ok(());
                }
                let Some(avc) = self.avc.as_ref() else {
                    return Err(RemuxError::NoConfig("H.264"));
                };
                let cts = i32::from_be_bytes([head[2], head[3], head[4], 0]) >> 8;
                let keyframe = frame_type == 1;
                self.annexb.clear();
                self.annexb.extend_from_slice(&AUD);
                let mut has_parameter_sets = false;
                let mut rest = body;
                let mut nals = Vec::new();
                while !rest.is_empty() {
                    let Some(len) = rest.get(..avc.length_size) else {
                        return Err(RemuxError::Truncated("H.264 NAL unit"));
                    };
                    let len = len.iter().fold(0usize, |a, &b| a << 8 | usize::from(b));
                    let Some(nal) = rest.get(avc.length_size..avc.length_size + len) else {
                        return Err(RemuxError::Truncated("H.264 NAL unit"));
                    };
                    rest = &rest[avc.length_size + len..];
                    match nal.first().map(|b| b & 0x1F) {
                        // The delimiter is written once, above.
                        None | Some(9) => continue,
                        Some(7) => has_parameter_sets = true,
                        _ => {}
                    }
                    nals.push(nal);
                }
                if keyframe && !has_parameter_sets {
                    self.annexb.extend_from_slice(&avc.parameter_sets);
                }
                for nal in nals {
                    self.annexb.extend_from_slice(&START_CODE);
                    self.annexb.extend_from_slice(nal);
                }
                let dts = self.clock.ticks(ms);
                let pts = dts.saturating_add_signed(i64::from(cts) * 90);
                let stream = self.stream_index(StreamKind::H264, out);
                let annexb = std::mem::take(&mut self.annexb);
                if let (Some(m), Some(stream)) = (self.muxer.as_mut(), stream) {
                    let frame = Frame {
                        stream,
                        pts,
                        dts: Some(dts),
                        random_access: keyframe,
                        data: &annexb,
                    };
                    m.write_frame(&frame, out);
                }
                self.annexb = annexb;
                Ok(())
            }
            // End of sequence, or unknown packet types: nothing to carry.
            _ => Ok(()),
        }
    }

    /// Handles one audio tag body; transport stream bytes go to `out`.
    pub fn audio(&mut self, ms: u32, data: &[u8], out: &mut Vec<u8>) -> Result<(), RemuxError> {
        let Some(&first) = data.first() else {
            return Err(RemuxError::Truncated("audio"));
        };
        let format = first >> 4;
        match format {
            10 => {
                let Some(&packet_type) = data.get(1) else {
                    return Err(RemuxError::Truncated("audio"));
                };
                let body = &data[2..];
                if packet_type == 0 {
                    // ffmpeg's FLV muxer sends an empty one before it knows
                    // the configuration, then the real one.
                    if !body.is_empty() {
                        self.aac = Some(parse_aac_config(body)?);
                    }
                    return Ok(());
                }
                if self.aac.is_none() {
                    return Err(RemuxError::NoConfig("AAC"));
                }
                if self.hold(false, ms, data, out) {
                    return Ok(());
                }
                let Some(config) = self.aac else {
                    return Err(RemuxError::NoConfig("AAC"));
                };
                let len = body.len() + 7;
                if len >= 1 << 13 {
                    return Err(RemuxError::AacFrameTooLarge(body.len()));
                }
                let mut adts = Vec::with_capacity(len);
                adts.extend_from_slice(&[
                    0xFF,
                    0xF1,
                    (config.profile - 1) << 6 | config.frequency_index << 2 | config.channels >> 2,
                    (config.channels & 3) << 6 | (len >> 11) as u8,
                    (len >> 3) as u8,
                    ((len & 7) as u8) << 5 | 0x1F,
                    0xFC,
                ]);
                adts.extend_from_slice(body);
                self.write_audio(StreamKind::Aac, ms, &adts, out);
                Ok(())
            }
            2 => {
                self.mp3 = true;
                if !self.hold(false, ms, data, out) {
                    self.write_audio(StreamKind::MpegAudio, ms, &data[1..], out);
                }
                Ok(())
            }
            _ if self.audio_refused => Ok(()),
            _ => {
                self.audio_refused = true;
                Err(RemuxError::UnsupportedAudio(format))
            }
        }
    }

    fn write_audio(&mut self, kind: StreamKind, ms: u32, data: &[u8], out: &mut Vec<u8>) {
        let pts = self.clock.ticks(ms);
        let stream = self.stream_index(kind, out);
        if let (Some(m), Some(stream)) = (self.muxer.as_mut(), stream) {
            let frame = Frame {
                stream,
                pts,
                dts: None,
                // Audio frames are independent; only an audio-only program
                // needs the tables in front of them.
                random_access: !m.kinds().contains(&StreamKind::H264) && stream == 0,
                data,
            };
            m.write_frame(&frame, out);
        }
    }

    /// The muxer's index for `kind`, (re)building the program when the
    /// stream is new to it.
    fn stream_index(&mut self, kind: StreamKind, out: &mut Vec<u8>) -> Option<usize> {
        if let Some(i) = self
            .muxer
            .as_ref()
            .and_then(|m| m.kinds().iter().position(|k| *k == kind))
        {
            return Some(i);
        }
        let mut kinds = Vec::new();
        if self.avc.is_some() {
            kinds.push(StreamKind::H264);
        }
        if self.aac.is_some() {
            kinds.push(StreamKind::Aac);
        } else if self.mp3 {
            kinds.push(StreamKind::MpegAudio);
        }
        if !kinds.contains(&kind) {
            return None;
        }
        if self.muxer.is_some() {
            self.version = (self.version + 1) & 0x1F;
        }
        let mut muxer = TsMuxer::new(&kinds, self.version);
        muxer.write_tables(out);
        let index = kinds.iter().position(|k| *k == kind);
        self.muxer = Some(muxer);
        index
    }
}

/// Reads an `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15).
fn parse_avc_config(b: &[u8]) -> Result<AvcConfig, RemuxError> {
    let bad = RemuxError::BadConfig("H.264");
    if b.len() < 7 || b[0] != 1 {
        return Err(bad);
    }
    let length_size = usize::from(b[4] & 3) + 1;
    if length_size == 3 {
        return Err(bad);
    }
    let mut parameter_sets = Vec::new();
    let mut at = 5;
    for mask in [0x1F, 0xFF] {
        let count = usize::from(*b.get(at).ok_or(bad.clone())? & mask);
        at += 1;
        for _ in 0..count {
            let len = b
                .get(at..at + 2)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                .ok_or(bad.clone())?;
            let nal = b.get(at + 2..at + 2 + len).ok_or(bad.clone())?;
            parameter_sets.extend_from_slice(&START_CODE);
            parameter_sets.extend_from_slice(nal);
            at += 2 + len;
        }
    }
    if parameter_sets.is_empty() {
        return Err(bad);
    }
    Ok(AvcConfig {
        length_size,
        parameter_sets,
    })
}

/// Reads the start of an `AudioSpecificConfig` (ISO/IEC 14496-3).
fn parse_aac_config(b: &[u8]) -> Result<AacConfig, RemuxError> {
    let bad = RemuxError::BadConfig("AAC");
    let (&b0, &b1) = b.first().zip(b.get(1)).ok_or(bad.clone())?;
    let object_type = b0 >> 3;
    let frequency_index = (b0 & 7) << 1 | b1 >> 7;
    let channels = (b1 >> 3) & 0x0F;
    // ADTS has no escape for an explicit frequency or object types past 4;
    // HE-AAC's core is AAC LC, which every player decodes.
    if object_type == 0 || frequency_index > 12 || channels > 7 {
        return Err(bad);
    }
    Ok(AacConfig {
        profile: if object_type <= 4 { object_type } else { 2 },
        frequency_index,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::PACKET_LEN;
    use proptest::prelude::*;

    fn avc_sequence_header() -> Vec<u8> {
        let sps = [0x67, 0x64, 0x00, 0x1F, 0xAC];
        let pps = [0x68, 0xEE, 0x3C, 0x80];
        let mut b = vec![0x17, 0, 0, 0, 0, 1, 0x64, 0x00, 0x1F, 0xFF, 0xE1];
        b.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        b.extend_from_slice(&sps);
        b.push(1);
        b.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        b.extend_from_slice(&pps);
        b
    }

    fn avc_frame(keyframe: bool, cts_ms: i32, nals: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![if keyframe { 0x17 } else { 0x27 }, 1];
        b.extend_from_slice(&cts_ms.to_be_bytes()[1..]);
        for n in nals {
            b.extend_from_slice(&(n.len() as u32).to_be_bytes());
            b.extend_from_slice(n);
        }
        b
    }

    #[test]
    fn keyframes_carry_parameter_sets_and_timestamps() {
        let mut r = FlvRemuxer::new();
        r.announce(true, false);
        let mut out = Vec::new();
        r.video(0, &avc_sequence_header(), &mut out)
            .expect("config");
        assert!(out.is_empty(), "nothing before the first frame");
        r.video(40, &avc_frame(true, 80, &[&[0x65, 0x88, 0x84]]), &mut out)
            .expect("frame");
        assert_eq!(out.len() % PACKET_LEN, 0);
        let pes_at = out
            .windows(4)
            .position(|w| w == [0, 0, 1, 0xE0])
            .expect("video PES");
        let pes = crate::ts::pes::PesHeader::parse(&out[pes_at..]).expect("pes");
        let annexb = &out[pes_at + pes.data_offset..];
        assert!(annexb.starts_with(&AUD));
        assert!(annexb[6..].starts_with(&[0, 0, 0, 1, 0x67]), "SPS first");
        assert_eq!(pes.dts, Some(40 * 90 + BASE_TICKS));
        assert_eq!(pes.pts, Some(120 * 90 + BASE_TICKS));
    }

    #[test]
    fn a_frame_before_its_sequence_header_is_refused() {
        let mut r = FlvRemuxer::new();
        let mut out = Vec::new();
        assert_eq!(
            r.video(0, &avc_frame(true, 0, &[&[0x65]]), &mut out),
            Err(RemuxError::NoConfig("H.264"))
        );
        assert_eq!(
            r.audio(0, &[0xAF, 1, 1, 2, 3], &mut out),
            Err(RemuxError::NoConfig("AAC"))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn aac_frames_get_adts_headers() {
        let mut r = FlvRemuxer::new();
        r.announce(false, true);
        let mut out = Vec::new();
        // AAC LC, 48 kHz (index 3), stereo.
        r.audio(0, &[0xAF, 0, 0x11, 0x90], &mut out)
            .expect("config");
        r.audio(21, &[0xAF, 1, 0xDE, 0xAD], &mut out)
            .expect("frame");
        let adts = out
            .windows(2)
            .position(|w| w == [0xFF, 0xF1])
            .map(|at| &out[at..at + 9])
            .expect("adts header");
        assert_eq!(adts[2], 1 << 6 | 3 << 2);
        assert_eq!(adts[3] >> 6, 2, "two channels");
        let len =
            usize::from(adts[3] & 3) << 11 | usize::from(adts[4]) << 3 | usize::from(adts[5] >> 5);
        assert_eq!(len, 9);
        assert_eq!(&adts[7..], &[0xDE, 0xAD]);
    }

    #[test]
    fn frames_wait_for_the_other_streams_sequence_header() {
        let mut r = FlvRemuxer::new();
        let mut out = Vec::new();
        r.video(0, &avc_sequence_header(), &mut out)
            .expect("config");
        r.video(0, &avc_frame(true, 0, &[&[0x65, 1]]), &mut out)
            .expect("held");
        r.video(33, &avc_frame(false, 0, &[&[0x41, 2]]), &mut out)
            .expect("held");
        assert!(out.is_empty(), "held until the audio's sequence header");
        r.audio(0, &[0xAF, 0, 0x11, 0x90], &mut out)
            .expect("config");
        r.audio(10, &[0xAF, 1, 0xDE, 0xAD], &mut out)
            .expect("frame");
        let pmt = out
            .chunks_exact(PACKET_LEN)
            .find(|p| p[1] & 0x1F == 0x10 && p[2] == 0x00)
            .expect("a PMT");
        let pmt = crate::ts::psi::Pmt::parse(&pmt[5..5 + 3 + usize::from(pmt[7])]).expect("pmt");
        let types: Vec<u8> = pmt.streams.iter().map(|s| s.stream_type).collect();
        assert_eq!(types, vec![0x1B, 0x0F], "video and audio in one program");
        let video_pes = out.windows(4).filter(|w| *w == [0, 0, 1, 0xE0]).count();
        let audio_pes = out.windows(4).filter(|w| *w == [0, 0, 1, 0xC0]).count();
        assert_eq!(
            (video_pes, audio_pes),
            (2, 1),
            "held frames written, in order"
        );
        // Without audio for HOLD_MS, video starts alone.
        let mut r = FlvRemuxer::new();
        let mut out = Vec::new();
        r.video(0, &avc_sequence_header(), &mut out)
            .expect("config");
        for ms in (0..=HOLD_MS).step_by(100) {
            r.video(ms, &avc_frame(ms == 0, 0, &[&[0x65, 1]]), &mut out)
                .expect("frame");
        }
        assert_eq!(out.windows(4).filter(|w| *w == [0, 0, 1, 0xE0]).count(), 11);
    }

    #[test]
    fn unsupported_codecs_are_named() {
        let mut r = FlvRemuxer::new();
        let mut out = Vec::new();
        let e = r.video(0, b"\x90hvc1\x00", &mut out).expect_err("hevc");
        assert!(e.is_fatal());
        assert!(e.to_string().contains("'hvc1'"), "{e}");
        assert_eq!(
            r.audio(0, &[0x60, 1], &mut out),
            Err(RemuxError::UnsupportedAudio(6))
        );
        assert_eq!(r.audio(0, &[0x60, 1], &mut out), Ok(()), "said once");
    }

    #[test]
    fn timestamps_unwrap_past_32_bits_and_step_back() {
        let mut c = MsClock::default();
        assert_eq!(
            c.ticks(u32::MAX - 9),
            u64::from(u32::MAX - 9) * 90 + BASE_TICKS
        );
        assert_eq!(c.ticks(10), (u64::from(u32::MAX) + 11) * 90 + BASE_TICKS);
        assert_eq!(c.ticks(5), (u64::from(u32::MAX) + 6) * 90 + BASE_TICKS);
    }

    proptest! {
        /// Whatever the tags hold, no panic, and output is whole packets.
        #[test]
        fn arbitrary_tags_never_panic(
            tags in proptest::collection::vec((any::<bool>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..40)
        ) {
            let mut r = FlvRemuxer::new();
            let mut out = Vec::new();
            r.video(0, &avc_sequence_header(), &mut out).expect("config");
            r.audio(0, &[0xAF, 0, 0x11, 0x90], &mut out).expect("config");
            for (video, ms, body) in tags {
                let _ = if video { r.video(ms, &body, &mut out) } else { r.audio(ms, &body, &mut out) };
            }
            prop_assert_eq!(out.len() % PACKET_LEN, 0);
        }
    }
}
