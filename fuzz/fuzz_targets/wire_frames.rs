//! Arbitrary bytes through the tree's frame decoder: never a panic, and a
//! frame that decodes re-encodes to bytes that decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use treecast_proto::wire::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::new();
    d.feed(data);
    while let Ok(Some(frame)) = d.poll_frame() {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        let mut again = FrameDecoder::new();
        again.feed(&out);
        assert_eq!(again.poll_frame(), Ok(Some(frame)));
    }
});
