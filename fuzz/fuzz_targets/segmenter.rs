//! Arbitrary bytes through the segmenter, split at an arbitrary point:
//! it must never panic, and every segment it publishes must be whole
//! packets that open with a PAT.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treecast_origin::segmenter::{Event, Segmenter, SegmenterConfig};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b) * 7).min(data.len());
    let mut s = Segmenter::new(SegmenterConfig::new(2.0, 3));
    let mut current: Option<Vec<u8>> = None;
    let check = |s: &mut Segmenter, current: &mut Option<Vec<u8>>| {
        while let Some(e) = s.poll_event() {
            match e {
                Event::SegmentStart(_) => *current = Some(Vec::new()),
                Event::Data(b) => current.as_mut().expect("data inside a segment").extend_from_slice(&b),
                Event::SegmentEnd { .. } => {
                    let seg = current.take().expect("end of an open segment");
                    assert_eq!(seg.len() % 188, 0);
                    assert!(seg.is_empty() || (seg[0] == 0x47 && seg[1] & 0x1F == 0 && seg[2] == 0));
                }
                Event::Notice(_) | Event::TargetDuration(_) => {}
            }
        }
    };
    s.handle_input(&data[..split]);
    check(&mut s, &mut current);
    s.handle_input(&data[split..]);
    check(&mut s, &mut current);
    s.handle_end_of_input();
    check(&mut s, &mut current);
});
