//! The local proxy: the viewer's players talk to this, on loopback only.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET/HEAD | `/live/<channel>/index.m3u8` | the local playlist: `buffer_secs` behind live, every listed segment verified and in memory; joins the channel first if needed ([`Agent::open`]) |
//! | GET/HEAD | `/live/<channel>/<seq>.ts` | a verified segment, from memory (a channel joined) |
//! | GET | `/status` | JSON: the agent and every channel joined ([`AgentStatus`]) |
//! | GET | `/status/<channel>` | JSON: one joined channel: parent, depth, buffer, bytes by source, viewer stalls ([`Status`]) |
//! | POST | `/player/report` | the player plugin's stall totals for its session ([`treecast_proto::viewer`]) |
//! | GET | `/player/?channel=<channel>` | a page that plays a channel with hls.js and the player plugin (`player-plugin/`), showing the P2P figures |
//! | GET | `/metrics` | Prometheus metrics, every channel's labelled `channel` |
//! | GET | `/healthz` | liveness |
//!
//! Before any route, [`crate::guard`] checks who is asking: loopback
//! `Host` names only, and browser pages only from allowed origins (CORS
//! is granted to those, by name). A GET changes nothing but which
//! channels are joined: a playlist request joins its channel, any player
//! request keeps it joined; a channel that is malformed or that no edge
//! carries gets a clear error and creates nothing.
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
use treecast_proto::http::{self as h, Body};
use treecast_proto::viewer::{PlayerReport, MAX_REPORT_BODY};
use treecast_proto::SegmentFile;

use crate::agent::{Agent, OpenError, Why};
use crate::guard::{self, Policy};
use crate::shared::Shared;
use crate::status::{agent_status, status};

/// Longest a request waits for the first playlist or a missing segment.
const WAIT: Duration = Duration::from_secs(8);

/// The proxy's request handler.
#[derive(Debug)]
pub struct Proxy {
    /// The agent.
    pub agent: Arc<Agent>,
    /// Who may ask.
    pub policy: Policy,
}

impl h::Handler for Proxy {
    // Pages get CORS only from an allowed origin, by name (crate::guard).
    const CORS_ANY_ORIGIN: bool = false;

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let origin = match self.policy.check(req.headers()) {
            Ok(origin) => origin,
            Err(refusal) => {
                self.agent
                    .metrics
                    .refused
                    .with_label_values(&[refusal.label()])
                    .inc();
                return refusal.response();
            }
        };
        if req.method() == Method::OPTIONS {
            return match &origin {
                Some(o) => guard::preflight(o),
                None => h::text(StatusCode::BAD_REQUEST, "a preflight names its Origin"),
            };
        }
        let mut resp = self.route(req).await;
        if let Some(o) = &origin {
            guard::grant(&mut resp, o);
        }
        resp
    }
}

impl Proxy {
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method();
        if method == Method::POST && req.uri().path() == "/player/report" {
            return self.player_report(req).await;
        }
        if method != Method::GET && method != Method::HEAD {
            return h::text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            );
        }
        let get = method == Method::GET;
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["live", channel, file] => self.live(channel, file, get).await,
            ["status"] => h::json(StatusCode::OK, &agent_status(&self.agent)),
            ["status", channel] => match self.agent.session(channel) {
                Some(s) => h::json(StatusCode::OK, &status(&s.shared, s.pinned())),
                None => h::text(
                    StatusCode::NOT_FOUND,
                    format!("channel {channel} is not joined here (a player asking for /live/{channel}/index.m3u8 joins it)"),
                ),
            },
            ["player"] => {
                let mut r = h::text(StatusCode::MOVED_PERMANENTLY, "see /player/");
                r.headers_mut()
                    .insert(http::header::LOCATION, HeaderValue::from_static("/player/"));
                r
            }
            ["player", file] => self.player_file(file),
            ["metrics"] => h::prometheus(self.agent.render_metrics()),
            ["healthz"] => h::text(StatusCode::OK, "ok"),
            [""] => h::text(
                StatusCode::OK,
                "treecast peer: plays any channel of its edges\n\nGET /live/<channel>/index.m3u8   play a channel (joined on demand)\nGET /player/?channel=<channel> play it in this browser\nGET /status                     the agent and its channels (JSON)\nGET /metrics                    Prometheus metrics",
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
            // The edge only: the channel comes from the page.
            return h::json(
                StatusCode::OK,
                &serde_json::json!({ "edge": self.agent.edges.current().1.base() }),
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
                    self.agent
                        .metrics
                        .player_reports_refused
                        .with_label_values(&[e.label])
                        .inc();
                    return e.response;
                }
            };
        let Some(session) = self.agent.session(&report.channel) else {
            self.agent
                .metrics
                .player_reports_refused
                .with_label_values(&["channel"])
                .inc();
            return h::text(
                StatusCode::NOT_FOUND,
                format!("channel {:?} is not joined here", report.channel),
            );
        };
        session.touch(&self.agent);
        let shared = &session.shared;
        match shared
            .viewer
            .report(report, shared.channel.as_str(), Instant::now())
        {
            Ok(()) => h::json(StatusCode::OK, &serde_json::json!({ "accepted": true })),
            Err(e) => h::text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("report refused: {e}"),
            ),
        }
    }

    async fn live(&self, channel: &str, file: &str, get: bool) -> Response<Body> {
        match SegmentFile::parse(file) {
            Some(SegmentFile::Playlist) => {
                let session = match self.agent.open(channel, Why::Player).await {
                    Ok(s) => s,
                    Err(e) => return self.refuse_open(e),
                };
                if get {
                    session.shared.viewer.playlist_requested(Instant::now());
                }
                playlist(&session.shared).await
            }
            Some(SegmentFile::Segment(seq)) => {
                let Some(session) = self.agent.session(channel) else {
                    return h::text(
                        StatusCode::NOT_FOUND,
                        format!("channel {channel} is not playing here: ask for /live/{channel}/index.m3u8 first"),
                    );
                };
                session.touch(&self.agent);
                let shared = &session.shared;
                let resp = segment(shared, seq).await;
                if get && resp.status() == StatusCode::OK {
                    let duration = shared.store().duration(seq);
                    if let Some(d) = duration {
                        shared.viewer.segment_served(seq, d, Instant::now());
                    }
                }
                resp
            }
            _ => h::text(StatusCode::NOT_FOUND, format!("no such file: {file}")),
        }
    }

    fn refuse_open(&self, e: OpenError) -> Response<Body> {
        let (status, label) = match &e {
            OpenError::BadName(_) => (StatusCode::BAD_REQUEST, "channel"),
            OpenError::Unknown(_) => (StatusCode::NOT_FOUND, "channel"),
            OpenError::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "full"),
            OpenError::Edge { .. } => (StatusCode::BAD_GATEWAY, "edge"),
            OpenError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutdown"),
        };
        self.agent.metrics.refused.with_label_values(&[label]).inc();
        h::text(status, e.to_string())
    }
}

/// Waits until `ready` gives an answer or [`WAIT`] passes.
async fn wait_for<T>(shared: &Shared, mut ready: impl FnMut(&Shared) -> Option<T>) -> Option<T> {
    let mut changed = shared.changed.subscribe();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v) = ready(shared) {
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

async fn playlist(shared: &Shared) -> Response<Body> {
    match wait_for(shared, |s| s.store().playlist()).await {
        Some(p) => h::object(StatusCode::OK, p, h::PLAYLIST_TYPE, "no-cache"),
        None => h::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no verified segment yet: the peer is still connecting (retry shortly)",
        ),
    }
}

async fn segment(shared: &Shared, seq: u64) -> Response<Body> {
    if let Some(b) = shared.store().segment(seq) {
        return h::object(StatusCode::OK, b, h::SEGMENT_TYPE, h::IMMUTABLE);
    }
    let plausible = {
        let store = shared.store();
        store.is_listed(seq) || store.live_last().is_some_and(|l| seq <= l + 2)
    };
    if !plausible {
        return h::text(
            StatusCode::NOT_FOUND,
            format!("segment {seq} is not in the live window"),
        );
    }
    shared.metrics.proxy_waits.inc();
    let waited = Instant::now();
    let got = wait_for(shared, |s| s.store().segment(seq)).await;
    shared
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
