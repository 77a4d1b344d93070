//! What the simulator models instead of running it: the data plane's
//! timings and shares, taken from the real swarm's measured figures and
//! the peer's own constants, and the sessions of an audience.
//!
//! Each figure says where it comes from; `docs/sim.md` says what is not
//! modelled.

use crate::rng::Rng;

/// Timings and shares of the data plane.
#[derive(Debug, Clone)]
pub struct DataPlane {
    /// Between a peer's heartbeats, ms: the tracker's heartbeat timeout
    /// over 3, as the edge tells its peers (`heartbeat_interval_ms`).
    pub heartbeat_ms: u64,
    /// Between the edge's tracker ticks, ms (`edge/src/run.rs`).
    pub tick_ms: u64,
    /// Shortest silence that ends a link, ms (`peer/src/upstream.rs`
    /// `SILENCE_FLOOR`).
    pub silence_floor_ms: u64,
    /// Longest silence before switching, ms (the peer's `gap_ms`).
    pub gap_ms: u64,
    /// Round trips of silence the peer's liveness allows before it calls
    /// a parent gone (`peer/src/liveness.rs`).
    pub silence_rtts: f64,
    /// Cost of a switch to the warm backup on top of its round trips
    /// (`Hello` with the ticket, `Welcome`, the first chunk), ms: fitted
    /// to the loopback swarm's repair p50 of 27–30 ms when the parent
    /// closes politely.
    pub switch_ms: f64,
    /// A QUIC handshake to a parent that is gone fails after this, ms
    /// (`CONNECT_TIMEOUT`).
    pub connect_timeout_ms: u64,
    /// Round trips a repair gives a warm backup's `Welcome`, within
    /// `welcome_floor_ms..=welcome_ceiling_ms` (the peer's
    /// `REPAIR_HELLO_*`).
    pub welcome_rtts: f64,
    pub welcome_floor_ms: u64,
    pub welcome_ceiling_ms: u64,
    /// A segment missing this long after it is due is fetched from the
    /// edge, ms (the peer's `fallback_grace_ms`).
    pub fallback_grace_ms: u64,
    /// How far behind live the player sits, ms (the peer's
    /// `buffer_secs`): what an edge that cannot keep up eats into before
    /// players stall.
    pub buffer_ms: u64,
    /// Share of a link's cap a parent's children get in segment bytes
    /// (QUIC, acknowledgements, pings take the rest); the lab's links
    /// measured 0.85–0.95 of the cap on the wire when saturated.
    pub upload_efficiency: f64,
    /// Forwarding cost of one hop on top of the link's one-way delay, ms:
    /// loopback's per-hop lag (depth 7 p50 38 ms, depth 1 p50 2 ms).
    pub hop_ms: f64,
    /// A parent sheds at most one child per this, ms (its uplink's
    /// lateness must build again before the next).
    pub shed_every_ms: u64,
}

impl Default for DataPlane {
    fn default() -> Self {
        Self {
            heartbeat_ms: 2_000,
            tick_ms: 500,
            silence_floor_ms: 120,
            gap_ms: 1_000,
            silence_rtts: 4.0,
            switch_ms: 25.0,
            connect_timeout_ms: 2_000,
            welcome_rtts: 8.0,
            welcome_floor_ms: 1_000,
            welcome_ceiling_ms: 2_000,
            fallback_grace_ms: 1_000,
            buffer_ms: 4_000,
            upload_efficiency: 0.9,
            hop_ms: 5.0,
            shed_every_ms: 1_000,
        }
    }
}

impl DataPlane {
    /// How long a child waits on a silent parent before it switches, ms:
    /// its liveness over the round trip between them.
    pub fn detect_ms(&self, rtt_ms: f64) -> u64 {
        ((self.silence_rtts * rtt_ms) as u64).clamp(self.silence_floor_ms, self.gap_ms)
    }

    /// How long a repair waits on a warm backup `rtt_ms` away that is
    /// gone before it asks the tracker, ms.
    pub fn welcome_timeout_ms(&self, rtt_ms: f64) -> u64 {
        ((self.welcome_rtts * rtt_ms) as u64).clamp(self.welcome_floor_ms, self.welcome_ceiling_ms)
    }

    /// A switch to a live backup `rtt_ms` away, ms: connection already
    /// open, one round trip for `Hello`/`Welcome`, one for the first data.
    pub fn switch_ms(&self, rtt_ms: f64) -> u64 {
        (2.0 * rtt_ms + self.switch_ms) as u64
    }
}

/// How viewers come and go.
#[derive(Debug, Clone)]
pub enum Sessions {
    /// A live event: a flash crowd at the start, the rest of the
    /// audience over a ramp, heavy-tailed sessions (each departure before
    /// the end replaced), and everyone leaving over the last minute.
    Event {
        /// Joins in the flash crowd.
        flash: usize,
        /// Over how long, ms.
        flash_ms: u64,
        /// The rest of the audience joins over this, ms, after the flash.
        ramp_ms: u64,
        /// Weibull shape of session lengths (0.5: most leave early, a few
        /// stay for hours).
        shape: f64,
        /// Mean session, ms.
        mean_ms: f64,
        /// A departing viewer is replaced after a mean of this, ms.
        replace_ms: f64,
        /// Everyone still watching leaves over this last stretch, ms.
        departure_ms: u64,
    },
    /// The swarm harness's churn (`treecast swarm --churn`): the audience
    /// joins one by one, then a random viewer is replaced at a steady
    /// rate.
    Churn {
        /// Between two initial joins, ms (the harness starts one peer
        /// process after another).
        join_every_ms: u64,
        /// Fraction of the audience replaced per minute.
        per_minute: f64,
    },
}

impl Sessions {
    /// The live event's defaults for an audience of `viewers`: half of
    /// them in the first minute, the rest over five, sessions Weibull
    /// with shape 0.5 and a 20 minute mean.
    pub fn event(viewers: usize) -> Self {
        Self::Event {
            flash: viewers / 2,
            flash_ms: 60_000,
            ramp_ms: 300_000,
            shape: 0.5,
            mean_ms: 20.0 * 60_000.0,
            replace_ms: 30_000.0,
            departure_ms: 60_000,
        }
    }
}

/// A Weibull draw with `shape` and mean `mean`.
pub fn weibull(rng: &mut Rng, shape: f64, mean: f64) -> f64 {
    // mean = scale * Γ(1 + 1/shape)
    let scale = mean / gamma(1.0 + 1.0 / shape);
    let u = 1.0 - rng.unit(); // (0, 1]
    scale * (-u.ln()).powf(1.0 / shape)
}

/// An exponential draw with mean `mean`.
pub fn exponential(rng: &mut Rng, mean: f64) -> f64 {
    -(1.0 - rng.unit()).ln() * mean
}

/// Γ(x) for x > 0 (Lanczos, g = 7): the Weibull mean needs it once.
fn gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        std::f64::consts::PI / ((std::f64::consts::PI * x).sin() * gamma(1.0 - x))
    } else {
        let x = x - 1.0;
        let t = x + 7.5;
        let sum: f64 = G[0]
            + G[1..]
                .iter()
                .enumerate()
                .map(|(i, g)| g / (x + i as f64 + 1.0))
                .sum::<f64>();
        (2.0 * std::f64::consts::PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weibull_draws_have_the_asked_mean_and_a_heavy_tail() {
        assert!((gamma(3.0) - 2.0).abs() < 1e-9);
        assert!((gamma(0.5) - std::f64::consts::PI.sqrt()).abs() < 1e-9);
        let mut rng = Rng::new(7);
        let n = 200_000;
        let mut xs: Vec<f64> = (0..n).map(|_| weibull(&mut rng, 0.5, 20.0)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        assert!((mean - 20.0).abs() < 1.0, "{mean}");
        xs.sort_by(f64::total_cmp);
        // Shape 0.5: scale = mean / Γ(3) = 10, median = scale * (ln 2)^2.
        let median = xs[n / 2];
        assert!(
            (median - 10.0 * std::f64::consts::LN_2.powi(2)).abs() < 0.3,
            "{median}"
        );
        assert!(xs[n - 1] > 20.0 * 20.0, "no long sessions: {}", xs[n - 1]);
    }

    #[test]
    fn silence_and_switch_follow_the_round_trip() {
        let d = DataPlane::default();
        assert_eq!(d.detect_ms(0.1), 120);
        assert_eq!(d.detect_ms(100.0), 400);
        assert_eq!(d.detect_ms(900.0), 1_000);
        assert_eq!(d.switch_ms(50.0), 125);
    }
}
