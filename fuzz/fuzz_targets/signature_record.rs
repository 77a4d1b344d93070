//! Arbitrary bytes as a `.sig` document: decoding must never panic, and
//! whatever decodes must re-encode to a document that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use treecast_proto::SignedSegment;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedSegment::from_json(data) {
        let again = SignedSegment::from_json(signed.to_json().as_bytes()).expect("round trip");
        assert_eq!(again, signed);
    }
});
