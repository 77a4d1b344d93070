//! The origin's Prometheus metrics, one struct per subsystem.
//!
//! Every series is labelled by at most the channel name (bounded by
//! `max_channels` in the config) and a small fixed set of kinds or routes.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Ingest and segmenting, per channel.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// Bytes of MPEG-TS received from publishers.
    pub bytes: IntCounterVec,
    /// Segments completed and published.
    pub segments: IntCounterVec,
    /// Problems found in the input, by kind (see `Notice` in the segmenter).
    pub problems: IntCounterVec,
    /// Bytes thrown away while resynchronising on packet sync.
    pub skipped_bytes: IntCounterVec,
    /// Publishing sessions that ended, by outcome (`ended`, `error`, `rejected`).
    pub sessions: IntCounterVec,
    /// Publishers connected now (0 or 1 per channel).
    pub publishers: IntGaugeVec,
    /// Media duration of published segments, in seconds.
    pub segment_duration: HistogramVec,
    /// Segments listed in the live playlist now.
    pub window_segments: IntGaugeVec,
    /// RTMP connections that ended, by outcome (`ended`, `wrong_key`,
    /// `handshake_failed`, `timeout`, ...).
    pub rtmp_connections: IntCounterVec,
    /// SRT callers that ended or were refused, by outcome.
    pub srt_connections: IntCounterVec,
}

/// The HTTP server.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// Requests answered, by route and status class (`2xx`, `4xx`, ...).
    pub requests: IntCounterVec,
    /// Response body bytes sent, by route.
    pub response_bytes: IntCounterVec,
}

/// All of the origin's metrics and the registry that exports them.
#[derive(Debug, Clone)]
pub struct OriginMetrics {
    registry: Registry,
    /// Ingest and segmenting.
    pub ingest: IngestMetrics,
    /// HTTP serving.
    pub http: HttpMetrics,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric name");
    g
}

impl OriginMetrics {
    /// Creates and registers every metric.
    #[allow(clippy::expect_used)] // static definitions: a failure is a bug, caught by tests
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let segment_duration = HistogramVec::new(
            HistogramOpts::new(
                "treecast_origin_segment_duration_seconds",
                "Media duration of published segments.",
            )
            .buckets(vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0]),
            &["channel"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(segment_duration.clone()))
            .expect("unique metric name");
        let ingest = IngestMetrics {
            bytes: counter(
                r,
                "treecast_origin_ingest_bytes_total",
                "Bytes of MPEG-TS received from publishers.",
                &["channel"],
            ),
            segments: counter(
                r,
                "treecast_origin_segments_total",
                "Segments completed and published.",
                &["channel"],
            ),
            problems: counter(
                r,
                "treecast_origin_ingest_problems_total",
                "Problems found in the input stream, by kind.",
                &["channel", "kind"],
            ),
            skipped_bytes: counter(
                r,
                "treecast_origin_ingest_skipped_bytes_total",
                "Bytes thrown away while resynchronising on packet sync.",
                &["channel"],
            ),
            sessions: counter(
                r,
                "treecast_origin_ingest_sessions_total",
                "Publishing sessions that ended, by outcome.",
                &["channel", "outcome"],
            ),
            publishers: gauge(
                r,
                "treecast_origin_publishers",
                "Publishers connected now.",
                &["channel"],
            ),
            segment_duration,
            window_segments: gauge(
                r,
                "treecast_origin_playlist_segments",
                "Segments listed in the live playlist.",
                &["channel"],
            ),
            rtmp_connections: counter(
                r,
                "treecast_origin_rtmp_connections_total",
                "RTMP connections that ended, by outcome.",
                &["outcome"],
            ),
            srt_connections: counter(
                r,
                "treecast_origin_srt_connections_total",
                "SRT callers that ended or were refused, by outcome.",
                &["outcome"],
            ),
        };
        let http = HttpMetrics {
            requests: counter(
                r,
                "treecast_origin_http_requests_total",
                "HTTP requests answered, by route and status class.",
                &["route", "status"],
            ),
            response_bytes: counter(
                r,
                "treecast_origin_http_response_bytes_total",
                "HTTP response body bytes sent, by route.",
                &["route"],
            ),
        };
        Self {
            registry,
            ingest,
            http,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        treecast_proto::http::render_metrics(&self.registry)
    }
}

impl Default for OriginMetrics {
    fn default() -> Self {
        Self::new()
    }
}
