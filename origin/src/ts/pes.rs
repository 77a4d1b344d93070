//! The header of a PES packet: stream id, length and timestamps.

/// Facts from a PES header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PesHeader {
    /// `stream_id` (0xE0.. video, 0xC0.. audio, 0xBD private).
    pub stream_id: u8,
    /// Total PES length including the 6-byte prefix, if the header states it
    /// (video PES usually leave it 0, meaning "until the next PES").
    pub total_len: Option<usize>,
    /// Presentation timestamp (33 bits).
    pub pts: Option<u64>,
    /// Decoding timestamp (33 bits).
    pub dts: Option<u64>,
    /// Offset of the elementary stream data from the start of the PES.
    pub data_offset: usize,
}

/// A PES header that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PesError {
    /// The first bytes are not the 00 00 01 start code prefix.
    #[error("missing PES start code")]
    NoStartCode,
    /// The header does not fit in the first packet's payload.
    #[error("PES header does not fit in its first packet")]
    Truncated,
}

impl PesHeader {
    /// Parses the header at the start of `data` (the first packet's payload).
    pub fn parse(data: &[u8]) -> Result<Self, PesError> {
        if data.len() < 6 {
            return Err(PesError::Truncated);
        }
        if data[..3] != [0, 0, 1] {
            return Err(PesError::NoStartCode);
        }
        let stream_id = data[3];
        let len = usize::from(u16::from_be_bytes([data[4], data[5]]));
        let total_len = (len != 0).then_some(6 + len);
        // Streams without the optional header: program_stream_map, padding,
        // private_stream_2, ECM, EMM, directory, DSMCC, H.222.1 type E.
        if matches!(
            stream_id,
            0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
        ) {
            return Ok(Self {
                stream_id,
                total_len,
                pts: None,
                dts: None,
                data_offset: 6,
            });
        }
        if data.len() < 9 {
            return Err(PesError::Truncated);
        }
        let flags = data[7] >> 6;
        let data_offset = 9 + usize::from(data[8]);
        if data.len() < data_offset {
            return Err(PesError::Truncated);
        }
        let timestamp = |at: usize| -> Result<u64, PesError> {
            let b = data.get(at..at + 5).ok_or(PesError::Truncated)?;
            Ok((u64::from(b[0] >> 1) & 0x7) << 30
                | u64::from(b[1]) << 22
                | u64::from(b[2] >> 1) << 15
                | u64::from(b[3]) << 7
                | u64::from(b[4] >> 1))
        };
        let (pts, dts) = match flags {
            0b10 => (Some(timestamp(9)?), None),
            0b11 => (Some(timestamp(9)?), Some(timestamp(14)?)),
            _ => (None, None),
        };
        Ok(Self {
            stream_id,
            total_len,
            pts,
            dts,
            data_offset,
        })
    }
}

/// Writes a 33-bit timestamp in PES layout with the given 4-bit prefix.
pub fn encode_timestamp(prefix: u8, ts: u64) -> [u8; 5] {
    [
        prefix << 4 | ((ts >> 29) as u8 & 0x0E) | 1,
        (ts >> 22) as u8,
        ((ts >> 14) as u8 & 0xFE) | 1,
        (ts >> 7) as u8,
        ((ts << 1) as u8 & 0xFE) | 1,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(pts: u64, dts: u64) -> Vec<u8> {
        let mut h = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10];
        h.extend_from_slice(&encode_timestamp(0b0011, pts));
        h.extend_from_slice(&encode_timestamp(0b0001, dts));
        h
    }

    proptest! {
        #[test]
        fn timestamps_round_trip(pts in 0u64..(1 << 33), dts in 0u64..(1 << 33)) {
            let h = PesHeader::parse(&header(pts, dts)).expect("parses");
            prop_assert_eq!(h.pts, Some(pts));
            prop_assert_eq!(h.dts, Some(dts));
            prop_assert_eq!(h.data_offset, 19);
            prop_assert_eq!(h.total_len, None);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = PesHeader::parse(&data);
        }
    }

    #[test]
    fn rejects_bad_prefix_and_truncation() {
        assert_eq!(
            PesHeader::parse(&[0, 0, 2, 0xE0, 0, 0]),
            Err(PesError::NoStartCode)
        );
        assert_eq!(
            PesHeader::parse(&header(1, 1)[..12]),
            Err(PesError::Truncated)
        );
    }
}
