//! Helpers shared by the origin's integration tests: reading the shipped
//! media, running the segmenter over it, rewriting streams into edge cases,
//! and checking the HLS transport stream rules on what comes out.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;

use treecast_origin::segmenter::{Event, Notice, SegmentStart, Segmenter, SegmenterConfig};
use treecast_origin::ts::nal::{AccessUnitKind, NalScanner, VideoCodec};
use treecast_origin::ts::packet::PacketHeader;
use treecast_origin::ts::pes::{encode_timestamp, PesHeader};
use treecast_origin::ts::psi::{Pat, Pmt, SectionAssembler};
use treecast_origin::ts::PACKET_LEN;

pub fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

pub fn sample() -> Vec<u8> {
    std::fs::read(repo_file("media/sample.ts")).expect("media/sample.ts is shipped")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_file(&format!("origin/tests/fixtures/{name}"))).expect("fixture")
}

#[derive(Debug, Clone)]
pub struct Seg {
    pub start: SegmentStart,
    pub bytes: Vec<u8>,
    pub duration_ticks: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Run {
    pub segments: Vec<Seg>,
    pub notices: Vec<Notice>,
    pub target: Option<u64>,
}

pub fn drain(s: &mut Segmenter, run: &mut Run) {
    while let Some(e) = s.poll_event() {
        match e {
            Event::SegmentStart(start) => run.segments.push(Seg {
                start,
                bytes: Vec::new(),
                duration_ticks: None,
            }),
            Event::Data(b) => run
                .segments
                .last_mut()
                .expect("data inside a segment")
                .bytes
                .extend_from_slice(&b),
            Event::SegmentEnd { duration_ticks } => {
                let seg = run.segments.last_mut().expect("end of a segment");
                assert!(seg.duration_ticks.is_none(), "segment ended twice");
                seg.duration_ticks = Some(duration_ticks);
            }
            Event::Notice(n) if n.is_info() => {}
            Event::Notice(n) => run.notices.push(n),
            Event::TargetDuration(t) => {
                assert!(run.target.is_none(), "target duration given twice");
                assert!(run.segments.is_empty(), "target duration after a segment");
                run.target = Some(t);
            }
        }
    }
}

/// Runs the segmenter over `data` fed in `chunk`-byte pieces.
pub fn segment(data: &[u8], config: SegmenterConfig, chunk: usize) -> Run {
    let mut s = Segmenter::new(config);
    let mut run = Run::default();
    for c in data.chunks(chunk.max(1)) {
        s.handle_input(c);
        drain(&mut s, &mut run);
    }
    s.handle_end_of_input();
    drain(&mut s, &mut run);
    run
}

pub fn default_config() -> SegmenterConfig {
    SegmenterConfig::new(2.0, 3)
}

pub fn packets(data: &[u8]) -> impl Iterator<Item = &[u8; PACKET_LEN]> {
    data.chunks_exact(PACKET_LEN)
        .map(|p| p.try_into().expect("whole packet"))
}

/// The program's PMT PID and streams (pid → stream_type), from the first PAT/PMT.
pub fn program(data: &[u8]) -> (u16, Vec<(u16, u8)>) {
    let mut pat_asm = SectionAssembler::default();
    let mut pmt_asm = SectionAssembler::default();
    let mut pmt_pid = None;
    for p in packets(data) {
        let h = PacketHeader::parse(p).expect("valid packet");
        let payload = &p[h.payload_offset..];
        if h.pid == 0 {
            if let Some(Ok(s)) = pat_asm.push(h.payload_start, payload) {
                pmt_pid = Pat::parse(&s).expect("pat").map(|p| p.pmt_pid);
            }
        } else if Some(h.pid) == pmt_pid {
            if let Some(Ok(s)) = pmt_asm.push(h.payload_start, payload) {
                let pmt = Pmt::parse(&s).expect("pmt");
                let streams = pmt.streams.iter().map(|s| (s.pid, s.stream_type)).collect();
                return (h.pid, streams);
            }
        }
    }
    panic!("no PAT/PMT found");
}

/// Checks the transport stream rules of DESIGN.md on a run's segments:
/// whole packets, PAT then PMT first, the first video access unit a random
/// access point (unless the segment says it is not independent), no PES
/// straddling a boundary, continuity counters continuous across segments.
pub fn check_ts_rules(run: &Run) {
    let mut cc: HashMap<u16, u8> = HashMap::new();
    for (n, seg) in run.segments.iter().enumerate() {
        let data = &seg.bytes;
        assert!(!data.is_empty(), "segment {n} is empty");
        assert_eq!(
            data.len() % PACKET_LEN,
            0,
            "segment {n} is not whole packets"
        );
        let (pmt_pid, streams) = program(data);
        let mut it = packets(data);
        let first = PacketHeader::parse(it.next().expect("packet")).expect("valid");
        assert_eq!(first.pid, 0, "segment {n} does not open with the PAT");
        let second = PacketHeader::parse(it.next().expect("packet")).expect("valid");
        assert_eq!(
            second.pid, pmt_pid,
            "segment {n}: PMT does not follow the PAT"
        );
        let video = streams
            .iter()
            .find(|(_, t)| *t == 0x1B || *t == 0x24)
            .map(|&(pid, t)| {
                (
                    pid,
                    if t == 0x1B {
                        VideoCodec::H264
                    } else {
                        VideoCodec::H265
                    },
                )
            });
        let mut seen_payload: HashMap<u16, bool> = HashMap::new();
        // Scanner over the segment's first video access unit, fed until the
        // next video PES starts.
        let mut first_au: Option<NalScanner> = None;
        let mut first_au_done = false;
        for p in packets(data) {
            let h = PacketHeader::parse(p).expect("valid packet");
            if h.has_payload {
                if let Some(prev) = cc.get(&h.pid) {
                    assert_eq!(
                        h.continuity,
                        (prev + 1) & 0xF,
                        "segment {n}: CC gap on PID {:#x}",
                        h.pid
                    );
                }
                cc.insert(h.pid, h.continuity);
                if seen_payload.insert(h.pid, true).is_none() {
                    assert!(
                        h.payload_start,
                        "segment {n}: PID {:#x} starts mid-PES",
                        h.pid
                    );
                }
            }
            let Some((vpid, codec)) = video else { continue };
            if h.pid != vpid || first_au_done || !h.has_payload {
                continue;
            }
            let payload = &p[h.payload_offset..];
            match (&mut first_au, h.payload_start) {
                (None, true) => {
                    let pes = PesHeader::parse(payload).expect("pes header");
                    let mut scan = NalScanner::new(codec);
                    scan.feed(&payload[pes.data_offset..]);
                    first_au = Some(scan);
                }
                (Some(_), true) => first_au_done = true,
                (Some(scan), false) => scan.feed(payload),
                (None, false) => {}
            }
        }
        if let (Some(scan), true) = (first_au, seg.start.independent) {
            assert_eq!(
                scan.result(),
                Some(AccessUnitKind::RandomAccess),
                "segment {n} does not start on a random access point"
            );
        }
    }
}

/// Adds `offset` to every PTS, DTS and PCR (mod 2^33), as if the encoder's
/// clock had started elsewhere.
pub fn shift_timestamps(data: &[u8], offset: u64) -> Vec<u8> {
    let wrap = 1u64 << 33;
    let mut out = data.to_vec();
    for p in out.chunks_exact_mut(PACKET_LEN) {
        let arr: &[u8; PACKET_LEN] = (&*p).try_into().expect("packet");
        let h = PacketHeader::parse(arr).expect("valid");
        if h.payload_offset > 5 && p[5] & 0x10 != 0 {
            // PCR: 33-bit base, 6 reserved bits, 9-bit extension.
            let b = &p[6..12];
            let base = u64::from(b[0]) << 25
                | u64::from(b[1]) << 17
                | u64::from(b[2]) << 9
                | u64::from(b[3]) << 1
                | u64::from(b[4] >> 7);
            let base = (base + offset) % wrap;
            p[6] = (base >> 25) as u8;
            p[7] = (base >> 17) as u8;
            p[8] = (base >> 9) as u8;
            p[9] = (base >> 1) as u8;
            p[10] = (p[10] & 0x7F) | ((base & 1) as u8) << 7;
        }
        if h.payload_start && h.pid != 0 {
            let at = h.payload_offset;
            if p[at..at + 3] == [0, 0, 1] && p[at + 3] >= 0xC0 {
                if let Ok(pes) = PesHeader::parse(&p[at..]) {
                    let flags = p[at + 7] >> 6;
                    if let Some(pts) = pes.pts {
                        let prefix = if flags == 0b11 { 0b0011 } else { 0b0010 };
                        p[at + 9..at + 14]
                            .copy_from_slice(&encode_timestamp(prefix, (pts + offset) % wrap));
                    }
                    if let Some(dts) = pes.dts {
                        p[at + 14..at + 19]
                            .copy_from_slice(&encode_timestamp(0b0001, (dts + offset) % wrap));
                    }
                }
            }
        }
    }
    out
}

pub fn total_ticks(run: &Run) -> u64 {
    run.segments
        .iter()
        .map(|s| s.duration_ticks.expect("ended"))
        .sum()
}
pub mod net;
