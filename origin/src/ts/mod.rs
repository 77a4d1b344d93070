//! MPEG transport stream pieces the segmenter is built from.
//!
//! Bytes flow through these in order:
//!
//! - [`framer`]: an arbitrary byte stream (HTTP chunks, UDP datagrams) becomes
//!   aligned 188-byte packets; lost sync, truncated packets and garbage are
//!   skipped and reported.
//! - [`packet`]: one packet's header (PID, payload start, continuity counter,
//!   adaptation field).
//! - [`psi`]: PAT and PMT sections, assembled across packets and checked by
//!   CRC; and the packets that carry the PAT/PMT written at each segment start.
//! - [`pes`]: the PES header of an elementary stream packet (PTS/DTS).
//! - [`nal`]: whether a video access unit is a random access point, read from
//!   its H.264/H.265 NAL units.
//! - [`timestamp`]: 33-bit PTS unwrapping and timeline jump detection.
//!
//! And one the other way: [`mux`] writes frames (from RTMP's FLV tags) as
//! a transport stream the segmenter then reads like any other input.
//!
//! Everything here is sans-IO: bytes in, facts out.

pub mod framer;
pub mod mux;
pub mod nal;
pub mod packet;
pub mod pes;
pub mod psi;
pub mod timestamp;

/// Length of a transport stream packet in bytes.
pub const PACKET_LEN: usize = 188;
/// First byte of every transport stream packet.
pub const SYNC_BYTE: u8 = 0x47;
/// Clock rate of PTS/DTS values.
pub const TICKS_PER_SECOND: u64 = 90_000;
