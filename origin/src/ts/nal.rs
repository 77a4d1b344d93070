//! Finds random access points by reading H.264/H.265 NAL units.
//!
//! The segmenter must start every segment on a picture a decoder can start
//! from. `random_access_indicator` in the adaptation field is optional and
//! often wrong, so this reads the NAL unit types at the start of each access
//! unit instead. The scan stops at the first slice (VCL NAL unit): parameter
//! sets come before it, so an access unit is a random access point when its
//! first slice is an IDR (H.264) or IRAP (H.265) picture and the parameter
//! sets it needs (SPS+PPS, plus VPS for H.265) came in the same access unit.

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
    /// Starts with an IDR/IRAP picture and carries its parameter sets.
    RandomAccess,
    /// An IDR/IRAP picture without in-band parameter sets: a decoder that
    /// starts here cannot decode it.
    KeyframeWithoutParameterSets,
    /// Any other picture.
    Other,
}

const SEEN_VPS: u8 = 1;
const SEEN_SPS: u8 = 2;
const SEEN_PPS: u8 = 4;

/// Incremental scanner over the elementary stream bytes of one access unit.
#[derive(Debug, Clone)]
pub struct NalScanner {
    codec: VideoCodec,
    zeros: u8,
    at_header: bool,
    seen: u8,
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
            result: None,
        }
    }

    /// The verdict, once the first slice has been seen.
    pub fn result(&self) -> Option<AccessUnitKind> {
        self.result
    }

    /// Feeds the next bytes of the access unit.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.result.is_some() {
                return;
            }
            if self.at_header {
                self.at_header = false;
                self.nal_header(b);
                self.zeros = 0;
                continue;
            }
            match b {
                0 => self.zeros = self.zeros.saturating_add(1),
                1 if self.zeros >= 2 => {
                    self.at_header = true;
                    self.zeros = 0;
                }
                _ => self.zeros = 0,
            }
        }
    }

    fn nal_header(&mut self, b: u8) {
        let (vcl, keyframe, needed) = match self.codec {
            VideoCodec::H264 => {
                match b & 0x1F {
                    7 => self.seen |= SEEN_SPS,
                    8 => self.seen |= SEEN_PPS,
                    _ => {}
                }
                let t = b & 0x1F;
                ((1..=5).contains(&t), t == 5, SEEN_SPS | SEEN_PPS)
            }
            VideoCodec::H265 => {
                let t = (b >> 1) & 0x3F;
                match t {
                    32 => self.seen |= SEEN_VPS,
                    33 => self.seen |= SEEN_SPS,
                    34 => self.seen |= SEEN_PPS,
                    _ => {}
                }
                // 16..=21 are BLA, IDR and CRA; 22..=23 are reserved IRAP types.
                (
                    t <= 31,
                    (16..=23).contains(&t),
                    SEEN_VPS | SEEN_SPS | SEEN_PPS,
                )
            }
        };
        if vcl {
            self.result = Some(match (keyframe, self.seen & needed == needed) {
                (true, true) => AccessUnitKind::RandomAccess,
                (true, false) => AccessUnitKind::KeyframeWithoutParameterSets,
                _ => AccessUnitKind::Other,
            });
        }
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
}
