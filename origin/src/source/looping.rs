//! A file played in a loop as one continuous stream.
//!
//! Restarting a file's bytes makes its timestamps jump back and its
//! continuity counters restart: the segmenter would see a timeline jump, a
//! continuity error and lose the PES each stream had open at the end of the
//! file. The looper rewrites every pass after the first so the stream runs
//! on as if the file were longer:
//!
//! - PTS, DTS and PCR move forward by the file's media duration per pass
//!   (learned while the first pass plays: the span of the first timed
//!   stream's decode timestamps plus its shortest frame step), modulo the
//!   33-bit clock;
//! - each PID's continuity counter carries on from where the previous pass
//!   left it (shifted by a fixed amount per pass, so a gap inside the file
//!   still shows as a gap).
//!
//! Packets arrive in any chunking ([`Looper::feed`]) and are framed first;
//! bytes that are not packets are dropped here (they carry no media).
//! Sans-IO: bytes in, bytes out.

use std::collections::HashMap;

use crate::ts::framer::{Framed, Framer};
use crate::ts::packet::{set_continuity, PacketHeader};
use crate::ts::pes::{encode_timestamp, PesHeader};
use crate::ts::timestamp::Unwrapper;
use crate::ts::{PACKET_LEN, TICKS_PER_SECOND};

const CLOCK: u64 = 1 << 33;

#[derive(Debug, Clone, Copy, Default)]
struct Continuity {
    last_out: Option<u8>,
    /// Added to the file's counters in the current pass.
    shift: u8,
    /// The pass `shift` was chosen for.
    pass: u64,
}

/// Rewrites a looped file's packets into one continuous stream; see the
/// module docs.
#[derive(Debug)]
pub struct Looper {
    framer: Framer,
    pass: u64,
    /// The file's media duration in ticks, once the first pass ended.
    period: Option<u64>,
    clock_pid: Option<u16>,
    unwrap: Unwrapper,
    first: Option<i64>,
    last: i64,
    min_step: Option<i64>,
    continuity: HashMap<u16, Continuity>,
}

impl Default for Looper {
    fn default() -> Self {
        Self::new()
    }
}

impl Looper {
    /// A looper at the start of the first pass.
    pub fn new() -> Self {
        Self {
            framer: Framer::new(),
            pass: 0,
            period: None,
            clock_pid: None,
            unwrap: Unwrapper::new(TICKS_PER_SECOND as i64, 10 * TICKS_PER_SECOND as i64),
            first: None,
            last: 0,
            min_step: None,
            continuity: HashMap::new(),
        }
    }

    /// Rewrites the next bytes of the current pass; returns whole packets.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + PACKET_LEN);
        let mut framer = std::mem::take(&mut self.framer);
        framer.feed(input, |f| {
            if let Framed::Packet(p) = f {
                let mut p = *p;
                self.rewrite(&mut p);
                out.extend_from_slice(&p);
            }
        });
        self.framer = framer;
        out
    }

    /// The file ended and starts again: returns the last whole packet of
    /// this pass, if one was buffered.
    pub fn next_pass(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut framer = std::mem::take(&mut self.framer);
        framer.finish(|f| {
            if let Framed::Packet(p) = f {
                let mut p = *p;
                self.rewrite(&mut p);
                out.extend_from_slice(&p);
            }
        });
        if self.period.is_none() {
            let step = self.min_step.unwrap_or(3000);
            let span = self.first.map_or(0, |f| self.last - f);
            self.period = Some((span + step).max(1) as u64);
        }
        self.pass += 1;
        out
    }

    /// Media added to every timestamp of the current pass, in ticks.
    pub fn offset(&self) -> u64 {
        self.period.map_or(0, |p| p.wrapping_mul(self.pass) % CLOCK)
    }

    fn rewrite(&mut self, p: &mut [u8; PACKET_LEN]) {
        let Ok(h) = PacketHeader::parse(p) else {
            return;
        };
        {
            let pass = self.pass;
            let c = self.continuity.entry(h.pid).or_default();
            if c.pass != pass {
                c.pass = pass;
                c.shift = c
                    .last_out
                    .map_or(0, |last| (last + 1).wrapping_sub(h.continuity) & 0x0F);
            }
            let out = (h.continuity + c.shift) & 0x0F;
            if h.has_payload {
                c.last_out = Some(out);
            }
            set_continuity(p, out);
        }
        let offset = self.offset();
        if offset != 0 {
            shift_pcr(p, offset);
        }
        if !h.payload_start || !h.has_payload {
            return;
        }
        let Ok(pes) = PesHeader::parse(&p[h.payload_offset..]) else {
            return;
        };
        if self.pass == 0 {
            self.learn(h.pid, &pes);
        }
        if offset != 0 {
            let at = h.payload_offset + 9;
            if let Some(pts) = pes.pts {
                let prefix = if pes.dts.is_some() { 0b0011 } else { 0b0010 };
                p[at..at + 5].copy_from_slice(&encode_timestamp(prefix, (pts + offset) % CLOCK));
            }
            if let Some(dts) = pes.dts {
                p[at + 5..at + 10]
                    .copy_from_slice(&encode_timestamp(0b0001, (dts + offset) % CLOCK));
            }
        }
    }

    /// The first pass: the span of the first timed stream's decode times.
    fn learn(&mut self, pid: u16, pes: &PesHeader) {
        let Some(t) = pes.dts.or(pes.pts) else { return };
        if *self.clock_pid.get_or_insert(pid) != pid {
            return;
        }
        let u = self.unwrap.unwrap(t);
        let first = *self.first.get_or_insert(u.ticks);
        let step = u.ticks - self.last;
        if u.ticks > first && step > 0 && step <= TICKS_PER_SECOND as i64 {
            self.min_step = Some(self.min_step.map_or(step, |m| m.min(step)));
        }
        self.last = self.last.max(u.ticks);
    }
}

/// The 90 kHz base of a packet's PCR, if it carries one.
fn pcr_base(p: &[u8; PACKET_LEN]) -> Option<u64> {
    let has_adaptation = p[3] & 0x20 != 0;
    if !has_adaptation || p[4] < 7 || p[5] & 0x10 == 0 {
        return None;
    }
    let b = &p[6..11];
    Some(
        (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | (u64::from(b[4]) >> 7),
    )
}

/// Moves a packet's PCR, if it carries one, `offset` ticks forward.
fn shift_pcr(p: &mut [u8; PACKET_LEN], offset: u64) {
    let Some(base) = pcr_base(p) else { return };
    let base = (base + offset) % CLOCK;
    p[6] = (base >> 25) as u8;
    p[7] = (base >> 17) as u8;
    p[8] = (base >> 9) as u8;
    p[9] = (base >> 1) as u8;
    p[10] = ((base as u8 & 1) << 7) | (p[10] & 0x7F);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet on `pid` with counter `cc` starting a PES with `pts`/`dts`
    /// and a PCR of `pcr`.
    fn packet(pid: u16, cc: u8, pts: u64, dts: u64, pcr: u64) -> [u8; PACKET_LEN] {
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = 0x47;
        p[1] = 0x40 | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x30 | cc;
        p[4] = 7;
        p[5] = 0x10;
        p[6] = (pcr >> 25) as u8;
        p[7] = (pcr >> 17) as u8;
        p[8] = (pcr >> 9) as u8;
        p[9] = (pcr >> 1) as u8;
        p[10] = ((pcr as u8 & 1) << 7) | 0x7E;
        p[11] = 0;
        let pes = [0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10];
        p[12..21].copy_from_slice(&pes);
        p[21..26].copy_from_slice(&encode_timestamp(0b0011, pts));
        p[26..31].copy_from_slice(&encode_timestamp(0b0001, dts));
        p
    }

    fn read(p: &[u8]) -> (u8, u64, u64, u64) {
        let p: &[u8; PACKET_LEN] = p.try_into().expect("packet");
        let h = PacketHeader::parse(p).expect("header");
        let pes = PesHeader::parse(&p[h.payload_offset..]).expect("pes");
        let pcr = pcr_base(p).expect("pcr");
        (
            h.continuity,
            pes.pts.expect("pts"),
            pes.dts.expect("dts"),
            pcr,
        )
    }

    #[test]
    fn every_pass_continues_the_timeline_and_the_counters() {
        // A "file" of three frames, 3000 ticks apart, ending near the clock's wrap.
        let start = CLOCK - 5000;
        let file: Vec<u8> = (0..3u64)
            .flat_map(|i| {
                let t = (start + i * 3000) % CLOCK;
                packet(0x100, (5 + i as u8) & 0x0F, (t + 6000) % CLOCK, t, t)
            })
            .collect();
        let mut looper = Looper::new();
        let mut out = Vec::new();
        for pass in 0..3 {
            // Odd chunking, as file reads give it.
            for chunk in file.chunks(100) {
                out.extend(looper.feed(chunk));
            }
            out.extend(looper.next_pass());
            assert_eq!(looper.offset(), (pass + 1) * 9000 % CLOCK);
        }
        let read: Vec<_> = out.chunks(PACKET_LEN).map(read).collect();
        assert_eq!(read.len(), 9);
        for (i, (cc, pts, dts, pcr)) in read.iter().enumerate() {
            let t = (start + i as u64 * 3000) % CLOCK;
            assert_eq!(*cc, (5 + i as u8) & 0x0F, "counter of packet {i}");
            assert_eq!(*dts, t, "dts of packet {i}");
            assert_eq!(*pts, (t + 6000) % CLOCK, "pts of packet {i}");
            assert_eq!(*pcr, t, "pcr of packet {i}");
        }
    }

    #[test]
    fn garbage_is_dropped_and_a_gap_inside_the_file_stays_a_gap() {
        let mut file = b"junk".to_vec();
        file.extend(packet(0x100, 0, 0, 0, 0));
        file.extend(packet(0x100, 2, 3000, 3000, 3000));
        let mut looper = Looper::new();
        let mut out = looper.feed(&file);
        out.extend(looper.next_pass());
        out.extend(looper.feed(&file));
        out.extend(looper.next_pass());
        let ccs: Vec<u8> = out.chunks(PACKET_LEN).map(|p| read(p).0).collect();
        assert_eq!(ccs, vec![0, 2, 3, 5]);
    }
}
