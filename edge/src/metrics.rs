//! The edge's Prometheus metrics, one struct per subsystem. Labels are fixed
//! small sets (object kind, outcome, route): no per-peer or per-path labels.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::root::RootMetrics;
use crate::tracker::service::TrackerMetrics;

/// The pull-through cache.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// Requests by object kind and result: `hit` (complete object cached),
    /// `coalesced` (joined a fetch in flight), `miss` (started a fetch),
    /// `stale` (origin unreachable, last playlist served).
    pub requests: IntCounterVec,
    /// Fetches from the origin by kind and outcome (`ok`, `not_found`,
    /// `error`, `unreachable`).
    pub origin_fetches: IntCounterVec,
    /// 1 when the last origin fetch reached the origin, else 0.
    pub origin_up: IntGauge,
    /// Bytes of objects held.
    pub bytes: IntGauge,
    /// Objects held.
    pub objects: IntGauge,
    /// Objects evicted to stay within the byte budget.
    pub evictions: IntCounter,
}

/// The HTTP server.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// Requests answered by route and status class.
    pub requests: IntCounterVec,
    /// Bytes the edge sent, by path: `tree` (segments pushed to its direct
    /// children over QUIC) and `http` (HTTP responses to players and peers'
    /// fallbacks).
    pub egress_bytes: IntCounterVec,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

/// All of the edge's metrics and their registry.
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    registry: Registry,
    /// Cache.
    pub cache: CacheMetrics,
    /// HTTP.
    pub http: HttpMetrics,
    /// Tracker.
    pub tracker: TrackerMetrics,
    /// Root of the tree.
    pub root: RootMetrics,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Static definitions with unique names: registration cannot fail.
    let _ = r.register(Box::new(m.clone()));
    m
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn float_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::CounterVec {
    reg(
        r,
        prometheus::CounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn float_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    reg(
        r,
        prometheus::GaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(
        r,
        IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

impl EdgeMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let cache = CacheMetrics {
            requests: counter_vec(
                r,
                "treecast_edge_cache_requests_total",
                "Cache requests by object kind and result.",
                &["kind", "result"],
            ),
            origin_fetches: counter_vec(
                r,
                "treecast_edge_origin_fetches_total",
                "Fetches from the origin by object kind and outcome.",
                &["kind", "outcome"],
            ),
            origin_up: gauge(
                r,
                "treecast_edge_origin_up",
                "1 when the last origin fetch reached the origin.",
            ),
            bytes: gauge(
                r,
                "treecast_edge_cache_bytes",
                "Bytes of objects held in the cache.",
            ),
            objects: gauge(
                r,
                "treecast_edge_cache_objects",
                "Objects held in the cache.",
            ),
            evictions: reg(
                r,
                IntCounter::new(
                    "treecast_edge_cache_evictions_total",
                    "Objects evicted to stay within the byte budget.",
                )
                .unwrap_or_else(|e| panic!("metric: {e}")),
            ),
        };
        // Series exist at zero from the start, so rates and tests need no
        // first event.
        for kind in ["playlist", "segment", "signature"] {
            for result in ["hit", "coalesced", "miss", "stale"] {
                cache.requests.with_label_values(&[kind, result]);
            }
        }
        let http = HttpMetrics {
            requests: counter_vec(
                r,
                "treecast_edge_http_requests_total",
                "HTTP requests answered by route and status class.",
                &["route", "status"],
            ),
            egress_bytes: counter_vec(
                r,
                "treecast_edge_egress_bytes_total",
                "Bytes sent by the edge, by delivery path.",
                &["path"],
            ),
        };
        let tracker = TrackerMetrics {
            viewers: gauge_vec(
                r,
                "treecast_edge_viewers",
                "Peers in the channel's delivery tree.",
                &["channel"],
            ),
            depth: gauge_vec(
                r,
                "treecast_edge_tree_depth",
                "Deepest depth in use in the channel's tree.",
                &["channel"],
            ),
            requests: counter_vec(
                r,
                "treecast_edge_tracker_requests_total",
                "Tracker requests by endpoint and outcome.",
                &["endpoint", "outcome"],
            ),
            repairs: counter_vec(
                r,
                "treecast_edge_tree_repairs_total",
                "Peers moved to a new parent.",
                &["channel"],
            ),
            evictions: counter_vec(
                r,
                "treecast_edge_tree_evictions_total",
                "Peers evicted from the tree, by reason.",
                &["channel", "reason"],
            ),
            peer_bytes: counter_vec(
                r,
                "treecast_edge_peer_bytes_total",
                "Bytes peers report in heartbeats: received from the tree (`tree`), fetched from the edge over HTTP (`edge`), uploaded to children (`uploaded`).",
                &["channel", "source"],
            ),
            peer_events: counter_vec(
                r,
                "treecast_edge_peer_events_total",
                "Events peers report in heartbeats: `fallback` (a segment fetched from the edge), `corrupt` (a segment that failed verification).",
                &["channel", "event"],
            ),
            viewer_stalls: counter_vec(
                r,
                "treecast_edge_viewer_stalls_total",
                "Times viewers' players ran dry: reported by peers in heartbeats (`via=peer`) or by players on the edge directly (`via=direct`).",
                &["channel", "via"],
            ),
            viewer_stall_seconds: float_vec(
                r,
                "treecast_edge_viewer_stall_seconds_total",
                "Seconds viewers' players were stalled, by channel and via.",
                &["channel", "via"],
            ),
            viewer_watch_seconds: float_vec(
                r,
                "treecast_edge_viewer_watch_seconds_total",
                "Seconds viewers' players played or stalled (the rebuffer ratio's denominator), by channel and via.",
                &["channel", "via"],
            ),
            player_reports_refused: counter_vec(
                r,
                "treecast_edge_player_reports_refused_total",
                "Direct player stall reports refused, by reason.",
                &["reason"],
            ),
            depth_peers: gauge_vec(
                r,
                "treecast_edge_tree_peers",
                "Peers at each depth of the channel's tree (0: waiting for a parent).",
                &["channel", "depth"],
            ),
            site_wan_streams: float_gauge_vec(
                r,
                "treecast_edge_site_wan_streams",
                "Copies of the stream entering each site over its WAN link (its viewers times the share of their bytes that came from outside it), for the largest sites by viewers; the rest summed as site=\"other\". `nat` is 1 for a site behind a NAT.",
                &["channel", "site", "nat"],
            ),
            traversals: counter_vec(
                r,
                "treecast_edge_tracker_traversals_total",
                "NAT traversals peers reported, by outcome (reached, unreachable; ignored: not about their parent or backup, or from a peer no punch reaches).",
                &["channel", "outcome"],
            ),
            http_fed: gauge_vec(
                r,
                "treecast_edge_tracker_http_leaders",
                "Site leaders the edge feeds over HTTP: their site lets no UDP out, and they feed it over the LAN.",
                &["channel"],
            ),
            reflexive_refused: counter_vec(
                r,
                "treecast_edge_tracker_reflexive_refused_total",
                "Reflexive addresses refused: from a peer not behind a NAT, or not on the address its requests come from.",
                &["channel"],
            ),
            stale_reports: counter_vec(
                r,
                "treecast_edge_tracker_stale_reports_total",
                "Reports about a parent that name a node the tracker no longer gives the reporter as parent (it moved meanwhile): ignored.",
                &["channel"],
            ),
            uplink_tests: reg(
                r,
                prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "treecast_edge_tracker_uplink_test_kbps",
                        "What peers' uplink tests carried, kb/s (a test sends at the stream's rate times the probation slots, so the top bucket means at least that).",
                    )
                    .buckets(vec![
                        500.0, 1_000.0, 2_000.0, 3_000.0, 5_000.0, 10_000.0, 20_000.0,
                    ]),
                )
                .unwrap_or_else(|e| panic!("metric uplink_test_kbps: {e}")),
            ),
            orphan_waits: reg(
                r,
                prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "treecast_edge_tracker_orphan_wait_seconds",
                        "How long peers that lost their parent when no slot was free waited for a new one (fed from the edge over HTTP meanwhile).",
                    )
                    .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
                )
                .unwrap_or_else(|e| panic!("metric orphan_wait_seconds: {e}")),
            ),
            peers_behind_nat: gauge_vec(
                r,
                "treecast_edge_peers_behind_nat",
                "Peers in the channel's tree behind a NAT.",
                &["channel"],
            ),
        };
        let root = RootMetrics {
            egress: http.egress_bytes.with_label_values(&["tree"]),
            bridged: reg(
                r,
                IntCounter::new(
                    "treecast_edge_tree_bridged_bytes_total",
                    "Of the tree's egress, bytes to peers the edge is not the parent of: it feeds them as their backup while a repair is placed.",
                )
                .unwrap_or_else(|e| panic!("metric: {e}")),
            ),
            children: gauge(
                r,
                "treecast_edge_tree_children",
                "Peers connected to the edge as direct children.",
            ),
            refused: reg(
                r,
                IntCounter::new(
                    "treecast_edge_tree_refused_total",
                    "Children refused (bad ticket, wrong protocol, root slots full, too many connections).",
                )
                .unwrap_or_else(|e| panic!("metric: {e}")),
            ),
            observed: reg(
                r,
                IntCounter::new(
                    "treecast_edge_tree_observed_total",
                    "Peers told the address their QUIC packets come from (for NAT traversal).",
                )
                .unwrap_or_else(|e| panic!("metric: {e}")),
            ),
            abandoned: reg(
                r,
                IntCounter::new(
                    "treecast_edge_tree_abandoned_total",
                    "Segment deliveries to a child abandoned (slow or gone).",
                )
                .unwrap_or_else(|e| panic!("metric: {e}")),
            ),
        };
        Self {
            registry,
            cache,
            http,
            tracker,
            root,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        treecast_proto::http::render_metrics(&self.registry)
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}
