//! Arbitrary FLV tag bodies through the RTMP remuxer, after valid sequence
//! headers so frames get through: it must never panic, and what it writes
//! must be whole transport stream packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treecast_origin::rtmp::flv::FlvRemuxer;

/// An AVC sequence header (SPS, PPS) and an AAC one (LC, 48 kHz, stereo).
const AVC: &[u8] = &[
    0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0, 5, 0x67, 0x64, 0, 0x1F, 0xAC, 1, 0, 4, 0x68,
    0xEE, 0x3C, 0x80,
];
const AAC: &[u8] = &[0xAF, 0, 0x11, 0x90];

fuzz_target!(|data: &[u8]| {
    let mut r = FlvRemuxer::new();
    let mut out = Vec::new();
    let _ = r.video(0, AVC, &mut out);
    let _ = r.audio(0, AAC, &mut out);
    // Each tag: a kind byte, a 2-byte timestamp step, a length byte, then
    // the body.
    let mut rest = data;
    let mut ms = 0u32;
    while let [kind, s0, s1, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        ms = ms.wrapping_add(u32::from(u16::from_be_bytes([*s0, *s1])));
        let _ = if kind & 1 == 0 {
            r.video(ms, body, &mut out)
        } else {
            r.audio(ms, body, &mut out)
        };
        rest = next;
    }
    assert_eq!(out.len() % 188, 0);
});
