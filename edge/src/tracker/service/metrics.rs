//! The tracker's Prometheus series: what they are, created at zero for a
//! new channel, and updated from heartbeats and from the tree's own counts
//! (never by scanning the audience).

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec};
use treecast_proto::ChannelName;

use super::{wire, TrackerService};
use crate::tracker::core::Tracker;

/// Tracker metrics.
#[derive(Debug, Clone)]
pub struct TrackerMetrics {
    /// Peers in each channel's tree.
    pub viewers: IntGaugeVec,
    /// Deepest depth in use per channel.
    pub depth: IntGaugeVec,
    /// Requests by endpoint and outcome (`ok`, `bad_request`, `unauthorized`,
    /// `unknown_peer`, `no_capacity`, `rate_limited`).
    pub requests: IntCounterVec,
    /// Peers moved to a new parent (repairs).
    pub repairs: IntCounterVec,
    /// Peers evicted, by reason (`silent`, `corrupt`).
    pub evictions: IntCounterVec,
    /// Bytes peers report, by channel and source (`tree`, `edge`,
    /// `uploaded`).
    pub peer_bytes: IntCounterVec,
    /// Events peers report, by channel and kind (`fallback`, `corrupt`).
    pub peer_events: IntCounterVec,
    /// Viewer stalls, by channel and via (`peer`: from heartbeats;
    /// `direct`: players on the edge reporting themselves).
    pub viewer_stalls: IntCounterVec,
    /// Seconds viewers stalled, by channel and via.
    pub viewer_stall_seconds: prometheus::CounterVec,
    /// Seconds viewers watched, by channel and via.
    pub viewer_watch_seconds: prometheus::CounterVec,
    /// Direct player reports refused, by reason.
    pub player_reports_refused: IntCounterVec,
    /// Peers at each depth, by channel (depth 0: waiting for a parent).
    pub depth_peers: IntGaugeVec,
    /// Copies entering each of the largest sites, by channel, site and
    /// NAT (`1` behind one), the rest as `site="other"`: set at each
    /// dashboard sample ([`SITE_SERIES`] sites per channel at most).
    pub site_wan_streams: prometheus::GaugeVec,
    /// Peers behind a NAT, by channel.
    pub peers_behind_nat: IntGaugeVec,
    /// Traversals peers reported, by channel and outcome (`reached`,
    /// `unreachable`; `ignored`: about a node that is not the reporter's
    /// parent or backup, or from a peer no punch could reach).
    pub traversals: IntCounterVec,
    /// Reflexive addresses refused (from a peer not behind a NAT, or not
    /// on the address its requests come from), by channel.
    pub reflexive_refused: IntCounterVec,
    /// Reports about a parent (`parent_gap`, `parent_shed`,
    /// `parent_corrupt`) that name a node the tracker no longer gives the
    /// reporter as parent (it moved meanwhile): ignored, by channel.
    pub stale_reports: IntCounterVec,
    /// What peers' uplink tests carried, kb/s.
    pub uplink_tests: prometheus::Histogram,
    /// How long orphans waited for a parent, seconds.
    pub orphan_waits: prometheus::Histogram,
    /// Site leaders the edge feeds over HTTP (their site lets no UDP
    /// out), by channel.
    pub http_fed: IntGaugeVec,
}

/// Sites with a series of their own in `treecast_edge_site_wan_streams`,
/// per channel (the largest by viewers); the rest are summed: the label's
/// cardinality stays bounded whatever the audience.
pub const SITE_SERIES: usize = 8;

impl TrackerService {
    /// Creates a channel's series at zero, so they exist (and `rate()`
    /// works) before the first event.
    pub(super) fn init_series(&self, channel: &ChannelName) {
        let ch = channel.as_str();
        let m = &self.metrics;
        m.repairs.with_label_values(&[ch]);
        m.reflexive_refused.with_label_values(&[ch]);
        m.stale_reports.with_label_values(&[ch]);
        for o in ["reached", "unreachable", "ignored"] {
            m.traversals.with_label_values(&[ch, o]);
        }
        for r in ["silent", "corrupt"] {
            m.evictions.with_label_values(&[ch, r]);
        }
        for s in ["tree", "edge", "uploaded"] {
            m.peer_bytes.with_label_values(&[ch, s]);
        }
        for e in ["fallback", "corrupt"] {
            m.peer_events.with_label_values(&[ch, e]);
        }
        for via in ["peer", "direct"] {
            m.viewer_stalls.with_label_values(&[ch, via]);
            m.viewer_stall_seconds.with_label_values(&[ch, via]);
            m.viewer_watch_seconds.with_label_values(&[ch, via]);
        }
    }

    pub(super) fn record_stats(&self, channel: &ChannelName, hb: &wire::HeartbeatRequest) {
        let ch = channel.as_str();
        let m = &self.metrics;
        for (source, n) in [
            ("tree", hb.bytes_from_parent),
            ("edge", hb.bytes_from_edge),
            ("uploaded", hb.bytes_uploaded),
        ] {
            m.peer_bytes.with_label_values(&[ch, source]).inc_by(n);
        }
        m.viewer_stalls
            .with_label_values(&[ch, "peer"])
            .inc_by(hb.stalls);
        m.viewer_stall_seconds
            .with_label_values(&[ch, "peer"])
            .inc_by(hb.stall_ms as f64 / 1000.0);
        m.viewer_watch_seconds
            .with_label_values(&[ch, "peer"])
            .inc_by(hb.watched_ms as f64 / 1000.0);
        for (event, n) in [("fallback", hb.fallbacks), ("corrupt", hb.corrupt)] {
            m.peer_events.with_label_values(&[ch, event]).inc_by(n);
        }
    }

    /// A channel's gauges, looked up once: requests set them without
    /// hashing labels.
    pub(super) fn channel_gauges(&self, channel: &ChannelName, depths: usize) -> ChannelGauges {
        let ch = channel.as_str();
        ChannelGauges {
            viewers: self.metrics.viewers.with_label_values(&[ch]),
            depth: self.metrics.depth.with_label_values(&[ch]),
            depth_peers: (0..depths)
                .map(|d| {
                    let label = DEPTHS.get(d).copied().unwrap_or("max");
                    self.metrics.depth_peers.with_label_values(&[ch, label])
                })
                .collect(),
            http_fed: self.metrics.http_fed.with_label_values(&[ch]),
        }
    }
}

/// One channel's tree gauges.
#[derive(Debug, Clone)]
pub(super) struct ChannelGauges {
    viewers: IntGauge,
    depth: IntGauge,
    depth_peers: Vec<IntGauge>,
    http_fed: IntGauge,
}

impl ChannelGauges {
    /// Viewers, deepest depth and peers per depth, from the tree's counts:
    /// O(max depth), not O(audience).
    pub(super) fn set(&self, tree: &Tracker) {
        self.viewers.set(tree.len() as i64);
        self.depth.set(i64::from(tree.max_depth_in_use()));
        self.http_fed.set(tree.http_fed() as i64);
        for (g, n) in self.depth_peers.iter().zip(tree.depth_counts()) {
            g.set(*n as i64);
        }
    }
}

/// Depth labels, so a gauge update formats no number.
const DEPTHS: [&str; 33] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
];
