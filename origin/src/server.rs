//! The origin's HTTP server.
//!
//! Routes:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET/HEAD | `/live/<channel>/index.m3u8` | live playlist (cached ≤ half a target duration) |
//! | GET/HEAD | `/live/<channel>/<seq>.ts` | segment; streamed while it grows; the next one is waited for |
//! | GET/HEAD | `/live/<channel>/<seq>.sig` | signed digest of a complete segment |
//! | PUT/POST | `/ingest/<channel>` | publish an MPEG-TS stream (chunked body) |
//! | GET | `/ingest/<channel>` | check a publish key and that the channel is free (204) |
//! | GET | `/api/channels[/<channel>]` | channel status JSON |
//! | GET | `/origin/key` | the origin's public key (hex) |
//! | GET | `/metrics` | Prometheus metrics |
//! | GET | `/healthz` | liveness |
//!
//! Every response carries CORS headers; errors are plain text saying what to
//! do, are never cached, and never stop the server.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use treecast_proto::{ChannelName, OriginPublicKey, SegmentFile};

use crate::channel::{Channels, SegmentLookup};
use crate::metrics::OriginMetrics;
use crate::publish::{constant_time_eq, Ingest, StartError};
use treecast_proto::http::{self as h, Body};

/// Everything request handlers need.
#[derive(Debug)]
pub struct OriginService {
    /// Ingest sessions.
    pub ingest: Arc<Ingest>,
    /// The channels.
    pub channels: Arc<Channels>,
    /// Metrics.
    pub metrics: OriginMetrics,
    /// Publish key, if publishing is restricted.
    pub publish_key: Option<String>,
    /// The origin's public key.
    pub public_key: OriginPublicKey,
}

impl h::Handler for OriginService {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let route = route_of(req.uri().path());
        let resp = self.route(req).await;
        self.metrics
            .http
            .requests
            .with_label_values(&[route, h::status_class(&resp)])
            .inc();
        if let Some(len) = http_body::Body::size_hint(resp.body()).exact() {
            self.metrics
                .http
                .response_bytes
                .with_label_values(&[route])
                .inc_by(len);
        }
        resp
    }
}

impl OriginService {
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method().clone();
        if method == Method::OPTIONS {
            return h::preflight();
        }
        let read = method == Method::GET || method == Method::HEAD;
        match (parts.as_slice(), read) {
            (["live", channel, file], true) => self.live(channel, file).await,
            (["ingest", channel], _) if method == Method::PUT || method == Method::POST => {
                self.publish(channel, req).await
            }
            (["ingest", channel], true) => self.may_publish(channel, &req),
            (["api", "channels"], true) => {
                let all: Vec<_> = self.channels.all().iter().map(|c| c.status()).collect();
                h::json(StatusCode::OK, &all)
            }
            (["api", "channels", channel], true) => match parse_channel(channel) {
                Ok(name) => match self.channels.get(&name) {
                    Some(c) => h::json(StatusCode::OK, &c.status()),
                    None => not_found_channel(&name),
                },
                Err(resp) => resp,
            },
            (["origin", "key"], true) => h::text(StatusCode::OK, self.public_key.to_string()),
            (["metrics"], true) => h::prometheus(self.metrics.render()),
            (["healthz"], true) => h::text(StatusCode::OK, "ok"),
            ([""], true) => h::text(
                StatusCode::OK,
                "treecast origin\n\nGET /live/<channel>/index.m3u8   live playlist\nPUT /ingest/<channel>            publish MPEG-TS\nGET /api/channels                channel status\nGET /origin/key                  public signing key\nGET /metrics                     Prometheus metrics",
            ),
            (_, true) => h::text(StatusCode::NOT_FOUND, format!("no such resource: {path}")),
            _ => {
                let mut r = h::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not allowed on {path}"),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
                r
            }
        }
    }

    async fn live(&self, channel: &str, file: &str) -> Response<Body> {
        let name = match parse_channel(channel) {
            Ok(n) => n,
            Err(resp) => return resp,
        };
        let Some(file) = SegmentFile::parse(file) else {
            return h::text(
                StatusCode::NOT_FOUND,
                format!("no such file in channel {name}: {file}"),
            );
        };
        let Some(ch) = self.channels.get(&name) else {
            return not_found_channel(&name);
        };
        let wait = Duration::from_secs(2 * ch.target_duration());
        match file {
            SegmentFile::Playlist => match ch.playlist() {
                Some(text) => {
                    let mut r = h::object(StatusCode::OK, text, h::PLAYLIST_TYPE, "no-cache");
                    // At most half a target duration (whole seconds, so round down).
                    let max_age = ch.target_duration() / 2;
                    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
                        r.headers_mut().insert(header::CACHE_CONTROL, v);
                    }
                    r
                }
                None => h::text(
                    StatusCode::NOT_FOUND,
                    format!("channel {name} has no complete segment yet; retry shortly"),
                ),
            },
            SegmentFile::Segment(seq) => {
                let found = match ch.segment(seq) {
                    SegmentLookup::Upcoming => ch.wait_for_segment(seq, wait).await,
                    other => other,
                };
                match found {
                    SegmentLookup::Found(body) => match body.bytes() {
                        Some(b) => h::object(StatusCode::OK, b, h::SEGMENT_TYPE, h::IMMUTABLE),
                        None => {
                            let mut r = h::object(StatusCode::OK, Bytes::new(), h::SEGMENT_TYPE, h::IMMUTABLE);
                            *r.body_mut() = h::growing(&body);
                            r
                        }
                    },
                    _ => h::text(
                        StatusCode::NOT_FOUND,
                        format!("segment {seq} of channel {name} is not available (expired or not yet cut)"),
                    ),
                }
            }
            SegmentFile::Signature(seq) => {
                if ch.signature(seq).is_none() {
                    // Still growing: the signature exists the moment it completes.
                    let lookup = match ch.segment(seq) {
                        SegmentLookup::Upcoming => ch.wait_for_segment(seq, wait).await,
                        other => other,
                    };
                    if let SegmentLookup::Found(body) = lookup {
                        let _ = tokio::time::timeout(wait, body.wait_complete()).await;
                    }
                }
                match ch.signature(seq) {
                    Some(doc) => h::object(StatusCode::OK, doc, "application/json", h::IMMUTABLE),
                    None => h::text(
                        StatusCode::NOT_FOUND,
                        format!("no signature for segment {seq} of channel {name} (expired, failed or not yet cut)"),
                    ),
                }
            }
        }
    }

    /// Checks what [`publish`](Self::publish) would check, without
    /// publishing, so a client can report a refusal before streaming.
    fn may_publish(&self, channel: &str, req: &Request<Incoming>) -> Response<Body> {
        let name = match parse_channel(channel) {
            Ok(n) => n,
            Err(resp) => return resp,
        };
        if let Err(resp) = self.authorize(&name, req) {
            return resp;
        }
        match self.channels.get(&name) {
            Some(c) if c.status().live => h::text(
                StatusCode::CONFLICT,
                crate::channel::ChannelBusy(name).to_string(),
            ),
            _ => {
                let mut r = h::empty_response();
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
        }
    }

    // The error is the response to send; it is built once per request.
    #[allow(clippy::result_large_err)]
    fn authorize(&self, name: &ChannelName, req: &Request<Incoming>) -> Result<(), Response<Body>> {
        match &self.publish_key {
            Some(expected) if !key_matches(req, expected) => Err(h::text(
                StatusCode::UNAUTHORIZED,
                format!("publish key missing or wrong for channel {name}: send `Authorization: Bearer <key>` or `?key=<key>` with the origin's publish key"),
            )),
            _ => Ok(()),
        }
    }

    async fn publish(&self, channel: &str, req: Request<Incoming>) -> Response<Body> {
        let name = match parse_channel(channel) {
            Ok(n) => n,
            Err(resp) => return resp,
        };
        if let Err(resp) = self.authorize(&name, &req) {
            return resp;
        }
        let from = format!("http {}", req.uri());
        let ingest = self.ingest.clone();
        let mut session = match ingest.start(&name, &from) {
            Ok(s) => s,
            Err(StartError::Busy(e)) => return h::text(StatusCode::CONFLICT, e.to_string()),
            Err(StartError::Open(e)) => {
                return h::text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        };
        let mut body = req.into_body();
        let mut error = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(data) = f.data_ref() {
                        session.feed(data);
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        let summary = session.finish(error.as_deref());
        h::json(StatusCode::OK, &summary)
    }
}

/// A fixed, small set of route names for metric labels.
fn route_of(path: &str) -> &'static str {
    if path.starts_with("/live/") {
        if path.ends_with(".m3u8") {
            "playlist"
        } else if path.ends_with(".ts") {
            "segment"
        } else if path.ends_with(".sig") {
            "signature"
        } else {
            "live_other"
        }
    } else if path.starts_with("/ingest/") {
        "ingest"
    } else if path.starts_with("/api/") {
        "api"
    } else if path == "/metrics" {
        "metrics"
    } else {
        "other"
    }
}

// The error is the response to send; it is built once per request.
#[allow(clippy::result_large_err)]
fn parse_channel(s: &str) -> Result<ChannelName, Response<Body>> {
    ChannelName::new(s).map_err(|e| h::text(StatusCode::BAD_REQUEST, e.to_string()))
}

fn not_found_channel(name: &ChannelName) -> Response<Body> {
    h::text(
        StatusCode::NOT_FOUND,
        format!("channel {name} is not published on this origin"),
    )
}

fn key_matches(req: &Request<Incoming>, expected: &str) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")));
    [bearer, query]
        .into_iter()
        .flatten()
        .any(|k| constant_time_eq(k.as_bytes(), expected.as_bytes()))
}
