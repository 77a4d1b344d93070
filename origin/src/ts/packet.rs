//! The 4-byte header of a transport stream packet and its adaptation field.

use super::{PACKET_LEN, SYNC_BYTE};

/// PID of the program association table.
pub const PAT_PID: u16 = 0;
/// PID of null (stuffing) packets.
pub const NULL_PID: u16 = 0x1FFF;

/// The parsed header of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Packet identifier.
    pub pid: u16,
    /// `payload_unit_start_indicator`: a PES or PSI section starts here.
    /// Never set on a packet without payload, whatever its header bit says.
    pub payload_start: bool,
    /// `transport_error_indicator`: the sender knows this packet is damaged.
    pub transport_error: bool,
    /// Continuity counter (4 bits).
    pub continuity: u8,
    /// Whether the packet carries payload (counts for continuity).
    pub has_payload: bool,
    /// The adaptation field's `discontinuity_indicator`.
    pub discontinuity: bool,
    /// Offset of the payload within the packet: [`PACKET_LEN`] when the
    /// packet has none, so the payload slice is empty.
    pub payload_offset: usize,
}

/// A packet whose header cannot be right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The first byte is not 0x47.
    #[error("packet does not start with the sync byte")]
    NoSync,
    /// The adaptation field runs past the end of the packet.
    #[error("adaptation field length {0} runs past the end of the packet")]
    BadAdaptationLength(u8),
    /// `adaptation_field_control` is the reserved value 0.
    #[error("reserved adaptation_field_control value")]
    ReservedControl,
}

impl PacketHeader {
    /// Parses the header of `packet`.
    pub fn parse(packet: &[u8; PACKET_LEN]) -> Result<Self, PacketError> {
        if packet[0] != SYNC_BYTE {
            return Err(PacketError::NoSync);
        }
        let transport_error = packet[1] & 0x80 != 0;
        let payload_start = packet[1] & 0x40 != 0;
        let pid = u16::from(packet[1] & 0x1F) << 8 | u16::from(packet[2]);
        let control = (packet[3] >> 4) & 0x3;
        let continuity = packet[3] & 0x0F;
        let (has_adaptation, has_payload) = match control {
            0 => return Err(PacketError::ReservedControl),
            1 => (false, true),
            2 => (true, false),
            _ => (true, true),
        };
        let mut payload_offset = 4;
        let mut discontinuity = false;
        if has_adaptation {
            let len = packet[4];
            let end = 5 + usize::from(len);
            if end > PACKET_LEN {
                return Err(PacketError::BadAdaptationLength(len));
            }
            if len > 0 {
                discontinuity = packet[5] & 0x80 != 0;
            }
            payload_offset = end;
        }
        // The bytes after an adaptation-only packet's field are stuffing,
        // even when they look like a PES header: a damaged control field
        // must not turn them into the start of a frame.
        let has_payload = has_payload && payload_offset < PACKET_LEN;
        Ok(Self {
            pid,
            payload_start: payload_start && has_payload,
            transport_error,
            continuity,
            has_payload,
            discontinuity,
            payload_offset: if has_payload {
                payload_offset
            } else {
                PACKET_LEN
            },
        })
    }
}

/// Rewrites the continuity counter of `packet` in place.
pub fn set_continuity(packet: &mut [u8], cc: u8) {
    packet[3] = (packet[3] & 0xF0) | (cc & 0x0F);
}

/// Whether the raw packet carries payload (adaptation_field_control bit 0).
pub fn carries_payload(packet: &[u8]) -> bool {
    packet[3] & 0x10 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(b1: u8, b2: u8, b3: u8) -> [u8; PACKET_LEN] {
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = b1;
        p[2] = b2;
        p[3] = b3;
        p
    }

    #[test]
    fn parses_header_fields() {
        let h = PacketHeader::parse(&packet(0x41, 0x00, 0x17)).expect("valid");
        assert_eq!(h.pid, 0x100);
        assert!(h.payload_start);
        assert!(!h.transport_error);
        assert_eq!(h.continuity, 7);
        assert!(h.has_payload);
        assert_eq!(h.payload_offset, 4);
    }

    #[test]
    fn adaptation_field() {
        let mut p = packet(0x01, 0x00, 0x30);
        p[4] = 7;
        p[5] = 0x80;
        let h = PacketHeader::parse(&p).expect("valid");
        assert!(h.discontinuity);
        assert_eq!(h.payload_offset, 12);
        p[4] = 184;
        assert_eq!(
            PacketHeader::parse(&p),
            Err(PacketError::BadAdaptationLength(184))
        );
    }

    #[test]
    fn a_packet_without_payload_starts_nothing() {
        let mut p = packet(0x41, 0x00, 0x20);
        p[4] = 7;
        let h = PacketHeader::parse(&p).expect("valid");
        assert!(!h.has_payload);
        assert!(!h.payload_start);
        assert_eq!(h.payload_offset, PACKET_LEN);
    }

    #[test]
    fn rejects_reserved_control_and_missing_sync() {
        assert_eq!(
            PacketHeader::parse(&packet(0, 0, 0x00)),
            Err(PacketError::ReservedControl)
        );
        let mut p = packet(0, 0, 0x10);
        p[0] = 0;
        assert_eq!(PacketHeader::parse(&p), Err(PacketError::NoSync));
    }
}
