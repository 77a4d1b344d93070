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
    /// Site key → label (the given site, or the subnet).
    sites: HashMap<u32, String>,
    /// What each peer reported, summed over its heartbeats.
    stats: HashMap<PeerId, PeerTotals>,
}

/// What a peer reported in its heartbeats, summed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PeerTotals {
    /// Bytes from its parent.
    pub bytes_tree: u64,
    /// Bytes fetched from the edge.
    pub bytes_edge: u64,
    /// Bytes sent to its children.
    pub bytes_uploaded: u64,
    /// Times its player ran dry.
    pub stalls: u64,
    /// Milliseconds its player was stalled.
    pub stall_ms: u64,
    /// Milliseconds its player played or stalled.
    pub watched_ms: u64,
    /// Segments fetched from the edge because the tree was late.
    pub fallbacks: u64,
    /// Segments that failed verification.
    pub corrupt: u64,
}

impl PeerTotals {
    fn add(&mut self, o: &PeerTotals) {
        self.bytes_tree += o.bytes_tree;
        self.bytes_edge += o.bytes_edge;
        self.bytes_uploaded += o.bytes_uploaded;
        self.stalls += o.stalls;
        self.stall_ms += o.stall_ms;
        self.watched_ms += o.watched_ms;
        self.fallbacks += o.fallbacks;
        self.corrupt += o.corrupt;
    }

    /// Time stalled over time watched.
    pub fn rebuffer_ratio(&self) -> f64 {
        if self.watched_ms == 0 {
            0.0
        } else {
            self.stall_ms as f64 / self.watched_ms as f64
        }
    }
}

/// One peer in a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerRow {
    /// Peer id.
    pub id: u64,
    /// A name for people: its site and a short id (`10.1.2.0/24 · p12`).
    pub name: String,
    /// The parent's short id (`edge` for the edge; null while waiting).
    pub parent_name: Option<String>,
    /// Time its player stalled over time watched.
    pub rebuffer_ratio: f64,
    /// Parent id (0: the edge; null: waiting for one).
    pub parent: Option<u64>,
    /// Depth.
    pub depth: u8,
    /// Children now.
    pub children: u32,
    /// Child slots now.
    pub slots: u32,
    /// Upload measured by its children, kb/s.
    pub upload_kbps: u32,
    /// Leaf only.
    pub leaf_only: bool,
    /// Site label.
    pub site: String,
    /// `ok`, `stalling` (its player waited), `fallback` (took segments
    /// from the edge) or `corrupt` (received a bad segment).
    pub health: &'static str,
    /// Its reported totals.
    pub totals: PeerTotals,
}

/// A site in a snapshot.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SiteRow {
    /// Label.
    pub site: String,
    /// Peers.
    pub viewers: u64,
    /// Their reported totals.
    pub totals: PeerTotals,
}

/// One channel's tree, for the dashboard and its API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelSnapshot {
    /// Channel.
    pub channel: String,
    /// Peers in the tree.
    pub viewers: u64,
    /// Peers waiting for a parent.
    pub orphans: u64,
    /// Deepest depth in use.
    pub max_depth: u8,
    /// Peers at each depth (index = depth; 0 = waiting).
    pub depth_histogram: Vec<u64>,
    /// Totals of every live peer's reports.
    pub totals: PeerTotals,
    /// Peers moved to a new parent, since the edge started.
    pub repairs: u64,
    /// Peers evicted as silent.
    pub evicted_silent: u64,
    /// Peers evicted for corruption.
    pub evicted_corrupt: u64,
    /// Per site, largest first.
    pub sites: Vec<SiteRow>,
    /// Peers, shallowest first, at most the limit asked.
    pub peers: Vec<PeerRow>,
    /// True when `peers` was cut to the limit.
    pub peers_truncated: bool,
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
                let label = site_label(req.site.as_deref(), from.ip());
                let site = site_of(&label);
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
                    sites: HashMap::new(),
                    stats: HashMap::new(),
                });
                tree.sites.entry(site).or_insert(label);
                if tree.tracker.is_empty() && tree.addrs.is_empty() {
                    self.init_series(&channel);
                }
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
                            bytes_from_edge: req.bytes_from_edge,
                        },
                        now,
                    )
                    .map_err(unknown)?;
                self.record_stats(&channel, &req);
                tree.stats
                    .entry(PeerId(req.peer_id))
                    .or_default()
                    .add(&PeerTotals {
                        bytes_tree: req.bytes_from_parent,
                        bytes_edge: req.bytes_from_edge,
                        bytes_uploaded: req.bytes_uploaded,
                        stalls: req.stalls,
                        stall_ms: req.stall_ms,
                        watched_ms: req.watched_ms,
                        fallbacks: req.fallbacks,
                        corrupt: req.corrupt,
                    });
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
                    wire::ReportKind::ParentShed => Report::ParentShed,
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

    /// Creates a channel's series at zero, so they exist (and `rate()`
    /// works) before the first event.
    fn init_series(&self, channel: &ChannelName) {
        let ch = channel.as_str();
        let m = &self.metrics;
        m.repairs.with_label_values(&[ch]);
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

    /// Whether the tracker names the edge as `peer_id`'s parent or backup
    /// in `channel` now: the root admits such a child even when its slots
    /// look full (a replacement arriving before a killed child's
    /// connection timed out; a peer switching to its backup of last
    /// resort).
    pub fn names_the_edge(&self, channel: &ChannelName, peer_id: u64) -> bool {
        lock(&self.trees).get(channel).is_some_and(|t| {
            t.tracker.assignment(PeerId(peer_id)).is_ok_and(|a| {
                a.parent == Some(core::Node::Root) || a.backup == Some(core::Node::Root)
            })
        })
    }

    /// Every channel's tree, with at most `limit` peers listed per channel
    /// (shallowest first: the part of the tree that matters most).
    pub fn snapshot(&self, limit: usize) -> Vec<ChannelSnapshot> {
        let trees = lock(&self.trees);
        let mut out = Vec::new();
        for (channel, tree) in trees.iter() {
            let ch = channel.as_str();
            let hist = depth_histogram(tree.tracker.peers(), self.settings.core.max_depth);
            let mut totals = PeerTotals::default();
            let mut sites: HashMap<u32, SiteRow> = HashMap::new();
            let mut rows = Vec::new();
            let mut orphans = 0;
            for v in tree.tracker.peers() {
                orphans += u64::from(!v.placed);
                let t = tree.stats.get(&v.id).copied().unwrap_or_default();
                totals.add(&t);
                let label = tree.sites.get(&v.site).cloned().unwrap_or_default();
                let site = sites.entry(v.site).or_insert_with(|| SiteRow {
                    site: label.clone(),
                    ..SiteRow::default()
                });
                site.viewers += 1;
                site.totals.add(&t);
                let health = if t.corrupt > 0 {
                    "corrupt"
                } else if t.stalls > 0 {
                    "stalling"
                } else if t.fallbacks > 0 {
                    "fallback"
                } else {
                    "ok"
                };
                rows.push(PeerRow {
                    id: v.id.0,
                    name: format!("{label} · {}", v.id.short()),
                    parent_name: v
                        .placed
                        .then(|| v.parent.map_or_else(|| "edge".to_owned(), |p| p.short())),
                    rebuffer_ratio: t.rebuffer_ratio(),
                    parent: if v.placed {
                        Some(v.parent.map_or(0, |p| p.0))
                    } else {
                        None
                    },
                    depth: v.depth,
                    children: v.children,
                    slots: v.slots,
                    upload_kbps: v.measured_kbps,
                    leaf_only: v.leaf_only,
                    site: label,
                    health,
                    totals: t,
                });
            }
            rows.sort_by_key(|r| (r.parent.is_none(), r.depth, r.id));
            let truncated = rows.len() > limit;
            rows.truncate(limit);
            let mut sites: Vec<SiteRow> = sites.into_values().collect();
            sites.sort_by(|a, b| b.viewers.cmp(&a.viewers).then(a.site.cmp(&b.site)));
            sites.truncate(50);
            let m = &self.metrics;
            out.push(ChannelSnapshot {
                channel: ch.to_owned(),
                viewers: tree.tracker.len() as u64,
                orphans,
                max_depth: tree.tracker.max_depth_in_use(),
                depth_histogram: hist,
                totals,
                repairs: m.repairs.with_label_values(&[ch]).get(),
                evicted_silent: m.evictions.with_label_values(&[ch, "silent"]).get(),
                evicted_corrupt: m.evictions.with_label_values(&[ch, "corrupt"]).get(),
                sites,
                peers: rows,
                peers_truncated: truncated,
            });
        }
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
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
        tree.stats
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
        let hist = depth_histogram(tree.tracker.peers(), self.settings.core.max_depth);
        for (d, n) in hist.iter().enumerate() {
            self.metrics
                .depth_peers
                .with_label_values(&[channel.as_str(), &d.to_string()])
                .set(*n as i64);
        }
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
/// Peers at each depth (index 0: waiting for a parent); depths never pass
/// the configured maximum.
fn depth_histogram(peers: impl Iterator<Item = core::PeerView>, max_depth: u8) -> Vec<u64> {
    let mut hist = vec![0u64; usize::from(max_depth) + 1];
    for v in peers {
        let d = if v.placed { usize::from(v.depth) } else { 0 };
        if let Some(h) = hist.get_mut(d) {
            *h += 1;
        }
    }
    hist
}

/// A peer's site: the label it gave, else its /24 (IPv4) or /48 (IPv6).
fn site_label(given: Option<&str>, ip: IpAddr) -> String {
    match (given, ip) {
        (Some(s), _) => s.chars().take(64).collect(),
        (None, IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        (None, IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

fn site_of(label: &str) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    label.hash(&mut h);
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::EdgeMetrics;
    use proptest::prelude::*;

    fn service() -> TrackerService {
        TrackerService::new(
            TrackerSettings {
                core: TrackerConfig::default(),
                ticket_ttl: Duration::from_secs(60),
                viewer_tokens: HashMap::new(),
                max_channels: 4,
                rate_per_sec: 1e9,
                root_addr: Some(SocketAddr::from(([127, 0, 0, 1], 4433))),
                root_fingerprint: Some("00".repeat(32)),
            },
            SigningKey::from_bytes(&[3; 32]),
            EdgeMetrics::new().tracker,
        )
    }

    /// Request bodies as a client might get them wrong: raw bytes, and JSON
    /// objects with the right keys but any values.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            any::<i64>().prop_map(|v| serde_json::json!(v)),
            any::<u64>().prop_map(|v| serde_json::json!(v)),
            "[a-z0-9:./ -]{0,30}".prop_map(|v| serde_json::json!(v)),
            Just(serde_json::json!(null)),
            Just(serde_json::json!("127.0.0.1:5000")),
            Just(serde_json::json!("demo")),
        ];
        let key = prop_oneof![
            Just("channel"),
            Just("addr"),
            Just("peer_id"),
            Just("report"),
            Just("site"),
            Just("max_upload_kbps"),
            Just("stalls"),
            Just("bytes_from_parent"),
            Just("unknown"),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::btree_map(key, value, 0..6)
                .prop_map(|m| { serde_json::to_vec(&m).unwrap_or_default() }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever arrives, the service answers (an assignment or a
        /// refusal), never panics, and the live audience stays consistent.
        #[test]
        fn any_request_is_answered_and_the_audience_stays_consistent(
            requests in proptest::collection::vec((0usize..5, body()), 1..40)
        ) {
            let s = service();
            let from = SocketAddr::from(([127, 0, 0, 1], 5000));
            let good = br#"{"channel":"demo","addr":"127.0.0.1:6000"}"#;
            let joined = s.handle("join", good, from).expect("a good join");
            for (endpoint, body) in requests {
                let endpoint = ["join", "heartbeat", "leave", "report", "nonsense"][endpoint];
                let _ = s.handle(endpoint, &body, from);
            }
            // The peer that joined properly is still known, unless a request
            // naming its id (only 2^-64 likely) made it leave.
            let hb = format!(r#"{{"channel":"demo","peer_id":{}}}"#, joined.peer_id);
            let answered = s.handle("heartbeat", hb.as_bytes(), from);
            prop_assert!(answered.is_ok() || answered.as_ref().is_err_and(|r| r.outcome == "unknown_peer"));
            for c in s.snapshot(10) {
                prop_assert_eq!(c.depth_histogram.iter().sum::<u64>(), c.viewers);
            }
        }
    }
}
