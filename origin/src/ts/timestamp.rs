//! 33-bit PTS/DTS unwrapping and timeline jump detection.
//!
//! PTS values wrap every 2^33 ticks (about 26.5 hours). [`Unwrapper`] turns
//! the 33-bit values of one stream into a continuous 64-bit timeline by
//! taking the shortest step from the previous value, and flags a step too
//! large to be normal playback (a looped file, a restarted encoder) as a
//! jump so the segmenter can mark a discontinuity.

/// One full turn of the 33-bit clock.
pub const WRAP: i64 = 1 << 33;

/// The shortest signed distance from `from` to `to` on the 33-bit circle.
pub fn distance(from: u64, to: u64) -> i64 {
    let d = (to as i64 - from as i64).rem_euclid(WRAP);
    if d >= WRAP / 2 {
        d - WRAP
    } else {
        d
    }
}

/// Result of unwrapping one timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwrapped {
    /// The timestamp on the stream's continuous 64-bit timeline.
    pub ticks: i64,
    /// The step from the previous timestamp was outside the normal range.
    pub jump: bool,
}

/// Unwraps one stream's timestamps; see the module docs.
#[derive(Debug, Clone)]
pub struct Unwrapper {
    last: Option<(u64, i64)>,
    max_backward: i64,
    max_forward: i64,
}

impl Unwrapper {
    /// `max_backward`/`max_forward`: the largest steps (in ticks) still taken
    /// as continuous playback. B-frames step PTS backward by a few frames.
    pub fn new(max_backward: i64, max_forward: i64) -> Self {
        Self {
            last: None,
            max_backward,
            max_forward,
        }
    }

    /// Unwraps `raw`, a 33-bit timestamp.
    pub fn unwrap(&mut self, raw: u64) -> Unwrapped {
        let raw = raw & (WRAP as u64 - 1);
        let out = match self.last {
            None => Unwrapped {
                ticks: raw as i64,
                jump: false,
            },
            Some((last_raw, last_ticks)) => {
                let d = distance(last_raw, raw);
                Unwrapped {
                    ticks: last_ticks + d,
                    jump: d < -self.max_backward || d > self.max_forward,
                }
            }
        };
        self.last = Some((raw, out.ticks));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unwraps_across_the_33_bit_boundary() {
        let mut u = Unwrapper::new(90_000, 900_000);
        let near = (WRAP - 3000) as u64;
        let a = u.unwrap(near);
        let b = u.unwrap(1000);
        assert_eq!(b.ticks - a.ticks, 4000);
        assert!(!b.jump);
    }

    #[test]
    fn flags_jumps() {
        let mut u = Unwrapper::new(90_000, 900_000);
        u.unwrap(10 * 90_000);
        assert!(u.unwrap(0).jump, "loop back to zero");
        assert!(!u.unwrap(3000).jump);
        assert!(u.unwrap(3000 + 20 * 90_000).jump, "big step forward");
    }

    proptest! {
        #[test]
        fn continuous_steps_stay_continuous(start in 0u64..(1 << 33), steps in proptest::collection::vec(-6000i64..6000, 1..200)) {
            let mut u = Unwrapper::new(90_000, 900_000);
            let mut expect = u.unwrap(start).ticks;
            let mut raw = start as i64;
            for s in steps {
                raw = (raw + s).rem_euclid(WRAP);
                expect += s;
                let got = u.unwrap(raw as u64);
                prop_assert_eq!(got.ticks, expect);
                prop_assert!(!got.jump);
            }
        }
    }
}
