//! `treecast sim`: a deterministic simulation of a whole live event, for
//! audiences past what one machine's processes can run.
//!
//! The tracker is the real one (the edge's placement core, called as the
//! edge's service calls it); the viewers, their links and the data plane
//! are a model ([`model`]) whose timings come from the peer's constants
//! and the real swarm's measured figures. No sockets, no clock: the same
//! seed gives the same report. `docs/sim.md` says what is modelled, what
//! is not, and how close it comes to the real swarm.
//!
//! - [`calendar`]: the event queue;
//! - [`model`]: the data plane's timings, and how sessions come and go;
//! - [`world`]: the event itself;
//! - [`report`]: counters, timeline and the JSON report;
//! - [`plot`]: the report as an SVG picture.

pub mod calendar;
pub mod model;
pub mod plot;
pub mod report;
pub mod world;

use std::time::Duration;

use treecast_edge::tracker::core::TrackerConfig;

pub use model::{DataPlane, Sessions};
pub use report::SimReport;

use crate::netlab::profile::Profile;

/// One simulated event.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Audience: how many viewers the event brings in (event model) or
    /// keeps (churn model).
    pub viewers: usize,
    /// Measured length, ms (the event's whole length; with churn, after
    /// everyone joined).
    pub duration_ms: u64,
    /// Seed of every draw.
    pub seed: u64,
    /// Links of the viewers and the edge; `None`: loopback (unlimited
    /// upload, no delay, an edge without a limit).
    pub profile: Option<Profile>,
    /// The tracker's policy (the edge's `[tracker]` defaults); its
    /// `stream_kbps` is the stream's bitrate.
    pub tracker: TrackerConfig,
    /// Segment length, ms.
    pub segment_ms: u64,
    /// How viewers come and go.
    pub sessions: Sessions,
    /// Viewers with no upload.
    pub leaf_only_fraction: f64,
    /// Viewers whose every forwarded segment fails verification.
    pub corrupt_fraction: f64,
    /// Departures that vanish instead of leaving.
    pub kill_fraction: f64,
    /// The data plane's timings.
    pub model: DataPlane,
    /// Between timeline points, ms.
    pub sample_ms: u64,
    /// Viewers whose lag is sampled at each point.
    pub lag_samples: usize,
}

/// Bytes a parent forwards at once: the size of the tree protocol's
/// segment chunks as the peers write them.
const CHUNK_BYTES: f64 = 16_384.0;

impl SimConfig {
    /// A live event of `viewers` over `minutes` on `profile`, with the
    /// edge's tracker defaults and the audience: half the viewers
    /// in the first minute, 10% leaf only, 2% corrupting, half of the
    /// departures vanishing.
    pub fn event(viewers: usize, minutes: f64, seed: u64, profile: Option<Profile>) -> Self {
        let tracker = TrackerConfig {
            stream_kbps: 2_500,
            ..TrackerConfig::default()
        };
        let duration_ms = (minutes * 60_000.0) as u64;
        Self {
            viewers,
            duration_ms,
            seed,
            profile,
            tracker,
            segment_ms: 2_000,
            sessions: Sessions::event(viewers),
            leaf_only_fraction: 0.1,
            corrupt_fraction: 0.02,
            kill_fraction: 0.5,
            model: DataPlane::default(),
            sample_ms: (duration_ms / 360).clamp(1_000, 10_000),
            lag_samples: 200,
        }
    }

    /// When the measured window opens, ms.
    pub fn measure_from_ms(&self) -> u64 {
        match self.sessions {
            Sessions::Event { .. } => 0,
            Sessions::Churn { join_every_ms, .. } => self.viewers as u64 * join_every_ms,
        }
    }

    /// The whole simulated time, ms.
    pub fn total_ms(&self) -> u64 {
        self.measure_from_ms() + self.duration_ms
    }

    /// What the edge's uplink carries in segment bytes, kb/s; `None`:
    /// unlimited.
    pub fn edge_kbps(&self) -> Option<f64> {
        self.profile
            .as_ref()
            .map(|p| f64::from(p.edge.upload_kbps) * self.model.upload_efficiency)
    }

    /// Round trip from the edge to the core, ms.
    pub fn edge_rtt_ms(&self) -> f64 {
        self.profile.as_ref().map_or(0.1, |p| p.edge.rtt_ms)
    }

    /// Time to put one chunk on a link of `up_kbps`, ms (0 unlimited).
    pub fn chunk_ms(&self, up_kbps: Option<u32>) -> f64 {
        up_kbps.map_or(0.0, |k| {
            CHUNK_BYTES * 8.0 / (f64::from(k.max(1)) * self.model.upload_efficiency)
        })
    }

    /// One segment, bytes.
    pub fn segment_bytes(&self) -> u64 {
        u64::from(self.tracker.stream_kbps) * self.segment_ms / 8
    }

    /// Checks what would make the run meaningless.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("leaf-only-fraction", self.leaf_only_fraction),
            ("corrupt-fraction", self.corrupt_fraction),
            ("kill-fraction", self.kill_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("--{name} must be between 0 and 1, got {v}"));
            }
        }
        if self.viewers == 0 || self.duration_ms == 0 {
            return Err("--viewers and --minutes must be above 0".into());
        }
        if self.tracker.stream_kbps == 0 || self.segment_ms == 0 {
            return Err("--stream-kbps and --segment-secs must be above 0".into());
        }
        let t = &self.tracker;
        if t.root_slots == 0 || t.max_children == 0 || t.probation_slots == 0 {
            return Err(
                "--root-slots, --max-children and --probation-slots must be above 0".into(),
            );
        }
        match self.sessions {
            Sessions::Churn { per_minute, .. } if per_minute.is_nan() || per_minute < 0.0 => {
                Err(format!("--churn must not be negative, got {per_minute}"))
            }
            Sessions::Event { shape, mean_ms, .. } if !(positive(shape) && positive(mean_ms)) => {
                Err("--session-shape and --session-minutes must be above 0".into())
            }
            _ => Ok(()),
        }
    }
}

/// Above 0 (NaN is not).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// Runs the simulation; the report.
pub fn run(config: &SimConfig) -> SimReport {
    let recorder = world::World::new(config.clone()).run();
    SimReport::new(config, recorder)
}

/// Simulated time per wall-clock second of a run (for the log line).
pub fn speed(config: &SimConfig, wall: Duration) -> f64 {
    config.total_ms() as f64 / 1000.0 / wall.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests;
