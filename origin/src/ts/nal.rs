//! Finds random access points by reading H.264/H.265 NAL units.
//!
//! The segmenter must start every segment on a picture a decoder can start
//! from. `random_access_indicator` in the adaptation field is optional and
//! often wrong, so this reads the NAL units at the start of each access unit
//! instead, up to its first slice (VCL NAL unit): parameter sets and SEI come
//! before it. An access unit is a random access point when the parameter
//! sets it needs (SPS+PPS, plus VPS for H.265) came in the same access unit
//! and its first slice is
//!
//! - H.264: an IDR picture (type 5), or an I slice of an access unit that
//!   carries a recovery point SEI with `recovery_frame_cnt` 0 (the open-GOP
//!   I-frames of x264's `open-gop` and of most hardware encoders: exact
//!   recovery from that picture on);
//! - H.265: an IRAP picture (types 16–23: BLA, IDR, CRA).
//!
//! Pictures that follow a CRA or an open-GOP I-frame in decode order but
//! precede it in display order (H.265 RASL, H.264 leading B-frames) may
//! reference the previous GOP. They stay in the segment that starts with
//! their random access point, so no frame is lost; a decoder that starts at
//! that segment skips them, as the standards require, and its first frame
//! still decodes.
//!
//! The scan also picks up the GOP length an encoder declares about itself:
//! x264 and x265 write their settings (`keyint=250 …`) into a user data SEI
//! of the first access unit. The segmenter uses it as a hint when it learns
//! the stream's GOP (see `docs/segmenting.md`).

/// The video codecs whose random access points we can find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264 / AVC (stream_type 0x1B).
    H264,
    /// H.265 / HEVC (stream_type 0x24).
    H265,
}

/// What the scan concluded about one access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessUnitKind {
    /// Starts with a picture a decoder can start from, and carries its
    /// parameter sets.
    RandomAccess,
    /// A random access picture without in-band parameter sets: a decoder
    /// that starts here cannot decode it.
    KeyframeWithoutParameterSets,
    /// Any other picture.
    Other,
}

const SEEN_VPS: u8 = 1;
const SEEN_SPS: u8 = 2;
const SEEN_PPS: u8 = 4;

/// Most bytes of one SEI NAL unit kept for parsing (x264's settings string
/// is about 700 bytes).
const MAX_SEI_BYTES: usize = 4096;
/// Bytes of an H.264 slice header read to find its slice type.
const SLICE_HEAD_BYTES: usize = 8;

/// What the bytes of the NAL unit being read are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collect {
    Nothing,
    Sei,
    SliceHead,
}

/// Incremental scanner over the elementary stream bytes of one access unit.
#[derive(Debug, Clone)]
pub struct NalScanner {
    codec: VideoCodec,
    zeros: u8,
    at_header: bool,
    seen: u8,
    collect: Collect,
    buf: Vec<u8>,
    recovery_point: bool,
    encoder_keyint: Option<u32>,
    result: Option<AccessUnitKind>,
}

impl NalScanner {
    /// Starts scanning a new access unit.
    pub fn new(codec: VideoCodec) -> Self {
        Self {
            codec,
            zeros: 0,
            at_header: false,
            seen: 0,
            collect: Collect::Nothing,
            buf: Vec::new(),
            recovery_point: false,
            encoder_keyint: None,
            result: None,
        }
    }

    /// The verdict, once the first slice has been seen.
    pub fn result(&self) -> Option<AccessUnitKind> {
        self.result
    }

    /// The GOP length (in frames) the encoder declared in a settings SEI of
    /// this access unit, if it did.
    pub fn encoder_keyint(&self) -> Option<u32> {
        self.encoder_keyint
    }

    /// Feeds the next bytes of the access unit.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.result.is_some() {
                return;
            }
            if self.at_header {
                self.at_header = false;
                self.zeros = 0;
                self.nal_header(b);
                continue;
            }
            match self.collect {
                Collect::Sei if self.buf.len() < MAX_SEI_BYTES => self.buf.push(b),
                Collect::SliceHead => {
                    self.buf.push(b);
                    if self.buf.len() >= SLICE_HEAD_BYTES {
                        self.slice_head();
                        continue;
                    }
                }
                _ => {}
            }
            match b {
                0 => self.zeros = self.zeros.saturating_add(1),
                1 if self.zeros >= 2 => {
                    self.end_nal();
                    self.at_header = true;
                    self.zeros = 0;
                }
                _ => self.zeros = 0,
            }
        }
    }

    /// The start code of the next NAL unit arrived: the collected bytes end
    /// with it (`00 00 01`, maybe more zeros), which are not part of the unit.
    fn end_nal(&mut self) {
        let collect = std::mem::replace(&mut self.collect, Collect::Nothing);
        if collect == Collect::Nothing {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        if buf.last() == Some(&1) {
            buf.pop();
        }
        while buf.last() == Some(&0) {
            buf.pop();
        }
        match collect {
            Collect::Sei => self.sei(&buf),
            // A slice whose header is shorter than we read: judge what came.
            Collect::SliceHead => {
                self.buf = buf;
                self.slice_head();
            }
            Collect::Nothing => {}
        }
    }

    fn nal_header(&mut self, b: u8) {
        self.buf.clear();
        match self.codec {
            VideoCodec::H264 => match b & 0x1F {
                7 => self.seen |= SEEN_SPS,
                8 => self.seen |= SEEN_PPS,
                6 => self.collect = Collect::Sei,
                5 => self.decide(true),
                // A non-IDR slice: an open-GOP I-frame if it is an I slice
                // and a recovery point SEI came before it.
                1 if self.recovery_point => self.collect = Collect::SliceHead,
                1..=4 => self.decide(false),
                _ => {}
            },
            VideoCodec::H265 => match (b >> 1) & 0x3F {
                32 => self.seen |= SEEN_VPS,
                33 => self.seen |= SEEN_SPS,
                34 => self.seen |= SEEN_PPS,
                // Prefix SEI.
                39 => self.collect = Collect::Sei,
                // 16..=21 are BLA, IDR and CRA; 22..=23 are reserved IRAP types.
                t @ 0..=31 => self.decide((16..=23).contains(&t)),
                _ => {}
            },
        }
    }

    fn decide(&mut self, keyframe: bool) {
        let needed = match self.codec {
            VideoCodec::H264 => SEEN_SPS | SEEN_PPS,
            VideoCodec::H265 => SEEN_VPS | SEEN_SPS | SEEN_PPS,
        };
        self.collect = Collect::Nothing;
        self.result = Some(match (keyframe, self.seen & needed == needed) {
            (true, true) => AccessUnitKind::RandomAccess,
            (true, false) => AccessUnitKind::KeyframeWithoutParameterSets,
            _ => AccessUnitKind::Other,
        });
    }

    /// H.264 slice header: `first_mb_in_slice` and `slice_type`, both ue(v).
    fn slice_head(&mut self) {
        let rbsp = unescape(&self.buf);
        let mut bits = Bits::new(&rbsp);
        let slice_type = bits.ue().and_then(|_| bits.ue());
        // 2 and 7 are I slices, 4 and 9 SI slices.
        self.decide(matches!(slice_type, Some(2 | 4 | 7 | 9)));
    }

    /// Reads the SEI messages of one SEI NAL unit (after its header).
    fn sei(&mut self, nal: &[u8]) {
        let body = match self.codec {
            VideoCodec::H264 => nal,
            // H.265 NAL headers have a second byte.
            VideoCodec::H265 => nal.get(1..).unwrap_or_default(),
        };
        let rbsp = unescape(body);
        let mut rest = &rbsp[..];
        while rest.len() > 2 {
            let (Some(kind), after) = sei_number(rest) else {
                return;
            };
            let (Some(size), after) = sei_number(after) else {
                return;
            };
            let Some(payload) = after.get(..size) else {
                return;
            };
            match kind {
                5 => {
                    if let Some(k) = declared_keyint(payload.get(16..).unwrap_or_default()) {
                        self.encoder_keyint = Some(k);
                    }
                }
                6 => {
                    let mut bits = Bits::new(payload);
                    if bits.ue() == Some(0) {
                        self.recovery_point = true;
                    }
                }
                _ => {}
            }
            rest = &after[size..];
        }
    }
}

/// An SEI payload type or size: a run of 0xFF bytes plus a last byte.
fn sei_number(data: &[u8]) -> (Option<usize>, &[u8]) {
    let mut n = 0usize;
    for (i, &b) in data.iter().enumerate() {
        n += b as usize;
        if b != 0xFF {
            return (Some(n), &data[i + 1..]);
        }
    }
    (None, &[])
}

/// `keyint=N` in an encoder's settings string (x264, x265).
fn declared_keyint(text: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b" keyint=";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = text[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits)
        .ok()?
        .parse()
        .ok()
        .filter(|&k| k > 0)
}

/// Removes emulation prevention bytes (`00 00 03` becomes `00 00`).
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Reads Exp-Golomb codes from the start of an RBSP.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    /// ue(v): unsigned Exp-Golomb.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut v = 0u32;
        for _ in 0..zeros {
            v = (v << 1) | self.bit()?;
        }
        Some(((1u64 << zeros) - 1 + u64::from(v)) as u32)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn scan(codec: VideoCodec, data: &[u8], split: usize) -> Option<AccessUnitKind> {
        let mut s = NalScanner::new(codec);
        s.feed(&data[..split]);
        s.feed(&data[split..]);
        s.result()
    }

    #[test]
    fn h264_idr_with_parameter_sets() {
        let au = [
            0, 0, 0, 1, 0x09, 0xF0, // AUD
            0, 0, 0, 1, 0x67, 0x42, // SPS
            0, 0, 1, 0x68, 0xCE, // PPS
            0, 0, 1, 0x65, 0x88, // IDR slice
        ];
        for split in 0..au.len() {
            assert_eq!(
                scan(VideoCodec::H264, &au, split),
                Some(AccessUnitKind::RandomAccess)
            );
        }
    }

    #[test]
    fn h264_non_idr_and_bare_idr() {
        assert_eq!(
            scan(
                VideoCodec::H264,
                &[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x41, 0x9A],
                3
            ),
            Some(AccessUnitKind::Other)
        );
        assert_eq!(
            scan(VideoCodec::H264, &[0, 0, 1, 0x65, 0x88], 1),
            Some(AccessUnitKind::KeyframeWithoutParameterSets)
        );
        assert_eq!(scan(VideoCodec::H264, &[0, 0, 1, 0x09, 0xF0], 2), None);
    }

    #[test]
    fn h265_irap() {
        let au = [
            0, 0, 0, 1, 0x46, 0x01, 0x10, // AUD (35)
            0, 0, 1, 0x40, 0x01, // VPS
            0, 0, 1, 0x42, 0x01, // SPS
            0, 0, 1, 0x44, 0x01, // PPS
            0, 0, 1, 0x26, 0x01, // IDR_W_RADL (19)
        ];
        for split in 0..au.len() {
            assert_eq!(
                scan(VideoCodec::H265, &au, split),
                Some(AccessUnitKind::RandomAccess)
            );
        }
        // TRAIL_R (1) is an ordinary picture.
        assert_eq!(
            scan(VideoCodec::H265, &[0, 0, 1, 0x02, 0x01], 0),
            Some(AccessUnitKind::Other)
        );
    }

    fn h264_open_gop_au(slice_header: u8) -> Vec<u8> {
        vec![
            0,
            0,
            0,
            1,
            0x09,
            0xF0, // AUD
            0,
            0,
            0,
            1,
            0x67,
            0x42, // SPS
            0,
            0,
            1,
            0x68,
            0xCE, // PPS
            0,
            0,
            1,
            0x06,
            0x06,
            0x01,
            0x80,
            0x80, // SEI: recovery point, count 0
            0,
            0,
            1,
            0x41,
            slice_header,
            0x84,
            0x21,
            0x33,
            0x10,
            0x22,
            0x31,
            0x44, // non-IDR slice
        ]
    }

    #[test]
    fn h264_open_gop_i_frame_with_recovery_point() {
        // first_mb_in_slice 0, slice_type 7 (I): bits 1 0001000.
        let au = h264_open_gop_au(0x88);
        for split in 0..au.len() {
            assert_eq!(
                scan(VideoCodec::H264, &au, split),
                Some(AccessUnitKind::RandomAccess),
                "split {split}"
            );
        }
        // The same with slice_type 5 (P): not a random access point.
        assert_eq!(
            scan(VideoCodec::H264, &h264_open_gop_au(0x98), 7),
            Some(AccessUnitKind::Other)
        );
        // An I slice without the recovery point SEI is not one either.
        let mut bare = h264_open_gop_au(0x88);
        bare.drain(17..25);
        assert_eq!(
            scan(VideoCodec::H264, &bare, 3),
            Some(AccessUnitKind::Other)
        );
    }

    #[test]
    fn encoder_settings_declare_the_gop() {
        let text = b"x264 - core 164 - H.264/MPEG-4 AVC codec - options: cabac=1 ref=3 keyint=250 keyint_min=25 scenecut=40";
        let mut au = vec![0, 0, 0, 1, 0x06, 0x05, (16 + text.len()) as u8];
        au.extend([0x11; 16]);
        au.extend_from_slice(text);
        au.extend([
            0x80, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xCE, 0, 0, 1, 0x65, 0x88,
        ]);
        let mut s = NalScanner::new(VideoCodec::H264);
        for chunk in au.chunks(5) {
            s.feed(chunk);
        }
        assert_eq!(s.result(), Some(AccessUnitKind::RandomAccess));
        assert_eq!(s.encoder_keyint(), Some(250));
        assert_eq!(declared_keyint(b"x keyint=infinite"), None);
    }

    #[test]
    fn exp_golomb_and_unescaping() {
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3]), vec![0, 0, 1, 0, 0]);
        // 1, 010, 011, 00100: 0, 1, 2, 3.
        let data = [0b1010_0110, 0b0100_0000];
        let mut b = Bits::new(&data);
        assert_eq!(
            (b.ue(), b.ue(), b.ue(), b.ue()),
            (Some(0), Some(1), Some(2), Some(3))
        );
        assert_eq!(Bits::new(&[0, 0, 0, 0, 0]).ue(), None);
    }
}
