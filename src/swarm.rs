//! The swarm harness: origin + edge + N peer processes on loopback, each
//! with a simulated player, for a given duration, with churn and faulty
//! peers; one JSON report at the end.
//!
//! - peers are started with their roles (leaf only, tampering) drawn from
//!   a seeded generator, so a run can be repeated;
//! - churn replaces a fraction of the peers per minute, some with SIGKILL,
//!   the rest with SIGTERM (a polite leave); the replacement has the same
//!   role; with `kill_parents`, a SIGKILL picks a peer that has children;
//! - `corrupt_first` makes the first peers to join tamper with what they
//!   forward: they sit shallow and get children, the case that matters;
//! - `encoder_gap` stops the encoder for a while, so every player stalls
//!   and both stall figures must see it;
//! - every two seconds each peer's `/status` (the peer's own typed
//!   [`Status`]) is read: depth, children, bytes by source, fallbacks,
//!   corrupt segments, the player's stalls as the peer inferred them, the
//!   last segments verified (with their signed origin completion time and
//!   depth) and repair times;
//! - at the end the players' segments are checked against the origin's
//!   signed digests (`corrupt_served`), and the edge's egress and
//!   evictions are read from its `/metrics`.
//!
//! Lag from the origin is "verified at the peer minus complete at the
//! origin" (the origin signs the completion time), per depth, with
//! segments fetched from the edge (fallbacks) apart. Definitions are in
//! `docs/swarm.md`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use treecast_peer::shared::{Source, Verified};
use treecast_peer::status::Status;

use crate::cluster::{Cluster, ClusterConfig, PeerOptions, PeerProcess};
use crate::netlab::emulator::LatenessReport;
use crate::netlab::profile::EdgeLink;
use crate::netlab::{link_counters, site_counters, LinkCounters, PeerNet, SiteNet};
use crate::player::{play, PlayerReport, START_BEHIND};
use crate::rng::Rng;

/// What to run.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The network.
    pub cluster: ClusterConfig,
    /// Peers alive at any time.
    pub peers: usize,
    /// Measured run length.
    pub duration: Duration,
    /// Fraction of the peers replaced per minute.
    pub churn_per_minute: f64,
    /// Fraction of the replaced peers killed with SIGKILL.
    pub kill_fraction: f64,
    /// Fraction of peers with zero upload (leaf only).
    pub zero_upload_fraction: f64,
    /// Fraction of peers that corrupt what they forward.
    pub corrupt_fraction: f64,
    /// The first this many peers to join corrupt what they forward.
    pub corrupt_first: usize,
    /// SIGKILLs of churn pick a peer with children when there is one.
    pub kill_parents: bool,
    /// Stop the encoder at this time into the run, for this long.
    pub encoder_gap: Option<(Duration, Duration)>,
    /// Seed of the role and churn draws.
    pub seed: u64,
    /// Time after the last peer started before the measured window opens:
    /// egress, offload and fallbacks count only after it (stalls count
    /// from each player's start).
    pub warmup: Duration,
    /// The network lab the peers run in; `None`: loopback.
    pub net: Option<NetRun>,
}

/// The lab a run's peers sit in: one slot per peer alive, each with its
/// namespace and link; a churn replacement takes its predecessor's slot.
#[derive(Debug, Clone)]
pub struct NetRun {
    /// The profile's name.
    pub profile: String,
    /// The router's namespace (its qdiscs count the peers' downloads).
    pub router: String,
    /// The edge's link.
    pub edge: EdgeLink,
    /// Per slot, where its peer runs.
    pub slots: Vec<PeerNet>,
    /// The profile's sites, by index (empty: every peer is public).
    pub sites: Vec<SiteNet>,
    /// How late the lab's emulator lets packets go.
    pub lateness: std::sync::Arc<crate::netlab::emulator::Lateness>,
}

/// p50, p95 and max of a set of values, and how many there were.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Largest.
    pub max: f64,
    /// Values.
    pub n: usize,
}

impl Percentiles {
    /// Nearest-rank percentiles; zeros when empty.
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[i]
        };
        Self {
            p50: rank(0.50),
            p95: rank(0.95),
            max: values[values.len() - 1],
            n: values.len(),
        }
    }
}

/// The report; its keys are a stable interface for scripts (see
/// `docs/swarm.md` for each definition).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Peers alive at any time.
    pub peers: usize,
    /// Measured duration, seconds (after the warm-up).
    pub duration_s: f64,
    /// Warm-up before the measured window, seconds.
    pub warmup_s: f64,
    /// Stream bitrate, kb/s (from the segments the players fetched).
    pub stream_kbps: f64,
    /// Bytes the edge sent (tree pushes and HTTP) during the run.
    pub edge_egress_bytes: u64,
    /// Edge egress in copies of the stream.
    pub edge_streams: f64,
    /// The part of it pushed down the tree over QUIC (its root children,
    /// and peers on the edge as their backup of last resort).
    pub edge_tree_streams: f64,
    /// Of `edge_tree_streams`, what went to peers the edge was not the
    /// parent of: repairs it bridged as their backup until the tracker's
    /// placement took over.
    pub edge_bridge_streams: f64,
    /// The part of it served over HTTP (fallbacks, joins' first segments,
    /// playlists and signatures).
    pub edge_http_streams: f64,
    /// Share of the peers' received bytes that came from other peers.
    pub offload_ratio: f64,
    /// Best offload any scheduler could reach with these peers' uploads
    /// (definition in `docs/swarm.md`).
    pub physical_limit: f64,
    /// `offload_ratio / physical_limit`.
    pub offload_vs_limit: f64,
    /// Segment bytes the peers received from their parents.
    pub bytes_from_tree: u64,
    /// Segment bytes the peers fetched from the edge over HTTP.
    pub bytes_from_edge_http: u64,
    /// Simulated players' stalls (their buffer ran dry).
    pub stalls: u64,
    /// Simulated players' time stalled over time watched.
    pub rebuffer_ratio: f64,
    /// The same players' stalls as their peers inferred them from the
    /// players' requests (what heartbeats, the dashboard and `/metrics`
    /// show).
    pub peer_inferred_stalls: u64,
    /// Seconds stalled, as the peers inferred.
    pub peer_inferred_stall_s: f64,
    /// Time stalled over time watched, as the peers inferred.
    pub peer_inferred_rebuffer_ratio: f64,
    /// Segments peers fetched from the edge because the tree was late.
    pub fallbacks: u64,
    /// Children let go by parents whose uplink was full, in the measured window.
    pub children_shed: u64,
    /// Segments that failed verification at a peer, in the measured window.
    pub corrupt_detected: u64,
    /// Segments a player received that differ from the origin's (must be 0).
    pub corrupt_served: u64,
    /// Peers the tracker evicted for corruption, during the run.
    pub evictions_corrupt: u64,
    /// Peers the tracker evicted as silent, during the run.
    pub evictions_silent: u64,
    /// Deepest depth any status showed.
    pub max_depth: u64,
    /// Verified at the peer minus complete at the origin, ms, by depth,
    /// for segments that came through the tree.
    pub lag_from_origin_ms_by_depth: BTreeMap<u64, Percentiles>,
    /// The same for segments fetched from the edge (fallbacks), all depths.
    pub fallback_lag_from_origin_ms: Percentiles,
    /// Segments a joining peer received that the origin had complete before
    /// the peer first streamed (its player's starting buffer): not in the
    /// lag figures.
    pub join_backfill_segments: u64,
    /// Players' delay behind live: wall clock when a segment starts
    /// playing minus its program date-time, ms, over every segment played.
    pub delay_behind_live_ms: Percentiles,
    /// Parent loss to new parent streaming, ms.
    pub repair_ms: Percentiles,
    /// Peer start to playback start (three segments in hand), ms.
    pub startup_ms: Percentiles,
    /// Peers started in all (initial and churn).
    pub peers_started: usize,
    /// Peers ended with SIGKILL.
    pub kills: u64,
    /// Of those, peers that had children when killed.
    pub kills_of_parents: u64,
    /// Peers that corrupt what they forward, started in all.
    pub corrupting_peers: u64,
    /// Of those, peers seen with children.
    pub corrupting_peers_with_children: u64,
    /// Children the faults cut off: each killed peer's children when it was
    /// killed, plus the most children each corrupting peer was seen with.
    /// Each may fetch a segment from the edge while it moves.
    pub children_of_faulty_peers: u64,
    /// Segments the players received in all.
    pub segments_played: u64,
    /// Played segments whose origin digest could not be read (expected 0).
    pub segments_unchecked: u64,
    /// The network lab's links and what went over them (`--net` only).
    pub network: Option<NetworkReport>,
}

/// The lab's links against what the peers did with them.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkReport {
    /// The profile.
    pub profile: String,
    /// The edge's uplink cap, kb/s.
    pub edge_upload_kbps: u32,
    /// Per slot: its link and its peers' measured upload.
    pub links: Vec<LinkReport>,
    /// Per site: what its WAN link carried, and how its viewers fared.
    pub sites: Vec<SiteReport>,
    /// Dials to a parent or backup through its NAT (the last 32 of each
    /// peer), by the NAT kinds of child and parent.
    pub direct_connection_success: Vec<DirectPair>,
    /// How late the lab's emulator let packets go over the whole run:
    /// packets released over 100 ms late mean the machine ran short of
    /// CPU, and the run measured that too.
    pub emulator_lateness: LatenessReport,
}

/// Dials through a NAT between one pair of NAT kinds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DirectPair {
    /// The dialling child's NAT (`public` off every site).
    pub child: String,
    /// The parent's NAT.
    pub parent: String,
    /// Dials.
    pub attempts: u64,
    /// Of those, handshakes that completed.
    pub reached: u64,
    /// `reached / attempts`.
    pub success: f64,
}

/// One site of the lab over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct SiteReport {
    /// Its name in the profile.
    pub site: String,
    /// Its router's NAT (`cone`, `symmetric`, `none`, `udp-blocked`).
    pub nat: String,
    /// Slots on it.
    pub peers: usize,
    /// Bytes that entered the site over its WAN link, in streams: the
    /// link's download on the wire (media, QUIC and HTTP overhead) over
    /// the stream's bitrate. One copy for the whole site is about 1.
    pub wan_streams: f64,
    /// Of those, bytes in packets over 600 bytes (data: media, playlists,
    /// HTTP bodies; not the acknowledgements of what the site sends out,
    /// which grow with its upload), in streams.
    pub wan_data_streams: f64,
    /// Bytes that left the site over its WAN link, in streams (what its
    /// peers fed peers elsewhere, plus acknowledgements).
    pub wan_up_streams: f64,
    /// Packets its WAN queues dropped (up, down).
    pub wan_drops: (u64, u64),
    /// Players' stalls on the site.
    pub stalls: u64,
    /// Peers on the site that took more than half of what they received
    /// in the window from the edge over HTTP.
    pub peers_on_fallback: usize,
}

/// One slot's link and the upload its peers reached.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// Slot number.
    pub slot: usize,
    /// The link as drawn from the profile.
    #[serde(flatten)]
    pub link: crate::netlab::profile::PeerLink,
    /// Children the slot's peers could feed at the stream's rate:
    /// `min(max_children, floor(upload / stream))`, 0 for leaf-only.
    pub usable_slots: u32,
    /// Upload on the wire over the run (the link's qdisc's count: media,
    /// QUIC and HTTP overhead, acknowledgements), kb/s.
    pub upload_kbps_measured: f64,
    /// Download on the wire over the run, kb/s.
    pub download_kbps_measured: f64,
    /// Packets the link's queues dropped (up, down): saturation.
    pub drops: (u64, u64),
    /// Segment bytes the slot's peers wrote to their children from their
    /// first status to their last (warm-up included), over the measured
    /// window, kb/s (what the peers count; more than the wire carried when
    /// children stopped streams they had from elsewhere).
    pub upload_kbps_to_children: f64,
    /// Most children seen at once.
    pub children_max: i64,
}

struct Running {
    process: PeerProcess,
    stop: watch::Sender<bool>,
    player: JoinHandle<PlayerReport>,
}

#[derive(Default)]
struct Collected {
    players: Vec<PlayerReport>,
    /// (peer, seq) → the verification record.
    arrivals: HashMap<(usize, u64), Verified>,
    /// Each peer's last status.
    last: HashMap<usize, Status>,
    max_depth: u64,
    /// Tampering peers seen with children.
    corrupting_parents: std::collections::HashSet<usize>,
    kills: u64,
    kills_of_parents: u64,
    children_of_killed: u64,
    origin_digests: OriginDigests,
    /// Per peer: upload figures from its statuses.
    uploads: HashMap<usize, Upload>,
    /// Per peer in the lab: its slot.
    slot_of: HashMap<usize, usize>,
    /// Slots whose peers are leaf only.
    leaf_slots: std::collections::HashSet<usize>,
    /// Per peer, its counters when the measured window opened after a
    /// warm-up.
    baseline: HashMap<usize, Baseline>,
    /// Per slot, the upload cap (`None`: unlimited), for the physical limit.
    caps: Vec<Option<u32>>,
    /// Per slot in the lab, what its link carried in the measured window.
    wire: Vec<LinkCounters>,
    /// Per site in the lab, what its WAN link carried in the window.
    site_wire: Vec<LinkCounters>,
    /// Players' stalls, by lab slot.
    stalls_by_slot: HashMap<usize, u64>,
}

/// One peer's upload: its counter at its first status (the last is in
/// its last status) and the most children it was seen with.
#[derive(Debug, Clone, Copy)]
struct Upload {
    first_bytes: u64,
    children_max: i64,
}

impl Collected {
    fn absorb(&mut self, number: usize, tampers: bool, s: Status) {
        self.max_depth = self.max_depth.max(u64::from(s.depth));
        if tampers && s.children_admitted > 0 {
            self.corrupting_parents.insert(number);
        }
        for v in &s.recent {
            self.arrivals.insert((number, v.seq), *v);
        }
        let up = self.uploads.entry(number).or_insert(Upload {
            first_bytes: s.bytes_uploaded,
            children_max: 0,
        });
        up.children_max = up.children_max.max(s.children);
        self.last.insert(number, s);
    }

    fn has_children(&self, number: usize) -> bool {
        self.last.get(&number).is_some_and(|s| s.children > 0)
    }
}

/// A peer's counters when the measured window opened.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    tree: u64,
    edge: u64,
    fallbacks: u64,
    repairs: u64,
    shed: u64,
    corrupt: u64,
}

impl Baseline {
    /// A peer's counters as its status gives them.
    fn of(s: &Status) -> Self {
        Self {
            tree: s.bytes_from_tree,
            edge: s.bytes_from_edge,
            fallbacks: s.fallbacks,
            repairs: s.repairs_total,
            shed: s.children_shed,
            corrupt: s.corrupt,
        }
    }

    /// What was counted since `before`.
    fn since(&self, before: &Self) -> Self {
        Self {
            tree: self.tree.saturating_sub(before.tree),
            edge: self.edge.saturating_sub(before.edge),
            fallbacks: self.fallbacks.saturating_sub(before.fallbacks),
            repairs: self.repairs.saturating_sub(before.repairs),
            shed: self.shed.saturating_sub(before.shed),
            corrupt: self.corrupt.saturating_sub(before.corrupt),
        }
    }
}

/// The repair times of the measured window: of a peer's last repairs
/// (`listed`, oldest first; its status keeps 32), those it made after its
/// count passed `since` (`total` now).
fn window_repairs(listed: &[u64], total: u64, since: u64) -> impl Iterator<Item = &u64> {
    let made = usize::try_from(total.saturating_sub(since)).unwrap_or(usize::MAX);
    listed.iter().rev().take(made)
}

async fn start_one(cluster: &mut Cluster, options: PeerOptions) -> anyhow::Result<Running> {
    let process = cluster.spawn_peer(options).await?;
    let (stop, rx) = watch::channel(false);
    let player = tokio::spawn(play(
        process.client(),
        cluster.config().channel.clone(),
        process.started,
        rx,
        watch::channel(0).0,
    ));
    Ok(Running {
        process,
        stop,
        player,
    })
}

/// Takes a peer's last status and its player's report (stopping the
/// player); the process is left running for the caller to end.
async fn wrap_up(r: Running, collected: &mut Collected) -> PeerProcess {
    // Earlier polls are already absorbed; this only brings them up to date.
    poll(&r.process, collected).await;
    let _ = r.stop.send(true);
    if let Ok(report) = r.player.await {
        log_stalls(r.process.number, r.process.started, &report);
        if let Some(net) = &r.process.options.net {
            *collected.stalls_by_slot.entry(net.slot).or_default() += report.playback.stalls;
        }
        collected.players.push(report);
    }
    r.process
}

async fn poll(p: &PeerProcess, collected: &mut Collected) {
    if let Some(net) = &p.options.net {
        collected.slot_of.insert(p.number, net.slot);
        if p.options.max_upload_kbps == Some(0) {
            collected.leaf_slots.insert(net.slot);
        }
    }
    if let Ok(s) = p.status().await {
        collected.absorb(p.number, p.options.tamper_every.is_some(), s);
    }
}

async fn finish(r: Running, kill: bool, collected: &mut Collected) {
    let mut process = wrap_up(r, collected).await;
    if kill {
        collected.kills += 1;
        collected.kills_of_parents += u64::from(collected.has_children(process.number));
        collected.children_of_killed += collected
            .last
            .get(&process.number)
            .map_or(0, |s| s.children.max(0) as u64);
        process.kill().await;
    } else {
        process.terminate().await;
    }
}

fn log_stalls(peer: usize, started: Instant, report: &PlayerReport) {
    for (at, length) in &report.playback.stall_log {
        warn!(
            peer,
            after_start_ms = at.duration_since(started).as_millis() as u64,
            stall_ms = length.as_millis() as u64,
            "player stalled"
        );
    }
}

fn roles(config: &SwarmConfig, index: usize, rng: &mut Rng) -> PeerOptions {
    let net = config
        .net
        .as_ref()
        .and_then(|n| n.slots.get(index).cloned());
    let leaf = rng.chance(config.zero_upload_fraction);
    let tamper = rng.chance(config.corrupt_fraction) || index < config.corrupt_first;
    PeerOptions {
        // A peer placed to corrupt is given upload, or it would never
        // have children.
        max_upload_kbps: (leaf && index >= config.corrupt_first).then_some(0),
        tamper_every: tamper.then_some(1),
        net,
        ..PeerOptions::default()
    }
}

/// The edge's counters the report needs.
#[derive(Debug, Clone, Copy, Default)]
struct EdgeCounters {
    egress: u64,
    tree_egress: u64,
    bridged: u64,
    evicted_corrupt: u64,
    evicted_silent: u64,
}

impl EdgeCounters {
    fn since(self, before: Self) -> Self {
        Self {
            egress: self.egress.saturating_sub(before.egress),
            tree_egress: self.tree_egress.saturating_sub(before.tree_egress),
            bridged: self.bridged.saturating_sub(before.bridged),
            evicted_corrupt: self.evicted_corrupt.saturating_sub(before.evicted_corrupt),
            evicted_silent: self.evicted_silent.saturating_sub(before.evicted_silent),
        }
    }
}

async fn edge_counters(cluster: &Cluster) -> anyhow::Result<EdgeCounters> {
    let text = cluster
        .edge_client()
        .get("/metrics", 8 << 20, Duration::from_secs(5))
        .await?;
    let text = String::from_utf8_lossy(&text);
    let sum = |prefix: &str, label: &str| {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Ok(EdgeCounters {
        egress: sum("treecast_edge_egress_bytes_total{", ""),
        tree_egress: sum("treecast_edge_egress_bytes_total{", "path=\"tree\""),
        bridged: sum("treecast_edge_tree_bridged_bytes_total ", ""),
        evicted_corrupt: sum("treecast_edge_tree_evictions_total{", "reason=\"corrupt\""),
        evicted_silent: sum("treecast_edge_tree_evictions_total{", "reason=\"silent\""),
    })
}

async fn read_links(net: Option<&NetRun>) -> Vec<LinkCounters> {
    let Some(net) = net.cloned() else {
        return Vec::new();
    };
    tokio::task::spawn_blocking(move || link_counters(&net.router, &net.slots))
        .await
        .unwrap_or_default()
}

async fn read_sites(net: Option<&NetRun>) -> Vec<LinkCounters> {
    let Some(net) = net.cloned() else {
        return Vec::new();
    };
    tokio::task::spawn_blocking(move || site_counters(&net.router, &net.sites))
        .await
        .unwrap_or_default()
}

/// Runs the swarm and reports.
pub async fn run(config: SwarmConfig) -> anyhow::Result<Report> {
    let mut rng = Rng::new(config.seed);
    let mut cluster = Cluster::start(config.cluster.clone()).await?;
    // Viewers join a stream that is live already: wait until a peer's
    // proxy can list a player's whole first buffer (three segments ending
    // one behind the live edge), or the first peers' startup would count
    // the origin's first seconds.
    cluster
        .wait_for_stream(START_BEHIND as usize + 1, Duration::from_secs(30))
        .await?;
    let mut edge_before = edge_counters(&cluster).await?;
    let mut links_before = read_links(config.net.as_ref()).await;
    let mut sites_before = read_sites(config.net.as_ref()).await;
    let mut t0 = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    let mut started = 0;
    let mut digests = OriginDigests::default();
    // Upload caps per slot, for the physical limit: `None` is unlimited.
    let mut caps: Vec<Option<u32>> = Vec::with_capacity(config.peers);
    for i in 0..config.peers {
        // Starting many peers takes a while: keep reading the origin's
        // digests meanwhile, so every segment played can be checked.
        if i % 10 == 0 {
            digests.record(&cluster).await;
        }
        let options = roles(&config, i, &mut rng);
        caps.push(match (&options.max_upload_kbps, &options.net) {
            (Some(0), _) => Some(0),
            (_, Some(net)) => Some(net.link.upload_kbps),
            (cap, None) => *cap,
        });
        running.push(start_one(&mut cluster, options).await?);
        started += 1;
    }
    info!(peers = config.peers, "all peers started");
    let mut collected = Collected {
        origin_digests: digests,
        caps,
        ..Collected::default()
    };
    let churn_every = (config.churn_per_minute > 0.0 && config.peers > 0)
        .then(|| Duration::from_secs_f64(60.0 / (config.churn_per_minute * config.peers as f64)));
    // Churn starts once every peer is up.
    let mut next_churn = churn_every.map(|d| Instant::now() + d);
    let mut next_poll = t0;
    let mut warm_at = (!config.warmup.is_zero()).then(|| Instant::now() + config.warmup);
    let mut end = warm_at.unwrap_or(t0) + config.duration;
    let mut gap = config
        .encoder_gap
        .map(|(at, len)| (t0 + at, t0 + at + len, false));
    let mut corrupting = running
        .iter()
        .filter(|r| r.process.options.tamper_every.is_some())
        .count() as u64;
    while Instant::now() < end {
        let now = Instant::now();
        if warm_at.is_some_and(|at| now >= at) {
            // The measured window opens: counters start from here.
            for r in &running {
                poll(&r.process, &mut collected).await;
            }
            collected.baseline = collected
                .last
                .iter()
                .map(|(&n, s)| (n, Baseline::of(s)))
                .collect();
            edge_before = edge_counters(&cluster).await?;
            links_before = read_links(config.net.as_ref()).await;
            sites_before = read_sites(config.net.as_ref()).await;
            t0 = Instant::now();
            end = t0 + config.duration;
            warm_at = None;
            info!("warm-up over: measuring");
        }
        if let Some((stop_at, start_at, stopped)) = gap {
            if now >= start_at {
                info!("encoder gap over: starting the encoder again");
                cluster.start_encoder()?;
                gap = None;
            } else if now >= stop_at && !stopped {
                info!("encoder gap: stopping the encoder");
                cluster.stop_encoder().await;
                gap = Some((stop_at, start_at, true));
            }
        }
        if now >= next_poll {
            for r in &running {
                poll(&r.process, &mut collected).await;
            }
            collected.origin_digests.record(&cluster).await;
            next_poll = now + Duration::from_secs(2);
        }
        if let (Some(at), Some(every)) = (next_churn, churn_every) {
            if now >= at && !running.is_empty() {
                let kill = rng.chance(config.kill_fraction);
                let parents: Vec<usize> = (0..running.len())
                    .filter(|&i| collected.has_children(running[i].process.number))
                    .collect();
                let index = if kill && config.kill_parents && !parents.is_empty() {
                    parents[rng.below(parents.len())]
                } else {
                    rng.below(running.len())
                };
                let victim = running.swap_remove(index);
                let options = victim.process.options.clone();
                info!(
                    peer = victim.process.number,
                    kill, "churn: replacing a peer"
                );
                finish(victim, kill, &mut collected).await;
                let tampers = options.tamper_every.is_some();
                match start_one(&mut cluster, options).await {
                    Ok(r) => {
                        running.push(r);
                        started += 1;
                        corrupting += u64::from(tampers);
                    }
                    Err(e) => warn!(error = %e, "churn: replacement peer failed to start"),
                }
                next_churn = Some(at + every);
            }
        }
        let gap_wake = gap.map(
            |(stop_at, start_at, stopped)| {
                if stopped {
                    start_at
                } else {
                    stop_at
                }
            },
        );
        let wake = [Some(next_poll), next_churn, gap_wake, warm_at, Some(end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        tokio::time::sleep_until(wake.into()).await;
    }
    let duration = t0.elapsed();
    let edge = edge_counters(&cluster).await?.since(edge_before);
    collected.wire = read_links(config.net.as_ref())
        .await
        .into_iter()
        .zip(
            links_before
                .iter()
                .copied()
                .chain(std::iter::repeat(LinkCounters::default())),
        )
        .map(|(after, before)| after.since(before))
        .collect();
    collected.site_wire = read_sites(config.net.as_ref())
        .await
        .into_iter()
        .zip(sites_before.iter().copied())
        .map(|(after, before)| after.since(before))
        .collect();
    // Stop every player at once, before any peer: players left running
    // while others are shut down would play past the run, beyond the
    // digests read.
    collected.origin_digests.record(&cluster).await;
    for r in &running {
        let _ = r.stop.send(true);
    }
    // Every peer's last status is read before any leaves: a peer read
    // after its parent left would count its switch at the end of the
    // run as a repair. Then they leave together (each takes a few
    // seconds to drain).
    let mut processes = Vec::with_capacity(running.len());
    for r in running {
        processes.push(wrap_up(r, &mut collected).await);
    }
    let mut leaving = tokio::task::JoinSet::new();
    for mut process in processes {
        leaving.spawn(async move { process.terminate().await });
    }
    while leaving.join_next().await.is_some() {}
    write_arrivals(&config.cluster.work_dir.join("arrivals.csv"), &collected);
    let report = summarize(&config, collected, edge, duration, started, corrupting);
    cluster.shutdown().await;
    Ok(report)
}

/// Writes every segment arrival the peers reported (the lag figures'
/// input, one row each) to `path`, for a closer look at a run; a failure
/// is logged and the run goes on.
fn write_arrivals(path: &std::path::Path, c: &Collected) {
    let mut rows: Vec<(&(usize, u64), &Verified)> = c.arrivals.iter().collect();
    rows.sort_by_key(|(k, _)| **k);
    let mut out = String::from("peer,seq,source,depth,at_ms,origin_ms,backfill\n");
    for ((peer, seq), v) in rows {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{peer},{seq},{},{},{},{},{}",
            v.source.label(),
            v.depth,
            v.at_ms,
            v.origin_ms,
            v.backfill
        );
    }
    if let Err(e) = std::fs::write(path, out) {
        warn!(path = %path.display(), error = %e, "cannot write the arrivals");
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn summarize(
    config: &SwarmConfig,
    c: Collected,
    edge: EdgeCounters,
    duration: Duration,
    started: usize,
    corrupting: u64,
) -> Report {
    let (bytes, media) = c.players.iter().fold((0u64, Duration::ZERO), |(b, m), p| {
        (b + p.bytes, m + p.media)
    });
    let stream_kbps = if media.is_zero() {
        0.0
    } else {
        bytes as f64 * 8.0 / media.as_secs_f64() / 1000.0
    };
    let stream_bytes = stream_kbps * 1000.0 / 8.0 * duration.as_secs_f64();
    let statuses = || c.last.values();
    // Per peer, what it received and fetched in the measured window.
    let measured = || {
        c.last.iter().map(|(n, s)| {
            let before = c.baseline.get(n).copied().unwrap_or_default();
            Baseline::of(s).since(&before)
        })
    };
    let received: u64 = measured().map(|m| m.tree + m.edge).sum();
    let offload = if received == 0 {
        0.0
    } else {
        (1.0 - edge.egress as f64 / received as f64).max(0.0)
    };
    let limit = physical_limit(
        &c.caps,
        stream_kbps,
        config.cluster.max_children,
        config.cluster.root_slots,
    );
    let network = config
        .net
        .as_ref()
        .map(|net| network_report(net, &c, duration, stream_kbps, config.cluster.max_children));
    let stalls = c.players.iter().map(|p| p.playback.stalls).sum();
    let rebuffer: f64 = c
        .players
        .iter()
        .map(|p| p.playback.rebuffer.as_secs_f64())
        .sum();
    let watched: f64 = c.players.iter().map(|p| p.watched.as_secs_f64()).sum();
    let inferred = statuses().fold((0u64, 0u64, 0u64), |(n, s, w), st| {
        let i = st.viewer.inferred;
        (n + i.stalls, s + i.stall_ms, w + i.watched_ms)
    });
    let (corrupt_served, unchecked) = c.origin_digests.check(&c.players);
    if unchecked > 0 {
        warn!(
            unchecked,
            "segments played that the origin no longer listed when checked"
        );
    }
    let mut lags: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut fallback_lags = Vec::new();
    let mut backfill = 0;
    for v in c.arrivals.values() {
        let lag = v.lag_from_origin_ms() as f64;
        if v.backfill {
            backfill += 1;
            continue;
        }
        match v.source {
            Source::Tree if v.depth > 0 => lags.entry(u64::from(v.depth)).or_default().push(lag),
            Source::Tree => {}
            Source::Edge => fallback_lags.push(lag),
        }
    }
    let mut repairs: Vec<f64> = c
        .last
        .iter()
        .flat_map(|(n, s)| {
            let since = c.baseline.get(n).map_or(0, |b| b.repairs);
            window_repairs(&s.repairs_ms, s.repairs_total, since)
        })
        .map(|&v| v as f64)
        .collect();
    let mut startups: Vec<f64> = c
        .players
        .iter()
        .filter_map(|p| p.startup)
        .map(|d| d.as_millis() as f64)
        .collect();
    let mut delays: Vec<f64> = c
        .players
        .iter()
        .flat_map(|p| p.delays_ms.iter().copied())
        .collect();
    Report {
        peers: config.peers,
        duration_s: duration.as_secs_f64(),
        warmup_s: config.warmup.as_secs_f64(),
        stream_kbps,
        edge_egress_bytes: edge.egress,
        edge_streams: ratio(edge.egress as f64, stream_bytes),
        edge_tree_streams: ratio(edge.tree_egress as f64, stream_bytes),
        edge_bridge_streams: ratio(edge.bridged as f64, stream_bytes),
        edge_http_streams: ratio(
            edge.egress.saturating_sub(edge.tree_egress) as f64,
            stream_bytes,
        ),
        offload_ratio: offload,
        physical_limit: limit,
        offload_vs_limit: ratio(offload, limit),
        bytes_from_tree: measured().map(|m| m.tree).sum(),
        bytes_from_edge_http: measured().map(|m| m.edge).sum(),
        stalls,
        rebuffer_ratio: ratio(rebuffer, watched),
        peer_inferred_stalls: inferred.0,
        peer_inferred_stall_s: inferred.1 as f64 / 1000.0,
        peer_inferred_rebuffer_ratio: ratio(inferred.1 as f64, inferred.2 as f64),
        fallbacks: measured().map(|m| m.fallbacks).sum(),
        children_shed: measured().map(|m| m.shed).sum(),
        corrupt_detected: measured().map(|m| m.corrupt).sum(),
        corrupt_served,
        evictions_corrupt: edge.evicted_corrupt,
        evictions_silent: edge.evicted_silent,
        max_depth: c.max_depth,
        lag_from_origin_ms_by_depth: lags
            .into_iter()
            .map(|(d, mut v)| (d, Percentiles::of(&mut v)))
            .collect(),
        fallback_lag_from_origin_ms: Percentiles::of(&mut fallback_lags),
        join_backfill_segments: backfill,
        delay_behind_live_ms: Percentiles::of(&mut delays),
        repair_ms: Percentiles::of(&mut repairs),
        startup_ms: Percentiles::of(&mut startups),
        peers_started: started,
        kills: c.kills,
        kills_of_parents: c.kills_of_parents,
        corrupting_peers: corrupting,
        corrupting_peers_with_children: c.corrupting_parents.len() as u64,
        children_of_faulty_peers: c.children_of_killed
            + c.corrupting_parents
                .iter()
                .filter_map(|n| c.uploads.get(n))
                .map(|u| u.children_max.max(0) as u64)
                .sum::<u64>(),
        segments_played: c.players.iter().map(|p| p.segments.len() as u64).sum(),
        segments_unchecked: unchecked,
        network,
    }
}

/// Children a peer with upload `cap` could feed at `stream_kbps`: whole
/// streams only, at most `max_children`; unlimited upload feeds
/// `max_children`.
pub fn usable_slots(cap: Option<u32>, stream_kbps: f64, max_children: u8) -> u32 {
    let k = u32::from(max_children);
    match cap {
        None => k,
        Some(_) if stream_kbps <= 0.0 => 0,
        Some(c) => ((f64::from(c) / stream_kbps).floor() as u32).min(k),
    }
}

/// The best offload any scheduler could reach: every peer but the edge's
/// `root_slots` children fed by a peer (`1 - root_slots/N`), and no more
/// peers fed than the peers' usable slots (`sum(usable_slots)/N`).
pub fn physical_limit(
    caps: &[Option<u32>],
    stream_kbps: f64,
    max_children: u8,
    root_slots: u32,
) -> f64 {
    let slots: u32 = caps
        .iter()
        .map(|&c| usable_slots(c, stream_kbps, max_children))
        .sum();
    limit_of(caps.len() as f64, f64::from(slots), f64::from(root_slots))
}

/// [`physical_limit`] for `n` peers whose links give `usable_slots` child
/// slots in all.
pub fn limit_of(n: f64, usable_slots: f64, root_slots: f64) -> f64 {
    if n <= 0.0 {
        return 0.0;
    }
    (1.0 - root_slots / n).min(usable_slots / n).max(0.0)
}

fn network_report(
    net: &NetRun,
    c: &Collected,
    duration: Duration,
    stream_kbps: f64,
    max_children: u8,
) -> NetworkReport {
    let secs = duration.as_secs_f64();
    let kbps = |bytes: u64| ratio(bytes as f64 * 8.0 / 1000.0, secs);
    let links = net
        .slots
        .iter()
        .map(|slot| {
            // (upload record, bytes uploaded at the last status) per peer
            // that held the slot.
            let ups: Vec<(&Upload, u64)> = c
                .slot_of
                .iter()
                .filter(|(_, &s)| s == slot.slot)
                .filter_map(|(n, _)| Some((c.uploads.get(n)?, c.last.get(n)?.bytes_uploaded)))
                .collect();
            let to_children: u64 = ups
                .iter()
                .map(|(u, last)| last.saturating_sub(u.first_bytes))
                .sum();
            let w = c.wire.get(slot.slot).copied().unwrap_or_default();
            LinkReport {
                slot: slot.slot,
                link: slot.link.clone(),
                usable_slots: if c.leaf_slots.contains(&slot.slot) {
                    0
                } else {
                    usable_slots(Some(slot.link.upload_kbps), stream_kbps, max_children)
                },
                upload_kbps_measured: kbps(w.up_bytes),
                download_kbps_measured: kbps(w.down_bytes),
                drops: (w.up_drops, w.down_drops),
                upload_kbps_to_children: kbps(to_children),
                children_max: ups.iter().map(|(u, _)| u.children_max).max().unwrap_or(0),
            }
        })
        .collect();
    NetworkReport {
        profile: net.profile.clone(),
        edge_upload_kbps: net.edge.upload_kbps,
        links,
        sites: site_reports(net, c, secs, stream_kbps),
        direct_connection_success: direct_pairs(net, c),
        emulator_lateness: net.lateness.report(),
    }
}

/// Tallies the peers' dials through NATs by the NAT kinds of both ends:
/// a child's from its slot's site, a parent's from the address dialled
/// (a site's WAN address, else a public peer).
fn direct_pairs(net: &NetRun, c: &Collected) -> Vec<DirectPair> {
    let kind_of_slot = |slot: usize| {
        net.slots
            .get(slot)
            .and_then(|p| p.site)
            .and_then(|k| net.sites.get(k))
            .map_or("public", |s| s.site.nat.name())
    };
    let kind_of_addr = |ip: std::net::IpAddr| {
        net.sites
            .iter()
            .find(|s| std::net::IpAddr::V4(s.wan) == ip)
            .map_or("public", |s| s.site.nat.name())
    };
    let mut tally: std::collections::BTreeMap<(&str, &str), (u64, u64)> = Default::default();
    for (n, status) in &c.last {
        let Some(&slot) = c.slot_of.get(n) else {
            continue;
        };
        for t in &status.traversals {
            let e = tally
                .entry((kind_of_slot(slot), kind_of_addr(t.to.ip())))
                .or_default();
            e.0 += 1;
            e.1 += u64::from(t.ok);
        }
    }
    tally
        .into_iter()
        .map(|((child, parent), (attempts, reached))| DirectPair {
            child: child.into(),
            parent: parent.into(),
            attempts,
            reached,
            success: ratio(reached as f64, attempts as f64),
        })
        .collect()
}

fn site_reports(net: &NetRun, c: &Collected, secs: f64, stream_kbps: f64) -> Vec<SiteReport> {
    let streams = |bytes: u64| ratio(bytes as f64 * 8.0 / 1000.0, secs * stream_kbps);
    net.sites
        .iter()
        .enumerate()
        .map(|(k, site)| {
            let slots: Vec<usize> = net
                .slots
                .iter()
                .filter(|p| p.site == Some(k))
                .map(|p| p.slot)
                .collect();
            let on_fallback = c
                .slot_of
                .iter()
                .filter(|(_, slot)| slots.contains(slot))
                .filter(|(n, _)| {
                    let Some(last) = c.last.get(n) else {
                        return false;
                    };
                    let b = c.baseline.get(n).copied().unwrap_or_default();
                    let edge = last.bytes_from_edge.saturating_sub(b.edge);
                    let tree = last.bytes_from_tree.saturating_sub(b.tree);
                    edge > tree
                })
                .count();
            let w = c.site_wire.get(k).copied().unwrap_or_default();
            SiteReport {
                site: site.site.name.clone(),
                nat: site.site.nat.name().into(),
                peers: slots.len(),
                wan_streams: streams(w.down_bytes),
                wan_data_streams: streams(w.down_data_bytes),
                wan_up_streams: streams(w.up_bytes),
                wan_drops: (w.up_drops, w.down_drops),
                stalls: slots
                    .iter()
                    .map(|s| c.stalls_by_slot.get(s).copied().unwrap_or(0))
                    .sum(),
                peers_on_fallback: on_fallback,
            }
        })
        .collect()
}

/// The origin's signed BLAKE3 of each segment, read while the origin still
/// lists it, to check what players received.
#[derive(Debug, Default)]
pub struct OriginDigests {
    digests: HashMap<u64, String>,
}

impl OriginDigests {
    /// Reads the signed digest of every segment the origin lists that is
    /// not recorded yet.
    pub async fn record(&mut self, cluster: &Cluster) {
        let origin = cluster.origin_client();
        let channel = &cluster.config().channel;
        let Ok(b) = origin
            .get(
                &format!("/live/{channel}/index.m3u8"),
                1 << 20,
                Duration::from_secs(5),
            )
            .await
        else {
            return;
        };
        let Ok(m3u8_rs::Playlist::MediaPlaylist(p)) = m3u8_rs::parse_playlist_res(&b) else {
            return;
        };
        for seq in p.media_sequence..p.media_sequence + p.segments.len() as u64 {
            if self.digests.contains_key(&seq) {
                continue;
            }
            let digest = origin
                .get(
                    &format!("/live/{channel}/{seq}.sig"),
                    4096,
                    Duration::from_secs(5),
                )
                .await
                .ok()
                .and_then(|b| treecast_proto::SignedSegment::from_json(&b).ok())
                .map(|s| hex::encode(s.record.digest));
            if let Some(d) = digest {
                self.digests.insert(seq, d);
            }
        }
    }

    /// Segments `players` received whose digest differs from the origin's
    /// signed record, and segments that could not be checked.
    pub fn check(&self, players: &[PlayerReport]) -> (u64, u64) {
        let (mut bad, mut unchecked) = (0, 0);
        for p in players {
            for (seq, hash) in &p.segments {
                match self.digests.get(seq) {
                    Some(d) if d == hash.to_hex().as_str() => {}
                    Some(_) => bad += 1,
                    None => unchecked += 1,
                }
            }
        }
        (bad, unchecked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the repairs made after the window opened count, however many
    /// the status still lists.
    #[test]
    fn repairs_before_the_window_are_not_counted() {
        // Five repairs so far, the last three listed; three were made
        // before the window opened.
        let listed = [900, 40, 60];
        let mut got: Vec<u64> = window_repairs(&listed, 5, 3).copied().collect();
        got.sort_unstable();
        assert_eq!(got, vec![40, 60]);
        assert_eq!(window_repairs(&listed, 5, 5).count(), 0);
        assert_eq!(
            window_repairs(&listed, 5, 0).count(),
            3,
            "no more than listed"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            Percentiles::of(&mut v),
            Percentiles {
                p50: 50.0,
                p95: 95.0,
                max: 100.0,
                n: 100
            }
        );
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        assert_eq!(
            Percentiles::of(&mut [7.0]),
            Percentiles {
                p50: 7.0,
                p95: 7.0,
                max: 7.0,
                n: 1
            }
        );
    }
}
