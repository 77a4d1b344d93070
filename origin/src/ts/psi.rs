//! Program specific information: the PAT and PMT.
//!
//! Sections are assembled from packet payloads (a section may span packets),
//! checked against their CRC-32, and parsed. The segmenter writes a fresh PAT
//! and the stream's PMT at the start of every segment so each segment can be
//! decoded on its own; [`section_packets`] turns a section into those packets.

use crc::{Crc, CRC_32_MPEG_2};

use super::PACKET_LEN;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_MPEG_2);

/// Longest PSI section (ISO/IEC 13818-1 limits PAT/PMT to 1024 bytes).
pub const MAX_SECTION_LEN: usize = 1024;

/// Why a section was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsiError {
    /// Shorter than its own header and CRC.
    #[error("section too short ({0} bytes)")]
    TooShort(usize),
    /// `section_length` is larger than the standard allows.
    #[error("section length {0} exceeds {MAX_SECTION_LEN}")]
    TooLong(usize),
    /// The CRC-32 does not match: the section is damaged.
    #[error("section CRC mismatch")]
    Crc,
    /// Not the table this PID should carry.
    #[error("unexpected table id {0:#04x}")]
    WrongTable(u8),
    /// A length field inside the section points past its end.
    #[error("section field runs past the end of the section")]
    Truncated,
}

/// Collects one PSI section from the payloads of consecutive packets.
#[derive(Debug, Default)]
pub struct SectionAssembler {
    buf: Vec<u8>,
    active: bool,
}

impl SectionAssembler {
    /// Feeds one packet payload; returns a complete section when one ends here.
    pub fn push(
        &mut self,
        payload_start: bool,
        payload: &[u8],
    ) -> Option<Result<Vec<u8>, PsiError>> {
        let mut data = payload;
        if payload_start {
            let pointer = usize::from(*payload.first()?);
            data = payload.get(1 + pointer..)?;
            self.buf.clear();
            self.active = true;
        }
        if !self.active {
            return None;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() < 3 {
            return None;
        }
        let section_len = usize::from(u16::from_be_bytes([self.buf[1], self.buf[2]]) & 0x0FFF);
        if section_len > MAX_SECTION_LEN {
            self.active = false;
            return Some(Err(PsiError::TooLong(section_len)));
        }
        let total = 3 + section_len;
        if self.buf.len() < total {
            return None;
        }
        self.active = false;
        let section = self.buf[..total].to_vec();
        Some(check_crc(&section).map(|()| section))
    }
}

fn check_crc(section: &[u8]) -> Result<(), PsiError> {
    if section.len() < 12 {
        return Err(PsiError::TooShort(section.len()));
    }
    let (body, crc) = section.split_at(section.len() - 4);
    let expected = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC32.checksum(body) == expected {
        Ok(())
    } else {
        Err(PsiError::Crc)
    }
}

/// The first program listed in a PAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pat {
    /// `transport_stream_id`.
    pub transport_stream_id: u16,
    /// Table version, echoed into the PAT the segmenter writes.
    pub version: u8,
    /// The program's number.
    pub program_number: u16,
    /// PID carrying the program's PMT.
    pub pmt_pid: u16,
}

impl Pat {
    /// Parses a CRC-checked PAT section; `Ok(None)` if it lists no program.
    pub fn parse(section: &[u8]) -> Result<Option<Self>, PsiError> {
        if section[0] != 0x00 {
            return Err(PsiError::WrongTable(section[0]));
        }
        let transport_stream_id = u16::from_be_bytes([section[3], section[4]]);
        let version = (section[5] >> 1) & 0x1F;
        let entries = &section[8..section.len() - 4];
        Ok(entries.chunks_exact(4).find_map(|e| {
            let program_number = u16::from_be_bytes([e[0], e[1]]);
            // Program 0 points at the network information table, not a PMT.
            (program_number != 0).then(|| Pat {
                transport_stream_id,
                version,
                program_number,
                pmt_pid: u16::from_be_bytes([e[2], e[3]]) & 0x1FFF,
            })
        }))
    }

    /// Writes a PAT section listing only this program.
    pub fn to_section(&self) -> Vec<u8> {
        let mut s = vec![0x00, 0xB0, 13];
        s.extend_from_slice(&self.transport_stream_id.to_be_bytes());
        s.push(0xC1 | (self.version & 0x1F) << 1);
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(&self.program_number.to_be_bytes());
        s.extend_from_slice(&(0xE000 | self.pmt_pid).to_be_bytes());
        let crc = CRC32.checksum(&s);
        s.extend_from_slice(&crc.to_be_bytes());
        s
    }
}

/// One elementary stream listed in a PMT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PmtStream {
    /// `stream_type` (0x1B H.264, 0x24 H.265, 0x0F AAC, ...).
    pub stream_type: u8,
    /// PID carrying the stream.
    pub pid: u16,
}

/// A parsed program map table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pmt {
    /// PID carrying the PCR.
    pub pcr_pid: u16,
    /// Elementary streams in PMT order.
    pub streams: Vec<PmtStream>,
}

impl Pmt {
    /// Parses a CRC-checked PMT section.
    pub fn parse(section: &[u8]) -> Result<Self, PsiError> {
        if section[0] != 0x02 {
            return Err(PsiError::WrongTable(section[0]));
        }
        let end = section.len() - 4;
        let pcr_pid = u16::from_be_bytes([section[8], section[9]]) & 0x1FFF;
        let info_len = usize::from(u16::from_be_bytes([section[10], section[11]]) & 0x0FFF);
        let mut pos = 12 + info_len;
        let mut streams = Vec::new();
        while pos + 5 <= end {
            let stream_type = section[pos];
            let pid = u16::from_be_bytes([section[pos + 1], section[pos + 2]]) & 0x1FFF;
            let es_info_len =
                usize::from(u16::from_be_bytes([section[pos + 3], section[pos + 4]]) & 0x0FFF);
            pos += 5 + es_info_len;
            if pos > end {
                return Err(PsiError::Truncated);
            }
            streams.push(PmtStream { stream_type, pid });
        }
        if pos != end {
            return Err(PsiError::Truncated);
        }
        Ok(Self { pcr_pid, streams })
    }

    /// Writes a PMT section for `program_number` at table `version`, with
    /// no descriptors.
    pub fn to_section(&self, program_number: u16, version: u8) -> Vec<u8> {
        let mut s = vec![0x02, 0, 0];
        s.extend_from_slice(&program_number.to_be_bytes());
        s.push(0xC1 | (version & 0x1F) << 1);
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(&(0xE000 | self.pcr_pid).to_be_bytes());
        s.extend_from_slice(&[0xF0, 0x00]);
        for e in &self.streams {
            s.push(e.stream_type);
            s.extend_from_slice(&(0xE000 | e.pid).to_be_bytes());
            s.extend_from_slice(&[0xF0, 0x00]);
        }
        // section_length counts from after the length field to the CRC's end.
        let len = s.len() - 3 + 4;
        s[1] = 0xB0 | (len >> 8) as u8 & 0x0F;
        s[2] = len as u8;
        let crc = CRC32.checksum(&s);
        s.extend_from_slice(&crc.to_be_bytes());
        s
    }
}

/// Packs `section` into packets on `pid`, continuity counters from `*cc`.
pub fn section_packets(pid: u16, section: &[u8], cc: &mut u8, out: &mut Vec<u8>) {
    let mut rest = section;
    let mut first = true;
    while first || !rest.is_empty() {
        let start = out.len();
        out.resize(start + PACKET_LEN, 0xFF);
        let p = &mut out[start..];
        p[0] = super::SYNC_BYTE;
        p[1] = (if first { 0x40 } else { 0 }) | (pid >> 8) as u8 & 0x1F;
        p[2] = pid as u8;
        p[3] = 0x10 | (*cc & 0x0F);
        *cc = (*cc + 1) & 0x0F;
        let mut at = 4;
        if first {
            p[4] = 0; // pointer_field
            at = 5;
        }
        let n = rest.len().min(PACKET_LEN - at);
        p[at..at + n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::packet::PacketHeader;

    fn pmt_section(streams: &[(u8, u16)]) -> Vec<u8> {
        let pmt = Pmt {
            pcr_pid: 0x100,
            streams: streams
                .iter()
                .map(|&(stream_type, pid)| PmtStream { stream_type, pid })
                .collect(),
        };
        pmt.to_section(1, 0)
    }

    #[test]
    fn pat_round_trip_through_packets() {
        let pat = Pat {
            transport_stream_id: 1,
            version: 3,
            program_number: 1,
            pmt_pid: 0x1000,
        };
        let mut out = Vec::new();
        let mut cc = 15;
        section_packets(0, &pat.to_section(), &mut cc, &mut out);
        assert_eq!(out.len(), PACKET_LEN);
        assert_eq!(cc, 0);
        let packet: &[u8; PACKET_LEN] = out.as_slice().try_into().expect("one packet");
        let h = PacketHeader::parse(packet).expect("valid");
        let mut asm = SectionAssembler::default();
        let section = asm
            .push(h.payload_start, &packet[h.payload_offset..])
            .expect("complete")
            .expect("crc ok");
        assert_eq!(Pat::parse(&section), Ok(Some(pat)));
    }

    #[test]
    fn pmt_parses_and_long_sections_span_packets() {
        let streams: Vec<(u8, u16)> = (0..60).map(|i| (0x06, 0x200 + i)).collect();
        let section = pmt_section(&streams);
        assert!(section.len() > PACKET_LEN);
        let mut out = Vec::new();
        let mut cc = 0;
        section_packets(0x100, &section, &mut cc, &mut out);
        let mut asm = SectionAssembler::default();
        let mut got = None;
        for p in out.chunks_exact(PACKET_LEN) {
            let p: &[u8; PACKET_LEN] = p.try_into().expect("packet");
            let h = PacketHeader::parse(p).expect("valid");
            if let Some(r) = asm.push(h.payload_start, &p[h.payload_offset..]) {
                got = Some(r.expect("crc ok"));
            }
        }
        let pmt = Pmt::parse(&got.expect("assembled")).expect("parses");
        assert_eq!(pmt.streams.len(), 60);
        assert_eq!(pmt.pcr_pid, 0x100);
    }

    #[test]
    fn damaged_section_is_rejected() {
        let mut section = pmt_section(&[(0x1B, 0x100)]);
        section[13] ^= 0xFF;
        let mut payload = vec![0];
        payload.extend_from_slice(&section);
        let mut asm = SectionAssembler::default();
        assert_eq!(asm.push(true, &payload), Some(Err(PsiError::Crc)));
    }
}
