//! Writes elementary stream frames as an MPEG transport stream: the mirror of
//! [`super::psi`] and [`super::pes`], for inputs that arrive as frames rather
//! than as a transport stream (RTMP's FLV tags).
//!
//! Frames in (one PES each, with its timestamps), 188-byte packets out:
//! PAT and PMT before every random access point, the PCR on the first packet
//! of each PES of the PCR stream, continuity counters per PID, and the last
//! packet of a PES padded with adaptation-field stuffing.
//!
//! Written here rather than taken from a crate because it is the inverse of
//! the parsers the segmenter already has (the same PAT/PMT types and
//! timestamp encoding), about a hundred lines, and writes straight into one
//! buffer without a packet object per 188 bytes.

use super::pes::encode_timestamp;
use super::psi::{section_packets, Pat, Pmt, PmtStream};
use super::{PACKET_LEN, SYNC_BYTE};

/// PID of the PMT the muxer writes.
pub const PMT_PID: u16 = 0x1000;
/// PID of the first elementary stream; the next ones follow.
pub const FIRST_ES_PID: u16 = 0x100;

/// What an elementary stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// H.264 in Annex B byte stream format.
    H264,
    /// AAC in ADTS frames.
    Aac,
    /// MPEG-1/2 audio (MP3).
    MpegAudio,
}

impl StreamKind {
    fn stream_type(self) -> u8 {
        match self {
            Self::H264 => 0x1B,
            Self::Aac => 0x0F,
            Self::MpegAudio => 0x03,
        }
    }

    fn stream_id(self) -> u8 {
        match self {
            Self::H264 => 0xE0,
            Self::Aac | Self::MpegAudio => 0xC0,
        }
    }
}

/// One frame to write.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Index of the stream in the list given to [`TsMuxer::new`].
    pub stream: usize,
    /// Presentation time, 90 kHz.
    pub pts: u64,
    /// Decode time, 90 kHz, when it differs from `pts`.
    pub dts: Option<u64>,
    /// Whether a decoder can start here (writes PAT/PMT first and sets the
    /// random access indicator).
    pub random_access: bool,
    /// The elementary stream bytes of the frame.
    pub data: &'a [u8],
}

/// The muxer's state: which streams, and the continuity counters.
#[derive(Debug, Clone)]
pub struct TsMuxer {
    kinds: Vec<StreamKind>,
    cc: Vec<u8>,
    pat_cc: u8,
    pmt_cc: u8,
    pcr_stream: usize,
    pat: Vec<u8>,
    pmt: Vec<u8>,
}

/// How far the PCR runs ahead of decode time: room for the decoder's buffer.
const PCR_LEAD: u64 = 63_000;

impl TsMuxer {
    /// A muxer for `kinds`, the PMT at table `version` (bump it when the
    /// streams change, so readers notice). The PCR rides on the first video
    /// stream, else the first stream.
    pub fn new(kinds: &[StreamKind], version: u8) -> Self {
        let pcr_stream = kinds
            .iter()
            .position(|k| *k == StreamKind::H264)
            .unwrap_or(0);
        let pid = |i: usize| FIRST_ES_PID + i as u16;
        let pmt = Pmt {
            pcr_pid: pid(pcr_stream),
            streams: kinds
                .iter()
                .enumerate()
                .map(|(i, k)| PmtStream {
                    stream_type: k.stream_type(),
                    pid: pid(i),
                })
                .collect(),
        };
        let pat = Pat {
            transport_stream_id: 1,
            version,
            program_number: 1,
            pmt_pid: PMT_PID,
        };
        Self {
            kinds: kinds.to_vec(),
            cc: vec![0; kinds.len()],
            pat_cc: 0,
            pmt_cc: 0,
            pcr_stream,
            pat: pat.to_section(),
            pmt: pmt.to_section(1, version),
        }
    }

    /// The streams, in PID order.
    pub fn kinds(&self) -> &[StreamKind] {
        &self.kinds
    }

    /// Appends the PAT and PMT to `out`.
    pub fn write_tables(&mut self, out: &mut Vec<u8>) {
        section_packets(0, &self.pat, &mut self.pat_cc, out);
        section_packets(PMT_PID, &self.pmt, &mut self.pmt_cc, out);
    }

    /// Appends `frame` as one PES to `out`. Timestamps are taken modulo
    /// 2^33; the PCR runs [`PCR_LEAD`] behind the decode time.
    pub fn write_frame(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) {
        let Some(&kind) = self.kinds.get(frame.stream) else {
            return;
        };
        if frame.random_access {
            self.write_tables(out);
        }
        let pts = frame.pts & TS_MASK;
        let dts = frame.dts.map(|d| d & TS_MASK).filter(|&d| d != pts);
        let mut pes = Vec::with_capacity(19);
        pes.extend_from_slice(&[0, 0, 1, kind.stream_id(), 0, 0, 0x84]);
        match dts {
            Some(d) => {
                pes.extend_from_slice(&[0xC0, 10]);
                pes.extend_from_slice(&encode_timestamp(0b0011, pts));
                pes.extend_from_slice(&encode_timestamp(0b0001, d));
            }
            None => {
                pes.extend_from_slice(&[0x80, 5]);
                pes.extend_from_slice(&encode_timestamp(0b0010, pts));
            }
        }
        // PES_packet_length counts from after the field; 0 (unbounded) is
        // allowed for video only, and needed past 65,535 bytes.
        let len = pes.len() - 6 + frame.data.len();
        if kind != StreamKind::H264 || len <= 0xFFFF {
            if let Ok(l) = u16::try_from(len) {
                pes[4..6].copy_from_slice(&l.to_be_bytes());
            }
        }
        let pcr = (frame.stream == self.pcr_stream)
            .then(|| dts.unwrap_or(pts).wrapping_sub(PCR_LEAD) & TS_MASK);
        let pid = FIRST_ES_PID + frame.stream as u16;
        let cc = &mut self.cc[frame.stream];
        let mut head = Some(pes);
        let mut rest = frame.data;
        let mut first = true;
        while first || !rest.is_empty() {
            let start = out.len();
            out.resize(start + PACKET_LEN, 0xFF);
            let p = &mut out[start..];
            p[0] = SYNC_BYTE;
            p[1] = (if first { 0x40 } else { 0 }) | (pid >> 8) as u8 & 0x1F;
            p[2] = pid as u8;
            // Adaptation field: flags and PCR on the first packet, stuffing
            // on the last, so the payload always ends the packet.
            let mut body = Vec::new();
            if first && (pcr.is_some() || frame.random_access) {
                body.push(if frame.random_access { 0x40 } else { 0 });
                if let Some(pcr) = pcr {
                    body[0] |= 0x10;
                    body.extend_from_slice(&[
                        (pcr >> 25) as u8,
                        (pcr >> 17) as u8,
                        (pcr >> 9) as u8,
                        (pcr >> 1) as u8,
                        ((pcr & 1) as u8) << 7 | 0x7E,
                        0,
                    ]);
                }
            }
            let mut present = !body.is_empty();
            let want = head.as_ref().map_or(0, Vec::len) + rest.len();
            let room = PACKET_LEN - 4 - if present { 1 + body.len() } else { 0 };
            if want < room {
                let mut pad = room - want;
                if !present {
                    // The length byte is the first byte of padding, the
                    // flags byte the second.
                    present = true;
                    pad -= 1;
                    if pad > 0 {
                        body.push(0);
                        pad -= 1;
                    }
                }
                body.resize(body.len() + pad, 0xFF);
            }
            write_adaptation(p, &body, present, cc);
            let mut at = if p[3] & 0x20 != 0 {
                5 + usize::from(p[4])
            } else {
                4
            };
            if let Some(h) = head.take() {
                p[at..at + h.len()].copy_from_slice(&h);
                at += h.len();
            }
            let n = rest.len().min(PACKET_LEN - at);
            p[at..at + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            first = false;
        }
    }
}

const TS_MASK: u64 = (1 << 33) - 1;

/// Writes byte 3 (control, continuity) and, if `present`, the adaptation
/// field `body` (without its length byte) at byte 4.
fn write_adaptation(p: &mut [u8], body: &[u8], present: bool, cc: &mut u8) {
    let control = if present { 0x30 } else { 0x10 };
    p[3] = control | (*cc & 0x0F);
    *cc = (*cc + 1) & 0x0F;
    if present {
        p[4] = body.len() as u8;
        p[5..5 + body.len()].copy_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::packet::PacketHeader;
    use crate::ts::pes::PesHeader;
    use crate::ts::psi::SectionAssembler;
    use proptest::prelude::*;

    fn packets(out: &[u8]) -> Vec<(PacketHeader, &[u8])> {
        out.chunks_exact(PACKET_LEN)
            .map(|p| {
                let p: &[u8; PACKET_LEN] = p.try_into().expect("whole packet");
                let h = PacketHeader::parse(p).expect("valid packet");
                (h, &p[h.payload_offset..])
            })
            .collect()
    }

    /// The payload bytes of the last PES on `pid`.
    fn pes_payload(ps: &[(PacketHeader, &[u8])], pid: u16) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, payload) in ps.iter().filter(|(h, _)| h.pid == pid) {
            if h.payload_start {
                out.clear();
            }
            out.extend_from_slice(payload);
        }
        out
    }

    #[test]
    fn tables_parse_back() {
        let mut m = TsMuxer::new(&[StreamKind::H264, StreamKind::Aac], 3);
        let mut out = Vec::new();
        m.write_tables(&mut out);
        let ps = packets(&out);
        let mut asm = SectionAssembler::default();
        let pat = asm
            .push(true, ps[0].1)
            .expect("one packet")
            .expect("crc ok");
        let pat = Pat::parse(&pat).expect("pat").expect("a program");
        assert_eq!(pat.pmt_pid, PMT_PID);
        assert_eq!(pat.version, 3);
        let mut asm = SectionAssembler::default();
        let pmt = asm
            .push(true, ps[1].1)
            .expect("one packet")
            .expect("crc ok");
        let pmt = Pmt::parse(&pmt).expect("pmt");
        assert_eq!(pmt.pcr_pid, 0x100);
        assert_eq!(
            pmt.streams,
            vec![
                PmtStream {
                    stream_type: 0x1B,
                    pid: 0x100
                },
                PmtStream {
                    stream_type: 0x0F,
                    pid: 0x101
                }
            ]
        );
    }

    proptest! {
        /// Any frame size comes back byte for byte with its timestamps, in
        /// whole packets with running continuity counters.
        #[test]
        fn frames_round_trip(
            len in 0usize..2_000,
            pts in 0u64..(1 << 34),
            cts in 0u64..90_000,
            stream in 0usize..2,
            random_access: bool,
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut m = TsMuxer::new(&[StreamKind::H264, StreamKind::Aac], 0);
            let mut out = Vec::new();
            for _ in 0..2 {
                m.write_frame(&Frame { stream, pts: pts + cts, dts: Some(pts), random_access, data: &data }, &mut out);
            }
            prop_assert_eq!(out.len() % PACKET_LEN, 0);
            let ps = packets(&out);
            let pid = FIRST_ES_PID + stream as u16;
            let mut cc: Option<u8> = None;
            for (h, _) in ps.iter().filter(|(h, _)| h.pid == pid) {
                prop_assert!(h.has_payload);
                if let Some(c) = cc {
                    prop_assert_eq!(h.continuity, (c + 1) & 0xF);
                }
                cc = Some(h.continuity);
            }
            let payload = pes_payload(&ps, pid);
            let header = PesHeader::parse(&payload).expect("pes header");
            prop_assert_eq!(header.pts, Some((pts + cts) & TS_MASK));
            let dts = (cts != 0 && (pts + cts) & TS_MASK != pts & TS_MASK).then_some(pts & TS_MASK);
            prop_assert_eq!(header.dts, dts);
            prop_assert_eq!(&payload[header.data_offset..], &data[..]);
            if let Some(total) = header.total_len {
                prop_assert_eq!(total, payload.len());
            }
        }
    }
}
