//! The operator dashboard and its JSON API.
//!
//! - a sampler (every 2 s, 10 minutes kept) records the edge's egress and
//!   each channel's viewers and peer-reported byte and stall totals, so
//!   rates and history need no external database;
//! - `GET /api/v1/dashboard` answers the current state: per channel the
//!   tracker's snapshot (viewers, depth histogram, sites, the shallowest
//!   peers of the tree with their health) plus rates over the last 10 s
//!   (edge egress in Mb/s and in streams, offload, rebuffer ratio) and the
//!   history;
//! - `GET /dashboard` is one HTML page (no build step) that polls the API
//!   every two seconds.
//!
//! Egress is the edge's, across channels; offload is measured against the
//! bytes all peers report receiving.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::EdgeMetrics;
use crate::tracker::service::{ChannelSnapshot, TrackerService};

/// How often the sampler runs.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept (10 minutes).
const KEEP: usize = 300;
/// Samples back over which rates are computed (10 s).
const RATE_SPAN: usize = 5;

/// The dashboard page.
pub const PAGE: &str = include_str!("dashboard.html");

#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    egress: u64,
    channels: HashMap<String, (u64, u64, u64)>, // viewers, received bytes, stall ms
}

/// One point of a channel's history.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Unix ms.
    pub t: u64,
    /// Viewers.
    pub viewers: u64,
    /// Edge egress, Mb/s (whole edge).
    pub egress_mbps: f64,
    /// Offload over the interval, 0..1.
    pub offload: f64,
}

/// A channel in the API answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelView {
    /// The tracker's snapshot.
    #[serde(flatten)]
    pub tree: ChannelSnapshot,
    /// Edge egress over the last 10 s in copies of the stream (what one
    /// viewer received over the same time).
    pub egress_streams: f64,
    /// Bytes from peers ÷ all bytes peers received, last 10 s.
    pub offload: f64,
    /// Time players waited ÷ time watched, last 10 s.
    pub rebuffer_ratio: f64,
    /// History, oldest first.
    pub series: Vec<Point>,
}

/// `GET /api/v1/dashboard`.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardView {
    /// Unix ms.
    pub generated_ms: u64,
    /// Edge egress, Mb/s, last 10 s.
    pub egress_mbps: f64,
    /// Edge egress since start, bytes.
    pub egress_bytes: u64,
    /// The stream bitrate the tracker plans with, kb/s.
    pub stream_kbps: u32,
    /// 1 when the origin answered the last fetch.
    pub origin_up: bool,
    /// Channels.
    pub channels: Vec<ChannelView>,
}

/// The sampler's history.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn egress(metrics: &EdgeMetrics) -> u64 {
    let e = &metrics.http.egress_bytes;
    e.with_label_values(&["tree"]).get() + e.with_label_values(&["http"]).get()
}

fn rate(a: &Sample, b: &Sample, bytes: u64) -> f64 {
    let secs = (b.at_ms.saturating_sub(a.at_ms)) as f64 / 1000.0;
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs / 1e6
    }
}

fn offload(egress: u64, received: u64) -> f64 {
    if received == 0 {
        0.0
    } else {
        (1.0 - egress as f64 / received as f64).clamp(0.0, 1.0)
    }
}

impl History {
    fn samples(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample now.
    pub fn sample(&self, tracker: &TrackerService, metrics: &EdgeMetrics) {
        let channels = tracker
            .snapshot(0)
            .into_iter()
            .map(|c| {
                (
                    c.channel,
                    (
                        c.viewers,
                        c.totals.bytes_tree + c.totals.bytes_edge,
                        c.totals.stall_ms,
                    ),
                )
            })
            .collect();
        let mut s = self.samples();
        s.push_back(Sample {
            at_ms: unix_ms(),
            egress: egress(metrics),
            channels,
        });
        while s.len() > KEEP {
            s.pop_front();
        }
    }

    /// The API answer, listing at most `peers` peers per channel.
    pub fn view(
        &self,
        tracker: &TrackerService,
        metrics: &EdgeMetrics,
        stream_kbps: u32,
        peers: usize,
    ) -> DashboardView {
        let samples: Vec<Sample> = self.samples().iter().cloned().collect();
        let last = samples.last();
        let back = samples.len().saturating_sub(RATE_SPAN + 1);
        let first = samples.get(back);
        let (egress_mbps, window_egress) = match (first, last) {
            (Some(a), Some(b)) => (
                rate(a, b, b.egress.saturating_sub(a.egress)),
                b.egress.saturating_sub(a.egress),
            ),
            _ => (0.0, 0),
        };
        let received_all: u64 = match (first, last) {
            (Some(a), Some(b)) => b
                .channels
                .iter()
                .map(|(ch, v)| v.1.saturating_sub(a.channels.get(ch).map_or(0, |x| x.1)))
                .sum(),
            _ => 0,
        };
        let channels = tracker
            .snapshot(peers)
            .into_iter()
            .map(|tree| {
                let ch = tree.channel.clone();
                let (received, stall_ms, viewer_secs) = match (first, last) {
                    (Some(a), Some(b)) => {
                        let va = a.channels.get(&ch).copied().unwrap_or_default();
                        let vb = b.channels.get(&ch).copied().unwrap_or_default();
                        let secs = (b.at_ms.saturating_sub(a.at_ms)) as f64 / 1000.0;
                        (
                            vb.1.saturating_sub(va.1),
                            vb.2.saturating_sub(va.2),
                            secs * vb.0 as f64,
                        )
                    }
                    _ => (0, 0, 0.0),
                };
                // The edge's egress, shared out by what each channel's
                // peers received.
                let share = if received_all == 0 {
                    0.0
                } else {
                    received as f64 / received_all as f64
                };
                let ch_egress = (window_egress as f64 * share) as u64;
                let series = samples
                    .windows(2)
                    .map(|w| {
                        let (a, b) = (&w[0], &w[1]);
                        let va = a.channels.get(&ch).copied().unwrap_or_default();
                        let vb = b.channels.get(&ch).copied().unwrap_or_default();
                        let eg = b.egress.saturating_sub(a.egress);
                        Point {
                            t: b.at_ms,
                            viewers: vb.0,
                            egress_mbps: rate(a, b, eg),
                            offload: offload(eg, vb.1.saturating_sub(va.1)),
                        }
                    })
                    .collect();
                // Copies of the stream: egress over what one viewer received.
                let per_viewer = if tree.viewers == 0 {
                    0.0
                } else {
                    received as f64 / tree.viewers as f64
                };
                ChannelView {
                    egress_streams: if per_viewer > 0.0 {
                        ch_egress as f64 / per_viewer
                    } else if stream_kbps > 0 {
                        egress_mbps * share * 1000.0 / f64::from(stream_kbps)
                    } else {
                        0.0
                    },
                    offload: offload(ch_egress, received),
                    rebuffer_ratio: if viewer_secs > 0.0 {
                        stall_ms as f64 / 1000.0 / viewer_secs
                    } else {
                        0.0
                    },
                    series,
                    tree,
                }
            })
            .collect();
        DashboardView {
            generated_ms: unix_ms(),
            egress_mbps,
            egress_bytes: egress(metrics),
            stream_kbps,
            origin_up: metrics.cache.origin_up.get() == 1,
            channels,
        }
    }
}

/// Samples every [`SAMPLE_EVERY`] until shutdown.
pub async fn run_sampler(
    history: Arc<History>,
    tracker: Arc<TrackerService>,
    metrics: EdgeMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => history.sample(&tracker, &metrics),
            _ = shutdown.changed() => return,
        }
    }
}
