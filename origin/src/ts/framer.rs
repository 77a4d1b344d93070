//! Turns an arbitrary byte stream into aligned transport stream packets.
//!
//! Input arrives in chunks of any size (HTTP body frames, UDP datagrams,
//! file reads). A packet is accepted only when it starts with the sync byte
//! *and* the byte 188 further on is a sync byte too (or the input ended), so
//! a truncated packet followed by a whole one is skipped rather than glued
//! to the next packet's start. Skipped bytes are counted and reported as
//! sync losses; the framer never holds more than two packets of input.

use super::{PACKET_LEN, SYNC_BYTE};

/// What the framer found in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed<'a> {
    /// One whole packet.
    Packet(&'a [u8; PACKET_LEN]),
    /// Bytes thrown away before sync was found again.
    Lost(usize),
}

/// Splits a byte stream into packets; see the module docs.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes skipped in the current run of lost sync, reported when sync
    /// returns (or at the end of input).
    skipping: usize,
}

impl Framer {
    /// Creates a framer with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `input`, calling `out` for each whole packet and each run of
    /// skipped bytes.
    pub fn feed(&mut self, input: &[u8], mut out: impl FnMut(Framed<'_>)) {
        self.buf.extend_from_slice(input);
        let buf = &self.buf;
        let mut pos = 0;
        while buf.len() - pos >= PACKET_LEN {
            if buf[pos] == SYNC_BYTE {
                let next = pos + PACKET_LEN;
                if next >= buf.len() {
                    // Wait for the next packet's first byte to confirm.
                    break;
                }
                if buf[next] == SYNC_BYTE {
                    if self.skipping > 0 {
                        out(Framed::Lost(std::mem::take(&mut self.skipping)));
                    }
                    out(Framed::Packet(as_packet(&buf[pos..next])));
                    pos = next;
                    continue;
                }
            }
            // Out of sync here: skip to the next candidate sync byte.
            let from = pos + 1;
            let skip_to = find_sync(&buf[from..]).map_or(buf.len(), |i| from + i);
            self.skipping += skip_to - pos;
            pos = skip_to;
        }
        self.buf.drain(..pos);
    }

    /// Flushes at the end of input: a final whole packet is emitted without
    /// the look-ahead confirmation; anything else left is reported lost.
    pub fn finish(&mut self, mut out: impl FnMut(Framed<'_>)) {
        let mut skipped = std::mem::take(&mut self.skipping);
        if self.buf.len() == PACKET_LEN && self.buf[0] == SYNC_BYTE {
            out(Framed::Packet(as_packet(&self.buf)));
        } else {
            skipped += self.buf.len();
        }
        self.buf.clear();
        if skipped > 0 {
            out(Framed::Lost(skipped));
        }
    }
}

fn as_packet(slice: &[u8]) -> &[u8; PACKET_LEN] {
    // Callers always pass exactly PACKET_LEN bytes.
    slice.try_into().unwrap_or(&[0; PACKET_LEN])
}

fn find_sync(hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == SYNC_BYTE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(n: u8) -> Vec<u8> {
        let mut p = vec![n; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut f = Framer::new();
        let mut ids = Vec::new();
        let mut skipped = 0;
        let mut on = |f: Framed<'_>| match f {
            Framed::Packet(p) => ids.push(p[1]),
            Framed::Lost(n) => skipped += n,
        };
        for c in chunks {
            f.feed(c, &mut on);
        }
        f.finish(&mut on);
        (ids, skipped)
    }

    #[test]
    fn aligned_stream_in_odd_chunks() {
        let data: Vec<u8> = (1..=5).flat_map(pkt).collect();
        for size in [1, 7, 187, 188, 189, 1000] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            assert_eq!(run(&chunks), (vec![1, 2, 3, 4, 5], 0), "chunk size {size}");
        }
    }

    #[test]
    fn garbage_and_truncated_packets_are_skipped() {
        let mut data = b"garbage!".to_vec();
        data.extend(pkt(1));
        data.extend(&pkt(2)[..100]); // truncated
        data.extend(pkt(3));
        data.extend(pkt(4));
        let (ids, skipped) = run(&[&data]);
        assert_eq!(ids, vec![1, 3, 4]);
        assert_eq!(skipped, 8 + 100);
    }

    proptest! {
        #[test]
        fn never_panics_and_output_is_aligned(data in proptest::collection::vec(any::<u8>(), 0..2000), split in 0usize..2000) {
            let split = split.min(data.len());
            let mut f = Framer::new();
            let mut total = 0usize;
            let mut skipped = 0usize;
            let mut on = |f: Framed<'_>| match f {
                Framed::Packet(p) => { assert_eq!(p[0], SYNC_BYTE); total += PACKET_LEN }
                Framed::Lost(n) => skipped += n,
            };
            f.feed(&data[..split], &mut on);
            f.feed(&data[split..], &mut on);
            f.finish(&mut on);
            // Every input byte is either in a packet or counted as skipped.
            prop_assert_eq!(total + skipped, data.len());
        }
    }
}
