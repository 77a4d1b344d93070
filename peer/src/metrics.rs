//! The peer's Prometheus metrics (`/metrics` on the local proxy) and the
//! counters its status page and heartbeats are built from. Labels are small
//! fixed sets.

use prometheus::{CounterVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use treecast_proto::tree::PushMetrics;

/// Every metric of one peer.
#[derive(Debug, Clone)]
pub struct PeerMetrics {
    registry: Registry,
    /// Segment bytes received from the parent over QUIC.
    pub bytes_from_tree: IntCounter,
    /// Segment bytes fetched from the edge over HTTP.
    pub bytes_from_edge: IntCounter,
    /// Segment bytes sent to children.
    pub bytes_uploaded: IntCounter,
    /// Segments verified, by source (`tree`, `edge`).
    pub verified: IntCounterVec,
    /// Segments that failed verification (from the parent or the edge).
    pub corrupt: IntCounter,
    /// Segments fetched from the edge because the tree did not deliver
    /// them within the grace period.
    pub fallbacks: IntCounter,
    /// Player requests for a segment not in memory yet (the player ran
    /// ahead of the local playlist); not a stall by itself.
    pub proxy_waits: IntCounter,
    /// Seconds those requests waited.
    pub proxy_wait_seconds: prometheus::Counter,
    /// Viewer stalls (the player's buffer ran dry), by source: `inferred`
    /// from the player's requests, `player` reported by the plugin.
    pub viewer_stalls: IntCounterVec,
    /// Seconds stalled, by source.
    pub viewer_stall_seconds: CounterVec,
    /// Seconds watched (stalls included), by source.
    pub viewer_watch_seconds: CounterVec,
    /// Plugin reports refused, by reason.
    pub player_reports_refused: IntCounterVec,
    /// Parent changes, by reason (`assigned`, `gap`, `corrupt`, `closed`).
    pub parent_switches: IntCounterVec,
    /// Frames or streams from a parent or child that broke the protocol.
    pub bad_input: IntCounter,
    /// Children refused (bad ticket, leaf only).
    pub children_refused: IntCounter,
    /// Children admitted, since the peer started.
    pub children_admitted: IntCounter,
    /// Children let go because this peer's uplink was saturated.
    pub children_shed: IntCounter,
    /// Segment deliveries to children abandoned.
    pub abandoned: IntCounter,
    /// Children connected now.
    pub children: IntGauge,
    /// 1 while a parent is streaming to this peer.
    pub connected: IntGauge,
    /// Depth in the tree (0: none).
    pub depth: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Static definitions with unique names: registration cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn float_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

impl PeerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let m = Self {
            bytes_from_tree: counter(
                r,
                "treecast_peer_tree_bytes_total",
                "Segment bytes received from the parent.",
            ),
            bytes_from_edge: counter(
                r,
                "treecast_peer_edge_bytes_total",
                "Segment bytes fetched from the edge over HTTP.",
            ),
            bytes_uploaded: counter(
                r,
                "treecast_peer_uploaded_bytes_total",
                "Segment bytes sent to children.",
            ),
            verified: counter_vec(
                r,
                "treecast_peer_segments_verified_total",
                "Segments verified against the origin's signature, by source.",
                &["source"],
            ),
            corrupt: counter(
                r,
                "treecast_peer_segments_corrupt_total",
                "Segments that failed verification.",
            ),
            fallbacks: counter(
                r,
                "treecast_peer_fallbacks_total",
                "Segments fetched from the edge because the tree was late.",
            ),
            proxy_waits: counter(
                r,
                "treecast_peer_proxy_waits_total",
                "Player requests for a segment not yet in memory (ahead of the local playlist).",
            ),
            proxy_wait_seconds: {
                let c = prometheus::Counter::new(
                    "treecast_peer_proxy_wait_seconds_total",
                    "Seconds player requests waited for a segment not yet in memory.",
                )
                .unwrap_or_else(|e| panic!("metric: {e}"));
                let _ = r.register(Box::new(c.clone()));
                c
            },
            viewer_stalls: counter_vec(
                r,
                "treecast_peer_viewer_stalls_total",
                "Times the player's buffer ran dry, by source (inferred from requests; reported by the player).",
                &["source"],
            ),
            viewer_stall_seconds: float_vec(
                r,
                "treecast_peer_viewer_stall_seconds_total",
                "Seconds the player's buffer was dry, by source.",
                &["source"],
            ),
            viewer_watch_seconds: float_vec(
                r,
                "treecast_peer_viewer_watch_seconds_total",
                "Seconds the player played or stalled, by source.",
                &["source"],
            ),
            player_reports_refused: counter_vec(
                r,
                "treecast_peer_player_reports_refused_total",
                "Player stall reports refused, by reason.",
                &["reason"],
            ),
            parent_switches: counter_vec(
                r,
                "treecast_peer_parent_switches_total",
                "Parent changes, by reason.",
                &["reason"],
            ),
            bad_input: counter(
                r,
                "treecast_peer_bad_input_total",
                "Frames or streams that broke the tree protocol.",
            ),
            children_admitted: counter(
                r,
                "treecast_peer_children_admitted_total",
                "Children admitted (ticket checked) since the peer started.",
            ),
            children_shed: counter(
                r,
                "treecast_peer_children_shed_total",
                "Children let go because this peer's uplink delivered live segments late.",
            ),
            children_refused: counter(
                r,
                "treecast_peer_children_refused_total",
                "Children refused (bad ticket, leaf only).",
            ),
            abandoned: counter(
                r,
                "treecast_peer_abandoned_total",
                "Segment deliveries to children abandoned.",
            ),
            children: gauge(r, "treecast_peer_children", "Children connected now."),
            connected: gauge(
                r,
                "treecast_peer_connected",
                "1 while a parent streams to this peer.",
            ),
            depth: gauge(r, "treecast_peer_depth", "Depth in the tree (0: none)."),
            registry,
        };
        // Series exist at zero from the start, so rates are defined.
        for source in ["inferred", "player"] {
            m.viewer_stalls.with_label_values(&[source]);
            m.viewer_stall_seconds.with_label_values(&[source]);
            m.viewer_watch_seconds.with_label_values(&[source]);
        }
        m
    }

    /// What the push to children counts.
    pub fn push(&self) -> PushMetrics {
        PushMetrics {
            egress: self.bytes_uploaded.clone(),
            abandoned: self.abandoned.clone(),
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        treecast_proto::http::render_metrics(&self.registry)
    }
}

impl Default for PeerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
