//! Tracker tickets: the edge's signed word that a child may connect to a
//! parent.
//!
//! A parent accepts a child only if the child shows a ticket, signed by the
//! edge's key, that names this channel, that child, this parent, and has
//! not expired. The signed message is a fixed binary layout:
//!
//! ```text
//! "treecast-ticket-v1\0" | channel len (u8) | channel | child (u64 BE) | parent (u64 BE, 0 = edge) | expires (u64 BE, unix s)
//! ```

use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::names::ChannelName;

const DOMAIN: &[u8] = b"treecast-ticket-v1\0";

/// What a ticket grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketClaims {
    /// Channel.
    pub channel: ChannelName,
    /// The child's peer id.
    pub child: u64,
    /// The parent's peer id; 0 for the edge.
    pub parent: u64,
    /// Expiry, unix seconds.
    pub expires: u64,
}

impl TicketClaims {
    fn message(&self) -> Vec<u8> {
        let ch = self.channel.as_str().as_bytes();
        let mut m = Vec::with_capacity(DOMAIN.len() + 1 + ch.len() + 24);
        m.extend_from_slice(DOMAIN);
        // ChannelName is at most 64 bytes.
        m.push(ch.len() as u8);
        m.extend_from_slice(ch);
        m.extend_from_slice(&self.child.to_be_bytes());
        m.extend_from_slice(&self.parent.to_be_bytes());
        m.extend_from_slice(&self.expires.to_be_bytes());
        m
    }

    /// Signs the claims: the ticket text is `<claims hex>.<signature hex>`.
    pub fn sign(&self, key: &SigningKey) -> String {
        let m = self.message();
        format!(
            "{}.{}",
            hex::encode(&m[DOMAIN.len()..]),
            hex::encode(key.sign(&m).to_bytes())
        )
    }
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket at all.
    #[error("malformed ticket")]
    Malformed,
    /// Not signed by the edge.
    #[error("ticket signature does not verify")]
    BadSignature,
    /// Signed, but for another channel, child or parent.
    #[error("ticket is for another channel, child or parent")]
    WrongParty,
    /// Signed, but too old.
    #[error("ticket expired")]
    Expired,
}

/// Checks `ticket` against the edge's key and the expected parties at `now`
/// (unix seconds); returns the claims.
pub fn verify(
    ticket: &str,
    key: &VerifyingKey,
    channel: &ChannelName,
    child: u64,
    parent: u64,
    now: u64,
) -> Result<TicketClaims, TicketError> {
    let (claims_hex, sig_hex) = ticket.split_once('.').ok_or(TicketError::Malformed)?;
    if claims_hex.len() > 256 {
        return Err(TicketError::Malformed);
    }
    let body = hex::decode(claims_hex).map_err(|_| TicketError::Malformed)?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| TicketError::Malformed)?;
    let (&len, rest) = body.split_first().ok_or(TicketError::Malformed)?;
    let len = usize::from(len);
    if rest.len() != len + 24 {
        return Err(TicketError::Malformed);
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| TicketError::Malformed)?;
    let channel_in = ChannelName::new(name).map_err(|_| TicketError::Malformed)?;
    let num =
        |at: usize| u64::from_be_bytes(rest[len + at..len + at + 8].try_into().unwrap_or([0; 8]));
    let claims = TicketClaims {
        channel: channel_in,
        child: num(0),
        parent: num(8),
        expires: num(16),
    };
    key.verify_strict(&claims.message(), &Signature::from_bytes(&sig))
        .map_err(|_| TicketError::BadSignature)?;
    if &claims.channel != channel || claims.child != child || claims.parent != parent {
        return Err(TicketError::WrongParty);
    }
    if claims.expires < now {
        return Err(TicketError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> TicketClaims {
        TicketClaims {
            channel: ChannelName::new("demo").expect("name"),
            child: 7,
            parent: 3,
            expires: 1_000,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let pk = key.verifying_key();
        let t = claims().sign(&key);
        let demo = ChannelName::new("demo").expect("name");
        assert_eq!(verify(&t, &pk, &demo, 7, 3, 999), Ok(claims()));
        assert_eq!(
            verify(&t, &pk, &demo, 7, 3, 1_001),
            Err(TicketError::Expired)
        );
        assert_eq!(
            verify(&t, &pk, &demo, 8, 3, 999),
            Err(TicketError::WrongParty)
        );
        assert_eq!(
            verify(&t, &pk, &demo, 7, 0, 999),
            Err(TicketError::WrongParty)
        );
        let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
        assert_eq!(
            verify(&t, &other, &demo, 7, 3, 999),
            Err(TicketError::BadSignature)
        );
        // A child cannot raise its own expiry.
        let forged = TicketClaims {
            expires: 9_999,
            ..claims()
        }
        .sign(&SigningKey::from_bytes(&[6; 32]));
        let (body, _) = forged.split_once('.').expect("dot");
        let (_, sig) = t.split_once('.').expect("dot");
        assert_eq!(
            verify(&format!("{body}.{sig}"), &pk, &demo, 7, 3, 999),
            Err(TicketError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in ".{0,300}") {
            let pk = SigningKey::from_bytes(&[5; 32]).verifying_key();
            let demo = ChannelName::new("demo").expect("name");
            prop_assert!(verify(&s, &pk, &demo, 1, 2, 0).is_err());
        }
    }
}
