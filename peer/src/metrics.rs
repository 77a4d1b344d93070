//! The peer's Prometheus metrics (`/metrics` on the local proxy) and the
//! counters its status page and heartbeats are built from. Labels are small
//! fixed sets.
//!
//! - [`PeerMetrics`]: one channel's figures, every series labelled with
//!   `channel`; a channel's set lives as long as the agent is joined to it;
//! - [`AgentMetrics`]: the agent's own (channels joined and left, requests
//!   the proxy refused);
//! - [`render`]: all of them as one exposition, families merged.

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
    /// Segments a new parent continued from where the lost one stopped.
    pub resumed: IntCounter,
    /// Segment bytes not sent again because this peer held them when its
    /// parent was lost.
    pub resumed_bytes: IntCounter,
    /// Children connected now.
    pub children: IntGauge,
    /// 1 while a parent is streaming to this peer.
    pub connected: IntGauge,
    /// Depth in the tree (0: none).
    pub depth: IntGauge,
    /// What the uplink test measured, kb/s (0 before it ran).
    pub uplink_test_kbps: IntGauge,
    /// Addresses this peer punched its NAT open towards.
    pub punched: IntCounter,
    /// Dials to a parent or backup through its NAT, by outcome
    /// (`reached`, `unreachable`).
    pub traversals: IntCounterVec,
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
    /// Creates and registers every metric, unlabelled (tests).
    pub fn new() -> Self {
        Self::in_registry(Registry::new())
    }

    /// Every metric of `channel`, labelled with it.
    pub fn for_channel(channel: &str) -> Self {
        let labels = std::iter::once(("channel".to_string(), channel.to_string())).collect();
        // A const label with a valid name cannot be refused.
        let registry = Registry::new_custom(None, Some(labels)).unwrap_or_default();
        Self::in_registry(registry)
    }

    fn in_registry(registry: Registry) -> Self {
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
            punched: counter(
                r,
                "treecast_peer_punched_total",
                "Addresses this peer sent datagrams to so that a child could dial in through its NAT.",
            ),
            traversals: counter_vec(
                r,
                "treecast_peer_traversals_total",
                "Dials to a parent or backup behind a NAT on another site, by outcome.",
                &["outcome"],
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
            resumed: counter(
                r,
                "treecast_peer_segments_resumed_total",
                "Segments a new parent continued from the byte the lost parent stopped at.",
            ),
            resumed_bytes: counter(
                r,
                "treecast_peer_resumed_bytes_total",
                "Segment bytes a new parent did not send again because this peer held them.",
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
            uplink_test_kbps: gauge(
                r,
                "treecast_peer_uplink_test_kbps",
                "What this peer's uplink test carried to the edge, kb/s (0 before it ran; at most the rate the test sent at).",
            ),
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

    /// Its registry, for [`render`].
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The agent's own figures.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// Channels joined, by why (`player`: a player asked; `config`:
    /// pre-joined).
    pub channels_joined: IntCounterVec,
    /// Channels left, by why (`idle`: no player asked for `idle_secs`;
    /// `shutdown`).
    pub channels_left: IntCounterVec,
    /// Requests the local proxy refused, by reason (`host`: not a
    /// loopback name; `origin`: a page origin not allowed; `channel`: a
    /// malformed channel or one no edge carries; `full`: `max_channels`
    /// joined already; `edge`: the edge could not say; `shutdown`).
    pub refused: IntCounterVec,
    /// Player reports refused before any channel's figures were reached,
    /// by reason (`channel`: not joined here; `malformed`, `too_large`).
    /// A joined channel's own refusals carry its `channel` label.
    pub player_reports_refused: IntCounterVec,
    /// Channels joined now.
    pub channels: IntGauge,
    /// Children refused before any channel was found for them.
    pub children_refused: IntCounter,
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let m = Self {
            channels_joined: counter_vec(
                r,
                "treecast_peer_channels_joined_total",
                "Channels joined, by why (player, config).",
                &["why"],
            ),
            channels_left: counter_vec(
                r,
                "treecast_peer_channels_left_total",
                "Channels left, by why (idle, shutdown).",
                &["why"],
            ),
            refused: counter_vec(
                r,
                "treecast_peer_proxy_refused_total",
                "Requests the local proxy refused, by reason (host, origin, channel, full, edge, shutdown).",
                &["reason"],
            ),
            player_reports_refused: counter_vec(
                r,
                "treecast_peer_player_reports_refused_total",
                "Player stall reports refused, by reason.",
                &["reason"],
            ),
            channels: gauge(r, "treecast_peer_channels", "Channels joined now."),
            children_refused: counter(
                r,
                "treecast_peer_children_unrouted_total",
                "Children refused because this agent relays no such channel.",
            ),
            registry,
        };
        for reason in ["host", "origin", "channel", "full"] {
            m.refused.with_label_values(&[reason]);
        }
        m
    }

    /// Its registry, for [`render`].
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One text exposition of several registries: families of the same name
/// (every channel's `treecast_peer_tree_bytes_total`, say) are merged, so
/// each family is described once as the format requires.
pub fn render<'a>(registries: impl IntoIterator<Item = &'a Registry>) -> String {
    use prometheus::Encoder;
    let mut families: std::collections::BTreeMap<String, prometheus::proto::MetricFamily> =
        std::collections::BTreeMap::new();
    for r in registries {
        for f in r.gather() {
            match families.get_mut(f.get_name()) {
                Some(known) => known.mut_metric().extend(f.get_metric().iter().cloned()),
                None => {
                    families.insert(f.get_name().to_owned(), f);
                }
            }
        }
    }
    let families: Vec<_> = families.into_values().collect();
    let mut out = Vec::new();
    // Encoding gathered families into a Vec does not fail.
    let _ = prometheus::TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

impl Default for PeerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
