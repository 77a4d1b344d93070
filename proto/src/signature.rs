//! Signed segment digests: how a peer knows a segment came from the origin.
//!
//! For every segment it cuts, the origin signs a [`SegmentRecord`] (channel,
//! media sequence number, length and BLAKE3 digest of the bytes, and the
//! wall-clock time the segment was complete at the origin) with its
//! Ed25519 key and publishes the result as `<seq>.sig` next to the segment.
//! Anyone holding the origin's public key can then check bytes received from
//! an untrusted relay: [`OriginPublicKey::verify_segment`] checks the
//! signature, that the record names the expected channel and segment (so a
//! signature cannot be replayed onto another segment), and that the bytes
//! have exactly the signed length and digest (so truncation counts as
//! corruption).
//!
//! The signed message is a fixed binary layout, not the JSON text, so the
//! JSON encoding can change without breaking signatures:
//!
//! ```text
//! "treecast-segment-v2\0" | channel len (u8) | channel | seq (u64 BE) | len (u64 BE) | blake3 (32)
//!   | completed (u64 BE, Unix milliseconds)
//! ```
//!
//! The completion time is what every peer measures its lag from the
//! origin against (`docs/swarm.md`); signing it means a relay cannot make a
//! segment look fresher or older than it is.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::names::ChannelName;

const DOMAIN: &[u8] = b"treecast-segment-v2\0";

/// Version of the `.sig` JSON record this crate writes and reads.
pub const RECORD_VERSION: u32 = 2;

/// Largest `.sig` document accepted, in bytes; real ones are about 300.
pub const MAX_RECORD_LEN: usize = 4096;

/// What the origin vouches for about one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// Channel the segment belongs to.
    pub channel: ChannelName,
    /// Media sequence number of the segment.
    pub seq: u64,
    /// Exact length of the segment in bytes.
    pub len: u64,
    /// BLAKE3 digest of the segment bytes.
    pub digest: [u8; 32],
    /// When the origin had the whole segment (its last byte cut), Unix
    /// milliseconds.
    pub completed_ms: u64,
}

impl SegmentRecord {
    /// Builds the record for `bytes`, complete at `completed_ms` (Unix
    /// milliseconds).
    pub fn for_bytes(channel: ChannelName, seq: u64, bytes: &[u8], completed_ms: u64) -> Self {
        Self {
            channel,
            seq,
            len: bytes.len() as u64,
            digest: *blake3::hash(bytes).as_bytes(),
            completed_ms,
        }
    }

    fn signed_message(&self) -> Vec<u8> {
        let channel = self.channel.as_str().as_bytes();
        let mut m = Vec::with_capacity(DOMAIN.len() + 1 + channel.len() + 8 + 8 + 32 + 8);
        m.extend_from_slice(DOMAIN);
        // ChannelName guarantees at most 64 bytes, so this fits in a u8.
        m.push(channel.len() as u8);
        m.extend_from_slice(channel);
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(&self.len.to_be_bytes());
        m.extend_from_slice(&self.digest);
        m.extend_from_slice(&self.completed_ms.to_be_bytes());
        m
    }
}

/// A [`SegmentRecord`] with the origin's signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSegment {
    /// The signed facts.
    pub record: SegmentRecord,
    /// Ed25519 signature over the record's binary layout.
    pub signature: [u8; 64],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Json {
    v: u32,
    channel: String,
    seq: u64,
    len: u64,
    blake3: String,
    completed_ms: u64,
    sig: String,
}

/// Why a `.sig` document or a segment failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The `.sig` document is not valid JSON of the expected shape.
    #[error("malformed signature record: {0}")]
    Malformed(String),
    /// The record was written by an unknown, newer format version.
    #[error("unsupported signature record version {0}")]
    UnsupportedVersion(u32),
    /// The record is for another channel than the one requested.
    #[error("signature record is for channel {found}, expected {expected}")]
    WrongChannel {
        /// Channel the caller asked for.
        expected: String,
        /// Channel in the record.
        found: String,
    },
    /// The record is for another segment than the one requested.
    #[error("signature record is for segment {found}, expected {expected}")]
    WrongSequence {
        /// Sequence number the caller asked for.
        expected: u64,
        /// Sequence number in the record.
        found: u64,
    },
    /// The signature does not match the origin's public key.
    #[error("signature does not verify with the origin's public key")]
    BadSignature,
    /// The bytes are not as long as the origin signed (truncated or padded).
    #[error("segment is {found} bytes, the origin signed {expected}")]
    LengthMismatch {
        /// Signed length.
        expected: u64,
        /// Length received.
        found: u64,
    },
    /// The bytes differ from what the origin signed.
    #[error("segment digest does not match the origin's signed digest")]
    DigestMismatch,
}

impl SignedSegment {
    /// Encodes the record as the `.sig` JSON document.
    pub fn to_json(&self) -> String {
        let j = Json {
            v: RECORD_VERSION,
            channel: self.record.channel.to_string(),
            seq: self.record.seq,
            len: self.record.len,
            blake3: hex::encode(self.record.digest),
            completed_ms: self.record.completed_ms,
            sig: hex::encode(self.signature),
        };
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(&j).unwrap_or_default()
    }

    /// Decodes a `.sig` JSON document. This checks the shape only; call
    /// [`OriginPublicKey::verify_record`] to check the signature.
    pub fn from_json(doc: &[u8]) -> Result<Self, VerifyError> {
        if doc.len() > MAX_RECORD_LEN {
            return Err(VerifyError::Malformed(format!(
                "{} bytes, more than {MAX_RECORD_LEN}",
                doc.len()
            )));
        }
        let j: Json =
            serde_json::from_slice(doc).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if j.v != RECORD_VERSION {
            return Err(VerifyError::UnsupportedVersion(j.v));
        }
        let channel =
            ChannelName::new(&j.channel).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let digest = decode_hex_array::<32>(&j.blake3, "blake3")?;
        let signature = decode_hex_array::<64>(&j.sig, "sig")?;
        Ok(Self {
            record: SegmentRecord {
                channel,
                seq: j.seq,
                len: j.len,
                digest,
                completed_ms: j.completed_ms,
            },
            signature,
        })
    }
}

fn decode_hex_array<const N: usize>(s: &str, field: &str) -> Result<[u8; N], VerifyError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|e| VerifyError::Malformed(format!("field {field}: {e}")))?;
    Ok(out)
}

/// The origin's signing key. Only the origin holds it.
pub struct OriginKey(SigningKey);

impl fmt::Debug for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_tuple("OriginKey").field(&self.public()).finish()
    }
}

impl OriginKey {
    /// Rebuilds a key from its 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte secret seed, for storing the key.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half, which edges and peers are configured with.
    pub fn public(&self) -> OriginPublicKey {
        OriginPublicKey(self.0.verifying_key())
    }

    /// Signs `record`.
    pub fn sign(&self, record: SegmentRecord) -> SignedSegment {
        let signature = self.0.sign(&record.signed_message()).to_bytes();
        SignedSegment { record, signature }
    }
}

/// The origin's public key: 64 hex characters in configs and on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OriginPublicKey(VerifyingKey);

impl fmt::Debug for OriginPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OriginPublicKey({self})")
    }
}

impl fmt::Display for OriginPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

/// A public key string that is not 64 hex characters of a valid Ed25519 key.
#[derive(Debug, thiserror::Error)]
#[error("invalid origin public key: {0} (expected 64 hex characters, as printed by `origin key`)")]
pub struct InvalidPublicKey(String);

impl FromStr for OriginPublicKey {
    type Err = InvalidPublicKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|e| InvalidPublicKey(e.to_string()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| InvalidPublicKey(e.to_string()))
    }
}

impl OriginPublicKey {
    /// Checks that `signed` was signed by this key and names `channel`/`seq`.
    pub fn verify_record(
        &self,
        signed: &SignedSegment,
        channel: &ChannelName,
        seq: u64,
    ) -> Result<(), VerifyError> {
        if &signed.record.channel != channel {
            return Err(VerifyError::WrongChannel {
                expected: channel.to_string(),
                found: signed.record.channel.to_string(),
            });
        }
        if signed.record.seq != seq {
            return Err(VerifyError::WrongSequence {
                expected: seq,
                found: signed.record.seq,
            });
        }
        let sig = Signature::from_bytes(&signed.signature);
        self.0
            .verify_strict(&signed.record.signed_message(), &sig)
            .map_err(|_| VerifyError::BadSignature)
    }

    /// Checks the record as [`verify_record`](Self::verify_record) does, and
    /// that `bytes` are exactly the signed segment.
    pub fn verify_segment(
        &self,
        signed: &SignedSegment,
        channel: &ChannelName,
        seq: u64,
        bytes: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify_digest(
            signed,
            channel,
            seq,
            bytes.len() as u64,
            blake3::hash(bytes).as_bytes(),
        )
    }

    /// Checks the record as [`verify_record`](Self::verify_record) does, and
    /// that a segment of `len` bytes hashing to `digest` is the signed one:
    /// for a relay that hashed the bytes as they streamed through.
    pub fn verify_digest(
        &self,
        signed: &SignedSegment,
        channel: &ChannelName,
        seq: u64,
        len: u64,
        digest: &[u8; 32],
    ) -> Result<(), VerifyError> {
        self.verify_record(signed, channel, seq)?;
        if len != signed.record.len {
            return Err(VerifyError::LengthMismatch {
                expected: signed.record.len,
                found: len,
            });
        }
        if digest != &signed.record.digest {
            return Err(VerifyError::DigestMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn demo() -> ChannelName {
        ChannelName::new("demo").expect("valid")
    }

    #[test]
    fn sign_and_verify() {
        let key = OriginKey::from_seed([7; 32]);
        let pk = key.public();
        let bytes = b"segment bytes".to_vec();
        let signed = key.sign(SegmentRecord::for_bytes(
            demo(),
            5,
            &bytes,
            1_700_000_000_000,
        ));
        let decoded = SignedSegment::from_json(signed.to_json().as_bytes()).expect("decodes");
        assert_eq!(decoded, signed);
        pk.verify_segment(&decoded, &demo(), 5, &bytes)
            .expect("verifies");

        let other = ChannelName::new("other").expect("valid");
        assert!(matches!(
            pk.verify_segment(&decoded, &other, 5, &bytes),
            Err(VerifyError::WrongChannel { .. })
        ));
        assert!(matches!(
            pk.verify_segment(&decoded, &demo(), 6, &bytes),
            Err(VerifyError::WrongSequence { .. })
        ));
        assert!(matches!(
            pk.verify_segment(&decoded, &demo(), 5, &bytes[..3]),
            Err(VerifyError::LengthMismatch { .. })
        ));
        let mut flipped = bytes.clone();
        flipped[0] ^= 1;
        assert_eq!(
            pk.verify_segment(&decoded, &demo(), 5, &flipped),
            Err(VerifyError::DigestMismatch)
        );
        let stranger = OriginKey::from_seed([8; 32]).public();
        assert_eq!(
            stranger.verify_segment(&decoded, &demo(), 5, &bytes),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn forged_record_fails() {
        let key = OriginKey::from_seed([1; 32]);
        let mut signed = key.sign(SegmentRecord::for_bytes(demo(), 1, b"abc", 7));
        // A relay that swaps in its own bytes and digest cannot re-sign.
        signed.record = SegmentRecord::for_bytes(demo(), 1, b"evil", 7);
        assert_eq!(
            key.public().verify_segment(&signed, &demo(), 1, b"evil"),
            Err(VerifyError::BadSignature)
        );
        // Nor make a segment look fresher than it is.
        let mut fresher = key.sign(SegmentRecord::for_bytes(demo(), 1, b"abc", 7));
        fresher.record.completed_ms += 1000;
        assert_eq!(
            key.public().verify_segment(&fresher, &demo(), 1, b"abc"),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn public_key_text_round_trip() {
        let pk = OriginKey::from_seed([3; 32]).public();
        let parsed: OriginPublicKey = pk.to_string().parse().expect("parses");
        assert_eq!(parsed, pk);
        assert!("zz".parse::<OriginPublicKey>().is_err());
        assert!("00".repeat(31).parse::<OriginPublicKey>().is_err());
    }

    proptest! {
        #[test]
        fn json_round_trip(seq in any::<u64>(), at in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let key = OriginKey::from_seed([9; 32]);
            let signed = key.sign(SegmentRecord::for_bytes(demo(), seq, &data, at));
            let back = SignedSegment::from_json(signed.to_json().as_bytes()).expect("decodes");
            prop_assert_eq!(&back, &signed);
            prop_assert!(key.public().verify_segment(&back, &demo(), seq, &data).is_ok());
        }

        /// What the `signature_record` fuzz target checks, on stable:
        /// any bytes decode or fail without a panic, and what decodes
        /// encodes back to the same record.
        #[test]
        fn from_json_never_panics_and_what_decodes_round_trips(
            doc in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..600),
                (any::<u64>(), any::<u64>(), any::<u64>(), "[0-9a-f]{64}", "[0-9a-f]{128}", "[a-z]{1,8}")
                    .prop_map(|(seq, len, at, d, sig, ch)| format!(
                        r#"{{"v":2,"channel":"{ch}","seq":{seq},"len":{len},"blake3":"{d}","completed_ms":{at},"sig":"{sig}"}}"#
                    ).into_bytes()),
            ]
        ) {
            if let Ok(signed) = SignedSegment::from_json(&doc) {
                let again = SignedSegment::from_json(signed.to_json().as_bytes()).expect("round trip");
                prop_assert_eq!(again, signed);
            }
        }
    }
}
