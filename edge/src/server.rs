//! The edge's HTTP server: the origin's URL layout, served from the cache.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET/HEAD | `/live/<channel>/index.m3u8` | playlist, at most half a target duration old while the origin is reachable |
//! | GET/HEAD | `/live/<channel>/<seq>.ts`, `.sig` | segment or signature; streamed while it arrives from the origin |
//! | POST | `/tracker/v1/{join,heartbeat,leave,report}` | the tracker (see `docs/tracker.md`) |
//! | POST | `/tracker/v1/uplink-test?channel=C&peer_id=N` | a peer's uplink test ([`crate::uplink_test`]) |
//! | GET | `/origin/key` | the origin's public key (hex), fetched once from the origin |
//! | GET | `/dashboard` | the operator dashboard (HTML; see `docs/dashboard.md`) |
//! | GET | `/api/v1/dashboard` | its data as JSON (`?peers=N` peers listed per channel, default 300) |
//! | GET | `/api/v1/edges` | the event's other edges (`event_edges`), for the dashboard to gather |
//! | GET | `/metrics` | Prometheus metrics (unless `metrics_listen` moves them) |
//! | GET | `/healthz` | liveness |

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use prometheus::IntCounter;
use treecast_proto::http::{self as h, Body, BoxError};
use treecast_proto::{ChannelName, GrowingBody, SegmentFile};

use crate::cache::Cache;
use crate::metrics::EdgeMetrics;
use crate::tracker::service::{Now, TrackerService};
use crate::tracker::wire::MAX_BODY;
use crate::uplink_test;
use treecast_proto::tracker::{UPLINK_TEST_PATH, UPLINK_TEST_WINDOW};
use treecast_proto::viewer::{PlayerReport, ReportBook, MAX_REPORT_BODY};

/// Everything request handlers need.
#[derive(Debug)]
pub struct EdgeService {
    /// The cache of the origin.
    pub cache: Arc<Cache>,
    /// Metrics.
    pub metrics: EdgeMetrics,
    /// The tracker.
    pub tracker: Arc<TrackerService>,
    /// The dashboard's history.
    pub history: Arc<crate::dashboard::History>,
    /// Stream bitrate the tracker plans with, kb/s.
    pub stream_kbps: u32,
    /// The price of edge egress, for the dashboard's savings.
    pub pricing: crate::dashboard::Pricing,
    /// Token protecting the dashboard and API.
    pub dashboard_token: Option<String>,
    /// Whether `/metrics` is served here.
    pub serve_metrics: bool,
    /// The event's other edges, for the dashboard.
    pub event_edges: Vec<String>,
    /// Stall reports of players that play from this edge directly.
    pub player_reports: std::sync::Mutex<ReportBook>,
}

/// Playback sessions reporting to one edge directly at once; more are
/// refused until some go idle.
pub const DIRECT_REPORT_SESSIONS: usize = 10_000;

impl h::Handler for EdgeService {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let route = if path.starts_with("/live/") {
            "live"
        } else if path.starts_with("/tracker/") {
            "tracker"
        } else {
            "other"
        };
        let resp = if path == UPLINK_TEST_PATH && req.method() == Method::POST {
            self.uplink_test(req).await
        } else if route == "tracker" && req.method() == Method::POST {
            self.tracker_request(req).await
        } else if path == "/api/v1/player-report" && req.method() == Method::POST {
            // Open to any page, like the segments: the dashboard token
            // guards reading, not a player's report.
            self.player_report(req).await
        } else {
            self.route(&req).await
        };
        self.metrics
            .http
            .requests
            .with_label_values(&[route, h::status_class(&resp)])
            .inc();
        resp
    }
}

impl EdgeService {
    async fn route(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let method = req.method();
        if method == Method::OPTIONS {
            return h::preflight();
        }
        if method != Method::GET && method != Method::HEAD {
            return h::text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            );
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if matches!(parts.as_slice(), ["dashboard"] | ["api", ..]) && !self.authorized(req) {
            let mut r = h::text(
                StatusCode::UNAUTHORIZED,
                "this edge's dashboard needs its token: Authorization: Bearer <token> or ?token=<token>",
            );
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return r;
        }
        match parts.as_slice() {
            ["live", channel, file] => self.live(channel, file).await,
            ["dashboard"] => h::object(
                StatusCode::OK,
                crate::dashboard::PAGE,
                "text/html; charset=utf-8",
                "no-cache",
            ),
            ["api", "v1", "dashboard"] => {
                let peers = query_param(req, "peers")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(300usize)
                    .min(100_000);
                h::json(
                    StatusCode::OK,
                    &self.history.view(
                        &self.tracker,
                        &self.metrics,
                        self.stream_kbps,
                        &self.pricing,
                        peers,
                    ),
                )
            }
            ["api", "v1", "edges"] => h::json(
                StatusCode::OK,
                &serde_json::json!({ "edges": self.event_edges }),
            ),
            ["metrics"] if !self.serve_metrics => h::text(
                StatusCode::NOT_FOUND,
                "metrics are served on this edge's metrics_listen address",
            ),
            ["origin", "key"] => self.origin_key().await,
            ["metrics"] => h::prometheus(self.metrics.render()),
            ["healthz"] => h::text(StatusCode::OK, "ok"),
            _ => h::text(StatusCode::NOT_FOUND, format!("no such resource: {path}")),
        }
    }

    async fn tracker_request(&self, req: Request<Incoming>) -> Response<Body> {
        let from = remote_addr(&req);
        let path = req.uri().path().to_owned();
        let Some(endpoint) = path.strip_prefix("/tracker/v1/") else {
            return h::text(
                StatusCode::NOT_FOUND,
                format!("unknown tracker protocol path {path}; this edge speaks /tracker/v1/"),
            );
        };
        let endpoint = endpoint.to_owned();
        let body = match h::read_body(req.into_body(), MAX_BODY, "tracker request").await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let tracker = self.tracker.clone();
        match tracker.handle(&endpoint, &body, from, Now::current()) {
            Ok(a) => h::json(StatusCode::OK, &a),
            Err(r) => h::text(r.status, r.message),
        }
    }

    /// Measures a peer's uplink (see [`crate::uplink_test`]) and tells
    /// its tracker.
    async fn uplink_test(&self, req: Request<Incoming>) -> Response<Body> {
        let from = remote_addr(&req);
        let channel = query_param(&req, "channel");
        let peer_id = query_param(&req, "peer_id").and_then(|v| v.parse::<u64>().ok());
        let (Some(channel), Some(peer_id)) = (channel, peer_id) else {
            return h::text(
                StatusCode::BAD_REQUEST,
                format!("an uplink test is POST {UPLINK_TEST_PATH}?channel=C&peer_id=N"),
            );
        };
        let kbps = match self
            .tracker
            .begin_uplink_test(&channel, peer_id, from, Now::current())
        {
            Ok(k) => k,
            Err(r) => return h::text(r.status, r.message),
        };
        // Twice what the test sends: a peer cannot keep the edge reading.
        let limit = u64::from(kbps) * 1000 / 8 * 2;
        let result = match uplink_test::measure(req.into_body(), limit, UPLINK_TEST_WINDOW).await {
            Ok(r) => r,
            Err(e) => return h::text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        if let Err(r) =
            self.tracker
                .finish_uplink_test(&channel, peer_id, result.kbps, Now::current())
        {
            return h::text(r.status, r.message);
        }
        let mut resp = h::json(StatusCode::OK, &result);
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    async fn player_report(&self, req: Request<Incoming>) -> Response<Body> {
        let m = &self.metrics.tracker;
        let report: PlayerReport =
            match h::read_json(req.into_body(), MAX_REPORT_BODY, "player report").await {
                Ok(r) => r,
                Err(e) => {
                    m.player_reports_refused.with_label_values(&[e.label]).inc();
                    return e.response;
                }
            };
        let channel = report.channel.clone();
        let result = self
            .player_reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle_report(
                report,
                |c| ChannelName::new(c).is_ok() && self.cache.carries(c),
                std::time::Instant::now(),
            );
        match result {
            Ok(d) => {
                let labels = [channel.as_str(), "direct"];
                m.viewer_stalls.with_label_values(&labels).inc_by(d.stalls);
                m.viewer_stall_seconds
                    .with_label_values(&labels)
                    .inc_by(d.stall.as_secs_f64());
                m.viewer_watch_seconds
                    .with_label_values(&labels)
                    .inc_by(d.watched.as_secs_f64());
                h::json(StatusCode::OK, &serde_json::json!({ "accepted": true }))
            }
            Err(e) => {
                m.player_reports_refused
                    .with_label_values(&[e.label()])
                    .inc();
                h::text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("report refused: {e}"),
                )
            }
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.dashboard_token else {
            return true;
        };
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        bearer == Some(token.as_str())
            || query_param(req, "token").as_deref() == Some(token.as_str())
    }

    /// Peers verify segments with the origin's key; the edge relays the
    /// one it checks with, so a peer needs only the edge's address.
    async fn origin_key(&self) -> Response<Body> {
        match self.cache.origin_key().await {
            Ok(k) => h::object(StatusCode::OK, format!("{k}\n"), "text/plain", "no-cache"),
            Err(e) => h::text(StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }

    async fn live(&self, channel: &str, file: &str) -> Response<Body> {
        let channel = match ChannelName::new(channel) {
            Ok(c) => c,
            Err(e) => return h::text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let Some(file) = SegmentFile::parse(file) else {
            return h::text(
                StatusCode::NOT_FOUND,
                format!("no such file in channel {channel}: {file}"),
            );
        };
        let hit = match self.cache.get(&channel, file).await {
            Ok(hit) => hit,
            Err(e) => return h::text(e.status(), format!("{channel}/{}: {e}", file.file_name())),
        };
        let (content_type, cache_control) = match file {
            SegmentFile::Playlist => (h::PLAYLIST_TYPE, "public, max-age=1"),
            SegmentFile::Segment(_) => (h::SEGMENT_TYPE, h::IMMUTABLE),
            SegmentFile::Signature(_) => ("application/json", h::IMMUTABLE),
        };
        let mut r = h::object(StatusCode::OK, Bytes::new(), content_type, cache_control);
        if hit.stale {
            r.headers_mut().insert(
                "x-treecast-stale",
                HeaderValue::from_static("origin unreachable"),
            );
        }
        let egress = self.metrics.http.egress_bytes.with_label_values(&["http"]);
        *r.body_mut() = match hit.body.bytes() {
            Some(b) => {
                egress.inc_by(b.len() as u64);
                h::full(b)
            }
            None => counted(&hit.body, egress),
        };
        r
    }
}

/// The client's address (0.0.0.0:0 when the server did not record it).
fn remote_addr(req: &Request<Incoming>) -> std::net::SocketAddr {
    req.extensions()
        .get::<h::RemoteAddr>()
        .map_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)), |a| a.0)
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Serves only `/metrics`, on the separate `metrics_listen` address.
#[derive(Debug)]
pub struct MetricsOnly {
    /// The edge's metrics.
    pub metrics: EdgeMetrics,
}

impl h::Handler for MetricsOnly {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => h::prometheus(self.metrics.render()),
            p => h::text(
                StatusCode::NOT_FOUND,
                format!("only /metrics here, not {p}"),
            ),
        }
    }
}

/// Streams a growing body, counting the bytes sent.
fn counted(body: &GrowingBody, egress: IntCounter) -> Body {
    let s = stream::unfold((body.reader(), egress), |(mut r, egress)| async move {
        match r.next_chunk().await {
            Ok(Some(chunk)) => {
                egress.inc_by(chunk.len() as u64);
                Some((Ok(Frame::data(chunk)), (r, egress)))
            }
            Ok(None) => None,
            Err(e) => Some((Err(Box::new(e) as BoxError), (r, egress))),
        }
    });
    StreamBody::new(s).boxed_unsync()
}
