//! The tree's wire codec: frames exchanged between a parent (the edge or a
//! peer) and a child over QUIC.
//!
//! - the child opens a bidirectional *control* stream and sends
//!   [`Frame::Hello`] with the ticket the tracker gave it; the parent answers
//!   [`Frame::Welcome`] or [`Frame::Refuse`], then sends [`Frame::Playlist`]
//!   whenever the live playlist changes and [`Frame::Edge`] whenever it is
//!   placed by another edge's tracker, and either side may [`Frame::Ping`];
//! - each segment travels on its own unidirectional stream, parent to
//!   child: [`Frame::SegmentStart`], then [`Frame::SegmentData`] chunks as
//!   they arrive (cut-through), then [`Frame::SegmentEnd`] with the origin's
//!   signed digest, which the child checks before using the bytes.
//!
//! - a peer behind a NAT learns the address its QUIC socket has on the
//!   other side of it: it opens a control stream to the edge and sends
//!   [`Frame::Observe`]; the edge answers [`Frame::Observed`] with the
//!   address the packets came from, and closes.
//!
//! A frame is `type (u8) | length (LEB128 u32) | payload`. The decoder is
//! sans-IO: bytes in, frames out; a frame longer than [`MAX_FRAME`], an
//! unknown type or a malformed payload is an error (the stream is then
//! dropped), never a panic or an unbounded buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version carried in `Hello` and `Welcome`.
pub const VERSION: u16 = 1;

/// Largest frame payload accepted, in bytes.
pub const MAX_FRAME: usize = 256 * 1024;

/// Largest string field (channel, ticket, reason), in bytes.
const MAX_STRING: usize = 4096;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Child to parent, first on the control stream.
    Hello {
        /// Protocol version the child speaks.
        version: u16,
        /// Channel it wants.
        channel: String,
        /// Its peer id.
        peer_id: u64,
        /// The tracker's ticket naming child and parent.
        ticket: String,
        /// First segment the child still needs (0: it has none): the
        /// parent's backfill of recent segments starts there, so a child
        /// switching parents is not sent what it already holds.
        next_seq: u64,
        /// Bytes of segment `next_seq` the child holds already, from a
        /// parent it lost mid-segment (0: none): the parent sends that
        /// segment from there ([`Frame::SegmentStart::offset`]). Absent on
        /// the wire means 0.
        resume_offset: u64,
    },
    /// Parent accepts the child.
    Welcome {
        /// Protocol version the parent speaks.
        version: u16,
    },
    /// Parent refuses the child, and says why.
    Refuse {
        /// Why.
        reason: String,
    },
    /// The live playlist as the edge serves it.
    Playlist(Bytes),
    /// Liveness probe.
    Ping(u64),
    /// Answer to a ping.
    Pong(u64),
    /// Parent to child: the base URL of the edge whose tracker placed the
    /// parent. A child using another edge checks that one (it may have
    /// died) and, if it is gone, moves to this one, where its parent is.
    /// A hint only: it is acted on only for an edge the child was given.
    Edge(String),
    /// First on a segment stream.
    SegmentStart {
        /// Media sequence number.
        seq: u64,
        /// The byte of the segment this stream's data start at: 0, or the
        /// `resume_offset` the child asked for. Absent on the wire means 0.
        offset: u64,
    },
    /// A chunk of the segment, in order.
    SegmentData(Bytes),
    /// Last on a segment stream: the origin's signed digest (`.sig` JSON).
    SegmentEnd {
        /// The `.sig` document.
        signature: Bytes,
    },
    /// Peer to edge, first and only on a control stream: which address do
    /// my packets come from?
    Observe,
    /// Edge to peer: the address its packets came from (its reflexive
    /// address, outside any NAT).
    Observed(std::net::SocketAddr),
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Unknown frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    /// The length prefix is not a valid LEB128 u32.
    #[error("bad frame length prefix")]
    BadLength,
    /// The payload does not match its type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const REFUSE: u8 = 0x03;
    pub const SEGMENT_START: u8 = 0x10;
    pub const SEGMENT_DATA: u8 = 0x11;
    pub const SEGMENT_END: u8 = 0x12;
    pub const PLAYLIST: u8 = 0x20;
    pub const PING: u8 = 0x30;
    pub const PONG: u8 = 0x31;
    pub const EDGE: u8 = 0x40;
    pub const OBSERVE: u8 = 0x50;
    pub const OBSERVED: u8 = 0x51;
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Longer strings are cut, at a character boundary so they stay UTF-8.
    let mut end = s.len().min(MAX_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s.as_bytes()[..end];
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn get_str(p: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    if p.remaining() < 2 {
        return Err(WireError::Malformed(what));
    }
    let n = usize::from(p.get_u16());
    if n > MAX_STRING || p.remaining() < n {
        return Err(WireError::Malformed(what));
    }
    String::from_utf8(p.split_to(n).to_vec()).map_err(|_| WireError::Malformed(what))
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::new();
        let t = match self {
            Frame::Hello {
                version,
                channel,
                peer_id,
                ticket,
                next_seq,
                resume_offset,
            } => {
                p.put_u16(*version);
                put_str(&mut p, channel);
                p.put_u64(*peer_id);
                put_str(&mut p, ticket);
                p.put_u64(*next_seq);
                if *resume_offset > 0 {
                    p.put_u64(*resume_offset);
                }
                kind::HELLO
            }
            Frame::Welcome { version } => {
                p.put_u16(*version);
                kind::WELCOME
            }
            Frame::Refuse { reason } => {
                put_str(&mut p, reason);
                kind::REFUSE
            }
            Frame::Playlist(b) => {
                p.put_slice(b);
                kind::PLAYLIST
            }
            Frame::Ping(n) => {
                p.put_u64(*n);
                kind::PING
            }
            Frame::Pong(n) => {
                p.put_u64(*n);
                kind::PONG
            }
            Frame::Edge(url) => {
                put_str(&mut p, url);
                kind::EDGE
            }
            Frame::SegmentStart { seq, offset } => {
                p.put_u64(*seq);
                if *offset > 0 {
                    p.put_u64(*offset);
                }
                kind::SEGMENT_START
            }
            Frame::SegmentData(b) => {
                p.put_slice(b);
                kind::SEGMENT_DATA
            }
            Frame::SegmentEnd { signature } => {
                p.put_slice(signature);
                kind::SEGMENT_END
            }
            Frame::Observe => kind::OBSERVE,
            Frame::Observed(addr) => {
                // Family (4 or 6), address octets, port.
                match addr.ip() {
                    std::net::IpAddr::V4(ip) => {
                        p.put_u8(4);
                        p.put_slice(&ip.octets());
                    }
                    std::net::IpAddr::V6(ip) => {
                        p.put_u8(6);
                        p.put_slice(&ip.octets());
                    }
                }
                p.put_u16(addr.port());
                kind::OBSERVED
            }
        };
        out.put_u8(t);
        let mut len = p.len() as u32;
        loop {
            let byte = (len & 0x7F) as u8;
            len >>= 7;
            if len == 0 {
                out.put_u8(byte);
                break;
            }
            out.put_u8(byte | 0x80);
        }
        out.put_slice(&p);
    }

    fn decode(t: u8, mut p: Bytes) -> Result<Frame, WireError> {
        let fixed = |p: &Bytes, n: usize, what| {
            if p.len() == n {
                Ok(())
            } else {
                Err(WireError::Malformed(what))
            }
        };
        Ok(match t {
            kind::HELLO => {
                if p.remaining() < 2 {
                    return Err(WireError::Malformed("hello"));
                }
                let version = p.get_u16();
                let channel = get_str(&mut p, "hello")?;
                if p.remaining() < 8 {
                    return Err(WireError::Malformed("hello"));
                }
                let peer_id = p.get_u64();
                let ticket = get_str(&mut p, "hello")?;
                if p.len() != 8 && p.len() != 16 {
                    return Err(WireError::Malformed("hello"));
                }
                let next_seq = p.get_u64();
                Frame::Hello {
                    version,
                    channel,
                    peer_id,
                    ticket,
                    next_seq,
                    resume_offset: if p.is_empty() { 0 } else { p.get_u64() },
                }
            }
            kind::WELCOME => {
                fixed(&p, 2, "welcome")?;
                Frame::Welcome {
                    version: p.get_u16(),
                }
            }
            kind::REFUSE => {
                let reason = get_str(&mut p, "refuse")?;
                fixed(&p, 0, "refuse")?;
                Frame::Refuse { reason }
            }
            kind::PLAYLIST => Frame::Playlist(p),
            kind::PING => {
                fixed(&p, 8, "ping")?;
                Frame::Ping(p.get_u64())
            }
            kind::PONG => {
                fixed(&p, 8, "pong")?;
                Frame::Pong(p.get_u64())
            }
            kind::EDGE => {
                let url = get_str(&mut p, "edge")?;
                fixed(&p, 0, "edge")?;
                Frame::Edge(url)
            }
            kind::SEGMENT_START => {
                if p.len() != 8 && p.len() != 16 {
                    return Err(WireError::Malformed("segment start"));
                }
                let seq = p.get_u64();
                let offset = if p.is_empty() { 0 } else { p.get_u64() };
                Frame::SegmentStart { seq, offset }
            }
            kind::SEGMENT_DATA => Frame::SegmentData(p),
            kind::SEGMENT_END => Frame::SegmentEnd { signature: p },
            kind::OBSERVE => {
                fixed(&p, 0, "observe")?;
                Frame::Observe
            }
            kind::OBSERVED => {
                let ip = match p.first() {
                    Some(4) if p.len() == 7 => {
                        p.advance(1);
                        let mut o = [0u8; 4];
                        p.copy_to_slice(&mut o);
                        std::net::IpAddr::from(o)
                    }
                    Some(6) if p.len() == 19 => {
                        p.advance(1);
                        let mut o = [0u8; 16];
                        p.copy_to_slice(&mut o);
                        std::net::IpAddr::from(o)
                    }
                    _ => return Err(WireError::Malformed("observed")),
                };
                Frame::Observed(std::net::SocketAddr::new(ip, p.get_u16()))
            }
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// Decodes frames from a byte stream fed in any chunking.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet decoded (at most one frame's worth plus
    /// whatever the caller fed since the last poll).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, if one is buffered.
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(&t) = self.buf.first() else {
            return Ok(None);
        };
        let mut len: u64 = 0;
        let mut at = 1;
        loop {
            let Some(&b) = self.buf.get(at) else {
                return Ok(None);
            };
            len |= u64::from(b & 0x7F) << (7 * (at - 1));
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
            if at > 5 {
                return Err(WireError::BadLength);
            }
        }
        if len > MAX_FRAME as u64 {
            return Err(WireError::TooLarge(len));
        }
        let len = len as usize;
        if self.buf.len() < at + len {
            return Ok(None);
        }
        self.buf.advance(at);
        let payload = self.buf.split_to(len).freeze();
        Frame::decode(t, payload).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame() -> impl Strategy<Value = Frame> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Bytes::from);
        prop_oneof![
            (
                any::<u16>(),
                "[a-z0-9-]{0,64}",
                any::<u64>(),
                ".{0,200}",
                any::<u64>(),
                prop_oneof![Just(0u64), any::<u64>()],
            )
                .prop_map(
                    |(version, channel, peer_id, ticket, next_seq, resume_offset)| Frame::Hello {
                        version,
                        channel,
                        peer_id,
                        ticket,
                        next_seq,
                        resume_offset,
                    }
                ),
            any::<u16>().prop_map(|version| Frame::Welcome { version }),
            ".{0,300}".prop_map(|reason| Frame::Refuse { reason }),
            bytes.clone().prop_map(Frame::Playlist),
            any::<u64>().prop_map(Frame::Ping),
            any::<u64>().prop_map(Frame::Pong),
            "http://[a-z0-9.:-]{0,80}".prop_map(Frame::Edge),
            (any::<u64>(), prop_oneof![Just(0u64), any::<u64>()])
                .prop_map(|(seq, offset)| Frame::SegmentStart { seq, offset }),
            bytes.clone().prop_map(Frame::SegmentData),
            bytes.prop_map(|signature| Frame::SegmentEnd { signature }),
            Just(Frame::Observe),
            // The wire carries address and port (no IPv6 flow or scope).
            (any::<std::net::IpAddr>(), any::<u16>())
                .prop_map(|(ip, port)| Frame::Observed(std::net::SocketAddr::new(ip, port))),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_chunking(frames in proptest::collection::vec(frame(), 1..20), chunk in 1usize..5000) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let mut d = FrameDecoder::new();
            let mut out = Vec::new();
            for c in wire.chunks(chunk) {
                d.feed(c);
                while let Some(f) = d.poll_frame().expect("valid frames decode") {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn garbage_is_an_error_or_nothing_never_a_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = FrameDecoder::new();
            d.feed(&data);
            for _ in 0..100 {
                match d.poll_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let reason = "é".repeat(3000);
        let mut out = BytesMut::new();
        Frame::Refuse { reason }.encode(&mut out);
        let mut d = FrameDecoder::new();
        d.feed(&out);
        match d.poll_frame() {
            Ok(Some(Frame::Refuse { reason })) => assert_eq!(reason.len(), MAX_STRING),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut d = FrameDecoder::new();
        d.feed(&[kind::SEGMENT_DATA, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(matches!(d.poll_frame(), Err(WireError::TooLarge(_))));
        let mut d = FrameDecoder::new();
        d.feed(&[0x99, 0]);
        assert_eq!(d.poll_frame(), Err(WireError::UnknownType(0x99)));
        let mut d = FrameDecoder::new();
        d.feed(&[kind::PING, 3, 1, 2, 3]);
        assert_eq!(d.poll_frame(), Err(WireError::Malformed("ping")));
    }
}
