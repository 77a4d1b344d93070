//! The tracker's per-address rate limit: a token bucket per client address,
//! in a fixed table.
//!
//! Addresses hash into [`BUCKETS`] slots; the memory is fixed (2 MB)
//! and every request is O(1), however many addresses the audience has.
//! Two addresses that share a slot share its allowance, which only makes
//! the limit stricter for them; with a quarter of a million slots that is
//! rare at 100,000 viewers, and viewers behind one NAT share an address
//! (and so a bucket) anyway. The hash is keyed per process, so no one can
//! pick addresses that collide with a victim's.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// Slots in the table.
pub const BUCKETS: usize = 1 << 18;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    /// Milliseconds since the limiter's epoch at the last refill.
    at_ms: u32,
}

/// The limiter: `rate` requests per second per address, bursts of twice that.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    epoch: Instant,
    hasher: RandomState,
    buckets: Vec<Bucket>,
}

impl Limiter {
    /// A limiter allowing `rate` requests per second per address.
    pub fn new(rate: f64, now: Instant) -> Self {
        let full = Bucket {
            tokens: (2.0 * rate) as f32,
            at_ms: 0,
        };
        Self {
            rate,
            epoch: now,
            hasher: RandomState::new(),
            buckets: vec![full; BUCKETS],
        }
    }

    /// Takes one token for `ip` at `now`; `false` when it has none left.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let slot = (self.hasher.hash_one(ip) as usize) % BUCKETS;
        // Wraps after 49 days; a wrap only refills a bucket early.
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let b = &mut self.buckets[slot];
        let elapsed = f64::from(now_ms.wrapping_sub(b.at_ms)) / 1000.0;
        let tokens = (f64::from(b.tokens) + elapsed * self.rate).min(2.0 * self.rate);
        b.at_ms = now_ms;
        if tokens < 1.0 {
            b.tokens = tokens as f32;
            return false;
        }
        b.tokens = (tokens - 1.0) as f32;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_to_twice_the_rate_then_refills() {
        let t0 = Instant::now();
        let mut l = Limiter::new(5.0, t0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let allowed = (0..20).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(allowed, 10, "a burst of twice the rate");
        assert!(!l.allow(ip, t0));
        assert!(
            l.allow(ip, t0 + Duration::from_millis(200)),
            "one token per 1/rate s"
        );
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(l.allow(other, t0), "another address has its own bucket");
    }

    #[test]
    fn memory_does_not_grow_with_addresses() {
        let t0 = Instant::now();
        let mut l = Limiter::new(5.0, t0);
        let before = l.buckets.len();
        for i in 0..1_000_000u32 {
            l.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(l.buckets.len(), before);
    }
}
