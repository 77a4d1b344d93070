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
//!
//! Every request costs O(1) or O(log N) in the audience: the gauges come
//! from the tree's own counts, peers leave the maps as the tree says they
//! left, the rate limit is a fixed table. Each channel has its own lock, so
//! channels never wait for each other; the map of channels is read-locked
//! for the moment it takes to find one. Time comes in as an argument.
//!
//! The jobs live in their own files: [`limiter`] (the per-address rate
//! limit), [`metrics`] (the Prometheus series), [`orphans`] (how long
//! orphans wait), [`snapshot`] (what the dashboard shows); this file
//! parses, dispatches and answers.

pub mod limiter;
pub mod metrics;
pub mod orphans;
pub mod snapshot;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::root::EdgeRole;
use http::StatusCode;
use treecast_proto::ticket::{SigningKey, TicketClaims};
use treecast_proto::ChannelName;

use super::core::{
    self, EvictReason, Node, PeerId, Reach, Report, Tracker, TrackerConfig, TrackerEvent,
};
use super::wire;
use limiter::Limiter;
pub use metrics::{TrackerMetrics, SITE_SERIES};
pub use snapshot::{ChannelSnapshot, PeerRow, PeerTotals, SiteRow};

/// The time a request is handled at: the monotonic clock for the tree, the
/// wall clock (Unix seconds) for ticket expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Seconds since the Unix epoch.
    pub unix_secs: u64,
}

impl Now {
    /// The current time.
    pub fn current() -> Self {
        Self {
            mono: Instant::now(),
            unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
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
    /// The edge's second QUIC address, which peers behind NATs ask too
    /// (see `EdgeConfig::observe_listen`).
    pub observe_also: Option<SocketAddr>,
    /// The edge's certificate fingerprint (hex), given to its children.
    pub root_fingerprint: Option<String>,
}

impl TrackerSettings {
    /// A tracker for tests and benchmarks on one machine: `core` placement,
    /// 60 s tickets, 4 channels, no viewer tokens, a rate limit no test
    /// reaches, the root at 127.0.0.1:4433 with a dummy fingerprint.
    pub fn loopback(core: TrackerConfig) -> Self {
        Self {
            core,
            ticket_ttl: Duration::from_secs(60),
            viewer_tokens: HashMap::new(),
            max_channels: 4,
            rate_per_sec: 1e9,
            root_addr: Some(SocketAddr::from(([127, 0, 0, 1], 4433))),
            observe_also: Some(SocketAddr::from(([127, 0, 0, 1], 4434))),
            root_fingerprint: Some("00".repeat(32)),
        }
    }
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
    addrs: HashMap<PeerId, PeerAddr>,
    /// The same, the other way: who is at a QUIC address (a peer resuming
    /// after a restart names its parent by address).
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Site key → label (the given site, or the subnet).
    sites: HashMap<u32, String>,
    /// Each live peer's site and what it reported, summed over its
    /// heartbeats.
    stats: HashMap<PeerId, PeerStats>,
    /// Per site: live peers and their totals, kept as peers come, report
    /// and go, so the dashboard's sample walks no one.
    site_rows: HashMap<u32, SiteRow>,
    /// Totals of every live peer.
    totals: PeerTotals,
    /// Each peer's last tickets, for its parent and its backup.
    tickets: HashMap<PeerId, [Option<CachedTicket>; 2]>,
    /// Per peer behind a NAT, the addresses to send packets towards at
    /// its next heartbeat: children and backers newly sent to dial it
    /// from elsewhere (at most [`MAX_PUNCHES`]).
    punches: HashMap<PeerId, Vec<SocketAddr>>,
    gauges: metrics::ChannelGauges,
    /// Orphans waiting for a parent, since when.
    orphans: orphans::OrphanWaits,
}

/// Where a peer can be dialled.
#[derive(Debug, Clone)]
struct PeerAddr {
    /// The QUIC address it gave (on its LAN, behind a NAT).
    quic: SocketAddr,
    fingerprint: Option<String>,
    /// The address its tracker requests come from.
    seen: IpAddr,
    /// Behind a NAT (see [`behind_nat`]).
    nat: bool,
    /// Its QUIC socket's address outside the NAT, as the edge observed
    /// it; on `seen` (anything else is refused).
    reflexive: Option<SocketAddr>,
    /// No UDP leaves its site (it said so).
    no_udp: bool,
}

impl PeerAddr {
    /// Where a parent behind a NAT may send packets to open its NAT
    /// towards this peer: its observed reflexive address, or the address
    /// it gave when that is where its requests come from. Never an
    /// address the peer only claims.
    fn punch_target(&self) -> Option<SocketAddr> {
        if self.nat {
            self.reflexive
        } else {
            (self.quic.ip() == self.seen).then_some(self.quic)
        }
    }
}

/// Most addresses queued for one peer to punch towards.
const MAX_PUNCHES: usize = 16;

/// One live peer's site and reported totals.
#[derive(Debug, Clone, Copy, Default)]
struct PeerStats {
    site: u32,
    totals: PeerTotals,
}

impl ChannelTree {
    /// Records a peer the tree placed.
    fn admit(&mut self, id: PeerId, site: u32, addr: PeerAddr) {
        let (quic, behind_nat) = (addr.quic, addr.nat);
        if let Some(old) = self.addrs.insert(id, addr) {
            self.by_addr.remove(&old.quic);
        }
        self.by_addr.insert(quic, id);
        self.stats.insert(
            id,
            PeerStats {
                site,
                totals: PeerTotals::default(),
            },
        );
        let label = self.sites.get(&site).cloned().unwrap_or_default();
        self.site_rows
            .entry(site)
            .or_insert_with(|| SiteRow {
                site: label,
                behind_nat,
                ..SiteRow::default()
            })
            .viewers += 1;
    }

    /// The site of a live peer.
    fn site_of(&self, id: PeerId) -> Option<u32> {
        self.stats.get(&id).map(|p| p.site)
    }

    /// Adds one heartbeat's counts to the peer's, its site's and the
    /// channel's totals.
    fn report(&mut self, id: PeerId, delta: &PeerTotals) {
        let Some(p) = self.stats.get_mut(&id) else {
            return;
        };
        p.totals.add(delta);
        if let Some(row) = self.site_rows.get_mut(&p.site) {
            row.totals.add(delta);
        }
        self.totals.add(delta);
    }

    /// Drops what the maps beside the tree hold about a peer that is gone,
    /// and its share of the totals.
    fn forget(&mut self, id: PeerId) {
        if let Some(addr) = self.addrs.remove(&id) {
            if self.by_addr.get(&addr.quic) == Some(&id) {
                self.by_addr.remove(&addr.quic);
            }
        }
        self.punches.remove(&id);
        self.orphans.forget(id);
        if let Some(p) = self.stats.remove(&id) {
            self.totals.sub(&p.totals);
            if let Some(row) = self.site_rows.get_mut(&p.site) {
                row.viewers -= 1;
                row.totals.sub(&p.totals);
                if row.viewers == 0 {
                    self.site_rows.remove(&p.site);
                }
            }
        }
        self.tickets.remove(&id);
    }
}

/// A ticket signed for a child, kept for reuse.
#[derive(Debug, Clone)]
struct CachedTicket {
    parent: u64,
    expires: u64,
    ticket: String,
}

/// One channel's tree, behind its own lock.
type SharedTree = Arc<Mutex<ChannelTree>>;

/// The tracker service; see the module docs.
#[derive(Debug)]
pub struct TrackerService {
    settings: TrackerSettings,
    key: SigningKey,
    /// The ticket key, hex (every answer carries it).
    ticket_key: String,
    trees: RwLock<HashMap<ChannelName, SharedTree>>,
    limiter: Mutex<Limiter>,
    metrics: TrackerMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State changes are whole calls into the tracker; a poisoned lock is
    // still consistent enough to serve.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TrackerService {
    /// A tracker signing tickets with `key`.
    pub fn new(settings: TrackerSettings, key: SigningKey, metrics: TrackerMetrics) -> Self {
        let limiter = Limiter::new(settings.rate_per_sec, Instant::now());
        Self {
            ticket_key: hex::encode(key.verifying_key().as_bytes()),
            settings,
            key,
            trees: RwLock::new(HashMap::new()),
            limiter: Mutex::new(limiter),
            metrics,
        }
    }

    /// Every channel's tree, found under the map's read lock.
    fn all_trees(&self) -> Vec<(ChannelName, SharedTree)> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        trees.iter().map(|(c, t)| (c.clone(), t.clone())).collect()
    }

    /// A channel's tree, if it has one.
    fn tree(&self, channel: &ChannelName) -> Option<SharedTree> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        trees.get(channel).cloned()
    }

    /// A channel's tree, created on its first join (within `max_channels`).
    fn tree_or_create(&self, channel: &ChannelName) -> Result<SharedTree, Refusal> {
        if let Some(t) = self.tree(channel) {
            return Ok(t);
        }
        let mut trees = self.trees.write().unwrap_or_else(|e| e.into_inner());
        if !trees.contains_key(channel) && trees.len() >= self.settings.max_channels {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_capacity",
                "tracker serves its maximum number of channels",
            ));
        }
        let tree = trees.entry(channel.clone()).or_insert_with(|| {
            self.init_series(channel);
            let tracker = Tracker::new(self.settings.core.clone());
            let gauges = self.channel_gauges(channel, tracker.depth_counts().len());
            Arc::new(Mutex::new(ChannelTree {
                tracker,
                addrs: HashMap::new(),
                sites: HashMap::new(),
                by_addr: HashMap::new(),
                stats: HashMap::new(),
                site_rows: HashMap::new(),
                totals: PeerTotals::default(),
                tickets: HashMap::new(),
                punches: HashMap::new(),
                gauges,
                orphans: orphans::OrphanWaits::default(),
            }))
        });
        Ok(tree.clone())
    }

    /// The public key peers verify tickets with, hex.
    pub fn ticket_key(&self) -> String {
        self.ticket_key.clone()
    }

    /// Answers one tracker request at `now`: `endpoint` is the last path
    /// segment.
    pub fn handle(
        &self,
        endpoint: &str,
        body: &[u8],
        from: SocketAddr,
        now: Now,
    ) -> Result<wire::Assignment, Refusal> {
        let label = match endpoint {
            "join" | "heartbeat" | "leave" | "report" => endpoint,
            _ => "unknown",
        };
        let result = self.dispatch(endpoint, body, from, now);
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
        at: Now,
    ) -> Result<wire::Assignment, Refusal> {
        self.admit(from, at)?;
        if body.len() > wire::MAX_BODY {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                format!("request body over {} bytes", wire::MAX_BODY),
            ));
        }
        let now = at.mono;
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
                let nat = behind_nat(req.addr.ip(), from.ip());
                let label = site_label(req.site.as_deref(), from.ip(), req.addr.ip(), nat);
                let site = site_of(&label);
                let shared = self.tree_or_create(&channel)?;
                let mut guard = lock(&shared);
                let tree = &mut *guard;
                tree.sites.entry(site).or_insert(label);
                // After a tracker restart a peer names the parent it still
                // receives from by address; its old id is gone.
                let resume_parent = req
                    .resume_parent_addr
                    .and_then(|want| tree.by_addr.get(&want).copied());
                let a = tree
                    .tracker
                    .handle_join(
                        core::JoinRequest {
                            site,
                            nat,
                            // Dialable from elsewhere once the edge has
                            // observed its address outside the NAT.
                            reach: if nat { Reach::SiteOnly } else { Reach::Public },
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
                tree.admit(
                    a.id,
                    site,
                    PeerAddr {
                        quic: req.addr,
                        fingerprint: req.cert_fingerprint.clone(),
                        seen: from.ip(),
                        nat,
                        reflexive: None,
                        no_udp: false,
                    },
                );
                tree.gauges.set(&tree.tracker);
                Ok(self.answer(&channel, tree, a, at))
            }
            "heartbeat" => {
                let req: wire::HeartbeatRequest = parse(body)?;
                let channel = channel(&req.channel)?;
                self.in_known_tree(&channel, |tree| {
                    if let Some(r) = req.reflexive {
                        self.learn_reflexive(&channel, tree, PeerId(req.peer_id), r, from.ip());
                    }
                    if req.no_udp {
                        let me = PeerId(req.peer_id);
                        if let Some(known) = tree.addrs.get_mut(&me) {
                            known.no_udp = true;
                        }
                        // Idempotent; an unknown peer is answered below.
                        let _ = tree.tracker.handle_no_udp(me, now);
                    }
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
                    let me = PeerId(req.peer_id);
                    // What its parent sent crossed the site's WAN link
                    // unless the parent is on its site.
                    let parent_on_site = match a.parent {
                        Some(Node::Peer(p)) => matches!(
                            (tree.site_of(p), tree.site_of(me)),
                            (Some(a), Some(b)) if a == b
                        ),
                        _ => false,
                    };
                    let from_parent_in = if parent_on_site {
                        0
                    } else {
                        req.bytes_from_parent
                    };
                    tree.report(
                        me,
                        &PeerTotals {
                            bytes_tree: req.bytes_from_parent,
                            bytes_edge: req.bytes_from_edge,
                            bytes_uploaded: req.bytes_uploaded,
                            stalls: req.stalls,
                            stall_ms: req.stall_ms,
                            watched_ms: req.watched_ms,
                            fallbacks: req.fallbacks,
                            corrupt: req.corrupt,
                            bytes_into_site: from_parent_in + req.bytes_from_edge,
                        },
                    );
                    let out = self.answer(&channel, tree, a, at);
                    self.drain(&channel, tree, at.mono);
                    Ok(out)
                })
            }
            "leave" => {
                let req: wire::LeaveRequest = parse(body)?;
                let channel = channel(&req.channel)?;
                self.in_known_tree(&channel, |tree| {
                    let a = tree
                        .tracker
                        .assignment(PeerId(req.peer_id))
                        .map_err(unknown)?;
                    tree.tracker
                        .handle_leave(PeerId(req.peer_id), now)
                        .map_err(unknown)?;
                    tree.forget(PeerId(req.peer_id));
                    let out = self.answer(
                        &channel,
                        tree,
                        core::Assignment {
                            parent: None,
                            backup: None,
                            depth: 0,
                            ..a
                        },
                        at,
                    );
                    self.drain(&channel, tree, at.mono);
                    Ok(out)
                })
            }
            "report" => {
                let req: wire::ReportRequest = parse(body)?;
                let channel = channel(&req.channel)?;
                self.in_known_tree(&channel, |tree| {
                    let me = PeerId(req.peer_id);
                    let report = match req.report {
                        wire::ReportKind::ParentGap => Some(Report::ParentGap),
                        wire::ReportKind::ParentCorrupt => Some(Report::ParentCorrupt),
                        wire::ReportKind::ParentShed => Some(Report::ParentShed),
                        wire::ReportKind::Reached | wire::ReportKind::Unreachable => None,
                    };
                    match report {
                        Some(report) => {
                            // A report names the parent it is about; one
                            // sent before the tracker moved the reporter
                            // is about a node it no longer has, and must
                            // not cost its new parent anything.
                            let a = tree.tracker.assignment(me).map_err(unknown)?;
                            if names_parent(a.parent, req.parent_id) {
                                tree.tracker.handle_report(me, report, now)
                            } else {
                                self.metrics
                                    .stale_reports
                                    .with_label_values(&[channel.as_str()])
                                    .inc();
                                Ok(())
                            }
                        }
                        None => {
                            let parent = req.parent_id.ok_or_else(|| {
                                refuse(
                                    StatusCode::BAD_REQUEST,
                                    "bad_request",
                                    "reached and unreachable name the parent (parent_id)",
                                )
                            })?;
                            let ok = req.report == wire::ReportKind::Reached;
                            // Taken only about the child's own parent or
                            // backup, and from a child a punch could
                            // reach: a peer cannot get an honest peer
                            // blamed for dials it was never asked to
                            // open its NAT for.
                            let a = tree.tracker.assignment(me).map_err(unknown)?;
                            let named =
                                [a.parent, a.backup].contains(&Some(Node::Peer(PeerId(parent))));
                            let punchable = tree
                                .addrs
                                .get(&me)
                                .and_then(PeerAddr::punch_target)
                                .is_some();
                            let outcome = match (named && punchable, ok) {
                                (false, _) => "ignored",
                                (true, true) => "reached",
                                (true, false) => "unreachable",
                            };
                            self.metrics
                                .traversals
                                .with_label_values(&[channel.as_str(), outcome])
                                .inc();
                            if named && punchable {
                                tree.tracker.handle_dial(me, PeerId(parent), ok, now)
                            } else {
                                Ok(())
                            }
                        }
                    }
                    .map_err(unknown)?;
                    self.drain(&channel, tree, at.mono);
                    let a = tree
                        .tracker
                        .assignment(PeerId(req.peer_id))
                        .map_err(unknown)?;
                    Ok(self.answer(&channel, tree, a, at))
                })
            }
            other => Err(refuse(
                StatusCode::NOT_FOUND,
                "bad_request",
                format!("no tracker endpoint {other:?}; use join, heartbeat, leave or report"),
            )),
        }
    }

    /// The per-address rate limit, before a request touches any state.
    fn admit(&self, from: SocketAddr, at: Now) -> Result<(), Refusal> {
        if lock(&self.limiter).allow(from.ip(), at.mono) {
            return Ok(());
        }
        Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many tracker requests from this address; slow down",
        ))
    }

    /// Checks an uplink test before its body is read: the rate limit, the
    /// channel, and that `peer_id` is in its tree and asks from the
    /// address it joined from (another address's uplink says nothing of
    /// this peer's). Returns the rate the test sends at, kb/s.
    pub fn begin_uplink_test(
        &self,
        channel: &str,
        peer_id: u64,
        from: SocketAddr,
        at: Now,
    ) -> Result<u32, Refusal> {
        self.admit(from, at)?;
        let channel = self::channel(channel)?;
        self.in_known_tree(&channel, |tree| {
            let me = PeerId(peer_id);
            tree.tracker.assignment(me).map_err(unknown)?;
            if tree.addrs.get(&me).is_some_and(|a| a.seen != from.ip()) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "bad_request",
                    "an uplink test comes from the address the peer joined from",
                ));
            }
            Ok(tree.tracker.uplink_test_kbps())
        })
    }

    /// The edge measured `kbps` from `peer_id`'s uplink test.
    pub fn finish_uplink_test(
        &self,
        channel: &str,
        peer_id: u64,
        kbps: u32,
        at: Now,
    ) -> Result<(), Refusal> {
        let channel = self::channel(channel)?;
        self.metrics.uplink_tests.observe(f64::from(kbps));
        self.in_known_tree(&channel, |tree| {
            tree.tracker
                .handle_uplink_test(PeerId(peer_id), kbps, at.mono)
                .map_err(unknown)?;
            self.drain(&channel, tree, at.mono);
            Ok(())
        })
    }

    /// Whether the tracker names the edge as `peer_id`'s parent or backup
    /// in `channel` now: the root admits such a child even when its slots
    /// look full (a replacement arriving before a killed child's
    /// connection timed out; a peer switching to its backup of last
    /// resort), and counts what it sends a backer apart.
    pub fn names_the_edge(&self, channel: &ChannelName, peer_id: u64) -> Option<EdgeRole> {
        let tree = self.tree(channel)?;
        let a = lock(&tree).tracker.assignment(PeerId(peer_id)).ok()?;
        if a.parent == Some(core::Node::Root) {
            Some(EdgeRole::Parent)
        } else if a.backup == Some(core::Node::Root) {
            Some(EdgeRole::Backup)
        } else {
            None
        }
    }

    /// Runs `f` on the tree of a channel a peer names, which must have one,
    /// under that channel's lock.
    fn in_known_tree<R>(
        &self,
        channel: &ChannelName,
        f: impl FnOnce(&mut ChannelTree) -> Result<R, Refusal>,
    ) -> Result<R, Refusal> {
        let shared = self.tree(channel).ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "unknown_peer",
                format!("no peers in channel {channel}; join first"),
            )
        })?;
        let mut tree = lock(&shared);
        f(&mut tree)
    }

    /// Expires silent peers and places orphans in every channel, at `now`.
    pub fn tick(&self, now: Instant) {
        for (channel, shared) in self.all_trees() {
            let mut guard = lock(&shared);
            let tree = &mut *guard;
            tree.tracker.handle_timeout(now);
            self.drain(&channel, tree, now);
        }
    }

    fn drain(&self, channel: &ChannelName, tree: &mut ChannelTree, now: Instant) {
        while let Some(e) = tree.tracker.poll_event() {
            match e {
                TrackerEvent::Moved(a) => {
                    self.metrics
                        .repairs
                        .with_label_values(&[channel.as_str()])
                        .inc();
                    if let Some(waited) = tree.orphans.handle_placed(a.id, now) {
                        self.metrics.orphan_waits.observe(waited.as_secs_f64());
                        if waited >= orphans::LONG_WAIT {
                            tracing::info!(
                                %channel,
                                peer = %a.id.short(),
                                waited_ms = waited.as_millis() as u64,
                                "an orphan waited long for a parent (fed over HTTP meanwhile)"
                            );
                        }
                    }
                }
                // The peer learns at its next heartbeat; meanwhile its
                // fallback feeds it from the edge.
                TrackerEvent::Orphaned(id) => tree.orphans.handle_orphaned(id, now),
                TrackerEvent::Evicted { id, reason } => {
                    // The tree removed it: so do the maps beside it (the
                    // only other way out is a leave, handled there).
                    tree.forget(id);
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
        tree.gauges.set(&tree.tracker);
    }

    fn answer(
        &self,
        channel: &ChannelName,
        tree: &mut ChannelTree,
        a: core::Assignment,
        at: Now,
    ) -> wire::Assignment {
        let parent = self.node_info(channel, tree, a.id, 0, a.parent, at);
        let backup = self.node_info(channel, tree, a.id, 1, a.backup, at);
        // Behind a NAT with no address outside it yet: the edge's QUIC
        // endpoint tells it.
        let observe = tree
            .addrs
            .get(&a.id)
            .filter(|m| m.nat && m.reflexive.is_none() && !m.no_udp)
            .and(self.settings.root_addr)
            .map(|addr| wire::ObserveAt {
                addr,
                also: self.settings.observe_also,
                cert_fingerprint: self.settings.root_fingerprint.clone(),
            });
        wire::Assignment {
            v: 1,
            peer_id: a.id.0,
            depth: a.depth,
            parent,
            backup,
            heartbeat_interval_ms: (self.settings.core.heartbeat_timeout.as_millis() / 3) as u64,
            ticket_key: self.ticket_key.clone(),
            observe,
            punch: tree.punches.remove(&a.id).unwrap_or_default(),
            test_uplink_kbps: a.test_uplink_kbps,
        }
    }

    /// A peer says where the edge saw its QUIC packets come from. Taken
    /// only from a peer behind a NAT and only on the address its requests
    /// come from: a peer cannot have others send packets anywhere else.
    fn learn_reflexive(
        &self,
        channel: &ChannelName,
        tree: &mut ChannelTree,
        id: PeerId,
        reflexive: SocketAddr,
        seen: IpAddr,
    ) {
        let Some(known) = tree.addrs.get_mut(&id) else {
            return;
        };
        if !known.nat || reflexive.ip() != seen {
            self.metrics
                .reflexive_refused
                .with_label_values(&[channel.as_str()])
                .inc();
            return;
        }
        if known.reflexive.replace(reflexive).is_none() {
            let _ = tree.tracker.handle_reach(id);
        }
    }

    /// What `child` needs to reach `node` (its parent in `slot` 0, its
    /// backup in 1): address, certificate and a ticket. A ticket signed
    /// earlier for the same node is reused while it has half its life
    /// left: signing costs more than the rest of a heartbeat, and most
    /// heartbeats change nothing.
    fn node_info(
        &self,
        channel: &ChannelName,
        tree: &mut ChannelTree,
        child: PeerId,
        slot: usize,
        node: Option<Node>,
        at: Now,
    ) -> Option<wire::NodeInfo> {
        let (kind, id, addr, cert_fingerprint, traversal) = match node? {
            Node::Root => (
                "edge",
                0,
                self.settings.root_addr,
                self.settings.root_fingerprint.clone(),
                false,
            ),
            Node::Peer(p) => {
                let known = tree.addrs.get(&p);
                // Across a NAT from another site: its address outside the
                // NAT, opened towards the child by a simultaneous open.
                let traversal = known.is_some_and(|k| k.nat)
                    && tree
                        .site_of(p)
                        .is_some_and(|site| Some(site) != tree.site_of(child));
                let addr = match known {
                    Some(k) if traversal => k.reflexive.or(Some(k.quic)),
                    k => k.map(|k| k.quic),
                };
                (
                    "peer",
                    p.0,
                    addr,
                    known.and_then(|k| k.fingerprint.clone()),
                    traversal,
                )
            }
        };
        let ttl = self.settings.ticket_ttl.as_secs();
        let first = tree
            .tickets
            .get(&child)
            .and_then(|t| t[slot].as_ref())
            .map(|c| c.parent)
            != Some(id);
        if traversal && first {
            // Newly sent there: the parent opens its NAT towards the child
            // at its next heartbeat.
            let target = tree.addrs.get(&child).and_then(PeerAddr::punch_target);
            if let Some(target) = target {
                let queue = tree.punches.entry(PeerId(id)).or_default();
                if !queue.contains(&target) && queue.len() < MAX_PUNCHES {
                    queue.push(target);
                }
            }
        }
        let cached = &mut tree.tickets.entry(child).or_default()[slot];
        let ticket = match cached {
            Some(c) if c.parent == id && c.expires >= at.unix_secs + ttl / 2 => c.ticket.clone(),
            _ => {
                let expires = at.unix_secs + ttl;
                let ticket = TicketClaims {
                    channel: channel.clone(),
                    child: child.0,
                    parent: id,
                    expires,
                }
                .sign(&self.key);
                *cached = Some(CachedTicket {
                    parent: id,
                    expires,
                    ticket: ticket.clone(),
                });
                ticket
            }
        };
        Some(wire::NodeInfo {
            kind: kind.into(),
            id,
            addr,
            cert_fingerprint,
            ticket,
            traversal,
        })
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

/// Whether a report naming `named` (its `parent_id`; the edge is 0) is
/// about `parent`, the reporter's parent now. A report that names none
/// (an older peer) is taken as about the parent it has.
fn names_parent(parent: Option<Node>, named: Option<u64>) -> bool {
    match (named, parent) {
        (None, _) => true,
        (Some(0), Some(Node::Root)) => true,
        (Some(id), Some(Node::Peer(p))) => p == PeerId(id),
        (Some(_), _) => false,
    }
}

fn unknown(e: core::UnknownPeer) -> Refusal {
    refuse(StatusCode::NOT_FOUND, "unknown_peer", e.to_string())
}

/// Whether a peer that says its QUIC address is on `advertised` and whose
/// requests come from `seen` sits behind a NAT, so that only its own site
/// can dial it: it gave a private address (RFC 1918, shared 100.64/10,
/// link-local, IPv6 unique-local) and the edge sees another. A public
/// address given on purpose (`--advertise`, a forwarded port) is trusted.
pub fn behind_nat(advertised: IpAddr, seen: IpAddr) -> bool {
    advertised != seen && is_private(advertised)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A peer's site: the label it gave; else, behind a NAT, the address the
/// edge sees with its own LAN's /24 (/64) (peers behind one public address
/// and on one LAN are one site, with nobody configuring it); else its /24
/// (IPv4) or /48 (IPv6).
fn site_label(given: Option<&str>, seen: IpAddr, advertised: IpAddr, nat: bool) -> String {
    if let Some(s) = given {
        return s.chars().take(64).collect();
    }
    if nat {
        return format!("{seen} via {}", prefix(advertised, 64));
    }
    prefix(seen, 48)
}

/// `ip`'s /24, or for IPv6 its prefix of `v6_bits` (48 or 64).
fn prefix(ip: IpAddr, v6_bits: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6_bits >= 64 {
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            } else {
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
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
            TrackerSettings::loopback(TrackerConfig::default()),
            SigningKey::from_bytes(&[3; 32]),
            EdgeMetrics::new().tracker,
        )
    }

    /// A service whose edge has one root slot and whose newcomers may
    /// take children at once.
    fn one_root_slot() -> TrackerService {
        TrackerService::new(
            TrackerSettings::loopback(TrackerConfig {
                root_slots: 1,
                promote_after: Duration::ZERO,
                ..TrackerConfig::default()
            }),
            SigningKey::from_bytes(&[3; 32]),
            EdgeMetrics::new().tracker,
        )
    }

    /// A site's WAN streams: what its peers received from outside it
    /// (a parent elsewhere, the edge) over what they received, times its
    /// viewers. Two NATed peers, one under the other: one copy enters.
    #[test]
    fn a_sites_wan_streams_count_what_entered_it() {
        let s = service();
        let public = [203, 0, 113, 7];
        let join = |lan: &str| {
            let from = SocketAddr::from((public, 40000));
            let body = format!(r#"{{"channel":"demo","addr":"{lan}"}}"#);
            s.handle("join", body.as_bytes(), from, Now::current())
                .expect("join")
        };
        let first = join("192.168.1.20:5000");
        let second = join("192.168.1.21:5000");
        assert_eq!(first.parent.as_ref().map(|p| p.kind.as_str()), Some("edge"));
        assert_eq!(
            second.parent.as_ref().map(|p| p.id),
            Some(first.peer_id),
            "the second is fed over the LAN"
        );
        let from = SocketAddr::from((public, 40000));
        for (id, edge) in [(first.peer_id, 0), (second.peer_id, 100_000)] {
            let body = format!(
                r#"{{"channel":"demo","peer_id":{id},"bytes_from_parent":1000000,"bytes_from_edge":{edge}}}"#
            );
            s.handle("heartbeat", body.as_bytes(), from, Now::current())
                .expect("heartbeat");
        }
        let snap = s.snapshot(0).pop().expect("a channel");
        assert_eq!(snap.peers_behind_nat, 2);
        let site = &snap.sites[0];
        assert!(site.behind_nat);
        // 1 MB from the edge's root into the site, 0.1 MB fallback: 1.1 MB
        // of 2.1 MB received, times 2 viewers.
        let expected = 2.0 * 1.1 / 2.1;
        assert!((site.wan_streams - expected).abs() < 1e-9, "{site:?}");
    }

    /// A peer behind a NAT is asked for its reflexive address, which is
    /// taken only on the address its requests come from; a peer elsewhere
    /// is then sent to it there, marked as a traversal, and the parent is
    /// told once to punch towards that child.
    #[test]
    fn a_nat_peer_is_observed_then_reached_through_a_punch() {
        let s = one_root_slot();
        let office = SocketAddr::from(([203, 0, 113, 7], 40000));
        let call = |endpoint: &str, body: String, from: SocketAddr| {
            s.handle(endpoint, body.as_bytes(), from, Now::current())
        };
        let n = call(
            "join",
            r#"{"channel":"demo","addr":"192.168.1.20:5000"}"#.into(),
            office,
        )
        .expect("join");
        assert!(n.observe.is_some(), "asked where the edge sees it");
        let hb = |reflexive: &str| {
            call(
                "heartbeat",
                format!(
                    r#"{{"channel":"demo","peer_id":{},"reflexive":"{reflexive}"}}"#,
                    n.peer_id
                ),
                office,
            )
            .expect("heartbeat")
        };
        // Another host's address is refused, and counted.
        assert!(hb("198.51.100.1:6000").observe.is_some());
        assert_eq!(
            s.metrics
                .reflexive_refused
                .with_label_values(&["demo"])
                .get(),
            1
        );
        assert!(hb("203.0.113.7:61000").observe.is_none(), "known now");
        let viewer = SocketAddr::from(([198, 51, 100, 9], 7000));
        let join = |addr: &str, from: SocketAddr| {
            call(
                "join",
                format!(r#"{{"channel":"demo","addr":"{addr}"}}"#),
                from,
            )
            .expect("join")
        };
        let p = join("198.51.100.9:7000", viewer);
        let parent = p.parent.expect("a parent");
        assert_eq!(parent.id, n.peer_id);
        assert!(parent.traversal);
        assert_eq!(
            parent.addr,
            Some("203.0.113.7:61000".parse().expect("addr"))
        );
        // The parent punches once, at its next heartbeat.
        assert_eq!(hb("203.0.113.7:61000").punch, vec![viewer]);
        assert!(hb("203.0.113.7:61000").punch.is_empty());
        let outcome = |child: u64, report: &str, parent: u64| {
            format!(
                r#"{{"channel":"demo","peer_id":{child},"report":"{report}","parent_id":{parent}}}"#
            )
        };
        let counted = |o: &str| s.metrics.traversals.with_label_values(&["demo", o]).get();
        let after =
            call("report", outcome(p.peer_id, "reached", n.peer_id), viewer).expect("report");
        assert_eq!(after.parent.map(|p| p.id), Some(n.peer_id));
        assert_eq!(counted("reached"), 1);
        // An outcome about a peer that is not its parent or backup is
        // ignored, and counted.
        call(
            "report",
            outcome(p.peer_id, "unreachable", p.peer_id),
            viewer,
        )
        .expect("answered");
        assert_eq!(counted("ignored"), 1);
        // A peer whose address is not where its requests come from is
        // never punched to, and its reports teach nothing.
        let liar = SocketAddr::from(([198, 51, 100, 10], 7000));
        let l = join("198.51.100.66:7000", liar);
        if l.parent.as_ref().map(|p| p.id) == Some(n.peer_id) {
            assert!(
                hb("203.0.113.7:61000").punch.is_empty(),
                "no punch to a claimed address"
            );
        }
        call("report", outcome(l.peer_id, "unreachable", n.peer_id), liar).expect("answered");
        assert_eq!(counted("unreachable"), 0);
        // An outcome without the parent it is about is refused.
        let bare = format!(
            r#"{{"channel":"demo","peer_id":{},"report":"unreachable"}}"#,
            p.peer_id
        );
        assert!(call("report", bare, viewer).is_err());
    }

    /// A report about a parent the reporter no longer has (it was moved
    /// before the report arrived) is ignored and counted; one about the
    /// parent it has moves it.
    #[test]
    fn a_report_about_a_former_parent_costs_the_new_one_nothing() {
        let s = one_root_slot();
        let call = |endpoint: &str, body: String, port: u16| {
            let from = SocketAddr::from(([127, 0, 0, 1], port));
            s.handle(endpoint, body.as_bytes(), from, Now::current())
        };
        let join = |port: u16| {
            call(
                "join",
                format!(r#"{{"channel":"demo","addr":"127.0.0.1:{port}"}}"#),
                port,
            )
            .expect("join")
        };
        let first = join(5001);
        let second = join(5002);
        let third = join(5003);
        assert_eq!(second.parent.as_ref().map(|p| p.id), Some(first.peer_id));
        let report = |parent: u64| {
            call(
                "report",
                format!(
                    r#"{{"channel":"demo","peer_id":{},"report":"parent_gap","parent_id":{parent}}}"#,
                    second.peer_id
                ),
                5002,
            )
            .expect("answered")
        };
        let stale = || s.metrics.stale_reports.with_label_values(&["demo"]).get();
        for former in [third.peer_id, 0] {
            let a = report(former);
            assert_eq!(a.parent.map(|p| p.id), Some(first.peer_id), "kept");
        }
        assert_eq!(stale(), 2);
        let a = report(first.peer_id);
        assert_ne!(a.parent.map(|p| p.id), Some(first.peer_id), "moved");
        assert_eq!(stale(), 2);
    }

    /// Peers behind one NAT and on one LAN are one site with nobody
    /// naming it; a public address given on purpose is not a NAT.
    #[test]
    fn sites_behind_a_nat_are_recognised_without_configuration() {
        let seen = IpAddr::from([203, 0, 113, 7]);
        assert!(behind_nat(IpAddr::from([192, 168, 1, 20]), seen));
        assert!(
            behind_nat(IpAddr::from([100, 64, 3, 4]), seen),
            "carrier NAT"
        );
        assert!(!behind_nat(seen, seen), "public, seen as it says");
        assert!(
            !behind_nat(IpAddr::from([198, 51, 100, 9]), seen),
            "a public address given on purpose"
        );
        assert!(behind_nat(
            "fd00::5".parse().expect("ula"),
            "2001:db8::1".parse().expect("v6")
        ));
        let s = service();
        let join = |lan: &str, public: [u8; 4]| {
            let from = SocketAddr::from((public, 40000));
            let body = format!(r#"{{"channel":"demo","addr":"{lan}"}}"#);
            s.handle("join", body.as_bytes(), from, Now::current())
                .expect("join")
        };
        join("192.168.1.20:5000", [203, 0, 113, 7]);
        join("192.168.1.21:5000", [203, 0, 113, 7]);
        join("192.168.9.5:5000", [203, 0, 113, 7]);
        join("203.0.113.99:5000", [203, 0, 113, 99]);
        let snap = s.snapshot(0).pop().expect("a channel");
        let mut sites: Vec<(String, u64)> = snap
            .sites
            .iter()
            .map(|r| (r.site.clone(), r.viewers))
            .collect();
        sites.sort();
        assert_eq!(
            sites,
            vec![
                ("203.0.113.0/24".to_owned(), 1),
                ("203.0.113.7 via 192.168.1.0/24".to_owned(), 2),
                ("203.0.113.7 via 192.168.9.0/24".to_owned(), 1),
            ]
        );
    }

    /// Totals and sites are kept as peers come, report and go: what a
    /// snapshot shows matches the live audience without walking it.
    #[test]
    fn site_totals_follow_joins_reports_and_leaves() {
        let s = service();
        let join = |ip: [u8; 4]| {
            let from = SocketAddr::from((ip, 5000));
            let body = format!(r#"{{"channel":"demo","addr":"{from}"}}"#);
            s.handle("join", body.as_bytes(), from, Now::current())
                .expect("join")
                .peer_id
        };
        let a = join([10, 0, 1, 1]);
        let b = join([10, 0, 1, 2]);
        let c = join([10, 0, 2, 1]);
        let from = SocketAddr::from(([10, 0, 1, 1], 5000));
        let hb = |id: u64, stalls: u64| {
            let body = format!(
                r#"{{"channel":"demo","peer_id":{id},"stalls":{stalls},"watched_ms":1000}}"#
            );
            s.handle("heartbeat", body.as_bytes(), from, Now::current())
                .expect("heartbeat");
        };
        hb(a, 2);
        hb(b, 3);
        hb(c, 5);
        let leave = format!(r#"{{"channel":"demo","peer_id":{b}}}"#);
        s.handle("leave", leave.as_bytes(), from, Now::current())
            .expect("leave");
        let snap = s.snapshot(0).pop().expect("a channel");
        assert_eq!(snap.viewers, 2);
        assert!(snap.peers.is_empty(), "a sample lists no peer");
        assert_eq!(snap.totals.stalls, 7, "the leaver's stalls left with it");
        let mut sites: Vec<(String, u64, u64)> = snap
            .sites
            .iter()
            .map(|r| (r.site.clone(), r.viewers, r.totals.stalls))
            .collect();
        sites.sort();
        assert_eq!(
            sites,
            vec![
                ("10.0.1.0/24".to_owned(), 1, 2),
                ("10.0.2.0/24".to_owned(), 1, 5)
            ]
        );
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
            let joined = s.handle("join", good, from, Now::current()).expect("a good join");
            for (endpoint, body) in requests {
                let endpoint = ["join", "heartbeat", "leave", "report", "nonsense"][endpoint];
                let _ = s.handle(endpoint, &body, from, Now::current());
            }
            // The peer that joined properly is still known, unless a request
            // naming its id (only 2^-64 likely) made it leave.
            let hb = format!(r#"{{"channel":"demo","peer_id":{}}}"#, joined.peer_id);
            let answered = s.handle("heartbeat", hb.as_bytes(), from, Now::current());
            prop_assert!(answered.is_ok() || answered.as_ref().is_err_and(|r| r.outcome == "unknown_peer"));
            for c in s.snapshot(10) {
                prop_assert_eq!(c.depth_histogram.iter().sum::<u64>(), c.viewers);
                prop_assert_eq!(c.sites.iter().map(|r| r.viewers).sum::<u64>(), c.viewers);
            }
        }
    }
}
