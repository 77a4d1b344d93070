//! The local proxy: the viewer's player talks to this, on loopback only.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET/HEAD | `/live/<channel>/index.m3u8` | the local playlist: `buffer_secs` behind live, every listed segment verified and in memory |
//! | GET/HEAD | `/live/<channel>/<seq>.ts` | a verified segment, from memory |
//! | GET | `/status` | JSON: connected, parent, depth, buffer, bytes by source, viewer stalls (see `docs/peer.md`) |
//! | POST | `/player/report` | the player plugin's stall totals for its session ([`treecast_proto::viewer`]) |
//! | GET | `/player/` | a page that plays the channel with hls.js and the player plugin (`player-plugin/`), showing the P2P figures |
//! | GET | `/metrics` | Prometheus metrics |
//! | GET | `/healthz` | liveness |
//!
//! A request for a segment not in memory yet (a player ahead of the local
//! playlist) waits for it, since the fallback fetches it from the edge
//! within the grace period (counted as a proxy wait); a request for the
//! playlist before the first segment is verified waits for that. Nothing
//! unverified is ever served. Every playlist request and every segment
//! served feed the stall inference ([`crate::viewer`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use treecast_proto::http::{self as h, Body};
use treecast_proto::tracker::NodeInfo;
use treecast_proto::viewer::{PlayerReport, MAX_REPORT_BODY};
use treecast_proto::SegmentFile;

use crate::shared::Shared;
use crate::viewer::ViewerFigures;

/// Longest a request waits for the first playlist or a missing segment.
const WAIT: Duration = Duration::from_secs(8);

/// The proxy's request handler.
#[derive(Debug)]
pub struct Proxy {
    /// The peer's shared state.
    pub shared: Arc<Shared>,
}

impl h::Handler for Proxy {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method();
        if method == Method::OPTIONS {
            // Pages on public origins may use a loopback peer only if the
            // preflight says so (Private Network Access).
            let mut r = h::preflight();
            r.headers_mut().insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
            return r;
        }
        if method == Method::POST && req.uri().path() == "/player/report" {
            return self.player_report(req).await;
        }
        if method != Method::GET && method != Method::HEAD {
            return h::text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            );
        }
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["live", channel, file] => self.live(channel, file, method == Method::GET).await,
            ["status"] => h::json(StatusCode::OK, &status(&self.shared)),
            ["player"] => {
                let mut r = h::text(StatusCode::MOVED_PERMANENTLY, "see /player/");
                r.headers_mut()
                    .insert(http::header::LOCATION, HeaderValue::from_static("/player/"));
                r
            }
            ["player", file] => self.player_file(file),
            ["metrics"] => h::prometheus(self.shared.metrics.render()),
            ["healthz"] => h::text(StatusCode::OK, "ok"),
            [""] => h::text(
                StatusCode::OK,
                format!(
                    "treecast peer for channel {0}\n\nGET /live/{0}/index.m3u8   play this\nGET /status                  peer status (JSON)\nGET /metrics                 Prometheus metrics",
                    self.shared.channel
                ),
            ),
            _ => h::text(StatusCode::NOT_FOUND, format!("no such resource: {path}")),
        }
    }
}

/// The demo page and the plugin, built in `player-plugin/dist/` and
/// compiled in, so the page works without network access.
const PLAYER_FILES: [(&str, &str, &str); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../player-plugin/dist/index.html"),
    ),
    (
        "treecast-p2p.js",
        "text/javascript; charset=utf-8",
        include_str!("../../player-plugin/dist/treecast-p2p.js"),
    ),
    (
        "hls.light.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../player-plugin/dist/hls.light.min.js"),
    ),
];

impl Proxy {
    fn player_file(&self, file: &str) -> Response<Body> {
        let file = if file.is_empty() { "index.html" } else { file };
        if file == "config.json" {
            return h::json(
                StatusCode::OK,
                &serde_json::json!({
                    "edge": self.shared.edges.current().1.base(),
                    "channel": self.shared.channel.as_str(),
                }),
            );
        }
        match PLAYER_FILES.iter().find(|(name, _, _)| *name == file) {
            Some((_, content_type, text)) => {
                h::object(StatusCode::OK, *text, content_type, "no-cache")
            }
            None => h::text(
                StatusCode::NOT_FOUND,
                format!("no such file: /player/{file}"),
            ),
        }
    }

    async fn player_report(&self, req: Request<Incoming>) -> Response<Body> {
        let report: PlayerReport =
            match h::read_json(req.into_body(), MAX_REPORT_BODY, "player report").await {
                Ok(r) => r,
                Err(e) => {
                    self.shared
                        .metrics
                        .player_reports_refused
                        .with_label_values(&[e.label])
                        .inc();
                    return e.response;
                }
            };
        match self.shared.viewer.report(
            report,
            self.shared.channel.as_str(),
            std::time::Instant::now(),
        ) {
            Ok(()) => h::json(StatusCode::OK, &serde_json::json!({ "accepted": true })),
            Err(e) => h::text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("report refused: {e}"),
            ),
        }
    }

    async fn live(&self, channel: &str, file: &str, get: bool) -> Response<Body> {
        if channel != self.shared.channel.as_str() {
            return h::text(
                StatusCode::NOT_FOUND,
                format!(
                    "this peer relays channel {}, not {channel}",
                    self.shared.channel
                ),
            );
        }
        match SegmentFile::parse(file) {
            Some(SegmentFile::Playlist) => {
                if get {
                    self.shared.viewer.playlist_requested(Instant::now());
                }
                self.playlist().await
            }
            Some(SegmentFile::Segment(seq)) => {
                let resp = self.segment(seq).await;
                if get && resp.status() == StatusCode::OK {
                    let duration = self.shared.store().duration(seq);
                    if let Some(d) = duration {
                        self.shared.viewer.segment_served(seq, d, Instant::now());
                    }
                }
                resp
            }
            _ => h::text(StatusCode::NOT_FOUND, format!("no such file: {file}")),
        }
    }

    /// Waits until `ready` gives an answer or [`WAIT`] passes.
    async fn wait_for<T>(&self, mut ready: impl FnMut(&Shared) -> Option<T>) -> Option<T> {
        let mut changed = self.shared.changed.subscribe();
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(v) = ready(&self.shared) {
                    return Some(v);
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    async fn playlist(&self) -> Response<Body> {
        match self.wait_for(|s| s.store().playlist()).await {
            Some(p) => h::object(StatusCode::OK, p, h::PLAYLIST_TYPE, "no-cache"),
            None => h::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no verified segment yet: the peer is still connecting (retry shortly)",
            ),
        }
    }

    async fn segment(&self, seq: u64) -> Response<Body> {
        if let Some(b) = self.shared.store().segment(seq) {
            return h::object(StatusCode::OK, b, h::SEGMENT_TYPE, h::IMMUTABLE);
        }
        let plausible = {
            let store = self.shared.store();
            store.is_listed(seq) || store.live_last().is_some_and(|l| seq <= l + 2)
        };
        if !plausible {
            return h::text(
                StatusCode::NOT_FOUND,
                format!("segment {seq} is not in the live window"),
            );
        }
        self.shared.metrics.proxy_waits.inc();
        let waited = Instant::now();
        let got = self.wait_for(|s| s.store().segment(seq)).await;
        self.shared
            .metrics
            .proxy_wait_seconds
            .inc_by(waited.elapsed().as_secs_f64());
        match got {
            Some(b) => h::object(StatusCode::OK, b, h::SEGMENT_TYPE, h::IMMUTABLE),
            None => h::text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("segment {seq} did not arrive in time"),
            ),
        }
    }
}

/// A node as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `edge` or `peer`.
    pub kind: String,
    /// Peer id (0: the edge).
    pub id: u64,
    /// QUIC address.
    pub addr: Option<String>,
}

impl From<&NodeInfo> for NodeStatus {
    fn from(n: &NodeInfo) -> Self {
        Self {
            kind: n.kind.clone(),
            id: n.id,
            addr: n.addr.map(|a| a.to_string()),
        }
    }
}

/// A segment still arriving from the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receiving {
    /// Media sequence number.
    pub seq: u64,
    /// Bytes received so far.
    pub bytes: u64,
}

/// `GET /status`: read by people, the demo and the swarm harness (which
/// deserializes this very type).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Channel relayed.
    pub channel: String,
    /// Peer id from the tracker (0 before joining).
    pub peer_id: u64,
    /// True while a parent streams to this peer.
    pub connected: bool,
    /// Depth in the tree (0: not placed).
    pub depth: u8,
    /// The edge in use (its tracker placed this peer, or will).
    pub edge: String,
    /// Every edge of the event this peer knows, in order.
    pub edges: Vec<String>,
    /// When the tracker of the edge in use last placed this peer, Unix
    /// milliseconds (0: not yet).
    pub edge_joined_ms: u64,
    /// The parent streaming now.
    pub parent: Option<NodeStatus>,
    /// The warm backup the tracker named.
    pub backup: Option<NodeStatus>,
    /// Children connected now.
    pub children: i64,
    /// Children admitted since the peer started.
    pub children_admitted: u64,
    /// Children let go since the peer started because its uplink
    /// delivered live segments late.
    pub children_shed: u64,
    /// Media time between the end of the local playlist and live, ms.
    pub buffer_ms: u64,
    /// First and last segment of the local playlist.
    pub playlist_first: Option<u64>,
    /// Last segment of the local playlist.
    pub playlist_last: Option<u64>,
    /// Last segment listed live.
    pub live_last: Option<u64>,
    /// Segment bytes from the parent.
    pub bytes_from_tree: u64,
    /// Segment bytes from the edge (fallbacks).
    pub bytes_from_edge: u64,
    /// Segment bytes sent to children.
    pub bytes_uploaded: u64,
    /// Segments verified.
    pub segments_verified: u64,
    /// Segments fetched from the edge because the tree was late.
    pub fallbacks: u64,
    /// Segments that failed verification.
    pub corrupt: u64,
    /// Player requests that had to wait for a segment not yet in memory.
    pub proxy_waits: u64,
    /// The player's stalls, inferred from its requests and reported by the
    /// plugin ([`crate::viewer`]).
    pub viewer: ViewerFigures,
    /// Segments arriving from the parent now, oldest first.
    pub receiving: Vec<Receiving>,
    /// Seconds since the peer started.
    pub uptime_s: u64,
    /// The last segments verified (up to 32), oldest first.
    pub recent: Vec<crate::shared::Verified>,
    /// The last repair times in ms (parent's last sign of life to the new
    /// parent streaming), oldest first.
    pub repairs_ms: Vec<u64>,
}

/// The peer's status now.
pub fn status(shared: &Shared) -> Status {
    let a = shared.assignment.borrow().clone();
    let (window, buffer, live_last) = {
        let s = shared.store();
        (s.window(), s.behind_live(), s.live_last())
    };
    let m = &shared.metrics;
    let parent = shared.parent();
    Status {
        channel: shared.channel.to_string(),
        peer_id: a.as_ref().map_or(0, |a| a.peer_id),
        connected: parent.is_some(),
        depth: a.as_ref().map_or(0, |a| a.depth),
        edge: shared.edges.current().1.base().to_owned(),
        edges: shared.edges.bases(),
        edge_joined_ms: shared.joined_ms.load(std::sync::atomic::Ordering::Relaxed),
        parent: parent.as_ref().map(|p| (&p.node).into()),
        backup: a.as_ref().and_then(|a| a.backup.as_ref()).map(Into::into),
        children: m.children.get(),
        children_admitted: m.children_admitted.get(),
        children_shed: m.children_shed.get(),
        buffer_ms: buffer.as_millis() as u64,
        playlist_first: window.map(|w| w.first),
        playlist_last: window.map(|w| w.last),
        live_last,
        bytes_from_tree: m.bytes_from_tree.get(),
        bytes_from_edge: m.bytes_from_edge.get(),
        bytes_uploaded: m.bytes_uploaded.get(),
        segments_verified: m.verified.with_label_values(&["tree"]).get()
            + m.verified.with_label_values(&["edge"]).get(),
        fallbacks: m.fallbacks.get(),
        corrupt: m.corrupt.get(),
        proxy_waits: m.proxy_waits.get(),
        viewer: shared.viewer.figures(),
        receiving: shared
            .feed
            .in_progress()
            .into_iter()
            .map(|(seq, bytes)| Receiving {
                seq,
                bytes: bytes as u64,
            })
            .collect(),
        uptime_s: shared.started.elapsed().as_secs(),
        recent: shared.recent(),
        repairs_ms: shared.repairs(),
    }
}
