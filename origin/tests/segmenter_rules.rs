//! The segmenter against the HLS transport stream rules, on real media
//! (the shipped H.264+AAC sample, an H.265 and an audio-only fixture) and
//! on edge cases made from them.

mod common;

use common::*;
use treecast_origin::segmenter::{Notice, SegmenterConfig};
use treecast_origin::ts::PACKET_LEN;

const TICKS: u64 = 90_000;

#[test]
fn sample_clip_cuts_on_every_gop() {
    let data = sample();
    let run = segment(&data, default_config(), 64 * 1024);
    check_ts_rules(&run);
    // 16 s of media with a 2 s GOP: eight 2 s segments.
    assert_eq!(run.segments.len(), 8, "{:?}", run.notices);
    for (i, s) in run.segments.iter().enumerate() {
        assert!(s.start.independent);
        assert!(!s.start.discontinuity);
        let d = s.duration_ticks.expect("ended");
        assert!(d <= 3 * TICKS, "segment {i} is {d} ticks, above the target");
        if i < 7 {
            assert_eq!(d, 2 * TICKS, "segment {i}");
        }
    }
    // EXTINF sum tracks media time within a frame (16 s of video).
    let total = total_ticks(&run);
    assert!(total.abs_diff(16 * TICKS) <= 3000, "total {total}");
    assert!(run.notices.is_empty(), "{:?}", run.notices);
}

#[test]
fn output_does_not_depend_on_input_chunking() {
    let data = sample();
    let whole = segment(&data, default_config(), data.len());
    for chunk in [1, 187, 188, 1316, 4093] {
        let run = segment(&data[..data.len() / 3], default_config(), chunk);
        let prefix = segment(&data[..data.len() / 3], default_config(), data.len());
        assert_eq!(run.segments.len(), prefix.segments.len(), "chunk {chunk}");
        for (a, b) in run.segments.iter().zip(&prefix.segments) {
            assert_eq!(a.bytes, b.bytes, "chunk {chunk}");
            assert_eq!(a.duration_ticks, b.duration_ticks);
        }
    }
    assert_eq!(whole.segments.len(), 8);
}

#[test]
fn hevc_cuts_on_irap() {
    let run = segment(&fixture("hevc.ts"), default_config(), 7 * PACKET_LEN);
    check_ts_rules(&run);
    assert_eq!(run.segments.len(), 3, "{:?}", run.notices);
    for s in &run.segments {
        assert_eq!(s.duration_ticks, Some(2 * TICKS));
        assert!(s.start.independent);
    }
}

#[test]
fn audio_only_is_cut_on_audio_frames() {
    let run = segment(&fixture("audio-only.ts"), default_config(), 4096);
    check_ts_rules(&run);
    assert!(run.segments.len() >= 3, "{} segments", run.segments.len());
    let total = total_ticks(&run);
    // The last segment ends at end of input, where its length is estimated
    // from the previous audio PES: within one PES of the 7 s of audio.
    assert!(total.abs_diff(7 * TICKS) < TICKS / 4, "total {total}");
    for s in &run.segments[..run.segments.len() - 1] {
        let d = s.duration_ticks.expect("ended");
        assert!((2 * TICKS..=3 * TICKS).contains(&d), "{d}");
    }
}

#[test]
fn pts_wrap_is_unwrapped() {
    // Start 5 s before the 33-bit clock wraps.
    let offset = (1u64 << 33) - 5 * TICKS - 126_000;
    let run = segment(
        &shift_timestamps(&sample(), offset),
        default_config(),
        65536,
    );
    check_ts_rules(&run);
    assert_eq!(run.segments.len(), 8);
    assert!(run.segments.iter().all(|s| !s.start.discontinuity));
    assert_eq!(run.segments[2].duration_ticks, Some(2 * TICKS));
    assert!(run.notices.is_empty(), "{:?}", run.notices);
}

#[test]
fn looped_source_is_a_discontinuity() {
    let one = sample();
    let mut twice = one.clone();
    twice.extend_from_slice(&one);
    let run = segment(&twice, default_config(), 65536);
    check_ts_rules(&run);
    assert_eq!(run.segments.len(), 16);
    let disc: Vec<usize> = (0..16)
        .filter(|&i| run.segments[i].start.discontinuity)
        .collect();
    assert_eq!(disc, vec![8]);
    // The segment before the loop keeps its real length, not the jump.
    let before = run.segments[7].duration_ticks.expect("ended");
    assert!(before <= 2 * TICKS + 3000 && before > TICKS, "{before}");
    assert!(run
        .notices
        .iter()
        .any(|n| matches!(n, Notice::TimelineJump { .. })));
}

#[test]
fn long_gop_forces_a_cut_within_the_target() {
    // A 1 s target with the sample's 2 s GOP.
    let run = segment(&sample(), SegmenterConfig::new(1.0, 1), 65536);
    check_ts_rules(&run);
    assert!(run.segments.iter().any(|s| !s.start.independent));
    for s in &run.segments {
        let d = s.duration_ticks.expect("ended");
        // EXTINF rounded is never above the target duration.
        assert!(d < TICKS + TICKS / 2, "{d}");
    }
    assert!(run
        .notices
        .iter()
        .any(|n| matches!(n, Notice::ForcedCut { .. })));
}

#[test]
fn garbage_and_truncated_packets_resync() {
    let data = sample();
    let mut damaged = Vec::new();
    for (i, p) in data.chunks_exact(PACKET_LEN).enumerate() {
        match i % 997 {
            500 => damaged.extend_from_slice(b"\xde\xad\xbe\xef garbage \x47\x47"),
            700 => {
                damaged.extend_from_slice(&p[..90]);
                continue;
            }
            _ => {}
        }
        damaged.extend_from_slice(p);
    }
    let run = segment(&damaged, default_config(), 1000);
    check_ts_rules(&run);
    assert!(run.segments.len() >= 6, "{} segments", run.segments.len());
    let lost: usize = run
        .notices
        .iter()
        .filter_map(|n| match n {
            Notice::SyncLost { skipped } => Some(*skipped),
            _ => None,
        })
        .sum();
    assert!(lost > 0);
    assert!(run
        .notices
        .iter()
        .any(|n| matches!(n, Notice::ContinuityError { .. })));
}

#[test]
fn lost_video_packet_drops_until_next_keyframe() {
    let data = sample();
    let (_, streams) = program(&data);
    let video = streams.iter().find(|s| s.1 == 0x1B).expect("video").0;
    // Drop the 3000th video packet (mid-GOP, inside the first few seconds).
    let mut n = 0;
    let mut out = Vec::new();
    for p in packets(&data) {
        let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
        if pid == video {
            n += 1;
            if n == 3000 {
                continue;
            }
        }
        out.extend_from_slice(p);
    }
    let run = segment(&out, default_config(), 65536);
    check_ts_rules(&run);
    assert!(run
        .notices
        .iter()
        .any(|n| matches!(n, Notice::ContinuityError { .. })));
    assert!(run.notices.iter().any(|n| matches!(
        n,
        Notice::PesDropped {
            reason: treecast_origin::segmenter::DropReason::AwaitingKeyframe,
            ..
        }
    )));
    assert_eq!(run.segments.len(), 8);
}

#[test]
fn program_change_mid_stream() {
    let mut data = sample();
    data.extend_from_slice(&fixture("hevc.ts"));
    let run = segment(&data, default_config(), 65536);
    check_ts_rules(&run);
    assert!(run.notices.contains(&Notice::ProgramChanged));
    let disc: Vec<usize> = (0..run.segments.len())
        .filter(|&i| run.segments[i].start.discontinuity)
        .collect();
    assert_eq!(disc, vec![8], "{} segments", run.segments.len());
    assert_eq!(run.segments.len(), 11);
}

#[test]
fn stream_without_keyframes_is_reported_and_publishes_nothing() {
    let data = sample();
    let run_all = segment(&data, default_config(), 65536);
    assert_eq!(run_all.segments.len(), 8);
    // Remove every IDR access unit, renumbering the video PID's continuity
    // counters so the result is a clean stream that simply has no keyframes.
    let video_pid = program(&data)
        .1
        .iter()
        .find(|s| s.1 == 0x1B)
        .expect("video")
        .0;
    let mut out = Vec::new();
    let mut in_idr = false;
    let mut cc = 0u8;
    for p in packets(&data) {
        let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
        let mut p = *p;
        if pid == video_pid {
            if p[1] & 0x40 != 0 {
                // An IDR access unit carries an SPS (NAL type 7) in its first packet.
                in_idr = p.windows(4).any(|w| w == [0, 0, 1, 0x67]);
            }
            if in_idr {
                continue;
            }
            if p[3] & 0x10 != 0 {
                p[3] = (p[3] & 0xF0) | cc;
                cc = (cc + 1) & 0xF;
            }
        }
        out.extend_from_slice(&p);
    }
    let run = segment(&out, default_config(), 65536);
    assert!(run.segments.is_empty());
    assert!(run
        .notices
        .iter()
        .any(|n| matches!(n, Notice::WaitingForKeyframe { .. })));
}

#[test]
fn pure_garbage_publishes_nothing() {
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let run = segment(&garbage, default_config(), 4096);
    assert!(run.segments.is_empty());
}

mod corrupted_input {
    use super::*;
    use proptest::prelude::*;

    /// A damaged control field that turns the keyframe's first packet into
    /// an adaptation-only one (found by the property below): the bytes after
    /// its adaptation field still look like a PES header, and must not be
    /// taken for the start of a frame.
    #[test]
    fn a_start_bit_on_a_packet_without_payload_starts_no_frame() {
        let mut data = sample()[..1_000_000].to_vec();
        let first_video = (0..data.len() / PACKET_LEN)
            .map(|i| i * PACKET_LEN)
            .find(|&at| data[at + 1] & 0x1F == 0x01 && data[at + 2] == 0x00)
            .expect("a video packet");
        assert_eq!(data[first_video + 1] & 0x40, 0x40, "it starts a PES");
        // adaptation_field_control 3 -> 2: adaptation field only.
        data[first_video + 3] ^= 0x51;
        assert_eq!((data[first_video + 3] >> 4) & 0x3, 2);
        let run = segment(&data, default_config(), 1);
        assert!(!run.segments.is_empty(), "the stream still publishes");
        check_ts_rules(&run);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Arbitrary bytes (what the `segmenter` fuzz target feeds, on
        /// stable): never a panic, and whatever is published follows the
        /// transport stream rules. Sync bytes are sprinkled in so some
        /// runs get past packet framing.
        #[test]
        fn arbitrary_bytes_never_break_the_segmenter(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            syncs in proptest::collection::vec(0usize..20_000, 0..100),
            chunk in 1usize..5_000,
        ) {
            let mut data = data;
            for at in syncs {
                if !data.is_empty() {
                    let i = (at / PACKET_LEN * PACKET_LEN) % data.len();
                    data[i] = 0x47;
                }
            }
            let run = segment(&data, default_config(), chunk);
            check_ts_rules(&run);
        }

        /// Whatever damage the input takes (flipped bytes, cut-out runs,
        /// inserted junk), everything published still follows the
        /// transport stream rules.
        #[test]
        fn damage_never_breaks_published_segments(
            flips in proptest::collection::vec((0usize..1_000_000, any::<u8>()), 0..200),
            cuts in proptest::collection::vec((0usize..1_000_000, 1usize..400), 0..20),
            junk in proptest::collection::vec((0usize..1_000_000, proptest::collection::vec(any::<u8>(), 1..300)), 0..20),
            chunk in 1usize..70_000,
        ) {
            let mut data = sample()[..1_000_000].to_vec();
            for (at, x) in flips {
                data[at % 1_000_000] ^= x | 1;
            }
            for (at, len) in cuts {
                let at = at % data.len();
                let end = (at + len).min(data.len());
                data.drain(at..end);
            }
            for (at, bytes) in junk {
                let at = at % data.len();
                data.splice(at..at, bytes);
            }
            let run = segment(&data, default_config(), chunk);
            check_ts_rules(&run);
            for s in &run.segments {
                // EXTINF rounded to the nearest second is never above the target.
                let d = s.duration_ticks.expect("ended");
                prop_assert!((d + TICKS / 2) / TICKS <= 3, "{} ticks", d);
            }
        }
    }
}
