//! The operator dashboard and its JSON API.
//!
//! - a sampler (every 2 s, 10 minutes kept) records the edge's egress and
//!   each channel's viewers and the cumulative byte, stall and watch
//!   counters of its metrics (so peers that left still count), so rates
//!   and history need no external database;
//! - `GET /api/v1/dashboard` answers the current state: per channel the
//!   tracker's snapshot (viewers, depth histogram, sites, the shallowest
//!   peers of the tree with their health) plus rates over the last 10 s
//!   (edge egress in Mb/s and in streams, offload, rebuffer ratio) and the
//!   history;
//! - `GET /dashboard` is one HTML page (no build step) that polls the API
//!   every two seconds.
//!
//! Egress is the edge's, across channels; offload is measured against the
//! bytes all peers report receiving. The event totals (since the edge
//! started) give the bytes peers carried for each other instead of the
//! edge, and with `price_per_gb` configured, what that saved.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::EdgeMetrics;
use crate::tracker::service::{ChannelSnapshot, TrackerService, SITE_SERIES};

/// How often the sampler runs.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept (10 minutes).
const KEEP: usize = 300;
/// Samples back over which rates are computed (10 s).
const RATE_SPAN: usize = 5;

/// The dashboard page.
pub const PAGE: &str = include_str!("dashboard.html");

#[derive(Debug, Clone, Copy, Default)]
struct ChannelSample {
    viewers: u64,
    /// Bytes peers received (tree and edge), cumulative.
    received: u64,
    /// Seconds viewers stalled, cumulative.
    stall_s: f64,
    /// Seconds viewers watched, cumulative.
    watch_s: f64,
}

#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    egress: u64,
    channels: HashMap<String, ChannelSample>,
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
    /// Time viewers stalled ÷ time watched, last 10 s.
    pub rebuffer_ratio: f64,
    /// Time viewers stalled ÷ time watched, since the edge started.
    pub rebuffer_ratio_event: f64,
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
    /// What P2P carried over the event.
    pub event: EventTotals,
    /// Channels.
    pub channels: Vec<ChannelView>,
}

/// The event so far (since the edge started), across channels.
#[derive(Debug, Clone, Serialize)]
pub struct EventTotals {
    /// Bytes peers received from other peers: what the edge did not send.
    pub peer_bytes: u64,
    /// Bytes the edge sent.
    pub edge_bytes: u64,
    /// `peer_bytes` over all bytes delivered (peer + edge).
    pub offload: f64,
    /// The configured price of 1 GB of edge egress.
    pub price_per_gb: Option<f64>,
    /// Its currency.
    pub currency: String,
    /// `peer_bytes` in GB times the price: what P2P saved.
    pub saved: Option<f64>,
}

/// What the operator priced edge egress at.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    /// Price of one GB (10^9 bytes).
    pub per_gb: Option<f64>,
    /// Currency shown.
    pub currency: String,
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

fn channel_sample(metrics: &EdgeMetrics, channel: &str, viewers: u64) -> ChannelSample {
    let t = &metrics.tracker;
    let bytes = |source| t.peer_bytes.with_label_values(&[channel, source]).get();
    let secs = |c: &prometheus::CounterVec| {
        ["peer", "direct"]
            .iter()
            .map(|via| c.with_label_values(&[channel, via]).get())
            .sum::<f64>()
    };
    ChannelSample {
        viewers,
        received: bytes("tree") + bytes("edge"),
        stall_s: secs(&t.viewer_stall_seconds),
        watch_s: secs(&t.viewer_watch_seconds),
    }
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

/// Sets the per-site series from a snapshot: the largest
/// [`SITE_SERIES`] sites of each channel by viewers, the rest summed as
/// `site="other"`; series of sites that fell out of the top are removed
/// (the gauge is rebuilt), so the label's cardinality stays bounded.
fn site_series(snapshot: &[ChannelSnapshot], metrics: &EdgeMetrics) {
    let m = &metrics.tracker;
    m.site_wan_streams.reset();
    for c in snapshot {
        let ch = c.channel.as_str();
        m.peers_behind_nat
            .with_label_values(&[ch])
            .set(c.peers_behind_nat as i64);
        let mut listed = 0.0;
        for s in c.sites.iter().take(SITE_SERIES) {
            let nat = if s.behind_nat { "1" } else { "0" };
            m.site_wan_streams
                .with_label_values(&[ch, &s.site, nat])
                .set(s.wan_streams);
            listed += s.wan_streams;
        }
        if c.sites.len() > SITE_SERIES {
            m.site_wan_streams
                .with_label_values(&[ch, "other", ""])
                .set((c.wan_streams_total - listed).max(0.0));
        }
    }
}

impl History {
    fn samples(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample now.
    pub fn sample(&self, tracker: &TrackerService, metrics: &EdgeMetrics) {
        let snapshot = tracker.snapshot(0);
        site_series(&snapshot, metrics);
        let channels = snapshot
            .into_iter()
            .map(|c| {
                let sample = channel_sample(metrics, &c.channel, c.viewers);
                (c.channel, sample)
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
        pricing: &Pricing,
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
                .map(|(ch, v)| {
                    v.received
                        .saturating_sub(a.channels.get(ch).map_or(0, |x| x.received))
                })
                .sum(),
            _ => 0,
        };
        let channels = tracker
            .snapshot(peers)
            .into_iter()
            .map(|tree| {
                let ch = tree.channel.clone();
                let (received, stall_s, watch_s) = match (first, last) {
                    (Some(a), Some(b)) => {
                        let va = a.channels.get(&ch).copied().unwrap_or_default();
                        let vb = b.channels.get(&ch).copied().unwrap_or_default();
                        (
                            vb.received.saturating_sub(va.received),
                            (vb.stall_s - va.stall_s).max(0.0),
                            (vb.watch_s - va.watch_s).max(0.0),
                        )
                    }
                    _ => (0, 0.0, 0.0),
                };
                let now = channel_sample(metrics, &ch, tree.viewers);
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
                            viewers: vb.viewers,
                            egress_mbps: rate(a, b, eg),
                            offload: offload(eg, vb.received.saturating_sub(va.received)),
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
                    rebuffer_ratio: ratio(stall_s, watch_s),
                    rebuffer_ratio_event: ratio(now.stall_s, now.watch_s),
                    series,
                    tree,
                }
            })
            .collect();
        let peer_bytes: u64 = metrics
            .tracker
            .peer_bytes
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.get_name() == "source" && l.get_value() == "tree")
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        let edge_bytes = egress(metrics);
        DashboardView {
            event: EventTotals {
                peer_bytes,
                edge_bytes,
                offload: ratio(peer_bytes as f64, (peer_bytes + edge_bytes) as f64),
                price_per_gb: pricing.per_gb,
                currency: pricing.currency.clone(),
                saved: pricing.per_gb.map(|p| peer_bytes as f64 / 1e9 * p),
            },
            generated_ms: unix_ms(),
            egress_mbps,
            egress_bytes: egress(metrics),
            stream_kbps,
            origin_up: metrics.cache.origin_up.get() == 1,
            channels,
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use treecast_proto::ticket::SigningKey;

    use super::*;
    use crate::tracker::service::{Now, TrackerSettings};
    use crate::tracker::TrackerConfig;

    /// However many sites, a channel has at most `SITE_SERIES` site
    /// series and one `other`, and a site gone from the top loses its
    /// series.
    #[test]
    fn site_series_stay_bounded() {
        let metrics = EdgeMetrics::new();
        let tracker = TrackerService::new(
            // Room under the edge for every office's first peer (a peer
            // behind a NAT feeds only its own site).
            TrackerSettings::loopback(TrackerConfig {
                root_slots: 16,
                ..TrackerConfig::default()
            }),
            SigningKey::from_bytes(&[5; 32]),
            metrics.tracker.clone(),
        );
        // Twelve offices behind twelve NATs, one peer each.
        for k in 0..12u8 {
            let from = SocketAddr::from(([203, 0, 113, k + 1], 40000));
            let body = format!(r#"{{"channel":"demo","addr":"192.168.{k}.20:5000"}}"#);
            tracker
                .handle("join", body.as_bytes(), from, Now::current())
                .expect("join");
        }
        let history = History::default();
        history.sample(&tracker, &metrics);
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("treecast_edge_site_wan_streams{"))
            .collect();
        assert_eq!(series.len(), SITE_SERIES + 1, "{series:#?}");
        assert!(
            series.iter().any(|l| l.contains(r#"site="other""#)),
            "{series:#?}"
        );
        assert!(text.contains(r#"treecast_edge_peers_behind_nat{channel="demo"} 12"#));
    }
}
