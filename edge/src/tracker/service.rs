//! The tracker's driver: HTTP+JSON requests in, [`Tracker`] calls out.
//!
//! - one [`Tracker`] per channel, created on the first join;
//! - requests are size-limited, strictly parsed and rate limited per client
//!   address *before* they touch any state, so a malformed or flooding
//!   client changes nothing;
//! - answers carry tickets signed with the edge's key for the parent and
//!   backup, which those nodes check before accepting the peer;
//! - [`TrackerService::tick`] (run every half second by the edge) expires
//!   silent peers and re-places orphans.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use prometheus::{IntCounterVec, IntGaugeVec};
use treecast_proto::ticket::{SigningKey, TicketClaims};
use treecast_proto::ChannelName;

use super::core::{self, EvictReason, Node, PeerId, Report, Tracker, TrackerConfig, TrackerEvent};
use super::wire;

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
    /// Events peers report, by channel and kind (`stall`, `fallback`,
    /// `corrupt`).
    pub peer_events: IntCounterVec,
}

/// Settings of the tracker service.
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    /// Placement policy.
    pub core: TrackerConfig,
    /// How long a ticket stays valid.
    pub ticket_ttl: Duration,
    /// Viewer tokens of channels that require one.
    pub viewer_tokens: HashMap<String, String>,
    /// Most channels with a tree.
    pub max_channels: usize,
    /// Requests per second allowed per client address (burst: twice that).
    pub rate_per_sec: f64,
    /// The edge's QUIC address, given to its children.
    pub root_addr: Option<SocketAddr>,
    /// The edge's certificate fingerprint (hex), given to its children.
    pub root_fingerprint: Option<String>,
}

/// A request refused; the status and message go to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Metric outcome label.
    pub outcome: &'static str,
    /// What to tell the client.
    pub message: String,
}

fn refuse(status: StatusCode, outcome: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        outcome,
        message: message.into(),
    }
}

#[derive(Debug)]
struct ChannelTree {
    tracker: Tracker,
    addrs: HashMap<PeerId, (SocketAddr, Option<String>)>,
}

#[derive(Debug, Default)]
struct Limiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// The tracker service; see the module docs.
#[derive(Debug)]
pub struct TrackerService {
    settings: TrackerSettings,
    key: SigningKey,
    trees: Mutex<HashMap<ChannelName, ChannelTree>>,
    limiter: Mutex<Limiter>,
    metrics: TrackerMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State changes are whole calls into the tracker; a poisoned lock is
    // still consistent enough to serve.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TrackerService {
    /// A tracker signing tickets with `key`.
    pub fn new(settings: TrackerSettings, key: SigningKey, metrics: TrackerMetrics) -> Self {
        Self {
            settings,
            key,
            trees: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::default()),
            metrics,
        }
    }

    /// The public key peers verify tickets with, hex.
    pub fn ticket_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Answers one tracker request: `endpoint` is the last path segment.
    pub fn handle(
        &self,
        endpoint: &str,
        body: &[u8],
        from: SocketAddr,
    ) -> Result<wire::Assignment, Refusal> {
        let label = match endpoint {
            "join" | "heartbeat" | "leave" | "report" => endpoint,
            _ => "unknown",
        };
        let result = self.dispatch(endpoint, body, from);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(r) => r.outcome,
        };
        self.metrics
            .requests
            .with_label_values(&[label, outcome])
            .inc();
        result
    }

    fn dispatch(
        &self,
        endpoint: &str,
        body: &[u8],
        from: SocketAddr,
    ) -> Result<wire::Assignment, Refusal> {
        self.rate_limit(from.ip())?;
        if body.len() > wire::MAX_BODY {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                format!("request body over {} bytes", wire::MAX_BODY),
            ));
        }
        let now = Instant::now();
        match endpoint {
            "join" => {
                let req: wire::JoinRequest = parse(body)?;
                let channel = channel(&req.channel)?;
                if let Some(expected) = self.settings.viewer_tokens.get(channel.as_str()) {
                    if req.token.as_deref() != Some(expected.as_str()) {
                        return Err(refuse(
                            StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            format!("channel {channel} needs a valid viewer token"),
                        ));
                    }
                }
                let site = site_of(req.site.as_deref(), from.ip());
                let mut trees = lock(&self.trees);
                if !trees.contains_key(&channel) && trees.len() >= self.settings.max_channels {
                    return Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_capacity",
                        "tracker serves its maximum number of channels",
                    ));
                }
                let tree = trees.entry(channel.clone()).or_insert_with(|| ChannelTree {
                    tracker: Tracker::new(self.settings.core.clone()),
                    addrs: HashMap::new(),
                });
                // After a tracker restart a peer names the parent it still
                // receives from by address; its old id is gone.
                let resume_parent = req.resume_parent_addr.and_then(|want| {
                    tree.addrs
                        .iter()
                        .find(|(_, a)| a.0 == want)
                        .map(|(id, _)| *id)
                });
                let a = tree
                    .tracker
                    .handle_join(
                        core::JoinRequest {
                            site,
                            max_upload_kbps: req.max_upload_kbps,
                            resume_parent,
                        },
                        now,
                    )
                    .map_err(|e| {
                        refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no_capacity",
                            e.to_string(),
                        )
                    })?;
                tree.addrs
                    .insert(a.id, (req.addr, req.cert_fingerprint.clone()));
                self.gauges(&channel, tree);
                Ok(self.answer(&channel, tree, a))
            }
            "heartbeat" => {
                let req: wire::HeartbeatRequest = parse(body)?;
                let channel = channel(&req.channel)?;
                let mut trees = lock(&self.trees);
                let tree = known_tree(&mut trees, &channel)?;
                let a = tree
                    .tracker
                    .handle_heartbeat(
                        PeerId(req.peer_id),
                        core::Heartbeat {
                            bytes_from_parent: req.bytes_from_parent,
                        },
                        now,
                    )
                    .map_err(unknown)?;
                self.record_stats(&channel, &req);
                let out = self.answer(&channel, tree, a);
                self.drain(&channel, tree);
                Ok(out)
            }
            "leave" => {
                let req: wire::LeaveRequest = parse(body)?;
                let channel = channel(&req.channel)?;
                let mut trees = lock(&self.trees);
                let tree = known_tree(&mut trees, &channel)?;
                let a = tree
                    .tracker
                    .assignment(PeerId(req.peer_id))
                    .map_err(unknown)?;
                tree.tracker
                    .handle_leave(PeerId(req.peer_id), now)
                    .map_err(unknown)?;
                tree.addrs.remove(&PeerId(req.peer_id));
                let out = self.answer(
                    &channel,
                    tree,
                    core::Assignment {
                        parent: None,
                        backup: None,
                        depth: 0,
                        ..a
                    },
                );
                self.drain(&channel, tree);
                Ok(out)
            }
            "report" => {
                let req: wire::ReportRequest = parse(body)?;
                let channel = channel(&req.channel)?;
                let mut trees = lock(&self.trees);
                let tree = known_tree(&mut trees, &channel)?;
                let report = match req.report {
                    wire::ReportKind::ParentGap => Report::ParentGap,
                    wire::ReportKind::ParentCorrupt => Report::ParentCorrupt,
                };
                tree.tracker
                    .handle_report(PeerId(req.peer_id), report, now)
                    .map_err(unknown)?;
                self.drain(&channel, tree);
                let a = tree
                    .tracker
                    .assignment(PeerId(req.peer_id))
                    .map_err(unknown)?;
                Ok(self.answer(&channel, tree, a))
            }
            other => Err(refuse(
                StatusCode::NOT_FOUND,
                "bad_request",
                format!("no tracker endpoint {other:?}; use join, heartbeat, leave or report"),
            )),
        }
    }

    fn record_stats(&self, channel: &ChannelName, hb: &wire::HeartbeatRequest) {
        let ch = channel.as_str();
        let m = &self.metrics;
        for (source, n) in [
            ("tree", hb.bytes_from_parent),
            ("edge", hb.bytes_from_edge),
            ("uploaded", hb.bytes_uploaded),
        ] {
            m.peer_bytes.with_label_values(&[ch, source]).inc_by(n);
        }
        for (event, n) in [
            ("stall", hb.stalls),
            ("fallback", hb.fallbacks),
            ("corrupt", hb.corrupt),
        ] {
            m.peer_events.with_label_values(&[ch, event]).inc_by(n);
        }
    }

    /// Expires silent peers and places orphans in every channel.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut trees = lock(&self.trees);
        for (channel, tree) in trees.iter_mut() {
            tree.tracker.handle_timeout(now);
            self.drain(channel, tree);
        }
    }

    fn drain(&self, channel: &ChannelName, tree: &mut ChannelTree) {
        while let Some(e) = tree.tracker.poll_event() {
            match e {
                TrackerEvent::Moved(_) => self
                    .metrics
                    .repairs
                    .with_label_values(&[channel.as_str()])
                    .inc(),
                TrackerEvent::Evicted { id, reason } => {
                    tree.addrs.remove(&id);
                    let r = match reason {
                        EvictReason::Silent => "silent",
                        EvictReason::Corrupt => "corrupt",
                    };
                    self.metrics
                        .evictions
                        .with_label_values(&[channel.as_str(), r])
                        .inc();
                }
            }
        }
        tree.addrs
            .retain(|id, _| tree.tracker.assignment(*id).is_ok());
        self.gauges(channel, tree);
    }

    fn gauges(&self, channel: &ChannelName, tree: &ChannelTree) {
        self.metrics
            .viewers
            .with_label_values(&[channel.as_str()])
            .set(tree.tracker.len() as i64);
        self.metrics
            .depth
            .with_label_values(&[channel.as_str()])
            .set(i64::from(tree.tracker.max_depth_in_use()));
    }

    fn answer(
        &self,
        channel: &ChannelName,
        tree: &ChannelTree,
        a: core::Assignment,
    ) -> wire::Assignment {
        let expires = unix_now() + self.settings.ticket_ttl.as_secs();
        let node = |n: Option<Node>| {
            n.map(|n| {
                let (kind, id, addr, cert_fingerprint) = match n {
                    Node::Root => (
                        "edge",
                        0,
                        self.settings.root_addr,
                        self.settings.root_fingerprint.clone(),
                    ),
                    Node::Peer(p) => {
                        let known = tree.addrs.get(&p);
                        (
                            "peer",
                            p.0,
                            known.map(|k| k.0),
                            known.and_then(|k| k.1.clone()),
                        )
                    }
                };
                let ticket = TicketClaims {
                    channel: channel.clone(),
                    child: a.id.0,
                    parent: id,
                    expires,
                }
                .sign(&self.key);
                wire::NodeInfo {
                    kind: kind.into(),
                    id,
                    addr,
                    cert_fingerprint,
                    ticket,
                }
            })
        };
        wire::Assignment {
            v: 1,
            peer_id: a.id.0,
            depth: a.depth,
            parent: node(a.parent),
            backup: node(a.backup),
            heartbeat_interval_ms: (self.settings.core.heartbeat_timeout.as_millis() / 3) as u64,
            ticket_key: self.ticket_key(),
        }
    }

    fn rate_limit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let rate = self.settings.rate_per_sec;
        let now = Instant::now();
        let mut l = lock(&self.limiter);
        if l.buckets.len() > 100_000 {
            // Forget clients idle long enough to have a full bucket anyway.
            l.buckets
                .retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() * rate < 2.0 * rate);
        }
        let (tokens, last) = l.buckets.entry(ip).or_insert((2.0 * rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(2.0 * rate);
        *last = now;
        if *tokens < 1.0 {
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many tracker requests from this address; slow down",
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed tracker request: {e}"),
        )
    })
}

fn channel(name: &str) -> Result<ChannelName, Refusal> {
    ChannelName::new(name)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

fn known_tree<'a>(
    trees: &'a mut HashMap<ChannelName, ChannelTree>,
    channel: &ChannelName,
) -> Result<&'a mut ChannelTree, Refusal> {
    trees.get_mut(channel).ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!("no peers in channel {channel}; join first"),
        )
    })
}

fn unknown(e: core::UnknownPeer) -> Refusal {
    refuse(StatusCode::NOT_FOUND, "unknown_peer", e.to_string())
}

/// The site label: the one given, else the client's subnet.
fn site_of(given: Option<&str>, ip: IpAddr) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match (given, ip) {
        (Some(s), _) => s.hash(&mut h),
        (None, IpAddr::V4(v4)) => (u32::from(v4) >> 8).hash(&mut h),
        (None, IpAddr::V6(v6)) => (u128::from(v6) >> 80).hash(&mut h),
    }
    h.finish() as u32
}
